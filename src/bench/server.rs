//! `recuerda serve` as a child process on a fresh store in a temporary folder, and what the OS
//! says about it: CPU time (`/proc/<pid>/stat`) and memory (`/proc/<pid>/status`), so the
//! server's cost is measured apart from the load generator's.

use super::BenchError;
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const API_TOKEN: &str = "bench-api-token-0123456789abcdef";
const LOGIN: &str = "bench@clinica.example";
const TOKEN: &str = "bench-provider-token";

/// A folder removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir, BenchError> {
        let dir =
            std::env::temp_dir().join(format!("recuerda-bench-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
            what: format!("create `{}`", dir.display()),
            source,
        })?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the server is configured for a scenario.
pub struct ServerSpec<'a> {
    pub rules_yaml: &'a str,
    pub provider_base_url: &'a str,
    pub rate_per_second: u32,
    pub concurrency: usize,
    /// `RECUERDA_LOG` for the server (its log goes to `server.log` in the folder).
    pub log_level: &'a str,
}

/// A running `recuerda serve`; killed when dropped.
pub struct Server {
    child: tokio::process::Child,
    pub pid: u32,
    pub base_url: String,
    pub webhook_url: String,
    /// When the process was spawned.
    pub spawned: Instant,
    /// Spawn → first `/readyz` 200.
    pub ready_after: Duration,
    dir: TempDir,
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks() as f64)
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (100 on every Linux we know).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// Bytes a process has caused to be written to storage (`write_bytes` of `/proc/<pid>/io`):
/// sled's log and segment cleaning, and the server's log file.
pub fn written_bytes(pid: u32) -> Option<u64> {
    proc_number(pid, "io", "write_bytes")
}

/// A `/proc/<pid>/status` memory figure (`VmRSS`, `VmHWM`) in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    proc_number(pid, "status", key)
}

/// The number on the `key: number …` line of `/proc/<pid>/<file>`.
fn proc_number(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| BenchError::Io {
        what: "find a free loopback port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| BenchError::Io {
            what: "find a free loopback port".into(),
            source,
        })
}

impl Server {
    /// Writes the config, rules and templates into a fresh folder, starts `recuerda serve` on
    /// a free loopback port and waits (at most 30 s) for `/readyz` to answer 200.
    pub async fn start(
        label: &str,
        spec: &ServerSpec<'_>,
        http: &reqwest::Client,
    ) -> Result<Server, BenchError> {
        let dir = TempDir::new(label)?;
        super::fixtures::write_rules(dir.path(), spec.rules_yaml)?;
        let config_path = dir.path().join("recuerda.yaml");
        let config = format!(
            "data_dir: data\nrules_dir: rules\ntemplates_dir: templates\nprovider:\n  base_url: {}\n  rate_per_second: {}\n  concurrency: {}\n  timeout: 10s\n",
            spec.provider_base_url, spec.rate_per_second, spec.concurrency
        );
        std::fs::write(&config_path, config).map_err(|source| BenchError::Io {
            what: format!("write `{}`", config_path.display()),
            source,
        })?;
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).map_err(|source| BenchError::Io {
            what: format!("create `{}`", log_path.display()),
            source,
        })?;
        let exe = std::env::current_exe().map_err(|source| BenchError::Io {
            what: "find the recuerda executable".into(),
            source,
        })?;
        let port = free_port()?;
        let secret = Secret::generate(48);
        let spawned = Instant::now();
        let child = tokio::process::Command::new(&exe)
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RECUERDA_LOG", spec.log_level)
            .env("NO_COLOR", "1")
            .env("RECUERDA_PROVIDER_LOGIN", LOGIN)
            .env("RECUERDA_PROVIDER_TOKEN", TOKEN)
            .env("RECUERDA_WEBHOOK_SECRET", secret.expose())
            .env("RECUERDA_API_TOKEN", API_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BenchError::Io {
                what: format!("start `{} serve`", exe.display()),
                source,
            })?;
        let pid = child.id().ok_or_else(|| BenchError::Server {
            message: "`recuerda serve` exited at once".into(),
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        })?;
        let base_url = format!("http://127.0.0.1:{port}");
        let mut server = Server {
            child,
            pid,
            webhook_url: format!("{base_url}/webhook/{}", secret.expose()),
            base_url,
            spawned,
            ready_after: Duration::ZERO,
            dir,
        };
        server.ready_after = server.wait_ready(http).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<Duration, BenchError> {
        let url = format!("{}/readyz", self.base_url);
        let deadline = self.spawned + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(self.spawned.elapsed());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Server {
                    message: format!("`recuerda serve` exited ({status}) before it was ready"),
                    log: self.log_tail(),
                });
            }
            if Instant::now() > deadline {
                return Err(BenchError::Server {
                    message: "`recuerda serve` was not ready within 30 s".into(),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The last lines of the server's log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Warnings and errors the server logged (a clean run has none).
    pub fn logged_problems(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count()
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid).unwrap_or(0.0)
    }

    /// See [`written_bytes`]; 0 where the OS does not say.
    pub fn written_bytes(&self) -> u64 {
        written_bytes(self.pid).unwrap_or(0)
    }

    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid, "VmRSS").unwrap_or(0)
    }

    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.pid, "VmHWM").unwrap_or(0)
    }

    /// RSS split: private memory (heap, stacks) and pages mapped from files (the binary's code
    /// and read-only data, shared with every other process running it).
    pub fn rss_anon_file_kib(&self) -> (u64, u64) {
        (
            status_kib(self.pid, "RssAnon").unwrap_or(0),
            status_kib(self.pid, "RssFile").unwrap_or(0),
        )
    }

    /// A counter from `/metrics` (the first sample named `name`, labels included).
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<u64> {
        self.metrics_text(http)
            .await?
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// The server's `/metrics` page.
    pub async fn metrics_text(&self, http: &reqwest::Client) -> Option<String> {
        http.get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Stops the server: SIGTERM (a clean shutdown flushes the store), SIGKILL after 10 s.
    pub async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

//! Assembling a running recuerda: store + rules + provider client + engine + HTTP server.
//! `serve`, `demo` and the tests all start it the same way.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::provider::Client;
use crate::rules::RuleSet;
use crate::secret::Secret;
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the rules have errors; fix them (run `recuerda check`) and start again:\n{0}")]
    Rules(String),
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the data folder `{path}`: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// A running engine and its HTTP server.
pub struct Running {
    pub addr: SocketAddr,
    pub engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The webhook URL to give the provider (holds the secret: never log it).
    pub fn webhook_url(&self) -> Option<String> {
        self.engine
            .config
            .webhook
            .secret
            .as_ref()
            .map(|s| format!("http://{}/webhook/{}", self.addr, s.expose()))
    }

    /// Stops taking requests, lets in-flight work finish, flushes the store.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.engine.shutdown().await;
    }
}

/// Loads the rules or explains why not.
pub fn load_rules(config: &Config) -> Result<RuleSet, StartError> {
    match RuleSet::load(&config.rules_dir, &config.templates_dir, config) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            Ok(loaded.set)
        }
        Err(errors) => Err(StartError::Rules(
            errors
                .diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )),
    }
}

/// The webhook secret: the configured one, else one generated once and kept in the data
/// folder (so the URL given to the provider stays valid across restarts).
pub fn ensure_webhook_secret(config: &mut Config) -> Result<(), StartError> {
    if config.webhook.secret.is_some() {
        return Ok(());
    }
    let path = config.data_dir.join("webhook_secret");
    let io = |source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if text.len() >= 32 {
            config.webhook.secret = Some(Secret::new(text));
            return Ok(());
        }
    }
    std::fs::create_dir_all(&config.data_dir).map_err(io)?;
    let secret = Secret::generate(48);
    std::fs::write(&path, secret.expose()).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    tracing::info!(file = %path.display(), "generated a webhook secret; the provider's webhook URL is https://<host>/webhook/<contents of that file>");
    config.webhook.secret = Some(secret);
    Ok(())
}

/// The process-wide Prometheus recorder behind the `metrics` macros (send results by rule,
/// dispatch latency), installed on first use; `None` if another recorder was installed first.
pub fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Opens the store, builds the engine, starts its tasks and the HTTP server on `listen`.
pub async fn start(
    config: Config,
    rules: RuleSet,
    clock: SharedClock,
    listen: SocketAddr,
) -> Result<Running, StartError> {
    let store = open_store(&config)?;
    start_with(config, store, rules, clock, listen).await
}

/// Opens (or creates) the store in the config's data folder.
///
/// `serve` calls this before loading the rules: sled's first open allocates 20 MiB of metric
/// histograms that are never written, which stay out of RSS only while they come from fresh
/// zero pages — after the rule loader's temporaries were freed they can land on recycled
/// memory that must be zeroed (measured: +2 to +14 MiB idle RSS).
pub fn open_store(config: &Config) -> Result<Store, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    Ok(Store::open(&config.data_dir)?)
}

/// [`start`] over a store already open.
pub async fn start_with(
    config: Config,
    store: Store,
    rules: RuleSet,
    clock: SharedClock,
    listen: SocketAddr,
) -> Result<Running, StartError> {
    let _ = prometheus();
    let provider = Client::new(&config.provider)?;
    let config = Arc::new(config);
    let engine = Engine::new(config.clone(), store, rules, provider, clock)?;
    engine.start().await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let router = crate::http::router(engine.clone());
    let limits = engine.config.http.clone();
    let server = tokio::spawn(crate::http::serve(listener, router, limits, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        engine,
        stop: Some(stop),
        server: Some(server),
    })
}

/// Hands memory freed so far back to the OS. Loading rules compiles hundreds of regexes and
/// templates whose temporaries mimalloc would otherwise keep on the start-up thread (~2 MiB
/// of idle RSS with 200 rules); called once the server is up, not on a hot path.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers; it only walks mimalloc's own free lists, and is
    // a no-op for memory that another allocator handed out.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

/// Unmaps (from this process only) the pages of its own code that start-up faulted in, so
/// idle RSS shows what serving uses. The kernel maps code 64 KiB around every page fault, so
/// loading rules (YAML, templates, globs, cron) left ~11 MiB of recuerda's code and read-only
/// data counted in RSS that an idle server never runs again; pages still in use are mapped
/// back from the page cache on their next touch, without I/O. Returns the bytes unmapped.
///
/// Only mappings of the executable that are not writable and hold no private (copied) page
/// are touched: for those `MADV_DONTNEED` can only drop page-table entries of clean file
/// pages, never data (the relocated read-only data, which *is* private, is left alone).
#[cfg(target_os = "linux")]
pub fn release_startup_code() -> u64 {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let exe = exe.to_string_lossy();
    let mut released = 0;
    for (start, end) in code_mappings(&smaps, &exe) {
        // SAFETY: [start, end) is a whole mapping of the executable file, read-only and with no
        // private page (checked above from smaps): dropping its page-table entries loses
        // nothing, and any thread touching it again faults the same bytes back in.
        #[allow(unsafe_code)]
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += (end - start) as u64;
        }
    }
    released
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_code() -> u64 {
    0
}

/// The `(start, end)` of every mapping of `exe` in `smaps` that is not writable and has no
/// anonymous (copied-on-write) pages.
fn code_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-').and_then(|(s, e)| {
            Some((
                usize::from_str_radix(s, 16).ok()?,
                usize::from_str_radix(e, 16).ok()?,
            ))
        }) {
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            current = (path == exe && perms.starts_with('r') && !perms.contains('w'))
                .then_some((start, end));
        } else if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if fields.next() == Some("0") {
                    found.push(range);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55afa614b000-55afa65a8000 r--p 00000000 fd:01 123 /opt/recuerda
Rss:                2796 kB
Anonymous:             0 kB
55afa65a8000-55afa7055000 r-xp 0045c000 fd:01 123 /opt/recuerda
Rss:                8628 kB
Anonymous:             0 kB
55afa7055000-55afa71d4000 r--p 00f08000 fd:01 123 /opt/recuerda
Rss:                1512 kB
Anonymous:          1512 kB
55afa71d4000-55afa71d9000 rw-p 01086000 fd:01 123 /opt/recuerda
Anonymous:            20 kB
7f6fc77fb000-7f6fc7951000 r-xp 00028000 fd:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
22ccec00000-22d0ec00000 rw-p 00000000 00:00 0
Anonymous:          6832 kB
";

    #[test]
    fn only_the_executables_clean_read_only_mappings_are_released() {
        assert_eq!(
            code_mappings(SMAPS, "/opt/recuerda"),
            vec![
                (0x55afa614b000, 0x55afa65a8000),
                (0x55afa65a8000, 0x55afa7055000)
            ]
        );
        assert!(code_mappings(SMAPS, "/opt/other").is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_code_runs_again_when_touched() {
        let released = release_startup_code();
        assert!(released > 0, "nothing of the test binary was released");
        // Code and read-only data fault back in: this formats, allocates and parses again.
        let n: u64 = format!("{}", released / 2).parse().expect("parses");
        assert_eq!(n * 2 + released % 2, released);
    }
}

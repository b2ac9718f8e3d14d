//! The torture run: the real `recuerda serve` binary and the provider simulator, appointments
//! booked, patients replying, callbacks duplicated, reordered and delayed, provider faults, and
//! SIGKILLs at random moments; at the end, the invariants checked against the simulator's record.

use super::engine::API_TOKEN;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) async fn wait_healthy(http: &reqwest::Client, base: &str) {
    for _ in 0..400 {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the engine did not become healthy at {base}");
}

/// The real binary, its log kept in a file for the test to read.
pub(crate) struct LoggedChild {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl LoggedChild {
    pub(crate) fn spawn(config: &std::path::Path, level: &str) -> LoggedChild {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_recuerda"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RECUERDA_LOG", level)
            .env("RECUERDA_API_TOKEN", API_TOKEN)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("recuerda binary runs");
        LoggedChild { child, log }
    }

    /// SIGKILL, and wait for it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

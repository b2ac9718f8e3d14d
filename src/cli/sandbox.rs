//! What `demo` and `simulate` share: the in-process provider simulator loaded with the rules'
//! templates, a config pointed at it, a temporary store folder and a local sink standing in
//! for the clinic's notify endpoints — so nothing reaches the real provider or the clinic.

use crate::config::Config;
use crate::rules::RuleSet;
use crate::secret::Secret;
use crate::simulator::{Account, PatientScript, SimConfig, SimHandle, SimTemplate};
use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The simulator account the sandbox uses (not a real credential).
pub const LOGIN: &str = "demo@clinica.example";
pub const TOKEN: &str = "demo-token-not-a-secret";

/// A simulator config with one funded account and every template of `rules`, approved.
pub fn sim_config(
    rules: &RuleSet,
    patients: BTreeMap<String, PatientScript>,
    failures: BTreeMap<String, u16>,
) -> SimConfig {
    SimConfig {
        accounts: vec![Account {
            login: LOGIN.into(),
            token: Secret::new(TOKEN),
            balance: 1_000_000,
            chatbot: true,
            templates: None,
        }],
        templates: rules
            .templates
            .values()
            .map(|t| SimTemplate {
                id: t.id,
                name: t.name.clone(),
                body: t.body.clone(),
                status: Default::default(),
            })
            .collect(),
        webhook_url: None,
        delays: Default::default(),
        failures,
        patients,
    }
}

/// Points `config` at the simulator (base URL, its account, a fast send rate), gives it fresh
/// webhook and API secrets, and sends every `notify` endpoint to `notify_url`.
pub fn use_simulator(config: &mut Config, sim: &SimHandle, notify_url: &str) {
    config.provider.base_url = sim.base_url();
    config.provider.login = Some(LOGIN.into());
    config.provider.token = Some(Secret::new(TOKEN));
    config.provider.rate_per_second = config.provider.rate_per_second.max(50);
    config.provider.retry_base = Duration::from_millis(100);
    config.webhook.secret = Some(Secret::generate(48));
    config.api.token = Some(Secret::generate(40));
    for endpoint in config.notify.values_mut() {
        endpoint.url = notify_url.to_string();
    }
}

/// A temporary folder, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A fresh folder under the system's temporary folder, named `recuerda-<what>-<uuid>`.
    pub fn new(what: &str) -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("recuerda-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A local endpoint standing in for the clinic's systems: answers 200 and counts.
pub struct NotifySink {
    pub url: String,
    pub count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySink {
    pub async fn start() -> anyhow::Result<NotifySink> {
        use axum::routing::post;
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let app = axum::Router::new().route(
            "/recepcion",
            post(move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot start the local notify sink")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(NotifySink {
            url: format!("http://{addr}/recepcion"),
            count,
            task,
        })
    }

    pub fn received(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

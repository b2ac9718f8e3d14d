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

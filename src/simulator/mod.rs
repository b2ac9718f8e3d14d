//! A faithful fake of the contacto-virtual API on loopback, for tests, `demo` and clinics: the
//! provider's endpoints, fields, codes and quirky webhook callbacks, with records of everything
//! and knobs (`/_sim/…` over HTTP, [`SimHandle`] in Rust) to script patients and inject faults.
//!
//! ```no_run
//! # async fn example() -> Result<(), recuerda::simulator::SimError> {
//! use recuerda::simulator::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::demo(), "127.0.0.1:0".parse().unwrap()).await?;
//! let provider_base_url = sim.base_url(); // http://127.0.0.1:PORT/bot/chat_wa/ws
//! sim.set_webhook_url(Some("http://127.0.0.1:8080/webhook/secret".into()))?;
//! // … drive the engine; then look at sim.sends(), sim.callbacks() …
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Invariants: all state sits in one `Mutex<SimState>`, never held across an `.await`; every
//! background task (callback timelines) lives in one `JoinSet` and is aborted on shutdown.

mod api;
mod config;
mod conn;
mod control;
mod state;
mod webhook;

pub use api::{concept, parse_variables, PREFIX};
pub use config::{
    failure_reason, is_valid_mobile, mask_url, placeholder_count, Account, Delays, PatientScript,
    ScriptedReply, SimConfig, SimConfigError, SimTemplate, TemplateStatus, DEMO_LOGIN, DEMO_TOKEN,
    FAILURE_REASONS,
};
pub use state::{
    CallbackKind, CallbackRecord, DeliveryEvent, Endpoint, Fault, RequestRecord, SendRecord,
};
pub use webhook::{event_payload, reply_payload, DEFAULT_FAILURE_CODE};

use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router};
use state::SimState;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower_http::limit::RequestBodyLimitLayer;

/// How long a graceful shutdown waits for open requests before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "simulator cannot listen on `{addr}`: {source}: pick a free port (or port 0 in tests)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid simulator config:\n  {}", .0.join("\n  "))]
    InvalidConfig(Vec<String>),
    #[error("cannot build the simulator's callback HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("no account `{0}` in the simulator: use a `login` from its config")]
    UnknownAccount(String),
    #[error("{0}")]
    InvalidWebhook(String),
    #[error("`{0}` is not a mobile the provider accepts: write 12 digits starting with 57")]
    InvalidMobile(String),
    #[error("invalid fault: {0}")]
    InvalidFault(String),
    #[error("no webhook URL is set: set one with `set_webhook_url` or `PUT /_sim/webhook`")]
    NoWebhook,
}

/// What the server, the control API and the background tasks share.
pub(crate) struct Shared {
    state: Mutex<SimState>,
    /// For callbacks; bounded so a stuck receiver cannot hold a timeline forever.
    http: reqwest::Client,
    /// `true` once shutdown began: hangs end, no new task starts.
    shutdown: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
}

impl Shared {
    /// A poisoned lock only means a handler panicked mid-update; the records are still the
    /// best account of what happened, so keep serving them.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `task` until it ends or the simulator stops.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        if !*self.shutdown.borrow() {
            tasks.spawn(task);
        }
    }

    /// Signals shutdown and aborts every background task; returns them to be awaited.
    fn stop(&self) -> JoinSet<()> {
        self.shutdown.send_replace(true);
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.abort_all();
        std::mem::take(&mut *tasks)
    }

    fn set_webhook_url(&self, url: Option<String>) -> Result<(), SimError> {
        if let Some(url) = &url {
            config::check_webhook_url(url).map_err(SimError::InvalidWebhook)?;
        }
        tracing::info!(
            "webhook URL set to {}",
            url.as_deref()
                .map(mask_url)
                .unwrap_or_else(|| "none".into())
        );
        self.lock().webhook_url = url;
        Ok(())
    }

    fn set_balance(&self, login: &str, balance: u64) -> Result<(), SimError> {
        let mut state = self.lock();
        let account = state
            .config
            .accounts
            .iter_mut()
            .find(|a| a.login == login)
            .ok_or_else(|| SimError::UnknownAccount(login.into()))?;
        account.balance = balance;
        tracing::info!("balance of `{login}` set to {balance}");
        Ok(())
    }

    fn script_reply(
        &self,
        mobile: &str,
        text: &str,
        delay: Option<Duration>,
    ) -> Result<(), SimError> {
        if !is_valid_mobile(mobile) {
            return Err(SimError::InvalidMobile(mobile.into()));
        }
        self.lock()
            .scripts
            .entry(mobile.into())
            .or_default()
            .push_back(ScriptedReply {
                text: text.into(),
                delay,
            });
        Ok(())
    }

    async fn reply(
        &self,
        mobile: &str,
        text: &str,
        custom_field: &str,
    ) -> Result<CallbackRecord, SimError> {
        // The message answered: the latest to this mobile with this custom_field, if any.
        let message_id = self
            .lock()
            .sends
            .iter()
            .rev()
            .find(|s| s.mobile == mobile && s.custom_field.as_deref().unwrap_or("") == custom_field)
            .map(|s| s.message_id.clone());
        let body = webhook::reply_body(mobile, text, custom_field);
        webhook::deliver(self, CallbackKind::Reply, message_id, body)
            .await
            .ok_or(SimError::NoWebhook)
    }

    async fn push_event(
        &self,
        message_id: &str,
        event: DeliveryEvent,
        code: Option<u16>,
    ) -> Result<CallbackRecord, SimError> {
        let whatsapp_id = self
            .lock()
            .send_by_id(message_id)
            .map(|s| s.whatsapp_id.clone())
            .unwrap_or_else(webhook::new_whatsapp_id);
        let body = webhook::event_body(event, message_id, &whatsapp_id, code, chrono::Utc::now());
        webhook::deliver(self, event.into(), Some(message_id.into()), body)
            .await
            .ok_or(SimError::NoWebhook)
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Checks `config`, binds `addr` (port 0 picks a free one) and serves until
    /// [`SimHandle::shutdown`] or until the last handle is dropped.
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimHandle, SimError> {
        config.validate().map_err(SimError::InvalidConfig)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(SimError::Client)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(SimState::new(config)),
            http,
            shutdown,
            tasks: Mutex::new(JoinSet::new()),
        });
        let app = router(shared.clone()).into_make_service_with_connect_info::<conn::ConnControl>();
        let mut stopping = shared.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(conn::KillableListener(listener), app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!("simulator server stopped: {e}");
            }
        });
        tracing::info!("provider simulator listening on http://{local}");
        Ok(SimHandle {
            inner: Arc::new(HandleInner {
                shared,
                addr: local,
                server: Mutex::new(Some(server)),
            }),
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(api::router())
        .nest("/_sim", control::router())
        .fallback(unknown_path)
        .layer(DefaultBodyLimit::max(api::BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(api::BODY_LIMIT))
        .with_state(shared)
}

/// A wrong base URL is the commonest integration mistake: say what exists.
async fn unknown_path(method: axum::http::Method, uri: Uri) -> impl IntoResponse {
    tracing::warn!("{method} {} → 404: no such endpoint", uri.path());
    let message = format!(
        "no endpoint `{method} {}`: the provider's are `POST {PREFIX}/send/`, `{PREFIX}/balance/` and `{PREFIX}/template/`; the simulator's own are under `/_sim/`",
        uri.path()
    );
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": message})),
    )
}

/// A running simulator. Clones share it; it stops on [`SimHandle::shutdown`] or when the last
/// clone is dropped.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        drop(self.shared.stop());
    }
}

impl SimHandle {
    /// The address actually bound (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://HOST:PORT`, where a wildcard listen address reads as `127.0.0.1`.
    pub fn origin(&self) -> String {
        let mut addr = self.inner.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// What the engine's `provider.base_url` should be: `http://127.0.0.1:PORT/bot/chat_wa/ws`.
    pub fn base_url(&self) -> String {
        format!("{}{PREFIX}", self.origin())
    }

    /// Root of the control API: `http://127.0.0.1:PORT/_sim`.
    pub fn control_url(&self) -> String {
        format!("{}/_sim", self.origin())
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Where callbacks go from now on (`None` stops them). Timelines already running use the
    /// URL set when each callback goes out.
    pub fn set_webhook_url(&self, url: Option<String>) -> Result<(), SimError> {
        self.shared().set_webhook_url(url)
    }

    pub fn webhook_url(&self) -> Option<String> {
        self.shared().lock().webhook_url.clone()
    }

    /// Sets (tops up) an account's balance.
    pub fn set_balance(&self, login: &str, balance: u64) -> Result<(), SimError> {
        self.shared().set_balance(login, balance)
    }

    /// The account's balance, `None` if there is no such account.
    pub fn balance(&self, login: &str) -> Option<u64> {
        self.shared()
            .lock()
            .config
            .accounts
            .iter()
            .find(|a| a.login == login)
            .map(|a| a.balance)
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared().lock().requests.clone()
    }

    /// Every callback attempt, retries included, in the order they were made.
    pub fn callbacks(&self) -> Vec<CallbackRecord> {
        self.shared().lock().callbacks.clone()
    }

    pub fn sends(&self) -> Vec<SendRecord> {
        self.shared().lock().sends.clone()
    }

    /// Queues a fault for the next `send` request not yet faulted.
    pub fn push_fault(&self, fault: Fault) {
        self.shared().lock().faults.push_back(fault);
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.shared().lock().faults.iter().cloned().collect()
    }

    /// Adds a reply to the patient's script: it answers the next message accepted for
    /// `mobile`, `delay` after acceptance (default `delays.reply`), echoing its `custom_field`.
    pub fn script_reply(
        &self,
        mobile: &str,
        text: &str,
        delay: Option<Duration>,
    ) -> Result<(), SimError> {
        self.shared().script_reply(mobile, text, delay)
    }

    /// The patient replies now; returns the last delivery attempt. Any `mobile` is taken (the
    /// provider's own example has 11 digits).
    pub async fn reply(
        &self,
        mobile: &str,
        text: &str,
        custom_field: &str,
    ) -> Result<CallbackRecord, SimError> {
        self.shared().reply(mobile, text, custom_field).await
    }

    /// Sends a delivery event for `message_id` now — any event, in any order, as often as
    /// wanted, even for an id the simulator never issued. `code` is for `failed` (default 1002).
    pub async fn push_event(
        &self,
        message_id: &str,
        event: DeliveryEvent,
        code: Option<u16>,
    ) -> Result<CallbackRecord, SimError> {
        self.shared().push_event(message_id, event, code).await
    }

    /// Stops pending callbacks, ends hangs, lets open requests finish (up to 2 s) and closes
    /// the listener. Idempotent.
    pub async fn shutdown(&self) {
        let mut tasks = self.shared().stop();
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut server) = server {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!("provider simulator on {} stopped", self.inner.addr);
    }
}

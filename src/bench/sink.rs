//! A lean stand-in for the provider's `send` endpoint: answers code 1 with a fresh `messageId`
//! and counts, and nothing else (no records, no callbacks), so that the benchmark measures the
//! engine and not the full simulator. Same path and answer shape as the provider
//! (`simulator::PREFIX`, `{"code":1,"status":…,"messageId":…}`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::oneshot;

#[derive(Default)]
struct Shared {
    sends: AtomicU64,
    /// Sends whose form lacked a field the provider requires (should stay 0).
    malformed: AtomicU64,
    /// Message ids handed out, kept only while `keep_ids` is on (scenario (a) needs them).
    ids: Mutex<Vec<String>>,
    keep_ids: std::sync::atomic::AtomicBool,
    /// When the latest send arrived, as nanoseconds after `epoch`.
    last_ns: AtomicU64,
    epoch: Option<Instant>,
}

/// A running sink; stops when dropped.
pub struct Sink {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Sink {
    pub async fn start() -> std::io::Result<Sink> {
        let shared = Arc::new(Shared {
            epoch: Some(Instant::now()),
            ..Default::default()
        });
        let app = Router::new()
            .route(&format!("{}/send/", crate::simulator::PREFIX), post(send))
            // The engine's balance guard asks at start: answered, so a warning in the server's
            // log is a real one.
            .route(
                &format!("{}/balance/", crate::simulator::PREFIX),
                post(balance),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Sink {
            shared,
            addr,
            stop: Some(stop),
        })
    }

    /// What `provider.base_url` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, crate::simulator::PREFIX)
    }

    pub fn sends(&self) -> u64 {
        self.shared.sends.load(Ordering::Relaxed)
    }

    pub fn malformed(&self) -> u64 {
        self.shared.malformed.load(Ordering::Relaxed)
    }

    /// When the latest send arrived (`None` before the first).
    pub fn last_send_at(&self) -> Option<Instant> {
        let ns = self.shared.last_ns.load(Ordering::Relaxed);
        let epoch = self.shared.epoch?;
        (ns > 0).then(|| epoch + std::time::Duration::from_nanos(ns))
    }

    /// Starts (or stops) keeping the message ids handed out.
    pub fn keep_ids(&self, keep: bool) {
        self.shared.keep_ids.store(keep, Ordering::Relaxed);
    }

    /// The message ids kept so far, emptied.
    pub fn take_ids(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .shared
                .ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn balance() -> (StatusCode, &'static str) {
    (
        StatusCode::OK,
        r#"{"balance":"1000000000","status":"success"}"#,
    )
}

async fn send(State(shared): State<Arc<Shared>>, body: Bytes) -> (StatusCode, String) {
    // The engine posts multipart; a cheap look for the fields the provider insists on.
    let text = String::from_utf8_lossy(&body);
    let complete = ["login", "token", "id_template", "mobile"]
        .iter()
        .all(|field| text.contains(&format!("name=\"{field}\"")));
    if !complete {
        shared.malformed.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::OK,
            r#"{"code":6,"status":"Faltan parámetros"}"#.to_string(),
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    if shared.keep_ids.load(Ordering::Relaxed) {
        shared
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id.clone());
    }
    shared.sends.fetch_add(1, Ordering::Relaxed);
    if let Some(epoch) = shared.epoch {
        shared
            .last_ns
            .fetch_max(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
    (
        StatusCode::OK,
        format!(
            r#"{{"code":1,"status":"{}","messageId":"{id}"}}"#,
            crate::simulator::concept(1)
        ),
    )
}

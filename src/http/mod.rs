//! The HTTP surface: the provider's webhook, the bearer-token API, health and metrics.
//! Handlers store and enqueue; they never call the provider.

mod api;
mod health;
mod webhook;

use crate::config::HttpConfig;
use crate::engine::Engine;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_http::limit::RequestBodyLimitLayer;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
}

/// The one error type of the HTTP layer: maps to a status in one place and never puts
/// internals or secrets in a body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid fields")]
    Invalid(Vec<crate::appointment::FieldError>),
    #[error("the store cannot write; retry later")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error while answering a request");
        ApiError::Unavailable
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        match e {
            crate::engine::EngineError::Store(s) => s.into(),
            crate::engine::EngineError::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({"error": "not found"})),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token: send `Authorization: Bearer <api.token>`"}),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::Invalid(errors) => {
                (StatusCode::UNPROCESSABLE_ENTITY, json!({"errors": errors}))
            }
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the store cannot write right now; retry later"}),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "internal error"}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

/// The whole application router.
pub fn router(engine: Engine) -> Router {
    let config = engine.config.clone();
    let state = AppState { engine };
    // Limits: `RequestBodyLimitLayer` answers 413 on a `Content-Length` over the limit before
    // reading a byte, and cuts a chunked body once it passes the limit (`DefaultBodyLimit`
    // alone only bounds the extractors).
    let webhook = webhook::router()
        // A wrong method on the webhook path says no more than a wrong path.
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(config.webhook.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.webhook.max_body_bytes));
    let api = api::router(state.clone())
        .layer(DefaultBodyLimit::max(config.api.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.api.max_body_bytes));
    Router::new()
        .merge(webhook)
        .merge(api)
        .merge(health::router())
        // Every unknown path answers exactly what a wrong webhook secret answers, so probing
        // tells nothing about the secret.
        .fallback(not_found)
        .with_state(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.http.request_timeout,
        ))
        .layer(axum::middleware::from_fn(log_request))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Logs each request with its path redacted where it is a secret (`/webhook/***`).
async fn log_request(req: Request, next: Next) -> Response {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let path = redact_path(req.uri().path());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    tracing::debug!(%method, path = %path, status = response.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    response
}

pub fn redact_path(path: &str) -> String {
    if path.starts_with("/webhook/") || path == "/webhook" {
        "/webhook/***".into()
    } else {
        path.to_string()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// (for at most `limits.request_timeout`).
///
/// This is hyper's HTTP/1 server driven by hand rather than `axum::serve`, which gives hyper
/// no timer: without one the header-read timeout never fires, and a client that sends its
/// headers a byte at a time, or connects and says nothing, holds a connection (and a file
/// descriptor) forever. Here `limits.header_read_timeout` bounds both; it also closes a
/// kept-alive connection left idle that long. A request's body and answer are bounded by the
/// router's `request_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning;
                    // connections already open keep being served.
                    tracing::warn!(error = %e, "cannot accept a connection; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = closing.wait_for(|c| *c) => {}
            }
            // Finish the request in flight, if any, then close; idle connections close now.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(limits.request_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some connections were still open at shutdown; closed them");
        connections.shutdown().await;
    }
    Ok(())
}

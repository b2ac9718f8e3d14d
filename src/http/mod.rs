//! The HTTP surface: the provider's webhook, the bearer-token API, health and metrics.
//! Handlers store and enqueue; they never call the provider.

mod api;
mod health;
mod webhook;

use crate::engine::Engine;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;
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
    let webhook = webhook::router()
        .layer(DefaultBodyLimit::max(config.webhook.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.webhook.max_body_bytes));
    let api = api::router(state.clone())
        .layer(DefaultBodyLimit::max(config.api.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.api.max_body_bytes));
    Router::new()
        .merge(webhook)
        .merge(api)
        .merge(health::router())
        .with_state(state)
        .layer(axum::middleware::from_fn(log_request))
}

/// Logs each request with its path redacted where it is a secret (`/webhook/***`).
async fn log_request(req: Request, next: Next) -> Response {
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

/// Serves `router` on `listener` until `shutdown` resolves, with a header-read timeout so a
/// slow client cannot hold a connection open forever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(30),
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

//! `POST /webhook/{secret}`: the provider's callbacks. The path is the only secret the
//! provider's protocol has, so a wrong one is a plain 404 and is never logged.

use super::{ApiError, AppState};
use crate::engine::Intake;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new().route("/webhook/{secret}", post(receive))
}

async fn receive(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.engine.config.webhook.secret else {
        return Err(ApiError::NotFound);
    };
    if !expected.matches(&secret) {
        return Err(ApiError::NotFound);
    }
    match state.engine.accept_webhook(&body).await? {
        // The provider's every callback gets this answer: written once, not built per request.
        Intake::Accepted => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"ok"}"#,
        )
            .into_response()),
        Intake::UnknownShape => Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({"status": "kept", "error": "unknown event shape; kept as a dead letter for inspection"}),
            ),
        )
            .into_response()),
        Intake::Malformed => Ok((
            StatusCode::BAD_REQUEST,
            Json(
                json!({"status": "kept", "error": "the body is not JSON; kept as a dead letter for inspection"}),
            ),
        )
            .into_response()),
    }
}

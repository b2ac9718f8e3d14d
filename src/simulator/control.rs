//! `/_sim/…`: the simulator's own JSON API, for `demo` and for clinics testing an integration —
//! what it received and called, and knobs to steer it (webhook, balance, patients, events,
//! faults). The Rust API on `SimHandle` does the same for tests.

use super::state::{DeliveryEvent, Fault};
use super::{Shared, SimError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/requests", get(requests))
        .route("/callbacks", get(callbacks))
        .route("/sends", get(sends))
        .route("/webhook", get(webhook).put(set_webhook))
        .route("/accounts", get(accounts))
        .route("/accounts/{login}/balance", put(set_balance))
        .route(
            "/faults",
            get(faults).post(push_faults).delete(clear_faults),
        )
        .route("/patients/{mobile}/script", post(script_reply))
        .route("/patients/{mobile}/reply", post(reply))
        .route("/messages/{message_id}/events", post(push_event))
}

/// `{"error": "…"}` with a status saying whose fault it is.
struct ControlError(SimError);

impl From<SimError> for ControlError {
    fn from(e: SimError) -> Self {
        ControlError(e)
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            SimError::UnknownAccount(_) => StatusCode::NOT_FOUND,
            SimError::NoWebhook => StatusCode::CONFLICT,
            SimError::InvalidWebhook(_) | SimError::InvalidMobile(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

async fn requests(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().requests.clone()).into_response()
}

async fn callbacks(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().callbacks.clone()).into_response()
}

async fn sends(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().sends.clone()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: Option<String>,
}

async fn webhook(State(shared): State<Arc<Shared>>) -> Response {
    // The URL as set: whoever can reach `/_sim` set it.
    Json(json!({"url": shared.lock().webhook_url.clone()})).into_response()
}

async fn set_webhook(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<WebhookBody>,
) -> Result<StatusCode, ControlError> {
    shared.set_webhook_url(body.url)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn accounts(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.lock();
    let listed: Vec<_> = state
        .config
        .accounts
        .iter()
        .map(|a| {
            json!({
                "login": a.login,
                "balance": a.balance,
                "chatbot": a.chatbot,
                "templates": state.config.templates_of(a).iter().map(|t| t.id).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(listed).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceBody {
    balance: u64,
}

async fn set_balance(
    State(shared): State<Arc<Shared>>,
    Path(login): Path<String>,
    Json(body): Json<BalanceBody>,
) -> Result<StatusCode, ControlError> {
    shared.set_balance(&login, body.balance)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    fault: Fault,
    /// How many of the next sends it hits; default 1.
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().faults.clone()).into_response()
}

async fn push_faults(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<FaultsBody>,
) -> Result<StatusCode, ControlError> {
    if let Fault::HttpStatus { status, .. } = &body.fault {
        if !(100..=999).contains(status) {
            return Err(SimError::InvalidFault(format!(
                "`{status}` is not an HTTP status: use e.g. 500, 429 or 503"
            ))
            .into());
        }
    }
    let mut state = shared.lock();
    for _ in 0..body.times {
        state.faults.push_back(body.fault.clone());
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.lock().faults.clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    text: String,
    #[serde(default, deserialize_with = "optional_duration")]
    delay: Option<std::time::Duration>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    crate::duration::deserialize(d).map(Some)
}

async fn script_reply(
    State(shared): State<Arc<Shared>>,
    Path(mobile): Path<String>,
    Json(body): Json<ScriptBody>,
) -> Result<StatusCode, ControlError> {
    shared.script_reply(&mobile, &body.text, body.delay)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    text: String,
    #[serde(default)]
    custom_field: String,
}

async fn reply(
    State(shared): State<Arc<Shared>>,
    Path(mobile): Path<String>,
    Json(body): Json<ReplyBody>,
) -> Result<Response, ControlError> {
    let record = shared
        .reply(&mobile, &body.text, &body.custom_field)
        .await?;
    Ok(Json(record).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    kind: DeliveryEvent,
    /// For `failed`: the code to report (default 1002).
    #[serde(default)]
    code: Option<u16>,
}

async fn push_event(
    State(shared): State<Arc<Shared>>,
    Path(message_id): Path<String>,
    Json(body): Json<EventBody>,
) -> Result<Response, ControlError> {
    let record = shared.push_event(&message_id, body.kind, body.code).await?;
    Ok(Json(record).into_response())
}

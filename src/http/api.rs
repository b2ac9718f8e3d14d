//! `/api/v1/…`: appointments, messages, conversations, replies, dead letters and rules,
//! behind `Authorization: Bearer <api.token>` (compared in constant time).

use super::{ApiError, AppState};
use crate::engine::UpsertError;
use crate::message::OutboxEntry;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/v1/appointments", get(list_appointments))
        .route(
            "/api/v1/appointments/{id}",
            get(get_appointment)
                .put(put_appointment)
                .delete(delete_appointment),
        )
        .route("/api/v1/appointments/batch", post(batch_appointments))
        .route("/api/v1/messages", get(list_messages))
        .route("/api/v1/messages/{id}", get(get_message))
        .route(
            "/api/v1/conversations/{custom_field}",
            get(get_conversation),
        )
        .route("/api/v1/replies", get(list_replies))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/missed", get(missed))
        .route("/api/v1/rules", get(list_rules))
        .route("/api/v1/rules/reload", post(reload_rules))
        .route("/api/v1/rules/{name}/run", post(run_rule))
        .route_layer(axum::middleware::from_fn_with_state(state, require_token))
}

async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = &state.engine.config.api.token else {
        return Err(ApiError::Unauthorized);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.matches(given) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(req).await)
}

async fn put_appointment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let engine = &state.engine;
    match engine.upsert_appointment(&id, &value) {
        Ok((appt, created)) => {
            engine.store.durable().await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(appt.to_context())))
        }
        Err(UpsertError::Invalid(errors)) => Err(ApiError::Invalid(errors)),
        Err(UpsertError::Engine(e)) => Err(e.into()),
    }
}

/// `POST /api/v1/appointments/batch`: `{"appointments": [{"id": …, …}, …], "dry_run": false}`.
/// All rows are validated first; if any is invalid nothing is stored and the answer (422)
/// lists every bad row by index. Valid batches are stored and made durable once.
async fn batch_appointments(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let rows = value
        .get("appointments")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadRequest("expected `{\"appointments\": [ … ]}`".into()))?;
    let dry_run = value
        .get("dry_run")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let engine = &state.engine;
    let now = engine.clock.now();
    let mut problems = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let id = row.get("id").and_then(Value::as_str).unwrap_or_default();
        let existing = engine.store.get_appointment(id)?;
        if let Err(errors) =
            crate::appointment::Appointment::from_json(id, row, now, existing.as_ref())
        {
            problems.push(json!({"index": index, "id": id, "errors": errors}));
        }
    }
    if !problems.is_empty() {
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"stored": 0, "invalid": problems})),
        ));
    }
    if dry_run {
        return Ok((
            StatusCode::OK,
            Json(json!({"stored": 0, "valid": rows.len(), "dry_run": true})),
        ));
    }
    let (mut created, mut updated) = (0, 0);
    for row in rows {
        let id = row.get("id").and_then(Value::as_str).unwrap_or_default();
        match engine.upsert_appointment(id, row) {
            Ok((_, true)) => created += 1,
            Ok((_, false)) => updated += 1,
            Err(UpsertError::Invalid(errors)) => return Err(ApiError::Invalid(errors)),
            Err(UpsertError::Engine(e)) => return Err(e.into()),
        }
    }
    engine.store.durable().await?;
    Ok((
        StatusCode::OK,
        Json(json!({"stored": created + updated, "created": created, "updated": updated})),
    ))
}

async fn get_appointment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let appt = state
        .engine
        .store
        .get_appointment(&id)?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(appt.to_context()))
}

async fn delete_appointment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let appt = state
        .engine
        .cancel_appointment(&id)?
        .ok_or(ApiError::NotFound)?;
    state.engine.store.durable().await?;
    Ok(Json(appt.to_context()))
}

#[derive(Deserialize)]
struct Window {
    from: Option<String>,
    to: Option<String>,
}

fn parse_time(
    name: &str,
    text: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    match text {
        None => Ok(default),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "`{name}` must be an RFC 3339 time, e.g. 2026-11-26T00:00:00-05:00"
                ))
            }),
    }
}

async fn list_appointments(
    State(state): State<AppState>,
    Query(w): Query<Window>,
) -> Result<Json<Value>, ApiError> {
    let now = state.engine.clock.now();
    let from = parse_time("from", w.from.as_deref(), now - chrono::Duration::days(1))?;
    let to = parse_time("to", w.to.as_deref(), now + chrono::Duration::days(30))?;
    let list: Vec<Value> = state
        .engine
        .store
        .appointments_starting(from, to)?
        .iter()
        .map(|a| a.to_context())
        .collect();
    Ok(Json(json!({"appointments": list})))
}

#[derive(Deserialize)]
struct MessageFilter {
    mobile: Option<String>,
    status: Option<String>,
    rule: Option<String>,
}

fn message_json(e: &OutboxEntry) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "id".into(),
            e.message_id.clone().unwrap_or_else(|| e.key.clone()).into(),
        );
        // The store's bookkeeping (how a pending send is found after a crash), not the
        // message's.
        obj.remove("handed_off");
    }
    v
}

/// The most messages one `GET /api/v1/messages` lists; narrow with `mobile`, `status`, `rule`.
const MESSAGES_PAGE: usize = 1000;

async fn list_messages(
    State(state): State<AppState>,
    Query(f): Query<MessageFilter>,
) -> Result<Json<Value>, ApiError> {
    let mobile = match &f.mobile {
        Some(m) => Some(
            crate::provider::Mobile::parse(m)
                .map(|m| m.as_str().to_string())
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        ),
        None => None,
    };
    let mut out = Vec::new();
    let mut truncated = false;
    let store = &state.engine.store;
    let entries: Box<dyn Iterator<Item = Result<OutboxEntry, crate::store::StoreError>>> =
        match &mobile {
            Some(m) => Box::new(store.entries_for_mobile(m)),
            None => Box::new(store.outbox_entries()),
        };
    for entry in entries {
        let entry = entry?;
        if !entry.is_send() {
            continue;
        }
        if mobile.is_some() && entry.mobile != mobile {
            continue;
        }
        if f.status
            .as_deref()
            .is_some_and(|s| s != entry.status.as_str())
        {
            continue;
        }
        if f.rule.as_deref().is_some_and(|r| r != entry.rule) {
            continue;
        }
        if out.len() >= MESSAGES_PAGE {
            // Say so rather than let a client take the first page for the whole list.
            truncated = true;
            break;
        }
        out.push(message_json(&entry));
    }
    Ok(Json(json!({"messages": out, "truncated": truncated})))
}

async fn get_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = &state.engine.store;
    let entry = match store.entry_by_message_id(&id)? {
        Some(e) => e,
        None => store.get_entry(&id)?.ok_or(ApiError::NotFound)?,
    };
    Ok(Json(message_json(&entry)))
}

async fn get_conversation(
    State(state): State<AppState>,
    Path(cf): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = &state.engine.store;
    let conv = store.get_conversation(&cf)?.ok_or(ApiError::NotFound)?;
    // The history holds what happened in the conversation (replies, states, queued sends,
    // refusals, failures); each message's own progress (sent, delivered, read) is in its
    // timeline, listed here rather than copied into the history on every send.
    let mut messages = Vec::new();
    if let Some(mobile) = &conv.mobile {
        for entry in store.entries_for_mobile(mobile) {
            let entry = entry?;
            if entry.is_send() && entry.custom_field.as_deref() == Some(cf.as_str()) {
                messages.push(message_json(&entry));
                if messages.len() >= MESSAGES_PAGE {
                    break;
                }
            }
        }
    }
    let mut out = serde_json::to_value(conv).unwrap_or(Value::Null);
    if let Some(obj) = out.as_object_mut() {
        obj.insert("messages".into(), Value::Array(messages));
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct ReplyFilter {
    unhandled: Option<bool>,
}

async fn list_replies(
    State(state): State<AppState>,
    Query(f): Query<ReplyFilter>,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for r in state.engine.store.replies() {
        let r = r?;
        if f.unhandled == Some(true) && r.outcome != "unhandled" {
            continue;
        }
        out.push(serde_json::to_value(r).unwrap_or(Value::Null));
    }
    Ok(Json(json!({"replies": out})))
}

async fn dead_letters(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let letters = state.engine.store.dead_letters()?;
    Ok(Json(json!({"dead_letters": letters})))
}

/// Occasions missed while the engine was down (past the catch-up grace).
async fn missed(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for item in state.engine.store.fired_all() {
        let (occasion, fired) = item?;
        if fired.outcome.starts_with("missed") {
            out.push(json!({"occasion": occasion, "at": fired.at, "outcome": fired.outcome}));
        }
    }
    Ok(Json(json!({"missed": out})))
}

async fn list_rules(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rules = state.engine.rules();
    let now = state.engine.clock.now();
    let list: Vec<Value> = rules
        .rules
        .iter()
        .map(|r| {
            let next = match &r.trigger {
                crate::rules::Trigger::Cron(c) => {
                    c.next_after(now, r.timezone).map(|t| t.to_rfc3339())
                }
                _ => None,
            };
            json!({
                "name": r.name,
                "description": r.description,
                "enabled": r.enabled,
                "trigger": trigger_word(&r.trigger),
                "next_fire": next,
                "last": state.engine.store.rule_last(&r.name).ok().flatten(),
                "source": format!("{}:{}", r.source.file.display(), r.source.line),
            })
        })
        .collect();
    Ok(Json(json!({"rules": list})))
}

fn trigger_word(t: &crate::rules::Trigger) -> &'static str {
    use crate::rules::Trigger::*;
    match t {
        Cron(_) => "cron",
        Offset(o) if o.direction == crate::rules::OffsetDirection::Before => "before",
        Offset(_) => "after",
        Reply(_) => "reply",
        Status(_) => "status",
        NoReply(_) => "no_reply",
        Appointment(_) => "appointment",
    }
}

async fn reload_rules(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.engine.reload_rules() {
        Ok(()) => Ok(Json(json!({"status": "reloaded"}))),
        Err(errors) => Err(ApiError::BadRequest(format!(
            "the new rules have errors; the previous rules keep running:\n{errors}"
        ))),
    }
}

#[derive(Deserialize)]
struct RunQuery {
    dry_run: Option<bool>,
}

async fn run_rule(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    let name_for_run = name.clone();
    if q.dry_run == Some(true) {
        let would = state.engine.dry_run(&name)?;
        return Ok(Json(
            json!({"rule": name, "dry_run": true, "would_send": would}),
        ));
    }
    // A fan-out is seconds of store work: off the async workers.
    let engine = state.engine.clone();
    let ran = tokio::task::spawn_blocking(move || engine.run_rule_now(&name_for_run))
        .await
        .map_err(|_| ApiError::Internal)??;
    state.engine.store.durable().await?;
    Ok(Json(json!({"rule": name, "occasions": ran})))
}

//! `/healthz`, `/readyz` and `/metrics` (Prometheus text).

use super::AppState;
use crate::engine::DispatchState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::Ordering;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

fn health_body(state: &AppState) -> (bool, serde_json::Value) {
    let engine = &state.engine;
    let rules = engine
        .rules_status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let dispatch = engine.dispatch_state();
    let store_ok = !engine.store.write_failing();
    let ok = store_ok && !matches!(dispatch, DispatchState::Stopped(_));
    (
        ok,
        json!({
            "status": if ok { "ok" } else { "degraded" },
            "store": if store_ok { "ok" } else { "cannot write: check the data folder's disk space and permissions" },
            "dispatcher": dispatch,
            "rules": {
                "loaded_at": rules.loaded_at.map(|t| t.to_rfc3339()),
                "rules": rules.n_rules,
                "templates": rules.n_templates,
                "last_reload_error": rules.last_error,
            },
            "outbox_depth": engine.store.outbox_depth(),
            "due_depth": engine.store.due_depth(),
            "last_balance": engine.last_balance(),
            "balance_low": engine.balance_low(),
        }),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let (ok, body) = health_body(&state);
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (ok, body) = health_body(&state);
    let ready = ok && !state.engine.is_shutting_down();
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let e = &state.engine;
    let c = &e.counters;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, labels: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {value}"
        );
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        "recuerda_webhook_events_total",
        "Webhook bodies received.",
        "",
        get(&c.webhook_events),
    );
    counter(
        "recuerda_status_events_total",
        "Delivery events processed.",
        "",
        get(&c.status_events),
    );
    counter(
        "recuerda_replies_total",
        "Patient replies processed.",
        "",
        get(&c.replies),
    );
    counter(
        "recuerda_replies_matched_total",
        "Replies a rule handled.",
        "",
        get(&c.replies_matched),
    );
    counter(
        "recuerda_replies_unhandled_total",
        "Replies no rule matched.",
        "",
        get(&c.replies_unhandled),
    );
    counter(
        "recuerda_replies_duplicate_total",
        "Replies ignored as provider retries.",
        "",
        get(&c.replies_duplicate),
    );
    counter(
        "recuerda_opt_outs_total",
        "Patients who opted out.",
        "",
        get(&c.opted_out),
    );
    counter(
        "recuerda_dead_letters_total",
        "Webhook bodies kept as dead letters.",
        "",
        get(&c.dead_letters),
    );
    let _ = writeln!(out, "# HELP recuerda_sends_result_total Send outcomes.\n# TYPE recuerda_sends_result_total counter");
    for (result, v) in [
        ("sent", get(&c.sends_ok)),
        ("failed", get(&c.sends_failed)),
        ("unknown", get(&c.sends_unknown)),
        ("skipped", get(&c.sends_skipped)),
        ("retried", get(&c.sends_retried)),
    ] {
        let _ = writeln!(
            out,
            "recuerda_sends_result_total{{result=\"{result}\"}} {v}"
        );
    }
    let _ = writeln!(out, "# HELP recuerda_outbox_depth Entries waiting in the outbox.\n# TYPE recuerda_outbox_depth gauge\nrecuerda_outbox_depth {}", e.store.outbox_depth());
    let _ = writeln!(out, "# HELP recuerda_due_queue_depth Planned reminders and timeouts.\n# TYPE recuerda_due_queue_depth gauge\nrecuerda_due_queue_depth {}", e.store.due_depth());
    if let Some(b) = e.last_balance() {
        let _ = writeln!(out, "# HELP recuerda_balance Last known provider balance.\n# TYPE recuerda_balance gauge\nrecuerda_balance {b}");
    }
    let _ = writeln!(out, "# HELP recuerda_balance_low Whether the balance is below the alert level or short of a fan-out.\n# TYPE recuerda_balance_low gauge\nrecuerda_balance_low {}", u8::from(e.balance_low().is_some()));
    let reload_ok = e
        .rules_status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_error
        .is_none();
    let _ = writeln!(out, "# HELP recuerda_rules_reload_ok Whether the last rules reload succeeded.\n# TYPE recuerda_rules_reload_ok gauge\nrecuerda_rules_reload_ok {}", u8::from(reload_ok));
    let running = matches!(e.dispatch_state(), DispatchState::Running);
    let _ = writeln!(out, "# HELP recuerda_dispatcher_running Whether the dispatcher sends.\n# TYPE recuerda_dispatcher_running gauge\nrecuerda_dispatcher_running {}", u8::from(running));
    if let Some(handle) = crate::app::prometheus() {
        out.push_str(&handle.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

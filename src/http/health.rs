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

/// A metric family: name, type, help, and its (labels, value) samples.
type Family<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, u64)>);

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let e = &state.engine;
    let c = &e.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let reload_ok = e
        .rules_status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_error
        .is_none();
    let running = matches!(e.dispatch_state(), DispatchState::Running);
    let (flushes, flush_waits) = e.store.flush_stats();
    let families: Vec<Family> = vec![
        (
            "recuerda_webhook_events_total",
            "counter",
            "Webhook bodies received.",
            vec![("", get(&c.webhook_events))],
        ),
        (
            "recuerda_status_events_total",
            "counter",
            "Delivery events processed.",
            vec![("", get(&c.status_events))],
        ),
        (
            "recuerda_replies_total",
            "counter",
            "Patient replies processed.",
            vec![("", get(&c.replies))],
        ),
        (
            "recuerda_replies_matched_total",
            "counter",
            "Replies a rule handled.",
            vec![("", get(&c.replies_matched))],
        ),
        (
            "recuerda_replies_unhandled_total",
            "counter",
            "Replies no rule matched.",
            vec![("", get(&c.replies_unhandled))],
        ),
        (
            "recuerda_replies_duplicate_total",
            "counter",
            "Replies ignored as provider retries.",
            vec![("", get(&c.replies_duplicate))],
        ),
        (
            "recuerda_opt_outs_total",
            "counter",
            "Patients who opted out.",
            vec![("", get(&c.opted_out))],
        ),
        (
            "recuerda_dead_letters_total",
            "counter",
            "Webhook bodies kept as dead letters.",
            vec![("", get(&c.dead_letters))],
        ),
        (
            "recuerda_sends_result_total",
            "counter",
            "Send outcomes.",
            vec![
                ("{result=\"sent\"}", get(&c.sends_ok)),
                ("{result=\"failed\"}", get(&c.sends_failed)),
                ("{result=\"unknown\"}", get(&c.sends_unknown)),
                ("{result=\"skipped\"}", get(&c.sends_skipped)),
                ("{result=\"retried\"}", get(&c.sends_retried)),
            ],
        ),
        (
            "recuerda_notify_total",
            "counter",
            "Notifications to the clinic's endpoints.",
            vec![
                ("{result=\"sent\"}", get(&c.notify_ok)),
                ("{result=\"failed\"}", get(&c.notify_failed)),
            ],
        ),
        (
            "recuerda_store_flushes_total",
            "counter",
            "Store flushes (group commits).",
            vec![("", flushes)],
        ),
        (
            "recuerda_store_flushed_waits_total",
            "counter",
            "Waits for durability the flushes answered (per flush: how well writes are grouped).",
            vec![("", flush_waits)],
        ),
        (
            "recuerda_outbox_depth",
            "gauge",
            "Entries waiting in the outbox.",
            vec![("", e.store.outbox_depth() as u64)],
        ),
        (
            "recuerda_due_queue_depth",
            "gauge",
            "Planned reminders and timeouts.",
            vec![("", e.store.due_depth() as u64)],
        ),
        (
            "recuerda_balance_low",
            "gauge",
            "Whether the balance is below the alert level or short of a fan-out.",
            vec![("", u64::from(e.balance_low().is_some()))],
        ),
        (
            "recuerda_rules_reload_ok",
            "gauge",
            "Whether the last rules reload succeeded.",
            vec![("", u64::from(reload_ok))],
        ),
        (
            "recuerda_dispatcher_running",
            "gauge",
            "Whether the dispatcher sends.",
            vec![("", u64::from(running))],
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, values) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in values {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
    let _ = writeln!(out, "# HELP recuerda_store_operations_total Store operations by tree and kind (read, write, remove, scan): what each event costs the store.\n# TYPE recuerda_store_operations_total counter");
    for (tree, op, n) in e.store.op_counts() {
        let _ = writeln!(
            out,
            "recuerda_store_operations_total{{tree=\"{tree}\",op=\"{}\"}} {n}",
            op.as_str()
        );
    }
    if let Some(b) = e.last_balance() {
        let _ = writeln!(out, "# HELP recuerda_balance Last known provider balance.\n# TYPE recuerda_balance gauge\nrecuerda_balance {b}");
    }
    if let Some(handle) = crate::app::prometheus() {
        out.push_str(&handle.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

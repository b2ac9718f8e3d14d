//! Callbacks to the webhook: the provider's exact (quirky) JSON shapes, each message's timeline
//! of events, and delivery with a few retries like a real provider's.

use super::config::{failure_reason, mask_url};
use super::state::{CallbackKind, CallbackRecord, DeliveryEvent, SendRecord, SimState};
use super::Shared;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Tries per callback: the first and three retries.
const MAX_ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// A `failed` event pushed by hand without a code carries this one.
pub const DEFAULT_FAILURE_CODE: u16 = 1002;

/// The file kinds the provider says it accepts as `media`.
const MEDIA_KINDS: &[&str] = &[
    "pdf", "jpg", "mp3", "txt", "docx", "xlsx", "zip", "mp4", "pptx", "png", "jpeg",
];

/// The provider's JSON for a delivery event, key for key: `type2` keeps its leading space on
/// sent/delivered/read, the id key is `&messageId` there and `messageId` on `failed`, whose
/// `code` is a string.
pub fn event_payload(
    event: DeliveryEvent,
    message_id: &str,
    whatsapp_id: &str,
    code: Option<u16>,
    at: DateTime<Utc>,
) -> Value {
    as_value(&event_body(event, message_id, whatsapp_id, code, at))
}

/// A patient's reply: no `type` at all.
pub fn reply_payload(mobile: &str, text: &str, custom_field: &str) -> Value {
    as_value(&reply_body(mobile, text, custom_field))
}

fn as_value(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
}

/// The callbacks as structs, so the text POSTed keeps the provider's key order (a
/// `serde_json::Value` would sort the keys).
#[derive(Serialize)]
struct DeliveryBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    type2: String,
    #[serde(rename = "messageId_whatsapp")]
    whatsapp_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fecha_envio_por_whatsapp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fecha_lectura_usuario: Option<String>,
    #[serde(rename = "&messageId")]
    message_id: &'a str,
}

#[derive(Serialize)]
struct FailedBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    type2: &'static str,
    code: String,
    reason: &'a str,
    #[serde(rename = "messageId")]
    message_id: &'a str,
}

/// Serializing these string-only structs cannot fail; `{}` keeps the type honest anyway.
fn to_json(body: &impl Serialize) -> String {
    serde_json::to_string(body).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn event_body(
    event: DeliveryEvent,
    message_id: &str,
    whatsapp_id: &str,
    code: Option<u16>,
    at: DateTime<Utc>,
) -> String {
    let when = at
        .with_timezone(&chrono_tz::America::Bogota)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let delivery = |sent_at: Option<String>, read_at: Option<String>| DeliveryBody {
        kind: "message-event",
        type2: format!(" {}", event.as_str()),
        whatsapp_id,
        fecha_envio_por_whatsapp: sent_at,
        fecha_lectura_usuario: read_at,
        message_id,
    };
    match event {
        DeliveryEvent::Sent | DeliveryEvent::Delivered => to_json(&delivery(Some(when), None)),
        DeliveryEvent::Read => to_json(&delivery(None, Some(when))),
        DeliveryEvent::Failed => {
            let code = code.unwrap_or(DEFAULT_FAILURE_CODE);
            to_json(&FailedBody {
                kind: "message-event",
                type2: "failed",
                code: code.to_string(),
                reason: failure_reason(code).unwrap_or("Error desconocido"),
                message_id,
            })
        }
    }
}

pub(crate) fn reply_body(mobile: &str, text: &str, custom_field: &str) -> String {
    crate::provider::webhook::reply_body(mobile, text, Some(custom_field))
}

/// A WhatsApp-looking message id for `messageId_whatsapp`.
pub fn new_whatsapp_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!(
        "wamid.HBgM{}",
        Alphanumeric.sample_string(&mut rand::rng(), 40)
    )
}

/// The provider accepts a send whatever its `media`, then fails it with 1010 when the URL is
/// not an http(s) link to a kind it takes.
pub fn media_is_valid(media: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(media) else {
        return false;
    };
    let extension = url
        .path()
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    matches!(url.scheme(), "http" | "https")
        && extension.is_some_and(|ext| MEDIA_KINDS.contains(&ext.as_str()))
}

/// One step of a message's timeline, at an offset from acceptance.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Event(DeliveryEvent, Option<u16>),
    Reply(String),
}

/// What will happen to an accepted send, decided (under the lock) when it is accepted: a
/// failing mobile gets `sent` then `failed`; others `sent`, `delivered`, `read` (unless the
/// patient never reads) and their next scripted reply.
pub(crate) fn plan(state: &mut SimState, send: &SendRecord) -> Vec<(Duration, Step)> {
    let delays = state.config.delays.clone();
    let failure = state
        .config
        .failures
        .get(&send.mobile)
        .copied()
        .or_else(|| {
            send.media
                .as_deref()
                .filter(|m| !media_is_valid(m))
                .map(|_| 1010)
        });
    let mut steps = vec![(delays.sent, Step::Event(DeliveryEvent::Sent, None))];
    match failure {
        Some(code) => steps.push((
            delays.delivered,
            Step::Event(DeliveryEvent::Failed, Some(code)),
        )),
        None => {
            steps.push((
                delays.delivered,
                Step::Event(DeliveryEvent::Delivered, None),
            ));
            if state.reads(&send.mobile) {
                steps.push((delays.read, Step::Event(DeliveryEvent::Read, None)));
            }
            if let Some(reply) = state
                .scripts
                .get_mut(&send.mobile)
                .and_then(|queue| queue.pop_front())
            {
                steps.push((reply.delay.unwrap_or(delays.reply), Step::Reply(reply.text)));
            }
        }
    }
    // Stable: at equal offsets, sent < delivered < read < reply.
    steps.sort_by_key(|(offset, _)| *offset);
    steps
}

/// Plays a send's timeline in a background task that stops with the simulator.
pub(crate) fn schedule(shared: &Arc<Shared>, send: SendRecord, steps: Vec<(Duration, Step)>) {
    let start = Instant::now();
    let task_shared = shared.clone();
    shared.spawn(async move {
        for (offset, step) in steps {
            tokio::time::sleep_until(start + offset).await;
            match step {
                Step::Event(event, code) => {
                    let body =
                        event_body(event, &send.message_id, &send.whatsapp_id, code, Utc::now());
                    deliver(
                        &task_shared,
                        event.into(),
                        Some(send.message_id.clone()),
                        body,
                    )
                    .await;
                }
                Step::Reply(text) => {
                    let custom_field = send.custom_field.as_deref().unwrap_or("");
                    let body = reply_body(&send.mobile, &text, custom_field);
                    let message_id = Some(send.message_id.clone());
                    deliver(&task_shared, CallbackKind::Reply, message_id, body).await;
                }
            }
        }
    });
}

/// POSTs `body` (JSON text) to the webhook URL set at this moment, retrying connection errors, 429 and
/// 5xx with a short doubling backoff; records and logs every attempt. Returns the last attempt,
/// or `None` when no webhook URL is set (nothing is sent then).
pub(crate) async fn deliver(
    shared: &Shared,
    kind: CallbackKind,
    message_id: Option<String>,
    body: String,
) -> Option<CallbackRecord> {
    let Some(url) = shared.lock().webhook_url.clone() else {
        tracing::info!(
            "callback {kind:?} for {} not sent: no webhook URL set",
            message_id.as_deref().unwrap_or("-")
        );
        return None;
    };
    let target = mask_url(&url);
    let payload = as_value(&body);
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let outcome = shared
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let (status, error) = match outcome {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(e) => (None, Some(describe(&e))),
        };
        let record = CallbackRecord {
            at: Utc::now(),
            kind,
            message_id: message_id.clone(),
            target: target.clone(),
            attempt,
            payload: payload.clone(),
            status,
            error: error.clone(),
        };
        let answer = match (status, &error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => "no answer".into(),
        };
        tracing::info!(
            "callback {} {} → {target} attempt {attempt}: {answer}",
            format!("{kind:?}").to_lowercase(),
            message_id.as_deref().unwrap_or("-"),
        );
        shared.lock().callbacks.push(record.clone());
        let retry = match status {
            Some(s) => s == 429 || s >= 500,
            None => true,
        };
        if !retry || attempt >= MAX_ATTEMPTS {
            return Some(record);
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
        attempt += 1;
    }
}

/// One line for a transport error: its kind and innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    format!("{kind}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_kinds_as_documented() {
        assert!(media_is_valid("https://servercliente.com/ejemplo.PDF"));
        assert!(media_is_valid("http://x.co/a/b.jpeg?v=1"));
        assert!(!media_is_valid("ftp://x.co/a.pdf"));
        assert!(!media_is_valid("https://x.co/a.exe"));
        assert!(!media_is_valid("not a url"));
    }

    #[test]
    fn failed_code_is_a_string() {
        let payload = event_payload(DeliveryEvent::Failed, "m1", "w1", Some(1005), Utc::now());
        assert_eq!(payload["code"], "1005");
        assert_eq!(payload["messageId"], "m1");
        assert!(payload.get("&messageId").is_none());
    }
}

//! What the provider POSTs to our webhook: delivery events about a sent message and patients'
//! replies, parsed with every documented quirk accepted (`" sent"` with a leading space,
//! `&messageId` vs `messageId`, `code` as a string, 11-digit reply mobiles, dates in an
//! undocumented format).

use super::types::{MessageId, Mobile};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not JSON at all: the HTTP layer answers 400 and keeps the body for inspection.
    #[error("webhook body is not JSON ({reason}): the provider sends a JSON object")]
    Malformed { reason: String },
    /// Valid JSON that is neither a delivery event nor a reply: answered 202 and kept, since
    /// the provider may add event kinds that are not documented yet.
    #[error("webhook JSON is neither a delivery event nor a reply: {reason}")]
    UnknownShape { reason: String },
}

/// Where a message stands. Delivery only moves forward: `Sent < Delivered < Read` (the derived
/// order). `Failed` is final: once a message failed, no later event changes it; it sorts last
/// only so that the order is total, not because it follows `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// True for `Failed`: nothing moves a message out of it.
    pub fn is_final(self) -> bool {
        self == DeliveryStatus::Failed
    }

    fn from_wire(text: &str) -> Option<DeliveryStatus> {
        match text.trim().to_ascii_lowercase().as_str() {
            "sent" => Some(DeliveryStatus::Sent),
            "delivered" => Some(DeliveryStatus::Delivered),
            "read" => Some(DeliveryStatus::Read),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookEvent {
    Status(StatusEvent),
    Reply(ReplyEvent),
}

/// A delivery event about a message we sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// The provider's `messageId` (from `&messageId` or `messageId`), trimmed.
    pub message_id: MessageId,
    pub status: DeliveryStatus,
    /// On `failed`: the provider's code (1002–1011, see [`super::failure_reason`]), when numeric.
    pub code: Option<u32>,
    pub reason: Option<String>,
    /// WhatsApp's own id (`messageId_whatsapp`).
    pub whatsapp_id: Option<String>,
    /// The date exactly as received (`fecha_envio_por_whatsapp` / `fecha_lectura_usuario`).
    pub raw_date: Option<String>,
    /// `raw_date` parsed, when it is a recognisable date (RFC 3339, `2026-11-26 15:30:00` as
    /// Bogotá time, or unix seconds/milliseconds).
    pub date: Option<DateTime<Utc>>,
}

/// A patient's reply. It carries no id: each delivery is a new reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyEvent {
    /// Digits only, not validated as Colombian: the provider's own example has 11 digits.
    pub mobile: String,
    pub message: String,
    /// The value sent with our message, which ties the reply to its conversation; `None` when
    /// absent or empty.
    pub custom_field: Option<String>,
}

/// A patient's reply as the provider posts it (keys in its order; no `custom_field` when there
/// is none): what [`parse`] reads back as that reply. The engine rebuilds the body of a reply
/// whose reaction a crash cut short from its record; the simulator posts its replies with it.
pub fn reply_body(mobile: &str, message: &str, custom_field: Option<&str>) -> String {
    #[derive(Serialize)]
    struct ReplyBody<'a> {
        mobile: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        custom_field: Option<&'a str>,
    }
    // Strings only: serializing cannot fail.
    serde_json::to_string(&ReplyBody {
        mobile,
        message,
        custom_field,
    })
    .unwrap_or_else(|_| "{}".into())
}

/// Parses a webhook body.
pub fn parse(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
        reason: e.to_string(),
    })?;
    let Value::Object(object) = value else {
        return Err(unknown(format!(
            "expected a JSON object, got {}",
            kind_of(&value)
        )));
    };
    match object.get("type") {
        Some(kind) => {
            let kind = text(kind).unwrap_or_default();
            if kind.trim() != "message-event" {
                return Err(unknown(format!(
                    "`type` is `{}`, expected `message-event`",
                    shorten(&kind)
                )));
            }
            status_event(&object).map(WebhookEvent::Status)
        }
        None => reply_event(&object).map(WebhookEvent::Reply),
    }
}

fn status_event(object: &Map<String, Value>) -> Result<StatusEvent, WebhookError> {
    let type2 = object
        .get("type2")
        .and_then(text)
        .ok_or_else(|| unknown("`message-event` without `type2`".into()))?;
    let status = DeliveryStatus::from_wire(&type2).ok_or_else(|| {
        unknown(format!(
            "`type2` is `{}`, expected sent, delivered, read or failed",
            shorten(&type2)
        ))
    })?;
    let message_id = ["&messageId", "messageId"]
        .iter()
        .find_map(|k| object.get(*k).and_then(text))
        .and_then(|s| MessageId::parse(&s).ok())
        .ok_or_else(|| unknown("`message-event` without `messageId` or `&messageId`".into()))?;
    let raw_date = ["fecha_envio_por_whatsapp", "fecha_lectura_usuario", "fecha"]
        .iter()
        .find_map(|k| object.get(*k).and_then(text));
    Ok(StatusEvent {
        message_id,
        status,
        code: object
            .get("code")
            .and_then(text)
            .and_then(|c| c.trim().parse().ok()),
        reason: object.get("reason").and_then(text),
        whatsapp_id: object.get("messageId_whatsapp").and_then(text),
        date: raw_date.as_deref().and_then(parse_date),
        raw_date,
    })
}

fn reply_event(object: &Map<String, Value>) -> Result<ReplyEvent, WebhookError> {
    let (Some(mobile), Some(message)) = (
        object.get("mobile").and_then(text),
        object.get("message").and_then(text),
    ) else {
        let keys: Vec<&str> = object.keys().map(String::as_str).take(8).collect();
        return Err(unknown(format!(
            "no `type` (delivery event) nor `mobile` and `message` (reply); keys: [{}]",
            shorten(&keys.join(", "))
        )));
    };
    let mobile = Mobile::from_reply(&mobile);
    if mobile.is_empty() {
        return Err(unknown("a reply whose `mobile` has no digits".into()));
    }
    Ok(ReplyEvent {
        mobile,
        message,
        custom_field: object
            .get("custom_field")
            .and_then(text)
            .filter(|c| !c.is_empty()),
    })
}

/// Parses the provider's dates, whose format is undocumented.
pub fn parse_date(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(raw) {
        return Some(d.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, format) {
            // A date without an offset from a Colombian provider is Colombian time.
            return chrono_tz::America::Bogota
                .from_local_datetime(&naive)
                .single()
                .map(|d| d.with_timezone(&Utc));
        }
    }
    if !raw.is_empty() && raw.len() <= 13 && raw.chars().all(|c| c.is_ascii_digit()) {
        let n: i64 = raw.parse().ok()?;
        // 13 digits are milliseconds; 10 or fewer are seconds.
        return match raw.len() {
            13 => DateTime::from_timestamp_millis(n),
            len if len <= 10 => DateTime::from_timestamp(n, 0),
            _ => None,
        };
    }
    None
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unknown(reason: String) -> WebhookError {
    WebhookError::UnknownShape { reason }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keeps echoed input short in error messages.
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let mut short: String = text.chars().take(MAX - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply's body, built as the provider writes it, parses back to the same reply, with
    /// or without a `custom_field`.
    #[test]
    fn a_reply_body_parses_back_to_its_reply() {
        for cf in [Some("cita-1"), None] {
            let body = reply_body("573001112233", " sí, gracias ", cf);
            assert_eq!(body.contains("custom_field"), cf.is_some(), "{body}");
            match parse(body.as_bytes()) {
                Ok(WebhookEvent::Reply(r)) => assert_eq!(
                    r,
                    ReplyEvent {
                        mobile: "573001112233".into(),
                        message: " sí, gracias ".into(),
                        custom_field: cf.map(str::to_string),
                    }
                ),
                other => panic!("{body} parsed as {other:?}"),
            }
        }
        assert_eq!(
            reply_body("57300", "1", Some("c")),
            r#"{"mobile":"57300","message":"1","custom_field":"c"}"#,
            "the provider's key order"
        );
    }

    #[test]
    fn dates_in_the_formats_seen() {
        let expected = Utc.with_ymd_and_hms(2026, 11, 26, 20, 30, 0).single();
        assert_eq!(parse_date("2026-11-26 15:30:00"), expected);
        assert_eq!(parse_date("2026-11-26T15:30:00-05:00"), expected);
        assert_eq!(parse_date("2026-11-26T20:30:00Z"), expected);
        assert_eq!(parse_date("1795725000"), expected);
        assert_eq!(parse_date("1795725000000"), expected);
        assert_eq!(parse_date("xxxxx"), None);
        assert_eq!(parse_date(""), None);
    }
}

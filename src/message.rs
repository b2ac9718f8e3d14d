//! Messages: one record per `send` occasion, from queued through the provider's delivery
//! events, with its whole status history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The status words of PRODUCT.md. Delivery moves forward only: `sent < delivered < read`;
/// `failed`, `unknown` and `skipped` are final for the dispatcher (a late delivery event may
/// still move `unknown` forward: it proves the send happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
    Unknown,
    Skipped,
}

impl MessageStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Skipped => "skipped",
        }
    }

    /// Queued or in flight: not yet sent, refused or given up.
    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Queued | Self::Sending)
    }

    /// Rank along the delivery path; a delivery event applies only when it ranks higher.
    fn delivery_rank(&self) -> u8 {
        match self {
            Self::Queued | Self::Sending | Self::Unknown => 0,
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Read => 3,
            Self::Failed | Self::Skipped => 4,
        }
    }

    /// Whether a delivery event with status `next` moves a message now at `self` forward.
    pub fn advances_to(&self, next: MessageStatus) -> bool {
        match next {
            Self::Failed => !matches!(self, Self::Failed | Self::Skipped | Self::Read),
            Self::Sent | Self::Delivered | Self::Read => {
                !matches!(self, Self::Failed | Self::Skipped)
                    && next.delivery_rank() > self.delivery_rank()
            }
            _ => false,
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an outbox entry does when dispatched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxKind {
    Send,
    Notify { endpoint: String },
}

/// One status change in a message's life, as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: MessageStatus,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the change was applied (a repeated or backwards event is kept, not applied).
    #[serde(default = "yes")]
    pub applied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_date: Option<String>,
}

fn yes() -> bool {
    true
}

/// An entry's saved rendering context: a JSON value fixed once the entry is made, shared by
/// the entry's copies. An entry is copied and rewritten a few times on its way out (`sending`,
/// then the outcome, then each delivery event), and its context used to be deep-copied and
/// turned into JSON text each time. Here a copy is a reference count, the text is made once
/// (or kept from the record the entry was read from) and the value is parsed from it only
/// when something reads it (rendering): a delivery event's update never parses it.
#[derive(Clone, Default)]
pub struct EntryContext(Arc<ContextCell>);

/// At least one of the two is set, and they agree.
#[derive(Default)]
struct ContextCell {
    value: OnceLock<Value>,
    text: OnceLock<String>,
}

impl EntryContext {
    /// The context as stored: JSON text, checked to be JSON (without building the value).
    pub fn from_text(text: String) -> Result<EntryContext, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        let cell = ContextCell::default();
        let _ = cell.text.set(text);
        Ok(EntryContext(Arc::new(cell)))
    }

    /// The context as JSON text.
    pub fn text(&self) -> &str {
        self.0.text.get_or_init(|| {
            // A `Value` always serializes.
            serde_json::to_string(self.value()).unwrap_or_else(|_| "null".into())
        })
    }

    pub fn value(&self) -> &Value {
        self.0.value.get_or_init(|| {
            // Checked to be JSON when read: only a bug could make this `null`.
            self.0
                .text
                .get()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null)
        })
    }
}

impl From<Value> for EntryContext {
    fn from(value: Value) -> EntryContext {
        let cell = ContextCell::default();
        let _ = cell.value.set(value);
        EntryContext(Arc::new(cell))
    }
}

impl std::ops::Deref for EntryContext {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.value()
    }
}

impl PartialEq for EntryContext {
    fn eq(&self, other: &EntryContext) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.value() == other.value()
    }
}

impl fmt::Debug for EntryContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.value(), f)
    }
}

impl Serialize for EntryContext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for EntryContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EntryContext, D::Error> {
        Value::deserialize(d).map(EntryContext::from)
    }
}

/// A durable outbox entry keyed by its occasion: one per (rule, occasion, action). This is
/// also the message record the API shows: the provider's `messageId` is attached once known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The occasion key plus the action's index: a second attempt at it is a no-op.
    pub key: String,
    pub kind: OutboxKind,
    pub rule: String,
    pub action_index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_id: Option<String>,
    /// The appointment's start when this was planned: if it moved since, the send is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_start: Option<DateTime<Utc>>,
    /// Whether the send is about the appointment's time (reminders): those are re-checked
    /// against cancellation and moves at send time.
    #[serde(default)]
    pub recheck_appointment: bool,
    /// The parts of the rendering context that cannot be re-read at send time (reply,
    /// delivery event, conversation at the moment of the trigger).
    pub context: EntryContext,
    pub status: MessageStatus,
    pub not_before: DateTime<Utc>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub timeline: Vec<StatusChange>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Pending without a key in the stored queue: a reply's reaction handed it straight to
    /// the dispatcher, and the reply stays unfinished until it leaves the queue (its recovery
    /// path instead of the queue key: `engine::handoff`). Kept only through the dispatcher's
    /// `sending` mark; any other change clears it; see `store`'s module doc.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handed_off: bool,
}

impl OutboxEntry {
    /// A fresh entry, queued now and due at `now`; callers fill in what the occasion knows.
    pub fn queued(
        key: String,
        kind: OutboxKind,
        rule: &str,
        action_index: usize,
        now: DateTime<Utc>,
    ) -> Self {
        OutboxEntry {
            key,
            kind,
            rule: rule.to_string(),
            action_index,
            appointment_id: None,
            appointment_start: None,
            recheck_appointment: false,
            context: EntryContext::default(),
            status: MessageStatus::Queued,
            not_before: now,
            attempts: 0,
            message_id: None,
            mobile: None,
            custom_field: None,
            template_id: None,
            variables: Vec::new(),
            text: None,
            code: None,
            error: None,
            timeline: vec![StatusChange {
                status: MessageStatus::Queued,
                at: now,
                code: None,
                reason: None,
                applied: true,
                raw_date: None,
            }],
            created_at: now,
            updated_at: now,
            handed_off: false,
        }
    }

    pub fn set_status(&mut self, status: MessageStatus, at: DateTime<Utc>, reason: Option<String>) {
        self.status = status;
        self.updated_at = at;
        self.timeline.push(StatusChange {
            status,
            at,
            code: None,
            reason,
            applied: true,
            raw_date: None,
        });
    }

    pub fn is_send(&self) -> bool {
        matches!(self.kind, OutboxKind::Send)
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::*;
    use super::{EntryContext, OutboxEntry, OutboxKind};

    /// A stored context keeps its text as read (no parse, no re-serialization on a rewrite),
    /// is parsed when read, refuses text that is not JSON, and is shared by an entry's copies.
    #[test]
    fn an_entry_context_is_shared_kept_as_text_and_parsed_when_read() {
        let text = r#"{"reply":{"message":"sí","n":1.5}}"#;
        let stored = EntryContext::from_text(text.to_string()).unwrap();
        assert_eq!(stored.text(), text);
        assert_eq!(stored["reply"]["message"], "sí");
        let made = EntryContext::from(serde_json::json!({"reply": {"message": "sí", "n": 1.5}}));
        assert_eq!(made, stored);
        assert_eq!(made.text(), text);
        assert!(EntryContext::from_text("{\"reply\":".into()).is_err());
        assert_eq!(EntryContext::default().text(), "null");

        let mut entry =
            OutboxEntry::queued("k".into(), OutboxKind::Send, "r", 0, chrono::Utc::now());
        entry.context = stored;
        let copy = entry.clone();
        assert!(
            std::ptr::eq(copy.context.text(), entry.context.text()),
            "shared, not copied"
        );
        assert_eq!(
            serde_json::to_value(&entry).unwrap()["context"]["reply"]["n"],
            1.5,
            "the API shows the value"
        );
    }

    #[test]
    fn delivery_only_moves_forward() {
        assert!(Sent.advances_to(Delivered));
        assert!(Sent.advances_to(Read));
        assert!(!Read.advances_to(Delivered));
        assert!(!Delivered.advances_to(Delivered));
        assert!(!Failed.advances_to(Read));
        assert!(Delivered.advances_to(Failed));
        assert!(Unknown.advances_to(Sent));
        assert!(Sending.advances_to(Delivered));
    }
}

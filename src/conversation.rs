//! Conversations (one per `custom_field`), patients' replies, opt-outs and dead letters: the
//! records the engine keeps about what patients said.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How many history entries a conversation keeps; older ones are dropped first.
pub const HISTORY_LIMIT: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub custom_field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    /// `queued`, `sent`, `refused`, `failed`, `reply`, `state`, `skipped`, …
    pub kind: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Conversation {
    pub fn new(custom_field: &str, now: DateTime<Utc>) -> Self {
        Conversation {
            custom_field: custom_field.to_string(),
            mobile: None,
            appointment_id: None,
            state: None,
            history: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    pub fn record(&mut self, at: DateTime<Utc>, kind: &str, detail: String, rule: Option<&str>) {
        self.history.push(HistoryEntry {
            at,
            kind: kind.to_string(),
            detail,
            rule: rule.map(str::to_string),
        });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
        self.updated_at = at;
    }

    pub fn to_context(&self) -> serde_json::Value {
        serde_json::json!({
            "custom_field": self.custom_field,
            "state": self.state,
            "mobile": self.mobile,
            "appointment_id": self.appointment_id,
        })
    }
}

/// A patient's reply as received, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: String,
    pub mobile: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_field: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The rule that handled it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `handled`, `unhandled`, `opted_out`, `opted_in`, `duplicate`: what its reaction decided,
    /// written before anything else it does. `received` only in a record of a
    /// format-4 store whose reaction was still under way.
    pub outcome: String,
}

impl Reply {
    /// The outcome of a reply whose reaction decided nothing yet (store format 4).
    pub const RECEIVED: &'static str = "received";

    /// Whether its record says what its reaction decided (see [`Reply::RECEIVED`]).
    pub fn is_done(&self) -> bool {
        self.outcome != Self::RECEIVED
    }

    /// What makes two replies the same for dedupe: mobile, trimmed text, conversation.
    pub fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.mobile, self.message.trim(), &self.custom_field).hash(&mut h);
        format!("{:016x}", h.finish())
    }

    pub fn to_context(&self) -> serde_json::Value {
        serde_json::json!({
            "mobile": self.mobile,
            "message": self.message,
            "custom_field": self.custom_field,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptOut {
    pub mobile: String,
    pub keyword: String,
    pub at: DateTime<Utc>,
}

/// A webhook body that could not be understood, kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    /// The body as text (lossy UTF-8), at most 64 KiB.
    pub body: String,
}

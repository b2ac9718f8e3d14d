//! The simulator's mutable state and the records it keeps: every request, every callback
//! attempt, every accepted send, the queue of injected faults and the patients' scripts.

use super::config::{ScriptedReply, SimConfig};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Which provider endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    Send,
    Balance,
    Template,
}

/// One request to a provider endpoint, as received and as answered.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub at: DateTime<Utc>,
    pub endpoint: Endpoint,
    pub content_type: Option<String>,
    /// Form fields as received, except `token`, which reads `***`.
    pub fields: BTreeMap<String, String>,
    /// The result code decided (`1` for an accepted send); `None` for a successful balance or
    /// template answer and for faults that answer no code.
    pub code: Option<u8>,
    /// The HTTP status answered; `None` when no answer was given (hang, drop).
    pub http_status: Option<u16>,
    /// The injected fault that shaped the answer, e.g. `drop (accepted)`.
    pub fault: Option<String>,
    /// The id of the send this request created, if it was accepted.
    pub message_id: Option<String>,
    /// Why the body could not be read, if it could not.
    pub body_error: Option<String>,
}

/// A send the provider accepted (code 1): callbacks follow for it.
#[derive(Debug, Clone, Serialize)]
pub struct SendRecord {
    pub at: DateTime<Utc>,
    pub message_id: String,
    /// What `messageId_whatsapp` carries in this message's events.
    pub whatsapp_id: String,
    pub login: String,
    pub template_id: u32,
    pub mobile: String,
    pub variables: Vec<String>,
    /// The template body with the variables put in: what the patient would read.
    pub text: String,
    pub media: Option<String>,
    pub custom_field: Option<String>,
}

/// A delivery event about a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryEvent {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryEvent::Sent => "sent",
            DeliveryEvent::Delivered => "delivered",
            DeliveryEvent::Read => "read",
            DeliveryEvent::Failed => "failed",
        }
    }
}

/// What a callback was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackKind {
    Sent,
    Delivered,
    Read,
    Failed,
    Reply,
}

impl From<DeliveryEvent> for CallbackKind {
    fn from(event: DeliveryEvent) -> Self {
        match event {
            DeliveryEvent::Sent => CallbackKind::Sent,
            DeliveryEvent::Delivered => CallbackKind::Delivered,
            DeliveryEvent::Read => CallbackKind::Read,
            DeliveryEvent::Failed => CallbackKind::Failed,
        }
    }
}

/// One attempt at POSTing a callback.
#[derive(Debug, Clone, Serialize)]
pub struct CallbackRecord {
    pub at: DateTime<Utc>,
    pub kind: CallbackKind,
    /// The message the event is about; for a reply, the message it answered, if known.
    pub message_id: Option<String>,
    /// The webhook URL with its secret path masked.
    pub target: String,
    /// 1 for the first try, then 2, 3…
    pub attempt: u32,
    pub payload: serde_json::Value,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why no status: connection refused, timeout…
    pub error: Option<String>,
}

impl CallbackRecord {
    /// The receiver took it (2xx).
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A misbehaviour for the next `send` request; faults queue up and are consumed in order.
///
/// A faulted request is recorded but is not an accepted send and debits nothing, except a
/// `hang` or `drop` with `accepted: true`: then the provider processed the send normally
/// (debit, record, callbacks) and only the answer was lost — "the request left, the answer did
/// not come back", which the engine must treat as an unknown outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer this HTTP status with this body (`text/plain`), e.g. 500, 429, 503.
    HttpStatus {
        status: u16,
        #[serde(default)]
        body: String,
        /// Seconds for a `Retry-After` header.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// `200 OK` with an HTML error page instead of JSON.
    Garbage,
    /// Read the request, answer nothing for `duration` (or until shutdown), then drop the
    /// connection unanswered.
    Hang {
        #[serde(with = "duration_text")]
        duration: Duration,
        #[serde(default)]
        accepted: bool,
    },
    /// Read the request, then close the connection without answering.
    Drop {
        #[serde(default)]
        accepted: bool,
    },
    /// Answer `{"code": N, "status": …}` without looking at the request (for code 1, a fresh
    /// `messageId` that no send stands behind).
    Code { code: u8 },
}

impl Fault {
    /// Short label for records and logs.
    pub fn label(&self) -> String {
        let accepted = |a: bool| if a { " (accepted)" } else { "" };
        match self {
            Fault::HttpStatus { status, .. } => format!("http_status {status}"),
            Fault::Garbage => "garbage".into(),
            Fault::Hang {
                duration,
                accepted: a,
            } => {
                format!("hang {}ms{}", duration.as_millis(), accepted(*a))
            }
            Fault::Drop { accepted: a } => format!("drop{}", accepted(*a)),
            Fault::Code { code } => format!("code {code}"),
        }
    }
}

/// Durations as text (`"300ms"`, `"2s"`) in control JSON.
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::duration::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Everything that changes while the simulator runs. Lives behind one std `Mutex`, never held
/// across an `.await`.
#[derive(Debug)]
pub(crate) struct SimState {
    /// Balances change here (`accounts[i].balance`); the rest is as configured.
    pub config: SimConfig,
    pub webhook_url: Option<String>,
    pub requests: Vec<RequestRecord>,
    pub callbacks: Vec<CallbackRecord>,
    pub sends: Vec<SendRecord>,
    pub faults: VecDeque<Fault>,
    /// Mobile → replies still to come, one per accepted send.
    pub scripts: BTreeMap<String, VecDeque<ScriptedReply>>,
}

impl SimState {
    pub fn new(config: SimConfig) -> SimState {
        let scripts = config
            .patients
            .iter()
            .map(|(mobile, patient)| (mobile.clone(), patient.replies.iter().cloned().collect()))
            .collect();
        SimState {
            webhook_url: config.webhook_url.clone(),
            config,
            requests: Vec::new(),
            callbacks: Vec::new(),
            sends: Vec::new(),
            faults: VecDeque::new(),
            scripts,
        }
    }

    /// Whether this patient reads what they receive (default yes).
    pub fn reads(&self, mobile: &str) -> bool {
        self.config.patients.get(mobile).is_none_or(|p| p.read)
    }

    pub fn send_by_id(&self, message_id: &str) -> Option<&SendRecord> {
        self.sends.iter().find(|s| s.message_id == message_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_read_from_control_json() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind": "hang", "duration": "300ms", "accepted": true}"#)
                .unwrap();
        assert_eq!(
            fault,
            Fault::Hang {
                duration: Duration::from_millis(300),
                accepted: true
            }
        );
        let fault: Fault =
            serde_json::from_str(r#"{"kind": "http_status", "status": 503}"#).unwrap();
        assert_eq!(fault.label(), "http_status 503");
        assert!(serde_json::from_str::<Fault>(r#"{"kind": "drop", "acepted": true}"#).is_err());
    }
}

//! The checked, typed form of rule and template files: what the engine runs. The running
//! engine never sees a raw (YAML-shaped) rule; `rules::load` builds these or reports why not.
//!
//! This file is the contract between the loader (`rules`, `render`) and the engine.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where something was written: shown as `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// One provider template file (`templates/990-recordatorio.yaml`).
#[derive(Debug, Clone)]
pub struct Template {
    pub id: u32,
    pub name: String,
    /// The approved body with `{1}…{n}` placeholders.
    pub body: String,
    /// Number of distinct placeholders in `body`: the variable count a send must carry.
    pub placeholders: usize,
    /// Default Handlebars expression per placeholder, as written.
    pub variables: Vec<String>,
    pub source: Location,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub trigger: Trigger,
    pub for_each: Option<ForEach>,
    /// `where:` — all must hold.
    pub conditions: Vec<Condition>,
    pub actions: Vec<Action>,
    /// The trigger's `timezone`, else the config's.
    pub timezone: Tz,
    pub source: Location,
}

pub type SharedRule = Arc<Rule>;

// Not boxed: a parsed cron (~380 bytes) makes `Cron` the largest variant, but a few hundred
// rules are all there is, and boxing it measured 2 MiB *more* idle RSS (allocation pattern).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Trigger {
    Cron(CronTrigger),
    Offset(OffsetTrigger),
    Reply(ReplyTrigger),
    Status(StatusTrigger),
    NoReply(NoReplyTrigger),
    Appointment(AppointmentChange),
}

#[derive(Debug, Clone)]
pub struct CronTrigger {
    /// As ops wrote it (5 or 6 fields).
    pub expression: String,
    /// Seconds-first form for tokio-cron-scheduler (a 5-field expression gets `0 ` prefixed).
    pub normalized: String,
    /// Grace for catching up a slot missed while the engine was down.
    pub catch_up: Duration,
    /// `normalized`, parsed once at load (the scheduler asks for the next slot on every tick).
    pub parsed: Option<croner::Cron>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetDirection {
    Before,
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    Skip,
    Send,
}

#[derive(Debug, Clone)]
pub struct OffsetTrigger {
    pub direction: OffsetDirection,
    pub offset: Duration,
    pub late: LatePolicy,
}

#[derive(Debug, Clone)]
pub struct ReplyTrigger {
    /// The glob as written (`cita-*`); `None` matches any `custom_field`, including none.
    pub custom_field: Option<String>,
    /// A set of one glob rather than a `GlobMatcher`: the set matches a `prefix-*` glob by
    /// its literal instead of compiling a regex (~7 KiB less per reply rule).
    pub custom_field_matcher: Option<globset::GlobSet>,
    /// Case-insensitive, matched against the trimmed reply text.
    pub text: Option<regex::Regex>,
    pub state: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Delivered,
    Read,
    Failed,
}

#[derive(Debug, Clone)]
pub struct StatusTrigger {
    pub status: EventKind,
    /// Only events about messages sent by this rule.
    pub rule: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NoReplyTrigger {
    pub after: Duration,
    /// The rule whose message got no reply.
    pub rule: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppointmentChange {
    Created,
    Rescheduled,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct ForEach {
    pub starts: StartsSelector,
    /// Appointment statuses selected; empty means any.
    pub status: Vec<String>,
}

impl ForEach {
    /// Whether an appointment with this status is selected (no statuses listed: any).
    pub fn selects(&self, status: &str) -> bool {
        self.status.is_empty() || self.status.iter().any(|s| s == status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartsSelector {
    /// The fire time's calendar day, in the rule's zone.
    Today,
    /// The next calendar day, in the rule's zone.
    Tomorrow,
    /// `[fire + from, fire + to)`.
    Window { from: Duration, to: Duration },
}

/// `where:` entry: the value at a dotted path equals one of `values`.
#[derive(Debug, Clone)]
pub struct Condition {
    pub path: String,
    pub values: Vec<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub enum Action {
    Send(SendAction),
    SetState(String),
    /// Fields to set on the appointment (e.g. `status: confirmed`), literal values.
    UpdateAppointment(serde_json::Map<String, serde_json::Value>),
    Notify(NotifyAction),
}

/// A `send` action. The `String`s are *keys* of compiled Handlebars templates in the rule
/// set's renderer, not the text itself; render with `RuleSet::render_send`.
#[derive(Debug, Clone)]
pub struct SendAction {
    pub template_id: u32,
    pub to: Option<String>,
    /// One key per placeholder: the rule's override, else the template file's default.
    pub variables: Vec<String>,
    pub media: Option<String>,
    pub custom_field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NotifyAction {
    /// A name under `notify:` in the config.
    pub endpoint: String,
    /// Renderer key of an optional message text.
    pub message: Option<String>,
}

/// The outcome of rendering one `send` action for one context.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RenderedSend {
    pub template_id: u32,
    /// Rendered `to`, not yet normalized (the engine turns it into a `Mobile`).
    pub to: Option<String>,
    pub variables: Vec<String>,
    pub media: Option<String>,
    pub custom_field: Option<String>,
    /// The template body with the variables placed: exactly what the patient reads.
    pub text: String,
}

/// Helper for offset triggers: when the reminder for an appointment starting at `start` is due.
impl OffsetTrigger {
    pub fn due_at(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        let offset = chrono::Duration::from_std(self.offset).unwrap_or(chrono::Duration::MAX);
        match self.direction {
            OffsetDirection::Before => start - offset,
            OffsetDirection::After => start + offset,
        }
    }
}

//! Appointments: the clinic's bookings that reminders are about, and their validation.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentStatus {
    Scheduled,
    Confirmed,
    Cancelled,
    Attended,
    NoShow,
}

impl AppointmentStatus {
    pub const ALL: [&'static str; 5] =
        ["scheduled", "confirmed", "cancelled", "attended", "no_show"];

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "scheduled" => Self::Scheduled,
            "confirmed" => Self::Confirmed,
            "cancelled" => Self::Cancelled,
            "attended" => Self::Attended,
            "no_show" => Self::NoShow,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Attended => "attended",
            Self::NoShow => "no_show",
        }
    }
}

impl fmt::Display for AppointmentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored appointment. `fields` keeps every other field the clinic sent (`paciente`,
/// `profesional`, `sede`, …) for templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appointment {
    pub id: String,
    /// Normalized: 12 digits, `57…`.
    pub mobile: String,
    pub start: DateTime<FixedOffset>,
    pub status: AppointmentStatus,
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One problem with an appointment as submitted (answered as 422 by the API, or reported per
/// row by an import).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

impl Appointment {
    pub fn start_utc(&self) -> DateTime<Utc> {
        self.start.with_timezone(&Utc)
    }

    /// The JSON templates and `where:` see: every field at the top level.
    pub fn to_context(&self) -> serde_json::Value {
        let mut map = self.fields.clone();
        map.insert("id".into(), self.id.clone().into());
        map.insert("mobile".into(), self.mobile.clone().into());
        map.insert("start".into(), self.start.to_rfc3339().into());
        map.insert("status".into(), self.status.as_str().into());
        serde_json::Value::Object(map)
    }

    /// Builds an appointment from a JSON object as the API receives it: `mobile`, `start` (RFC
    /// 3339 with offset), `status` (default `scheduled`), anything else kept. Reports every bad
    /// field, not just the first.
    pub fn from_json(
        id: &str,
        body: &serde_json::Value,
        now: DateTime<Utc>,
        existing: Option<&Appointment>,
    ) -> Result<Appointment, Vec<FieldError>> {
        let mut errors = Vec::new();
        let err = |field: &str, error: String| FieldError {
            field: field.into(),
            error,
        };
        if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control() || c == '/') {
            errors.push(err(
                "id",
                "must be 1–200 characters, without `/` or control characters".into(),
            ));
        }
        let Some(object) = body.as_object() else {
            return Err(vec![err("", "the body must be a JSON object".into())]);
        };
        let mobile = match object.get("mobile").and_then(|v| v.as_str()) {
            Some(text) => match crate::provider::Mobile::parse(text) {
                Ok(m) => Some(m.as_str().to_string()),
                Err(e) => {
                    errors.push(err("mobile", e.to_string()));
                    None
                }
            },
            None => {
                errors.push(err(
                    "mobile",
                    "required: the patient's Colombian mobile, e.g. `+57 310 233 4455`".into(),
                ));
                None
            }
        };
        let start = match object.get("start").and_then(|v| v.as_str()) {
            Some(text) => match DateTime::parse_from_rfc3339(text) {
                Ok(t) => Some(t),
                Err(_) => {
                    errors.push(err(
                        "start",
                        format!("`{text}` is not an RFC 3339 time with offset, e.g. `2026-11-26T15:30:00-05:00`"),
                    ));
                    None
                }
            },
            None => {
                errors.push(err(
                    "start",
                    "required: RFC 3339 time with offset, e.g. `2026-11-26T15:30:00-05:00`".into(),
                ));
                None
            }
        };
        let status = match object.get("status") {
            None | Some(serde_json::Value::Null) => Some(AppointmentStatus::Scheduled),
            Some(v) => match v.as_str().and_then(AppointmentStatus::parse) {
                Some(s) => Some(s),
                None => {
                    errors.push(err(
                        "status",
                        format!(
                            "`{v}` is not a status: use one of {}",
                            AppointmentStatus::ALL.join(", ")
                        ),
                    ));
                    None
                }
            },
        };
        let mut fields = serde_json::Map::new();
        for (k, v) in object {
            if !matches!(k.as_str(), "id" | "mobile" | "start" | "status") {
                fields.insert(k.clone(), v.clone());
            }
        }
        match (mobile, start, status, errors.is_empty()) {
            (Some(mobile), Some(start), Some(status), true) => Ok(Appointment {
                id: id.to_string(),
                mobile,
                start,
                status,
                fields,
                created_at: existing.map(|e| e.created_at).unwrap_or(now),
                updated_at: now,
            }),
            _ => Err(errors),
        }
    }
}

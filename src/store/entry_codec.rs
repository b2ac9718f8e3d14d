//! The outbox entry's stored form: compact binary (postcard) behind a tag byte, instead of the
//! JSON the API shows.
//!
//! Why: a reply's entry is written three times (queued, `sending`, its outcome) into the
//! outbox's busiest leaf, and sled 0.34's cost follows the bytes it writes (it rewrites a whole
//! leaf every 10 changes and cleans its log by copying live data). As JSON an entry is ~1 KB,
//! a third of it field names and RFC 3339 dates; here dates are two integers, fields are
//! positional, and the key is not repeated (it is the record's own key). The rendering
//! context stays JSON text: it is free-form.
//!
//! Records written before (format 2 and older) are JSON and still read: a JSON text never
//! starts with [`TAG`]. The layout is positional, so it only ever grows at the end, and the
//! status codes below are fixed numbers, not the enum's order.

use crate::message::{MessageStatus, OutboxEntry, OutboxKind, StatusChange};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// First byte of a compact record (0xB2 cannot start JSON text, nor UTF-8).
const TAG: u8 = 0xB2;

/// A moment, exactly: seconds and nanoseconds.
#[derive(Serialize, Deserialize)]
struct Ts(i64, u32);

impl Ts {
    fn of(t: &DateTime<Utc>) -> Ts {
        Ts(t.timestamp(), t.timestamp_subsec_nanos())
    }

    fn time(&self) -> Result<DateTime<Utc>, String> {
        DateTime::from_timestamp(self.0, self.1)
            .ok_or_else(|| format!("time {}.{:09} is out of range", self.0, self.1))
    }
}

fn status_code(s: MessageStatus) -> u8 {
    match s {
        MessageStatus::Queued => 0,
        MessageStatus::Sending => 1,
        MessageStatus::Sent => 2,
        MessageStatus::Delivered => 3,
        MessageStatus::Read => 4,
        MessageStatus::Failed => 5,
        MessageStatus::Unknown => 6,
        MessageStatus::Skipped => 7,
    }
}

fn status_of(code: u8) -> Result<MessageStatus, String> {
    Ok(match code {
        0 => MessageStatus::Queued,
        1 => MessageStatus::Sending,
        2 => MessageStatus::Sent,
        3 => MessageStatus::Delivered,
        4 => MessageStatus::Read,
        5 => MessageStatus::Failed,
        6 => MessageStatus::Unknown,
        7 => MessageStatus::Skipped,
        other => return Err(format!("unknown status code {other}")),
    })
}

/// [`StatusChange`] as stored.
#[derive(Serialize, Deserialize)]
struct Change<S> {
    status: u8,
    at: Ts,
    code: Option<u32>,
    reason: Option<S>,
    applied: bool,
    raw_date: Option<S>,
}

/// [`OutboxEntry`] as stored, but for its key. `S` is `&str` to write and `String` to read,
/// so writing copies no text.
#[derive(Serialize, Deserialize)]
struct Entry<S> {
    /// `None` for a send, else a notification's endpoint.
    notify: Option<S>,
    rule: S,
    action_index: u64,
    appointment_id: Option<S>,
    appointment_start: Option<Ts>,
    recheck_appointment: bool,
    /// JSON text.
    context: S,
    status: u8,
    not_before: Ts,
    attempts: u32,
    message_id: Option<S>,
    mobile: Option<S>,
    custom_field: Option<S>,
    template_id: Option<u32>,
    variables: Vec<S>,
    text: Option<S>,
    code: Option<u32>,
    error: Option<S>,
    timeline: Vec<Change<S>>,
    created_at: Ts,
    updated_at: Ts,
    handed_off: bool,
}

/// The stored bytes of `e`.
pub(super) fn encode(e: &OutboxEntry) -> Vec<u8> {
    let context = serde_json::to_string(&e.context).unwrap_or_else(|_| "null".into());
    let stored = Entry::<&str> {
        notify: match &e.kind {
            OutboxKind::Send => None,
            OutboxKind::Notify { endpoint } => Some(endpoint),
        },
        rule: &e.rule,
        action_index: e.action_index as u64,
        appointment_id: e.appointment_id.as_deref(),
        appointment_start: e.appointment_start.as_ref().map(Ts::of),
        recheck_appointment: e.recheck_appointment,
        context: &context,
        status: status_code(e.status),
        not_before: Ts::of(&e.not_before),
        attempts: e.attempts,
        message_id: e.message_id.as_deref(),
        mobile: e.mobile.as_deref(),
        custom_field: e.custom_field.as_deref(),
        template_id: e.template_id,
        variables: e.variables.iter().map(String::as_str).collect(),
        text: e.text.as_deref(),
        code: e.code,
        error: e.error.as_deref(),
        timeline: e
            .timeline
            .iter()
            .map(|c| Change {
                status: status_code(c.status),
                at: Ts::of(&c.at),
                code: c.code,
                reason: c.reason.as_deref(),
                applied: c.applied,
                raw_date: c.raw_date.as_deref(),
            })
            .collect(),
        created_at: Ts::of(&e.created_at),
        updated_at: Ts::of(&e.updated_at),
        handed_off: e.handed_off,
    };
    let mut out = vec![TAG];
    // Plain data into a Vec: postcard cannot fail on it.
    out.extend(postcard::to_allocvec(&stored).unwrap_or_default());
    out
}

/// The entry stored under `key` as `bytes` (compact, or JSON from an older store). The error
/// says what is wrong with the record.
pub(super) fn decode(key: &[u8], bytes: &[u8]) -> Result<OutboxEntry, String> {
    let Some(body) = bytes.strip_prefix(&[TAG]) else {
        return serde_json::from_slice(bytes).map_err(|e| e.to_string());
    };
    let s: Entry<String> = postcard::from_bytes(body).map_err(|e| e.to_string())?;
    let key = std::str::from_utf8(key)
        .map_err(|_| "its key is not UTF-8".to_string())?
        .to_string();
    let timeline = s
        .timeline
        .into_iter()
        .map(|c| {
            Ok(StatusChange {
                status: status_of(c.status)?,
                at: c.at.time()?,
                code: c.code,
                reason: c.reason,
                applied: c.applied,
                raw_date: c.raw_date,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(OutboxEntry {
        key,
        kind: match s.notify {
            None => OutboxKind::Send,
            Some(endpoint) => OutboxKind::Notify { endpoint },
        },
        rule: s.rule,
        action_index: usize::try_from(s.action_index)
            .map_err(|_| format!("action index {} is out of range", s.action_index))?,
        appointment_id: s.appointment_id,
        appointment_start: s.appointment_start.map(|t| t.time()).transpose()?,
        recheck_appointment: s.recheck_appointment,
        context: serde_json::from_str(&s.context).map_err(|e| format!("its context: {e}"))?,
        status: status_of(s.status)?,
        not_before: s.not_before.time()?,
        attempts: s.attempts,
        message_id: s.message_id,
        mobile: s.mobile,
        custom_field: s.custom_field,
        template_id: s.template_id,
        variables: s.variables,
        text: s.text,
        code: s.code,
        error: s.error,
        timeline,
        created_at: s.created_at.time()?,
        updated_at: s.updated_at.time()?,
        handed_off: s.handed_off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn full_entry() -> OutboxEntry {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 7, 30, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        let mut e = OutboxEntry::queued(
            "reply:r1:confirma#1".into(),
            OutboxKind::Send,
            "confirma",
            1,
            t,
        );
        e.appointment_id = Some("a1".into());
        e.appointment_start = Some(t + chrono::Duration::days(1));
        e.recheck_appointment = true;
        e.context = serde_json::json!({"reply": {"message": "sí, ñandú", "n": 1.5}});
        e.set_status(MessageStatus::Sending, t, None);
        e.set_status(MessageStatus::Failed, t, Some("código 4".into()));
        e.timeline.push(StatusChange {
            status: MessageStatus::Delivered,
            at: t,
            code: Some(3),
            reason: Some("late".into()),
            applied: false,
            raw_date: Some("2026-11-26 07:30:01".into()),
        });
        e.attempts = 2;
        e.message_id = Some("m-1".into());
        e.mobile = Some("573001112233".into());
        e.custom_field = Some("cita-a1".into());
        e.template_id = Some(990);
        e.variables = vec!["Ana".into(), String::new()];
        e.text = Some("Hola *Ana*".into());
        e.code = Some(4);
        e.error = Some("sin saldo".into());
        e.handed_off = true;
        e
    }

    #[test]
    fn every_field_comes_back_and_the_record_is_smaller_than_json() {
        for e in [
            full_entry(),
            OutboxEntry::queued(
                "k".into(),
                OutboxKind::Notify {
                    endpoint: "recepcion".into(),
                },
                "r",
                0,
                Utc::now(),
            ),
        ] {
            let bytes = encode(&e);
            assert_eq!(decode(e.key.as_bytes(), &bytes).unwrap(), e);
            let json = serde_json::to_vec(&e).unwrap();
            assert!(
                bytes.len() * 2 < json.len(),
                "{} vs {} bytes",
                bytes.len(),
                json.len()
            );
        }
    }

    #[test]
    fn json_records_of_older_stores_are_still_read() {
        let e = full_entry();
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(decode(e.key.as_bytes(), &json).unwrap(), e);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let bytes = encode(&full_entry());
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(b"k", &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_status = encode(&OutboxEntry::queued(
            "k".into(),
            OutboxKind::Send,
            "r",
            0,
            Utc::now(),
        ));
        // Entry layout: notify (None = 0), rule ("r": len 1 + byte), action index 0,
        // appointment id None, start None, recheck false, context "null" (len 4 + 4
        // bytes), then the status code.
        let at = 1 + 1 + 2 + 1 + 1 + 1 + 1 + 5;
        assert_eq!(
            bad_status[at], 0,
            "the queued status code is where the layout says"
        );
        bad_status[at] = 99;
        let err = decode(b"k", &bad_status).unwrap_err();
        assert!(err.contains("unknown status code 99"), "{err}");
    }
}

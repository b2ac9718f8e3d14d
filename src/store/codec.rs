//! The stored form of the records written on every reply and send (outbox entries, replies,
//! conversations): compact binary (postcard) behind a tag byte, instead of the JSON the API
//! shows.
//!
//! Why: sled 0.34's cost follows the bytes it writes (it rewrites a whole leaf every 10
//! changes and on every split, and cleans its log by copying live data), and these records
//! sit in the busiest leaves: a reply's outbox entry alone is written three times (queued,
//! `sending`, its outcome). As JSON an entry was ~1 KB, a third of it field names and RFC 3339
//! dates; here dates are two integers, fields are positional, and the record's key (entry
//! key, reply id, conversation) is not repeated inside it. A rendering context stays JSON
//! text: it is free-form.
//!
//! Records written before (store format 2 and older) are JSON and still read: a JSON text
//! never starts with [`TAG`]. Layouts are positional and postcard cannot default a missing
//! field, so a layout never changes in place: a new field means a new tag byte (and a store
//! format), with the records under this one still read. Status codes are fixed numbers, not
//! an enum's order.

use crate::conversation::{Conversation, HistoryEntry, Reply};
use crate::message::{EntryContext, MessageStatus, OutboxEntry, OutboxKind, StatusChange};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A record with a compact stored form.
pub(super) trait Compact: Sized {
    /// The stored bytes.
    fn encode(&self) -> Vec<u8>;
    /// The record stored under `key` as `bytes` (compact, or JSON from an older store); the
    /// error says what is wrong with it.
    fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, String>;
}

/// [`TAG`] and the postcard bytes of `stored`.
fn tagged<T: Serialize>(stored: &T) -> Vec<u8> {
    // Sized for a typical record (entries ~0.4 KB) so that it is written without regrowing.
    let mut out = Vec::with_capacity(512);
    out.push(TAG);
    // Plain data into a Vec: postcard cannot fail on it.
    postcard::to_extend(stored, out).unwrap_or_else(|_| vec![TAG])
}

/// The compact form in `bytes`, or `Err(json)`: the record is an older store's JSON.
fn untagged<T: DeserializeOwned>(bytes: &[u8]) -> Result<Result<T, String>, &[u8]> {
    match bytes.strip_prefix(&[TAG]) {
        // Bytes left over are damage, not slack: a record is exactly one layout.
        Some(body) => Ok(match postcard::take_from_bytes(body) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(format!("{} bytes past its end", rest.len())),
            Err(e) => Err(e.to_string()),
        }),
        None => Err(bytes),
    }
}

fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn key_text(key: &[u8]) -> Result<String, String> {
    std::str::from_utf8(key)
        .map(str::to_string)
        .map_err(|_| "its key is not UTF-8".to_string())
}

/// First byte of a compact record (0xB2 cannot start JSON text, nor UTF-8).
pub(super) const TAG: u8 = 0xB2;

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

impl Compact for OutboxEntry {
    fn encode(&self) -> Vec<u8> {
        let e = self;
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
            context: e.context.text(),
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
        tagged(&stored)
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<OutboxEntry, String> {
        let s: Entry<String> = match untagged(bytes) {
            Ok(compact) => compact?,
            Err(old) => return json(old),
        };
        let key = key_text(key)?;
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
            context: EntryContext::from_text(s.context).map_err(|e| format!("its context: {e}"))?,
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
}

/// [`Reply`] as stored, but for its id (the key).
#[derive(Serialize, Deserialize)]
struct ReplyRecord<S> {
    mobile: S,
    message: S,
    custom_field: Option<S>,
    received_at: Ts,
    rule: Option<S>,
    outcome: S,
}

impl Compact for Reply {
    fn encode(&self) -> Vec<u8> {
        tagged(&ReplyRecord::<&str> {
            mobile: &self.mobile,
            message: &self.message,
            custom_field: self.custom_field.as_deref(),
            received_at: Ts::of(&self.received_at),
            rule: self.rule.as_deref(),
            outcome: &self.outcome,
        })
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<Reply, String> {
        let s: ReplyRecord<String> = match untagged(bytes) {
            Ok(compact) => compact?,
            Err(old) => return json(old),
        };
        Ok(Reply {
            id: key_text(key)?,
            mobile: s.mobile,
            message: s.message,
            custom_field: s.custom_field,
            received_at: s.received_at.time()?,
            rule: s.rule,
            outcome: s.outcome,
        })
    }
}

/// [`Conversation`] as stored, but for its `custom_field` (the key).
#[derive(Serialize, Deserialize)]
struct ConversationRecord<S> {
    mobile: Option<S>,
    appointment_id: Option<S>,
    state: Option<S>,
    /// `(at, kind, detail, rule)`.
    history: Vec<(Ts, S, S, Option<S>)>,
    created_at: Ts,
    updated_at: Ts,
}

impl Compact for Conversation {
    fn encode(&self) -> Vec<u8> {
        tagged(&ConversationRecord::<&str> {
            mobile: self.mobile.as_deref(),
            appointment_id: self.appointment_id.as_deref(),
            state: self.state.as_deref(),
            history: self
                .history
                .iter()
                .map(|h| {
                    (
                        Ts::of(&h.at),
                        h.kind.as_str(),
                        h.detail.as_str(),
                        h.rule.as_deref(),
                    )
                })
                .collect(),
            created_at: Ts::of(&self.created_at),
            updated_at: Ts::of(&self.updated_at),
        })
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<Conversation, String> {
        let s: ConversationRecord<String> = match untagged(bytes) {
            Ok(compact) => compact?,
            Err(old) => return json(old),
        };
        let history = s
            .history
            .into_iter()
            .map(|(at, kind, detail, rule)| {
                Ok(HistoryEntry {
                    at: at.time()?,
                    kind,
                    detail,
                    rule,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Conversation {
            custom_field: key_text(key)?,
            mobile: s.mobile,
            appointment_id: s.appointment_id,
            state: s.state,
            history,
            created_at: s.created_at.time()?,
            updated_at: s.updated_at.time()?,
        })
    }
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
        e.context = serde_json::json!({"reply": {"message": "sí, ñandú", "n": 1.5}}).into();
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
            let bytes = e.encode();
            assert_eq!(OutboxEntry::decode(e.key.as_bytes(), &bytes).unwrap(), e);
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
        assert_eq!(OutboxEntry::decode(e.key.as_bytes(), &json).unwrap(), e);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let bytes = full_entry().encode();
        let mut longer = bytes.clone();
        longer.push(0);
        let err = OutboxEntry::decode(b"k", &longer).unwrap_err();
        assert!(err.contains("1 bytes past its end"), "{err}");
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                OutboxEntry::decode(b"k", &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad_status =
            OutboxEntry::queued("k".into(), OutboxKind::Send, "r", 0, Utc::now()).encode();
        // Entry layout: notify (None = 0), rule ("r": len 1 + byte), action index 0,
        // appointment id None, start None, recheck false, context "null" (len 4 + 4
        // bytes), then the status code.
        let at = 1 + 1 + 2 + 1 + 1 + 1 + 1 + 5;
        assert_eq!(
            bad_status[at], 0,
            "the queued status code is where the layout says"
        );
        bad_status[at] = 99;
        let err = OutboxEntry::decode(b"k", &bad_status).unwrap_err();
        assert!(err.contains("unknown status code 99"), "{err}");
    }

    #[test]
    fn replies_and_conversations_come_back_whole_from_either_form() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 7, 30, 0).unwrap()
            + chrono::Duration::nanoseconds(5);
        let reply = Reply {
            id: "01a21640-780f-7545-975a-4035aef24cf2".into(),
            mobile: "573001112233".into(),
            message: "Sí, confirmo ✅".into(),
            custom_field: Some("cita-a1".into()),
            received_at: t,
            rule: Some("confirma".into()),
            outcome: "handled".into(),
        };
        let bare = Reply {
            custom_field: None,
            rule: None,
            ..reply.clone()
        };
        for r in [reply, bare] {
            let bytes = r.encode();
            assert_eq!(Reply::decode(r.id.as_bytes(), &bytes).unwrap(), r);
            let json = serde_json::to_vec(&r).unwrap();
            assert_eq!(Reply::decode(r.id.as_bytes(), &json).unwrap(), r);
            assert!(
                bytes.len() * 2 < json.len(),
                "{} vs {}",
                bytes.len(),
                json.len()
            );
        }

        let mut c = Conversation::new("cita-a1", t);
        c.mobile = Some("573001112233".into());
        c.appointment_id = Some("a1".into());
        c.state = Some("confirmada".into());
        c.record(t, "reply", "1".into(), None);
        c.record(t, "state", "confirmada".into(), Some("confirma"));
        for conv in [Conversation::new("vacía", t), c] {
            let key = conv.custom_field.as_bytes();
            let bytes = conv.encode();
            assert_eq!(Conversation::decode(key, &bytes).unwrap(), conv);
            let json = serde_json::to_vec(&conv).unwrap();
            assert_eq!(Conversation::decode(key, &json).unwrap(), conv);
            assert!(
                bytes.len() * 2 < json.len(),
                "{} vs {}",
                bytes.len(),
                json.len()
            );
            assert!(Conversation::decode(key, &bytes[..bytes.len() - 1]).is_err());
        }
    }
}

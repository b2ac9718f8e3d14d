//! Webhook intake and the reactions to it: patients' replies (opt-out, dedupe, reply rules,
//! no-reply timers) and delivery events (status only moves forward, `status` rules).

use super::actions::{ConversationNote, Occasion};
use super::handoff::Hold;
use super::{Counters, Engine, EngineError};
use crate::conversation::{Conversation, DeadLetter, OptOut, Reply};
use crate::message::{MessageStatus, StatusChange};
use crate::provider::mask_mobile as mask;
use crate::provider::webhook::{self, DeliveryStatus, ReplyEvent, StatusEvent, WebhookEvent};
use crate::rules::{EventKind, Trigger};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::sync::Arc;

/// Whether a webhook event was never seen before: processed at once under an id minted for
/// it, nothing can carry that id yet, so the checks for an earlier half-done run are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fresh {
    Yes,
    /// From the inbox: it may have been processed in part before.
    Replay,
}

/// What the webhook endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Stored durably: 200.
    Accepted,
    /// Not JSON: 400, kept as a dead letter.
    Malformed,
    /// JSON of a shape we do not know: 202, kept as a dead letter.
    UnknownShape,
}

const DEAD_LETTER_MAX: usize = 64 * 1024;

impl Engine {
    /// Takes one webhook body, durably, before answering. The reaction runs here when nothing
    /// older waits in the inbox, else in the processor task.
    pub async fn accept_webhook(&self, body: &[u8]) -> Result<Intake, EngineError> {
        Counters::bump(&self.counters.webhook_events);
        let now = self.clock.now();
        let intake = match webhook::parse(body) {
            Ok(event) => {
                self.take_event(event, body, now).await?;
                Intake::Accepted
            }
            Err(e) => {
                let intake = match e {
                    webhook::WebhookError::Malformed { .. } => Intake::Malformed,
                    _ => Intake::UnknownShape,
                };
                Counters::bump(&self.counters.dead_letters);
                let text =
                    String::from_utf8_lossy(&body[..body.len().min(DEAD_LETTER_MAX)]).into_owned();
                self.store.put_dead_letter(&DeadLetter {
                    id: uuid::Uuid::now_v7().to_string(),
                    received_at: now,
                    reason: e.to_string(),
                    body: text,
                })?;
                tracing::warn!(reason = %e, "webhook body kept as a dead letter");
                intake
            }
        };
        self.store.durable().await?;
        Ok(intake)
    }

    /// Reacts to the event at once when nothing older waits in the inbox, before the one flush
    /// the answer waits for; behind older events (or when the reaction fails) the body goes to
    /// the inbox for the processor.
    ///
    /// A reply reacted to here writes its record first, as `received`: its reaction is keyed
    /// by the id minted here, and sled recovers a prefix of its writes, so any part of the
    /// reaction that survives a crash comes with that record, which the next start replays
    /// (effects are idempotent) rather than leave half-done for the provider's retry (a new
    /// id) to run a second time. The store's reply mark bounds the records that start looks
    /// at (`store::reply_mark`). A delivery event needs no such write: its
    /// reaction is keyed by what it says (message, status, provider date), so the provider's
    /// retry of it finds whatever part survived and adds nothing twice.
    ///
    /// Reacting here saves the processor's read of the body, a second parse, and the reads
    /// that look for an earlier run of an event first seen now. Reactions only touch the
    /// store, never the network, so the provider's callback is not slowed by a rule.
    async fn take_event(
        &self,
        event: WebhookEvent,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let _turn = self.reacting.lock().await;
        let behind = self.store.inbox_depth() > 0;
        // A fresh reply's id is minted by its hold (under the store's reply marks): its record,
        // written first, stands for the body until the hold is released.
        let hold = (!behind && matches!(event, WebhookEvent::Reply(_)))
            .then(|| Arc::new(Hold::begin(&self.store)));
        let id = hold
            .as_ref()
            .map_or_else(uuid::Uuid::now_v7, |h| h.reply_id());
        if !behind {
            match self.react_to(&id.to_string(), event, body, now, Fresh::Yes, hold.as_ref()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Replayed under the same id: a reply's record, if written, is `received`,
                    // and a replay finds the sends handed off before the failure.
                    tracing::warn!(error = %e, "reacting to a webhook event failed; it goes to the inbox to retry");
                }
            }
        }
        if let Err(e) = self.store.push_inbox_as(id, now, body) {
            let Some(hold) = &hold else {
                return Err(e.into());
            };
            // Its `received` record, if written, stands for the body: left unfinished, the
            // next start replays it. Answering an error instead would have the provider send
            // it again under a new id, and both would run.
            hold.keep_unfinished();
            if !matches!(self.store.get_reply(&id.to_string()), Ok(Some(_))) {
                return Err(e.into());
            }
            tracing::error!(error = %e, reply = %id, "a reply whose reaction failed could not be queued for a retry; the next start replays it");
            return Ok(());
        }
        self.inbox_wake.notify_one();
        Ok(())
    }

    fn react_to(
        &self,
        id: &str,
        event: WebhookEvent,
        body: &[u8],
        received_at: DateTime<Utc>,
        fresh: Fresh,
        hold: Option<&Arc<Hold>>,
    ) -> Result<(), EngineError> {
        match event {
            WebhookEvent::Reply(reply) => self.on_reply(id, reply, received_at, fresh, hold),
            WebhookEvent::Status(event) => self.on_status(event, body),
        }
    }

    /// Processes the inbox in arrival order until shutdown.
    pub(crate) async fn run_processor(&self) {
        let mut shutdown = self.shutdown_signal();
        loop {
            if let Err(e) = self.drain_inbox().await {
                tracing::error!(error = %e, "processing webhook events failed; retrying shortly");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = self.inbox_wake.notified() => {}
                _ = super::stop_requested(&mut shutdown) => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    }

    /// Processes every event in the inbox. Effects are idempotent (occasion keys), and an
    /// event leaves the inbox only after its effects are written, so a crash in between
    /// replays it harmlessly.
    pub async fn drain_inbox(&self) -> Result<usize, EngineError> {
        let mut n = 0;
        loop {
            // Read in turn: an event reacted to at intake is in the inbox only while its
            // reaction holds the turn, so no batch read in turn can hold it (and replay it).
            let batch = {
                let _turn = self.reacting.lock().await;
                self.store.inbox(512)?
            };
            if batch.is_empty() {
                break;
            }
            for (id, received_at, body) in batch {
                let _turn = self.reacting.lock().await;
                match webhook::parse(&body) {
                    Ok(event) => {
                        self.react_to(&id, event, &body, received_at, Fresh::Replay, None)?
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "an inbox event no longer parses; dropped")
                    }
                }
                // Effects are written before the event leaves the inbox, and sled persists
                // writes in order: a crash replays the event (harmlessly) rather than losing
                // it. Whatever is to be sent is flushed by the dispatcher before it goes.
                self.store.remove_inbox(&id)?;
                n += 1;
            }
        }
        Ok(n)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(reply = %id, custom_field = ?event.custom_field))]
    fn on_reply(
        &self,
        id: &str,
        event: ReplyEvent,
        received_at: DateTime<Utc>,
        fresh: Fresh,
        hold: Option<&Arc<Hold>>,
    ) -> Result<(), EngineError> {
        Counters::bump(&self.counters.replies);
        let now = self.clock.now();
        let text = event.message.trim().to_string();
        let mut reply = Reply {
            id: id.to_string(),
            mobile: event.mobile.clone(),
            message: event.message.clone(),
            custom_field: event.custom_field.clone().filter(|c| !c.is_empty()),
            received_at,
            rule: None,
            outcome: Reply::RECEIVED.into(),
        };
        // The reply's record is the last write of its reaction, whatever the outcome, and sled
        // recovers a prefix of its writes: a replayed event (a crash between its effects and
        // leaving the inbox) whose record is there with its outcome was reacted to in full.
        // One without it, or still `received`, runs again; its effects are idempotent.
        // A replay may also find sends that the first run handed off, not yet in the stored
        // queue (a reaction that failed after handing them off): the queue takes them.
        if fresh == Fresh::Replay {
            self.store.settle_hand_offs_of(id)?;
            if self.store.get_reply(id)?.is_some_and(|r| r.is_done()) {
                return Ok(());
            }
        } else {
            // First, so that any part of the reaction a crash leaves comes with it (sled
            // recovers a prefix of its writes): the store's reply mark stays at or below it
            // until it is done with, and the next start replays it (see `Store::open`).
            self.store.put_reply(&reply)?;
        }
        let fingerprint = reply.fingerprint();
        let window =
            chrono::Duration::from_std(self.config.webhook.dedupe_window).unwrap_or_default();
        if self
            .store
            .record_reply_sighting(&fingerprint, received_at, id, window)?
            .is_some()
        {
            Counters::bump(&self.counters.replies_duplicate);
            reply.outcome = "duplicate".into();
            self.store.put_reply(&reply)?;
            return Ok(());
        }
        // The reply is written with its outcome last. The sighting just recorded lives in
        // memory and is rebuilt from reply records after a crash, so a replay of this event
        // is never taken for a duplicate of itself.

        // Opt-out keywords are handled before any rule.
        let keyword = normalize_keyword(&text);
        let conversation_key = reply.custom_field.clone();
        if self.opt_out_keywords.stop.contains(&keyword) {
            self.store.opt_out(&OptOut {
                mobile: reply.mobile.clone(),
                keyword: text.clone(),
                at: now,
            })?;
            Counters::bump(&self.counters.opted_out);
            if let Some(cf) = &conversation_key {
                self.store.update_conversation(cf, now, |c| {
                    c.record(now, "opted_out", text.clone(), None)
                })?;
            }
            reply.outcome = "opted_out".into();
            self.store.put_reply(&reply)?;
            tracing::info!(reply = %reply.id, mobile = %mask(&reply.mobile), "patient opted out");
            return Ok(());
        }
        if self.opt_out_keywords.start.contains(&keyword) {
            self.store.opt_in(&reply.mobile)?;
            reply.outcome = "opted_in".into();
            self.store.put_reply(&reply)?;
            tracing::info!(reply = %reply.id, mobile = %mask(&reply.mobile), "patient opted back in");
            return Ok(());
        }

        // A reply stops the no-reply timers of its conversation, and is a line in it: written
        // with the matched rule's changes to the conversation (one write), or alone below.
        let (note, conversation, conversation_read) = match &conversation_key {
            Some(cf) => {
                for key in self.store.due_keys_with_prefix(&format!("noreply|{cf}|"))? {
                    self.store.cancel_due(&key)?;
                }
                let note = ConversationNote {
                    custom_field: cf.clone(),
                    mobile: reply.mobile.clone(),
                    kind: "reply",
                    detail: text.clone(),
                };
                let read = self.store.read_conversation(cf)?;
                let mut conversation = read
                    .conversation
                    .clone()
                    .unwrap_or_else(|| Conversation::new(cf, now));
                note.apply(&mut conversation, now);
                (Some(note), Some(conversation), Some(read))
            }
            None => (None, None, None),
        };
        let state = conversation.as_ref().and_then(|c| c.state.clone());
        let rules = self.rules();
        let Some(rule) = rules.match_reply(conversation_key.as_deref(), &text, state.as_deref())
        else {
            Counters::bump(&self.counters.replies_unhandled);
            reply.outcome = "unhandled".into();
            if let Some(note) = &note {
                self.store.update_conversation_known(
                    &note.custom_field,
                    conversation_read.as_ref(),
                    now,
                    |c| note.apply(c, now),
                )?;
            }
            self.store.put_reply(&reply)?;
            tracing::info!(reply = %reply.id, custom_field = ?conversation_key, "reply matched no rule (unhandled)");
            return Ok(());
        };
        Counters::bump(&self.counters.replies_matched);
        let appointment = match conversation.as_ref().and_then(|c| c.appointment_id.clone()) {
            Some(aid) => self.store.get_appointment(&aid)?,
            None => None,
        };
        reply.outcome = "handled".into();
        reply.rule = Some(rule.name.clone());
        let mut key = crate::store::reply_occasion(&reply.id, &rule.name);
        if fresh == Fresh::Replay {
            if let Some(old) = self.store.legacy_reply_occasion(&reply.id, &rule.name)? {
                key = old;
            }
        }
        let occ = Occasion {
            key,
            appointment,
            reply: Some(reply.clone()),
            custom_field: conversation_key,
            note,
            conversation,
            conversation_read,
            fresh: fresh == Fresh::Yes,
            hold: hold.cloned(),
            ..Default::default()
        };
        tracing::info!(reply = %reply.id, custom_field = ?occ.custom_field, rule = %rule.name, "reply matched");
        self.run_actions(rule, &occ, now)?;
        self.store.put_reply(&reply)?;
        Ok(())
    }

    fn on_status(&self, event: StatusEvent, raw: &[u8]) -> Result<(), EngineError> {
        Counters::bump(&self.counters.status_events);
        let now = self.clock.now();
        let Some(key) = self.store.message_key(event.message_id.as_str())? else {
            // The send's answer may not be stored yet: keep the event, apply it when it is.
            self.store.park_orphan(event.message_id.as_str(), raw)?;
            // The answer may have been stored between the lookup and the park, its look for
            // parked events finding none: look again, or this one stays parked for good.
            if let Some(key) = self.store.message_key(event.message_id.as_str())? {
                self.apply_orphans(event.message_id.as_str(), &key)?;
            }
            return Ok(());
        };
        self.apply_status(&key, &event, now)
    }

    /// Applies a delivery event to the message with outbox key `key`, and runs `status` rules
    /// when it moved the status forward.
    #[tracing::instrument(level = "debug", skip_all, fields(key = %key, message_id = %event.message_id.as_str(), status = ?event.status))]
    pub(crate) fn apply_status(
        &self,
        key: &str,
        event: &StatusEvent,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let next = match event.status {
            DeliveryStatus::Sent => MessageStatus::Sent,
            DeliveryStatus::Delivered => MessageStatus::Delivered,
            DeliveryStatus::Read => MessageStatus::Read,
            DeliveryStatus::Failed => MessageStatus::Failed,
        };
        let reason = event.reason.clone().or_else(|| {
            event
                .code
                .and_then(crate::provider::failure_reason)
                .map(str::to_string)
        });
        // A repeat of an event already applied (a provider retry, or a replay after a crash)
        // adds nothing to the timeline, but its `status` rules run again: if a crash cut the
        // first run short, what it did not write is done now, and what it wrote is not done
        // twice (occasion keys).
        let mut repeat_of_applied = false;
        let updated = self.store.update_entry(key, |e| {
            let applied = e.status.advances_to(next);
            let same = |c: &StatusChange| {
                c.status == next && c.raw_date == event.raw_date && c.code == event.code
            };
            if let Some(earlier) = e.timeline.iter().find(|c| same(c)) {
                repeat_of_applied = earlier.applied;
                return false;
            }
            repeat_of_applied = false;
            e.timeline.push(StatusChange {
                status: next,
                at: now,
                code: event.code,
                reason: reason.clone(),
                applied,
                raw_date: event.raw_date.clone(),
            });
            if applied {
                e.status = next;
                e.updated_at = now;
                if next == MessageStatus::Failed {
                    e.code = event.code;
                    e.error = reason.clone();
                }
            }
            true
        })?;
        let (entry, repeat) = match updated {
            Some(entry) => (entry, false),
            None if repeat_of_applied => match self.store.get_entry(key)? {
                Some(entry) => (entry, true),
                None => return Ok(()),
            },
            None => return Ok(()),
        };
        let applied = repeat || entry.timeline.last().map(|c| c.applied).unwrap_or(false);
        if !applied {
            return Ok(());
        }
        // A failure belongs in the conversation's story; delivered/read stay in the message's
        // own timeline (one write per event instead of two on the busiest path).
        if let (false, Some(cf), MessageStatus::Failed) = (repeat, &entry.custom_field, next) {
            let detail = format!("failed: {}", reason.as_deref().unwrap_or("no reason given"));
            self.store.update_conversation(cf, now, |c| {
                c.record(now, "failed", detail.clone(), Some(&entry.rule))
            })?;
        }
        let kind = match next {
            MessageStatus::Delivered => EventKind::Delivered,
            MessageStatus::Read => EventKind::Read,
            MessageStatus::Failed => EventKind::Failed,
            _ => return Ok(()),
        };
        let appointment = match &entry.appointment_id {
            Some(id) => self.store.get_appointment(id)?,
            None => None,
        };
        let message = json!({
            "id": entry.message_id,
            "status": next.as_str(),
            "code": event.code,
            "reason": reason,
            "rule": entry.rule,
            "template": entry.template_id,
            "mobile": entry.mobile,
        });
        let rules = self.rules();
        for rule in rules.rules.iter().filter(|r| r.enabled) {
            if let Trigger::Status(t) = &rule.trigger {
                if t.status == kind && t.rule.as_ref().is_none_or(|r| *r == entry.rule) {
                    let occ = Occasion {
                        key: format!(
                            "status:{}:{}:{}",
                            rule.name,
                            entry
                                .message_id
                                .clone()
                                .unwrap_or_else(|| entry.key.clone()),
                            next.as_str()
                        ),
                        appointment: appointment.clone(),
                        message: Some(message.clone()),
                        custom_field: entry.custom_field.clone(),
                        ..Default::default()
                    };
                    self.run_actions(rule, &occ, now)?;
                }
            }
        }
        Ok(())
    }

    /// Applies delivery events that arrived before the send's answer was stored.
    pub(crate) fn apply_orphans(&self, message_id: &str, key: &str) -> Result<(), EngineError> {
        let now = self.clock.now();
        for raw in self.store.take_orphans(message_id)? {
            if let Ok(WebhookEvent::Status(event)) = webhook::parse(&raw) {
                self.apply_status(key, &event, now)?;
            }
        }
        Ok(())
    }
}

/// Upper-case, accents and extra spaces removed: `cancelar  suscripción` = `CANCELAR SUSCRIPCION`.
/// Whether a normalized reply is one of the configured keywords (as ops wrote them).
/// The opt-out and opt-in keywords, normalized as replies are.
#[derive(Debug)]
pub(crate) struct OptOutKeywords {
    stop: std::collections::HashSet<String>,
    start: std::collections::HashSet<String>,
}

impl OptOutKeywords {
    pub(crate) fn new(config: &crate::config::OptOutConfig) -> Self {
        let normalized = |words: &[String]| words.iter().map(|w| normalize_keyword(w)).collect();
        OptOutKeywords {
            stop: normalized(&config.stop),
            start: normalized(&config.start),
        }
    }
}

fn normalize_keyword(text: &str) -> String {
    let folded: String = text
        .chars()
        .map(|c| match c {
            'á' | 'Á' => 'A',
            'é' | 'É' => 'E',
            'í' | 'Í' => 'I',
            'ó' | 'Ó' => 'O',
            'ú' | 'Ú' | 'ü' | 'Ü' => 'U',
            'ñ' | 'Ñ' => 'N',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_fold_case_accents_and_spaces() {
        assert_eq!(
            normalize_keyword("  cancelar   suscripción "),
            "CANCELAR SUSCRIPCION"
        );
        assert_eq!(normalize_keyword("Baja"), "BAJA");
    }

    #[test]
    fn configured_keywords_are_compared_in_the_replies_form() {
        let config = crate::config::OptOutConfig {
            stop: vec!["no más".into(), "Cancelar  Suscripción".into()],
            start: vec!["alta".into()],
        };
        let k = OptOutKeywords::new(&config);
        assert!(k.stop.contains(&normalize_keyword("NO MAS")));
        assert!(k
            .stop
            .contains(&normalize_keyword(" cancelar suscripcion ")));
        assert!(!k.stop.contains(&normalize_keyword("no")));
        assert!(k.start.contains(&normalize_keyword("ALTA")));
        assert!(!k.start.contains(&normalize_keyword("no más")));
    }
}

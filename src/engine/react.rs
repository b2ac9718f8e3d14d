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
    /// A reply reacted to here writes its record first, with what its reaction decided: its
    /// reaction is keyed by the id minted here, and sled recovers a prefix of its writes, so
    /// any part of the reaction that survives a crash comes with that record, which the next
    /// start replays (completing the recorded decision; effects are idempotent) rather than
    /// leave half-done for the provider's retry (a new id) to run a second time. The store's reply mark bounds the records that start looks
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
        let _keep_on_panic = hold.clone().map(super::handoff::KeepOnPanic);
        if !behind {
            match self.react_to(&id.to_string(), event, body, now, Fresh::Yes, hold.as_ref()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Replayed under the same id: a reply's record, if written, says what was
                    // decided, and a replay finds the sends handed off before the failure.
                    tracing::warn!(error = %e, "reacting to a webhook event failed; it goes to the inbox to retry");
                }
            }
        }
        if let Err(e) = self.store.push_inbox_as(id, now, body) {
            let Some(hold) = &hold else {
                return Err(e.into());
            };
            // Its record, if written, stands for the body: left unfinished, the
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
        // A replay (a reaction that failed, or one a crash cut short) may find the record its
        // first run wrote first: it completes what that run decided rather than decide again,
        // since the first run's own writes (the conversation's state, the sightings) may now
        // point elsewhere. It may also find sends that run handed off, not yet in the stored
        // queue: the queue takes them.
        let older = fresh == Fresh::Replay && self.store.reply_record_is_older(id);
        let recorded = if fresh == Fresh::Replay {
            self.store.settle_hand_offs_of(id)?;
            // `received`: a record of an older recuerda's first write, nothing decided.
            let record = self.store.get_reply(id)?.filter(Reply::is_done);
            // An older format wrote it last: its reaction was done.
            if record.is_some() && older {
                return Ok(());
            }
            record
        } else {
            None
        };
        // The inbox keeps its items' times to the millisecond; the record has it exactly, as
        // its line in the conversation does.
        let received_at = recorded.as_ref().map_or(received_at, |r| r.received_at);
        reply.received_at = received_at;
        let conversation_key = reply.custom_field.clone();
        let mobile = reply.mobile.clone();
        let note = |kind: &'static str| {
            conversation_key.as_ref().map(|cf| ConversationNote {
                custom_field: cf.clone(),
                mobile: mobile.clone(),
                kind,
                detail: text.clone(),
                at: received_at,
            })
        };
        let read = match &conversation_key {
            Some(cf) => Some(self.store.read_conversation(cf)?),
            None => None,
        };
        let rules = self.rules();
        // The conversation as the reply's line leaves it, and its appointment: what a rule's
        // `where` and its actions see. Made once, when a rule is to be matched or run.
        let mut scene = None;
        let mut decided_last = None;
        let decision = match &recorded {
            Some(r) => match Decision::recorded(r, &rules) {
                Some(d) => d,
                None => {
                    tracing::warn!(reply = %id, rule = ?r.rule, "a replayed reply's rule is no longer loaded; what it had not done is left undone");
                    return Ok(());
                }
            },
            None => {
                let d = match self.decide_early(&reply, &text, received_at)? {
                    Some(d) => d,
                    None => {
                        let s = self.reply_scene(note("reply").as_ref(), read.as_ref(), now)?;
                        let d = self.match_rule(&reply, &text, &s, &rules, now)?;
                        scene = Some(s);
                        d
                    }
                };
                reply.outcome = d.word().into();
                reply.rule = d.rule().map(|r| r.name.clone());
                if older {
                    // Its id says "written the older way": its record must keep saying
                    // `received` until the reaction is done, and is written with the
                    // decision last (below), or a replay would take it for a finished one.
                    let mut received = reply.clone();
                    (received.outcome, received.rule) = (Reply::RECEIVED.into(), None);
                    self.store.put_reply(&received)?;
                    decided_last = Some(reply.clone());
                } else {
                    // Its one record, first: any part of the reaction a crash leaves comes
                    // with it (sled recovers a prefix of its writes), and the store's reply
                    // mark stays at or below it until it is done with, so the next start
                    // replays it (see `Store::open`).
                    self.store.put_reply(&reply)?;
                }
                d
            }
        };
        if let Some(r) = recorded {
            (reply.outcome, reply.rule) = (r.outcome, r.rule);
        }
        let reacted = self.react_as_decided(
            decision,
            reply,
            &text,
            note,
            read,
            scene,
            fresh,
            hold,
            received_at,
            now,
        );
        if let (Ok(()), Some(record)) = (&reacted, decided_last) {
            self.store.put_reply(&record)?;
        }
        reacted
    }

    /// The effects of what was decided for `reply` (its record written).
    #[allow(clippy::too_many_arguments)]
    fn react_as_decided(
        &self,
        decision: Decision,
        reply: Reply,
        text: &str,
        note: impl Fn(&'static str) -> Option<ConversationNote>,
        read: Option<crate::store::KnownConversation>,
        scene: Option<ReplyScene>,
        fresh: Fresh,
        hold: Option<&Arc<Hold>>,
        received_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let conversation_key = reply.custom_field.clone();
        match decision {
            Decision::Duplicate => {
                Counters::bump(&self.counters.replies_duplicate);
                Ok(())
            }
            Decision::OptedOut => {
                // Timed at its arrival, so a replay writes the same record.
                self.store.opt_out(&OptOut {
                    mobile: reply.mobile.clone(),
                    keyword: text.to_string(),
                    at: received_at,
                })?;
                Counters::bump(&self.counters.opted_out);
                if let Some(note) = note("opted_out") {
                    self.store.update_conversation_known(
                        &note.custom_field,
                        read.as_ref(),
                        now,
                        |c| {
                            if !note.is_in(c) {
                                note.apply(c)
                            }
                        },
                    )?;
                }
                tracing::info!(reply = %reply.id, mobile = %mask(&reply.mobile), "patient opted out");
                Ok(())
            }
            Decision::OptedIn => {
                self.store.opt_in(&reply.mobile)?;
                tracing::info!(reply = %reply.id, mobile = %mask(&reply.mobile), "patient opted back in");
                Ok(())
            }
            Decision::Unhandled | Decision::Handled(_) => {
                let note = note("reply");
                let conversation = read.as_ref().and_then(|k| k.conversation.as_ref());
                // Its line is its reaction's last write of its own: all the rest is there but
                // for the sends it handed off, which the dispatcher may never have written.
                let complete = fresh == Fresh::Replay
                    && matches!((&note, conversation), (Some(n), Some(c)) if n.is_in(c));
                if complete && matches!(decision, Decision::Unhandled) {
                    return Ok(());
                }
                // A reply stops the no-reply timers of its conversation.
                if let (Some(cf), false) = (&conversation_key, complete) {
                    for key in self.store.due_keys_with_prefix(&format!("noreply|{cf}|"))? {
                        self.store.cancel_due(&key)?;
                    }
                }
                match decision {
                    Decision::Handled(rule) => {
                        let scene = match scene {
                            Some(s) => s,
                            None => self.reply_scene(note.as_ref(), read.as_ref(), now)?,
                        };
                        let note = note.filter(|_| !complete);
                        self.run_reply_rule(
                            &rule, reply, note, scene, read, fresh, complete, hold, now,
                        )
                    }
                    _ => {
                        Counters::bump(&self.counters.replies_unhandled);
                        if let Some(note) = &note {
                            self.store.update_conversation_known(
                                &note.custom_field,
                                read.as_ref(),
                                now,
                                |c| note.apply(c),
                            )?;
                        }
                        tracing::info!(reply = %reply.id, custom_field = ?conversation_key, "reply matched no rule (unhandled)");
                        Ok(())
                    }
                }
            }
        }
    }

    /// What becomes of a reply first seen now (or replayed with nothing decided), before any
    /// rule: a duplicate within the dedupe window, or an opt-out keyword; `None` when the reply
    /// rules decide.
    fn decide_early(
        &self,
        reply: &Reply,
        text: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Option<Decision>, EngineError> {
        let window =
            chrono::Duration::from_std(self.config.webhook.dedupe_window).unwrap_or_default();
        // The sighting lives in memory and is rebuilt from reply records after a crash: a
        // replay of this event is never taken for a duplicate of itself (same id).
        if self
            .store
            .record_reply_sighting(&reply.fingerprint(), received_at, &reply.id, window)?
            .is_some()
        {
            return Ok(Some(Decision::Duplicate));
        }
        // Opt-out keywords are handled before any rule.
        let keyword = normalize_keyword(text);
        if self.opt_out_keywords.stop.contains(&keyword) {
            return Ok(Some(Decision::OptedOut));
        }
        if self.opt_out_keywords.start.contains(&keyword) {
            return Ok(Some(Decision::OptedIn));
        }
        Ok(None)
    }

    /// The first reply rule that matches the reply and whose `where` holds (as `recuerda
    /// preview` says). Decided here, before the reaction writes anything, and recorded: a
    /// replay never asks again, since the first run's own writes (an appointment updated, a
    /// state set) could make a `where` that held fail.
    fn match_rule(
        &self,
        reply: &Reply,
        text: &str,
        scene: &ReplyScene,
        rules: &crate::rules::RuleSet,
        now: DateTime<Utc>,
    ) -> Result<Decision, EngineError> {
        let state = scene.conversation.as_ref().and_then(|c| c.state.as_deref());
        let ctx = || {
            let occ = Occasion {
                appointment: scene.appointment.clone(),
                reply: Some(reply.clone()),
                custom_field: reply.custom_field.clone(),
                ..Default::default()
            };
            self.context(&occ, None, scene.conversation.as_ref(), now)
        };
        // Made from what is in hand (no store read): an error here is a bug, said as one.
        let matched = rules.match_reply_lazy(reply.custom_field.as_deref(), text, state, ctx)?;
        Ok(match matched {
            Some(rule) => Decision::Handled(rule.clone()),
            None => Decision::Unhandled,
        })
    }

    /// The conversation as the reply's line (`note`) leaves it, and its appointment.
    fn reply_scene(
        &self,
        note: Option<&ConversationNote>,
        read: Option<&crate::store::KnownConversation>,
        now: DateTime<Utc>,
    ) -> Result<ReplyScene, EngineError> {
        let conversation = note.map(|note| {
            let mut c = read
                .and_then(|k| k.conversation.clone())
                .unwrap_or_else(|| Conversation::new(&note.custom_field, now));
            if !note.is_in(&c) {
                note.apply(&mut c);
            }
            c
        });
        let appointment = match conversation
            .as_ref()
            .and_then(|c| c.appointment_id.as_ref())
        {
            Some(aid) => self.store.get_appointment(aid)?,
            None => None,
        };
        Ok(ReplyScene {
            conversation,
            appointment,
        })
    }

    /// Runs the reply rule `rule` for `reply` (its record already written): its conversation
    /// line goes with the rule's changes to the conversation, in one write.
    #[allow(clippy::too_many_arguments)]
    fn run_reply_rule(
        &self,
        rule: &crate::rules::SharedRule,
        reply: Reply,
        note: Option<ConversationNote>,
        scene: ReplyScene,
        read: Option<crate::store::KnownConversation>,
        fresh: Fresh,
        complete: bool,
        hold: Option<&Arc<Hold>>,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        Counters::bump(&self.counters.replies_matched);
        let ReplyScene {
            conversation,
            appointment,
        } = scene;
        let mut key = crate::store::reply_occasion(&reply.id, &rule.name);
        if fresh == Fresh::Replay {
            if let Some(old) = self.store.legacy_reply_occasion(&reply.id, &rule.name)? {
                key = old;
            }
        }
        let occ = Occasion {
            key,
            appointment,
            custom_field: reply.custom_field.clone(),
            reply: Some(reply),
            note,
            conversation,
            conversation_read: read,
            fresh: fresh == Fresh::Yes,
            hold: hold.cloned(),
            complete,
            ..Default::default()
        };
        tracing::info!(reply = %occ.reply.as_ref().map_or("", |r| r.id.as_str()), custom_field = ?occ.custom_field, rule = %rule.name, "reply matched");
        self.run_actions(rule, &occ, now)?;
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

/// The conversation as a reply's line leaves it, and its appointment.
struct ReplyScene {
    conversation: Option<Conversation>,
    appointment: Option<crate::appointment::Appointment>,
}

/// What a reply's reaction decided, recorded (as its outcome and rule) in its record before
/// anything else it writes.
enum Decision {
    Duplicate,
    OptedOut,
    OptedIn,
    Unhandled,
    Handled(crate::rules::SharedRule),
}

impl Decision {
    /// The reply's outcome word.
    fn word(&self) -> &'static str {
        match self {
            Decision::Duplicate => "duplicate",
            Decision::OptedOut => "opted_out",
            Decision::OptedIn => "opted_in",
            Decision::Unhandled => "unhandled",
            Decision::Handled(_) => "handled",
        }
    }

    fn rule(&self) -> Option<&crate::rules::SharedRule> {
        match self {
            Decision::Handled(r) => Some(r),
            _ => None,
        }
    }

    /// The decision recorded in `reply`; `None` when it names a rule no longer loaded.
    fn recorded(reply: &Reply, rules: &crate::rules::RuleSet) -> Option<Decision> {
        Some(match reply.outcome.as_str() {
            "duplicate" => Decision::Duplicate,
            "opted_out" => Decision::OptedOut,
            "opted_in" => Decision::OptedIn,
            "handled" => Decision::Handled(rules.rule(reply.rule.as_deref()?)?.clone()),
            _ => Decision::Unhandled,
        })
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

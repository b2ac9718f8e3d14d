//! Running a rule's actions for one occasion: every `send`/`notify` becomes a durable outbox
//! entry keyed by the occasion, so running the same occasion again changes nothing.

use super::handoff::Hold;
use super::{Engine, EngineError};
use crate::appointment::{Appointment, AppointmentStatus};
use crate::conversation::{Conversation, Reply};
use crate::message::{OutboxEntry, OutboxKind};
use crate::rules::{Action, AppointmentChange, Rule, Trigger};
use crate::store::{Fired, KnownEntry};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::Arc;

/// One occasion of one rule: what triggered it, and the context its actions render over.
#[derive(Debug, Clone, Default)]
pub(crate) struct Occasion {
    /// The idempotency key (PRODUCT.md's occasion).
    pub key: String,
    pub appointment: Option<Appointment>,
    pub reply: Option<Reply>,
    /// The delivery event or the message the occasion is about.
    pub message: Option<Value>,
    /// The conversation the occasion belongs to (a reply's `custom_field`).
    pub custom_field: Option<String>,
    /// Sends are about the appointment's time: skip them if it is cancelled or moved by then.
    pub reminder: bool,
    /// The trigger's own line in its conversation, not yet written: it goes in the same write
    /// as the actions' changes to that conversation (a reply costs one conversation write).
    pub note: Option<ConversationNote>,
    /// That conversation as the trigger left it (note included), so the actions' contexts
    /// need not read it back.
    pub conversation: Option<Conversation>,
    /// That conversation as stored when the trigger read it (before its note), so the
    /// gathered edits are written without reading it again.
    pub conversation_read: Option<crate::store::KnownConversation>,
    /// The occasion's key names an event first seen now (a fresh reply's id): it cannot have
    /// fired or queued anything yet, so those reads are skipped.
    pub fresh: bool,
    /// The reply whose reaction this is, unfinished until its hand-offs are done with: due
    /// sends are handed off unwritten, the reply standing for them (see `handoff`).
    pub hold: Option<Arc<Hold>>,
    /// A replay that found its trigger's line: everything the first run wrote itself is
    /// there (`ConversationNote::is_in`), only the sends it handed off may never have been
    /// written. Those are written (in the stored queue), and nothing else is done again.
    pub complete: bool,
}

/// A trigger's line in a conversation: who wrote what, and when it arrived.
#[derive(Debug, Clone)]
pub(crate) struct ConversationNote {
    pub custom_field: String,
    pub mobile: String,
    pub kind: &'static str,
    pub detail: String,
    /// When the trigger arrived (a reply's `received_at`): with `kind` and `detail`, what
    /// tells a replay that the line is already there.
    pub at: DateTime<Utc>,
}

impl ConversationNote {
    pub(crate) fn apply(&self, c: &mut Conversation) {
        if c.mobile.is_none() {
            c.mobile = Some(self.mobile.clone());
        }
        let updated = c.updated_at;
        c.record(self.at, self.kind, self.detail.clone(), None);
        // Timed at its arrival, the line may be older than the last change.
        c.updated_at = c.updated_at.max(updated);
    }

    /// Whether `c` already has this line. A reaction writes its trigger's line with its
    /// last write to the conversation, after everything else it writes, and sled recovers a
    /// prefix of its writes: a replay that finds the line has nothing left to do.
    pub(crate) fn is_in(&self, c: &Conversation) -> bool {
        c.history
            .iter()
            .rev()
            .any(|h| h.at == self.at && h.kind == self.kind && h.detail == self.detail)
    }
}

/// What running an occasion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ran {
    Done { queued: usize },
    AlreadyFired,
    ConditionsNotMet,
}

impl Engine {
    /// The rendering context: `appointment`, `reply`, `conversation`, `message`, `now`.
    /// `known` is the conversation as it stands, when the caller has it (else it is read).
    pub(crate) fn context(
        &self,
        occ: &Occasion,
        conversation_key: Option<&str>,
        known: Option<&Conversation>,
        now: DateTime<Utc>,
    ) -> Result<Value, EngineError> {
        let mut ctx = serde_json::Map::new();
        if let Some(a) = &occ.appointment {
            ctx.insert("appointment".into(), a.to_context());
        }
        if let Some(r) = &occ.reply {
            ctx.insert("reply".into(), r.to_context());
        }
        if let Some(m) = &occ.message {
            ctx.insert("message".into(), m.clone());
        }
        if let Some(cf) = conversation_key.or(occ.custom_field.as_deref()) {
            let conversation = match known.filter(|c| c.custom_field == cf) {
                Some(c) => c.to_context(),
                None => self.conversation_context(cf)?,
            };
            ctx.insert("conversation".into(), conversation);
        }
        ctx.insert("now".into(), now.to_rfc3339().into());
        Ok(Value::Object(ctx))
    }

    /// What templates see as `conversation`: the stored one, or a fresh one with no state.
    pub(crate) fn conversation_context(&self, custom_field: &str) -> Result<Value, EngineError> {
        Ok(match self.store.get_conversation(custom_field)? {
            Some(c) => c.to_context(),
            None => json!({"custom_field": custom_field, "state": null}),
        })
    }

    /// Records that `occasion` of `rule` fired with `outcome` (once), and keeps it as the rule's
    /// last deed for the API.
    pub(crate) fn record_fired(
        &self,
        rule: &str,
        occasion: &str,
        outcome: String,
        now: DateTime<Utc>,
    ) -> Result<bool, EngineError> {
        let fired = Fired { at: now, outcome };
        let first = self.store.mark_fired(occasion, &fired)?;
        if first {
            self.store.set_rule_last(rule, occasion, &fired)?;
        }
        Ok(first)
    }

    /// Runs `rule`'s actions for `occ` once: a second call with the same occasion key does
    /// nothing.
    #[tracing::instrument(level = "debug", skip_all, fields(rule = %rule.name, occasion = %occ.key, appointment = ?occ.appointment.as_ref().map(|a| &a.id)))]
    pub(crate) fn run_actions(
        &self,
        rule: &Rule,
        occ: &Occasion,
        now: DateTime<Utc>,
    ) -> Result<Ran, EngineError> {
        // Conversation changes are gathered and written once per conversation: a reply's own
        // line + a reminder's `send` + `set_state` is one write, not three.
        let mut edits = ConversationEdits {
            pending: Vec::new(),
            known: occ.conversation_read.as_ref(),
        };
        if !occ.fresh && self.store.fired(&occ.key)?.is_some() {
            edits.finish(self, occ.note.as_ref(), &rule.name, now)?;
            return Ok(Ran::AlreadyFired);
        }
        let rules = self.rules();
        let first_ctx = self.context(occ, None, occ.conversation.as_ref(), now)?;
        // A reply's rule was chosen with its `where` (`react::match_rule`) and recorded: a
        // replay must not ask again, its first run's writes may have changed the answer.
        if occ.reply.is_none() && !rule.conditions_hold(&first_ctx) {
            self.record_fired(
                &rule.name,
                &occ.key,
                "skipped: `where` conditions not met".into(),
                now,
            )?;
            edits.finish(self, occ.note.as_ref(), &rule.name, now)?;
            return Ok(Ran::ConditionsNotMet);
        }
        let mut conversation_key = occ.custom_field.clone();
        let mut appointment = occ.appointment.clone();
        let mut queued = 0;
        // Once a notify has written the gathered edits, the trigger's view of its conversation
        // (`occ.conversation`) is stale: contexts read the conversation again.
        let mut edits_written = false;
        // A due send handed off unwritten is written by the dispatcher; its `queued` line
        // rides with the occasion's last conversation write. A `notify` writes the lines
        // before it earlier, and a send to another conversation has its line written before
        // the trigger's own: a replay after such a write would find the send missing and
        // write its line again, so such a rule writes its sends itself.
        let unwritten = rule.actions.iter().all(|a| match a {
            Action::Notify(_) => false,
            Action::Send(s) => s.custom_field.is_none(),
            _ => true,
        });
        for (index, action) in rule.actions.iter().enumerate() {
            if occ.complete && !matches!(action, Action::Send(_)) {
                continue;
            }
            let entry_key = format!("{}#{index}", occ.key);
            match action {
                Action::Send(send) => {
                    // The context is the first one again unless the send is about another
                    // conversation or a notify has written this one since (a fan-out's
                    // reminder builds it once).
                    let same = conversation_key == occ.custom_field && !edits_written;
                    let own;
                    let ctx = if same {
                        &first_ctx
                    } else {
                        let known = occ.conversation.as_ref().filter(|_| !edits_written);
                        own = self.context(occ, conversation_key.as_deref(), known, now)?;
                        &own
                    };
                    // The conversation a send belongs to is fixed now, so replies tie back to it;
                    // everything else is rendered again at send time.
                    let rendered_cf = send
                        .custom_field
                        .as_ref()
                        .and_then(|key| rules.render_text(rule, key, ctx).ok())
                        .filter(|cf| !cf.trim().is_empty());
                    let custom_field = rendered_cf
                        .or_else(|| occ.custom_field.clone())
                        .unwrap_or_else(|| default_custom_field(appointment.as_ref(), &occ.key));
                    let mut entry = self.new_entry(
                        entry_key,
                        OutboxKind::Send,
                        rule,
                        index,
                        occ,
                        appointment.as_ref(),
                        Some(custom_field.clone()),
                        now,
                    );
                    let added = if occ.fresh {
                        let due = entry.not_before <= now;
                        match &occ.hold {
                            // Written by the dispatcher, already `sending` (see `handoff`).
                            Some(hold) if due && unwritten => {
                                entry.handed_off = true;
                                self.hand_off(KnownEntry::unwritten(entry), Some(hold.clone()));
                            }
                            Some(hold) if due => {
                                entry.handed_off = true;
                                let known = self.store.enqueue_new(entry)?;
                                self.hand_off(known, Some(hold.clone()));
                            }
                            _ => {
                                let known = self.store.enqueue_new(entry)?;
                                if due {
                                    self.hand_off(known, None);
                                }
                            }
                        }
                        true
                    } else {
                        self.store.enqueue(&entry)?
                    };
                    if added {
                        queued += 1;
                    }
                    // A completing replay's first run wrote its line (`queued`).
                    if added && !occ.complete {
                        let mobile = appointment
                            .as_ref()
                            .map(|a| a.mobile.clone())
                            .or_else(|| occ.reply.as_ref().map(|r| r.mobile.clone()));
                        edits.push(
                            &custom_field,
                            Edit::Queued {
                                mobile,
                                appointment_id: appointment.as_ref().map(|a| a.id.clone()),
                                detail: format!("template {} queued", send.template_id),
                            },
                        );
                    }
                    conversation_key = Some(custom_field);
                }
                Action::SetState(state) => {
                    let cf = conversation_key
                        .clone()
                        .unwrap_or_else(|| default_custom_field(appointment.as_ref(), &occ.key));
                    edits.push(
                        &cf,
                        Edit::State {
                            state: state.clone(),
                            appointment_id: appointment.as_ref().map(|a| a.id.clone()),
                        },
                    );
                    conversation_key = Some(cf);
                }
                Action::UpdateAppointment(changes) => {
                    let Some(current) = appointment.as_ref() else {
                        tracing::warn!(rule = %rule.name, "`update_appointment` has no appointment in this occasion; skipped");
                        continue;
                    };
                    // Re-read: the stored appointment may have changed since the occasion began.
                    let current = self
                        .store
                        .get_appointment(&current.id)?
                        .unwrap_or_else(|| current.clone());
                    let updated = apply_changes(&current, changes, now)?;
                    if updated != current {
                        self.write_appointment(&updated, now)?;
                    }
                    appointment = Some(updated);
                }
                Action::Notify(notify) => {
                    // The notice shows the conversation as the actions before it left it.
                    edits.apply(self, &rule.name, now)?;
                    edits_written = true;
                    let ctx = self.context(occ, conversation_key.as_deref(), None, now)?;
                    let message = notify.message.as_ref().map(|key| {
                        rules
                            .render_text(rule, key, &ctx)
                            .unwrap_or_else(|e| format!("(message could not be rendered: {e})"))
                    });
                    let mut entry = self.new_entry(
                        entry_key,
                        OutboxKind::Notify {
                            endpoint: notify.endpoint.clone(),
                        },
                        rule,
                        index,
                        occ,
                        appointment.as_ref(),
                        conversation_key.clone(),
                        now,
                    );
                    entry.text = message;
                    entry.context = json!({
                        "rule": rule.name,
                        "occasion": occ.key,
                        "message": entry.text,
                        "appointment": ctx.get("appointment"),
                        "reply": ctx.get("reply"),
                        "conversation": ctx.get("conversation"),
                        "event": ctx.get("message"),
                        "at": now.to_rfc3339(),
                    })
                    .into();
                    // Notifications go to the clinic's own system: quiet hours do not apply.
                    entry.not_before = now;
                    if self.store.enqueue(&entry)? {
                        queued += 1;
                    }
                }
            }
        }
        edits.finish(self, occ.note.as_ref(), &rule.name, now)?;
        let outcome = format!("ran {} actions", rule.actions.len());
        if occ.reply.is_some() {
            // A reply's occasion is marked done by its line in its conversation, written by
            // the `finish` above, or has none to mark (see `ConversationNote::is_in`).
            self.store
                .set_rule_last(&rule.name, &occ.key, &Fired { at: now, outcome })?;
        } else {
            self.record_fired(&rule.name, &occ.key, outcome, now)?;
        }
        if queued > 0 {
            self.dispatch_wake.notify_one();
        }
        Ok(Ran::Done { queued })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_entry(
        &self,
        key: String,
        kind: OutboxKind,
        rule: &Rule,
        action_index: usize,
        occ: &Occasion,
        appointment: Option<&Appointment>,
        custom_field: Option<String>,
        now: DateTime<Utc>,
    ) -> OutboxEntry {
        let mut context = serde_json::Map::new();
        if let Some(r) = &occ.reply {
            context.insert(
                "reply".into(),
                serde_json::to_value(r).unwrap_or(Value::Null),
            );
        }
        if let Some(m) = &occ.message {
            context.insert("message".into(), m.clone());
        }
        OutboxEntry {
            appointment_id: appointment.map(|a| a.id.clone()),
            appointment_start: appointment.map(|a| a.start_utc()),
            recheck_appointment: occ.reminder,
            context: Value::Object(context).into(),
            not_before: self.after_quiet_hours(now),
            // The expected recipient, so a send refused before any call is still listed under
            // the patient's mobile; the dispatcher sets the rendered one.
            mobile: appointment
                .map(|a| a.mobile.clone())
                .or_else(|| occ.reply.as_ref().map(|r| r.mobile.clone())),
            custom_field,
            ..OutboxEntry::queued(key, kind, &rule.name, action_index, now)
        }
    }

    /// The first moment at or after `t` outside the configured quiet hours.
    pub(crate) fn after_quiet_hours(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let Some(quiet) = self.config.quiet_hours else {
            return t;
        };
        let tz = self.config.timezone;
        let local = t.with_timezone(&tz);
        if !quiet.contains(local.time()) {
            return t;
        }
        // The end of the window is `to` today, or tomorrow when `to` is already behind us.
        let mut day = local.date_naive();
        if local.time() >= quiet.to {
            day = day.succ_opt().unwrap_or(day);
        }
        let end = day.and_time(quiet.to);
        match end.and_local_timezone(tz).earliest() {
            Some(e) => e.with_timezone(&Utc),
            None => t + chrono::Duration::hours(1),
        }
    }

    /// Stores an appointment and reacts to the change it makes: re-plans offsets, drops the
    /// plans of a cancelled one, raises the `appointment:` triggers. The change is noted with
    /// the write, so a crash before the reactions are written does not lose them.
    pub(crate) fn write_appointment(
        &self,
        appt: &Appointment,
        now: DateTime<Utc>,
    ) -> Result<Option<Appointment>, EngineError> {
        let (previous, pending) = self.store.put_appointment_marked(appt, |prev| {
            change_between(prev, appt).map(|c| change_word(c).to_string())
        })?;
        self.appointment_changed(appt, pending.as_deref().and_then(parse_change), now)?;
        self.store.clear_appointment_change(&appt.id)?;
        Ok(previous)
    }

    /// Reactions a crash cut short: run them again (their occasions make that harmless).
    pub(crate) fn recover_appointment_changes(&self) -> Result<(), EngineError> {
        let now = self.clock.now();
        for (id, change) in self.store.pending_appointment_changes()? {
            if let Some(appt) = self.store.get_appointment(&id)? {
                tracing::info!(appointment = %id, change = %change, "finishing the reactions to an appointment change cut short by a stop");
                self.appointment_changed(&appt, parse_change(&change), now)?;
            }
            self.store.clear_appointment_change(&id)?;
        }
        Ok(())
    }

    /// Reacts to an appointment change: re-plans offsets, drops plans of a cancelled one and
    /// raises the `appointment:` triggers for `change`.
    fn appointment_changed(
        &self,
        current: &Appointment,
        change: Option<AppointmentChange>,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        self.plan_appointment(current, now)?;
        let Some(change) = change else {
            return Ok(());
        };
        let rules = self.rules();
        for rule in rules.rules.iter().filter(|r| r.enabled) {
            if let Trigger::Appointment(c) = &rule.trigger {
                if *c == change {
                    let occ = Occasion {
                        key: format!(
                            "appointment:{}:{}:{}:{}",
                            rule.name,
                            current.id,
                            change_word(change),
                            current.start_utc().to_rfc3339()
                        ),
                        appointment: Some(current.clone()),
                        ..Default::default()
                    };
                    self.run_actions(rule, &occ, now)?;
                }
            }
        }
        Ok(())
    }
}

/// One change to a conversation made by an action (or the trigger's own note).
#[derive(Debug, Clone)]
enum Edit {
    Note(ConversationNote),
    Queued {
        mobile: Option<String>,
        appointment_id: Option<String>,
        detail: String,
    },
    State {
        state: String,
        appointment_id: Option<String>,
    },
}

#[derive(Debug, Default)]
struct ConversationEdits<'a> {
    /// In the order the actions made them; conversations in first-touched order.
    pending: Vec<(String, Vec<Edit>)>,
    /// The trigger's conversation as it read it: the first write to it starts from this
    /// (stale once written).
    known: Option<&'a crate::store::KnownConversation>,
}

impl ConversationEdits<'_> {
    fn push(&mut self, custom_field: &str, edit: Edit) {
        match self.pending.iter_mut().find(|(cf, _)| cf == custom_field) {
            Some((_, list)) => list.push(edit),
            None => self.pending.push((custom_field.to_string(), vec![edit])),
        }
    }

    /// The last write of an occasion's changes: the trigger's own line goes first in its
    /// conversation's list, so that it is written last of everything the occasion writes
    /// (a `notify` writes the changes before it earlier). A replay that finds the line knows
    /// the occasion's writes are all there (`ConversationNote::is_in`).
    fn finish(
        &mut self,
        engine: &Engine,
        note: Option<&ConversationNote>,
        rule: &str,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        if let Some(note) = note {
            // Its conversation written last of all, the line first in it.
            let mine = match self
                .pending
                .iter()
                .position(|(cf, _)| *cf == note.custom_field)
            {
                Some(at) => self.pending.remove(at),
                None => (note.custom_field.clone(), Vec::new()),
            };
            let (cf, mut list) = mine;
            list.insert(0, Edit::Note(note.clone()));
            self.pending.push((cf, list));
        }
        self.apply(engine, rule, now)
    }

    /// Writes the gathered changes, one write per conversation.
    fn apply(
        &mut self,
        engine: &Engine,
        rule: &str,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        for (cf, list) in self.pending.drain(..) {
            let known = self.known.filter(|k| k.custom_field == cf);
            if known.is_some() {
                self.known = None;
            }
            engine
                .store
                .update_conversation_known(&cf, known, now, |c| {
                    for edit in &list {
                        match edit {
                            Edit::Note(note) => note.apply(c),
                            Edit::Queued {
                                mobile,
                                appointment_id,
                                detail,
                            } => {
                                if c.mobile.is_none() {
                                    c.mobile = mobile.clone();
                                }
                                if appointment_id.is_some() {
                                    c.appointment_id = appointment_id.clone();
                                }
                                c.record(now, "queued", detail.clone(), Some(rule));
                            }
                            Edit::State {
                                state,
                                appointment_id,
                            } => {
                                if c.state.as_deref() != Some(state) {
                                    c.state = Some(state.clone());
                                    c.record(now, "state", state.clone(), Some(rule));
                                }
                                if c.appointment_id.is_none() {
                                    c.appointment_id = appointment_id.clone();
                                }
                            }
                        }
                    }
                })?;
        }
        Ok(())
    }
}

/// The change from `previous` to `current`, if it is one the `appointment:` trigger knows.
fn change_between(
    previous: Option<&Appointment>,
    current: &Appointment,
) -> Option<AppointmentChange> {
    match previous {
        None => Some(AppointmentChange::Created),
        Some(p)
            if p.status != AppointmentStatus::Cancelled
                && current.status == AppointmentStatus::Cancelled =>
        {
            Some(AppointmentChange::Cancelled)
        }
        Some(p) if p.start != current.start => Some(AppointmentChange::Rescheduled),
        _ => None,
    }
}

fn parse_change(word: &str) -> Option<AppointmentChange> {
    [
        AppointmentChange::Created,
        AppointmentChange::Rescheduled,
        AppointmentChange::Cancelled,
    ]
    .into_iter()
    .find(|c| change_word(*c) == word)
}

fn change_word(c: AppointmentChange) -> &'static str {
    match c {
        AppointmentChange::Created => "created",
        AppointmentChange::Rescheduled => "rescheduled",
        AppointmentChange::Cancelled => "cancelled",
    }
}

fn default_custom_field(appointment: Option<&Appointment>, occasion: &str) -> String {
    match appointment {
        Some(a) => format!("recuerda-{}", a.id),
        None => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            occasion.hash(&mut h);
            format!("recuerda-{:016x}", h.finish())
        }
    }
}

/// `update_appointment`'s fields applied to `current`: `status` must be a status word, `start`
/// an RFC 3339 time; anything else is kept for templates.
fn apply_changes(
    current: &Appointment,
    changes: &serde_json::Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Appointment, EngineError> {
    let mut updated = current.clone();
    for (field, value) in changes {
        match field.as_str() {
            "status" => {
                let word = value.as_str().unwrap_or_default();
                updated.status = AppointmentStatus::parse(word).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "`update_appointment.status: {value}` is not an appointment status"
                    ))
                })?;
            }
            "start" => {
                let text = value.as_str().unwrap_or_default();
                updated.start = DateTime::parse_from_rfc3339(text).map_err(|_| {
                    EngineError::Invalid(format!(
                        "`update_appointment.start: {value}` is not an RFC 3339 time"
                    ))
                })?;
            }
            "id" | "mobile" => {}
            _ => {
                updated.fields.insert(field.clone(), value.clone());
            }
        }
    }
    if updated != *current {
        updated.updated_at = now;
    }
    Ok(updated)
}

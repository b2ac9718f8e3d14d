//! Time-driven triggers: offset reminders and no-reply timeouts on a durable due-queue, cron
//! rules computed from their expression (so a fake clock drives them and missed slots are
//! caught up), quiet hours handled by the dispatcher.

use super::actions::{Occasion, Ran};
use super::{Engine, EngineError};
use crate::appointment::{Appointment, AppointmentStatus};
use crate::message::OutboxEntry;
use crate::rules::{LatePolicy, Rule, Trigger};
use crate::store::DueEntry;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The longest reminder offset we re-plan for when rules change (appointments that started
/// longer ago than this are left alone).
const REPLAN_HORIZON_DAYS: i64 = 60;

impl Engine {
    /// Plans (or re-plans, or drops) the offset reminders of one appointment.
    pub(crate) fn plan_appointment(
        &self,
        appt: &Appointment,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        // Plans of the appointment's previous start are replaced wholesale.
        for key in self
            .store
            .due_keys_with_prefix(&format!("offset|{}|", appt.id))?
        {
            self.store.cancel_due(&key)?;
        }
        if appt.status == AppointmentStatus::Cancelled {
            return Ok(());
        }
        let rules = self.rules();
        for rule in rules.rules.iter().filter(|r| r.enabled) {
            let Trigger::Offset(offset) = &rule.trigger else {
                continue;
            };
            let start = appt.start_utc();
            let due_at = offset.due_at(start);
            let occasion = reminder_occasion(&rule.name, &appt.id, start);
            if self.store.fired(&occasion)?.is_some() {
                continue;
            }
            if due_at <= now {
                // Booked (or moved) after the reminder time: `late` decides, and it is recorded.
                match offset.late {
                    LatePolicy::Send
                        if start > now
                            || offset.direction == crate::rules::OffsetDirection::After =>
                    {
                        self.fire_reminder(rule, appt, now)?;
                    }
                    _ => {
                        self.record_fired(
                            &rule.name,
                            &occasion,
                            format!(
                                "late-skipped: booked after the reminder time ({})",
                                due_at.to_rfc3339()
                            ),
                            now,
                        )?;
                    }
                }
                continue;
            }
            self.store.schedule_due(&DueEntry {
                key: format!("offset|{}|{}", appt.id, rule.name),
                due_at,
                rule: rule.name.clone(),
                appointment_id: Some(appt.id.clone()),
                appointment_start: Some(start),
                context: serde_json::Value::Null,
                custom_field: None,
            })?;
            self.wake_scheduler_for(due_at);
        }
        Ok(())
    }

    /// Wakes the scheduler if `due_at` is before its planned wake-up.
    fn wake_scheduler_for(&self, due_at: DateTime<Utc>) {
        use std::sync::atomic::Ordering;
        if due_at.timestamp_millis() < self.planned_wake_ms.load(Ordering::Acquire) {
            self.schedule_wake.notify_one();
        }
    }

    /// Re-plans every upcoming appointment (after a rules reload).
    pub(crate) fn replan_all(&self) -> Result<(), EngineError> {
        let now = self.clock.now();
        let from = now - chrono::Duration::days(REPLAN_HORIZON_DAYS);
        let to = now + chrono::Duration::days(3650);
        for appt in self.store.appointments_starting(from, to)? {
            self.plan_appointment(&appt, now)?;
        }
        Ok(())
    }

    /// After a send: starts the `no_reply` timers of rules watching the sending rule.
    pub(crate) fn plan_no_reply(
        &self,
        entry: &OutboxEntry,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let Some(cf) = &entry.custom_field else {
            return Ok(());
        };
        let rules = self.rules();
        for rule in rules.rules.iter().filter(|r| r.enabled) {
            if let Trigger::NoReply(t) = &rule.trigger {
                if t.rule == entry.rule {
                    let after =
                        chrono::Duration::from_std(t.after).unwrap_or(chrono::Duration::hours(4));
                    self.store.schedule_due(&DueEntry {
                        key: format!("noreply|{cf}|{}|{}", rule.name, entry.key),
                        due_at: now + after,
                        rule: rule.name.clone(),
                        appointment_id: entry.appointment_id.clone(),
                        appointment_start: entry.appointment_start,
                        context: json!({"message": {"id": entry.message_id, "rule": entry.rule, "template": entry.template_id, "status": entry.status.as_str()}, "source_key": entry.key}),
                        custom_field: Some(cf.clone()),
                    })?;
                    self.wake_scheduler_for(now + after);
                }
            }
        }
        Ok(())
    }

    fn fire_reminder(
        &self,
        rule: &Rule,
        appt: &Appointment,
        now: DateTime<Utc>,
    ) -> Result<Ran, EngineError> {
        let occ = Occasion {
            key: reminder_occasion(&rule.name, &appt.id, appt.start_utc()),
            appointment: Some(appt.clone()),
            reminder: true,
            ..Default::default()
        };
        self.run_actions(rule, &occ, now)
    }

    /// Fires every due entry and cron slot at or before now. Returns how many fired.
    pub async fn tick(&self) -> Result<usize, EngineError> {
        let now = self.clock.now();
        self.tick_at(now).await
    }

    async fn tick_at(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        // A cron fan-out can be seconds of store work: off the async workers, so the
        // dispatcher and the HTTP server keep running meanwhile.
        let engine = self.clone();
        let fired = tokio::task::spawn_blocking(move || engine.fire_due_and_cron(now))
            .await
            .map_err(|e| EngineError::Invalid(format!("the scheduler's work panicked: {e}")))??;
        if fired > 0 {
            self.store.durable().await?;
        }
        self.mark_scheduled_through(now);
        Ok(fired)
    }

    fn fire_due_and_cron(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let mut fired = 0;
        loop {
            let due = self.store.due_until(now, 512)?;
            if due.is_empty() {
                break;
            }
            for entry in due {
                self.fire_due(&entry, now)?;
                self.store.cancel_due(&entry.key)?;
                fired += 1;
            }
        }
        fired += self.fire_cron_slots(now)?;
        Ok(fired)
    }

    fn mark_scheduled_through(&self, t: DateTime<Utc>) {
        let mut through = self
            .scheduled_through
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if through.is_none_or(|old| old < t) {
            *through = Some(t);
        }
    }

    fn fire_due(&self, entry: &DueEntry, now: DateTime<Utc>) -> Result<(), EngineError> {
        let rules = self.rules();
        let Some(rule) = rules.rule(&entry.rule) else {
            tracing::warn!(rule = %entry.rule, "a planned job's rule no longer exists; dropped");
            return Ok(());
        };
        let late_by = now - entry.due_at;
        let grace = chrono::Duration::from_std(self.config.schedule.catch_up)
            .unwrap_or(chrono::Duration::hours(6));
        let appointment = match &entry.appointment_id {
            Some(id) => self.store.get_appointment(id)?,
            None => None,
        };
        match &rule.trigger {
            Trigger::Offset(_) => {
                let Some(appt) = appointment else {
                    return Ok(());
                };
                if Some(appt.start_utc()) != entry.appointment_start
                    || appt.status == AppointmentStatus::Cancelled
                {
                    return Ok(());
                }
                let occasion = reminder_occasion(&rule.name, &appt.id, appt.start_utc());
                if late_by > grace {
                    self.record_fired(
                        &rule.name,
                        &occasion,
                        format!(
                            "missed: due {} while the engine was down, past the catch-up grace",
                            entry.due_at.to_rfc3339()
                        ),
                        now,
                    )?;
                    tracing::warn!(rule = %rule.name, appointment = %appt.id, "reminder missed while down (past catch-up grace)");
                    return Ok(());
                }
                self.fire_reminder(rule, &appt, now)?;
            }
            Trigger::NoReply(_) => {
                let occ = Occasion {
                    key: format!(
                        "noreply:{}:{}",
                        rule.name,
                        entry
                            .context
                            .get("source_key")
                            .and_then(|v| v.as_str())
                            .unwrap_or(&entry.key)
                    ),
                    appointment,
                    message: entry.context.get("message").cloned(),
                    custom_field: entry.custom_field.clone(),
                    ..Default::default()
                };
                self.run_actions(rule, &occ, now)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Cron rules: the slots since the last one handled. Only the latest missed slot fires,
    /// and only within the rule's catch-up grace; older ones are recorded as missed.
    fn fire_cron_slots(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let rules = self.rules();
        let mut fired = 0;
        for rule in rules.rules.iter().filter(|r| r.enabled) {
            let Trigger::Cron(cron) = &rule.trigger else {
                continue;
            };
            let Some(last) = self.store.cron_last(&rule.name)? else {
                // First sight of this rule: start counting from now, nothing historical fires.
                self.store.set_cron_last(&rule.name, now)?;
                continue;
            };
            let mut slot = cron.next_after(last, rule.timezone);
            let mut latest = None;
            let mut skipped = 0;
            while let Some(s) = slot {
                if s > now {
                    break;
                }
                if let Some(previous) = latest.replace(s) {
                    skipped += 1;
                    self.record_missed(&rule.name, previous, now)?;
                }
                slot = cron.next_after(s, rule.timezone);
                if skipped > 10_000 {
                    break;
                }
            }
            let Some(slot) = latest else {
                continue;
            };
            let grace =
                chrono::Duration::from_std(cron.catch_up).unwrap_or(chrono::Duration::hours(6));
            if now - slot > grace {
                self.record_missed(&rule.name, slot, now)?;
            } else {
                self.fire_cron(rule, slot, now)?;
                fired += 1;
            }
            self.store.set_cron_last(&rule.name, slot)?;
        }
        Ok(fired)
    }

    fn record_missed(
        &self,
        rule: &str,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        tracing::warn!(rule = %rule, slot = %slot.to_rfc3339(), "cron slot missed while the engine was down");
        self.record_fired(
            rule,
            &format!("cron:{rule}:{}", slot.to_rfc3339()),
            "missed: the engine was down past the catch-up grace".into(),
            now,
        )?;
        Ok(())
    }

    /// Runs a cron rule for one slot: once per selected appointment with `for_each`, else
    /// once. Each is its own occasion, so a second firing or a manual run repeats nothing.
    pub(crate) fn fire_cron(
        &self,
        rule: &Rule,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, EngineError> {
        let mut ran = 0;
        match &rule.for_each {
            Some(for_each) => {
                let (from, to) = for_each.starts.window(slot, rule.timezone);
                let sends_each = rule
                    .actions
                    .iter()
                    .filter(|a| matches!(a, crate::rules::Action::Send(_)))
                    .count();
                // At most this many (statuses are filtered as the appointments are read).
                let upper_bound = self.store.count_appointments_starting(from, to);
                self.check_fan_out(&rule.name, upper_bound * sends_each);
                ran = self.fan_out(rule, for_each, from, to, now)?;
                self.record_fired(
                    &rule.name,
                    &format!("cron:{}:{}", rule.name, slot.to_rfc3339()),
                    format!("ran for {ran} appointments"),
                    now,
                )?;
            }
            None => {
                let occ = Occasion {
                    key: format!("cron:{}:{}", rule.name, slot.to_rfc3339()),
                    ..Default::default()
                };
                if let Ran::Done { .. } = self.run_actions(rule, &occ, now)? {
                    ran += 1;
                }
            }
        }
        tracing::info!(rule = %rule.name, slot = %slot.to_rfc3339(), ran, "cron rule fired");
        Ok(ran)
    }

    /// Runs `rule` once for each appointment starting in `[from, to)` (of the wanted
    /// statuses) on a few threads: each reminder is store work (about five sled operations),
    /// and one thread left the other core to the dispatcher alone while 100,000 were queued.
    /// This thread reads the appointments and hands them out by patient mobile, so one
    /// patient's reminders (which may share a conversation) still run one after the other in
    /// start order. Stops handing out work at the first error; occasions already run are kept
    /// and a later firing skips them. Returns how many ran.
    fn fan_out(
        &self,
        rule: &Rule,
        for_each: &crate::rules::ForEach,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, EngineError> {
        const BATCH: usize = 64;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        let ran = AtomicUsize::new(0);
        let failed: Mutex<Option<EngineError>> = Mutex::new(None);
        let fail = |e: EngineError| {
            failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
        };
        let has_failed = || failed.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        std::thread::scope(|scope| {
            let mut workers = Vec::with_capacity(threads);
            for _ in 0..threads {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Appointment>>(4);
                workers.push(tx);
                let (ran, fail, has_failed) = (&ran, &fail, &has_failed);
                scope.spawn(move || {
                    for batch in rx {
                        for appt in batch {
                            if has_failed() {
                                return;
                            }
                            match self.fire_reminder(rule, &appt, now) {
                                Ok(Ran::Done { .. }) => {
                                    ran.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => {}
                                Err(e) => return fail(e),
                            }
                        }
                    }
                });
            }
            let mut pending: Vec<Vec<Appointment>> = vec![Vec::new(); threads];
            for appt in self.store.appointments_starting_iter(from, to) {
                if has_failed() {
                    break;
                }
                let appt = match appt {
                    Ok(a) => a,
                    Err(e) => {
                        fail(e.into());
                        break;
                    }
                };
                if !for_each.selects(appt.status.as_str()) {
                    continue;
                }
                let w = worker_for(&appt.mobile, threads);
                pending[w].push(appt);
                if pending[w].len() >= BATCH {
                    // A worker gone (it failed) is noticed at the next appointment.
                    let _ = workers[w].send(std::mem::take(&mut pending[w]));
                }
            }
            for (tx, batch) in workers.iter().zip(pending) {
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
            }
            drop(workers);
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(ran.into_inner()),
        }
    }

    /// The next moment the scheduler has something to do.
    fn next_wake(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut next = now + chrono::Duration::minutes(1);
        if let Ok(Some(due)) = self.store.next_due() {
            next = next.min(due);
        }
        let rules = self.rules();
        for rule in rules.rules.iter().filter(|r| r.enabled) {
            if let Trigger::Cron(cron) = &rule.trigger {
                if let Some(s) = cron.next_after(now, rule.timezone) {
                    next = next.min(s);
                }
            }
        }
        next.max(now)
    }

    pub(crate) async fn run_scheduler(&self) {
        let mut shutdown = self.shutdown_signal();
        loop {
            // From here until the wake-up is planned again, every new plan wakes it (a
            // `Notify` permit is kept), so none can slip between the scan and the sleep.
            self.planned_wake_ms
                .store(i64::MIN, std::sync::atomic::Ordering::Release);
            let ticked_at = self.clock.now();
            if let Err(e) = self.tick_at(ticked_at).await {
                tracing::error!(error = %e, "scheduler tick failed; retrying shortly");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            if *shutdown.borrow() {
                return;
            }
            // What is due next, counted from the tick (the clock may have moved during it).
            let wake_at = self.next_wake(ticked_at);
            let current = self.clock.now();
            if wake_at <= current {
                continue;
            }
            // Nothing falls due before `wake_at`, so everything up to now is handled.
            self.mark_scheduled_through(current);
            self.planned_wake_ms.store(
                wake_at.timestamp_millis(),
                std::sync::atomic::Ordering::Release,
            );
            tokio::select! {
                _ = self.clock.sleep_until(wake_at) => {}
                _ = self.schedule_wake.notified() => {}
                _ = super::stop_requested(&mut shutdown) => {}
            }
        }
    }

    /// `POST /api/v1/rules/{name}/run`: fires a cron rule now (its occasions still guard
    /// against repeats). Returns how many occasions ran.
    pub fn run_rule_now(&self, name: &str) -> Result<usize, EngineError> {
        let rules = self.rules();
        let rule = rules
            .rule(name)
            .ok_or_else(|| EngineError::Invalid(format!("no rule named `{name}`")))?;
        let now = self.clock.now();
        match &rule.trigger {
            Trigger::Cron(_) => self.fire_cron(rule, now, now),
            _ => Err(EngineError::Invalid(format!(
                "rule `{name}` is not a cron rule: only cron rules can be run by hand"
            ))),
        }
    }

    /// What running a cron rule now would send, rendered, without sending or recording
    /// anything: one item per selected appointment (or one for a plain cron rule).
    pub fn dry_run(&self, name: &str) -> Result<Vec<serde_json::Value>, EngineError> {
        let rules = self.rules();
        let rule = rules
            .rule(name)
            .ok_or_else(|| EngineError::Invalid(format!("no rule named `{name}`")))?;
        let now = self.clock.now();
        if !matches!(rule.trigger, Trigger::Cron(_)) {
            return Err(EngineError::Invalid(format!(
                "rule `{name}` is not a cron rule: dry runs are for cron rules (use `recuerda preview` for the others)"
            )));
        }
        let appointments = match &rule.for_each {
            Some(for_each) => {
                let (from, to) = for_each.starts.window(now, rule.timezone);
                self.store
                    .appointments_starting(from, to)?
                    .into_iter()
                    .filter(|a| for_each.selects(a.status.as_str()))
                    .map(Some)
                    .collect()
            }
            None => vec![None],
        };
        let mut out = Vec::new();
        for appt in appointments {
            let occasion = match &appt {
                Some(a) => reminder_occasion(&rule.name, &a.id, a.start_utc()),
                None => format!("cron:{}:{}", rule.name, now.to_rfc3339()),
            };
            let occ = Occasion {
                key: occasion.clone(),
                appointment: appt.clone(),
                reminder: appt.is_some(),
                ..Default::default()
            };
            let ctx = self.context(&occ, None, None, now)?;
            let already = self.store.fired(&occasion)?.map(|f| f.outcome);
            let mut sends = Vec::new();
            for action in &rule.actions {
                if let crate::rules::Action::Send(send) = action {
                    sends.push(match rules.render_send(rule, send, &ctx) {
                        Ok(r) => json!({"template": r.template_id, "to": r.to.or_else(|| appt.as_ref().map(|a| a.mobile.clone())), "text": r.text, "variables": r.variables, "custom_field": r.custom_field}),
                        Err(e) => json!({"template": send.template_id, "error": e.to_string()}),
                    });
                }
            }
            out.push(json!({
                "appointment": appt.as_ref().map(|a| a.id.clone()),
                "occasion": occasion,
                "conditions_hold": rule.conditions_hold(&ctx),
                "already_fired": already,
                "sends": sends,
            }));
        }
        Ok(out)
    }

    /// Stores an appointment from the API or an import and reacts to the change.
    pub fn upsert_appointment(
        &self,
        id: &str,
        body: &serde_json::Value,
    ) -> Result<(Appointment, bool), UpsertError> {
        let now = self.clock.now();
        let existing = self.store.get_appointment(id).map_err(EngineError::from)?;
        let appt = Appointment::from_json(id, body, now, existing.as_ref())
            .map_err(UpsertError::Invalid)?;
        let previous = self.write_appointment(&appt, now)?;
        Ok((appt, previous.is_none()))
    }

    /// Cancels an appointment: its pending reminders never go.
    pub fn cancel_appointment(&self, id: &str) -> Result<Option<Appointment>, EngineError> {
        let now = self.clock.now();
        let Some(current) = self.store.get_appointment(id)? else {
            return Ok(None);
        };
        let mut updated = current.clone();
        updated.status = AppointmentStatus::Cancelled;
        updated.updated_at = now;
        self.write_appointment(&updated, now)?;
        Ok(Some(updated))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpsertError {
    #[error("invalid appointment")]
    Invalid(Vec<crate::appointment::FieldError>),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The occasion of a reminder: (rule, appointment, appointment start).
fn reminder_occasion(rule: &str, appointment: &str, start: DateTime<Utc>) -> String {
    format!("remind:{rule}:{appointment}:{}", start.to_rfc3339())
}

/// Which fan-out worker takes a patient's reminders (the same one for all of them).
fn worker_for(mobile: &str, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mobile.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

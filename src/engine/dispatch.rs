//! The dispatcher: takes due outbox entries, re-checks and renders them at send time, and
//! sends with bounded concurrency and rate. Provider codes drive what happens next.

use super::handoff::{HandOff, Hold};
use super::{Counters, Engine, EngineError};
use crate::appointment::AppointmentStatus;
use crate::message::{MessageStatus, OutboxEntry, OutboxKind};
use crate::provider::{
    CustomField, Disposition, MediaUrl, Mobile, SendRequest, TemplateId, Variables,
};
use crate::rules::Action;
use crate::store::KnownEntry;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use rand::Rng;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How often the dispatcher looks at the stored queue while reactions keep handing it
/// entries (a look is a scan unless the queue's count is 0: see `FULL_SCAN_EVERY`).
const SCAN_EVERY: Duration = Duration::from_millis(50);
/// How often the stored queue is scanned even while its count says it is empty (a count
/// that went wrong strands nothing for longer).
const FULL_SCAN_EVERY: Duration = Duration::from_secs(60);
/// At most this many handed-off entries wait in memory; beyond, the scan finds them.
const HAND_OFF_MAX: usize = 4096;

/// Paces sends to at most `rate_per_second` started per second.
struct Pacer {
    interval: Duration,
    next_slot: Option<Instant>,
}

/// How far the send schedule may run ahead of the clock before the dispatcher waits. The
/// timer sleeps whole milliseconds, so waiting out every sub-millisecond slot would cap any
/// rate at about 1,000/s; this lets at most 1 ms worth of sends start early, never more.
const RATE_SLACK: Duration = Duration::from_millis(1);

impl Pacer {
    fn new(rate_per_second: u32) -> Pacer {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / f64::from(rate_per_second.max(1))),
            next_slot: None,
        }
    }

    /// Takes the next slot for a send about to start at `now`; returns when to start it if
    /// that is not now.
    fn admit(&mut self, now: Instant) -> Option<Instant> {
        let slot = self.next_slot.map_or(now, |s| s.max(now));
        self.next_slot = Some(slot + self.interval);
        (slot > now + RATE_SLACK).then_some(slot)
    }
}

/// Whether the dispatcher sends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum DispatchState {
    Running,
    /// Code 5: no balance. Polls `balance` and resumes when it is positive.
    PausedForBalance,
    /// Codes 2/3: a configuration problem; sending stays stopped until it is fixed and the
    /// engine restarted.
    Stopped(String),
}

/// What a send attempt decided.
enum Outcome {
    Sent(String),
    Requeue {
        at: DateTime<Utc>,
        reason: String,
        count_attempt: bool,
    },
    Final {
        status: MessageStatus,
        code: Option<u32>,
        reason: String,
    },
}

impl Engine {
    /// Entries left `sending` by a crash: the request may have reached the provider, which has
    /// no idempotency key, so they become `unknown` (or are queued again when the config says
    /// `provider.resend_unknown: true`).
    pub(crate) fn recover_in_flight(&self) -> Result<(), EngineError> {
        let now = self.clock.now();
        let resend = self.config.provider.resend_unknown;
        let in_flight: Vec<String> = self
            .store
            .in_flight_entries()
            .filter_map(|e| e.ok())
            .map(|e| e.key)
            .collect();
        for key in in_flight {
            let updated = self.store.update_entry(&key, |e| {
                if resend && e.is_send() {
                    e.set_status(MessageStatus::Queued, now, Some("resent after a crash mid-send (`provider.resend_unknown`)".into()));
                    e.not_before = now;
                } else {
                    let reason = "the engine stopped while this send was in flight; it may or may not have reached the patient";
                    e.set_status(MessageStatus::Unknown, now, Some(reason.into()));
                    // Like every other final outcome, the reason shows in the message's `error`.
                    e.error = Some(reason.into());
                }
                true
            })?;
            if let Some(e) = updated {
                if e.status == MessageStatus::Unknown {
                    Counters::bump(&self.counters.sends_unknown);
                    tracing::warn!(key = %e.key, rule = %e.rule, "send outcome unknown after a restart; not re-sent");
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn run_dispatcher(&self) {
        let mut shutdown = self.shutdown_signal();
        let permits = Arc::new(Semaphore::new(self.config.provider.concurrency));
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut pacer = Pacer::new(self.config.provider.rate_per_second);
        let mut last_scan = Instant::now();
        let mut last_full_scan = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.dispatch_state() {
                DispatchState::Stopped(_) => {
                    self.drop_hand_offs();
                    tokio::select! {
                        _ = self.dispatch_wake.notified() => {}
                        _ = super::stop_requested(&mut shutdown) => {}
                    }
                    continue;
                }
                DispatchState::PausedForBalance => {
                    self.drop_hand_offs();
                    self.wait_for_balance(&mut shutdown).await;
                    continue;
                }
                DispatchState::Running => {}
            }
            let now = self.clock.now();
            let is_in_flight = |key: &str| {
                in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(key)
            };
            // Entries handed off by reactions go first, without a scan; the queue is still
            // scanned at least every `SCAN_EVERY` (retries, quiet hours, hand-offs dropped
            // when the shortcut was full) and whenever nothing was handed off.
            let handed = if last_scan.elapsed() < SCAN_EVERY {
                self.take_handed_off(256)
            } else {
                Vec::new()
            };
            // Set when this look found the queue's count at 0 and skipped the scan.
            let mut counted_empty = false;
            let fresh = if !handed.is_empty() {
                // The wake-ups of the reactions whose hand-offs were just taken are spent: one
                // left stored would bring the loop back to an empty shortcut and a scan of
                // the queue for nothing. (Not before the next look: the loop takes from the
                // shortcut again before it sleeps.)
                let _ = self.dispatch_wake.notified().now_or_never();
                // A hand-off that a scan already dispatched is passed over here if still in
                // flight, and finds itself no longer queued at its `sending` mark if not.
                handed
                    .into_iter()
                    .filter(|h| !is_in_flight(&h.known.entry.key))
                    .collect()
            } else {
                last_scan = Instant::now();
                // Nothing queued (the count is raised before an enqueue returns, so before
                // its caller wakes this loop): no scan, but for one a minute. Hand-offs keep
                // the queue empty, so this is most looks in a flood of replies.
                counted_empty =
                    self.store.outbox_depth() == 0 && last_full_scan.elapsed() < FULL_SCAN_EVERY;
                if !counted_empty {
                    last_full_scan = last_scan;
                }
                // What is handed off now with a stored queue key, the scan finds; the rest
                // (held by their webhook's inbox item) only the hand-off brings.
                let held: Vec<HandOff> = self
                    .take_handed_off(usize::MAX)
                    .into_iter()
                    .filter(|h| h.hold.is_some())
                    .collect();
                let due = if counted_empty {
                    Ok(Vec::new())
                } else {
                    self.store.due_outbox_except(now, 256, is_in_flight)
                };
                match due {
                    // Only this loop adds to `in_flight`, and the scan passed over its keys:
                    // what came back is not in flight.
                    Ok(d) => d
                        .into_iter()
                        .map(|known| HandOff { known, hold: None })
                        .chain(held)
                        .collect::<Vec<_>>(),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the outbox failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            };
            if fresh.is_empty() {
                let next = if counted_empty {
                    None
                } else {
                    self.store.next_outbox_due().ok().flatten()
                };
                let wake_at = next.unwrap_or(now + chrono::Duration::minutes(1));
                tokio::select! {
                    _ = self.dispatch_wake.notified() => {}
                    _ = self.clock.sleep_until(wake_at) => {}
                    _ = super::stop_requested(&mut shutdown) => {}
                    // Entries in flight finish and may requeue: look again soon.
                    _ = tokio::time::sleep(Duration::from_millis(200)), if !in_flight.lock().unwrap_or_else(|e| e.into_inner()).is_empty() => {}
                }
                continue;
            }
            for HandOff { known, hold } in fresh {
                let entry = &known.entry;
                if self.dispatch_state() != DispatchState::Running || *shutdown.borrow() {
                    break;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                if entry.is_send() {
                    if let Some(at) = pacer.admit(tokio::time::Instant::now().into_std()) {
                        tokio::time::sleep_until(at.into()).await;
                    }
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(entry.key.clone());
                let engine = self.clone();
                let flying = in_flight.clone();
                tokio::spawn(async move {
                    let key = known.entry.key.clone();
                    match engine.dispatch_one(known).await {
                        Ok(true) => {
                            if let Some(hold) = &hold {
                                hold.settled(&key);
                            }
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(key = %key, error = %e, "dispatching failed; the entry stays queued")
                        }
                    }
                    flying
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    // A finished send from the stored queue wakes the dispatcher to look at the
                    // queue again (without, a 100,000-reminder dispatch ran at ~14,500/s
                    // instead of ~20,000/s). A finished hand-off does not: the reactions that
                    // hand off wake it, and a wake per hand-off finished had it find nothing
                    // handed off and scan the queue twice, 2.7 scans per reply; a requeued
                    // hand-off is found by its 200 ms look while sends are in flight.
                    if hold.is_none() {
                        engine.dispatch_wake.notify_one();
                    }
                    // The engine and the hold (and so the store) are released before the
                    // permit: once the dispatcher holds every permit at shutdown, no task
                    // holds the store.
                    drop(hold);
                    drop(engine);
                    drop(permit);
                });
            }
        }
        // Let in-flight sends finish and record their outcome.
        let _ = permits
            .acquire_many(self.config.provider.concurrency as u32)
            .await;
    }

    /// Gives the dispatcher an entry just queued and due now (see `handed_off`). One not in
    /// the stored queue comes with the hold that stands for it: when the shortcut is full,
    /// it is dropped here, and the hold puts it in the stored queue once released.
    pub(crate) fn hand_off(&self, known: KnownEntry, hold: Option<Arc<Hold>>) {
        if let Some(h) = &hold {
            h.cover(&known.entry);
        }
        let mut handed = self.handed_off.lock().unwrap_or_else(|e| e.into_inner());
        // While sending is paused or stopped, a hand-off would keep its reply unfinished (and
        // the store's reply mark below it) for as long: the stored queue takes it at once.
        if handed.len() < HAND_OFF_MAX && self.dispatch_state() == DispatchState::Running {
            handed.push_back(HandOff { known, hold });
        }
    }

    /// Gives every entry waiting in the shortcut to the stored queue (their holds put them
    /// there when released).
    pub(super) fn drop_hand_offs(&self) {
        drop(self.take_handed_off(usize::MAX));
    }

    fn take_handed_off(&self, max: usize) -> Vec<HandOff> {
        let mut handed = self.handed_off.lock().unwrap_or_else(|e| e.into_inner());
        let n = handed.len().min(max);
        handed.drain(..n).collect()
    }

    async fn wait_for_balance(&self, shutdown: &mut tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.provider.balance().await {
                Ok(balance) => {
                    *self.last_balance.lock().unwrap_or_else(|e| e.into_inner()) = Some(balance);
                    if balance > 0 {
                        tracing::info!(balance, "balance is back: sending resumes");
                        self.set_dispatch_state(DispatchState::Running);
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "balance check failed while paused"),
            }
            let wait = self.clock.now()
                + chrono::Duration::from_std(self.config.provider.balance_poll)
                    .unwrap_or(chrono::Duration::seconds(60));
            tokio::select! {
                _ = self.clock.sleep_until(wait) => {}
                _ = self.dispatch_wake.notified() => {}
                _ = super::stop_requested(shutdown) => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    fn set_dispatch_state(&self, state: DispatchState) {
        *self
            .dispatch_state
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Sends (or notifies) one entry and records the outcome. `true` once the entry is done
    /// with as a hand-off: out of the queue, or back in the stored one (see `handoff`).
    #[tracing::instrument(level = "debug", skip_all, fields(rule = %known.entry.rule, key = %known.entry.key, appointment = ?known.entry.appointment_id))]
    async fn dispatch_one(&self, known: KnownEntry) -> Result<bool, EngineError> {
        match &known.entry.kind {
            OutboxKind::Notify { endpoint } => {
                self.dispatch_notify(&known.entry, endpoint.clone()).await?;
                Ok(true)
            }
            OutboxKind::Send => self.dispatch_send(known).await,
        }
    }

    async fn dispatch_send(&self, known: KnownEntry) -> Result<bool, EngineError> {
        let entry = &known.entry;
        let now = self.clock.now();
        // A hand-off not written yet that does not leave now is written as it is first. One
        // found written already (a replay of its reply wrote it, in the stored queue) is that
        // record's: this copy is done with, and stale.
        let written = |known: &KnownEntry| -> Result<Option<KnownEntry>, EngineError> {
            if known.is_written() {
                return Ok(Some(known.clone()));
            }
            Ok(self.store.enqueue_known(known.entry.clone())?)
        };
        let prepared = match self.prepare_send(entry, now)? {
            Ok(p) => p,
            Err(final_outcome) => {
                let Some(known) = written(&known)? else {
                    return Ok(true);
                };
                self.record_outcome(entry, Some(&known), final_outcome, None)?;
                return Ok(true);
            }
        };
        let (request, text) = prepared;
        // Quiet hours are checked again now: the entry may have waited.
        let allowed = self.after_quiet_hours(now);
        if allowed > now {
            let Some(known) = written(&known)? else {
                return Ok(true);
            };
            self.record_outcome(
                entry,
                Some(&known),
                Outcome::Requeue {
                    at: allowed,
                    reason: "quiet hours: waits for the end of the window".into(),
                    count_attempt: false,
                },
                None,
            )?;
            return Ok(true);
        }
        // Durably mark the send as leaving before the request goes: after a crash from here on,
        // the outcome is unknown, never silently re-sent.
        let mobile = request.mobile.as_str().to_string();
        let variables = request.variables.as_slice().to_vec();
        let custom_field = request
            .custom_field
            .as_ref()
            .map(|c| c.as_str().to_string());
        let template = request.template.0;
        let mut mark = |e: &mut OutboxEntry| {
            // Only a queued entry that is due leaves: a stale copy (a hand-off that a scan
            // dispatched, failed and requeued meanwhile) must not jump its retry's wait.
            if e.status != MessageStatus::Queued || e.not_before > now {
                return false;
            }
            e.set_status(MessageStatus::Sending, now, None);
            e.attempts += 1;
            e.mobile = Some(mobile.clone());
            e.variables = variables.clone();
            e.template_id = Some(template);
            e.text = Some(text.clone());
            if custom_field.is_some() {
                e.custom_field = custom_field.clone();
            }
            true
        };
        let marked = if known.is_written() {
            self.store
                .update_known(&entry.key, Some(&known), &mut mark)?
        } else {
            // A reaction's hand-off, written for the first time here, already `sending`.
            let mut first = known.entry.clone();
            match mark(&mut first).then(|| self.store.enqueue_known(first)) {
                Some(Ok(Some(k))) => Some(k),
                // A replay of its reply wrote it meanwhile, in the stored queue, which sends
                // it: this copy is stale.
                Some(Ok(None)) => return Ok(true),
                Some(Err(e)) => return Err(e.into()),
                None => None,
            }
        };
        let Some(marked) = marked else {
            // Not queued and due: a hand-off not due yet stays one, for its hold to settle.
            return Ok(false);
        };
        if let Err(e) = self.store.durable().await {
            // The mark is not on disk, so the request must not leave; put the entry back in
            // the queue rather than leave it `sending` (which only a restart would clear).
            let _ = self.store.update_entry(&entry.key, |e| {
                if e.status != MessageStatus::Sending {
                    return false;
                }
                e.set_status(
                    MessageStatus::Queued,
                    now,
                    Some("the store could not write; retried later".into()),
                );
                e.attempts = e.attempts.saturating_sub(1);
                e.not_before = now + chrono::Duration::seconds(5);
                true
            });
            return Err(e.into());
        }
        let started = std::time::Instant::now();
        let result = self.provider.send(&request).await;
        metrics::histogram!("recuerda_dispatch_seconds").record(started.elapsed().as_secs_f64());
        let now = self.clock.now();
        let outcome = match result {
            Ok(id) => Outcome::Sent(id.as_str().to_string()),
            Err(e) => {
                let code = e.code().map(|c| c.code());
                let reason = e.to_string();
                match e.disposition() {
                    Disposition::Retry => {
                        Counters::bump(&self.counters.sends_retried);
                        if marked.entry.attempts >= self.config.provider.max_attempts {
                            Outcome::Final {
                                status: MessageStatus::Failed,
                                code,
                                reason: format!(
                                    "gave up after {} attempts: {reason}",
                                    marked.entry.attempts
                                ),
                            }
                        } else {
                            Outcome::Requeue {
                                at: now + self.backoff(marked.entry.attempts),
                                reason,
                                count_attempt: true,
                            }
                        }
                    }
                    Disposition::PauseForBalance => {
                        tracing::error!("provider says there is no balance (code 5): sending paused until it is topped up");
                        self.set_dispatch_state(DispatchState::PausedForBalance);
                        Outcome::Requeue {
                            at: now,
                            reason,
                            count_attempt: false,
                        }
                    }
                    Disposition::StopSending => {
                        tracing::error!(error = %reason, "provider refused the account: sending stopped until the configuration is fixed");
                        self.set_dispatch_state(DispatchState::Stopped(reason.clone()));
                        Outcome::Requeue {
                            at: now,
                            reason,
                            count_attempt: false,
                        }
                    }
                    Disposition::FailMessage => Outcome::Final {
                        status: MessageStatus::Failed,
                        code,
                        reason,
                    },
                    Disposition::Unknown => {
                        if self.config.provider.resend_unknown {
                            Outcome::Requeue {
                                at: now + self.backoff(marked.entry.attempts),
                                reason: format!("outcome unknown, re-sent (`provider.resend_unknown`): {reason}"),
                                count_attempt: true,
                            }
                        } else {
                            Outcome::Final {
                                status: MessageStatus::Unknown,
                                code,
                                reason: format!(
                                    "{reason}; not re-sent: it may have reached the patient"
                                ),
                            }
                        }
                    }
                }
            }
        };
        // Not waited for: nothing is acknowledged on the outcome, and holding the send's slot
        // for another flush slowed the sends behind it (asking for a flush without waiting
        // was slower still: it crowded the group commits the webhooks wait for). The next
        // group commit makes it durable — this slot's next `sending` mark waits for one, so a
        // slot has at most one outcome not on disk — or sled's own within half a second when
        // idle, or the shutdown's last one. A crash before then leaves the entry `sending`:
        // resolved as unknown at the next start, never re-sent, as for a crash mid-request.
        self.record_outcome(&marked.entry, Some(&marked), outcome, Some(now))?;
        Ok(true)
    }

    fn backoff(&self, attempts: u32) -> chrono::Duration {
        let base = self.config.provider.retry_base.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(16));
        let capped = exp.min(10 * 60 * 1000);
        let jitter = rand::rng().random_range(0..=capped / 4 + 1);
        chrono::Duration::milliseconds((capped + jitter) as i64)
    }

    /// Re-reads the appointment and renders the send now. `Ok(Err(outcome))` means the entry
    /// is final without any call to the provider (skipped or refused).
    #[allow(clippy::type_complexity)]
    fn prepare_send(
        &self,
        entry: &OutboxEntry,
        now: DateTime<Utc>,
    ) -> Result<Result<(SendRequest, String), Outcome>, EngineError> {
        let refuse = |reason: String| {
            Ok(Err(Outcome::Final {
                status: MessageStatus::Failed,
                code: None,
                reason,
            }))
        };
        let skip = |reason: String| {
            Ok(Err(Outcome::Final {
                status: MessageStatus::Skipped,
                code: None,
                reason,
            }))
        };
        let appointment = match &entry.appointment_id {
            Some(id) => self.store.get_appointment(id)?,
            None => None,
        };
        if entry.recheck_appointment {
            match &appointment {
                None => return skip("the appointment no longer exists".into()),
                Some(a) if a.status == AppointmentStatus::Cancelled => {
                    return skip(
                        "the appointment was cancelled after this reminder was planned".into(),
                    )
                }
                Some(a) if Some(a.start_utc()) != entry.appointment_start => {
                    return skip(format!(
                        "the appointment moved to {} after this reminder was planned",
                        a.start.to_rfc3339()
                    ))
                }
                Some(_) => {}
            }
        }
        let rules = self.rules();
        let Some(rule) = rules.rule(&entry.rule) else {
            return refuse(format!(
                "rule `{}` no longer exists (rules were reloaded)",
                entry.rule
            ));
        };
        let Some(Action::Send(send)) = rule.actions.get(entry.action_index) else {
            return refuse(format!(
                "rule `{}` changed: action {} is no longer a send",
                entry.rule,
                entry.action_index + 1
            ));
        };
        let mut ctx = serde_json::Map::new();
        if let Value::Object(saved) = entry.context.value() {
            for (k, v) in saved {
                ctx.insert(k.clone(), v.clone());
            }
        }
        if let Some(reply) = ctx.get("reply").cloned() {
            // The saved reply is the stored record; templates see the reply's public fields.
            let public = serde_json::json!({
                "mobile": reply.get("mobile"),
                "message": reply.get("message"),
                "custom_field": reply.get("custom_field"),
            });
            ctx.insert("reply".into(), public);
        }
        if let Some(a) = &appointment {
            ctx.insert("appointment".into(), a.to_context());
        }
        // The conversation is read only for a send whose templates may use it (most do not:
        // a read saved per send).
        if let Some(cf) = entry
            .custom_field
            .as_ref()
            .filter(|_| rules.send_reads(send, "conversation"))
        {
            let conv = self.conversation_context(cf)?;
            ctx.insert("conversation".into(), conv);
        }
        ctx.insert("now".into(), now.to_rfc3339().into());
        let ctx = Value::Object(ctx);
        let rendered = match rules.render_send(rule, send, &ctx) {
            Ok(r) => r,
            Err(e) => return refuse(format!("could not render: {e}")),
        };
        let to = rendered
            .to
            .clone()
            .or_else(|| appointment.as_ref().map(|a| a.mobile.clone()))
            .or_else(|| {
                ctx.pointer("/reply/mobile")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        let Some(to): Option<String> = to else {
            return refuse(
                "no recipient: the rule has no `to` and the occasion has no appointment or reply"
                    .into(),
            );
        };
        let mobile = match Mobile::parse(&to) {
            Ok(m) => m,
            Err(e) => return refuse(e.to_string()),
        };
        if self.store.is_opted_out(mobile.as_str())? {
            return skip("the patient opted out (suppression list)".into());
        }
        let variables = match Variables::new(rendered.variables.clone()) {
            Ok(v) => v,
            Err(e) => return refuse(e.to_string()),
        };
        if let Some(template) = rules.templates.get(&rendered.template_id) {
            if let Err(e) = variables.check_count(template.placeholders) {
                return refuse(e.to_string());
            }
        }
        let media = match rendered.media.as_deref().filter(|m| !m.trim().is_empty()) {
            Some(m) => match MediaUrl::parse(m) {
                Ok(u) => Some(u),
                Err(e) => return refuse(e.to_string()),
            },
            None => None,
        };
        let custom_field_text = entry.custom_field.clone().or(rendered.custom_field.clone());
        let custom_field = match custom_field_text.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => match CustomField::parse(c) {
                Ok(c) => Some(c),
                Err(e) => return refuse(e.to_string()),
            },
            None => None,
        };
        let request = SendRequest {
            template: TemplateId(rendered.template_id),
            mobile,
            variables,
            media,
            custom_field,
        };
        Ok(Ok((request, rendered.text)))
    }

    /// `known`: the entry as last read or written here, if at hand (saves decoding it again).
    fn record_outcome(
        &self,
        entry: &OutboxEntry,
        known: Option<&KnownEntry>,
        outcome: Outcome,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), EngineError> {
        let now = at.unwrap_or_else(|| self.clock.now());
        match outcome {
            Outcome::Sent(message_id) => {
                let id = message_id.clone();
                let updated = self.store.update_known(&entry.key, known, |e| {
                    e.set_status(MessageStatus::Sent, now, None);
                    e.message_id = Some(id.clone());
                    true
                })?;
                self.store.link_message_id(&message_id, &entry.key)?;
                Counters::bump(&self.counters.sends_ok);
                metrics::counter!("recuerda_sends_total", "rule" => entry.rule.clone(), "result" => "sent").increment(1);
                if let Some(e) = updated.as_ref().map(|k| &k.entry) {
                    tracing::info!(rule = %e.rule, key = %e.key, message_id = %message_id, mobile = %super::mask(e.mobile.as_deref().unwrap_or("")), "sent");
                    // "sent" lives in the message's timeline (the conversation's API view lists
                    // its messages): no conversation write per send.
                    self.plan_no_reply(e, now)?;
                }
                self.apply_orphans(&message_id, &entry.key)?;
            }
            Outcome::Requeue {
                at,
                reason,
                count_attempt,
            } => {
                self.store.update_known(&entry.key, known, |e| {
                    // A stale copy (a hand-off a scan already dispatched) changes nothing.
                    if !e.status.is_pending() {
                        return false;
                    }
                    e.set_status(MessageStatus::Queued, now, Some(reason.clone()));
                    // Never earlier than it was due: a stale copy's quiet-hours requeue must
                    // not pull a retry's backoff forward.
                    e.not_before = at.max(e.not_before);
                    if !count_attempt {
                        e.attempts = e.attempts.saturating_sub(1);
                    }
                    true
                })?;
            }
            Outcome::Final {
                status,
                code,
                reason,
            } => {
                let updated = self.store.update_known(&entry.key, known, |e| {
                    if !e.status.is_pending() {
                        return false;
                    }
                    e.set_status(status, now, Some(reason.clone()));
                    if let Some(last) = e.timeline.last_mut() {
                        last.code = code;
                    }
                    e.code = code;
                    e.error = Some(reason.clone());
                    true
                })?;
                let Some(e) = updated.map(|k| k.entry) else {
                    return Ok(());
                };
                let counter = match status {
                    MessageStatus::Skipped => &self.counters.sends_skipped,
                    MessageStatus::Unknown => &self.counters.sends_unknown,
                    _ => &self.counters.sends_failed,
                };
                Counters::bump(counter);
                metrics::counter!("recuerda_sends_total", "rule" => entry.rule.clone(), "result" => status.as_str()).increment(1);
                if status == MessageStatus::Skipped {
                    tracing::info!(rule = %entry.rule, key = %entry.key, reason = %reason, "send skipped");
                } else {
                    tracing::warn!(rule = %entry.rule, key = %entry.key, status = %status, reason = %reason, "send not delivered to the provider");
                }
                if let Some(cf) = &e.custom_field {
                    let kind = if status == MessageStatus::Skipped {
                        "skipped"
                    } else {
                        "refused"
                    };
                    self.store.update_conversation(cf, now, |c| {
                        c.record(now, kind, reason.clone(), Some(&e.rule))
                    })?;
                }
            }
        }
        Ok(())
    }

    async fn dispatch_notify(
        &self,
        entry: &OutboxEntry,
        endpoint: String,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let Some(target) = self.config.notify.get(&endpoint) else {
            return self.record_outcome(
                entry,
                None,
                Outcome::Final {
                    status: MessageStatus::Failed,
                    code: None,
                    reason: format!("`notify.{endpoint}` is not in the config"),
                },
                Some(now),
            );
        };
        self.store.update_entry(&entry.key, |e| {
            e.set_status(MessageStatus::Sending, now, None);
            e.attempts += 1;
            true
        })?;
        let result = self
            .notify_http
            .post(&target.url)
            .timeout(target.timeout)
            .json(&entry.context)
            .send()
            .await;
        let now = self.clock.now();
        let attempts = entry.attempts + 1;
        // A redirect (never followed: targets come only from the config) or a 4xx other than
        // 408/429 will answer the same next time: fail at once instead of retrying for minutes.
        let mut permanent = false;
        let failure = match result {
            Ok(r) if r.status().is_success() => None,
            Ok(r) if r.status().is_redirection() => {
                permanent = true;
                Some(format!(
                    "`notify.{endpoint}` answered HTTP {} (a redirect, not followed): set `notify.{endpoint}.url` to the final address",
                    r.status().as_u16()
                ))
            }
            Ok(r) => {
                let code = r.status().as_u16();
                permanent = r.status().is_client_error() && !matches!(code, 408 | 429);
                Some(format!("`notify.{endpoint}` answered HTTP {code}"))
            }
            Err(e) => Some(format!(
                "`notify.{endpoint}` could not be reached: {}",
                without_url(&e)
            )),
        };
        match failure {
            None => {
                Counters::bump(&self.counters.notify_ok);
                self.store.update_entry(&entry.key, |e| {
                    e.set_status(MessageStatus::Sent, now, None);
                    true
                })?;
            }
            Some(reason) if attempts < 5 && !permanent => {
                self.store.update_entry(&entry.key, |e| {
                    e.set_status(MessageStatus::Queued, now, Some(reason.clone()));
                    e.not_before = now + chrono::Duration::seconds(2i64.pow(attempts));
                    true
                })?;
            }
            Some(reason) => {
                Counters::bump(&self.counters.notify_failed);
                tracing::error!(endpoint = %endpoint, reason = %reason, "notify failed; the other actions went on");
                self.store.update_entry(&entry.key, |e| {
                    e.set_status(MessageStatus::Failed, now, Some(reason.clone()));
                    e.error = Some(reason.clone());
                    true
                })?;
            }
        }
        Ok(())
    }
}

/// A reqwest error's text without its URL (a clinic's endpoint may carry a key in its path).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<endpoint>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine on the bench's rules (its reply rule sends template 991) against the bench's
    /// lean provider sink, on a fresh store.
    async fn engine_on_sink(
        dir: &std::path::Path,
    ) -> (crate::app::Running, crate::bench::sink::Sink) {
        use crate::bench::fixtures;
        let sink = crate::bench::sink::Sink::start().await.unwrap();
        let (rules_dir, templates_dir) =
            fixtures::write_rules(dir, &fixtures::load_rules_yaml(0)).unwrap();
        let mut config = crate::config::Config {
            rules_dir,
            templates_dir,
            data_dir: dir.join("data"),
            ..Default::default()
        };
        config.provider.base_url = sink.base_url();
        config.provider.login = Some("bench".into());
        config.provider.token = Some(crate::secret::Secret::new("bench-provider-token"));
        let rules = crate::app::load_rules(&config).unwrap();
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let running = crate::app::start(config, rules, clock, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        (running, sink)
    }

    /// What a reply's reaction queues for the bench's reply rule (its send is action 1).
    fn reply_send(key: &str, not_before: DateTime<Utc>) -> OutboxEntry {
        let mut entry = OutboxEntry::queued(
            key.into(),
            OutboxKind::Send,
            crate::bench::fixtures::REPLY_RULE,
            1,
            not_before,
        );
        entry.custom_field = Some("bench-1".into());
        entry.mobile = Some("573000000001".into());
        entry.context = serde_json::json!({"reply": {
            "mobile": "573000000001", "message": "1", "custom_field": "bench-1"
        }})
        .into();
        entry
    }

    /// A handed-off copy of an entry that is not due (here: queued for later; in life, one a
    /// scan dispatched, failed and requeued with a backoff) is not sent before its time; a due
    /// one handed off is sent at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handed_off_entry_leaves_only_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let (running, sink) = engine_on_sink(dir.path()).await;
        let engine = &running.engine;
        let now = Utc::now();

        let later = engine
            .store
            .enqueue_new(reply_send("later#1", now + chrono::Duration::hours(1)))
            .unwrap();
        engine.hand_off(later, None);
        engine.dispatch_wake.notify_one();
        let due = engine.store.enqueue_new(reply_send("due#1", now)).unwrap();
        engine.hand_off(due, None);
        engine.dispatch_wake.notify_one();

        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.sends() < 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sink.sends(), 1, "only the due entry went out");
        let status = |key: &str| engine.store.get_entry(key).unwrap().unwrap().status;
        assert_eq!(status("later#1"), MessageStatus::Queued);
        assert_eq!(status("due#1"), MessageStatus::Sent);
        running.shutdown().await;
    }

    /// Starts sends as fast as the pacer lets them through one simulated second.
    /// Returns `(sends started, waits)`.
    fn started_in_a_second(rate: u32) -> (usize, usize) {
        let mut pacer = Pacer::new(rate);
        let t0 = Instant::now();
        let mut now = t0;
        let (mut started, mut waits) = (0, 0);
        while now < t0 + Duration::from_secs(1) {
            if let Some(at) = pacer.admit(now) {
                waits += 1;
                now = at;
                if now >= t0 + Duration::from_secs(1) {
                    break;
                }
            }
            started += 1;
        }
        (started, waits)
    }

    #[test]
    fn the_pacer_holds_the_rate_and_lets_a_high_one_through() {
        for rate in [10, 500, 2_000, 100_000] {
            let (started, waits) = started_in_a_second(rate);
            let allowed = rate as usize + rate as usize / 1000 + 1;
            assert!(
                started >= rate as usize && started <= allowed,
                "rate {rate}: {started} started in a second"
            );
            // Each wait is a timer sleep of at least a millisecond: one per slot would cap
            // the rate near 1,000/s whatever the config says.
            assert!(waits <= 1_001, "rate {rate}: {waits} waits in a second");
        }
    }
}

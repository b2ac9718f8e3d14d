//! The engine: reacts to webhook events, plans and fires time-driven rules, and dispatches
//! the outbox to the provider. Its decisions take `now` from the clock it was given.
//!
//! Data flow: trigger (webhook event, appointment change, due entry, cron slot) → rule match
//! → actions → outbox entries (durable, keyed by occasion) → dispatcher → provider → webhook
//! delivery events → message status and `status`/`no_reply` rules.

mod actions;
mod balance;
mod dispatch;
mod handoff;
mod react;
mod reload;
mod schedule;

pub use crate::provider::mask_mobile as mask;
pub use dispatch::DispatchState;
pub use react::Intake;
pub use schedule::UpsertError;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::provider::Client;
use crate::rules::RuleSet;
use crate::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// Counters the metrics endpoint and the demo read.
#[derive(Debug, Default)]
pub struct Counters {
    pub webhook_events: AtomicU64,
    pub status_events: AtomicU64,
    pub replies: AtomicU64,
    pub replies_matched: AtomicU64,
    pub replies_unhandled: AtomicU64,
    pub replies_duplicate: AtomicU64,
    pub opted_out: AtomicU64,
    pub dead_letters: AtomicU64,
    pub sends_ok: AtomicU64,
    pub sends_failed: AtomicU64,
    pub sends_unknown: AtomicU64,
    pub sends_skipped: AtomicU64,
    pub sends_retried: AtomicU64,
    pub notify_ok: AtomicU64,
    pub notify_failed: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the rules reload last did, for health and the log.
#[derive(Debug, Clone, Default)]
pub struct RulesStatus {
    pub loaded_at: Option<chrono::DateTime<chrono::Utc>>,
    pub n_rules: usize,
    pub n_templates: usize,
    /// Located errors of the last failed reload (the previous rules keep running).
    pub last_error: Option<String>,
}

pub struct EngineInner {
    pub store: Store,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub provider: Client,
    rules: RwLock<Arc<RuleSet>>,
    pub rules_status: Mutex<RulesStatus>,
    pub counters: Counters,
    notify_http: reqwest::Client,
    /// Wakes the webhook processor.
    inbox_wake: Notify,
    /// Wakes the dispatcher (new entries, resume).
    dispatch_wake: Notify,
    /// Entries just queued by a reaction, due now, as they were written: the dispatcher takes
    /// them without scanning the queue and reading them back. Each is also in the stored
    /// queue, which the dispatcher still scans (see `run_dispatcher`), or, handed off by a
    /// webhook's reaction, stood for by its held inbox item (see `handoff`).
    handed_off: Mutex<std::collections::VecDeque<handoff::HandOff>>,
    /// Wakes the scheduler (new plans, reload).
    schedule_wake: Notify,
    /// When the sleeping scheduler wakes next (ms since the epoch; `i64::MIN` while it
    /// ticks): a plan due later needs no wake-up, so a send's 4-hour no-reply timer does not
    /// cost a scheduler tick.
    planned_wake_ms: std::sync::atomic::AtomicI64,
    dispatch_state: Mutex<DispatchState>,
    last_balance: Mutex<Option<i64>>,
    /// Why the balance is low, while it is (health shows it).
    balance_low: Mutex<Option<String>>,
    /// The `now` of the scheduler's last completed tick.
    scheduled_through: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// `opt_out.stop` / `opt_out.start` in the form replies are compared in (normalized once).
    opt_out_keywords: react::OptOutKeywords,
    /// Reactions to webhook events run one at a time, in arrival order: a reply's rule reads
    /// the state the previous reply set, and sled's hot leaves (time-ordered keys) are not
    /// fought over by concurrent writers (tried: per-conversation turns cost more CPU).
    reacting: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

/// A running engine: cheap to clone; every background task stops on [`Engine::shutdown`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::ops::Deref for Engine {
    type Target = EngineInner;
    fn deref(&self) -> &EngineInner {
        &self.inner
    }
}

impl Engine {
    /// Builds the engine over an open store and loaded rules. Call [`Engine::start`] to run
    /// its background tasks.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        rules: RuleSet,
        provider: Client,
        clock: SharedClock,
    ) -> Result<Engine, EngineError> {
        let notify_http = reqwest::Client::builder()
            // Notify targets come only from the config; a redirect elsewhere is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| {
                EngineError::Invalid(format!("cannot build the notify HTTP client: {e}"))
            })?;
        let status = RulesStatus {
            loaded_at: Some(clock.now()),
            n_rules: rules.rules.len(),
            n_templates: rules.templates.len(),
            last_error: None,
        };
        let (shutdown, _) = watch::channel(false);
        let opt_out_keywords = react::OptOutKeywords::new(&config.opt_out);
        Ok(Engine {
            inner: Arc::new(EngineInner {
                store,
                config,
                clock,
                provider,
                rules: RwLock::new(Arc::new(rules)),
                rules_status: Mutex::new(status),
                counters: Counters::default(),
                notify_http,
                inbox_wake: Notify::new(),
                dispatch_wake: Notify::new(),
                handed_off: Mutex::default(),
                schedule_wake: Notify::new(),
                planned_wake_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
                dispatch_state: Mutex::new(DispatchState::Running),
                last_balance: Mutex::new(None),
                balance_low: Mutex::new(None),
                scheduled_through: Mutex::new(None),
                opt_out_keywords,
                reacting: tokio::sync::Mutex::new(()),
                shutdown,
            }),
            tasks: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Recovers what a crash left (sends in flight become `unknown`, unprocessed webhook
    /// events are processed), then starts the processor, dispatcher and scheduler.
    pub async fn start(&self) -> Result<(), EngineError> {
        self.recover_in_flight()?;
        self.recover_appointment_changes()?;
        self.store.durable().await?;
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.run_processor().await }));
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.run_dispatcher().await }));
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.run_scheduler().await }));
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.run_watcher().await }));
        let e = self.clone();
        tasks.push(tokio::spawn(async move { e.run_balance_guard().await }));
        drop(tasks);
        if self.store.links_unsure() {
            // Not awaited by `shutdown`: it stops at its next look at the flag, and an
            // unfinished repair is done again at the next start.
            let e = self.clone();
            tokio::spawn(async move { e.repair_links().await });
        }
        Ok(())
    }

    /// After a crash: links the messages whose index links the crash lost, and applies the
    /// delivery events parked for them meanwhile (see `Store::repair_links`).
    async fn repair_links(&self) {
        let e = self.clone();
        let repaired = tokio::task::spawn_blocking(move || {
            let relinked = e.store.repair_links(|| e.is_shutting_down())?;
            if let Some(relinked) = &relinked {
                for (message_id, key) in relinked {
                    e.apply_orphans(message_id, key)?;
                }
            }
            Ok::<_, EngineError>(relinked.map(|r| r.len()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match repaired {
            Ok(Some(n)) => {
                tracing::info!(relinked = n, "index links checked after an unclean stop")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "checking index links after an unclean stop failed; tried again at the next start")
            }
        }
    }

    /// Stops every background task, letting in-flight sends finish and record their outcome,
    /// then flushes the store.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.inbox_wake.notify_one();
        self.dispatch_wake.notify_one();
        self.schedule_wake.notify_one();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        // Hand-offs the dispatcher never took go to the stored queue (their holds do it when
        // released) before the last flush, so the reply mark it writes is not held back.
        self.drop_hand_offs();
        let _ = self.store.durable().await;
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a new rule set (already validated) and re-plans offsets.
    pub fn replace_rules(&self, rules: RuleSet) {
        {
            let mut status = self.rules_status.lock().unwrap_or_else(|e| e.into_inner());
            status.loaded_at = Some(self.clock.now());
            status.n_rules = rules.rules.len();
            status.n_templates = rules.templates.len();
            status.last_error = None;
        }
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        if let Err(e) = self.replan_all() {
            tracing::error!(error = %e, "re-planning after a rules reload failed");
        }
        self.schedule_wake.notify_one();
    }

    /// Reloads rules and templates from the configured folders. An invalid change keeps the
    /// last good rules running; the located errors are returned and shown in health.
    pub fn reload_rules(&self) -> Result<(), String> {
        match RuleSet::load(
            &self.config.rules_dir,
            &self.config.templates_dir,
            &self.config,
        ) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(rules = loaded.set.rules.len(), "rules reloaded");
                self.replace_rules(loaded.set);
                Ok(())
            }
            Err(errors) => {
                let text = errors
                    .diagnostics
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
                tracing::error!("rules reload refused, the previous rules keep running:\n{text}");
                self.rules_status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some(text.clone());
                Err(text)
            }
        }
    }

    pub fn dispatch_state(&self) -> DispatchState {
        self.dispatch_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything due up to this time has been fired (the scheduler's last completed tick).
    pub fn scheduled_through(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *self
            .scheduled_through
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn last_balance(&self) -> Option<i64> {
        *self.last_balance.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the webhook processor: a new event is in the inbox.
    pub fn wake_processor(&self) {
        self.inbox_wake.notify_one();
    }

    fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Resolves once the engine is told to stop, at once if it already was. (`changed()` would
/// wait for a change after the receiver was made: a task first run after the stop, as when
/// a stop follows a start at once, would then never see it.)
pub(crate) async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

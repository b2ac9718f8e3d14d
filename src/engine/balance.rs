//! The low-balance guard: polls the provider's balance on the clock, and warns (log, health,
//! metrics, a `notify` once a day) when it is low or cannot cover a cron fan-out.

use super::Engine;
use crate::message::{OutboxEntry, OutboxKind};
use serde_json::json;

impl Engine {
    pub(crate) async fn run_balance_guard(&self) {
        let mut shutdown = self.shutdown_signal();
        loop {
            self.check_balance().await;
            let poll = chrono::Duration::from_std(self.config.balance.poll)
                .unwrap_or(chrono::Duration::minutes(15));
            let next = self.clock.now() + poll;
            tokio::select! {
                _ = self.clock.sleep_until(next) => {}
                _ = super::stop_requested(&mut shutdown) => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    async fn check_balance(&self) {
        match self.provider.balance().await {
            Ok(balance) => {
                *self.last_balance.lock().unwrap_or_else(|e| e.into_inner()) = Some(balance);
                if balance < self.config.balance.alert_below {
                    self.balance_alert(format!(
                        "the provider balance is {balance}, below `balance.alert_below` ({})",
                        self.config.balance.alert_below
                    ));
                } else {
                    *self.balance_low.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "balance check failed"),
        }
    }

    /// Before a cron fan-out of `needed` sends: warns when the last known balance cannot cover it.
    pub(crate) fn check_fan_out(&self, rule: &str, needed: usize) {
        if let Some(balance) = self.last_balance() {
            if (balance.max(0) as usize) < needed {
                self.balance_alert(format!(
                    "rule `{rule}` is about to send {needed} messages but the provider balance is {balance}: top it up"
                ));
            }
        }
    }

    /// Why the balance is low, while it is.
    pub fn balance_low(&self) -> Option<String> {
        self.balance_low
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn balance_alert(&self, reason: String) {
        tracing::warn!(reason = %reason, "low balance");
        *self.balance_low.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        let Some(endpoint) = self.config.balance.notify.clone() else {
            return;
        };
        let now = self.clock.now();
        let day = now.with_timezone(&self.config.timezone).format("%Y-%m-%d");
        // One notification a day: the key is the occasion.
        let entry = OutboxEntry {
            context: json!({"alert": "low_balance", "reason": reason, "balance": self.last_balance(), "at": now.to_rfc3339()}).into(),
            text: Some(reason),
            ..OutboxEntry::queued(
                format!("balance-low:{day}"),
                OutboxKind::Notify { endpoint },
                "balance-guard",
                0,
                now,
            )
        };
        match self.store.enqueue(&entry) {
            Ok(true) => self.dispatch_wake.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "could not queue the low-balance notification"),
        }
    }
}

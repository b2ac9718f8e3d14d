//! The clock: every decision that depends on "now" asks one, so tests drive days in
//! milliseconds with a [`ManualClock`] and production uses the [`SystemClock`].

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once `now() >= at`. A manual clock resolves when a test advances it there.
    fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        })
    }
}

/// A clock that moves only when told to: [`ManualClock::set`] / [`ManualClock::advance`].
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    changed: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let (changed, _) = watch::channel(start);
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            changed,
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
        self.changed.send_replace(at);
    }

    pub fn advance(&self, by: chrono::Duration) {
        let next = self.now() + by;
        self.set(next);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut rx = self.changed.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, so a time already reached resolves at once.
            let _ = rx.wait_for(|now| *now >= at).await;
        })
    }
}

/// A clock that runs `speed` times faster than real time from a given start (the demo's clock).
#[derive(Debug, Clone)]
pub struct FastClock {
    start_real: std::time::Instant,
    start: DateTime<Utc>,
    speed: f64,
}

impl FastClock {
    pub fn new(start: DateTime<Utc>, speed: f64) -> Self {
        FastClock {
            start_real: std::time::Instant::now(),
            start,
            speed: speed.max(1.0),
        }
    }
}

impl Clock for FastClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.start_real.elapsed().as_secs_f64() * self.speed;
        self.start + chrono::Duration::milliseconds((elapsed * 1000.0) as i64)
    }

    fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let simulated = (at - self.now()).num_milliseconds().max(0) as f64;
            let real = std::time::Duration::from_millis((simulated / self.speed) as u64);
            tokio::time::sleep(real).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let start = Utc::now();
        let clock = Arc::new(ManualClock::new(start));
        let c2 = clock.clone();
        let waiter = tokio::spawn(async move {
            c2.sleep_until(start + chrono::Duration::hours(4)).await;
            c2.now()
        });
        clock.advance(chrono::Duration::hours(1));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(chrono::Duration::hours(3));
        let woke_at = waiter.await.unwrap();
        assert_eq!(woke_at, start + chrono::Duration::hours(4));
    }
}

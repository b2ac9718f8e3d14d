//! Entries a reaction hands straight to the dispatcher, and the reply that stands for them in
//! the store while they are pending.
//!
//! A fresh reply's due sends are not written by its reaction at all: the dispatcher writes
//! each for the first time already `sending` (a queued write, a queue key and its removal
//! saved). Their recovery path is instead the reply itself: it stays unfinished
//! (`Store::begin_reply`), holding the store's reply mark at or below it, until every entry
//! handed off is done with, and a store opened with it at or above the mark puts those
//! written in the stored queue and replays the reply, which writes those never written
//! (`Store::open`, `engine::react`).

use crate::message::OutboxEntry;
use crate::store::{KnownEntry, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// An entry for the dispatcher, with the hold on its reply if it has one.
#[derive(Debug)]
pub(crate) struct HandOff {
    pub known: KnownEntry,
    pub hold: Option<std::sync::Arc<Hold>>,
}

/// A reply reacted to in its request, unfinished while the entries its reaction handed off
/// may be pending. When the last hand-off is done with (sent, dropped, or the dispatcher
/// gone), each entry still pending goes into the stored queue, then the reply is finished.
pub(crate) struct Hold {
    store: Store,
    reply_id: uuid::Uuid,
    /// Handed off and not yet done with: written by the dispatcher, or not at all.
    entries: Mutex<Vec<OutboxEntry>>,
    /// Its reaction failed and its body could not be queued for a retry: left unfinished,
    /// it is replayed by the next start.
    keep: AtomicBool,
}

impl Hold {
    /// Begins a reply (`Store::begin_reply`: its id is minted here) held until dropped.
    pub fn begin(store: &Store) -> Hold {
        Hold {
            reply_id: store.begin_reply(),
            store: store.clone(),
            entries: Mutex::default(),
            keep: AtomicBool::new(false),
        }
    }

    /// Leaves the reply unfinished when released (see `keep`).
    pub fn keep_unfinished(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    pub fn reply_id(&self) -> uuid::Uuid {
        self.reply_id
    }

    /// Notes `entry` as handed off under this hold (a copy: the hold writes it in the stored
    /// queue if the dispatcher never does).
    pub fn cover(&self, entry: &OutboxEntry) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry.clone());
    }

    /// Entry `key` is done with as a hand-off (out of the queue, or back in the stored one):
    /// nothing left to check when the hold is released.
    pub fn settled(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = entries.iter().position(|e| e.key == key) {
            entries.swap_remove(at);
        }
    }
}

/// Held by a reaction while it runs: a panic in it leaves its reply unfinished even when the
/// dispatcher, holding the reply's hand-offs, releases the hold last.
pub(crate) struct KeepOnPanic(pub std::sync::Arc<Hold>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.keep_unfinished();
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("reply_id", &self.reply_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let entries = std::mem::take(self.entries.get_mut().unwrap_or_else(|e| e.into_inner()));
        match entries
            .iter()
            .try_for_each(|e| self.store.settle_hand_off_entry(e).map(drop))
        {
            // A panic in the reaction may have left it half-done: unfinished, the next start
            // replays it.
            Ok(()) if !self.keep.load(Ordering::Relaxed) && !std::thread::panicking() => {
                self.store.finish_reply(self.reply_id)
            }
            Ok(()) => {}
            // Left unfinished, the reply keeps the mark below it: the next start settles them.
            Err(e) => {
                tracing::error!(error = %e, reply = %self.reply_id, "could not queue a handed-off entry; the next start queues it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{MessageStatus, OutboxEntry, OutboxKind};
    use chrono::{DateTime, Utc};

    /// A reaction's hand-off, as it covers it: not written (the dispatcher writes it).
    fn handed_off(reply: &str, rule: &str, now: DateTime<Utc>) -> OutboxEntry {
        let key = format!("{}#0", crate::store::reply_occasion(reply, rule));
        let mut e = OutboxEntry::queued(key, OutboxKind::Send, rule, 0, now);
        e.handed_off = true;
        e
    }

    /// Released, a hold puts its entries still pending in the stored queue (one the
    /// dispatcher never took: the shortcut was full, or it stopped — never written — or one
    /// it wrote and did not send) and finishes its reply.
    #[tokio::test]
    async fn a_released_hold_queues_what_is_left_and_finishes_its_reply() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();

        let hold = Hold::begin(&store);
        let id = hold.reply_id().to_string();
        assert_eq!(store.unfinished_replies(), 1);
        let (never, left, sent) = (
            handed_off(&id, "a", now),
            handed_off(&id, "b", now),
            handed_off(&id, "c", now),
        );
        for e in [&never, &left, &sent] {
            hold.cover(e);
        }
        store.enqueue_new(left.clone()).unwrap();
        let mut done = sent.clone();
        done.status = MessageStatus::Sent;
        store.enqueue_new(done).unwrap();
        assert!(store.due_outbox_keys(now).is_empty(), "handed off");
        assert!(store.get_entry(&never.key).unwrap().is_none());
        drop(hold);
        assert_eq!(
            store.due_outbox_keys(now),
            vec![never.key.clone(), left.key.clone()]
        );
        assert!(!store.get_entry(&never.key).unwrap().unwrap().handed_off);
        assert_eq!(
            store.get_entry(&sent.key).unwrap().unwrap().status,
            MessageStatus::Sent
        );
        assert_eq!(store.unfinished_replies(), 0);
        assert_eq!(store.inbox_depth(), 0, "a fresh reply has no inbox item");
    }

    /// A reaction that panicked, or whose body could not be queued for a retry, may be
    /// half-done: its reply stays unfinished (the store's reply mark stays at or below it), so
    /// the next start replays it.
    #[tokio::test]
    async fn a_hold_released_by_a_panic_or_kept_leaves_its_reply_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hold = Hold::begin(&store);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _hold = hold;
            panic!("a reaction's bug");
        }));
        assert!(panicked.is_err());
        assert_eq!(store.unfinished_replies(), 1);

        let kept = Hold::begin(&store);
        kept.keep_unfinished();
        drop(kept);
        assert_eq!(store.unfinished_replies(), 2);
        drop(Hold::begin(&store));
        assert_eq!(
            store.unfinished_replies(),
            2,
            "an ordinary release finishes its reply"
        );

        // The dispatcher holds it too, and releases it last, after the reaction panicked.
        let shared = std::sync::Arc::new(Hold::begin(&store));
        let dispatcher = shared.clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _keep = KeepOnPanic(shared);
            panic!("a reaction's bug after a hand-off");
        }));
        assert!(panicked.is_err());
        drop(dispatcher);
        assert_eq!(store.unfinished_replies(), 3);
    }
}

//! Entries a reaction hands straight to the dispatcher, and the reply that stands for them in
//! the store while they are pending.
//!
//! A fresh reply's due sends are queued without a key in the stored queue (`handed_off`):
//! that key's write and removal were a sixth of a reply's store work. Their recovery path is
//! instead the reply itself: it stays unfinished (`Store::begin_reply`), holding the store's
//! reply mark at or below it, until every entry handed off is done with, and a store opened
//! with it at or above the mark puts those entries in the stored queue (`Store::open`).

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
    keys: Mutex<Vec<String>>,
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
            keys: Mutex::default(),
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

    /// Notes entry `key` as handed off under this hold.
    pub fn cover(&self, key: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key.to_string());
    }

    /// Entry `key` is done with as a hand-off (out of the queue, or back in the stored one):
    /// nothing left to check when the hold is released.
    pub fn settled(&self, key: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = keys.iter().position(|k| k == key) {
            keys.swap_remove(at);
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
        let keys = std::mem::take(self.keys.get_mut().unwrap_or_else(|e| e.into_inner()));
        match keys
            .iter()
            .try_for_each(|k| self.store.settle_hand_off(k).map(drop))
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

    fn handed_off(store: &Store, reply: &str, rule: &str, now: DateTime<Utc>) -> String {
        let key = format!("{}#0", crate::store::reply_occasion(reply, rule));
        let mut e = OutboxEntry::queued(key.clone(), OutboxKind::Send, rule, 0, now);
        e.handed_off = true;
        store.enqueue_new(e).unwrap();
        key
    }

    /// Released, a hold puts its entries still pending in the stored queue (one the
    /// dispatcher never took: the shortcut was full, or it stopped) and finishes its reply.
    #[tokio::test]
    async fn a_released_hold_queues_what_is_left_and_finishes_its_reply() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();

        let hold = Hold::begin(&store);
        let id = hold.reply_id().to_string();
        assert_eq!(store.unfinished_replies(), 1);
        let (left, sent) = (
            handed_off(&store, &id, "a", now),
            handed_off(&store, &id, "b", now),
        );
        hold.cover(&left);
        hold.cover(&sent);
        store
            .update_entry(&sent, |e| {
                e.status = MessageStatus::Sent;
                true
            })
            .unwrap();
        assert!(store.due_outbox_keys(now).is_empty(), "handed off");
        drop(hold);
        assert_eq!(store.due_outbox_keys(now), vec![left]);
        assert_eq!(
            store.get_entry(&sent).unwrap().unwrap().status,
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
    }
}

//! Entries a reaction hands straight to the dispatcher, and the inbox item that stands for
//! them in the store while they are pending.
//!
//! A fresh reply's due sends are queued without a key in the stored queue (`handed_off`):
//! that key's write and removal were a sixth of a reply's store work. Their recovery path is
//! instead the webhook's inbox item, written before the reaction anyway: it stays, held out
//! of the processor's sight, until every entry handed off is done with, and a store opened
//! with it still there puts those entries in the stored queue (`Store::open`).

use crate::store::{KnownEntry, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// An entry for the dispatcher, with the hold on its webhook's inbox item if it has one.
#[derive(Debug)]
pub(crate) struct HandOff {
    pub known: KnownEntry,
    pub hold: Option<std::sync::Arc<Hold>>,
}

/// A webhook's inbox item held while the entries its reaction handed off may be pending.
/// When the last hand-off is done with (sent, dropped, or the dispatcher gone), each entry
/// still pending goes into the stored queue, then the item leaves the inbox.
pub(crate) struct Hold {
    store: Store,
    inbox_id: String,
    keys: Mutex<Vec<String>>,
    /// The reaction failed: the item stays for the processor to replay.
    keep: AtomicBool,
}

impl Hold {
    /// Holds inbox item `inbox_id` (see `Store::hold_inbox`).
    pub fn new(store: &Store, inbox_id: &str) -> Hold {
        store.hold_inbox(inbox_id);
        Hold {
            store: store.clone(),
            inbox_id: inbox_id.to_string(),
            keys: Mutex::default(),
            keep: AtomicBool::new(false),
        }
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

    /// The reaction did not finish: the item is replayed, not removed, and is visible to the
    /// processor (and counts as waiting, so later events queue behind it) at once, not when
    /// the sends handed off before the failure are done. A replay that finds one of those
    /// still pending puts it in the stored queue; the dispatcher's `sending` mark (queued and
    /// due only, under the entry's lock) keeps a copy found both ways from leaving twice.
    pub fn keep_item(&self) {
        self.keep.store(true, Ordering::Relaxed);
        if let Err(e) = self.store.release_inbox(&self.inbox_id, false) {
            tracing::error!(error = %e, inbox = %self.inbox_id, "could not hand a webhook event back to the processor");
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("inbox_id", &self.inbox_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let keys = std::mem::take(self.keys.get_mut().unwrap_or_else(|e| e.into_inner()));
        let settled = keys
            .iter()
            .try_for_each(|k| self.store.settle_hand_off(k).map(drop));
        // Unsettled, the item must stay: its replay settles the entries.
        let remove = settled.is_ok() && !self.keep.load(Ordering::Relaxed);
        if let Err(e) = settled {
            tracing::error!(error = %e, inbox = %self.inbox_id, "could not queue a handed-off entry; its webhook event is replayed to do it");
        }
        if let Err(e) = self.store.release_inbox(&self.inbox_id, remove) {
            tracing::error!(error = %e, inbox = %self.inbox_id, "could not take a webhook event out of the inbox; it is replayed (harmlessly)");
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
    /// dispatcher never took: the shortcut was full, or it stopped) and takes its item out of
    /// the inbox; a failed reaction's item stays, for the processor to replay.
    #[tokio::test]
    async fn a_released_hold_queues_what_is_left_and_frees_its_item() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();

        let id = uuid::Uuid::now_v7();
        store.push_inbox_as(id, now, b"{}").unwrap();
        let hold = Hold::new(&store, &id.to_string());
        let (left, sent) = (
            handed_off(&store, &id.to_string(), "a", now),
            handed_off(&store, &id.to_string(), "b", now),
        );
        hold.cover(&left);
        hold.cover(&sent);
        store
            .update_entry(&sent, |e| {
                e.status = MessageStatus::Sent;
                true
            })
            .unwrap();
        assert!(store.inbox(10).unwrap().is_empty(), "held");
        drop(hold);
        assert_eq!(store.due_outbox_keys(now), vec![left]);
        assert_eq!(
            store.get_entry(&sent).unwrap().unwrap().status,
            MessageStatus::Sent
        );
        assert!(store.inbox(10).unwrap().is_empty(), "removed");

        let failed = uuid::Uuid::now_v7();
        store.push_inbox_as(failed, now, b"{}").unwrap();
        let hold = Hold::new(&store, &failed.to_string());
        assert_eq!(store.inbox_depth(), 0);
        hold.keep_item();
        // Waiting again at once (later events queue behind it), not when the hold goes.
        assert_eq!(store.inbox_depth(), 1);
        assert_eq!(store.inbox(10).unwrap()[0].0, failed.to_string());
        drop(hold);
        assert_eq!(store.inbox_depth(), 1, "kept for the processor");
    }
}

//! Which fresh replies may have work left, and the durable mark below which none has.
//!
//! A reply reacted to in its request writes no inbox item: its record, written first with
//! what its reaction decided (outcome and rule), carries the whole event, and the reaction's
//! other writes follow it in sled's log. It is *unfinished* from the moment its id is minted until its reaction is
//! written and every entry the reaction handed to the dispatcher is done with (sent, failed
//! or back in the stored queue). The mark — the lowest unfinished id, or the next id when
//! none is — is written before each flush: every reply below it is done with, and since sled
//! recovers a prefix of its log, a mark that survives a crash comes with everything those
//! replies wrote. So recovery only looks at the replies from the mark on
//! (`Store::open`: their hand-offs go to the stored queue, and each is replayed, completing
//! what its record says was decided).
//!
//! Ids are minted here, under the same lock that notes them unfinished and that computes the
//! mark, and always above the last one: an id minted after a mark was computed can never be
//! below it.

use std::collections::BTreeSet;

#[derive(Debug, Default)]
pub(super) struct ReplyMarks {
    unfinished: BTreeSet<u128>,
    /// The highest id minted or recovered.
    last: u128,
    /// The mark last written to the store.
    written: u128,
}

impl ReplyMarks {
    /// Starts from the mark found in the store and the highest reply id recovered above it.
    pub fn recovered(written: u128, highest: u128) -> ReplyMarks {
        ReplyMarks {
            unfinished: BTreeSet::new(),
            last: highest.max(written.saturating_sub(1)),
            written,
        }
    }

    /// A new reply id (uuid v7, above every earlier one), noted unfinished.
    ///
    /// Made from the clock's milliseconds with its random bits zero: ids are unique here by
    /// rising above the last one, so they need no randomness, and `Uuid::now_v7` asked the
    /// kernel for random bytes (a `getrandom` call) on every reply.
    pub fn mint(&mut self) -> uuid::Uuid {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let from_clock = uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10])
            .into_uuid()
            .as_u128();
        let id = from_clock.max(self.last.saturating_add(1));
        self.last = id;
        self.unfinished.insert(id);
        uuid::Uuid::from_u128(id)
    }

    /// Reply `id` is done with.
    pub fn finish(&mut self, id: u128) {
        self.unfinished.remove(&id);
    }

    pub fn unfinished(&self) -> usize {
        self.unfinished.len()
    }

    /// The mark to write, if it moved since the last one written.
    pub fn to_write(&self) -> Option<u128> {
        let mark = self
            .unfinished
            .first()
            .copied()
            .unwrap_or(self.last.saturating_add(1));
        (mark != self.written).then_some(mark)
    }

    pub fn written(&mut self, mark: u128) {
        self.written = mark;
    }
}

/// The key of reply `id` in the `replies` tree (its text form: uuid v7 text sorts as its
/// number does).
pub(super) fn reply_key(id: u128) -> String {
    uuid::Uuid::from_u128(id).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_the_oldest_unfinished_reply_or_the_next_id() {
        let mut m = ReplyMarks::recovered(0, 0);
        let a = m.mint().as_u128();
        let b = m.mint().as_u128();
        assert!(b > a, "ids rise");
        let v7 = uuid::Uuid::from_u128(b);
        assert_eq!(v7.get_version_num(), 7, "{v7}");
        let ms = v7.get_timestamp().map(|t| t.to_unix().0).unwrap_or(0);
        assert!(
            ms.abs_diff(chrono::Utc::now().timestamp() as u64) < 5,
            "from the clock: {v7}"
        );
        assert_eq!(m.to_write(), Some(a));
        m.written(a);
        assert_eq!(m.to_write(), None, "unchanged: nothing to write");
        m.finish(b);
        assert_eq!(m.to_write(), None, "a is still unfinished");
        m.finish(a);
        assert_eq!(m.to_write(), Some(b + 1), "all done: the next id");
        let c = m.mint().as_u128();
        assert!(c > b);
        assert_eq!(m.unfinished(), 1);
    }

    #[test]
    fn recovered_marks_never_move_back_and_mint_above_what_was_seen() {
        let future = uuid::Uuid::now_v7().as_u128() + (1u128 << 100);
        let m = ReplyMarks::recovered(future, 0);
        assert_eq!(m.to_write(), None, "the stored mark stands");
        let mut m = ReplyMarks::recovered(5, future);
        assert_eq!(m.to_write(), Some(future + 1));
        assert!(
            m.mint().as_u128() > future,
            "above a recovered id, clock or not"
        );
    }

    proptest::proptest! {
        /// Whatever the interleaving of replies begun, finished, marks written and restarts
        /// (the recovered state built from the last mark written and the highest id stored),
        /// no mark written ever passes a reply not yet finished, marks never move back, and
        /// ids only rise.
        #[test]
        fn no_mark_passes_an_unfinished_reply(ops in proptest::collection::vec(0u8..4, 1..200)) {
            let mut m = ReplyMarks::recovered(0, 0);
            let mut open: Vec<u128> = Vec::new();
            let (mut written, mut highest) = (0u128, 0u128);
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    0 => {
                        let id = m.mint().as_u128();
                        proptest::prop_assert!(id > highest && id >= written);
                        highest = id;
                        open.push(id);
                    }
                    1 if !open.is_empty() => {
                        let id = open.remove(step % open.len());
                        m.finish(id);
                    }
                    2 => {
                        if let Some(mark) = m.to_write() {
                            proptest::prop_assert!(mark >= written, "moved back");
                            m.written(mark);
                            written = mark;
                        }
                        proptest::prop_assert!(open.iter().all(|&id| id >= written));
                    }
                    _ => {
                        // A restart: unfinished replies are recovered (replayed), not open.
                        m = ReplyMarks::recovered(written, highest);
                        open.clear();
                    }
                }
            }
        }
    }

    #[test]
    fn reply_keys_sort_as_their_ids() {
        let ids = [1u128, 0xff, 1 << 64, (1 << 64) + 1, u128::MAX - 1];
        let keys: Vec<String> = ids.iter().map(|&i| reply_key(i)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}

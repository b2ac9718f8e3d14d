//! sled trees that count their operations, per tree and kind, for `/metrics` and the
//! benchmark: how many reads, writes, removes and scans an event costs is a figure that does
//! not drift with the machine's speed, unlike its CPU time.
//!
//! Counting must cost next to nothing beside a sled operation (a few µs): each thread adds to
//! its own stripe of counters (relaxed, on its own cache lines), and a reader sums the stripes.

use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// What an operation did to a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `get`, `contains_key`, `len`.
    Read,
    /// `insert`, `compare_and_swap`.
    Write,
    Remove,
    /// An iterator started (`iter`, `range`, `scan_prefix`); the items it yields are not
    /// counted.
    Scan,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [OpKind::Read, OpKind::Write, OpKind::Remove, OpKind::Scan];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Remove => "remove",
            OpKind::Scan => "scan",
        }
    }
}

/// The trees of the store, in the order their counters are kept; `msgids` and `mobiles` are
/// not sled trees but the indexes of `idindex`, counted alike.
pub const TREES: [&str; 20] = [
    "meta",
    "appointments",
    "appt_start",
    "appt_pending",
    "outbox",
    "msgid",
    "conversations",
    "fired",
    "optout",
    "inbox",
    "orphans",
    "replies",
    "reply_seen",
    "dead",
    "due",
    "due_keys",
    "msgid_journal",
    "mobile_journal",
    "msgids",
    "mobiles",
];

/// The indexes of `msgids` and `mobiles` in [`TREES`].
pub const MSGIDS: usize = TREES.len() - 2;
pub const MOBILES: usize = TREES.len() - 1;

const KINDS: usize = OpKind::ALL.len();
const SLOTS: usize = TREES.len() * KINDS;
const STRIPES: usize = 8;

/// One thread's counters, alone on their cache lines.
#[repr(align(128))]
struct Stripe([AtomicU64; SLOTS]);

/// The operation counts of one store.
pub struct OpCounts {
    stripes: Box<[Stripe]>,
}

impl Default for OpCounts {
    fn default() -> Self {
        OpCounts {
            stripes: (0..STRIPES)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The stripe this thread adds to: threads are dealt stripes in turn, so the runtime's
    /// few workers each have their own.
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl OpCounts {
    pub fn bump(&self, tree: usize, kind: OpKind) {
        let stripe = STRIPE.with(|s| *s);
        self.stripes[stripe].0[tree * KINDS + kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Operations so far on `tree` (an index into [`TREES`]) of `kind`.
    pub fn get(&self, tree: usize, kind: OpKind) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[tree * KINDS + kind as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// Every non-zero count: `(tree, kind, count)`.
    pub fn all(&self) -> Vec<(&'static str, OpKind, u64)> {
        let mut out = Vec::new();
        for (t, name) in TREES.iter().enumerate() {
            for kind in OpKind::ALL {
                let n = self.get(t, kind);
                if n > 0 {
                    out.push((*name, kind, n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the next insert on this thread fails (a disk error for a moment).
    pub static FAIL_NEXT_INSERT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A sled tree whose operations are counted. Only the operations the store uses are here.
#[derive(Clone)]
pub struct Tree {
    tree: sled::Tree,
    index: usize,
    counts: Arc<OpCounts>,
}

impl Tree {
    /// Opens tree `name`, which must be one of [`TREES`].
    pub fn open(db: &sled::Db, name: &'static str, counts: &Arc<OpCounts>) -> sled::Result<Tree> {
        let index = TREES
            .iter()
            .position(|t| *t == name)
            .unwrap_or_else(|| panic!("tree `{name}` is not in store::counted::TREES"));
        Ok(Tree {
            tree: db.open_tree(name)?,
            index,
            counts: counts.clone(),
        })
    }

    fn count(&self, kind: OpKind) {
        self.counts.bump(self.index, kind);
    }

    /// The tree's name, one of [`TREES`].
    pub fn name(&self) -> &'static str {
        TREES[self.index]
    }

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<sled::IVec>> {
        self.count(OpKind::Read);
        self.tree.get(key)
    }

    pub fn contains_key<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<bool> {
        self.count(OpKind::Read);
        self.tree.contains_key(key)
    }

    /// Counts every key: O(n), for start-up and reports only.
    pub fn len(&self) -> usize {
        self.count(OpKind::Read);
        self.tree.len()
    }

    pub fn insert<K: AsRef<[u8]>, V: Into<sled::IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<sled::IVec>> {
        self.count(OpKind::Write);
        #[cfg(test)]
        if FAIL_NEXT_INSERT.with(|f| f.replace(false)) {
            return Err(sled::Error::Io(std::io::Error::other("injected")));
        }
        self.tree.insert(key, value)
    }

    pub fn compare_and_swap<K, OV, NV>(
        &self,
        key: K,
        old: Option<OV>,
        new: Option<NV>,
    ) -> sled::Result<Result<(), sled::CompareAndSwapError>>
    where
        K: AsRef<[u8]>,
        OV: AsRef<[u8]>,
        NV: Into<sled::IVec>,
    {
        self.count(OpKind::Write);
        self.tree.compare_and_swap(key, old, new)
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<sled::IVec>> {
        self.count(OpKind::Remove);
        self.tree.remove(key)
    }

    pub fn iter(&self) -> sled::Iter {
        self.count(OpKind::Scan);
        self.tree.iter()
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> sled::Iter {
        self.count(OpKind::Scan);
        self.tree.range(range)
    }

    pub fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> sled::Iter {
        self.count(OpKind::Scan);
        self.tree.scan_prefix(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_counted_per_tree_and_kind_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let counts = Arc::new(OpCounts::default());
        let inbox = Tree::open(&db, "inbox", &counts).unwrap();
        let replies = Tree::open(&db, "replies", &counts).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let inbox = inbox.clone();
                s.spawn(move || {
                    for i in 0..100u8 {
                        inbox.insert([t, i], &[1]).unwrap();
                        inbox.get([t, i]).unwrap();
                    }
                });
            }
        });
        replies.remove(b"x").unwrap();
        assert_eq!(replies.iter().count(), 0);
        let inbox_i = TREES.iter().position(|t| *t == "inbox").unwrap();
        assert_eq!(counts.get(inbox_i, OpKind::Write), 400);
        assert_eq!(counts.get(inbox_i, OpKind::Read), 400);
        assert_eq!(
            counts.all(),
            [
                ("inbox", OpKind::Read, 400),
                ("inbox", OpKind::Write, 400),
                ("replies", OpKind::Remove, 1),
                ("replies", OpKind::Scan, 1),
            ]
        );
    }
}

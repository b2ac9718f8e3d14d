//! The store: the only module that knows sled and its key layout.
//!
//! Trees and keys (big-endian timestamps first where order matters, so range scans run in
//! time order):
//! - `meta`: `format_version`, `cron/<rule>` → last slot handled (RFC 3339), `reply_mark` →
//!   the id (16 bytes, big-endian) below which every reply is done with (`reply_mark`)
//! - `appointments`: id → [`Appointment`]; `appt_start`: start_ms ++ id → ();
//!   `appt_pending`: id → change (`created`, …) whose reactions are not yet all written
//! - `outbox`: `e` ++ key → [`OutboxEntry`]; `q` ++ not_before_ms ++ key → () for pending
//!   entries (queued, or `sending`: in flight, so start-up finds them without reading the
//!   whole outbox) but those `handed_off`, which their reply stands for instead: at open the
//!   entries of every reply from the reply mark on, and of every inbox item (keyed under
//!   [`reply_occasion`], so one prefix scan each), are put in the queue;
//!   messages by patient in the `mobiles` index (`idindex`: a hash of the mobile, then a
//!   hash of the key → key; older formats' `m` ++ mobile ++ 0 ++ key → () still read)
//! - provider messageId → outbox key: for UUIDs (what the provider gives) in files of their
//!   own beside sled's (`msgids`, see `idindex`: a journal and sorted segments, no random
//!   B-tree insert per send); in the `msgid` tree for other ids, and for links made by older formats (a UUID
//!   as 0 ++ its 16 bytes, see `msgid_key`, or as its text)
//! - `conversations`: custom_field → [`Conversation`]
//! - `fired`: occasion → [`Fired`] (what already fired: idempotency)
//! - `optout`: mobile → [`OptOut`]
//! - `inbox`: uuid v7 → webhook event not yet processed
//! - `orphans`: messageId ++ 0 ++ uuid → delivery event for a message not yet known
//! - `replies`: uuid v7 (text) → [`Reply`] (also the durable trace of the dedupe sightings,
//!   which live in memory; stores written before kept them in a `reply_seen` tree, now
//!   unused). A reply's record is written once, first, with what its reaction decided
//!   (outcome and rule); one reacted to in its request stands for its webhook body.
//! - `dead`: uuid v7 → [`DeadLetter`]
//! - `due`: due_ms ++ key → [`DueEntry`]; `due_keys`: key → due_ms (and in memory, how many
//!   keys each `kind|subject|` group holds: most prefix look-ups need no scan)
//!
//! Anything acknowledged to someone is made durable first with [`Store::durable`]: one
//! flusher task serves every waiting writer (group commit), so there is never more than one
//! `flush_async` in flight (sled 0.34 deadlocks on concurrent ones).
//!
//! No sled transactions or batches: in sled 0.34 each one takes a global write lock and writes
//! (and `sync_file_range`s) the log buffer twice, i.e. two device writes per record — that was
//! most of the engine's cost. A record spread over several keys is instead written under a
//! striped in-process lock (this process is the store's only user), in an order whose every
//! prefix is harmless: sled recovers a prefix of its log, so a crash can only leave index keys
//! that point at nothing or at a record that moved on, and the readers check and drop those.
//! The two indexes of `idindex` (message ids, messages by mobile) are the exception: their
//! links reach sled after the write they index (in a journal record at the next flush, or
//! within `JOURNAL_DELAY`), so a crash can keep an entry without its link: pending entries
//! and a crashed reply's entries are linked again at open, and after an unclean stop (no
//! `meta/clean_close` = 1) the engine checks every entry's links in the background
//! ([`Store::repair_links`]).

mod codec;
mod counted;
mod due_groups;
mod idindex;
mod reply_mark;

use codec::Compact;
pub use counted::OpKind;
use counted::{OpCounts, Tree};
use reply_mark::{reply_key, ReplyMarks};

use crate::appointment::Appointment;
use crate::conversation::{Conversation, DeadLetter, OptOut, Reply};
use crate::message::{MessageStatus, OutboxEntry};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// 2: handed-off entries (no queue key; see `engine::handoff`) and reply occasion keys that
/// start with the reply id. A version-1 store opens and becomes version 2 (it has neither);
/// a version-2 store refuses a version-1 recuerda, which would never queue its hand-offs.
/// 3: outbox entries, replies and conversations written in a compact binary form (`codec`);
/// the JSON ones of older stores are still read, and rewritten compact when they change. An
/// older recuerda refuses a version-3 store, whose records it could not read.
/// 4: a reply reacted to in its request writes no inbox item; its record, written first as
/// `received`, stands for it, and the `reply_mark` bounds the replies to look at after a
/// crash (`reply_mark`). An older recuerda would take a `received` record for a finished
/// reaction, and refuses a version-4 store.
/// 5: a reply's record is written once, first, with what its reaction decided (its outcome
/// and rule), and every reply from the mark on is replayed at open, completing that decision
/// (see `engine::react`). A version-4 recuerda would take such a record for a finished
/// reaction, and refuses a version-5 store; a version-4 store opens as it is (its mark kept,
/// its `received` records decided when replayed).
/// 6: message ids (UUIDs) and the messages of each mobile are indexed in `idindex` (the
/// `msgids` and `mobiles` indexes), not the `msgid` tree and the outbox's `m` keys (which
/// older links are still read from). A version-5 recuerda would not find those links, and
/// refuses a version-6 store; a version-5 store opens as it is.
pub const FORMAT_VERSION: u32 = 6;
/// Older formats this recuerda opens, and upgrades on opening.
const UPGRADES_FROM: &[u32] = &[1, 2, 3, 4, 5];

/// `meta` key of the reply mark (see `reply_mark`).
const REPLY_MARK: &str = "reply_mark";
/// `meta` key of the lowest reply id whose record is its reaction's first write (format 5):
/// the records below it were written by an older format, last, once their reaction was done
/// (or as `received` before it). Written when an older store is upgraded; absent means 0.
const REPLIES_DECIDED_FROM: &str = "replies_decided_from";
/// `1` once the store was closed cleanly (every index link written), `0` while it is open.
const CLEAN_CLOSE: &str = "clean_close";

/// How long opening waits for a store's lock to be released before reporting it in use.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at `{path}`: {source}; check that the folder exists, is writable and no other recuerda uses it")]
    Open { path: String, source: sled::Error },
    #[error("the store at `{path}` has format version {found}, this recuerda reads version {expected}: restore a matching backup or upgrade recuerda")]
    Version {
        path: String,
        found: String,
        expected: u32,
    },
    #[error("store write failed: {0}; check the data folder's disk space and permissions")]
    Io(String),
    #[error("stored record `{key}` in `{tree}` is corrupt: {message}")]
    Corrupt {
        tree: &'static str,
        key: String,
        message: String,
    },
    #[error("the store is shutting down")]
    Closed,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The record that an occasion fired, and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub at: DateTime<Utc>,
    /// `queued`, `skipped: …`, `missed: …`, `late-skipped`, …
    pub outcome: String,
}

/// A webhook body waiting to be processed: `(id, received_at, body)`.
pub type InboxItem = (String, DateTime<Utc>, Vec<u8>);

/// A time-driven job: an offset reminder or a no-reply timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DueEntry {
    pub key: String,
    pub due_at: DateTime<Utc>,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_start: Option<DateTime<Utc>>,
    /// Extra context (e.g. the message that got no reply).
    #[serde(default)]
    pub context: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_field: Option<String>,
}

/// The replies seen within the dedupe window, by fingerprint (see
/// [`Store::record_reply_sighting`]). Compact (~60 bytes a sighting): a window of 60 s at a
/// sustained 10,000 replies/s holds 600,000 of them.
#[derive(Default)]
struct Sightings {
    /// Rebuilt from the reply records yet?
    loaded: bool,
    /// Fingerprint → (last seen, in ms; the reply it names: the first of its kind in the
    /// window).
    seen: std::collections::HashMap<u64, (i64, ReplyName)>,
    /// Fingerprints in the order they were last seen, for forgetting what left the window.
    order: std::collections::VecDeque<(i64, u64)>,
}

/// A reply's id, held compactly: the engine's are uuids.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplyName {
    Uuid(u128),
    Other(Box<str>),
}

impl ReplyName {
    fn of(id: &str) -> ReplyName {
        match uuid::Uuid::parse_str(id) {
            Ok(u) if u.to_string() == id => ReplyName::Uuid(u.as_u128()),
            _ => ReplyName::Other(id.into()),
        }
    }

    fn text(&self) -> String {
        match self {
            ReplyName::Uuid(u) => uuid::Uuid::from_u128(*u).to_string(),
            ReplyName::Other(s) => s.to_string(),
        }
    }
}

/// A fingerprint as a number: [`Reply::fingerprint`]'s 16 hex digits, or a hash of anything
/// else.
fn fingerprint_key(fingerprint: &str) -> u64 {
    match u64::from_str_radix(fingerprint, 16) {
        Ok(n) if fingerprint.len() == 16 => n,
        _ => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            fingerprint.hash(&mut h);
            h.finish()
        }
    }
}

impl Sightings {
    fn record(
        &mut self,
        fingerprint: &str,
        at: DateTime<Utc>,
        id: &str,
        window: chrono::Duration,
    ) -> Option<String> {
        let (fp, at_ms, window_ms) = (
            fingerprint_key(fingerprint),
            at.timestamp_millis(),
            window.num_milliseconds(),
        );
        // Forget what left the window (a later sighting of the same fingerprint moved it on).
        while let Some(&(t, old)) = self.order.front() {
            if at_ms - t <= window_ms {
                break;
            }
            if self.seen.get(&old).is_some_and(|(last, _)| *last == t) {
                self.seen.remove(&old);
            }
            self.order.pop_front();
        }
        let me = ReplyName::of(id);
        let duplicate_of = match self.seen.get(&fp) {
            Some((seen_at, seen_by))
                if *seen_by != me && at_ms >= *seen_at && at_ms - *seen_at <= window_ms =>
            {
                Some(seen_by.clone())
            }
            _ => None,
        };
        let answer = duplicate_of.as_ref().map(ReplyName::text);
        self.seen.insert(fp, (at_ms, duplicate_of.unwrap_or(me)));
        self.order.push_back((at_ms, fp));
        answer
    }

    /// Replays the reply records of the last `window` (by their time-ordered ids, with a
    /// minute's margin: ids come from the system clock, times from the engine's).
    fn load(&mut self, replies: &Tree, window: chrono::Duration) -> Result<()> {
        let since = Utc::now() - window - chrono::Duration::minutes(1);
        let ms = since.timestamp_millis().max(0) as u64;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[6] = 0x70;
        bytes[8] = 0x80;
        let from = uuid::Uuid::from_bytes(bytes).to_string();
        let mut found: Vec<Reply> = Vec::new();
        for item in replies.range(from.as_bytes()..) {
            let (k, v) = item?;
            found.push(decode_compact("replies", &k, &v)?);
        }
        found.sort_by_key(|r| r.received_at);
        for r in &found {
            self.record(&r.fingerprint(), r.received_at, &r.id, window);
        }
        self.loaded = true;
        Ok(())
    }
}

/// A conversation as read (or its absence), with the bytes it was read from.
#[derive(Debug, Clone)]
pub struct KnownConversation {
    pub custom_field: String,
    pub conversation: Option<Conversation>,
    raw: Option<sled::IVec>,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// An outbox entry with the stored bytes it was read from. [`Store::update_known`] takes it
/// and, when the record still holds those bytes, skips decoding them again: the dispatcher
/// updates each entry twice (`sending`, then its outcome) right after reading it.
///
/// Or an entry not written yet ([`KnownEntry::unwritten`]): a reaction's due send handed to
/// the dispatcher, which writes it for the first time already `sending`
/// ([`Store::enqueue_known`]), one write fewer than queued-then-`sending`.
#[derive(Debug, Clone)]
pub struct KnownEntry {
    pub entry: OutboxEntry,
    /// `None`: not written yet.
    raw: Option<sled::IVec>,
}

impl KnownEntry {
    pub fn unwritten(entry: OutboxEntry) -> KnownEntry {
        KnownEntry { entry, raw: None }
    }

    pub fn is_written(&self) -> bool {
        self.raw.is_some()
    }
}

struct Inner {
    db: sled::Db,
    meta: Tree,
    appointments: Tree,
    appt_start: Tree,
    appt_pending: Tree,
    outbox: Tree,
    msgid: Tree,
    /// UUID message ids' links, and the messages of each mobile (see `idindex`).
    msgids: idindex::IdIndex,
    mobiles: idindex::IdIndex,
    /// The outbox holds `m` keys (written by older formats): listings by mobile read them too.
    mobile_keys_used: bool,
    /// Opened after a crash, with links not yet looked for: until they are, a clean close
    /// does not say so (the next open looks again).
    links_unsure: AtomicBool,
    /// The `msgid` tree holds links (older formats', or ids that are not UUIDs): look-ups
    /// missing `msgids` read it too.
    msgid_tree_used: AtomicBool,
    conversations: Tree,
    fired: Tree,
    optout: Tree,
    inbox: Tree,
    orphans: Tree,
    replies: Tree,
    dead: Tree,
    due: Tree,
    due_keys: Tree,
    flush_tx: mpsc::UnboundedSender<oneshot::Sender<std::result::Result<(), String>>>,
    /// Set when a flush failed: health reports it until a later flush succeeds.
    write_failing: AtomicBool,
    /// Flushes made, and the `durable` calls they served (group commit at work).
    flushes: std::sync::atomic::AtomicU64,
    flush_waiters: std::sync::atomic::AtomicU64,
    /// Entries queued in the outbox (kept in step with the `q` keys, so health and metrics
    /// need not count them).
    queued: std::sync::atomic::AtomicI64,
    /// Webhook bodies waiting in the inbox (kept in step with the tree, so asking whether the
    /// inbox is empty costs no read on every webhook).
    inbox_len: std::sync::atomic::AtomicI64,
    /// Delivery events parked for messages not yet known: when none is, a send's outcome
    /// need not scan for them.
    orphans_len: std::sync::atomic::AtomicI64,
    /// The groups of plan keys that exist (see `due_groups`).
    due_groups: Mutex<due_groups::DueGroups>,
    /// Fresh replies not yet done with, and the reply mark (see `reply_mark`).
    marks: Mutex<ReplyMarks>,
    /// See [`REPLIES_DECIDED_FROM`].
    replies_decided_from: u128,
    /// Serializes read-modify-writes of one record (hashed by key); see the module doc.
    stripes: Box<[Mutex<()>]>,
    /// What each rule did last, not yet written: a fan-out of 100,000 occasions writes each
    /// rule's last deed once per flush instead of 100,000 times.
    /// (Encoded when written: a fan-out notes 100,000 deeds between two flushes.)
    last_deeds: Mutex<std::collections::HashMap<String, (String, Fired)>>,
    /// Replies seen within the dedupe window (in memory, rebuilt from the reply records).
    sightings: Mutex<Sightings>,
    /// Operations per tree and kind (`/metrics`, the benchmark's "store operations per event").
    ops: Arc<OpCounts>,
}

const STRIPES: usize = 64;

impl Inner {
    fn due_groups(&self) -> MutexGuard<'_, due_groups::DueGroups> {
        self.due_groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether reply `id`'s record was written by an older format (see
    /// [`REPLIES_DECIDED_FROM`]).
    fn older_reply(&self, id: u128) -> bool {
        id < self.replies_decided_from
    }

    fn marks(&self) -> MutexGuard<'_, ReplyMarks> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the reply mark if it moved (before a flush: see `reply_mark`).
    fn write_reply_mark(&self) -> std::result::Result<(), String> {
        let mut marks = self.marks();
        if let Some(mark) = marks.to_write() {
            self.meta
                .insert(REPLY_MARK, &mark.to_be_bytes())
                .map_err(|e| e.to_string())?;
            marks.written(mark);
        }
        Ok(())
    }

    fn last_deeds_lock(
        &self,
    ) -> MutexGuard<'_, std::collections::HashMap<String, (String, Fired)>> {
        self.last_deeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the rules' last deeds noted since the previous flush (before a flush).
    fn write_last_deeds(&self) -> std::result::Result<(), String> {
        let deeds = std::mem::take(&mut *self.last_deeds_lock());
        for (rule, (occasion, fired)) in deeds {
            self.meta
                .insert(format!("last/{rule}"), last_deed(&occasion, &fired))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let stripe = &self.stripes[(h.finish() as usize) % self.stripes.len()];
        // A panic while holding a stripe leaves no half-done sled state the next holder could
        // not cope with (see the module doc), so a poisoned stripe is simply taken.
        stripe.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ms_key(t: DateTime<Utc>) -> [u8; 8] {
    // Offset so that times before 1970 still sort correctly as unsigned.
    ((t.timestamp_millis() as i128 - i64::MIN as i128) as u64).to_be_bytes()
}

fn ms_from_key(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let ms = (u64::from_be_bytes(arr) as i128 + i64::MIN as i128) as i64;
    DateTime::from_timestamp_millis(ms)
}

/// What an outbox entry's index keys (queue, mobile) and the queue counter depend on: kept
/// from before a change instead of a copy of the whole entry.
struct Indexed {
    status: MessageStatus,
    not_before: DateTime<Utc>,
    mobile: Option<String>,
    handed_off: bool,
}

impl Indexed {
    fn of(e: &OutboxEntry) -> Indexed {
        Indexed {
            status: e.status,
            not_before: e.not_before,
            mobile: e.mobile.clone(),
            handed_off: e.handed_off,
        }
    }

    fn queue_key(&self, key: &str) -> Option<Vec<u8>> {
        pending_queue_key(self.status, self.not_before, self.handed_off, key)
    }
}

/// An entry's `q` key: pending entries (queued or in flight) are in the queue index, but for
/// those handed off (their webhook's inbox item stands for it).
fn pending_queue_key(
    status: MessageStatus,
    not_before: DateTime<Utc>,
    handed_off: bool,
    key: &str,
) -> Option<Vec<u8>> {
    (status.is_pending() && !handed_off).then(|| queue_key(not_before, key))
}

/// A handed-off entry stays so only while queued in place and through the dispatcher's
/// `sending` mark: any other pending change (a requeue, a retry's wait, a recovery) puts it in
/// the stored queue, and a final one (its outcome) clears the flag with nothing to queue.
fn settle_handed_off(old: &Indexed, new: &mut OutboxEntry) {
    if new.handed_off {
        new.handed_off = old.handed_off
            && match new.status {
                MessageStatus::Queued => {
                    old.status == MessageStatus::Queued && old.not_before == new.not_before
                }
                MessageStatus::Sending => old.status.is_pending(),
                _ => false,
            };
    }
}

/// The sled index key changing entry `key` from `old` to `new` adds (written before the
/// entry). Marking an entry `sending` keeps its queue key: none on the way out.
fn index_keys_added(key: &str, old: &Indexed, new: &OutboxEntry) -> Option<Vec<u8>> {
    let new_q = pending_queue_key(new.status, new.not_before, new.handed_off, key);
    new_q.filter(|q| old.queue_key(key).as_ref() != Some(q))
}

fn queue_key(not_before: DateTime<Utc>, key: &str) -> Vec<u8> {
    cat(&[b"q", &ms_key(not_before), key.as_bytes()])
}

/// A reply id kept in `meta` under `key` (16 bytes, big-endian); 0 when absent. A damaged one
/// is said: no reading of it is safe.
fn meta_id(meta: &Tree, key: &'static str) -> Result<u128> {
    match meta.get(key)? {
        Some(v) => <[u8; 16]>::try_from(v.as_ref())
            .map(u128::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                tree: "meta",
                key: key.into(),
                message: format!("{} bytes, not 16", v.len()),
            }),
        None => Ok(0),
    }
}

/// Every sled index key entry `e` has: its queue key if it is pending in the stored queue
/// (its mobile is linked in the `mobiles` index: see [`Store::link_mobile`]).
fn index_keys(e: &OutboxEntry) -> Option<Vec<u8>> {
    pending_queue_key(e.status, e.not_before, e.handed_off, &e.key)
}

/// The mobile a change of an entry from `old` to `new` must link (a new one).
fn mobile_added<'a>(old: &Indexed, new: &'a OutboxEntry) -> Option<&'a str> {
    new.mobile.as_deref().filter(|_| old.mobile != new.mobile)
}

/// FNV-1a, 64 bits: a hash that never changes with the Rust version (ids on disk).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `mobiles` id of entry `key` for `mobile`: the mobile's hash, then the key's, so one
/// mobile's entries are one range (see [`mobile_range`]). A collision lists an entry of
/// another mobile, which the readers check.
fn mobile_link(mobile: &str, key: &str) -> u128 {
    mobile_range(mobile).0 | u128::from(fnv64(key.as_bytes()))
}

fn mobile_range(mobile: &str) -> (u128, u128) {
    let high = u128::from(fnv64(mobile.as_bytes())) << 64;
    (high, high | u128::from(u64::MAX))
}

/// A UUID message id as format 5 linked it in the `msgid` tree: a zero byte and its 16
/// bytes (other ids, and older formats' UUIDs, under their text).
fn msgid_key(id: uuid::Uuid) -> Vec<u8> {
    cat(&[&[0], id.as_bytes()])
}

fn mobile_key(mobile: &str, key: &str) -> Vec<u8> {
    cat(&[b"m", mobile.as_bytes(), &[0], key.as_bytes()])
}

/// A rule's last deed as stored under `last/{rule}` and shown by the API.
fn last_deed(occasion: &str, fired: &Fired) -> Vec<u8> {
    to_vec(&serde_json::json!({"occasion": occasion, "at": fired.at, "outcome": fired.outcome}))
}

/// The occasion key of reply `reply_id` matching `rule`: the reply's id first, so the
/// entries of one reply's reaction share a prefix (see [`Store::settle_hand_offs_of`]).
pub fn reply_occasion(reply_id: &str, rule: &str) -> String {
    format!("reply:{reply_id}:{rule}")
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain data: serializing them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<OutboxEntry> {
    decode_compact("outbox", key, bytes)
}

/// A record with a compact stored form (see `codec`).
fn decode_compact<T: Compact>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T> {
    T::decode(key, bytes).map_err(|message| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    })
}

fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its flusher. Must be called inside a
    /// tokio runtime.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.display().to_string();
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // sled's default page cache is 1 GiB; the working set is recent appointments and
            // the outbox's head. 16 MiB (sled's accounting; about twice that in RSS) ran the
            // 100,000-reminder fan-out as fast as 32 or 64 MiB, with a peak RSS of ~120 MiB
            // instead of ~140 or ~190.
            .cache_capacity(16 * 1024 * 1024);
        // A store just closed may hold its file lock a moment longer: sled's I/O threads drop
        // their last handle after answering the final flush (and a restarted service may
        // start while the old process is still exiting). Wait briefly before saying it is
        // in use.
        let waited_since = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(source)
                    if source.to_string().contains("could not acquire lock")
                        && waited_since.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.clone(),
                        source,
                    })
                }
            }
        };
        let ops = Arc::new(OpCounts::default());
        let tree = |name: &'static str| Tree::open(&db, name, &ops).map_err(StoreError::from);
        let meta = tree("meta")?;
        // A store this format wrote before holds index links (see `idindex`), which a crash
        // can leave behind their entries; one just made or upgraded holds none.
        let mut holds_links = true;
        match meta.get("format_version")? {
            None => {
                holds_links = false;
                meta.insert(REPLY_MARK, &0u128.to_be_bytes())?;
                meta.insert("format_version", FORMAT_VERSION.to_string().as_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found = String::from_utf8_lossy(&v).into_owned();
                if found != FORMAT_VERSION.to_string() {
                    holds_links = false;
                }
                if found == "5" {
                    // Nothing to convert: its `msgid` tree is read as it is.
                    meta.insert("format_version", FORMAT_VERSION.to_string().as_bytes())?;
                    db.flush()?;
                } else if UPGRADES_FROM.iter().any(|old| found == old.to_string()) {
                    // Formats 1-3 wrote a reply's record once, finished; their replies
                    // reacted to in part are in the inbox. None to look at before now.
                    // Format 4's mark stands.
                    if found != "4" {
                        let now = uuid::Uuid::now_v7().as_u128();
                        meta.insert(REPLY_MARK, &now.to_be_bytes())?;
                    }
                    // Replies from here on are written the new way; those before keep the
                    // meaning their format gave their records.
                    let next = match db.open_tree("replies")?.last()? {
                        Some((k, _)) => std::str::from_utf8(&k)
                            .ok()
                            .and_then(|t| uuid::Uuid::parse_str(t).ok())
                            .map_or(0, |id| id.as_u128().saturating_add(1)),
                        None => 0,
                    };
                    meta.insert(REPLIES_DECIDED_FROM, &next.to_be_bytes())?;
                    meta.insert("format_version", FORMAT_VERSION.to_string().as_bytes())?;
                    db.flush()?;
                } else if found != FORMAT_VERSION.to_string() {
                    return Err(StoreError::Version {
                        path,
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
        }
        // Damaged, no reading of it is safe (too high, replies cut short would not be
        // replayed; too low, finished ones would run again): said, as a damaged mark is.
        let replies_decided_from = meta_id(&meta, REPLIES_DECIDED_FROM)?;
        // Not closed cleanly last time (a crash, a kill): links may be missing, and are
        // looked for (`repair_links`). Marked open, on disk, before anything is written, so
        // a crash from now on is seen at the next open.
        let after_crash = holds_links && meta.get(CLEAN_CLOSE)?.as_deref() != Some(b"1".as_slice());
        meta.insert(CLEAN_CLOSE, b"0".as_slice())?;
        db.flush()?;
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let msgid = tree("msgid")?;
        let msgid_tree_used = AtomicBool::new(msgid.iter().next().is_some());
        let links_waiting = Arc::new(tokio::sync::Notify::new());
        let outbox = tree("outbox")?;
        let mobile_keys_used = outbox.scan_prefix(b"m").next().is_some();
        let msgids =
            idindex::IdIndex::open(dir, "msgids", tree("msgid_journal")?, links_waiting.clone())?;
        let mobiles = idindex::IdIndex::open(
            dir,
            "mobiles",
            tree("mobile_journal")?,
            links_waiting.clone(),
        )?;
        // An index folder that lost segments is repaired as a crash's lost links are.
        let links_unsure = after_crash || msgids.lost_links() || mobiles.lost_links();
        let inner = Arc::new(Inner {
            msgids,
            mobiles,
            mobile_keys_used,
            links_unsure: AtomicBool::new(links_unsure),
            msgid_tree_used,
            appointments: tree("appointments")?,
            appt_start: tree("appt_start")?,
            appt_pending: tree("appt_pending")?,
            outbox,
            msgid,
            conversations: tree("conversations")?,
            fired: tree("fired")?,
            optout: tree("optout")?,
            inbox: tree("inbox")?,
            orphans: tree("orphans")?,
            replies: tree("replies")?,
            dead: tree("dead")?,
            due: tree("due")?,
            due_keys: tree("due_keys")?,
            meta,
            db: db.clone(),
            flush_tx,
            write_failing: AtomicBool::new(false),
            queued: std::sync::atomic::AtomicI64::new(0),
            inbox_len: std::sync::atomic::AtomicI64::new(0),
            orphans_len: std::sync::atomic::AtomicI64::new(0),
            marks: Mutex::default(),
            replies_decided_from,
            due_groups: Mutex::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            last_deeds: Mutex::default(),
            ops: ops.clone(),
            sightings: Mutex::default(),
            flushes: Default::default(),
            flush_waiters: Default::default(),
        });
        let store = Store { inner };
        // Entries handed off by reactions not done with lost their dispatcher with the last
        // run: the stored queue takes them, before it is counted and before the engine looks
        // for sends cut short.
        for item in store.inner.inbox.iter() {
            let (k, _) = item?;
            if let Ok(id) = uuid::Uuid::from_slice(&k) {
                store.settle_hand_offs_of(&id.to_string())?;
            }
        }
        store.recover_unfinished_replies()?;
        {
            let mut groups = store.inner.due_groups();
            for item in store.inner.due_keys.iter() {
                groups.add(&String::from_utf8_lossy(&item?.0));
            }
        }
        let queued = store.sweep_queue()?;
        store.inner.queued.store(queued, Ordering::Relaxed);
        let waiting = store.inner.inbox.len() as i64;
        store.inner.inbox_len.store(waiting, Ordering::Relaxed);
        let parked = store.inner.orphans.len() as i64;
        store.inner.orphans_len.store(parked, Ordering::Relaxed);
        let inner = store.inner;
        // The flusher holds the store weakly, so dropping the last `Store` closes sled (and
        // releases its lock) at once, not whenever the flusher task next runs.
        tokio::spawn(flusher(flush_rx, Arc::downgrade(&inner), links_waiting));
        Ok(Store { inner })
    }

    /// Operations on each tree since the store was opened: `(tree, kind, count)`, non-zero
    /// counts only.
    pub fn op_counts(&self) -> Vec<(&'static str, OpKind, u64)> {
        self.inner.ops.all()
    }

    /// `(flushes, durable calls served)` since the store was opened.
    pub fn flush_stats(&self) -> (u64, u64) {
        (
            self.inner.flushes.load(Ordering::Relaxed),
            self.inner.flush_waiters.load(Ordering::Relaxed),
        )
    }

    /// Resolves once everything written before the call is on disk. Many callers share one
    /// flush (group commit).
    pub async fn durable(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .flush_tx
            .send(tx)
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(e)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// True while the last flush failed (disk full, read-only folder): health shows it.
    pub fn write_failing(&self) -> bool {
        self.inner.write_failing.load(Ordering::Relaxed)
    }

    // ---- appointments --------------------------------------------------------------

    pub fn get_appointment(&self, id: &str) -> Result<Option<Appointment>> {
        match self.inner.appointments.get(id)? {
            Some(v) => Ok(Some(decode("appointments", id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Stores `appt`, keeping the start index right; returns the previous version.
    pub fn put_appointment(&self, appt: &Appointment) -> Result<Option<Appointment>> {
        Ok(self.put_appointment_marked(appt, |_| None)?.0)
    }

    /// Stores `appt` and, in the same transaction, notes the change it makes
    /// (`change(previous)`, e.g. `created`) until [`Store::clear_appointment_change`]: a crash
    /// between the write and the reactions to it leaves the note, and the reactions run when
    /// the appointment is written again or the engine starts. Returns the previous version and
    /// the change pending now (the new one, or one a crash left).
    pub fn put_appointment_marked(
        &self,
        appt: &Appointment,
        change: impl Fn(Option<&Appointment>) -> Option<String>,
    ) -> Result<(Option<Appointment>, Option<String>)> {
        let i = &self.inner;
        let id = appt.id.as_bytes();
        let _held = i.lock(id);
        let previous: Option<Appointment> = match i.appointments.get(id)? {
            Some(bytes) => Some(decode("appointments", id, &bytes)?),
            None => None,
        };
        // The note first: a crash after it re-runs the reactions (which look at what is
        // stored and are idempotent); a crash before it has not changed the appointment yet.
        let pending = match change(previous.as_ref()) {
            Some(new) => {
                i.appt_pending.insert(id, new.as_bytes())?;
                Some(new)
            }
            None => i
                .appt_pending
                .get(id)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        };
        let new_start = cat(&[&ms_key(appt.start_utc()), id]);
        i.appt_start.insert(new_start.as_slice(), &[])?;
        i.appointments.insert(id, to_vec(appt))?;
        if let Some(p) = &previous {
            let old_start = cat(&[&ms_key(p.start_utc()), id]);
            if old_start != new_start {
                i.appt_start.remove(old_start)?;
            }
        }
        Ok((previous, pending))
    }

    /// The reactions to an appointment's change are written: forget the note.
    pub fn clear_appointment_change(&self, id: &str) -> Result<()> {
        self.inner.appt_pending.remove(id)?;
        Ok(())
    }

    /// Changes whose reactions a crash may have cut short: `(appointment id, change)`.
    pub fn pending_appointment_changes(&self) -> Result<Vec<(String, String)>> {
        self.inner
            .appt_pending
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    /// Appointments whose start is in `[from, to)`, in start order.
    pub fn appointments_starting(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Appointment>> {
        self.appointments_starting_iter(from, to).collect()
    }

    /// Like [`Store::appointments_starting`], one at a time (a fan-out over 100,000
    /// appointments never holds them all).
    pub fn appointments_starting_iter(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Iterator<Item = Result<Appointment>> + '_ {
        self.inner
            .appt_start
            .range(ms_key(from).to_vec()..ms_key(to).to_vec())
            .filter_map(move |item| match item {
                // A key a crash left behind when the appointment moved points at an appointment
                // that starts elsewhere now: skip it.
                Ok((k, _)) => match self.get_appointment(&String::from_utf8_lossy(&k[8..])) {
                    Ok(Some(a)) if k[..8] == ms_key(a.start_utc()) => Some(Ok(a)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                },
                Err(e) => Some(Err(e.into())),
            })
    }

    /// How many appointments start in `[from, to)` (index keys only, nothing decoded).
    pub fn count_appointments_starting(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
        self.inner
            .appt_start
            .range(ms_key(from).to_vec()..ms_key(to).to_vec())
            .count()
    }

    pub fn count_appointments(&self) -> usize {
        self.inner.appointments.len()
    }

    // ---- outbox --------------------------------------------------------------------

    /// Queues `entry` unless its key is already in the outbox. Returns whether it was added:
    /// a second attempt at the same occasion is a no-op.
    pub fn enqueue(&self, entry: &OutboxEntry) -> Result<bool> {
        Ok(self.enqueue_checked(entry, true)?.is_some())
    }

    /// [`Store::enqueue`] for a key the caller knows is new (it names an event first seen
    /// now): the read that asks whether it exists is skipped. Returns the entry with its
    /// stored bytes, for the dispatcher to take without reading it back.
    pub fn enqueue_new(&self, entry: OutboxEntry) -> Result<KnownEntry> {
        let raw = self.enqueue_checked(&entry, false)?;
        Ok(KnownEntry { entry, raw })
    }

    /// [`Store::enqueue`] for an entry almost surely new (a reaction's hand-off, written by
    /// the dispatcher): one compare-and-swap instead of a read and a write. Returns the entry
    /// with its stored bytes; `None` if it was there (its index keys that the stored entry
    /// does not have are taken back).
    pub fn enqueue_known(&self, entry: OutboxEntry) -> Result<Option<KnownEntry>> {
        let i = &self.inner;
        let ekey = cat(&[b"e", entry.key.as_bytes()]);
        let _held = i.lock(&ekey);
        // The queue key before the entry: the entry is the commit point (see the module
        // doc; the mobile's link is in memory until the next journal record).
        let added = index_keys(&entry);
        if let Some(k) = &added {
            i.outbox.insert(k.as_slice(), &[])?;
        }
        if let Some(m) = &entry.mobile {
            self.link_mobile(m, &entry.key)?;
        }
        let raw = sled::IVec::from(entry.encode());
        match i
            .outbox
            .compare_and_swap(&ekey, None::<&[u8]>, Some(raw.clone()))?
        {
            Ok(()) => {
                if entry.status == MessageStatus::Queued {
                    i.queued.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(KnownEntry {
                    entry,
                    raw: Some(raw),
                }))
            }
            Err(cas) => {
                let theirs = match cas.current {
                    Some(bytes) => index_keys(&decode_entry(entry.key.as_bytes(), &bytes)?),
                    None => None,
                };
                // (A mobile link stays: it names this key, which readers check.)
                if let Some(k) = added.filter(|k| theirs.as_ref() != Some(k)) {
                    i.outbox.remove(k)?;
                }
                Ok(None)
            }
        }
    }

    /// Writes `entry` (unless `check` finds it there already: `None`); returns its bytes.
    fn enqueue_checked(&self, entry: &OutboxEntry, check: bool) -> Result<Option<sled::IVec>> {
        let i = &self.inner;
        let ekey = cat(&[b"e", entry.key.as_bytes()]);
        let _held = i.lock(&ekey);
        if check && i.outbox.contains_key(&ekey)? {
            // Written before (a catch-up after a crash runs the occasion again): its link
            // may not have reached the store with it.
            if let Some(m) = &entry.mobile {
                self.link_mobile(m, &entry.key)?;
            }
            return Ok(None);
        }
        // The queue key before the entry: the entry is the commit point (see the module
        // doc; the mobile's link is in memory until the next journal record).
        if let Some(k) = index_keys(entry) {
            i.outbox.insert(k, &[])?;
        }
        if let Some(m) = &entry.mobile {
            self.link_mobile(m, &entry.key)?;
        }
        let raw = sled::IVec::from(entry.encode());
        i.outbox.insert(ekey, raw.clone())?;
        if entry.status == MessageStatus::Queued {
            i.queued.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(raw))
    }

    pub fn get_entry(&self, key: &str) -> Result<Option<OutboxEntry>> {
        Ok(self.read_entry(key)?.map(|k| k.entry))
    }

    fn read_entry(&self, key: &str) -> Result<Option<KnownEntry>> {
        match self.inner.outbox.get(cat(&[b"e", key.as_bytes()]))? {
            Some(raw) => Ok(Some(KnownEntry {
                entry: decode_entry(key.as_bytes(), &raw)?,
                raw: Some(raw),
            })),
            None => Ok(None),
        }
    }

    /// Applies `change` to the entry (one writer at a time per entry) and keeps the queue
    /// and mobile indexes in step. Returns the new entry, or `None` when there is no such entry
    /// or `change` returned `false` (nothing written).
    pub fn update_entry(
        &self,
        key: &str,
        change: impl FnMut(&mut OutboxEntry) -> bool,
    ) -> Result<Option<OutboxEntry>> {
        Ok(self.update_known(key, None, change)?.map(|k| k.entry))
    }

    /// [`Store::update_entry`] from an entry read before: if the record is unchanged since,
    /// `known` is used instead of decoding it again. Returns the new entry with its bytes.
    ///
    /// `change` may run twice: on `known`, and again on the stored entry if `known` turned out
    /// to be stale. It must only set fields, never depend on running once.
    pub fn update_known(
        &self,
        key: &str,
        known: Option<&KnownEntry>,
        mut change: impl FnMut(&mut OutboxEntry) -> bool,
    ) -> Result<Option<KnownEntry>> {
        let i = &self.inner;
        let ekey = cat(&[b"e", key.as_bytes()]);
        let _held = i.lock(&ekey);
        // The dispatcher's two updates (`sending`, then the outcome) add no index key: when
        // the caller's copy is still what is stored, one compare-and-swap checks that and
        // writes (one traversal of the tree instead of a read and a write).
        let mut stored = None;
        if let Some((k, known_raw)) = known
            .filter(|k| k.entry.key == key)
            .and_then(|k| Some((k, k.raw.as_ref()?)))
        {
            let old = Indexed::of(&k.entry);
            let mut new = k.entry.clone();
            // A `false` from a copy that may be stale proves nothing: the path below asks
            // the stored entry.
            if change(&mut new) && {
                settle_handed_off(&old, &mut new);
                index_keys_added(key, &old, &new).is_none()
            } {
                if let Some(m) = mobile_added(&old, &new) {
                    self.link_mobile(m, key)?;
                }
                let raw = sled::IVec::from(new.encode());
                match i
                    .outbox
                    .compare_and_swap(&ekey, Some(known_raw), Some(raw.clone()))?
                {
                    Ok(()) => {
                        self.after_entry_write(key, &old, &new)?;
                        return Ok(Some(KnownEntry {
                            entry: new,
                            raw: Some(raw),
                        }));
                    }
                    Err(cas) => match cas.current {
                        Some(current) => stored = Some(current),
                        None => return Ok(None),
                    },
                }
            }
        }
        let bytes = match stored {
            Some(b) => b,
            None => match i.outbox.get(&ekey)? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        let mut new: OutboxEntry = match known {
            Some(k) if k.entry.key == key && k.raw.as_ref() == Some(&bytes) => k.entry.clone(),
            _ => decode_entry(key.as_bytes(), &bytes)?,
        };
        let old = Indexed::of(&new);
        if !change(&mut new) {
            return Ok(None);
        }
        settle_handed_off(&old, &mut new);
        // A new queue key, then the entry, then the old keys: every crash point leaves keys
        // that the readers check against the entry.
        if let Some(k) = index_keys_added(key, &old, &new) {
            i.outbox.insert(k, &[])?;
        }
        if let Some(m) = mobile_added(&old, &new) {
            self.link_mobile(m, key)?;
        }
        let raw = sled::IVec::from(new.encode());
        i.outbox.insert(ekey, raw.clone())?;
        self.after_entry_write(key, &old, &new)?;
        Ok(Some(KnownEntry {
            entry: new,
            raw: Some(raw),
        }))
    }

    /// What follows an entry's write from `old` to `new`: its old index keys go, and the
    /// queue counter follows.
    fn after_entry_write(&self, key: &str, old: &Indexed, new: &OutboxEntry) -> Result<()> {
        let i = &self.inner;
        // The count first: it follows the entry just written, even if a removal below fails.
        let was_queued = old.status == MessageStatus::Queued;
        let is_queued = new.status == MessageStatus::Queued;
        if was_queued != is_queued {
            let delta = if is_queued { 1 } else { -1 };
            i.queued.fetch_add(delta, Ordering::Relaxed);
        }
        if let Some(q) = old.queue_key(key) {
            if pending_queue_key(new.status, new.not_before, new.handed_off, key).as_ref()
                != Some(&q)
            {
                i.outbox.remove(q)?;
            }
        }
        // (The `mobiles` index keeps an old link, which readers check; an older format's key
        // goes.)
        if i.mobile_keys_used && old.mobile != new.mobile {
            if let Some(m) = &old.mobile {
                i.outbox.remove(mobile_key(m, key))?;
            }
        }
        Ok(())
    }

    /// Whether queue key `k` (`q` ++ time ++ key) is current: its entry exists, is pending
    /// (queued or in flight), and is due at that time. A crash between the writes of
    /// [`Store::update_entry`] can leave a key that is not.
    fn queue_key_entry(&self, k: &[u8]) -> Result<Option<KnownEntry>> {
        let key = String::from_utf8_lossy(&k[9..]).into_owned();
        Ok(self.read_entry(&key)?.filter(|known| {
            let e = &known.entry;
            e.status.is_pending() && !e.handed_off && k[1..9] == ms_key(e.not_before)
        }))
    }

    /// The pending entries at or before `until` (all with `None`), earliest first, stale keys
    /// dropped on the way; keys for which `skip` is true are passed over unread.
    fn pending_entries<'a>(
        &'a self,
        until: Option<DateTime<Utc>>,
        skip: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = Result<KnownEntry>> + 'a {
        let end = until.map_or_else(|| b"r".to_vec(), |t| cat(&[b"q", &ms_key(t), &[0xff]]));
        self.inner
            .outbox
            .range(b"q".to_vec()..end)
            .filter_map(move |item| {
                let k = match item {
                    Ok((k, _)) => k,
                    Err(e) => return Some(Err(e.into())),
                };
                if std::str::from_utf8(&k[9..]).is_ok_and(&skip) {
                    return None;
                }
                match self.queue_key_entry(&k) {
                    Ok(Some(e)) => Some(Ok(e)),
                    // Stale (see `queue_key_entry`): drop it, or `next_outbox_due` keeps
                    // naming it.
                    Ok(None) => match self.drop_if_stale(&k) {
                        Ok(true) => None,
                        Ok(false) => self.queue_key_entry(&k).transpose(),
                        Err(e) => Some(Err(e)),
                    },
                    Err(e) => Some(Err(e)),
                }
            })
    }

    /// Entries left `sending`: in flight now, or cut short by a crash when read at start-up.
    pub fn in_flight_entries(&self) -> impl Iterator<Item = Result<OutboxEntry>> + '_ {
        self.pending_entries(None, |_| false)
            .map(|k| k.map(|k| k.entry))
            .filter(|e| !matches!(e, Ok(e) if e.status != MessageStatus::Sending))
    }

    /// Removes queue key `k` if it is stale. Checked again under the entry's lock: unlocked,
    /// the key may be one an `update_entry` has written and not yet followed with its entry.
    fn drop_if_stale(&self, k: &[u8]) -> Result<bool> {
        let _held = self.inner.lock(&cat(&[b"e", &k[9..]]));
        if self.queue_key_entry(k)?.is_some() {
            return Ok(false);
        }
        self.inner.outbox.remove(k)?;
        Ok(true)
    }

    /// Drops queue keys a crash left stale and counts the queued entries (at open).
    fn sweep_queue(&self) -> Result<i64> {
        let mut queued = 0;
        for known in self.pending_entries(None, |_| false) {
            let entry = known?.entry;
            if entry.status == MessageStatus::Queued {
                queued += 1;
            }
            // A crash can keep an entry written just before it without its link (links
            // reach the store after their entry, see `idindex`): the pending ones, read here
            // anyway, are linked again (a link twice is harmless).
            if let Some(m) = &entry.mobile {
                self.link_mobile(m, &entry.key)?;
            }
        }
        Ok(queued)
    }

    /// Queued entries due at or before `now`, earliest first, at most `limit` (entries in
    /// flight are passed over).
    pub fn due_outbox(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<OutboxEntry>> {
        Ok(self
            .due_outbox_except(now, limit, |_| false)?
            .into_iter()
            .map(|k| k.entry)
            .collect())
    }

    /// Like [`Store::due_outbox`], passing over unread the keys `busy` names (the
    /// dispatcher's own entries in flight).
    pub fn due_outbox_except(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: impl Fn(&str) -> bool,
    ) -> Result<Vec<KnownEntry>> {
        self.pending_entries(Some(now), busy)
            .filter(|k| !matches!(k, Ok(k) if k.entry.status != MessageStatus::Queued))
            .take(limit)
            .collect()
    }

    /// When the next queued entry falls due, if any (entries in flight are passed over: at
    /// most the dispatcher's concurrency of them).
    pub fn next_outbox_due(&self) -> Result<Option<DateTime<Utc>>> {
        for known in self.pending_entries(None, |_| false) {
            let entry = known?.entry;
            if entry.status == MessageStatus::Queued {
                return Ok(Some(entry.not_before));
            }
        }
        Ok(None)
    }

    /// Number of entries waiting in the queue.
    pub fn outbox_depth(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed).max(0) as usize
    }

    /// Every outbox entry, in key order (for the API and recovery scans).
    pub fn outbox_entries(&self) -> impl Iterator<Item = Result<OutboxEntry>> + '_ {
        self.inner.outbox.scan_prefix(b"e").map(|item| {
            let (k, v) = item?;
            decode_entry(&k[1..], &v)
        })
    }

    /// The outbox entries (messages) for one mobile, in key order.
    pub fn entries_for_mobile(
        &self,
        mobile: &str,
    ) -> impl Iterator<Item = Result<OutboxEntry>> + '_ {
        let keys = self.mobile_keys(mobile);
        let (keys, error) = match keys {
            Ok(keys) => (keys, None),
            Err(e) => (Vec::new(), Some(Err(e))),
        };
        let mobile = mobile.to_string();
        error.into_iter().chain(
            keys.into_iter()
                .filter_map(move |key| self.get_entry(&key).transpose())
                // A link left by a mobile's change, or a hash shared with another mobile,
                // names an entry of another mobile: checked against the entry.
                .filter(
                    move |e| !matches!(e, Ok(e) if e.mobile.as_deref() != Some(mobile.as_str())),
                ),
        )
    }

    /// The keys linked to `mobile`, sorted, each once.
    fn mobile_keys(&self, mobile: &str) -> Result<Vec<String>> {
        self.inner.ops.bump(counted::MOBILES, OpKind::Scan);
        let (lo, hi) = mobile_range(mobile);
        let mut keys = self.inner.mobiles.range(lo, hi)?;
        if self.inner.mobile_keys_used {
            let prefix = cat(&[b"m", mobile.as_bytes(), &[0]]);
            for item in self.inner.outbox.scan_prefix(&prefix) {
                let (k, _) = item?;
                keys.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Whether the store was not closed cleanly last time and its index links are still to
    /// be looked for ([`Store::repair_links`]).
    pub fn links_unsure(&self) -> bool {
        self.inner.links_unsure.load(Ordering::Acquire)
    }

    /// After a crash: links every entry whose mobile or message id is not linked (a crash
    /// can keep an entry that sled wrote out on its own without the links made just after
    /// it, see `idindex`). Returns the message ids linked again, with their entries' keys
    /// (delivery events parked for them meanwhile are theirs), or `None` if `stop` said to
    /// stop first (the next open looks again). Reads the whole outbox: run off the request
    /// path.
    pub fn repair_links(&self, stop: impl Fn() -> bool) -> Result<Option<Vec<(String, String)>>> {
        let mut relinked = Vec::new();
        for (n, entry) in self.outbox_entries().enumerate() {
            if n % 1024 == 0 && stop() {
                return Ok(None);
            }
            let entry = entry?;
            if let Some(m) = &entry.mobile {
                let linked = self.inner.mobiles.get(mobile_link(m, &entry.key))?;
                if linked.as_deref() != Some(entry.key.as_str()) {
                    self.link_mobile(m, &entry.key)?;
                }
            }
            if let Some(id) = &entry.message_id {
                if self.message_key(id)?.is_none() {
                    self.link_message_id(id, &entry.key)?;
                    relinked.push((id.clone(), entry.key.clone()));
                }
            }
        }
        // The links made again are in their journals before an index stops saying that
        // segments were lost (both sled writes: its log keeps them in this order).
        write_journals(&self.inner).map_err(StoreError::Io)?;
        self.inner.msgids.links_made_again()?;
        self.inner.mobiles.links_made_again()?;
        self.inner.links_unsure.store(false, Ordering::Release);
        Ok(Some(relinked))
    }

    /// Links entry `key` to `mobile` in the `mobiles` index (on disk with the next flush).
    fn link_mobile(&self, mobile: &str, key: &str) -> Result<()> {
        self.inner.ops.bump(counted::MOBILES, OpKind::Write);
        self.inner.mobiles.link(mobile_link(mobile, key), key)
    }

    /// Links a message id to its outbox key; on disk with the next flush, like every write.
    pub fn link_message_id(&self, message_id: &str, key: &str) -> Result<()> {
        match uuid::Uuid::parse_str(message_id) {
            Ok(id) => {
                self.inner.ops.bump(counted::MSGIDS, OpKind::Write);
                self.inner.msgids.link(id.as_u128(), key)?;
            }
            Err(_) => {
                self.inner.msgid_tree_used.store(true, Ordering::Relaxed);
                self.inner.msgid.insert(message_id, key.as_bytes())?;
            }
        }
        Ok(())
    }

    pub fn entry_by_message_id(&self, message_id: &str) -> Result<Option<OutboxEntry>> {
        match self.message_key(message_id)? {
            Some(key) => self.get_entry(&key),
            None => Ok(None),
        }
    }

    /// The outbox key of the message the provider calls `message_id` (nothing decoded).
    pub fn message_key(&self, message_id: &str) -> Result<Option<String>> {
        let uuid = uuid::Uuid::parse_str(message_id).ok();
        if let Some(id) = uuid {
            self.inner.ops.bump(counted::MSGIDS, OpKind::Read);
            if let Some(key) = self.inner.msgids.get(id.as_u128())? {
                return Ok(Some(key));
            }
        }
        if !self.inner.msgid_tree_used.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let msgid = &self.inner.msgid;
        let found = match uuid {
            // Linked by format 5 (17 bytes), or by an older one (the id's text).
            Some(id) => match msgid.get(msgid_key(id))? {
                Some(key) => Some(key),
                None => msgid.get(message_id)?,
            },
            None => msgid.get(message_id)?,
        };
        Ok(found.map(|key| String::from_utf8_lossy(&key).into_owned()))
    }

    // ---- orphan delivery events --------------------------------------------------------

    /// Keeps a delivery event (the body as received) for a message not yet known.
    pub fn park_orphan(&self, message_id: &str, body: &[u8]) -> Result<()> {
        let key = cat(&[message_id.as_bytes(), &[0], uuid::Uuid::now_v7().as_bytes()]);
        // Counted before it is written: a `take_orphans` that runs meanwhile scans.
        self.inner.orphans_len.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.inner.orphans.insert(key, body) {
            self.inner.orphans_len.fetch_sub(1, Ordering::SeqCst);
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes and returns the events parked for `message_id`, oldest first.
    pub fn take_orphans(&self, message_id: &str) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if self.inner.orphans_len.load(Ordering::SeqCst) <= 0 {
            return Ok(out);
        }
        let prefix = cat(&[message_id.as_bytes(), &[0]]);
        for item in self.inner.orphans.scan_prefix(&prefix) {
            let (k, v) = item?;
            if self.inner.orphans.remove(k)?.is_some() {
                self.inner.orphans_len.fetch_sub(1, Ordering::SeqCst);
                out.push(v.to_vec());
            }
        }
        Ok(out)
    }

    // ---- occasions -------------------------------------------------------------------

    /// Records that `occasion` fired; returns false if it already had.
    pub fn mark_fired(&self, occasion: &str, fired: &Fired) -> Result<bool> {
        let swapped = self.inner.fired.compare_and_swap(
            occasion,
            None as Option<&[u8]>,
            Some(to_vec(fired)),
        )?;
        Ok(swapped.is_ok())
    }

    pub fn fired(&self, occasion: &str) -> Result<Option<Fired>> {
        match self.inner.fired.get(occasion)? {
            Some(v) => Ok(Some(decode("fired", occasion.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Every occasion record, in key order.
    pub fn fired_all(&self) -> impl Iterator<Item = Result<(String, Fired)>> + '_ {
        self.inner.fired.iter().map(|item| {
            let (k, v) = item?;
            Ok((
                String::from_utf8_lossy(&k).into_owned(),
                decode("fired", &k, &v)?,
            ))
        })
    }

    /// What a rule did last (its latest occasion and outcome). Kept in memory and written
    /// with the next [`Store::durable`].
    pub fn set_rule_last(&self, rule: &str, occasion: &str, fired: &Fired) -> Result<()> {
        let mut deeds = self.inner.last_deeds_lock();
        match deeds.get_mut(rule) {
            // The common case in a fan-out: reuse the rule's slot and strings.
            Some((o, f)) => {
                o.clear();
                o.push_str(occasion);
                f.at = fired.at;
                f.outcome.clear();
                f.outcome.push_str(&fired.outcome);
            }
            None => {
                deeds.insert(rule.to_string(), (occasion.to_string(), fired.clone()));
            }
        }
        Ok(())
    }

    pub fn rule_last(&self, rule: &str) -> Result<Option<serde_json::Value>> {
        let pending = self
            .inner
            .last_deeds_lock()
            .get(rule)
            .map(|(occasion, fired)| last_deed(occasion, fired));
        let value = match pending {
            Some(v) => Some(v),
            None => self
                .inner
                .meta
                .get(format!("last/{rule}"))?
                .map(|v| v.to_vec()),
        };
        match value {
            Some(v) => Ok(Some(decode("meta", rule.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    // ---- conversations -------------------------------------------------------------

    pub fn get_conversation(&self, custom_field: &str) -> Result<Option<Conversation>> {
        match self.inner.conversations.get(custom_field)? {
            Some(v) => Ok(Some(decode_compact(
                "conversations",
                custom_field.as_bytes(),
                &v,
            )?)),
            None => Ok(None),
        }
    }

    /// A conversation with the bytes it was read from (`None`: there was none), for
    /// [`Store::update_conversation_known`].
    pub fn read_conversation(&self, custom_field: &str) -> Result<KnownConversation> {
        let raw = self.inner.conversations.get(custom_field)?;
        let conversation = match &raw {
            Some(v) => Some(decode_compact("conversations", custom_field.as_bytes(), v)?),
            None => None,
        };
        Ok(KnownConversation {
            custom_field: custom_field.to_string(),
            conversation,
            raw,
        })
    }

    /// Read-modify-write of one conversation, one writer at a time. Creates it when absent.
    pub fn update_conversation(
        &self,
        custom_field: &str,
        now: DateTime<Utc>,
        change: impl FnMut(&mut Conversation),
    ) -> Result<Conversation> {
        self.update_conversation_known(custom_field, None, now, change)
    }

    /// [`Store::update_conversation`] from a conversation read before: when it is still what
    /// is stored, one compare-and-swap checks that and writes (a reply's reaction reads its
    /// conversation first, and need not read it again to write it). `change` runs again on
    /// the stored conversation if `known` turned out to be stale.
    pub fn update_conversation_known(
        &self,
        custom_field: &str,
        known: Option<&KnownConversation>,
        now: DateTime<Utc>,
        mut change: impl FnMut(&mut Conversation),
    ) -> Result<Conversation> {
        let i = &self.inner;
        let _held = i.lock(custom_field.as_bytes());
        let stored = match known.filter(|k| k.custom_field == custom_field) {
            Some(k) => {
                let mut conv = k
                    .conversation
                    .clone()
                    .unwrap_or_else(|| Conversation::new(custom_field, now));
                change(&mut conv);
                let swapped = i.conversations.compare_and_swap(
                    custom_field.as_bytes(),
                    k.raw.as_ref(),
                    Some(conv.encode()),
                )?;
                match swapped {
                    Ok(()) => return Ok(conv),
                    Err(cas) => cas.current,
                }
            }
            None => i.conversations.get(custom_field)?,
        };
        let mut conv = match stored {
            Some(bytes) => decode_compact("conversations", custom_field.as_bytes(), &bytes)?,
            None => Conversation::new(custom_field, now),
        };
        change(&mut conv);
        i.conversations
            .insert(custom_field.as_bytes(), conv.encode())?;
        Ok(conv)
    }

    // ---- opt-outs ------------------------------------------------------------------

    pub fn opt_out(&self, record: &OptOut) -> Result<()> {
        self.inner
            .optout
            .insert(record.mobile.as_bytes(), to_vec(record))?;
        Ok(())
    }

    pub fn opt_in(&self, mobile: &str) -> Result<bool> {
        Ok(self.inner.optout.remove(mobile)?.is_some())
    }

    pub fn is_opted_out(&self, mobile: &str) -> Result<bool> {
        Ok(self.inner.optout.contains_key(mobile)?)
    }

    // ---- webhook inbox, replies, dead letters --------------------------------------------

    /// Keeps a webhook body, as received, until it is processed; returns its id
    /// (time-ordered). The value is the receive time (8 bytes) and the body.
    pub fn push_inbox(&self, received_at: DateTime<Utc>, body: &[u8]) -> Result<String> {
        let id = uuid::Uuid::now_v7();
        self.push_inbox_as(id, received_at, body)?;
        Ok(id.to_string())
    }

    /// [`Store::push_inbox`] under an id minted by the caller: an event whose processing
    /// failed half-way is replayed under the id its partial effects name.
    pub fn push_inbox_as(
        &self,
        id: uuid::Uuid,
        received_at: DateTime<Utc>,
        body: &[u8],
    ) -> Result<()> {
        let old = self
            .inner
            .inbox
            .insert(id.as_bytes(), cat(&[&ms_key(received_at), body]))?;
        if old.is_none() {
            self.inner.inbox_len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Up to `limit` unprocessed webhook bodies, oldest first: `(id, received_at, body)`.
    pub fn inbox(&self, limit: usize) -> Result<Vec<InboxItem>> {
        let mut out = Vec::new();
        for item in self.inner.inbox.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let id = uuid::Uuid::from_slice(&k)
                .map(|u| u.to_string())
                .unwrap_or_default();
            let received_at = ms_from_key(&v).ok_or_else(|| StoreError::Corrupt {
                tree: "inbox",
                key: id.clone(),
                message: "no receive time".into(),
            })?;
            out.push((id, received_at, v[8..].to_vec()));
        }
        Ok(out)
    }

    pub fn remove_inbox(&self, id: &str) -> Result<()> {
        if let Ok(u) = uuid::Uuid::parse_str(id) {
            if self.inner.inbox.remove(u.as_bytes())?.is_some() {
                self.inner.inbox_len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Webhook bodies waiting to be processed.
    pub fn inbox_depth(&self) -> usize {
        self.inner.inbox_len.load(Ordering::Relaxed).max(0) as usize
    }

    /// Mints the id of a reply reacted to in its request, which is unfinished until
    /// [`Store::finish_reply`] (see `reply_mark`): its record, written first, stands for its
    /// webhook body until then.
    pub fn begin_reply(&self) -> uuid::Uuid {
        self.inner.marks().mint()
    }

    /// Reply `id` (from [`Store::begin_reply`]) is done with: its reaction is written and its
    /// hand-offs are settled. The next flush may move the reply mark past it.
    pub fn finish_reply(&self, id: uuid::Uuid) {
        self.inner.marks().finish(id.as_u128());
    }

    /// Whether reply `id`'s record was written by an older store format: last, once its
    /// reaction was done (or as `received` while it was under way), rather than first with
    /// what it decided. Such a record that is not `received` stands for a finished reaction.
    pub fn reply_record_is_older(&self, id: &str) -> bool {
        uuid::Uuid::parse_str(id).is_ok_and(|u| self.inner.older_reply(u.as_u128()))
    }

    /// Replies begun and not yet finished (reactions under way, or sends handed off and not
    /// yet done with).
    pub fn unfinished_replies(&self) -> usize {
        self.inner.marks().unfinished()
    }

    /// At open: the replies from the reply mark on may have work left from the last run.
    /// Their hand-offs go to the stored queue, and each goes to the inbox, rebuilt from its
    /// record, to be replayed under its id: a reply's record is written first, with what its
    /// reaction decided, so only the replay can tell whether the rest was written (and it
    /// completes what was not). These are the replies of the last moments before a stop.
    fn recover_unfinished_replies(&self) -> Result<()> {
        let i = &self.inner;
        let mark = meta_id(&i.meta, REPLY_MARK)?;
        let mut highest = 0;
        for item in i.replies.range(reply_key(mark)..) {
            let (k, v) = item?;
            // One damaged record must not keep the engine from starting: it is reported, and
            // left for an operator to look at (`recuerda` never rewrites it).
            let reply: Reply = match decode_compact("replies", &k, &v) {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::error!(error = %e, "a reply record cannot be read; its reaction, if cut short, is not replayed");
                    continue;
                }
            };
            let Ok(id) = uuid::Uuid::parse_str(&reply.id) else {
                continue;
            };
            highest = highest.max(id.as_u128());
            self.settle_hand_offs_of(&reply.id)?;
            // An older format wrote a finished reaction's record last: nothing to replay.
            let finished = i.older_reply(id.as_u128()) && reply.is_done();
            if !finished && !i.inbox.contains_key(id.as_bytes())? {
                let body = crate::provider::webhook::reply_body(
                    &reply.mobile,
                    &reply.message,
                    reply.custom_field.as_deref(),
                );
                self.push_inbox_as(id, reply.received_at, body.as_bytes())?;
            }
        }
        *i.marks() = ReplyMarks::recovered(mark, highest);
        Ok(())
    }

    /// The occasion key a format-1 store gave reply `reply_id` matching `rule`
    /// (`reply:{rule}:{id}`), if that occasion left anything: a reply whose reaction an older
    /// recuerda began and a crash cut short is replayed under it, or it would queue its sends
    /// a second time under the new key.
    pub fn legacy_reply_occasion(&self, reply_id: &str, rule: &str) -> Result<Option<String>> {
        let old = format!("reply:{rule}:{reply_id}");
        let mut entries = self
            .inner
            .outbox
            .scan_prefix(cat(&[b"e", old.as_bytes(), b"#"]));
        let found = entries.next().transpose()?.is_some() || self.fired(&old)?.is_some();
        Ok(found.then_some(old))
    }

    /// [`Store::settle_hand_off`] for a hand-off that may never have been written (the
    /// dispatcher writes a reaction's hand-off for the first time as `sending`): one it did
    /// not take is written now, in the stored queue.
    pub fn settle_hand_off_entry(&self, entry: &OutboxEntry) -> Result<bool> {
        if self.settle_hand_off(&entry.key)? {
            return Ok(true);
        }
        let mut queued = entry.clone();
        queued.handed_off = false;
        self.enqueue(&queued)
    }

    /// Puts handed-off entry `key`, if still pending, in the stored queue; whether it was.
    pub fn settle_hand_off(&self, key: &str) -> Result<bool> {
        let settled = self.update_entry(key, |e| {
            let stranded = e.handed_off && e.status.is_pending();
            e.handed_off = false;
            stranded
        })?;
        Ok(settled.is_some())
    }

    /// [`Store::settle_hand_off`] for every entry of the reaction to reply `reply_id` (keyed
    /// under [`reply_occasion`]); how many were still pending.
    pub fn settle_hand_offs_of(&self, reply_id: &str) -> Result<usize> {
        let prefix = cat(&[b"e", reply_occasion(reply_id, "").as_bytes()]);
        // Keys first: each settle takes the entry's lock and reads it (once) itself.
        let mut keys = Vec::new();
        for item in self.inner.outbox.scan_prefix(prefix) {
            let (k, v) = item?;
            // A reply's entries are read here after a crash: linked again, as in
            // `sweep_queue` (a settle leaves the mobile as it is).
            let entry = decode_entry(&k[1..], &v)?;
            if let Some(m) = &entry.mobile {
                self.link_mobile(m, &entry.key)?;
            }
            keys.push(entry.key);
        }
        let mut settled = 0;
        for key in &keys {
            settled += usize::from(self.settle_hand_off(key)?);
        }
        Ok(settled)
    }

    /// Stores a reply, or overwrites one with the same id.
    pub fn put_reply(&self, reply: &Reply) -> Result<()> {
        self.inner
            .replies
            .insert(reply.id.as_bytes(), reply.encode())?;
        Ok(())
    }

    pub fn get_reply(&self, id: &str) -> Result<Option<Reply>> {
        match self.inner.replies.get(id)? {
            Some(v) => Ok(Some(decode_compact("replies", id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn replies(&self) -> impl Iterator<Item = Result<Reply>> + '_ {
        self.inner.replies.iter().map(|item| {
            let (k, v) = item?;
            decode_compact("replies", &k, &v)
        })
    }

    /// Records a sighting of reply `id` (with this fingerprint) at `at`, atomically, and returns
    /// the reply it duplicates: a different reply with the same fingerprint seen within `window`
    /// before `at`, if any. A duplicate slides the window but keeps naming the original.
    ///
    /// Sightings live in memory; their durable trace is the reply records themselves (each
    /// written first thing, duplicates included), from which the first
    /// call after opening rebuilds the ones still inside the window. So a sighting survives a crash exactly when
    /// its reply's record does — a reply whose record was lost is replayed from the inbox and
    /// is not taken for a duplicate of itself — and a reply costs no sled write for it.
    pub fn record_reply_sighting(
        &self,
        fingerprint: &str,
        at: DateTime<Utc>,
        id: &str,
        window: chrono::Duration,
    ) -> Result<Option<String>> {
        let mut seen = self
            .inner
            .sightings
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !seen.loaded {
            seen.load(&self.inner.replies, window)?;
        }
        Ok(seen.record(fingerprint, at, id, window))
    }

    pub fn put_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        self.inner
            .dead
            .insert(letter.id.as_bytes(), to_vec(letter))?;
        Ok(())
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.inner
            .dead
            .iter()
            .map(|item| {
                let (k, v) = item?;
                decode("dead", &k, &v)
            })
            .collect()
    }

    // ---- due queue -----------------------------------------------------------------

    /// Plans `entry` (replacing any plan with the same key). `due_keys` is the truth: the
    /// entry under its time is written first, the old one removed last.
    pub fn schedule_due(&self, entry: &DueEntry) -> Result<()> {
        let i = &self.inner;
        let key = entry.key.as_bytes();
        let _held = i.lock(&cat(&[b"d", key]));
        let at = ms_key(entry.due_at);
        let old = i.due_keys.get(key)?;
        if old.is_none() {
            // Counted before it exists: a prefix look-up never misses it.
            i.due_groups().add(&entry.key);
        }
        i.due.insert(cat(&[&at, key]), to_vec(entry))?;
        i.due_keys.insert(key, &at)?;
        if let Some(old) = old {
            if old.as_ref() != at {
                i.due.remove(cat(&[&old, key]))?;
            }
        }
        Ok(())
    }

    /// Removes the plan with this key; returns whether there was one.
    pub fn cancel_due(&self, key: &str) -> Result<bool> {
        let i = &self.inner;
        let _held = i.lock(&cat(&[b"d", key.as_bytes()]));
        let Some(old) = i.due_keys.remove(key.as_bytes())? else {
            return Ok(false);
        };
        i.due_groups().remove(key);
        i.due.remove(cat(&[&old, key.as_bytes()]))?;
        Ok(true)
    }

    /// Whether due-queue key `k` (time ++ key) is the plan `due_keys` names, checked under the
    /// plan's lock; a stale one (a crash cut a reschedule or cancel short) is removed.
    fn due_key_current(&self, k: &[u8]) -> Result<bool> {
        let key = &k[8..];
        let _held = self.inner.lock(&cat(&[b"d", key]));
        let current = self.inner.due_keys.get(key)?.is_some_and(|at| at == k[..8]);
        if !current {
            self.inner.due.remove(k)?;
        }
        Ok(current)
    }

    /// Planned entries whose key starts with `prefix` (e.g. every plan of one appointment).
    pub fn due_keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        // Every reply asks for its conversation's no-reply timers; most have none.
        if self.inner.due_groups().surely_none(prefix) {
            return Ok(Vec::new());
        }
        self.inner
            .due_keys
            .scan_prefix(prefix)
            .map(|item| {
                item.map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                    .map_err(StoreError::from)
            })
            .collect()
    }

    /// Entries due at or before `now`, earliest first.
    pub fn due_until(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueEntry>> {
        let end = cat(&[&ms_key(now), &[0xff]]);
        let mut out = Vec::new();
        for item in self.inner.due.range(..end) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if k.len() > 8 && self.due_key_current(&k)? {
                out.push(decode("due", &k, &v)?);
            }
        }
        Ok(out)
    }

    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        match self.inner.due.iter().next() {
            Some(item) => Ok(ms_from_key(&item?.0)),
            None => Ok(None),
        }
    }

    pub fn due_depth(&self) -> usize {
        self.inner.due_keys.len()
    }

    // ---- cron bookkeeping ------------------------------------------------------------

    pub fn cron_last(&self, rule: &str) -> Result<Option<DateTime<Utc>>> {
        match self.inner.meta.get(format!("cron/{rule}"))? {
            Some(v) => Ok(ms_from_key(&v)),
            None => Ok(None),
        }
    }

    pub fn set_cron_last(&self, rule: &str, slot: DateTime<Utc>) -> Result<()> {
        self.inner
            .meta
            .insert(format!("cron/{rule}"), &ms_key(slot))?;
        Ok(())
    }
}

/// Group commit: one sled flush serves every write made before it.
///
/// While busy (the last flush served 8 or more waiters) the flusher first yields to the
/// runtime a few times, so the tasks already woken (handlers about to write) join this flush
/// rather than the next one: 3–4× fewer flushes and ~10 % less CPU per event in the benchmark.
/// A yield, not a timed wait: a 300 µs sleep batched as well, but a test that stops the engine
/// and restarts it then hung now and then (README, "Third pass"); yielding involves no timer
/// and cannot delay a lone writer.
const BUSY_WAITERS: usize = 8;
/// How long index links wait at most for their journal record when no flush is asked for:
/// sled's own background flush (every 500 ms) then saves the record with the writes made
/// beside the links (a send's outcome). Short, since a crash can keep those writes without
/// it for that long; not zero, so a burst shares one record.
const JOURNAL_DELAY: std::time::Duration = std::time::Duration::from_millis(20);
const YIELDS_WHEN_BUSY: usize = 4;

async fn flusher(
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<std::result::Result<(), String>>>,
    inner: std::sync::Weak<Inner>,
    links_waiting: Arc<tokio::sync::Notify>,
) {
    let mut last_served = 0;
    // When links wait with no flush asked for: their journal record is written then (see
    // JOURNAL_DELAY). Woken by the first link after a record, so an idle store sleeps.
    let mut journal_due: Option<tokio::time::Instant> = None;
    loop {
        let first = tokio::select! {
            waiter = rx.recv() => match waiter {
                Some(w) => w,
                None => break,
            },
            _ = links_waiting.notified(), if journal_due.is_none() => {
                journal_due = Some(tokio::time::Instant::now() + JOURNAL_DELAY);
                continue;
            }
            _ = tokio::time::sleep_until(journal_due.unwrap_or_else(tokio::time::Instant::now)), if journal_due.is_some() => {
                journal_due = None;
                if let Some(inner) = inner.upgrade() {
                    if let Err(e) = write_journals(&inner) {
                        tracing::warn!(error = %e, "could not write index links to their journal; tried again with the next flush");
                    }
                }
                continue;
            }
        };
        // Everyone queued now wrote before this flush starts, so one flush covers them all.
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        if last_served >= BUSY_WAITERS {
            // Busy: let the tasks already woken run first; those about to wait join this
            // flush instead of needing the next one.
            for _ in 0..YIELDS_WHEN_BUSY {
                tokio::task::yield_now().await;
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
            }
        }
        last_served = waiters.len();
        let result = match inner.upgrade() {
            Some(inner) => {
                inner.flushes.fetch_add(1, Ordering::Relaxed);
                inner
                    .flush_waiters
                    .fetch_add(waiters.len() as u64, Ordering::Relaxed);
                // The index links first: a reply the mark passes has its sends' links in the
                // log before the mark.
                let result = match write_journals(&inner)
                    .and_then(|()| inner.write_last_deeds())
                    .and_then(|()| inner.write_reply_mark())
                {
                    Ok(()) => inner
                        .db
                        .flush_async()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                inner
                    .write_failing
                    .store(result.is_err(), Ordering::Relaxed);
                result
            }
            None => Err("the store is closed".to_string()),
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl Drop for Inner {
    /// A clean close: the links not yet journaled, and the mark that says so, on disk.
    fn drop(&mut self) {
        // (A batch handed over now is not written out: its links are in the journal.)
        let _ = self.msgids.write_journal();
        let _ = self.mobiles.write_journal();
        if !self.links_unsure.load(Ordering::Acquire) {
            let _ = self.meta.insert(CLEAN_CLOSE, b"1".as_slice());
        }
        let _ = self.db.flush();
    }
}

/// Writes each index's journal record (see `idindex`), and starts writing out a segment if
/// one hands over a batch.
fn write_journals(inner: &Arc<Inner>) -> std::result::Result<(), String> {
    fn msgids(i: &Inner) -> &idindex::IdIndex {
        &i.msgids
    }
    fn mobiles(i: &Inner) -> &idindex::IdIndex {
        &i.mobiles
    }
    for index in [msgids, mobiles] {
        let batch = index(inner).write_journal().map_err(|e| e.to_string())?;
        if let Some(batch) = batch {
            // Off the flusher's path: a segment takes milliseconds, and its links stay
            // readable in memory until it is in place. The task holds the store (and so
            // sled's lock): no second opening of the folder can start while it writes.
            let inner = inner.clone();
            tokio::task::spawn_blocking(move || {
                let index = index(&inner);
                if let Err(e) = index.build(batch) {
                    tracing::warn!(index = index.name(), error = %e, "could not write out an index's links as a segment or merge its segments; links not yet in a segment stay in its journal and are tried again");
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
impl Store {
    /// The keys of [`Store::due_outbox`] at `now` (at most 10), for the tests' assertions.
    pub(crate) fn due_outbox_keys(&self, now: DateTime<Utc>) -> Vec<String> {
        self.due_outbox(now, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_status(store: &Store, key: &str, status: MessageStatus) {
        let updated = store
            .update_entry(key, |e| {
                e.status = status;
                true
            })
            .unwrap();
        assert!(updated.is_some(), "no entry `{key}`");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes_and_a_lone_one_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_cron_last("lone", Utc::now()).unwrap();
        store.durable().await.unwrap();
        assert_eq!(store.flush_stats(), (1, 1));
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.set_cron_last(&format!("r{i}"), Utc::now()).unwrap();
                    store.durable().await
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        let (flushes, waits) = store.flush_stats();
        assert_eq!(waits, 65);
        assert!(flushes < 33, "64 concurrent writers took {flushes} flushes");
        // Everything acknowledged is there after a reopen.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.cron_last("r63").unwrap().is_some());
    }

    #[tokio::test]
    async fn an_update_from_a_known_entry_applies_to_what_is_stored_now() {
        use crate::message::{OutboxEntry, OutboxKind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Utc::now();
        let e = OutboxEntry::queued("k".into(), OutboxKind::Send, "r", 0, now);
        assert!(store.enqueue(&e).unwrap());
        let known = store
            .due_outbox_except(now, 10, |_| false)
            .unwrap()
            .remove(0);

        // Unchanged since it was read: the known entry is the base, and the result is what a
        // plain update makes of the stored record.
        let sending = store
            .update_known("k", Some(&known), |e| {
                e.set_status(MessageStatus::Sending, now, None);
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(Some(&sending.entry), store.get_entry("k").unwrap().as_ref());

        // Changed since (someone else wrote it): the stale copy must not be the base.
        store
            .update_entry("k", |e| {
                e.attempts = 7;
                true
            })
            .unwrap();
        let sent = store
            .update_known("k", Some(&sending), |e| {
                e.set_status(MessageStatus::Sent, now, None);
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(sent.entry.attempts, 7, "the other writer's change is kept");
        assert_eq!(sent.entry.status, MessageStatus::Sent);
        assert_eq!(Some(&sent.entry), store.get_entry("k").unwrap().as_ref());
        assert_eq!(store.outbox_depth(), 0);

        // A known entry of another key is never taken for this one.
        let other = OutboxEntry::queued("other".into(), OutboxKind::Send, "r", 0, now);
        assert!(store.enqueue(&other).unwrap());
        let updated = store
            .update_known("other", Some(&sent), |e| {
                e.attempts += 1;
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(updated.entry.key, "other");
        assert_eq!(updated.entry.attempts, 1);

        // A change that declines on a stale copy is asked again of what is stored: `other`
        // was queued when `queued_copy` was read, is `sending` now, and the change wants
        // `sending`.
        let queued_copy = updated;
        store
            .update_entry("other", |e| {
                e.set_status(MessageStatus::Sending, now, None);
                true
            })
            .unwrap();
        let sent = store
            .update_known("other", Some(&queued_copy), |e| {
                if e.status != MessageStatus::Sending {
                    return false;
                }
                e.set_status(MessageStatus::Sent, now, None);
                true
            })
            .unwrap()
            .expect("the stored entry is `sending`: the change applies");
        assert_eq!(sent.entry.status, MessageStatus::Sent);
        assert_eq!(
            Some(&sent.entry),
            store.get_entry("other").unwrap().as_ref()
        );
    }

    #[tokio::test]
    async fn a_conversation_update_from_a_stale_read_keeps_the_other_writers_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Utc::now();
        let line = |c: &Conversation| -> Vec<String> {
            c.history.iter().map(|h| h.detail.clone()).collect()
        };
        // Read while absent; someone else creates it; the update applies to theirs.
        let absent = store.read_conversation("cf").unwrap();
        store
            .update_conversation("cf", now, |c| c.record(now, "reply", "other".into(), None))
            .unwrap();
        let c = store
            .update_conversation_known("cf", Some(&absent), now, |c| {
                c.record(now, "reply", "mine".into(), None)
            })
            .unwrap();
        assert_eq!(line(&c), ["other", "mine"]);
        // Read, unchanged since: written from the read, and the result is what is stored.
        let fresh = store.read_conversation("cf").unwrap();
        let c = store
            .update_conversation_known("cf", Some(&fresh), now, |c| {
                c.state = Some("confirmada".into())
            })
            .unwrap();
        assert_eq!(Some(c), store.get_conversation("cf").unwrap());
        // A read of another conversation is never taken for this one.
        let c = store
            .update_conversation_known("cf2", Some(&fresh), now, |c| {
                c.record(now, "reply", "x".into(), None)
            })
            .unwrap();
        assert_eq!(
            (c.custom_field.as_str(), line(&c)),
            ("cf2", vec!["x".to_string()])
        );
    }

    #[tokio::test]
    async fn parked_events_are_taken_once_and_none_parked_costs_no_scan() {
        let dir = tempfile::tempdir().unwrap();
        let scans = |store: &Store| {
            store
                .op_counts()
                .into_iter()
                .filter(|(tree, kind, _)| *tree == "orphans" && *kind == OpKind::Scan)
                .map(|(_, _, n)| n)
                .sum::<u64>()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.take_orphans("m1").unwrap().is_empty());
            assert_eq!(scans(&store), 0, "nothing parked: nothing scanned");
            store.park_orphan("m1", b"a").unwrap();
            store.park_orphan("m1", b"b").unwrap();
            store.park_orphan("m2", b"c").unwrap();
            assert_eq!(
                store.take_orphans("m1").unwrap(),
                [b"a".to_vec(), b"b".to_vec()]
            );
            assert!(store.take_orphans("m1").unwrap().is_empty());
            store.durable().await.unwrap();
        }
        // Reopened, the one still parked is counted from the tree.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.take_orphans("m2").unwrap(), [b"c".to_vec()]);
        let before = scans(&store);
        assert!(store.take_orphans("m2").unwrap().is_empty());
        assert_eq!(scans(&store), before, "none left: no scan");
    }

    #[tokio::test]
    async fn the_queue_counter_stays_in_step_with_the_queue() {
        use crate::message::{OutboxEntry, OutboxKind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Utc::now();
        for i in 0..3 {
            let e = OutboxEntry::queued(format!("k{i}"), OutboxKind::Send, "r", 0, now);
            assert!(store.enqueue(&e).unwrap());
            assert!(
                !store.enqueue(&e).unwrap(),
                "a second enqueue of an occasion is a no-op"
            );
        }
        let scan = |s: &Store| s.inner.outbox.scan_prefix(b"q").count();
        assert_eq!((store.outbox_depth(), scan(&store)), (3, 3));
        set_status(&store, "k0", MessageStatus::Sending);
        store
            .update_entry("k1", |e| {
                e.not_before = now + chrono::Duration::hours(1);
                true
            })
            .unwrap();
        store.update_entry("k2", |_| false).unwrap();
        // k0 is in flight: not queued, but its key stays (start-up finds it there).
        assert_eq!((store.outbox_depth(), scan(&store)), (2, 3));
        let in_flight: Vec<String> = store.in_flight_entries().map(|e| e.unwrap().key).collect();
        assert_eq!(in_flight, ["k0"]);
        assert_eq!(
            store
                .due_outbox(now + chrono::Duration::hours(2), 10)
                .unwrap()
                .len(),
            2
        );
        set_status(&store, "k0", MessageStatus::Queued);
        assert_eq!((store.outbox_depth(), scan(&store)), (3, 3));
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.outbox_depth(), 3, "counted again at open");
    }

    /// What a crash between the writes of one record can leave (see the module doc) is
    /// ignored and cleaned by the readers, and counted right at open.
    #[tokio::test]
    async fn keys_a_crash_left_stale_are_ignored_and_dropped() {
        use crate::message::{OutboxEntry, OutboxKind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let earlier = now - chrono::Duration::hours(1);
        let e = OutboxEntry::queued("k".into(), OutboxKind::Send, "r", 0, now);
        store.enqueue(&e).unwrap();
        set_status(&store, "k", MessageStatus::Sending);
        // Cut short after the new queue key (a retry re-queueing it an hour earlier) ...
        store
            .inner
            .outbox
            .insert(queue_key(earlier, "k"), &[])
            .unwrap();
        // ... and an orphan key whose entry was never written.
        store
            .inner
            .outbox
            .insert(queue_key(earlier, "gone"), &[])
            .unwrap();
        assert!(store.due_outbox(now, 10).unwrap().is_empty());
        assert_eq!(store.next_outbox_due().unwrap(), None, "stale keys dropped");

        // A cancelled plan whose entry under its time survived, and a moved plan.
        let plan = |key: &str, at| DueEntry {
            key: key.into(),
            due_at: at,
            rule: "r".into(),
            appointment_id: None,
            appointment_start: None,
            context: serde_json::Value::Null,
            custom_field: None,
        };
        store.schedule_due(&plan("a", earlier)).unwrap();
        store.inner.due_keys.remove("a").unwrap();
        store.schedule_due(&plan("b", earlier)).unwrap();
        store
            .inner
            .due
            .insert(
                cat(&[&ms_key(earlier - chrono::Duration::hours(1)), b"b"]),
                to_vec(&plan("b", earlier)),
            )
            .unwrap();
        let due: Vec<String> = store
            .due_until(now, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.key)
            .collect();
        assert_eq!(due, ["b"], "only the plan `due_keys` names");
        assert_eq!(store.next_due().unwrap(), Some(earlier));

        // Counted at open: a stale key left in the queue does not count.
        store
            .inner
            .outbox
            .insert(queue_key(earlier, "gone"), &[])
            .unwrap();
        let queued = OutboxEntry::queued("q".into(), OutboxKind::Send, "r", 0, now);
        store.enqueue(&queued).unwrap();
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.outbox_depth(), 1);
        // `q` stays queued, `k` in flight; the stale key is gone.
        assert_eq!(reopened.inner.outbox.scan_prefix(b"q").count(), 2);
        let in_flight: Vec<String> = reopened
            .in_flight_entries()
            .map(|e| e.unwrap().key)
            .collect();
        assert_eq!(in_flight, ["k"]);
    }

    /// A UUID message id (as the provider's are) is linked in the `msgids` files, not the
    /// `msgid` tree, and found again after a reopen; another id in the tree; and links that
    /// older formats made in the tree (format 5's 16 bytes, older ones' text) are still found.
    #[tokio::test]
    async fn message_ids_are_linked_in_their_files_and_older_links_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let uuid = "0e1add43-f91c-4e7c-8805-221ef6b27b98";
        let format5 = uuid::Uuid::parse_str("6f1c2b7e-1a2b-4c3d-8e9f-001122334455").unwrap();
        let older = "9a8b7c6d-1a2b-4c3d-8e9f-001122334455";
        {
            let store = Store::open(dir.path()).unwrap();
            store.link_message_id(uuid, "e-1").unwrap();
            assert_eq!(store.message_key(uuid).unwrap().as_deref(), Some("e-1"));
            assert_eq!(
                store.message_key(&uuid.to_uppercase()).unwrap().as_deref(),
                Some("e-1")
            );
            assert!(store.inner.msgid.iter().next().is_none(), "not in the tree");
            assert!(store.message_key(older).unwrap().is_none());

            store.link_message_id("msg-7", "e-2").unwrap();
            assert_eq!(store.message_key("msg-7").unwrap().as_deref(), Some("e-2"));
            store
                .inner
                .msgid
                .insert(msgid_key(format5), b"e-3")
                .unwrap();
            store.inner.msgid.insert(older, b"e-4").unwrap();
            store.durable().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.message_key(uuid).unwrap().as_deref(), Some("e-1"));
        assert_eq!(store.message_key("msg-7").unwrap().as_deref(), Some("e-2"));
        let format5 = format5.to_string();
        assert_eq!(store.message_key(&format5).unwrap().as_deref(), Some("e-3"));
        assert_eq!(store.message_key(older).unwrap().as_deref(), Some("e-4"));
        assert!(store.message_key("unknown").unwrap().is_none());
        assert!(store
            .message_key("11111111-2222-4333-8444-555555555555")
            .unwrap()
            .is_none());
    }

    /// A send to `mobile`, `status`, at `now`.
    fn send_to(key: &str, mobile: &str, status: MessageStatus, now: DateTime<Utc>) -> OutboxEntry {
        let mut e = OutboxEntry::queued(key.into(), crate::message::OutboxKind::Send, "r", 0, now);
        e.mobile = Some(mobile.into());
        e.status = status;
        e
    }

    /// Writes entry `e` alone, as a crash can leave it (or an older format wrote it): none of
    /// its index keys or links.
    fn write_bare(store: &Store, e: &OutboxEntry) {
        let key = cat(&[b"e", e.key.as_bytes()]);
        store.inner.outbox.insert(key, e.encode()).unwrap();
    }

    /// Opens the store in `dir` again, once the last handle's threads let go of its lock.
    fn reopen(dir: &Path) -> Store {
        loop {
            match Store::open(dir) {
                Ok(store) => break store,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    /// Writes entry `k-1`, sent to 573001112233 as message `msgid`, alone (see `write_bare`).
    fn write_bare_sent(store: &Store, msgid: &str, now: DateTime<Utc>) {
        let mut e = send_to("k-1", "573001112233", MessageStatus::Sent, now);
        e.message_id = Some(msgid.into());
        write_bare(store, &e);
    }

    /// The keys `entries_for_mobile` lists for `mobile`.
    fn listed_for(store: &Store, mobile: &str) -> Vec<String> {
        store
            .entries_for_mobile(mobile)
            .map(|e| e.unwrap().key)
            .collect()
    }

    /// A format-5 store's `m` keys (messages by mobile) are still listed, with what this
    /// format links, each message once.
    #[tokio::test]
    async fn older_mobile_keys_are_still_listed() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let entry = |key: &str| send_to(key, "573001112233", MessageStatus::Sent, now);
        {
            let store = Store::open(dir.path()).unwrap();
            for key in ["old-1", "old-2"] {
                let old_key = mobile_key("573001112233", key);
                store.inner.outbox.insert(old_key, &[]).unwrap();
                write_bare(&store, &entry(key));
            }
            store.durable().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        store.enqueue(&entry("new-1")).unwrap();
        // An old message changed now is linked again: still listed once.
        store
            .update_entry("old-2", |e| {
                e.mobile = Some("573001112233".into());
                true
            })
            .unwrap();
        assert_eq!(
            listed_for(&store, "573001112233"),
            ["new-1", "old-1", "old-2"]
        );
    }

    /// An entry a crash kept without its mobile's link (links reach the store after their
    /// entry): a pending one is linked again at open.
    #[tokio::test]
    async fn a_pending_entry_kept_without_its_link_is_linked_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            // As a crash leaves it: the queue key and the entry, no link.
            store
                .inner
                .outbox
                .insert(queue_key(now, "k-1"), &[])
                .unwrap();
            let e = send_to("k-1", "573001112233", MessageStatus::Queued, now);
            write_bare(&store, &e);
            assert_eq!(store.entries_for_mobile("573001112233").count(), 0);
            store.durable().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(listed_for(&store, "573001112233"), ["k-1"]);
    }

    /// After an unclean stop, every entry's links are looked for and made again where a
    /// crash lost them; a clean close says there is nothing to look for.
    #[tokio::test]
    async fn links_a_crash_lost_are_made_again_after_an_unclean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let msgid = "0e1add43-f91c-4e7c-8805-221ef6b27b98";
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(!store.links_unsure(), "a new store");
            // As a crash can leave it: the sent entry on disk, its links not.
            write_bare_sent(&store, msgid, now);
            store.park_orphan(msgid, b"{}").unwrap();
            store.durable().await.unwrap();
        }
        let store = reopen(dir.path());
        assert!(!store.links_unsure(), "closed cleanly");
        drop(store);
        // The crash: the store was never closed.
        {
            let db = loop {
                match sled::open(dir.path()) {
                    Ok(db) => break db,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            };
            db.open_tree("meta")
                .unwrap()
                .insert(CLEAN_CLOSE, b"0".as_slice())
                .unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert!(store.links_unsure());
        assert_eq!(store.entries_for_mobile("573001112233").count(), 0);
        assert!(store.message_key(msgid).unwrap().is_none());
        assert_eq!(store.repair_links(|| true).unwrap(), None, "stopped");
        assert!(store.links_unsure());
        let relinked = store.repair_links(|| false).unwrap().unwrap();
        assert_eq!(relinked, [(msgid.to_string(), "k-1".to_string())]);
        assert!(!store.links_unsure());
        assert_eq!(store.message_key(msgid).unwrap().as_deref(), Some("k-1"));
        assert_eq!(store.entries_for_mobile("573001112233").count(), 1);
        assert_eq!(
            store.take_orphans(msgid).unwrap().len(),
            1,
            "the parked event waits"
        );
        // Nothing lost twice: a second look finds every link.
        assert_eq!(store.repair_links(|| false).unwrap().unwrap(), []);
        drop(store);
        let store = reopen(dir.path());
        assert!(!store.links_unsure(), "repaired, then closed cleanly");
        assert_eq!(store.message_key(msgid).unwrap().as_deref(), Some("k-1"));
    }

    #[tokio::test]
    async fn an_index_folder_restored_without_its_segments_is_made_good_from_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let msgid = "0e1add43-f91c-4e7c-8805-221ef6b27b98";
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            write_bare_sent(&store, msgid, now);
            store.link_message_id(msgid, "k-1").unwrap();
            // Enough links for a segment (no entries behind these: only k-1 comes back).
            for i in 0..idindex::SEGMENT_LINKS as u128 {
                let filler = uuid::Uuid::from_u128(i + 1).to_string();
                store.link_message_id(&filler, "filler").unwrap();
            }
            store.durable().await.unwrap();
            let segments = || {
                std::fs::read_dir(dir.path().join("msgids"))
                    .unwrap()
                    .filter(|f| {
                        let name = f.as_ref().unwrap().file_name();
                        let name = name.to_string_lossy();
                        name.starts_with("segment-") && !name.ends_with(".tmp")
                    })
                    .count()
            };
            for _ in 0..500 {
                if segments() > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(segments(), 1, "the links were written out as a segment");
            assert_eq!(store.message_key(msgid).unwrap().as_deref(), Some("k-1"));
        }
        let store = reopen(dir.path());
        assert!(!store.links_unsure(), "closed cleanly, every segment there");
        drop(store);

        std::fs::remove_dir_all(dir.path().join("msgids")).unwrap();
        let store = reopen(dir.path());
        assert!(store.links_unsure(), "the lost segment is noticed");
        assert!(store.message_key(msgid).unwrap().is_none());
        let relinked = store.repair_links(|| false).unwrap().unwrap();
        assert_eq!(relinked, [(msgid.to_string(), "k-1".to_string())]);
        assert_eq!(store.message_key(msgid).unwrap().as_deref(), Some("k-1"));
        drop(store);
        let store = reopen(dir.path());
        assert!(!store.links_unsure(), "made good, then closed cleanly");
        assert_eq!(store.message_key(msgid).unwrap().as_deref(), Some("k-1"));
    }

    /// Child half of the next test: a send's outcome and its link written (as the
    /// dispatcher does, no `durable()` after them), a quiet spell, then a crash (abort: no
    /// destructor runs).
    #[tokio::test]
    async fn child_send_then_quiet_then_crash() {
        let Ok(dir) = std::env::var("RECUERDA_QUIET_CRASH_DIR") else {
            return;
        };
        let store = Store::open(Path::new(&dir)).unwrap();
        store.durable().await.unwrap();
        // Stands for the outbox entry's outcome: a plain sled write.
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        store.set_cron_last("outcome", at).unwrap();
        store
            .link_message_id("0e1add43-f91c-4e7c-8805-221ef6b27b98", "entry-1")
            .unwrap();
        store.link_mobile("573001112233", "entry-1").unwrap();
        // Past sled's own background flush (500 ms) and the journal's (200 ms).
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        std::process::abort();
    }

    /// A crash in the quiet after a send: sled's own background flush saved the outcome, and
    /// the links made with it (written to their journals on a timer, not only when a flush
    /// is asked for).
    #[tokio::test]
    async fn links_made_in_a_quiet_spell_survive_a_crash_with_the_writes_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::child_send_then_quiet_then_crash",
                "--test-threads=1",
            ])
            .env("RECUERDA_QUIET_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child crashed");
        let store = Store::open(dir.path()).unwrap();
        assert!(store.cron_last("outcome").unwrap().is_some(), "the outcome");
        assert_eq!(
            store
                .message_key("0e1add43-f91c-4e7c-8805-221ef6b27b98")
                .unwrap()
                .as_deref(),
            Some("entry-1")
        );
        assert_eq!(store.mobile_keys("573001112233").unwrap(), ["entry-1"]);
    }

    /// A damaged `replies_decided_from` is said at open: no reading of it is safe.
    #[tokio::test]
    async fn a_damaged_boundary_of_decided_replies_is_said_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .inner
                .meta
                .insert(REPLIES_DECIDED_FROM, &[1u8, 2, 3])
                .unwrap();
            store.durable().await.unwrap();
        }
        let err = loop {
            match Store::open(dir.path()) {
                Err(StoreError::Open { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => break e,
                Ok(_) => panic!("opened a store with a damaged boundary"),
            }
        };
        let text = err.to_string();
        assert!(text.contains(REPLIES_DECIDED_FROM), "{text}");
    }

    /// The dispatcher's first write of a hand-off: written once, `sending` and out of the
    /// stored queue, listed under its mobile; a second first write (a replay wrote it
    /// meanwhile) changes nothing and leaves no index key behind.
    #[tokio::test]
    async fn a_hand_off_written_first_by_the_dispatcher_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let mut e =
            OutboxEntry::queued("h#0".into(), crate::message::OutboxKind::Send, "r", 0, now);
        e.handed_off = true;
        e.status = MessageStatus::Sending;
        e.mobile = Some("573001112233".into());
        let known = store.enqueue_known(e.clone()).unwrap().unwrap();
        assert!(known.is_written());
        assert_eq!(store.get_entry("h#0").unwrap().unwrap(), e);
        assert!(
            store.due_outbox_keys(now).is_empty(),
            "handed off: no queue key"
        );
        let listed = |m: &str| store.entries_for_mobile(m).count();
        assert_eq!(listed("573001112233"), 1);

        // A stale link (left by a mobile's change) lists nothing.
        store.link_mobile("573005556677", "h#0").unwrap();
        assert_eq!(listed("573005556677"), 0);

        let mut other = e.clone();
        other.mobile = Some("573009998877".into());
        other.status = MessageStatus::Queued;
        other.handed_off = false;
        assert!(store.enqueue_known(other).unwrap().is_none());
        assert_eq!(store.get_entry("h#0").unwrap().unwrap(), e, "unchanged");
        assert_eq!(listed("573009998877"), 0, "its index keys taken back");
        assert!(store.due_outbox_keys(now).is_empty());
        assert_eq!(listed("573001112233"), 1);
    }

    #[tokio::test]
    async fn a_rules_last_deed_is_seen_at_once_and_written_with_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for i in 0..3 {
            let fired = Fired {
                at,
                outcome: format!("ran {i}"),
            };
            store
                .set_rule_last("r", &format!("occ-{i}"), &fired)
                .unwrap();
        }
        let last = store.rule_last("r").unwrap().unwrap();
        assert_eq!(last["occasion"], "occ-2");
        store.durable().await.unwrap();
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        let last = reopened.rule_last("r").unwrap().unwrap();
        assert_eq!(
            (last["occasion"].as_str(), last["outcome"].as_str()),
            (Some("occ-2"), Some("ran 2"))
        );
        assert_eq!(reopened.rule_last("other").unwrap(), None);
    }

    /// Writers of the same entries on many threads, and the dispatcher's reader dropping
    /// keys it finds stale, leave exactly one queue key per queued entry and the counter right.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_keep_the_queue_index_exact() {
        use crate::message::{OutboxEntry, OutboxKind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let keys: Vec<String> = (0..3).map(|i| format!("k{i}")).collect();
        std::thread::scope(|scope| {
            for worker in 0..8u64 {
                let (store, keys) = (&store, &keys);
                scope.spawn(move || {
                    let mut x = worker + 1;
                    for _ in 0..2_000 {
                        // xorshift: a cheap, repeatable stream of choices per worker.
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = &keys[(x % keys.len() as u64) as usize];
                        let at = t0 + chrono::Duration::seconds((x % 5) as i64);
                        match x % 4 {
                            0 => {
                                let e =
                                    OutboxEntry::queued(key.clone(), OutboxKind::Send, "r", 0, at);
                                store.enqueue(&e).unwrap();
                            }
                            1 => {
                                store
                                    .update_entry(key, |e| {
                                        e.status = match e.status {
                                            MessageStatus::Queued => MessageStatus::Sending,
                                            MessageStatus::Sending => MessageStatus::Sent,
                                            _ => MessageStatus::Queued,
                                        };
                                        true
                                    })
                                    .unwrap();
                            }
                            2 => {
                                store
                                    .update_entry(key, |e| {
                                        e.not_before = at;
                                        e.mobile = Some(format!("57300{}", x % 3));
                                        true
                                    })
                                    .unwrap();
                            }
                            _ => {
                                store
                                    .due_outbox(t0 + chrono::Duration::hours(1), 64)
                                    .unwrap();
                            }
                        }
                    }
                });
            }
        });
        let mut queued = 0;
        for key in &keys {
            let Some(e) = store.get_entry(key).unwrap() else {
                continue;
            };
            let q_keys: Vec<_> = store
                .inner
                .outbox
                .scan_prefix(b"q")
                .filter_map(|kv| kv.ok())
                .filter(|(k, _)| &k[9..] == key.as_bytes())
                .map(|(k, _)| k.to_vec())
                .collect();
            if e.status == MessageStatus::Queued {
                queued += 1;
            }
            if e.status.is_pending() {
                assert_eq!(q_keys, vec![queue_key(e.not_before, key)], "{key}");
            } else {
                assert!(
                    q_keys.is_empty(),
                    "{key} is {:?} but queued under {q_keys:?}",
                    e.status
                );
            }
            // Listed under its mobile, once, and under no other.
            for x in 0..3 {
                let mobile = format!("57300{x}");
                let listed = store
                    .entries_for_mobile(&mobile)
                    .filter(|l| l.as_ref().unwrap().key == *key)
                    .count();
                let expected = usize::from(e.mobile.as_deref() == Some(mobile.as_str()));
                assert_eq!(listed, expected, "{key} under {mobile}");
            }
        }
        assert_eq!(store.outbox_depth(), queued);
    }

    #[tokio::test]
    async fn a_store_in_use_is_reported_after_a_short_wait() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let started = std::time::Instant::now();
        let Err(e) = Store::open(dir.path()) else {
            panic!("a second open of a store in use succeeded");
        };
        assert!(started.elapsed() >= LOCK_WAIT, "gave up before waiting");
        assert!(e.to_string().contains("no other recuerda uses it"), "{e}");
    }

    #[tokio::test]
    async fn reply_sightings_tell_duplicates_from_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let window = chrono::Duration::seconds(60);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let sight = |id: &str, t| store.record_reply_sighting("fp", t, id, window).unwrap();
        assert_eq!(sight("a", at(0)), None, "first sighting");
        assert_eq!(
            sight("a", at(0)),
            None,
            "a replay of `a` is not its own duplicate"
        );
        assert_eq!(sight("b", at(30)), Some("a".into()), "a provider retry");
        assert_eq!(
            sight("b", at(30)),
            Some("a".into()),
            "a replayed duplicate stays one"
        );
        assert_eq!(
            sight("c", at(80)),
            Some("a".into()),
            "the window slides with retries"
        );
        assert_eq!(sight("d", at(200)), None, "past the window: a new reply");
        assert_eq!(sight("e", at(210)), Some("d".into()));
        assert_eq!(
            store.inner.sightings.lock().unwrap().seen.len(),
            1,
            "what left the window is forgotten"
        );
    }

    /// Sightings are rebuilt from the reply records at the first call after opening: a
    /// provider retry after a restart is still a duplicate, and a reply whose record was
    /// never written is nobody's original.
    #[tokio::test]
    async fn sightings_survive_a_restart_through_the_reply_records() {
        let dir = tempfile::tempdir().unwrap();
        let window = chrono::Duration::seconds(60);
        let now = Utc::now();
        let reply = |text: &str| Reply {
            id: uuid::Uuid::now_v7().to_string(),
            mobile: "573001110001".into(),
            message: text.into(),
            custom_field: Some("cita-1".into()),
            received_at: now,
            rule: None,
            outcome: "handled".into(),
        };
        let (kept, lost) = (reply("1"), reply("2"));
        {
            let store = Store::open(dir.path()).unwrap();
            for r in [&kept, &lost] {
                assert_eq!(
                    store
                        .record_reply_sighting(&r.fingerprint(), now, &r.id, window)
                        .unwrap(),
                    None
                );
            }
            // Only the first reply's record is written before the "crash".
            store.put_reply(&kept).unwrap();
            store.durable().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let retry = reply("1");
        let later = now + chrono::Duration::seconds(5);
        assert_eq!(
            store
                .record_reply_sighting(&retry.fingerprint(), later, &retry.id, window)
                .unwrap(),
            Some(kept.id.clone()),
            "the retry of a stored reply is its duplicate"
        );
        assert_eq!(
            store
                .record_reply_sighting(&lost.fingerprint(), later, &lost.id, window)
                .unwrap(),
            None,
            "the lost reply, replayed, is not a duplicate"
        );
    }

    /// Format-1, -2 and -3 stores open and become the current format, their JSON outbox
    /// entries still read (and written compact once changed); a store of a format this
    /// recuerda does not know is refused with the versions named.
    #[tokio::test]
    async fn older_stores_are_upgraded_and_an_unknown_format_refused() {
        use crate::message::{OutboxEntry, OutboxKind};
        let dir = tempfile::tempdir().unwrap();
        let version = |store: &Store| {
            let v = store.inner.meta.get("format_version").unwrap().unwrap();
            String::from_utf8_lossy(&v).into_owned()
        };
        let now = Utc::now();
        let old = OutboxEntry::queued("old".into(), OutboxKind::Send, "r", 0, now);
        let old_reply = Reply {
            id: uuid::Uuid::now_v7().to_string(),
            mobile: "573001112233".into(),
            message: "1".into(),
            custom_field: None,
            received_at: now,
            rule: None,
            outcome: "unhandled".into(),
        };
        for format in ["1", "2", "3"] {
            {
                let store = Store::open(dir.path()).unwrap();
                store.inner.meta.insert("format_version", format).unwrap();
                store.inner.meta.remove(REPLY_MARK).unwrap();
                store.put_reply(&old_reply).unwrap();
                // As an older recuerda wrote it: JSON, with its queue key.
                store
                    .inner
                    .outbox
                    .insert(b"eold", serde_json::to_vec(&old).unwrap())
                    .unwrap();
                store
                    .inner
                    .outbox
                    .insert(queue_key(old.not_before, "old"), &[])
                    .unwrap();
                store.durable().await.unwrap();
            }
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(version(&store), FORMAT_VERSION.to_string(), "from {format}");
            let mark = store.inner.meta.get(REPLY_MARK).unwrap().unwrap();
            assert!(
                reply_key(u128::from_be_bytes(mark.as_ref().try_into().unwrap())) > old_reply.id,
                "the replies an older format wrote were finished: none to look at"
            );
            assert_eq!(store.get_entry("old").unwrap().as_ref(), Some(&old));
            assert_eq!(store.due_outbox_keys(now), ["old"], "from {format}");
            set_status(&store, "old", MessageStatus::Sending);
            let raw = store.inner.outbox.get(b"eold").unwrap().unwrap();
            assert_eq!(raw.first(), Some(&codec::TAG), "rewritten compact");
            assert_eq!(
                store.get_entry("old").unwrap().map(|e| e.status),
                Some(MessageStatus::Sending)
            );
        }
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(version(&store), FORMAT_VERSION.to_string());
            store.inner.meta.insert("format_version", "9").unwrap();
            store.durable().await.unwrap();
        }
        match Store::open(dir.path()) {
            Err(StoreError::Version {
                found, expected, ..
            }) => {
                assert_eq!((found.as_str(), expected), ("9", FORMAT_VERSION))
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a store of format 9 opened"),
        }
    }

    /// A conversation's no-reply plans are found by prefix whether scheduled in this run or
    /// before a restart (their groups are counted at open), and not once cancelled.
    #[tokio::test]
    async fn no_reply_plans_are_found_by_prefix_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let plan = |key: &str| DueEntry {
            key: key.into(),
            due_at: Utc::now(),
            rule: "r".into(),
            appointment_id: None,
            appointment_start: None,
            context: serde_json::Value::Null,
            custom_field: None,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.schedule_due(&plan("noreply|cita-1|r#0")).unwrap();
            store.schedule_due(&plan("noreply|cita-1|r#0")).unwrap();
            assert_eq!(
                store.due_keys_with_prefix("noreply|cita-1|").unwrap().len(),
                1
            );
            assert!(store
                .due_keys_with_prefix("noreply|cita-2|")
                .unwrap()
                .is_empty());
            store.durable().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.due_keys_with_prefix("noreply|cita-1|").unwrap(),
            ["noreply|cita-1|r#0"]
        );
        store.schedule_due(&plan("noreply|cita-1|s#0")).unwrap();
        assert!(store.cancel_due("noreply|cita-1|r#0").unwrap());
        assert_eq!(
            store.due_keys_with_prefix("noreply|cita-1|").unwrap(),
            ["noreply|cita-1|s#0"]
        );
        assert!(store.cancel_due("noreply|cita-1|s#0").unwrap());
        assert!(store
            .due_keys_with_prefix("noreply|cita-1|")
            .unwrap()
            .is_empty());
    }

    /// Entries handed off without a queue key are found again through their reply: a store
    /// opened with replies at or above its reply mark puts their pending entries in the stored
    /// queue (a queued one to be sent, one left `sending` to be resolved as cut short),
    /// replays from the inbox every reply from the mark on (a format-4 one still `received`
    /// as well as one whose record says what it decided), and leaves alone the replies below
    /// the mark, which were done with.
    #[tokio::test]
    async fn replies_left_unfinished_by_a_crash_are_settled_and_replayed_at_open() {
        use crate::message::OutboxKind;
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let entry = |reply: uuid::Uuid, rule: &str| {
            let key = format!("{}#0", reply_occasion(&reply.to_string(), rule));
            let mut e = OutboxEntry::queued(key, OutboxKind::Send, rule, 0, now);
            e.handed_off = true;
            e
        };
        let reply = |id: uuid::Uuid, outcome: &str| Reply {
            id: id.to_string(),
            mobile: "573001112233".into(),
            message: " 1 ".into(),
            custom_field: Some("cf-1".into()),
            received_at: now,
            rule: None,
            outcome: outcome.into(),
        };
        let (cut, handled);
        let (queued, sending, sent, pending, below);
        {
            let store = Store::open(dir.path()).unwrap();
            // Done with before a flush: the mark passes it.
            let done = store.begin_reply();
            store.put_reply(&reply(done, "handled")).unwrap();
            below = entry(done, "a");
            store.enqueue_new(below.clone()).unwrap();
            store.finish_reply(done);
            store.durable().await.unwrap();

            cut = store.begin_reply();
            store.put_reply(&reply(cut, Reply::RECEIVED)).unwrap();
            (queued, sending, sent) = (entry(cut, "a"), entry(cut, "b"), entry(cut, "c"));
            handled = store.begin_reply();
            store.put_reply(&reply(handled, "handled")).unwrap();
            pending = entry(handled, "a");
            for e in [&queued, &sending, &sent, &pending] {
                store.enqueue_new(e.clone()).unwrap();
            }
            set_status(&store, &sending.key, MessageStatus::Sending);
            set_status(&store, &sent.key, MessageStatus::Sent);
            assert!(
                store.due_outbox_keys(now).is_empty(),
                "not in the stored queue"
            );
            assert_eq!(store.inbox_depth(), 0, "no inbox item");
            assert_eq!(store.unfinished_replies(), 2);
            store.durable().await.unwrap();
            // The "crash": neither reply is finished.
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.due_outbox_keys(now),
            vec![queued.key.clone(), pending.key.clone()]
        );
        let in_flight: Vec<String> = store.in_flight_entries().map(|e| e.unwrap().key).collect();
        assert_eq!(in_flight, vec![sending.key.clone()]);
        assert!(!store.get_entry(&queued.key).unwrap().unwrap().handed_off);
        assert_eq!(
            store.get_entry(&sent.key).unwrap().unwrap().status,
            MessageStatus::Sent,
            "done with: left alone"
        );
        let inbox = store.inbox(10).unwrap();
        // Both from the mark on: the replay tells whether what `handled` decided was all
        // written (its conversation line), and completes it if not.
        let ids: Vec<&str> = inbox.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(ids, vec![cut.to_string(), handled.to_string()]);
        assert_eq!(inbox[0].1, now);
        match crate::provider::webhook::parse(&inbox[0].2).unwrap() {
            crate::provider::webhook::WebhookEvent::Reply(r) => {
                assert_eq!(
                    (
                        r.mobile.as_str(),
                        r.message.as_str(),
                        r.custom_field.as_deref()
                    ),
                    ("573001112233", " 1 ", Some("cf-1"))
                )
            }
            other => panic!("replayed as {other:?}"),
        }
        assert!(
            store.get_entry(&below.key).unwrap().unwrap().handed_off,
            "below the mark: not looked at"
        );
        assert!(
            store.begin_reply() > handled,
            "ids keep rising after a restart"
        );
    }

    /// Only the dispatcher's `sending` mark and outcome keep an entry handed off; any other
    /// change (here a retry's wait) puts it in the stored queue.
    #[tokio::test]
    async fn a_requeued_hand_off_gets_its_queue_key() {
        use crate::message::OutboxKind;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let mut e = OutboxEntry::queued("k".into(), OutboxKind::Send, "r", 0, now);
        e.handed_off = true;
        let known = store.enqueue_new(e).unwrap();
        let marked = store
            .update_known("k", Some(&known), |e| {
                e.status = MessageStatus::Sending;
                true
            })
            .unwrap()
            .unwrap();
        assert!(marked.entry.handed_off);
        assert_eq!(store.in_flight_entries().count(), 0, "no queue key yet");
        let later = now + chrono::Duration::seconds(30);
        let requeued = store
            .update_known("k", Some(&marked), |e| {
                e.status = MessageStatus::Queued;
                e.not_before = later;
                true
            })
            .unwrap()
            .unwrap();
        assert!(!requeued.entry.handed_off);
        assert_eq!(store.due_outbox(later, 10).unwrap(), vec![requeued.entry]);
        assert_eq!(store.next_outbox_due().unwrap(), Some(later));
    }

    #[test]
    fn time_keys_sort_in_time_order() {
        let a = DateTime::from_timestamp(-10, 0).unwrap();
        let b = DateTime::from_timestamp(5, 0).unwrap();
        let c = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(ms_key(a) < ms_key(b) && ms_key(b) < ms_key(c));
        assert_eq!(ms_from_key(&ms_key(c)), Some(c));
    }
}

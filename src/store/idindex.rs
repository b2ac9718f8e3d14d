//! An index of 128-bit ids → keys (text) kept off sled's B-tree, where writes are at random
//! places: the provider's message ids (`msgids`: random v4 UUIDs) and the messages of each
//! patient (`mobiles`: a hash of the mobile, then a hash of the entry's key).
//!
//! Why: an insert at a random place of a sled tree finds a leaf, copies and rewrites it and
//! now and then splits it, for one small key — the message-id index was ~9 % of a reply's CPU
//! and the mobile index ~7 %. Here a link costs an append to a buffer and a hash-map insert.
//! Each group commit writes the buffer as one record of the index's journal tree (one sled
//! insert per flush, at the tree's end, durable with everything else that flush covers);
//! every [`SEGMENT_LINKS`] links are written out sorted to an immutable segment file with a
//! small in-memory index (24 bytes per 4 KiB block: ~0.4 byte per link, ~4 MiB per ten
//! million links), so memory does not follow the number of messages ever sent, and segments
//! are merged four at a time (size-tiered), so a look-up probes a handful of files even after
//! years (a miss probes them all: one 4 KiB read each). Links are never removed: readers
//! check what a key names.
//!
//! - journal tree (`msgid_journal`, `mobile_journal`): record number (u64 BE) → links
//!   `id (16) ++ key length (u16 BE) ++ key`, in the order linked.
//! - `<store>/<index>/segment-<n>`: header (`MAGIC`, level, highest journal record covered,
//!   segments replaced), links sorted by id, then a sparse index (the first id and the
//!   offset of each block of ~[`BLOCK`] bytes) and a trailer with its crc. Written under a
//!   `.tmp` name, synced and renamed: a segment file is whole or absent.
//!
//! Crash safety: a segment is durable before the journal records it covers are removed, and
//! a merged segment before the segments it replaces; at open, records covered by a segment
//! and segments replaced by another are deleted, the other records are read back. A link seen
//! twice (journal and segment, or two segments) names the same key: harmless. A link reaches
//! sled after the write it indexes — in the journal record that the next flush writes first,
//! or within the store's `JOURNAL_DELAY` when no flush is asked for —, so a crash can keep a
//! write that sled put on disk on its own (its 500 ms flush, a full log buffer) without the
//! link made just after it; the store links pending entries again at open, and checks every
//! entry's links after an unclean stop (`Store::repair_links`).

use super::counted::Tree;
use super::{Result, StoreError};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Links held in memory (and in the journal) before they are written out as a segment:
/// ~110 bytes each, so ~1 MiB, and as much again while they are written out.
pub(super) const SEGMENT_LINKS: usize = 8_192;
/// Segments of one level merged into one of the next.
const FAN_IN: usize = 4;
/// Bytes of records per block of the sparse index: one read per segment probed.
const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"RCMSGSG1";
const END_MAGIC: &[u8; 8] = b"RCMSGEND";

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} `{}`: {e}", path.display()))
}

fn corrupt(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree: "index segment",
        key: path.display().to_string(),
        message: message.into(),
    }
}

pub(super) struct IdIndex {
    /// `msgids` or `mobiles`: the folder in the store and the name in errors.
    name: &'static str,
    dir: PathBuf,
    journal: Tree,
    live: Mutex<Live>,
    /// Newest first.
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    /// A segment build (and the merges after it) is under way.
    building: AtomicBool,
    /// Told when a link waits for a journal record and none did (the store's flusher then
    /// writes one soon, flush or not).
    links_waiting: Arc<tokio::sync::Notify>,
    next_segment: AtomicU64,
    /// Segments written before are missing from the folder (see [`COVERED_MARK`]): their
    /// links are lost until made again from the records they index.
    lost: AtomicBool,
}

type Links = HashMap<u128, Box<str>>;

/// The journal's key (past every record number) of the highest record a segment ever
/// covered. Written before a segment's records are removed; at open, segments that cover
/// less mean a segment file went missing (a backup or restore of the store without the
/// index's folder, a file deleted by hand), which nothing else would show: its links would
/// simply not be found.
const COVERED_MARK: [u8; 8] = u64::MAX.to_be_bytes();

struct Live {
    /// Links not yet in a segment, but those being written out as one.
    recent: Links,
    /// Links being written out as a segment (until it is installed).
    frozen: Option<Arc<Links>>,
    /// Journal records not yet written, and the number of the next record.
    pending: Vec<u8>,
    next_record: u64,
    /// After a failed build: how many links must be held before the next try.
    retry_at: usize,
}

/// Links handed over by a flush, to be written out as a segment by [`IdIndex::build`].
pub(super) struct Batch {
    links: Arc<Links>,
    /// Every journal record up to this one is covered once the segment is written.
    covers: u64,
}

struct Segment {
    no: u64,
    level: u8,
    /// The highest journal record whose links are in the segments written so far (this one,
    /// the ones before it, and those they replaced): records up to it are removed.
    covers: u64,
    path: PathBuf,
    file: File,
    /// First id of each block and its offset; `blocks_end` ends the last block.
    sparse: Vec<(u128, u64)>,
    blocks_end: u64,
    last_id: u128,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock was held left whole values behind (no partial updates here).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn segment_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("segment-{no:016x}"))
}

fn parse_no(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)
        .filter(|n| n.len() == 16)
        .and_then(|n| u64::from_str_radix(n, 16).ok())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync the folder", dir, e))
}

/// `id ++ len ++ key` (the record without its crc).
fn put_record(out: &mut Vec<u8>, id: u128, key: &str) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
}

/// The links in `bytes`, as [`put_record`] writes them (in journal records and segment
/// blocks): `(id, key, end)`, `end` the offset just after the link; `Err(at)` for a link cut
/// short at `at`, after which nothing more is read.
fn links(bytes: &[u8]) -> impl Iterator<Item = std::result::Result<(u128, &[u8], usize), usize>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= bytes.len() {
            return None;
        }
        let start = at;
        let link = bytes.get(start..start + 18).and_then(|head| {
            let len = u16::from_be_bytes([head[16], head[17]]) as usize;
            let key = bytes.get(start + 18..start + 18 + len)?;
            let id = u128::from_be_bytes(head[..16].try_into().ok()?);
            Some((id, key, start + 18 + len))
        });
        match link {
            Some(link) => {
                at = link.2;
                Some(Ok(link))
            }
            None => {
                at = bytes.len();
                Some(Err(start))
            }
        }
    })
}

impl IdIndex {
    /// Opens the index of the store in `store_dir`, deleting what a crash left behind and
    /// reading back the journal records not yet covered by a segment.
    pub(super) fn open(
        store_dir: &Path,
        name: &'static str,
        journal: Tree,
        links_waiting: Arc<tokio::sync::Notify>,
    ) -> Result<IdIndex> {
        let dir = store_dir.join(name);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
            sync_dir(store_dir)?;
        }
        // A segment renamed in place just before a crash may not have had its folder synced:
        // synced now, before anything is removed because of it.
        sync_dir(&dir)?;
        let mut segments = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error("cannot list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A segment cut short by a crash: its links are still in the journal or in
                // the segments it was merging.
                remove(&entry.path())?;
            } else if let Some(no) = parse_no(&name, "segment-") {
                segments.push(Segment::open(&dir, no)?);
            }
        }
        let replaced: Vec<u64> = segments.iter().flat_map(|s| s.1.clone()).collect();
        let covered = segments.iter().map(|s| s.0.covers).max();
        let mut kept = Vec::new();
        for (segment, _) in segments {
            if replaced.contains(&segment.no) {
                remove(&segment.path)?;
            } else {
                kept.push(Arc::new(segment));
            }
        }
        kept.sort_by_key(|s| std::cmp::Reverse(s.no));
        let mut recent = HashMap::new();
        let mut next_record = 0;
        let mut mark = None;
        for item in journal.iter() {
            let (k, v) = item?;
            if k.as_ref() == COVERED_MARK {
                mark = Some(record_no(journal.name(), &v)?);
                continue;
            }
            let no = record_no(journal.name(), &k)?;
            next_record = no + 1;
            if covered.is_some_and(|c| no <= c) {
                journal.remove(k)?;
            } else {
                read_record(&v, &mut recent).map_err(|message| StoreError::Corrupt {
                    tree: journal.name(),
                    key: no.to_string(),
                    message,
                })?;
            }
        }
        let lost = mark.is_some_and(|m| covered.is_none_or(|c| c < m));
        if lost {
            tracing::warn!(
                index = name,
                folder = %dir.display(),
                "segments of this index written before are missing from its folder; its links are made again from the store's records in the background"
            );
        }
        let next_record = next_record
            .max(covered.map_or(0, |c| c + 1))
            .max(mark.map_or(0, |m| m.saturating_add(1)));
        let next_segment = kept.iter().map(|s| s.no).max().unwrap_or(0) + 1;
        Ok(IdIndex {
            name,
            dir,
            journal,
            live: Mutex::new(Live {
                recent,
                frozen: None,
                pending: Vec::new(),
                next_record,
                retry_at: 0,
            }),
            segments: RwLock::new(Arc::new(kept)),
            building: AtomicBool::new(false),
            links_waiting,
            next_segment: next_segment.into(),
            lost: AtomicBool::new(lost),
        })
    }

    /// Segments written before were missing at open (their links lost until made again).
    pub(super) fn lost_links(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The lost links were made again (by the store's link check): the segments there are
    /// now stand for all that is covered, so the next open does not look again.
    pub(super) fn links_made_again(&self) -> Result<()> {
        if !self.lost.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.segments().iter().map(|s| s.covers).max() {
            Some(covers) => self.journal.insert(COVERED_MARK, &covers.to_be_bytes())?,
            None => self.journal.remove(COVERED_MARK)?,
        };
        self.lost.store(false, Ordering::Release);
        Ok(())
    }

    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    /// Links `id` to `key`; on disk with the next flush.
    pub(super) fn link(&self, id: u128, key: &str) -> Result<()> {
        if key.len() > usize::from(u16::MAX) {
            return Err(StoreError::Io(format!(
                "cannot index a key of {} bytes in `{}` (at most 65,535)",
                key.len(),
                self.name
            )));
        }
        let mut live = lock(&self.live);
        if live.pending.is_empty() {
            self.links_waiting.notify_one();
        }
        put_record(&mut live.pending, id, key);
        live.recent.insert(id, key.into());
        Ok(())
    }

    /// The key linked to `id`, if any.
    pub(super) fn get(&self, id: u128) -> Result<Option<String>> {
        {
            let live = lock(&self.live);
            let frozen = live.frozen.as_ref().and_then(|f| f.get(&id));
            if let Some(key) = live.recent.get(&id).or(frozen) {
                return Ok(Some(key.to_string()));
            }
        }
        // Read after `recent`: a segment is installed before its links leave `recent`.
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for segment in segments.iter() {
            if let Some(key) = segment.find(id)? {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// The keys linked to ids from `lo` to `hi` (inclusive), each once.
    pub(super) fn range(&self, lo: u128, hi: u128) -> Result<Vec<String>> {
        let mut found: HashMap<u128, String> = HashMap::new();
        {
            let live = lock(&self.live);
            let frozen = live.frozen.iter().flat_map(|f| f.iter());
            for (id, key) in live.recent.iter().chain(frozen) {
                if (lo..=hi).contains(id) {
                    found.entry(*id).or_insert_with(|| key.to_string());
                }
            }
        }
        for segment in self.segments().iter() {
            segment.range(lo, hi, &mut found)?;
        }
        Ok(found.into_values().collect())
    }

    /// Writes the links made since the last call as one journal record (called by the
    /// flusher, before sled's flush). When enough links are held, they are handed over, to
    /// be written out as a segment off the flusher's path.
    pub(super) fn write_journal(&self) -> Result<Option<Batch>> {
        let mut live = lock(&self.live);
        let rotate = live.recent.len() >= SEGMENT_LINKS.max(live.retry_at)
            && !self.building.load(Ordering::Acquire);
        if live.pending.is_empty() && !rotate {
            return Ok(None);
        }
        // Under the lock, so records are written in the order of their numbers, and no link
        // comes between these records and the batch below. At most ~RECORD bytes each: sled
        // 0.34 keeps a large value in a blob file of its own, which it does not sync. Copied:
        // on an error the bytes not written stay, for the next flush.
        let mut written = 0;
        while written < live.pending.len() {
            let end = record_end(&live.pending, written);
            let no = live.next_record;
            if let Err(e) = self
                .journal
                .insert(no.to_be_bytes(), &live.pending[written..end])
            {
                live.pending.drain(..written);
                return Err(e.into());
            }
            live.next_record += 1;
            written = end;
        }
        live.pending.clear();
        if !rotate {
            return Ok(None);
        }
        self.building.store(true, Ordering::Release);
        // Moved, not copied: look-ups read `frozen` until the segment is in place. Every
        // link held is in a record numbered below `next_record`.
        let links = Arc::new(std::mem::take(&mut live.recent));
        live.frozen = Some(links.clone());
        Ok(Some(Batch {
            links,
            covers: live.next_record.saturating_sub(1),
        }))
    }

    /// Writes `batch` out as a segment, then merges while a level holds [`FAN_IN`]
    /// segments (blocking; run off the flusher's path).
    pub(super) fn build(&self, batch: Batch) -> Result<()> {
        let built =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build_inner(batch)));
        let result = built.unwrap_or_else(|_| {
            Err(StoreError::Io(format!(
                "writing out the `{}` index's links panicked",
                self.name
            )))
        });
        if result.is_err() {
            // The links go back with those held (their journal records are removed only
            // once a segment covers them), and the next try waits for as many links again:
            // a disk that keeps failing is not retried on every flush.
            let mut live = lock(&self.live);
            thaw(&mut live);
            live.retry_at = live.recent.len() + SEGMENT_LINKS;
        } else {
            lock(&self.live).retry_at = 0;
        }
        self.building.store(false, Ordering::Release);
        result
    }

    fn build_inner(&self, batch: Batch) -> Result<()> {
        let no = self.next_segment.fetch_add(1, Ordering::Relaxed);
        let mut sorted: Vec<(u128, &str)> =
            batch.links.iter().map(|(id, key)| (*id, &**key)).collect();
        sorted.sort_unstable_by_key(|l| l.0);
        let records = sorted.into_iter().map(Ok);
        let segment = write_segment(&self.dir, no, 0, batch.covers, &[], records)?;
        self.install(Arc::new(segment), &[]);
        lock(&self.live).frozen = None;
        // Before the records it covers go: sled recovers a prefix of its log, so a store
        // without them has the mark.
        self.journal
            .insert(COVERED_MARK, &batch.covers.to_be_bytes())?;
        for item in self.journal.range(..=batch.covers.to_be_bytes()) {
            self.journal.remove(item?.0)?;
        }
        loop {
            let segments = self.segments();
            let Some(level) =
                (0..=u8::MAX).find(|&l| segments.iter().filter(|s| s.level == l).count() >= FAN_IN)
            else {
                return Ok(());
            };
            // The oldest FAN_IN of that level.
            let mut inputs: Vec<Arc<Segment>> = segments
                .iter()
                .filter(|s| s.level == level)
                .cloned()
                .collect();
            inputs.sort_by_key(|s| s.no);
            inputs.truncate(FAN_IN);
            self.merge(&inputs, level + 1)?;
        }
    }

    fn segments(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn install(&self, segment: Arc<Segment>, replaced: &[u64]) {
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Arc<Segment>> = segments
            .iter()
            .filter(|s| !replaced.contains(&s.no))
            .cloned()
            .collect();
        next.push(segment);
        next.sort_by_key(|s| std::cmp::Reverse(s.no));
        *segments = Arc::new(next);
    }

    fn merge(&self, inputs: &[Arc<Segment>], level: u8) -> Result<()> {
        let no = self.next_segment.fetch_add(1, Ordering::Relaxed);
        let replaced: Vec<u64> = inputs.iter().map(|s| s.no).collect();
        let mut readers = inputs
            .iter()
            .map(|s| s.records())
            .collect::<Result<Vec<_>>>()?;
        let mut heads = readers
            .iter_mut()
            .map(|r| r.next())
            .collect::<Result<Vec<_>>>()?;
        let merged = std::iter::from_fn(|| {
            // The lowest id; of equal ones, the newest input's (look-ups prefer it too).
            let (i, _) = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|(id, _)| (i, *id)))
                .max_by_key(|&(i, id)| (std::cmp::Reverse(id), i))?;
            let (id, key) = heads[i].take()?;
            // The same id in several inputs (a crash between a merge and the deletion of
            // what it replaced): kept once.
            for (j, head) in heads.iter_mut().enumerate() {
                if j != i && matches!(head, Some((other, _)) if *other == id) {
                    *head = None;
                    match readers[j].next() {
                        Ok(h) => *head = h,
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
            match readers[i].next() {
                Ok(h) => heads[i] = h,
                Err(e) => return Some(Err(e)),
            }
            Some(Ok((id, key)))
        });
        let covers = inputs.iter().map(|s| s.covers).max().unwrap_or(0);
        let segment = write_segment(&self.dir, no, level, covers, &replaced, merged)?;
        self.install(Arc::new(segment), &replaced);
        for input in inputs {
            remove(&input.path)?;
        }
        Ok(())
    }

    /// Links held in memory, and segments on disk (for tests and the benchmark's notes).
    #[cfg(test)]
    pub(super) fn shape(&self) -> (usize, Vec<u8>) {
        let live = lock(&self.live);
        let recent = live.recent.len() + live.frozen.as_ref().map_or(0, |f| f.len());
        (recent, self.segments().iter().map(|s| s.level).collect())
    }
}

impl Drop for IdIndex {
    fn drop(&mut self) {
        // Links made after the last flush (the store writes them before its closing flush,
        // so rarely any), in records as every flush writes them. (A batch handed over now is
        // not written out: its links are in the journal.)
        let _ = self.write_journal();
    }
}

/// Moves the links being written out back with those held.
fn thaw(live: &mut Live) {
    if let Some(frozen) = live.frozen.take() {
        let links = Arc::try_unwrap(frozen).unwrap_or_else(|shared| (*shared).clone());
        for (id, key) in links {
            live.recent.entry(id).or_insert(key);
        }
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot remove", path, e)),
    }
}

/// Bytes of links in one journal record, at most (but for one longer link).
const RECORD: usize = 8 * 1024;

/// Where the journal record starting at `from` in `pending` ends: after the last whole link
/// that keeps it within [`RECORD`] bytes (at least one link).
fn record_end(pending: &[u8], from: usize) -> usize {
    let mut end = 0;
    for link in links(&pending[from..]) {
        match link {
            Ok((_, _, next)) if end == 0 || next <= RECORD => end = next,
            Ok(_) => break,
            // (Never: `pending` holds whole links.) Written as it is rather than looped on.
            Err(_) => return pending.len(),
        }
    }
    from + end
}

fn record_no(tree: &'static str, key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        message: "a journal record's key is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn read_record(bytes: &[u8], recent: &mut Links) -> std::result::Result<(), String> {
    for link in links(bytes) {
        let (id, key, _) = link.map_err(|at| format!("a link is cut short at byte {at}"))?;
        recent.insert(id, String::from_utf8_lossy(key).into());
    }
    Ok(())
}

/// Writes a segment from records sorted by id, under a `.tmp` name first.
fn write_segment(
    dir: &Path,
    no: u64,
    level: u8,
    covers: u64,
    replaced: &[u64],
    records: impl Iterator<Item = Result<(u128, impl AsRef<str>)>>,
) -> Result<Segment> {
    let path = segment_path(dir, no);
    let tmp = path.with_extension("tmp");
    let (sparse, blocks_end, last_id) =
        match write_segment_file(&tmp, level, covers, replaced, records) {
            Ok(written) => written,
            Err(e) => {
                // Not left to pile up while a failing disk is retried.
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
    std::fs::rename(&tmp, &path).map_err(|e| io_error("cannot rename", &tmp, e))?;
    sync_dir(dir)?;
    let file = File::open(&path).map_err(|e| io_error("cannot open", &path, e))?;
    Ok(Segment {
        no,
        level,
        covers,
        path,
        file,
        sparse,
        blocks_end,
        last_id,
    })
}

/// A segment's sparse index, end of its blocks and last id.
type Written = (Vec<(u128, u64)>, u64, u128);

/// Writes and syncs a segment's file at `tmp`.
fn write_segment_file(
    tmp: &Path,
    level: u8,
    covers: u64,
    replaced: &[u64],
    records: impl Iterator<Item = Result<(u128, impl AsRef<str>)>>,
) -> Result<Written> {
    let file = File::create(tmp).map_err(|e| io_error("cannot create", tmp, e))?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut header = Vec::new();
    header.extend_from_slice(MAGIC);
    header.push(level);
    header.extend_from_slice(&covers.to_be_bytes());
    header.extend_from_slice(&(replaced.len() as u32).to_be_bytes());
    for r in replaced {
        header.extend_from_slice(&r.to_be_bytes());
    }
    let write_err = |e| io_error("cannot write", tmp, e);
    out.write_all(&header).map_err(write_err)?;
    let mut at = header.len() as u64;
    let mut block_start = at;
    let mut sparse: Vec<(u128, u64)> = Vec::new();
    let mut record = Vec::new();
    let mut last_id = 0;
    for item in records {
        let (id, key) = item?;
        if sparse.is_empty() || (at - block_start) as usize >= BLOCK {
            sparse.push((id, at));
            block_start = at;
        }
        record.clear();
        put_record(&mut record, id, key.as_ref());
        out.write_all(&record).map_err(write_err)?;
        at += record.len() as u64;
        last_id = id;
    }
    let blocks_end = at;
    let mut footer = Vec::with_capacity(sparse.len() * 24 + 40);
    for (id, offset) in &sparse {
        footer.extend_from_slice(&id.to_be_bytes());
        footer.extend_from_slice(&offset.to_be_bytes());
    }
    footer.extend_from_slice(&(sparse.len() as u64).to_be_bytes());
    footer.extend_from_slice(&blocks_end.to_be_bytes());
    footer.extend_from_slice(&last_id.to_be_bytes());
    // Over the header too: a damaged `covers` would have open remove journal records.
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.update(&footer);
    footer.extend_from_slice(&crc.finalize().to_be_bytes());
    footer.extend_from_slice(END_MAGIC);
    out.write_all(&footer).map_err(write_err)?;
    let file = out
        .into_inner()
        .map_err(|e| io_error("cannot write", tmp, e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    Ok((sparse, blocks_end, last_id))
}

/// Trailer: sparse count (8), blocks end (8), last id (16), crc (4), end magic (8).
const TRAILER: usize = 8 + 8 + 16 + 4 + 8;

impl Segment {
    /// Opens a segment, reading its header and sparse index: `(segment, replaced)`.
    fn open(dir: &Path, no: u64) -> Result<(Segment, Vec<u64>)> {
        let path = segment_path(dir, no);
        let file = File::open(&path).map_err(|e| io_error("cannot open", &path, e))?;
        let read_err = |e| io_error("cannot read", &path, e);
        let len = file.metadata().map_err(read_err)?.len();
        let read = |at: u64, n: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, at)
                .map_err(|e| io_error("cannot read", &path, e))?;
            Ok(buf)
        };
        if len < (TRAILER + 21) as u64 {
            return Err(corrupt(
                &path,
                "shorter than a segment's header and trailer",
            ));
        }
        let head = read(0, 21)?;
        if &head[..8] != MAGIC {
            return Err(corrupt(&path, "not a recuerda index segment"));
        }
        let level = head[8];
        let covers = u64::from_be_bytes(head[9..17].try_into().unwrap_or_default());
        let n_replaced = u32::from_be_bytes(head[17..21].try_into().unwrap_or_default()) as u64;
        let replaced_bytes = read(21, (n_replaced * 8).min(len) as usize)?;
        if replaced_bytes.len() as u64 != n_replaced * 8 {
            return Err(corrupt(&path, "its header is longer than the file"));
        }
        let replaced = replaced_bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let trailer = read(len - TRAILER as u64, TRAILER)?;
        if &trailer[TRAILER - 8..] != END_MAGIC {
            return Err(corrupt(&path, "its trailer is missing"));
        }
        let n = u64::from_be_bytes(trailer[..8].try_into().unwrap_or_default());
        let blocks_end = u64::from_be_bytes(trailer[8..16].try_into().unwrap_or_default());
        let last_id = u128::from_be_bytes(trailer[16..32].try_into().unwrap_or_default());
        let crc = u32::from_be_bytes(trailer[32..36].try_into().unwrap_or_default());
        let sparse_len = n.checked_mul(24).filter(|&l| l + (TRAILER as u64) <= len);
        let Some(sparse_len) = sparse_len else {
            return Err(corrupt(&path, "its index is longer than the file"));
        };
        let footer_at = len - TRAILER as u64 - sparse_len;
        let mut footer = read(footer_at, sparse_len as usize + TRAILER - 12)?;
        let mut check = crc32fast::Hasher::new();
        check.update(&head);
        check.update(&replaced_bytes);
        check.update(&footer);
        if check.finalize() != crc || blocks_end > footer_at {
            return Err(corrupt(&path, "its index fails its checksum"));
        }
        footer.truncate(sparse_len as usize);
        let sparse = footer
            .chunks_exact(24)
            .map(|c| {
                (
                    u128::from_be_bytes(c[..16].try_into().unwrap_or_default()),
                    u64::from_be_bytes(c[16..].try_into().unwrap_or_default()),
                )
            })
            .collect();
        let segment = Segment {
            no,
            level,
            covers,
            path,
            file,
            sparse,
            blocks_end,
            last_id,
        };
        Ok((segment, replaced))
    }

    fn find(&self, id: u128) -> Result<Option<String>> {
        let mut found = HashMap::new();
        self.range(id, id, &mut found)?;
        Ok(found.remove(&id))
    }

    /// Adds the links from `lo` to `hi` to `found` (keeping one already there).
    fn range(&self, lo: u128, hi: u128, found: &mut HashMap<u128, String>) -> Result<()> {
        let Some(first) = self.sparse.first() else {
            return Ok(());
        };
        if hi < first.0 || lo > self.last_id {
            return Ok(());
        }
        let mut block = self
            .sparse
            .partition_point(|(first, _)| *first <= lo)
            .max(1)
            - 1;
        while let Some(&(_, start)) = self.sparse.get(block) {
            let end = self
                .sparse
                .get(block + 1)
                .map_or(self.blocks_end, |next| next.1);
            let mut buf = vec![0; (end - start) as usize];
            self.file
                .read_exact_at(&mut buf, start)
                .map_err(|e| io_error("cannot read", &self.path, e))?;
            for link in links(&buf) {
                let (id, key, _) =
                    link.map_err(|_| corrupt(&self.path, "a record runs past its block"))?;
                if id > hi {
                    return Ok(());
                }
                if id >= lo {
                    found
                        .entry(id)
                        .or_insert_with(|| String::from_utf8_lossy(key).into_owned());
                }
            }
            block += 1;
        }
        Ok(())
    }

    /// The segment's records in id order (for a merge).
    fn records(&self) -> Result<SegmentRecords> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| io_error("cannot read", &self.path, e))?;
        let start = self.sparse.first().map_or(self.blocks_end, |s| s.1);
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(start))
            .map_err(|e| io_error("cannot read", &self.path, e))?;
        Ok(SegmentRecords {
            reader,
            left: self.blocks_end - start,
            path: self.path.clone(),
        })
    }
}

struct SegmentRecords {
    reader: BufReader<File>,
    left: u64,
    path: PathBuf,
}

impl SegmentRecords {
    fn next(&mut self) -> Result<Option<(u128, String)>> {
        if self.left == 0 {
            return Ok(None);
        }
        let err = |e| io_error("cannot read", &self.path, e);
        let mut head = [0u8; 18];
        self.reader.read_exact(&mut head).map_err(err)?;
        let id = u128::from_be_bytes(head[..16].try_into().unwrap_or_default());
        let len = u16::from_be_bytes([head[16], head[17]]) as usize;
        let mut key = vec![0; len];
        self.reader.read_exact(&mut key).map_err(err)?;
        self.left = self.left.saturating_sub(18 + len as u64);
        Ok(Some((id, String::from_utf8_lossy(&key).into_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::counted::OpCounts;
    use super::*;

    const DIR: &str = "msgids";

    /// An index on a sled store of its own in `dir`.
    struct Opened {
        ids: IdIndex,
        db: sled::Db,
    }

    fn open(dir: &Path) -> Opened {
        let db = open_db(dir);
        let journal = Tree::open(&db, "msgid_journal", &Arc::new(OpCounts::default())).unwrap();
        Opened {
            ids: IdIndex::open(dir, DIR, journal, Default::default()).unwrap(),
            db,
        }
    }

    /// sled's threads let go of a closed store's lock a moment after it is dropped.
    fn open_db(dir: &Path) -> sled::Db {
        for _ in 0..100 {
            if let Ok(db) = sled::Config::new().path(dir).open() {
                return db;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sled::Config::new().path(dir).open().unwrap()
    }

    impl Opened {
        /// What the flusher does, in line: the journal record, then the segment if one is due.
        fn flush(&self) {
            if let Some(batch) = self.ids.write_journal().unwrap() {
                self.ids.build(batch).unwrap();
            }
            self.db.flush().unwrap();
        }

        fn close(self) {
            let Opened { ids, db } = self;
            drop(ids);
            db.flush().unwrap();
        }

        fn journal_records(&self) -> usize {
            let journal = self.db.open_tree("msgid_journal").unwrap();
            journal.len() - usize::from(journal.contains_key(COVERED_MARK).unwrap())
        }
    }

    fn id(n: u64) -> u128 {
        // Spread over the id space, as random UUIDs are.
        (n as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | 1
    }

    fn key(n: u64) -> String {
        format!("reply-{n}:confirm:0")
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn assert_all_found(ids: &IdIndex, n: u64) {
        for i in 0..n {
            assert_eq!(ids.get(id(i)).unwrap(), Some(key(i)), "link {i}");
        }
        assert_eq!(ids.get(id(n + 1)).unwrap(), None);
        assert_eq!(ids.get(0).unwrap(), None);
        assert_eq!(ids.get(u128::MAX).unwrap(), None);
    }

    #[test]
    fn links_are_found_in_memory_and_after_a_reopen_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path());
        for i in 0..100 {
            o.ids.link(id(i), &key(i)).unwrap();
        }
        assert_all_found(&o.ids, 100);
        o.flush();
        // Linked after the last flush: written when the index is dropped.
        o.ids.link(id(100), &key(100)).unwrap();
        o.close();
        let o = open(dir.path());
        assert_all_found(&o.ids, 101);
        assert_eq!(o.ids.shape(), (101, vec![]));
        assert_eq!(o.journal_records(), 2);
    }

    #[test]
    fn held_links_are_written_out_as_segments_and_merged_four_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        // Flushed every 1,000 links: each segment takes the first multiple of 1,000 at or
        // over SEGMENT_LINKS; five of them, and ten links more.
        let per = SEGMENT_LINKS.div_ceil(1000) as u64 * 1000;
        let n = per * 5 + 10;
        let o = open(dir.path());
        for i in 0..n {
            o.ids.link(id(i), &key(i)).unwrap();
            if i % 1000 == 999 {
                o.flush();
            }
        }
        o.flush();
        let (held, levels) = o.ids.shape();
        assert_eq!(held, 10);
        assert_eq!(levels, vec![0, 1], "four level-0 segments merged into one");
        assert_all_found(&o.ids, n);
        assert_eq!(
            o.journal_records(),
            1,
            "records covered by a segment are removed"
        );
        o.close();
        let names = files(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        let o = open(dir.path());
        assert_all_found(&o.ids, n);
        assert_eq!(o.ids.shape(), (10, vec![0, 1]));
    }

    /// An index in `dir` whose first links (how many: the second value) are in a segment.
    fn with_a_segment(dir: &Path) -> (Opened, u64) {
        let n = SEGMENT_LINKS as u64 + 5;
        let o = open(dir);
        for i in 0..n {
            o.ids.link(id(i), &key(i)).unwrap();
        }
        o.flush();
        (o, n)
    }

    /// Segments missing from the folder (a restore without it) are noticed at open, and
    /// no longer once their links are made again.
    #[test]
    fn segments_missing_from_the_folder_are_noticed_until_made_good() {
        let dir = tempfile::tempdir().unwrap();
        let (o, n) = with_a_segment(dir.path());
        assert!(!o.ids.lost_links());
        o.close();
        let o = open(dir.path());
        assert!(!o.ids.lost_links(), "every segment is there");
        assert_all_found(&o.ids, n);
        o.close();

        std::fs::remove_dir_all(dir.path().join(DIR)).unwrap();
        let o = open(dir.path());
        assert!(o.ids.lost_links());
        assert_eq!(o.ids.get(id(0)).unwrap(), None, "its segment is gone");
        o.close();
        let o = open(dir.path());
        assert!(o.ids.lost_links(), "still, until the links are made again");
        // What the store's link check does: the links again, then the word that they are.
        o.ids.link(id(0), &key(0)).unwrap();
        o.flush();
        o.ids.links_made_again().unwrap();
        assert!(!o.ids.lost_links());
        o.close();
        let o = open(dir.path());
        assert!(!o.ids.lost_links());
        assert_eq!(o.ids.get(id(0)).unwrap(), Some(key(0)));
        o.close();
    }

    /// A journal insert that fails keeps its links for the next flush.
    #[test]
    fn links_of_a_failed_journal_write_are_written_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path());
        o.ids.link(1, "a").unwrap();
        super::super::counted::FAIL_NEXT_INSERT.with(|f| f.set(true));
        assert!(o.ids.write_journal().is_err());
        o.ids.link(2, "b").unwrap();
        o.flush();
        assert_eq!(o.journal_records(), 1, "one record, with both");
        o.close();
        let o = open(dir.path());
        assert_eq!(o.ids.get(1).unwrap().as_deref(), Some("a"));
        assert_eq!(o.ids.get(2).unwrap().as_deref(), Some("b"));
    }

    /// Many links between two flushes are written as several small records (sled keeps a
    /// large value in a blob file it does not sync), and read back whole.
    #[test]
    fn a_burst_of_links_is_journaled_in_small_records() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path());
        for i in 0..3000 {
            o.ids.link(id(i), &key(i)).unwrap();
        }
        o.flush();
        let journal = o.db.open_tree("msgid_journal").unwrap();
        let sizes: Vec<usize> = journal.iter().map(|kv| kv.unwrap().1.len()).collect();
        assert!(sizes.len() > 5, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= RECORD), "{sizes:?}");
        drop(journal);
        o.close();
        let o = open(dir.path());
        assert_all_found(&o.ids, 3000);
    }

    /// A range (one mobile's messages) is found across memory and segments, whole, each
    /// link once, however the blocks fall.
    #[test]
    fn a_range_is_found_across_memory_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path());
        let group = |g: u64, n: u64| (u128::from(g) << 64) | u128::from(n);
        let mut expected: Vec<String> = Vec::new();
        let n = SEGMENT_LINKS.div_ceil(1000) as u64 * 1000 * 2 + 100;
        for i in 0..n {
            // Group 7 gets every 50th link: spread over both segments and memory.
            let g = if i % 50 == 0 { 7 } else { i % 13 + 100 };
            let k = key(i);
            if g == 7 {
                expected.push(k.clone());
            }
            o.ids.link(group(g, id(i) as u64), &k).unwrap();
            if i % 1000 == 999 {
                o.flush();
            }
        }
        // Linked twice (in a segment and in memory): listed once.
        o.ids.link(group(7, id(0) as u64), &key(0)).unwrap();
        let (held, levels) = o.ids.shape();
        assert!(held > 0 && levels.len() == 2, "{held} {levels:?}");
        let mut found = o.ids.range(group(7, 0), group(7, u64::MAX)).unwrap();
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
        assert!(o
            .ids
            .range(group(8, 0), group(8, u64::MAX))
            .unwrap()
            .is_empty());
        let everything = o.ids.range(0, u128::MAX).unwrap();
        assert_eq!(everything.len() as u64, n);
    }

    #[test]
    fn a_crash_s_leftovers_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (o, n) = with_a_segment(dir.path());
        o.flush();
        for i in n..n + 3 {
            o.ids.link(id(i), &key(i)).unwrap();
        }
        // A crash before the covered records' removal was on disk, and mid-segment.
        o.db.open_tree("msgid_journal")
            .unwrap()
            .insert(0u64.to_be_bytes(), &[])
            .unwrap();
        o.close();
        std::fs::write(
            dir.path().join(DIR).join("segment-00000000000000ff.tmp"),
            b"x",
        )
        .unwrap();

        let o = open(dir.path());
        assert_all_found(&o.ids, n + 3);
        assert_eq!(o.ids.shape(), (3, vec![0]));
        assert_eq!(o.journal_records(), 1, "the covered record is removed");
        let names = files(dir.path());
        assert_eq!(names, ["segment-0000000000000001"]);
        o.close();
    }

    #[test]
    fn a_merge_cut_short_before_deleting_its_inputs_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let n = (SEGMENT_LINKS * 4) as u64;
        let kept = dir.path().join("kept");
        let o = open(dir.path());
        for i in 0..n {
            o.ids.link(id(i), &key(i)).unwrap();
            if i % 4096 == 4095 {
                o.flush();
                // A copy of the first level-0 segment, as if the merge's crash had left it.
                if !kept.exists() {
                    if let Some(s) = o.ids.segments().first() {
                        std::fs::copy(&s.path, &kept).unwrap();
                    }
                }
            }
        }
        o.flush();
        assert_eq!(o.ids.shape().1, vec![1]);
        o.close();
        std::fs::copy(&kept, segment_path(&dir.path().join(DIR), 1)).unwrap();
        let o = open(dir.path());
        assert_eq!(o.ids.shape().1, vec![1], "the replaced segment is deleted");
        assert_all_found(&o.ids, n);
        assert_eq!(files(dir.path()).len(), 1);
    }

    #[test]
    fn a_damaged_segment_is_said_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path());
        for i in 0..SEGMENT_LINKS as u64 {
            o.ids.link(id(i), &key(i)).unwrap();
        }
        o.flush();
        o.flush();
        o.close();
        let path = segment_path(&dir.path().join(DIR), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - TRAILER - 5;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let db = open_db(dir.path());
        let journal = Tree::open(&db, "msgid_journal", &Arc::new(OpCounts::default())).unwrap();
        let err = IdIndex::open(dir.path(), DIR, journal, Default::default())
            .err()
            .expect("opened a damaged segment");
        let text = err.to_string();
        assert!(
            text.contains("segment-0000000000000001") && text.contains("checksum"),
            "{text}"
        );
    }
}

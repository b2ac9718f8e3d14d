//! Where log lines go: a shared buffer that a background thread writes to stderr in batches.
//!
//! tracing-appender's non-blocking writer (used before) woke its thread for every line, and on
//! a busy server that thread wrote each line on its own: a futex wake, a context switch and a
//! `write` per line, two lines per reply. Here a line is appended to the buffer under a lock
//! and nobody is woken, except by the first line after the buffer was written out: the thread
//! then lets the burst gather for [`GATHER`] before one `write`. A warning or an error is not
//! kept waiting: it has the buffer written at once (a crash right after it must not take it
//! along; routine lines may go with a SIGKILL, as queued lines always could). An idle
//! server's thread sleeps until a line comes (no timer).
//!
//! Nothing is dropped: past `HIGH_WATER` the writer wakes the thread at once, and past
//! `LIMIT` a writer waits for the thread to take the buffer (the back-pressure a full queue
//! used to give). Dropping the [`LogGuard`] has the thread write one last batch (waiting at
//! most `LAST_BATCH_WAIT`: stderr may be a pipe nobody reads); writers that come later wait
//! for that batch, then write to stderr themselves, as they do if the thread could not start
//! or died.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a burst of lines gathers before it is written (how late a line may appear).
pub const GATHER: Duration = Duration::from_millis(20);
/// Buffered bytes past which the thread writes at once.
const HIGH_WATER: usize = 256 * 1024;
/// Buffered bytes past which a writer waits for the thread to take the buffer.
const LIMIT: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Lines to write, or the stop.
    wake: Condvar,
    /// The thread took the buffer.
    drained: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// The guard was dropped: the thread writes what is left and ends.
    stop: bool,
    /// The thread has ended (or never started): writers write to stderr themselves.
    done: bool,
    /// A warning or an error is in the buffer: write it now.
    urgent: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a partial line in the buffer.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer the log subscriber writes each formatted line to.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
    /// This writer's line is a warning or an error.
    urgent: bool,
}

/// Writes out the lines still buffered, and stops the thread, when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A sink writing to stderr, and the guard that flushes it.
pub fn stderr_sink() -> (LogSink, LogGuard) {
    sink(GATHER, |bytes| {
        let mut err = std::io::stderr().lock();
        // Nowhere to report a failed write to stderr.
        let _ = err.write_all(bytes);
        let _ = err.flush();
    })
}

fn sink(gather: Duration, out: impl Fn(&[u8]) + Send + 'static) -> (LogSink, LogGuard) {
    let shared = Arc::new(Shared::default());
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("recuerda-log".into())
        .spawn(move || write_batches(&thread_shared, gather, out))
        .ok();
    if thread.is_none() {
        shared.state().done = true;
    }
    (
        LogSink {
            shared: shared.clone(),
            urgent: false,
        },
        LogGuard { shared, thread },
    )
}

fn write_batches(shared: &Shared, gather_for: Duration, out: impl Fn(&[u8])) {
    // However the thread ends (its last batch written, or a panic), writers are told to write
    // for themselves, and none stays waiting for it.
    struct Done<'a>(&'a Shared);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.state().done = true;
            self.0.drained.notify_all();
        }
    }
    let _done = Done(shared);
    let mut spare = Vec::new();
    loop {
        let mut state = shared.state();
        while state.buf.is_empty() && !state.stop {
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let stop = state.stop;
        let gather = |s: &mut State| !s.stop && !s.urgent && s.buf.len() < HIGH_WATER;
        if gather(&mut state) {
            // Let the burst gather: one write for it instead of one per line.
            state = shared
                .wake
                .wait_timeout_while(state, gather_for, gather)
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        // Stopped since (the guard went while the burst gathered): this is the last batch.
        let stop = stop || state.stop;
        state.urgent = false;
        std::mem::swap(&mut state.buf, &mut spare);
        drop(state);
        shared.drained.notify_all();
        if !spare.is_empty() {
            out(&spare);
        }
        if stop {
            // Writers that saw the stop wait for `done` (set by `_done`), then write
            // themselves: after this batch, never before it, and never forever.
            return;
        }
        spare.clear();
        // A burst's buffer is kept for the next one, but not a flood's.
        if spare.capacity() > HIGH_WATER {
            spare = Vec::new();
        }
    }
}

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.state();
        // Wait for the thread: it is behind (lines stay in order, memory bounded), or it is
        // writing its last batch.
        while !state.done && (state.stop || state.buf.len() >= LIMIT) {
            self.shared.wake.notify_one();
            state = self
                .shared
                .drained
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.done {
            drop(state);
            std::io::stderr().write_all(bytes)?;
            return Ok(bytes.len());
        }
        let was_empty = state.buf.is_empty();
        let was_urgent = state.urgent;
        state.buf.extend_from_slice(bytes);
        state.urgent |= self.urgent;
        let len = state.buf.len();
        drop(state);
        // Only what changes the thread's mind wakes it (a wake-up is a system call).
        let crossed_high_water = len >= HIGH_WATER && len - bytes.len() < HIGH_WATER;
        if was_empty || (self.urgent && !was_urgent) || crossed_high_water {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;
    fn make_writer(&'a self) -> LogSink {
        self.clone()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LogSink {
        LogSink {
            shared: self.shared.clone(),
            // Levels order by verbosity: ERROR < WARN < INFO.
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// How long the guard waits for the last batch: stderr may be a pipe nobody reads.
const LAST_BATCH_WAIT: Duration = Duration::from_secs(2);

impl Drop for LogGuard {
    fn drop(&mut self) {
        let state = {
            let mut state = self.shared.state();
            state.stop = true;
            state
        };
        self.shared.wake.notify_one();
        let (state, _) = self
            .shared
            .drained
            .wait_timeout_while(state, LAST_BATCH_WAIT, |s| !s.done)
            .unwrap_or_else(|e| e.into_inner());
        let done = state.done;
        drop(state);
        // Past the wait the thread is left behind (blocked on stderr), not waited for.
        if let Some(thread) = self.thread.take().filter(|_| done) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn collecting(gather: Duration) -> (LogSink, LogGuard, Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(AtomicUsize::new(0));
        let (o, w) = (out.clone(), writes.clone());
        let (sink, guard) = sink(gather, move |bytes| {
            o.lock().unwrap().extend_from_slice(bytes);
            w.fetch_add(1, Ordering::Relaxed);
        });
        (sink, guard, out, writes)
    }

    /// A burst of lines from several threads is written in a few batches, in the order the
    /// lines were written, and nothing is lost; what is pending when the guard drops is
    /// written then.
    #[test]
    fn lines_are_batched_in_order_and_none_is_lost() {
        let (sink, guard, out, writes) = collecting(GATHER);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        sink.write_all(format!("t{t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 8_000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..2_000).collect::<Vec<_>>(),
                "thread {t}'s lines in order"
            );
        }
        assert!(
            writes.load(Ordering::Relaxed) < 100,
            "{} writes for 8,000 lines",
            writes.load(Ordering::Relaxed)
        );
    }

    /// A warning is written at once, taking the routine lines before it along, in order: with
    /// bursts gathering for a minute here, a routine line alone waits, a warning does not.
    #[test]
    fn a_warning_is_written_at_once() {
        let (mut sink, _guard, out, _) = collecting(Duration::from_secs(60));
        sink.write_all(b"routine\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(out.lock().unwrap().is_empty(), "a routine line gathers");
        let mut urgent = LogSink {
            shared: sink.shared.clone(),
            urgent: true,
        };
        let start = std::time::Instant::now();
        urgent.write_all(b"warning\n").unwrap();
        while out.lock().unwrap().len() < b"routine\nwarning\n".len() {
            assert!(start.elapsed() < Duration::from_secs(2), "never written");
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(out.lock().unwrap().as_slice(), b"routine\nwarning\n");
    }

    /// A guard dropped while other threads keep logging still returns, with every line
    /// written once, in each thread's order.
    #[test]
    fn the_guard_returns_while_others_keep_logging() {
        let (sink, guard, out, _) = collecting(GATHER);
        let logger = {
            let mut sink = sink.clone();
            // Until the thread is done (then a line would go to the real stderr: at most
            // one does).
            std::thread::spawn(move || {
                let mut i = 0;
                while !sink.shared.state().done {
                    sink.write_all(format!("line {i}\n").as_bytes()).unwrap();
                    i += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        logger.join().unwrap();
        // The lines before the stop went to `out`, all of them, in order.
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let numbers: Vec<usize> = text
            .lines()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!(!numbers.is_empty());
        assert_eq!(numbers, (0..numbers.len()).collect::<Vec<_>>());
    }

    /// If the thread dies, writers write for themselves: none waits for it.
    #[test]
    fn a_dead_thread_blocks_no_writer() {
        let (mut sink, _guard) = sink(Duration::ZERO, |_| panic!("stderr is gone"));
        sink.write_all(b"the line that kills the thread\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sink.shared.state().done {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Written to the real stderr, at once.
        sink.write_all(b"log_sink test: a line after the log thread died\n")
            .unwrap();
    }

    /// A lone line is written within the gathering time, without waiting for more.
    #[test]
    fn a_lone_line_appears_soon() {
        let (mut sink, _guard, out, _) = collecting(GATHER);
        sink.write_all(b"hola\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while out.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(out.lock().unwrap().as_slice(), b"hola\n");
    }
}

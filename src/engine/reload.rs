//! Hot reload: the rules and templates folders are watched (file-system events, plus a
//! periodic comparison of their contents for mounts that deliver no events); a change is
//! reloaded, and an invalid one keeps the last good rules running.

use super::Engine;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// A fingerprint of the YAML files in `dirs`: names, sizes and contents.
fn fingerprint(dirs: &[&Path]) -> u64 {
    let mut h = DefaultHasher::new();
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            f.hash(&mut h);
            // Bounded read: a huge file dropped in the folder is refused by the loader, and
            // must not be read whole into memory on every poll either. Its size still counts.
            if let Ok(meta) = std::fs::metadata(&f) {
                meta.len().hash(&mut h);
            }
            let mut bytes = Vec::new();
            if let Ok(file) = std::fs::File::open(&f) {
                let _ = file
                    .take(crate::rules::load::MAX_FILE_BYTES + 1)
                    .read_to_end(&mut bytes);
            }
            bytes.hash(&mut h);
        }
    }
    h.finish()
}

impl Engine {
    /// Watches the rules and templates folders until shutdown.
    pub(crate) async fn run_watcher(&self) {
        use notify::Watcher;
        let rules_dir = self.config.rules_dir.clone();
        let templates_dir = self.config.templates_dir.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Editors save by renaming over the file: watch the folders, not the files.
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => {
                for dir in [&rules_dir, &templates_dir] {
                    if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                        tracing::warn!(folder = %dir.display(), error = %e, "cannot watch folder; relying on periodic checks");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; relying on periodic checks");
                None
            }
        };
        let mut shutdown = self.shutdown_signal();
        let mut last = fingerprint(&[&rules_dir, &templates_dir]);
        loop {
            tokio::select! {
                _ = rx.recv() => {
                    // Let a burst of events (an editor's save, a `git pull`) settle first.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(self.config.schedule.reload_poll) => {}
                _ = super::stop_requested(&mut shutdown) => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let now = fingerprint(&[&rules_dir, &templates_dir]);
            if now != last {
                last = now;
                tracing::info!("rules or templates changed on disk: reloading");
                let _ = self.reload_rules();
            }
        }
    }
}

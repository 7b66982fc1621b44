//! The collector's state on disk, so that a restart forgets nothing: a write-ahead log of every
//! change ([`wal`]) and periodic snapshots of the whole state, in a data directory.
//!
//! - `snapshot.bin`: every metric family (series, their counter-reset offsets, windows of every
//!   tier), the prediction–feedback join and the exemplars, each with the LSN of the first logged change it
//!   does not hold. Written to `snapshot.tmp`, synced, then renamed over the old one.
//! - `wal-<lsn>.log`: the changes since; segments older than the last snapshot are removed.
//! - `baselines.bin`: the pinned drift baselines, rewritten at each pin
//!   ([`crate::query::Baselines::keep_in`]).
//! - `LOCK`: held while a collector uses the directory, so that two cannot share it.
//!
//! Start-up loads the snapshot and replays the log. A torn or corrupt record ends the log: it
//! is cut there with a warning. Files of another format version are moved to a `set-aside-*`
//! folder with an error, and the collector starts empty rather than misread them.

pub mod codec;
pub mod snapshot;
pub mod wal;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exemplars::ExemplarRings;
use crate::join::FeedbackJoin;
use crate::store::MetricStore;

/// Where and how often the state is written.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data directory.
    pub dir: PathBuf,
    /// Longest time between snapshots.
    pub snapshot_every: Duration,
    /// Log bytes after which a snapshot is taken sooner.
    pub wal_max_bytes: u64,
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Another collector holds the directory.
    #[error(
        "the data directory {0} is in use by another metrics collector (its LOCK file is held); give each collector its own --data-dir"
    )]
    InUse(PathBuf),
    /// A file could not be read or written.
    #[error("data directory {dir}: {error}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
}

/// The contents of `path`, or `None` when it does not exist.
pub fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `path` whole: `write` fills a temporary file beside it (buffered), which is then
/// synced and renamed over `path`, and the directory synced; a crash leaves the old file or the
/// new one, never a part.
pub fn replace_file<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let written = write(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        wal::sync_dir(dir);
    }
    Ok(written)
}

/// Writes `bytes` to `path` as [`replace_file`] does.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file(path, |out| out.write_all(bytes))
}

/// Moves `path` into a `set-aside-<unix seconds>` folder beside it; returns where it went.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let aside = dir.join(format!("set-aside-{}", crate::otlp::unix_now()));
    std::fs::create_dir_all(&aside)?;
    let to = aside.join(path.file_name().unwrap_or_default());
    std::fs::rename(path, &to)?;
    Ok(to)
}

/// A data directory opened and locked, its files checked, before the store is built.
pub struct Recovery {
    options: Options,
    lock: File,
    started_ns: u64,
}

impl Recovery {
    /// Opens (creating) the data directory and locks it; files of an incompatible version are
    /// set aside.
    pub fn begin(options: Options) -> Result<Recovery, DurableError> {
        let dir = options.dir.clone();
        let io = |error| DurableError::Io {
            dir: dir.clone(),
            error,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(DurableError::InUse(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut started_ns = None;
        let mut incompatible = None;
        match snapshot::read_header(&dir.join(snapshot::FILE)) {
            Ok(Some(header)) => started_ns = Some(header.started_ns),
            Ok(None) => {}
            Err(snapshot::SnapshotError::Incompatible(why)) => incompatible = Some(why),
            Err(snapshot::SnapshotError::Io(e)) => return Err(io(e)),
            Err(snapshot::SnapshotError::Malformed(m)) => {
                incompatible = Some(format!("the snapshot is unreadable ({m})"));
            }
        }
        if incompatible.is_none() {
            for (_, path) in wal::segments(&dir).map_err(io)? {
                let mut f = File::open(&path).map_err(io)?;
                match wal::read_header(&mut f, &path) {
                    Ok(h) => {
                        started_ns.get_or_insert(h.started_ns);
                    }
                    Err(wal::SegmentError::Io(e)) => return Err(io(e)),
                    Err(wal::SegmentError::Incompatible(why)) => {
                        incompatible = Some(why);
                        break;
                    }
                }
            }
        }
        if let Some(why) = incompatible {
            let aside = set_aside_all(&dir).map_err(io)?;
            tracing::error!(
                dir = %dir.display(),
                moved_to = %aside.display(),
                "{why}: the collector does not read it; its files are set aside and the windows start empty"
            );
            started_ns = None;
        }
        Ok(Recovery {
            options,
            lock,
            started_ns: started_ns.unwrap_or_else(now_ns),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// When the state began: cumulative points that started later were counted entirely.
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// Loads the snapshot and replays the log into `store`, `join` and `exemplars`, then logs
    /// every change from now on and takes snapshots in the background.
    pub fn finish(
        self,
        store: &Arc<MetricStore>,
        join: &Arc<FeedbackJoin>,
        exemplars: &Arc<ExemplarRings>,
    ) -> Result<Arc<Durable>, DurableError> {
        let began = Instant::now();
        let dir = self.options.dir.clone();
        let io = |error| DurableError::Io {
            dir: dir.clone(),
            error,
        };
        let path = dir.join(snapshot::FILE);
        let loaded = match snapshot::load(&path, store, join, exemplars) {
            Ok(loaded) => loaded,
            Err(snapshot::SnapshotError::Io(e)) => return Err(io(e)),
            Err(err) => {
                let aside = set_aside_all(&dir).map_err(io)?;
                tracing::error!(dir = %dir.display(), moved_to = %aside.display(), error = %err, "the snapshot cannot be read: its files are set aside and the windows start empty");
                snapshot::Loaded::default()
            }
        };
        let snapshot_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        let (next_lsn, replayed) = replay(&dir, &loaded, store, join, exemplars).map_err(io)?;
        let wal = wal::Wal::open(&dir, next_lsn, self.started_ns).map_err(io)?;
        store.attach_wal(wal.clone());
        join.attach_wal(wal.clone());
        exemplars.attach_wal(wal.clone());
        tracing::info!(
            dir = %dir.display(),
            families = loaded.families.len(),
            replayed,
            seconds = began.elapsed().as_secs_f64(),
            "state restored from the data directory"
        );
        let durable = Arc::new(Durable {
            options: self.options,
            _lock: self.lock,
            wal,
            store: store.clone(),
            join: join.clone(),
            exemplars: exemplars.clone(),
            snapshot_bytes: AtomicU64::new(snapshot_bytes),
            last_snapshot_lsn: AtomicU64::new(loaded.lsn),
            stopping: AtomicBool::new(false),
            snapshots: Mutex::new(()),
            thread: Mutex::new(None),
        });
        let background = durable.clone();
        let handle = std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || background.snapshot_loop())
            .map_err(io)?;
        *durable.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(durable)
    }
}

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Moves the snapshot, the log and the baselines into one `set-aside-*` folder.
fn set_aside_all(dir: &Path) -> std::io::Result<PathBuf> {
    let mut moved = dir.join("set-aside-none");
    let mut paths: Vec<PathBuf> = wal::segments(dir)?.into_iter().map(|(_, p)| p).collect();
    paths.push(dir.join(snapshot::FILE));
    paths.push(dir.join("baselines.bin"));
    for path in paths.into_iter().filter(|p| p.exists()) {
        moved = set_aside(&path)?;
    }
    Ok(moved.parent().map(Path::to_owned).unwrap_or(moved))
}

/// Replays every segment; returns the LSN after the last whole record and the records
/// applied. A torn or corrupt record cuts its segment there; later segments are set aside.
fn replay(
    dir: &Path,
    loaded: &snapshot::Loaded,
    store: &MetricStore,
    join: &FeedbackJoin,
    exemplars: &ExemplarRings,
) -> std::io::Result<(u64, u64)> {
    let segments = wal::segments(dir)?;
    let mut next_lsn = loaded.lsn;
    let mut applied = 0u64;
    let mut skipped = 0u64;
    let mut cut = false;
    for (start, path) in segments {
        if cut {
            let aside = set_aside(&path)?;
            tracing::warn!(segment = %path.display(), moved_to = %aside.display(), "a segment after a cut log is set aside");
            continue;
        }
        let result = wal::read_segment(&path, |lsn, payload| {
            if lsn < loaded.lsn {
                return;
            }
            match apply(lsn, payload, loaded, store, join, exemplars) {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(err) => {
                    skipped += 1;
                    tracing::warn!(lsn, error = %err, "a logged change could not be applied; skipped");
                }
            }
        });
        let (header, ended, end_lsn) = match result {
            Ok(r) => r,
            Err(wal::SegmentError::Io(e)) => return Err(e),
            Err(wal::SegmentError::Incompatible(why)) => {
                // Checked at begin(); a file replaced since is set aside like a torn tail.
                tracing::warn!(segment = %path.display(), "{why}");
                cut = true;
                let _ = set_aside(&path)?;
                continue;
            }
        };
        debug_assert_eq!(header.start_lsn, start);
        next_lsn = next_lsn.max(end_lsn);
        if let wal::Ended::Torn { offset, why } = ended {
            tracing::warn!(
                segment = %path.display(),
                offset,
                "the write-ahead log ends with {why}: cut at the last whole record (changes after it were not written before the collector stopped)"
            );
            File::options().write(true).open(&path)?.set_len(offset)?;
            cut = true;
        }
    }
    if skipped > 0 {
        tracing::warn!(skipped, "logged changes skipped on replay");
    }
    Ok((next_lsn, applied))
}

/// Applies one logged change unless the snapshot already holds it; `true` when applied.
fn apply(
    lsn: u64,
    payload: &[u8],
    loaded: &snapshot::Loaded,
    store: &MetricStore,
    join: &FeedbackJoin,
    exemplars: &ExemplarRings,
) -> Result<bool, codec::Malformed> {
    let mut r = codec::Reader::new(payload);
    let record = r.u8()?;
    // A family's records count from the snapshot's position for that family (or the
    // snapshot's own, for a family created after it).
    let family_from = |name: &str| loaded.family_lsn.get(name).copied().unwrap_or(loaded.lsn);
    if record == crate::store::log::RECORD_POINTS {
        let header = crate::store::log::Header::read(&mut r)?;
        if lsn < family_from(&header.name) {
            return Ok(false);
        }
        store.replay(header, &mut r)?;
        return Ok(true);
    }
    if record == crate::store::log::RECORD_RETIRE {
        let name = r.str()?;
        let cutoff = r.i64()?;
        if lsn < family_from(&name) {
            return Ok(false);
        }
        store.replay_retire(&name, cutoff);
        return Ok(true);
    }
    if record == crate::exemplars::log::RECORD_EXEMPLAR {
        if lsn < loaded.exemplars_lsn {
            return Ok(false);
        }
        exemplars.replay(&mut r)?;
        return Ok(true);
    }
    if lsn < loaded.join_lsn {
        return Ok(false);
    }
    join.replay(record, &mut r)?;
    Ok(true)
}

/// The data directory in use: the log being written and the snapshots being taken.
pub struct Durable {
    options: Options,
    _lock: File,
    wal: Arc<wal::Wal>,
    store: Arc<MetricStore>,
    join: Arc<FeedbackJoin>,
    exemplars: Arc<ExemplarRings>,
    snapshot_bytes: AtomicU64,
    last_snapshot_lsn: AtomicU64,
    stopping: AtomicBool,
    /// Held while a snapshot is written.
    snapshots: Mutex<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Durable {
    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Bytes on disk: the snapshot and the log.
    pub fn disk_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed) + self.wal.disk_bytes()
    }

    fn snapshot_loop(&self) {
        let mut last = Instant::now();
        // After a failure, the next try waits for the interval rather than the log's size.
        let mut failing = false;
        while !self.stopping.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            let logged = self
                .wal
                .next_lsn()
                .saturating_sub(self.last_snapshot_lsn.load(Ordering::Relaxed));
            let due = last.elapsed() >= self.options.snapshot_every
                || (logged >= self.options.wal_max_bytes && !failing);
            if due && logged > 0 && !self.stopping.load(Ordering::Relaxed) {
                failing = match self.snapshot() {
                    Ok(()) => false,
                    Err(err) => {
                        tracing::error!(dir = %self.options.dir.display(), error = %err, "the snapshot could not be written; the log keeps every change and grows until one is (tried again at the next interval)");
                        true
                    }
                };
                last = Instant::now();
            }
        }
    }

    /// Writes a snapshot of the whole state and removes the log it makes redundant.
    pub fn snapshot(&self) -> std::io::Result<()> {
        let _one = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let began = Instant::now();
        let boundary = self.wal.rotate()?;
        let path = self.options.dir.join(snapshot::FILE);
        let bytes = snapshot::write(
            &path,
            self.wal.started_ns(),
            boundary,
            &self.store,
            &self.join,
            &self.exemplars,
            &self.wal,
        )?;
        self.snapshot_bytes.store(bytes, Ordering::Relaxed);
        self.last_snapshot_lsn.store(boundary, Ordering::Relaxed);
        self.wal.remove_before(boundary)?;
        tracing::debug!(
            bytes,
            seconds = began.elapsed().as_secs_f64(),
            "snapshot written"
        );
        Ok(())
    }

    fn stop_snapshots(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }

    /// Writes and syncs the log appended so far (the flusher does so every 200 ms anyway).
    pub fn sync_log(&self) {
        self.wal.sync();
    }

    /// As a SIGKILL after the log was written: no last snapshot.
    #[cfg(test)]
    fn abandon(&self) {
        self.stop_snapshots();
        self.wal.close();
    }

    /// Stops taking snapshots, writes a last one and syncs the log: nothing received is lost.
    pub fn close(&self) {
        self.stop_snapshots();
        if let Err(err) = self.snapshot() {
            tracing::error!(error = %err, "the last snapshot could not be written; the log holds every change");
        }
        self.wal.close();
    }
}

#[cfg(test)]
mod tests;

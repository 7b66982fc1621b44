//! The write-ahead log: every change to the collector's state, appended in order to segment
//! files before a flusher thread writes them out (every 200 ms, or sooner when a megabyte is
//! waiting) and syncs them to disk (every second).
//!
//! A record is `[length u32][CRC-32 u32][payload]`; its log sequence number (LSN) is its offset
//! in the stream of all records ever written, so a snapshot can say up to which record each
//! part of the state is already included. A segment is named after the LSN it starts at and
//! begins with a header: magic, format version, its first LSN, and when the collector's state
//! began (`started_ns`).
//!
//! A SIGKILL loses what was appended but not yet written (at most the last 200 ms, plus the
//! time a write takes); a clean stop flushes everything.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Magic bytes at the start of every segment.
const MAGIC: &[u8; 8] = b"MCWAL\0\0\0";

/// Version of the segment and record layout; a segment of another version is set aside.
pub const VERSION: u32 = 1;

/// Bytes of a segment's header.
const HEADER_BYTES: u64 = 8 + 4 + 8 + 8;

/// Largest record accepted when reading (a corrupt length is not believed).
const MAX_RECORD: u32 = 256 * 1024 * 1024;

/// Appended bytes waiting for the flusher beyond which appenders wait (a stalled disk slows
/// senders instead of filling memory).
const MAX_PENDING: usize = 64 * 1024 * 1024;

/// Appended bytes that wake the flusher before its 200 ms are up.
const WAKE_PENDING: usize = 1024 * 1024;

/// How often the flusher writes what was appended.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// How often what was written is synced to the disk.
const SYNC_EVERY: Duration = Duration::from_secs(1);

struct Pending {
    bytes: Vec<u8>,
    /// LSN of the next record appended.
    next_lsn: u64,
}

struct Segment {
    file: File,
    start_lsn: u64,
    last_sync: Instant,
    /// Bytes written to it, header included.
    len: u64,
}

/// The log, open for appending.
pub struct Wal {
    dir: PathBuf,
    started_ns: u64,
    pending: Mutex<Pending>,
    /// Wakes the flusher (enough bytes, or stopping) and appenders waiting for room.
    changed: Condvar,
    segment: Mutex<Segment>,
    stopping: AtomicBool,
    /// Bytes of every segment on disk.
    disk_bytes: AtomicU64,
    /// Set when a write or sync failed, so that it is reported once per failure spell.
    failing: AtomicBool,
}

/// Path of the segment that starts at `lsn`.
pub fn segment_path(dir: &Path, lsn: u64) -> PathBuf {
    dir.join(format!("wal-{lsn:020}.log"))
}

/// Segments in `dir`, by their first LSN.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(lsn) = name
            .strip_prefix("wal-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((lsn, path));
        }
    }
    out.sort();
    Ok(out)
}

fn create_segment(dir: &Path, lsn: u64, started_ns: u64) -> std::io::Result<Segment> {
    let path = segment_path(dir, lsn);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&lsn.to_le_bytes());
    header.extend_from_slice(&started_ns.to_le_bytes());
    file.write_all(&header)?;
    file.sync_all()?;
    sync_dir(dir);
    Ok(Segment {
        file,
        start_lsn: lsn,
        last_sync: Instant::now(),
        len: HEADER_BYTES,
    })
}

/// Syncs a directory so that a created or renamed file in it survives a power loss.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Wal {
    /// Opens a new segment in `dir` starting at `next_lsn`, and the flusher thread.
    pub fn open(dir: &Path, next_lsn: u64, started_ns: u64) -> std::io::Result<Arc<Wal>> {
        let segment = create_segment(dir, next_lsn, started_ns)?;
        let on_disk: u64 = segments(dir)?
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let wal = Arc::new(Wal {
            dir: dir.to_owned(),
            started_ns,
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(WAKE_PENDING * 2),
                next_lsn,
            }),
            changed: Condvar::new(),
            segment: Mutex::new(segment),
            stopping: AtomicBool::new(false),
            disk_bytes: AtomicU64::new(on_disk),
            failing: AtomicBool::new(false),
        });
        let flusher = wal.clone();
        std::thread::Builder::new()
            .name("wal-flusher".into())
            .spawn(move || flusher.flush_loop())?;
        Ok(wal)
    }

    /// Appends one record; returns its LSN. Waits while the flusher is far behind.
    pub fn append(&self, payload: &[u8]) -> u64 {
        let crc = crc32fast::hash(payload);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while pending.bytes.len() > MAX_PENDING && !self.stopping.load(Ordering::Relaxed) {
            pending = self
                .changed
                .wait_timeout(pending, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let lsn = pending.next_lsn;
        pending
            .bytes
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        pending.bytes.extend_from_slice(&crc.to_le_bytes());
        pending.bytes.extend_from_slice(payload);
        pending.next_lsn += 8 + payload.len() as u64;
        if pending.bytes.len() >= WAKE_PENDING {
            self.changed.notify_all();
        }
        lsn
    }

    /// The LSN the next record will get: every record before it has been appended.
    pub fn next_lsn(&self) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_lsn
    }

    /// Bytes of every segment on disk, the one being written included.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    /// When the collector's state began.
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// Writes what is pending to the current segment; syncs it when `sync` or a second has
    /// passed since the last sync.
    fn write_pending(&self, segment: &mut Segment, sync: bool) {
        let bytes = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let cap = pending.bytes.capacity().min(MAX_PENDING);
            let out = std::mem::replace(&mut pending.bytes, Vec::with_capacity(cap));
            self.changed.notify_all();
            out
        };
        let mut result = Ok(());
        if !bytes.is_empty() {
            result = segment.file.write_all(&bytes);
            if result.is_ok() {
                segment.len += bytes.len() as u64;
                self.disk_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        if result.is_ok() && (sync || segment.last_sync.elapsed() >= SYNC_EVERY) {
            result = segment.file.sync_data();
            segment.last_sync = Instant::now();
        }
        match result {
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %err,
                        dir = %self.dir.display(),
                        "the write-ahead log cannot be written: points received now are lost at the next restart"
                    );
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %self.dir.display(), "the write-ahead log is written again");
                }
            }
        }
    }

    fn flush_loop(&self) {
        while !self.stopping.load(Ordering::Relaxed) {
            {
                let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if pending.bytes.len() < WAKE_PENDING {
                    drop(
                        self.changed
                            .wait_timeout(pending, FLUSH_EVERY)
                            .unwrap_or_else(|p| p.into_inner()),
                    );
                }
            }
            let mut segment = self.segment.lock().unwrap_or_else(|p| p.into_inner());
            self.write_pending(&mut segment, false);
        }
    }

    /// Writes and syncs everything appended so far, then starts a new segment at the next LSN
    /// and returns that LSN: every record before it is in older segments.
    pub fn rotate(&self) -> std::io::Result<u64> {
        let mut segment = self.segment.lock().unwrap_or_else(|p| p.into_inner());
        // The pending lock is taken inside the segment lock, as by the flusher: records reach
        // the files in LSN order.
        let boundary = {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.next_lsn
        };
        self.write_pending(&mut segment, true);
        let fresh = create_segment(&self.dir, boundary, self.started_ns)?;
        self.disk_bytes.fetch_add(HEADER_BYTES, Ordering::Relaxed);
        *segment = fresh;
        Ok(boundary)
    }

    /// Removes the segments that end at or before `lsn` (a snapshot holds their records).
    pub fn remove_before(&self, lsn: u64) -> std::io::Result<()> {
        let current = self
            .segment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start_lsn;
        let all = segments(&self.dir)?;
        for (i, (start, path)) in all.iter().enumerate() {
            let next_start = all.get(i + 1).map(|(s, _)| *s);
            if *start == current || next_start.is_none_or(|n| n > lsn) {
                continue;
            }
            let len = std::fs::metadata(path).map_or(0, |m| m.len());
            std::fs::remove_file(path)?;
            self.disk_bytes.fetch_sub(
                len.min(self.disk_bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        Ok(())
    }

    /// Writes and syncs everything appended so far.
    pub fn sync(&self) {
        let mut segment = self.segment.lock().unwrap_or_else(|p| p.into_inner());
        self.write_pending(&mut segment, true);
    }

    /// Writes and syncs everything appended, and stops the flusher.
    pub fn close(&self) {
        let mut segment = self.segment.lock().unwrap_or_else(|p| p.into_inner());
        self.stopping.store(true, Ordering::Relaxed);
        self.changed.notify_all();
        self.write_pending(&mut segment, true);
    }
}

/// What reading a segment found.
#[derive(Debug)]
pub struct SegmentHeader {
    /// LSN of its first record.
    pub start_lsn: u64,
    /// When the collector's state began.
    pub started_ns: u64,
}

/// Why a segment cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a segment of this format.
    #[error("{0}")]
    Incompatible(String),
}

/// How reading the records of a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// At the end of the file, after a whole record.
    Clean,
    /// At a record cut short or failing its checksum, which starts at this byte of the file.
    Torn {
        /// Offset of the first bad record in the file.
        offset: u64,
        /// What was wrong.
        why: &'static str,
    },
}

/// Reads the header of the segment at `path`.
pub fn read_header(reader: &mut impl Read, path: &Path) -> Result<SegmentHeader, SegmentError> {
    let mut header = [0u8; HEADER_BYTES as usize];
    if let Err(err) = reader.read_exact(&mut header) {
        return Err(if err.kind() == std::io::ErrorKind::UnexpectedEof {
            SegmentError::Incompatible(format!(
                "{} is shorter than a segment header",
                path.display()
            ))
        } else {
            SegmentError::Io(err)
        });
    }
    if &header[..8] != MAGIC {
        return Err(SegmentError::Incompatible(format!(
            "{} is not a write-ahead log segment of the metrics collector",
            path.display()
        )));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("four bytes"));
    if version != VERSION {
        return Err(SegmentError::Incompatible(format!(
            "{} was written in format version {version}; this collector reads version {VERSION}",
            path.display()
        )));
    }
    Ok(SegmentHeader {
        start_lsn: u64::from_le_bytes(header[12..20].try_into().expect("eight bytes")),
        started_ns: u64::from_le_bytes(header[20..28].try_into().expect("eight bytes")),
    })
}

/// Reads every whole record of the segment at `path`, giving each with its LSN to `apply`.
pub fn read_segment(
    path: &Path,
    mut apply: impl FnMut(u64, &[u8]),
) -> Result<(SegmentHeader, Ended, u64), SegmentError> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let header = read_header(&mut reader, path)?;
    let mut offset = HEADER_BYTES;
    let mut lsn = header.start_lsn;
    let mut payload = Vec::new();
    loop {
        let mut prefix = [0u8; 8];
        match read_full(&mut reader, &mut prefix)? {
            0 => return Ok((header, Ended::Clean, lsn)),
            8 => {}
            _ => {
                let why = "a record header cut short";
                return Ok((header, Ended::Torn { offset, why }, lsn));
            }
        }
        let len = u32::from_le_bytes(prefix[..4].try_into().expect("four bytes"));
        let crc = u32::from_le_bytes(prefix[4..].try_into().expect("four bytes"));
        if len > MAX_RECORD {
            let why = "a record length beyond any record written";
            return Ok((header, Ended::Torn { offset, why }, lsn));
        }
        payload.resize(len as usize, 0);
        if read_full(&mut reader, &mut payload)? < payload.len() {
            let why = "a record cut short";
            return Ok((header, Ended::Torn { offset, why }, lsn));
        }
        if crc32fast::hash(&payload) != crc {
            let why = "a record whose checksum does not match";
            return Ok((header, Ended::Torn { offset, why }, lsn));
        }
        apply(lsn, &payload);
        offset += 8 + u64::from(len);
        lsn += 8 + u64::from(len);
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

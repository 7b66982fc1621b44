//! The spill log: incident writes waiting for PostgreSQL, kept in a local append-only file so
//! that they survive a SIGTERM, a crash or a lost lead while the database is down.
//!
//! Each line is a record: `W <json>` queues a write, `A` says the oldest unacknowledged write
//! reached the database. What the log holds, read from the start, is therefore the queue: every
//! `W` not yet matched by an `A`, in order. When the queue is empty the file is cut to nothing.
//! A torn last line (a crash mid-write) or an unreadable one ends the replay there, with a
//! warning; the rest is never refused.
//!
//! A line reaches the kernel when it is appended (a killed process loses nothing); it is
//! flushed to the disk by [`Spill::sync`], which the writer calls once per cycle rather than
//! once per write (an alert storm queues thousands).
//!
//! One process owns a spill folder: the log is locked while open, and a second replica pointed
//! at the same folder is refused with a message.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why the spill log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The folder or the file could not be used.
    #[error("spill log {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the log.
    #[error(
        "spill log {0} is held by another process: each alert manager replica needs a spill folder of its own"
    )]
    Locked(PathBuf),
}

/// An open spill log.
pub struct Spill {
    file: File,
    path: PathBuf,
    /// Writes appended and not yet acknowledged.
    unacknowledged: usize,
    /// Whether something was appended since the last [`Spill::sync`].
    dirty: bool,
}

/// What [`Spill::open`] found in the log.
pub struct Replay<T> {
    /// The writes still waiting, oldest first.
    pub writes: Vec<T>,
    /// Why the replay stopped before the end of the file, if it did.
    pub cut: Option<String>,
}

impl Spill {
    /// Opens (creating it if needed) the log `wal.log` in `dir`, locks it, and returns the
    /// writes it still holds. The log is rewritten to hold exactly those.
    pub fn open<T: Serialize + DeserializeOwned>(
        dir: &Path,
    ) -> Result<(Spill, Replay<T>), SpillError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SpillError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("wal.log");
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(SpillError::Locked(path)),
            Err(std::fs::TryLockError::Error(err)) => return Err(io(&path)(err)),
        }
        let mut writes = std::collections::VecDeque::new();
        let mut cut = None;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            number += 1;
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) if !line.ends_with('\n') => {
                    cut = Some(format!(
                        "line {number} is torn (the process stopped mid-write)"
                    ));
                    break;
                }
                Ok(_) => {}
                Err(err) => {
                    cut = Some(format!("line {number} could not be read: {err}"));
                    break;
                }
            }
            let record = line.trim_end_matches('\n');
            if record == "A" {
                if writes.pop_front().is_none() {
                    cut = Some(format!("line {number} acknowledges a write never queued"));
                    break;
                }
            } else if let Some(json) = record.strip_prefix("W ") {
                match serde_json::from_str::<T>(json) {
                    Ok(write) => writes.push_back(write),
                    Err(err) => {
                        cut = Some(format!(
                            "line {number} is not a write of this version: {err}"
                        ));
                        break;
                    }
                }
            } else {
                cut = Some(format!("line {number} is not a record"));
                break;
            }
        }
        drop(reader);
        if let Some(reason) = &mut cut {
            // Nothing is lost for good: the log as found is set aside before it is rewritten.
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = dir.join(format!("wal.log.{stamp}.cut"));
            match std::fs::copy(&path, &aside) {
                Ok(_) => reason.push_str(&format!(
                    "; the log as found is kept in {}",
                    aside.display()
                )),
                Err(err) => reason.push_str(&format!("; it could not be set aside: {err}")),
            }
        }
        let mut spill = Spill {
            file,
            path,
            unacknowledged: 0,
            dirty: false,
        };
        // Rewrite the log to hold the queue only: the acknowledged prefix and any torn tail go.
        spill.truncate()?;
        for write in &writes {
            spill.append(write)?;
        }
        spill.sync()?;
        Ok((
            spill,
            Replay {
                writes: writes.into(),
                cut,
            },
        ))
    }

    fn io(&self, source: std::io::Error) -> SpillError {
        SpillError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a write.
    pub fn append<T: Serialize>(&mut self, write: &T) -> Result<(), SpillError> {
        let mut line = b"W ".to_vec();
        serde_json::to_writer(&mut line, write).map_err(|e| self.io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| self.io(e))?;
        self.unacknowledged += 1;
        self.dirty = true;
        Ok(())
    }

    /// Records that the oldest write reached the database; when none is left, the log is cut to
    /// nothing.
    pub fn acknowledge(&mut self) -> Result<(), SpillError> {
        self.unacknowledged = self.unacknowledged.saturating_sub(1);
        if self.unacknowledged == 0 {
            return self.truncate();
        }
        self.file.write_all(b"A\n").map_err(|e| self.io(e))?;
        self.dirty = true;
        Ok(())
    }

    fn truncate(&mut self) -> Result<(), SpillError> {
        self.file.set_len(0).map_err(|e| self.io(e))?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| self.io(e))?;
        self.unacknowledged = 0;
        self.dirty = true;
        Ok(())
    }

    /// Flushes what was appended to the disk.
    pub fn sync(&mut self) -> Result<(), SpillError> {
        if self.dirty {
            self.file.sync_data().map_err(|e| self.io(e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The log's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Spill, Replay<String>) {
        Spill::open::<String>(dir).unwrap()
    }

    #[test]
    fn the_log_replays_what_was_not_acknowledged_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spill, replay) = open(dir.path());
            assert!(replay.writes.is_empty() && replay.cut.is_none());
            for w in ["fired a", "fired b", "resolved a"] {
                spill.append(&w.to_owned()).unwrap();
            }
            spill.acknowledge().unwrap();
        }
        let (mut spill, replay) = open(dir.path());
        assert_eq!(replay.writes, ["fired b", "resolved a"]);
        assert!(replay.cut.is_none());
        spill.acknowledge().unwrap();
        spill.acknowledge().unwrap();
        assert_eq!(spill.bytes(), 0, "an empty queue leaves an empty file");
        drop(spill);
        assert!(open(dir.path()).1.writes.is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_with_a_reason_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("wal.log"),
            "W \"one\"\nW \"two\"\nA\nW \"thr",
        )
        .unwrap();
        let (spill, replay) = open(dir.path());
        assert_eq!(replay.writes, ["two"]);
        assert!(replay.cut.unwrap().contains("line 4 is torn"));
        drop(spill);
        let text = std::fs::read_to_string(dir.path().join("wal.log")).unwrap();
        assert_eq!(text, "W \"two\"\n", "the log is rewritten to the queue");
    }

    #[test]
    fn a_second_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_held, _) = open(dir.path());
        let err = Spill::open::<String>(dir.path()).err().unwrap();
        assert!(err.to_string().contains("folder of its own"), "{err}");
    }
}

//! The snapshot file: a header (magic, format version, when the state began, the log position
//! it starts from, points refused so far), then sections for each metric family (a first one
//! and chunks), the join and the exemplars, each `[type u8][CRC-32 u32][length u64][payload]` and holding the LSN of the first
//! logged change it does not include; a section of type 0 ends the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::codec::{Malformed, Reader, Writer};
use super::wal::Wal;
use crate::exemplars::ExemplarRings;
use crate::join::FeedbackJoin;
use crate::store::log::{kind_byte, kind_of};
use crate::store::{Family, MetricStore, Series, Value};
use crate::window::{Columns, HOUR_STEPS, MINUTE_STEPS, SECOND_STEPS};

/// The snapshot's file name in the data directory.
pub const FILE: &str = "snapshot.bin";

const MAGIC: &[u8; 8] = b"MCSNAP\0\0";

/// Version of the snapshot layout; a snapshot of another version is set aside.
pub const VERSION: u32 = 1;

const END: u8 = 0;
const FAMILY: u8 = 1;
const JOIN: u8 = 2;
/// More of the family before it: whole series or rows.
const CHUNK: u8 = 3;
const EXEMPLARS: u8 = 4;

/// Bytes of a chunk section, about (tests make many small ones).
#[cfg(not(test))]
const CHUNK_BYTES: usize = 1 << 20;
#[cfg(test)]
const CHUNK_BYTES: usize = 100;

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Another format or version.
    #[error("{0}")]
    Incompatible(String),
    /// The bytes do not decode.
    #[error("the snapshot is corrupt: {0}")]
    Malformed(String),
}

impl From<Malformed> for SnapshotError {
    fn from(m: Malformed) -> SnapshotError {
        SnapshotError::Malformed(m.to_string())
    }
}

/// The head of a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// When the state began.
    pub started_ns: u64,
    /// Log position the snapshot starts from.
    pub lsn: u64,
    /// Points refused so far.
    pub refused: u64,
}

/// What a loaded snapshot says about the log.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Log position of the snapshot: changes before it are included, or in no family.
    pub lsn: u64,
    /// Per family, the first logged change it does not include.
    pub family_lsn: HashMap<String, u64>,
    /// The same for the join.
    pub join_lsn: u64,
    /// The same for the exemplars.
    pub exemplars_lsn: u64,
    /// The families' names.
    pub families: Vec<String>,
}

const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 8;

fn parse_header(bytes: &[u8; HEADER_BYTES], path: &Path) -> Result<Header, SnapshotError> {
    if &bytes[..8] != MAGIC {
        return Err(SnapshotError::Incompatible(format!(
            "{} is not a snapshot of the metrics collector",
            path.display()
        )));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("four bytes"));
    if version != VERSION {
        return Err(SnapshotError::Incompatible(format!(
            "the snapshot {} was written in format version {version}; this collector reads version {VERSION}",
            path.display()
        )));
    }
    let u = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    Ok(Header {
        started_ns: u(12),
        lsn: u(20),
        refused: u(28),
    })
}

/// The header of the snapshot at `path`, `None` when there is none.
pub fn read_header(path: &Path) -> Result<Option<Header>, SnapshotError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = [0u8; HEADER_BYTES];
    f.read_exact(&mut bytes)
        .map_err(|_| SnapshotError::Incompatible(format!("{} is cut short", path.display())))?;
    parse_header(&bytes, path).map(Some)
}

/// A family written as it is encoded: its first section, then chunk sections of about a
/// megabyte each, every one holding whole series or rows, so that neither writing nor reading
/// a snapshot holds a whole family in memory.
struct Chunked<'a> {
    out: &'a mut BufWriter<File>,
    kind: u8,
    bytes: u64,
    failed: Option<std::io::Error>,
}

impl Chunked<'_> {
    /// Writes what `w` holds as a section once it reaches `at_least` bytes.
    fn spill(&mut self, w: &mut Writer, at_least: usize) {
        if w.bytes.len() < at_least || self.failed.is_some() {
            return;
        }
        match write_section(self.out, self.kind, &w.bytes) {
            Ok(n) => self.bytes += n,
            Err(e) => self.failed = Some(e),
        }
        self.kind = CHUNK;
        w.bytes.clear();
    }

    /// Writes the rest of `w`; returns the bytes of every section written.
    fn finish(mut self, w: &mut Writer) -> std::io::Result<u64> {
        if !w.bytes.is_empty() || self.kind != CHUNK {
            self.spill(w, 0);
        }
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.bytes),
        }
    }
}

fn write_section(out: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<u64> {
    out.write_all(&[kind])?;
    out.write_all(&crc32fast::hash(payload).to_le_bytes())?;
    out.write_all(&(payload.len() as u64).to_le_bytes())?;
    out.write_all(payload)?;
    Ok(13 + payload.len() as u64)
}

fn write_value(w: &mut Writer, value: &Value) {
    match value {
        Value::Scalar(v) => {
            w.u8(0);
            w.f64(*v);
        }
        Value::Histogram {
            bounds,
            counts,
            sum,
            count,
        } => {
            w.u8(1);
            w.f64s(bounds);
            w.len(counts.len());
            for c in counts {
                w.varint(*c);
            }
            w.f64(*sum);
            w.varint(*count);
        }
    }
}

fn read_value(r: &mut Reader<'_>) -> Result<Value, Malformed> {
    Ok(match r.u8()? {
        0 => Value::Scalar(r.f64()?),
        _ => {
            let bounds = r.f64s()?;
            let n = r.len(1)?;
            let counts = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
            Value::Histogram {
                bounds,
                counts,
                sum: r.f64()?,
                count: r.varint()?,
            }
        }
    })
}

pub(crate) fn encode_family(w: &mut Writer, f: &Family, spill: &mut dyn FnMut(&mut Writer)) {
    w.str(&f.creator);
    w.u8(kind_byte(f.kind));
    w.str(&f.description);
    w.str(&f.unit);
    w.varint(f.refused);
    w.len(f.series.len());
    for s in &f.series {
        w.len(s.labels.len());
        for (k, v) in &s.labels {
            w.str(k);
            w.str(v);
        }
        write_value(w, &s.value);
        match &s.last_raw {
            Some((start, raw)) => {
                w.u8(1);
                w.u64(*start);
                write_value(w, raw);
            }
            None => w.u8(0),
        }
        w.f64s(&s.origin);
        for (offset, width) in [s.second_column, s.minute_column, s.hour_column] {
            w.len(offset);
            w.len(width);
        }
        for t in [s.first, s.updated, s.last_minute, s.last_hour] {
            w.i64(t);
        }
        w.u8(u8::from(s.retired));
        spill(w);
    }
    f.seconds.encode(w, spill);
    f.minutes.encode(w, spill);
    f.hours.encode(w, spill);
}

/// Bytes of a family read chunk by chunk: the family's section, then the chunk sections
/// after it, each holding whole series or rows.
struct Chunks<'a> {
    bytes: Vec<u8>,
    at: usize,
    next: &'a mut dyn FnMut() -> Result<Vec<u8>, SnapshotError>,
}

impl Chunks<'_> {
    /// Decodes one unit with `f`, from the next chunk when this one is used up.
    fn unit<T>(
        &mut self,
        f: impl FnOnce(&mut Reader<'_>) -> Result<T, Malformed>,
    ) -> Result<T, SnapshotError> {
        if self.at >= self.bytes.len() {
            self.bytes = (self.next)()?;
            self.at = 0;
        }
        let mut r = Reader::at(&self.bytes, self.at);
        let out = f(&mut r)?;
        self.at = r.position();
        Ok(out)
    }
}

fn decode_series(r: &mut Reader<'_>) -> Result<Series, Malformed> {
    let labels = (0..r.len(2)?)
        .map(|_| Ok((r.str()?, r.str()?)))
        .collect::<Result<Vec<_>, Malformed>>()?;
    let value = read_value(r)?;
    let last_raw = match r.u8()? {
        0 => None,
        _ => Some((r.u64()?, read_value(r)?)),
    };
    let origin = r.f64s()?;
    let mut columns = [(0, 0); 3];
    for c in &mut columns {
        *c = (r.varint()? as usize, r.varint()? as usize);
    }
    let [first, updated, last_minute, last_hour] = [r.i64()?, r.i64()?, r.i64()?, r.i64()?];
    let retired = r.u8()? != 0;
    Ok(Series {
        labels,
        value,
        last_raw,
        origin,
        second_column: columns[0],
        minute_column: columns[1],
        hour_column: columns[2],
        first,
        updated,
        last_minute,
        last_hour,
        retired,
    })
}

fn decode_family(chunks: &mut Chunks<'_>) -> Result<Family, SnapshotError> {
    let (mut family, n) = chunks.unit(|r| {
        let creator = r.str()?;
        let kind = kind_of(r.u8()?).ok_or(Malformed {
            at: 0,
            what: "a metric kind",
        })?;
        let description = r.str()?;
        let unit = r.str()?;
        let mut family = Family::new(kind, &description, &unit);
        family.creator = creator;
        family.refused = r.varint()?;
        Ok((family, r.varint()? as usize))
    })?;
    for i in 0..n {
        let series = chunks.unit(decode_series)?;
        if !series.retired {
            family.index.insert(series.labels.clone(), i);
        }
        family.series.push(series);
    }
    for (tier, capacity) in [(0, SECOND_STEPS), (1, MINUTE_STEPS), (2, HOUR_STEPS)] {
        let (mut columns, rows) = chunks.unit(|r| Columns::decode_head(r, capacity))?;
        for _ in 0..rows {
            chunks.unit(|r| columns.decode_row(r))?;
        }
        match tier {
            0 => family.seconds = columns,
            1 => family.minutes = columns,
            _ => family.hours = columns,
        }
    }
    if chunks.at < chunks.bytes.len() {
        return Err(SnapshotError::Malformed(
            "bytes after a family's last row".into(),
        ));
    }
    let fits = family.series.iter().all(|s| {
        s.second_column.0 + s.second_column.1 <= family.seconds.width()
            && s.minute_column.0 + s.minute_column.1 <= family.minutes.width()
            && s.hour_column.0 + s.hour_column.1 <= family.hours.width()
    });
    if !fits {
        return Err(SnapshotError::Malformed(
            "series columns beyond their family's rows".into(),
        ));
    }
    family.generation = family.series.len() as u64;
    Ok(family)
}

/// Writes a snapshot of `store`, `join` and `exemplars` to `path` (through a temporary file);
/// returns its size in bytes.
pub fn write(
    path: &Path,
    started_ns: u64,
    lsn: u64,
    store: &MetricStore,
    join: &FeedbackJoin,
    exemplars: &ExemplarRings,
    wal: &Wal,
) -> std::io::Result<u64> {
    super::replace_file(path, |out| {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&started_ns.to_le_bytes())?;
        out.write_all(&lsn.to_le_bytes())?;
        out.write_all(&store.refused().to_le_bytes())?;
        let mut bytes = HEADER_BYTES as u64;
        let mut w = Writer::new();
        for (name, family) in store.families() {
            let family = family.read().unwrap_or_else(|p| p.into_inner());
            // Its last series was retired (logged before): it is leaving the store.
            if family.removed {
                continue;
            }
            w.bytes.clear();
            let mut section = Chunked {
                out,
                kind: FAMILY,
                bytes: 0,
                failed: None,
            };
            w.str(&name);
            // Written while the family is locked, straight to the file: every change logged
            // before the LSN is in it, and only a megabyte at a time is held in memory.
            w.u64(wal.next_lsn());
            encode_family(&mut w, &family, &mut |w| section.spill(w, CHUNK_BYTES));
            drop(family);
            bytes += section.finish(&mut w)?;
        }
        // Each with the LSN it was encoded at, read while it was locked.
        for (kind, (lsn, state)) in [
            (JOIN, join.encode(|| wal.next_lsn())),
            (EXEMPLARS, exemplars.encode(|| wal.next_lsn())),
        ] {
            let mut w = Writer::new();
            w.u64(lsn);
            w.bytes.extend_from_slice(&state);
            bytes += write_section(out, kind, &w.bytes)?;
        }
        bytes += write_section(out, END, &[])?;
        Ok(bytes)
    })
}

/// Loads the snapshot at `path` into `store`, `join` and `exemplars`; an empty [`Loaded`]
/// when there is none.
pub fn load(
    path: &Path,
    store: &MetricStore,
    join: &FeedbackJoin,
    exemplars: &ExemplarRings,
) -> Result<Loaded, SnapshotError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata()?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut head = [0u8; HEADER_BYTES];
    input
        .read_exact(&mut head)
        .map_err(|_| SnapshotError::Malformed("cut short in its header".into()))?;
    let header = parse_header(&head, path)?;
    let mut loaded = Loaded {
        lsn: header.lsn,
        join_lsn: header.lsn,
        exemplars_lsn: header.lsn,
        ..Loaded::default()
    };
    let mut families = Vec::new();
    let mut read = HEADER_BYTES as u64;
    // One section: its type and checked payload.
    let mut section = || -> Result<(u8, Vec<u8>), SnapshotError> {
        let mut prefix = [0u8; 13];
        input
            .read_exact(&mut prefix)
            .map_err(|_| SnapshotError::Malformed("cut short before its end".into()))?;
        let kind = prefix[0];
        let crc = u32::from_le_bytes(prefix[1..5].try_into().expect("four bytes"));
        let n = u64::from_le_bytes(prefix[5..13].try_into().expect("eight bytes"));
        read += 13;
        if n > len.saturating_sub(read) {
            return Err(SnapshotError::Malformed(
                "a section longer than the file".into(),
            ));
        }
        let mut payload = vec![0; n as usize];
        input
            .read_exact(&mut payload)
            .map_err(|_| SnapshotError::Malformed("a section cut short".into()))?;
        read += n;
        if crc32fast::hash(&payload) != crc {
            return Err(SnapshotError::Malformed(
                "a section whose checksum does not match".into(),
            ));
        }
        Ok((kind, payload))
    };
    loop {
        let (kind, payload) = section()?;
        let mut r = Reader::new(&payload);
        match kind {
            END => break,
            FAMILY => {
                let name = r.str()?;
                let lsn = r.u64()?;
                let at = r.position();
                let mut next = || match section()? {
                    (CHUNK, bytes) => Ok(bytes),
                    _ => Err(SnapshotError::Malformed(
                        "a family cut short by another section".into(),
                    )),
                };
                let mut chunks = Chunks {
                    bytes: payload,
                    at,
                    next: &mut next,
                };
                let family = decode_family(&mut chunks)?;
                loaded.family_lsn.insert(name.clone(), lsn);
                loaded.families.push(name.clone());
                families.push((name, family));
            }
            JOIN => {
                loaded.join_lsn = r.u64()?;
                join.decode(&mut r)?;
            }
            EXEMPLARS => {
                loaded.exemplars_lsn = r.u64()?;
                exemplars.decode(&mut r)?;
            }
            other => {
                return Err(SnapshotError::Malformed(format!(
                    "unknown section type {other}"
                )));
            }
        }
    }
    store.restore(families, header.refused);
    Ok(loaded)
}

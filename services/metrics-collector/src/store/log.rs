//! Write-ahead log records of stored points: one record per metric per export, holding the
//! points as they were applied. A point of a series the store already holds names it by its
//! index (and, when its start time did not change, omits it), so that a steady stream of
//! counters costs about ten bytes a point; a point that created a series carries its labels.

use super::{Family, Kind, Point, Value};
use crate::durable::codec::{Malformed, Reader, Writer};

/// Record type of a batch of points.
pub const RECORD_POINTS: u8 = 1;

/// Record type of the removal of a metric's silent series.
pub const RECORD_RETIRE: u8 = 6;

/// The record of [`crate::store::MetricStore::retire_silent`] for one metric.
pub fn retire_record(name: &str, cutoff: i64) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(RECORD_RETIRE);
    w.str(name);
    w.i64(cutoff);
    w.bytes
}

const NEW: u8 = 1;
const DELTA: u8 = 2;
const SAME_START: u8 = 4;

/// The byte of a [`Kind`] in the collector's files.
pub fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Counter => 0,
        Kind::Gauge => 1,
        Kind::Histogram => 2,
    }
}

/// The kind a byte of [`kind_byte`] names.
pub fn kind_of(byte: u8) -> Option<Kind> {
    Some(match byte {
        0 => Kind::Counter,
        1 => Kind::Gauge,
        2 => Kind::Histogram,
        _ => return None,
    })
}

/// A record being built while its points are applied.
pub struct Batch {
    w: Writer,
    count_at: usize,
    points: u32,
}

impl Batch {
    /// Starts the record of points of `name` received at `now` from `sender`.
    pub fn start(now: i64, sender: &str, name: &str, family: &Family) -> Batch {
        let mut w = Writer::new();
        w.bytes.reserve(256);
        w.u8(RECORD_POINTS);
        w.i64(now);
        w.str(sender);
        w.str(name);
        w.u8(kind_byte(family.kind));
        w.str(&family.description);
        w.str(&family.unit);
        let count_at = w.bytes.len();
        w.bytes.extend_from_slice(&[0; 4]);
        Batch {
            w,
            count_at,
            points: 0,
        }
    }

    /// Logs `point`, about to be applied to series `i` of `family` (`created` when the point
    /// just added it).
    pub fn point(&mut self, family: &Family, i: usize, created: bool, point: &Point) {
        let w = &mut self.w;
        let series = &family.series[i];
        let same_start = !created
            && series
                .last_raw
                .as_ref()
                .is_some_and(|(start, _)| *start == point.start_time_ns);
        let mut tag = 0;
        if created {
            tag |= NEW;
        }
        if point.delta {
            tag |= DELTA;
        }
        if same_start {
            tag |= SAME_START;
        }
        w.u8(tag);
        if created {
            w.len(point.labels.len());
            for (k, v) in &point.labels {
                w.str(k);
                w.str(v);
            }
        } else {
            w.len(i);
        }
        if !same_start {
            w.u64(point.start_time_ns);
        }
        match &point.value {
            Value::Scalar(v) => w.f64(*v),
            Value::Histogram {
                bounds,
                counts,
                sum,
                count,
            } => {
                if created {
                    w.f64s(bounds);
                }
                for c in counts {
                    w.varint(*c);
                }
                w.f64(*sum);
                w.varint(*count);
            }
        }
        self.points += 1;
    }

    /// Where the record stands, for [`Batch::rewind`].
    pub fn mark(&self) -> (usize, u32) {
        (self.w.bytes.len(), self.points)
    }

    /// Takes back the points logged since `mark` (a point refused after it was logged).
    pub fn rewind(&mut self, (len, points): (usize, u32)) {
        self.w.bytes.truncate(len);
        self.points = points;
    }

    /// The record's bytes, with the number of points refused.
    pub fn finish(mut self, refused: usize) -> Vec<u8> {
        self.w.bytes[self.count_at..self.count_at + 4].copy_from_slice(&self.points.to_le_bytes());
        self.w.len(refused);
        self.w.bytes
    }
}

/// The head of a batch record.
#[derive(Debug)]
pub struct Header {
    /// Unix second the points were received.
    pub now: i64,
    /// The sender's `service.name` (empty when not known).
    pub sender: String,
    /// The metric.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its description.
    pub description: String,
    /// Its unit.
    pub unit: String,
    /// Points that follow.
    pub points: u32,
}

impl Header {
    /// Reads the head of a batch record (after its type byte).
    pub fn read(r: &mut Reader<'_>) -> Result<Header, Malformed> {
        let now = r.i64()?;
        let sender = r.str()?;
        let name = r.str()?;
        let kind = kind_of(r.u8()?).ok_or(Malformed {
            at: 0,
            what: "a metric kind",
        })?;
        let description = r.str()?;
        let unit = r.str()?;
        let points = u32::from(r.u8()?)
            | u32::from(r.u8()?) << 8
            | u32::from(r.u8()?) << 16
            | u32::from(r.u8()?) << 24;
        Ok(Header {
            now,
            sender,
            name,
            kind,
            description,
            unit,
            points,
        })
    }
}

const BAD_INDEX: Malformed = Malformed {
    at: 0,
    what: "the index of a series the store holds",
};

/// Reads one point of a batch, resolving a series index against `family` as it is now (as it
/// was when the point was logged).
pub fn read_point(r: &mut Reader<'_>, family: &Family) -> Result<Point, Malformed> {
    let tag = r.u8()?;
    let created = tag & NEW != 0;
    let series = if created {
        None
    } else {
        let i = r.varint()? as usize;
        Some(family.series.get(i).ok_or(BAD_INDEX)?)
    };
    let labels = match series {
        Some(s) => s.labels.clone(),
        None => {
            let n = r.len(2)?;
            let mut labels = Vec::with_capacity(n);
            for _ in 0..n {
                labels.push((r.str()?, r.str()?));
            }
            labels
        }
    };
    let start_time_ns = if tag & SAME_START != 0 {
        series
            .and_then(|s| s.last_raw.as_ref())
            .map(|(start, _)| *start)
            .ok_or(BAD_INDEX)?
    } else {
        r.u64()?
    };
    let value = match (family.kind, series) {
        (Kind::Histogram, _) => {
            let bounds = match series.map(|s| &s.value) {
                Some(Value::Histogram { bounds, .. }) => bounds.clone(),
                Some(Value::Scalar(_)) => return Err(BAD_INDEX),
                None => r.f64s()?,
            };
            let mut counts = Vec::with_capacity(bounds.len() + 1);
            for _ in 0..=bounds.len() {
                counts.push(r.varint()?);
            }
            Value::Histogram {
                bounds,
                counts,
                sum: r.f64()?,
                count: r.varint()?,
            }
        }
        _ => Value::Scalar(r.f64()?),
    };
    Ok(Point {
        labels,
        start_time_ns,
        delta: tag & DELTA != 0,
        value,
    })
}

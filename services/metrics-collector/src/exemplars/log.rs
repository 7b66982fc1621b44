//! The exemplars' part of the collector's files: the rings in a snapshot, and each kept span in
//! the write-ahead log.

use super::{Exemplar, ExemplarRings};
use crate::durable::codec::{Malformed, Reader, Writer};
use crate::durable::wal::Wal;

/// Record type of a kept exemplar.
pub const RECORD_EXEMPLAR: u8 = 5;

fn write(w: &mut Writer, e: &Exemplar) {
    w.str(&e.trace_id);
    w.str(&e.span_id);
    w.str(&e.service);
    w.str(&e.span_name);
    w.str(&e.model);
    w.i64(e.version);
    w.u8(u8::from(e.error));
    w.str(&e.status_message);
    w.f64(e.duration_ms);
    w.i64(e.end_unix_ms);
}

fn read(r: &mut Reader<'_>) -> Result<Exemplar, Malformed> {
    Ok(Exemplar {
        trace_id: r.str()?,
        span_id: r.str()?,
        service: r.str()?,
        span_name: r.str()?,
        model: r.str()?,
        version: r.i64()?,
        error: r.u8()? != 0,
        status_message: r.str()?,
        duration_ms: r.f64()?,
        end_unix_ms: r.i64()?,
    })
}

impl ExemplarRings {
    /// Logs every kept exemplar to `wal` from now on.
    pub fn attach_wal(&self, wal: std::sync::Arc<Wal>) {
        let _ = self.wal.set(wal);
    }

    /// Logs a kept exemplar (called with the rings locked).
    pub(super) fn log(&self, e: &Exemplar) {
        if let Some(wal) = self.wal.get() {
            let mut w = Writer::new();
            w.u8(RECORD_EXEMPLAR);
            write(&mut w, e);
            wal.append(&w.bytes);
        }
    }

    /// Keeps a logged exemplar again (its type byte already read).
    pub fn replay(&self, r: &mut Reader<'_>) -> Result<(), Malformed> {
        self.offer(read(r)?);
        Ok(())
    }

    /// Every ring, oldest first, and the LSN of the first logged exemplar not in them.
    pub fn encode(&self, next_lsn: impl FnOnce() -> u64) -> (u64, Vec<u8>) {
        let rings = self.lock();
        let lsn = next_lsn();
        let mut w = Writer::new();
        w.len(rings.len());
        for ring in rings.values() {
            w.len(ring.len());
            for e in ring {
                write(&mut w, e);
            }
        }
        (lsn, w.bytes)
    }

    /// Keeps the exemplars [`ExemplarRings::encode`] wrote, within this collector's limits.
    pub fn decode(&self, r: &mut Reader<'_>) -> Result<(), Malformed> {
        for _ in 0..r.len(1)? {
            for _ in 0..r.len(40)? {
                let e = read(r)?;
                self.keep(e);
            }
        }
        Ok(())
    }
}

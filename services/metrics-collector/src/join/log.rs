//! The join's part of the collector's files: its state in a snapshot, and its changes
//! (predictions, feedback, sender drops) in the write-ahead log.

use super::{Event, Feedback, FeedbackJoin, Held, Inner, JoinCounts, Prediction, Task};
use crate::durable::codec::{Malformed, Reader, Writer};
use crate::durable::wal::Wal;

/// Record type of a prediction.
pub const RECORD_PREDICTION: u8 = 2;
/// Record type of a feedback event.
pub const RECORD_FEEDBACK: u8 = 3;
/// Record type of records a sender dropped.
pub const RECORD_DROPPED: u8 = 4;

const BAD: Malformed = Malformed {
    at: 0,
    what: "a known task or event",
};

fn write_event(w: &mut Writer, event: Event) {
    match event {
        Event::Impression => w.u8(0),
        Event::Click => w.u8(1),
        Event::AddToCart => w.u8(2),
        Event::Purchase => w.u8(3),
        Event::Label(label) => {
            w.u8(4);
            w.varint(u64::from(label));
        }
    }
}

fn read_event(r: &mut Reader<'_>) -> Result<Event, Malformed> {
    Ok(match r.u8()? {
        0 => Event::Impression,
        1 => Event::Click,
        2 => Event::AddToCart,
        3 => Event::Purchase,
        4 => Event::Label(u32::try_from(r.varint()?).map_err(|_| BAD)?),
        _ => return Err(BAD),
    })
}

fn write_strs(w: &mut Writer, strs: &[String]) {
    w.len(strs.len());
    for s in strs {
        w.str(s);
    }
}

fn read_strs(r: &mut Reader<'_>) -> Result<Vec<String>, Malformed> {
    let n = r.len(1)?;
    (0..n).map(|_| r.str()).collect()
}

fn write_prediction(w: &mut Writer, p: &Prediction) {
    w.str(&p.request_id);
    w.str(&p.model);
    w.i64(p.version);
    w.u8(match p.task {
        Task::Classify => 0,
        Task::Rank => 1,
    });
    write_strs(w, &p.items);
    let scores: Vec<f64> = p.scores.iter().map(|s| f64::from(*s)).collect();
    w.f64s(&scores);
    write_strs(w, &p.texts);
    w.i64(p.at_ms);
}

fn read_prediction(r: &mut Reader<'_>) -> Result<Prediction, Malformed> {
    Ok(Prediction {
        request_id: r.str()?,
        model: r.str()?,
        version: r.i64()?,
        task: match r.u8()? {
            0 => Task::Classify,
            1 => Task::Rank,
            _ => return Err(BAD),
        },
        items: read_strs(r)?,
        scores: r.f64s()?.into_iter().map(|s| s as f32).collect(),
        texts: read_strs(r)?,
        at_ms: r.i64()?,
    })
}

impl FeedbackJoin {
    /// Logs every change to `wal` from now on.
    pub fn attach_wal(&self, wal: std::sync::Arc<Wal>) {
        let _ = self.wal.set(wal);
    }

    /// Logs a prediction accepted at `now_ms` (called with the join locked).
    pub(super) fn log_prediction(&self, p: &Prediction, now_ms: i64) {
        if let Some(wal) = self.wal.get() {
            let mut w = Writer::new();
            w.u8(RECORD_PREDICTION);
            w.i64(now_ms);
            write_prediction(&mut w, p);
            wal.append(&w.bytes);
        }
    }

    /// Logs a feedback event (called with the join locked).
    pub(super) fn log_feedback(&self, f: &Feedback) {
        if let Some(wal) = self.wal.get() {
            let mut w = Writer::new();
            w.u8(RECORD_FEEDBACK);
            w.str(&f.request_id);
            w.str(&f.item_id);
            write_event(&mut w, f.event);
            wal.append(&w.bytes);
        }
    }

    /// Logs records a sender dropped (called with the join locked).
    pub(super) fn log_dropped(&self, n: u64) {
        if let Some(wal) = self.wal.get() {
            let mut w = Writer::new();
            w.u8(RECORD_DROPPED);
            w.varint(n);
            wal.append(&w.bytes);
        }
    }

    /// Applies a logged change (its type byte already read).
    pub fn replay(&self, record: u8, r: &mut Reader<'_>) -> Result<(), Malformed> {
        match record {
            RECORD_PREDICTION => {
                let now_ms = r.i64()?;
                let p = read_prediction(r)?;
                // It was accepted before; a refusal now only means it is already held.
                let _ = self.predict(p, now_ms);
            }
            RECORD_FEEDBACK => {
                let f = Feedback {
                    request_id: r.str()?,
                    item_id: r.str()?,
                    event: read_event(r)?,
                };
                // Logged only once taken: a refusal now cannot happen.
                let _ = self.feedback(f);
            }
            RECORD_DROPPED => self.sender_dropped(r.varint()?),
            _ => return Err(BAD),
        }
        Ok(())
    }

    /// The join's state, and the LSN of the first change it does not hold.
    pub fn encode(&self, next_lsn: impl FnOnce() -> u64) -> (u64, Vec<u8>) {
        let inner = self.lock();
        // Read while the join is locked: every change logged before is in the state.
        let lsn = next_lsn();
        let mut w = Writer::new();
        let held: Vec<&Held> = inner
            .order
            .iter()
            .filter_map(|id| inner.held.get(id))
            .collect();
        w.len(held.len());
        for h in held {
            write_prediction(&mut w, &h.prediction);
            w.len(h.events.len());
            for (item, event) in &h.events {
                w.len(*item);
                write_event(&mut w, *event);
            }
        }
        w.len(inner.unmatched_predictions.len());
        for ((model, version), n) in &inner.unmatched_predictions {
            w.str(model);
            w.i64(*version);
            w.varint(*n);
        }
        let c = inner.counts;
        w.varint(c.unmatched_feedback);
        w.varint(c.evicted_predictions);
        w.varint(c.dropped_by_sender);
        (lsn, w.bytes)
    }

    /// Replaces the state with what [`FeedbackJoin::encode`] wrote.
    pub fn decode(&self, r: &mut Reader<'_>) -> Result<(), Malformed> {
        let mut state = Inner {
            held: Default::default(),
            order: Default::default(),
            unmatched_predictions: Default::default(),
            counts: JoinCounts::default(),
        };
        for _ in 0..r.len(8)? {
            let prediction = read_prediction(r)?;
            let n = r.len(2)?;
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                events.push((r.varint()? as usize, read_event(r)?));
            }
            state.order.push_back(prediction.request_id.clone());
            state
                .held
                .insert(prediction.request_id.clone(), Held { prediction, events });
        }
        for _ in 0..r.len(10)? {
            let key = (r.str()?, r.i64()?);
            state.unmatched_predictions.insert(key, r.varint()?);
        }
        // A state saved before the counts were bounded may hold more.
        if state.unmatched_predictions.len() > self.unmatched_versions_cap() {
            super::prune_unmatched(&mut state);
        }
        state.counts = JoinCounts {
            unmatched_feedback: r.varint()?,
            evicted_predictions: r.varint()?,
            dropped_by_sender: r.varint()?,
        };
        *self.lock() = state;
        Ok(())
    }
}

//! Prediction and feedback records for the metrics collector's feedback join.
//!
//! Until the collector takes them, they wait in a bounded buffer: when it is full the oldest
//! record is dropped and counted, so memory stays bounded and the loss is visible.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// What a prediction answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Classify: purchase-intent probabilities of texts.
    Classify,
    /// Rank: candidates ordered by similarity.
    Rank,
}

impl Task {
    /// The RPC's name.
    pub fn rpc(self) -> &'static str {
        match self {
            Task::Classify => "Classify",
            Task::Rank => "Rank",
        }
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordKind {
    /// A served Classify or Rank call: the scores it returned.
    Prediction {
        /// Classify or Rank.
        task: Task,
        /// Model name.
        model: String,
        /// Model version.
        version: i64,
        /// Item ids (Rank) or text positions (Classify), in order.
        items: Vec<String>,
        /// One score per item (similarity, or purchase-intent probability).
        scores: Vec<f32>,
        /// Classify: the texts, personal data masked, when payload logging sampled the call
        /// (empty otherwise): labelled by feedback, they become training data.
        texts: Vec<String>,
    },
    /// What the shopper did afterwards.
    Feedback {
        /// The item, or empty.
        item_id: String,
        /// The event's name (`click`, `purchase`, …).
        event: &'static str,
        /// The explicit label, for `label` events.
        label: Option<u32>,
    },
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The request id it belongs to.
    pub request_id: String,
    /// The caller's tenant.
    pub tenant: String,
    /// When it was made.
    pub at: SystemTime,
    /// Its content.
    pub kind: RecordKind,
}

/// The bounded buffer.
pub struct RecordBuffer {
    records: Mutex<VecDeque<Record>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl RecordBuffer {
    /// A buffer of at most `capacity` records.
    pub fn new(capacity: usize) -> RecordBuffer {
        RecordBuffer {
            records: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Adds a record, dropping the oldest when full.
    pub fn push(&self, record: Record) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() == self.capacity {
            records.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        records.push_back(record);
    }

    /// Takes every buffered record, oldest first.
    pub fn drain(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    /// Puts back records taken by [`RecordBuffer::drain`] that could not be delivered, ahead of
    /// newer ones; when they do not all fit, the oldest are dropped and counted.
    pub fn requeue(&self, taken: Vec<Record>) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        for record in taken.into_iter().rev() {
            if records.len() >= self.capacity {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                records.push_front(record);
            }
        }
    }

    /// Counts `n` records dropped for another reason (too large to ship).
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Records dropped because the buffer was full (or too large to ship).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(id: &str) -> Record {
        Record {
            request_id: id.to_owned(),
            tenant: "t".to_owned(),
            at: SystemTime::UNIX_EPOCH,
            kind: RecordKind::Feedback {
                item_id: String::new(),
                event: "click",
                label: None,
            },
        }
    }

    #[test]
    fn the_oldest_records_are_dropped_and_counted() {
        let buffer = RecordBuffer::new(2);
        for id in ["a", "b", "c"] {
            buffer.push(feedback(id));
        }
        assert_eq!(buffer.dropped(), 1);
        let ids: Vec<String> = buffer.drain().into_iter().map(|r| r.request_id).collect();
        assert_eq!(ids, ["b", "c"]);
        // Undelivered records go back ahead of newer ones; what does not fit is the oldest.
        buffer.push(feedback("d"));
        buffer.requeue(vec![feedback("b"), feedback("c")]);
        let ids: Vec<String> = buffer.drain().into_iter().map(|r| r.request_id).collect();
        assert_eq!(ids, ["c", "d"]);
        assert_eq!(buffer.dropped(), 2);
    }
}

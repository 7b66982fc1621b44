//! Prediction and feedback records for the metrics collector's feedback join.
//!
//! Until the collector takes them, they wait in a buffer bounded by count and by bytes: when it
//! is full the oldest record is dropped and counted, so memory stays bounded and the loss is
//! visible. A prediction keeps only the top of its items, as many as the collector's join uses.

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

/// Items kept per prediction record: the top of a ranking, with their scores. The collector's
/// join keeps no more (its `MAX_ITEMS`; NDCG@k needs no more than k), so a Rank call that
/// returns all of its 1000 candidates is recorded with its best 100 (up to ~26 KiB of ids at
/// 256 bytes each, instead of ~260 KiB). The score metric still sees every returned score.
pub const MAX_PREDICTION_ITEMS: usize = 100;

/// Default byte budget of the record buffer (`--record-buffer-bytes`): 64 MiB of a gateway
/// pod's 1 GiB. It holds the default 10,000 records while they are ordinary (a Rank record of
/// 10 short ids is well under 1 KiB), and ~2,300 of the largest Rank records (100 ids of 256
/// bytes, ~28 KiB each) when callers send those while the collector is down or slow.
pub const DEFAULT_RECORD_BUFFER_BYTES: usize = 64 * 1024 * 1024;

impl Record {
    /// Estimated memory the record holds, in bytes: its own size (its slot in the buffer) and
    /// what its strings and lists allocated (their capacities).
    pub fn held_bytes(&self) -> usize {
        fn strings(list: &Vec<String>) -> usize {
            list.capacity() * std::mem::size_of::<String>()
                + list.iter().map(String::capacity).sum::<usize>()
        }
        let kind = match &self.kind {
            RecordKind::Prediction {
                model,
                items,
                scores,
                texts,
                ..
            } => {
                model.capacity()
                    + strings(items)
                    + scores.capacity() * std::mem::size_of::<f32>()
                    + strings(texts)
            }
            RecordKind::Feedback { item_id, .. } => item_id.capacity(),
        };
        std::mem::size_of::<Record>() + self.request_id.capacity() + self.tenant.capacity() + kind
    }

    /// Keeps the first [`MAX_PREDICTION_ITEMS`] items of a prediction (with their scores and
    /// texts) and gives back the memory of the rest.
    fn keep_top_items(&mut self) {
        if let RecordKind::Prediction {
            items,
            scores,
            texts,
            ..
        } = &mut self.kind
            && items.len() > MAX_PREDICTION_ITEMS
        {
            items.truncate(MAX_PREDICTION_ITEMS);
            items.shrink_to_fit();
            scores.truncate(MAX_PREDICTION_ITEMS);
            scores.shrink_to_fit();
            texts.truncate(MAX_PREDICTION_ITEMS);
            texts.shrink_to_fit();
        }
    }
}

/// The records and the bytes they hold ([`Record::held_bytes`]), kept together.
#[derive(Default)]
struct Held {
    records: VecDeque<Record>,
    bytes: usize,
}

/// The bounded buffer: at most `capacity` records and `budget_bytes` bytes.
pub struct RecordBuffer {
    held: Mutex<Held>,
    capacity: usize,
    budget_bytes: usize,
    dropped: AtomicU64,
}

impl RecordBuffer {
    /// A buffer of at most `capacity` records holding at most `budget_bytes` bytes (see
    /// [`DEFAULT_RECORD_BUFFER_BYTES`]).
    pub fn new(capacity: usize, budget_bytes: usize) -> RecordBuffer {
        RecordBuffer {
            held: Mutex::new(Held::default()),
            capacity: capacity.max(1),
            budget_bytes,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the buffered records hold ([`Record::held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Adds a record (a prediction cut to its top [`MAX_PREDICTION_ITEMS`] items), dropping
    /// the oldest while the buffer is full, by count or by bytes; a record larger than the
    /// whole budget is dropped itself. Drops are counted.
    pub fn push(&self, mut record: Record) {
        record.keep_top_items();
        let size = record.held_bytes();
        if size > self.budget_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut held = self.lock();
        while held.records.len() >= self.capacity || held.bytes + size > self.budget_bytes {
            let Some(oldest) = held.records.pop_front() else {
                break;
            };
            held.bytes -= oldest.held_bytes();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        held.bytes += size;
        held.records.push_back(record);
    }

    /// Takes every buffered record, oldest first.
    pub fn drain(&self) -> Vec<Record> {
        let mut held = self.lock();
        held.bytes = 0;
        held.records.drain(..).collect()
    }

    /// Puts back records taken by [`RecordBuffer::drain`] that could not be delivered, ahead of
    /// newer ones; when they do not all fit (by count or by bytes), the oldest are dropped and
    /// counted.
    pub fn requeue(&self, taken: Vec<Record>) {
        let mut held = self.lock();
        for record in taken.into_iter().rev() {
            let size = record.held_bytes();
            if held.records.len() >= self.capacity || held.bytes + size > self.budget_bytes {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                held.bytes += size;
                held.records.push_front(record);
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
        let buffer = RecordBuffer::new(2, DEFAULT_RECORD_BUFFER_BYTES);
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

    /// A Rank call that returned all of its 1000 candidates (`ids`, 256 bytes each).
    fn large_ranking(request: usize, ids: &[String]) -> Record {
        Record {
            request_id: format!("r{request}"),
            tenant: "t".to_owned(),
            at: SystemTime::UNIX_EPOCH,
            kind: RecordKind::Prediction {
                task: Task::Rank,
                model: "m".to_owned(),
                version: 1,
                items: ids.to_vec(),
                scores: (0..ids.len()).map(|i| 1.0 - i as f32 / 1000.0).collect(),
                texts: Vec::new(),
            },
        }
    }

    #[test]
    fn large_rankings_stay_within_the_byte_budget() {
        let ids: Vec<String> = (0..1000).map(|i| format!("{i:0>256}")).collect();
        let buffer = RecordBuffer::new(10_000, DEFAULT_RECORD_BUFFER_BYTES);
        for id in 0..10_000 {
            buffer.push(large_ranking(id, &ids));
            if id % 500 == 499 {
                let held = buffer.held_bytes();
                assert!(
                    held <= DEFAULT_RECORD_BUFFER_BYTES,
                    "{} rankings pushed: {held} bytes held, over the {DEFAULT_RECORD_BUFFER_BYTES}-byte budget",
                    id + 1
                );
            }
        }
        let held = buffer.drain();
        assert!(!held.is_empty());
        // The oldest went, counted; the newest is kept.
        assert_eq!(buffer.dropped(), 10_000 - held.len() as u64);
        assert_eq!(held.last().unwrap().request_id, "r9999");
        for record in &held {
            let RecordKind::Prediction { items, scores, .. } = &record.kind else {
                panic!("a prediction");
            };
            // What the collector's join keeps: the top of the ranking, with its scores.
            assert_eq!(items.len(), MAX_PREDICTION_ITEMS);
            assert_eq!(scores.len(), MAX_PREDICTION_ITEMS);
            assert_eq!(items[..], ids[..MAX_PREDICTION_ITEMS]);
        }
        assert_eq!(buffer.held_bytes(), 0);
        // Records put back after a failed push stay within the budget too.
        buffer.push(large_ranking(10_000, &ids));
        let before = buffer.dropped();
        buffer.requeue(held);
        assert!(buffer.held_bytes() <= DEFAULT_RECORD_BUFFER_BYTES);
        assert!(
            buffer.dropped() > before,
            "what does not fit is dropped and counted"
        );
        assert_eq!(buffer.drain().last().unwrap().request_id, "r10000");
    }

    #[test]
    fn a_record_larger_than_the_whole_budget_is_dropped_itself() {
        let buffer = RecordBuffer::new(10, 2048);
        buffer.push(feedback("a"));
        let mut huge = feedback("b");
        huge.request_id = "x".repeat(4096);
        buffer.push(huge);
        assert_eq!(buffer.dropped(), 1);
        let ids: Vec<String> = buffer.drain().into_iter().map(|r| r.request_id).collect();
        assert_eq!(ids, ["a"]);
    }
}

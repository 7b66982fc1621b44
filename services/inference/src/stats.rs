//! Per-version execution statistics, reported through the Open Inference Protocol's
//! `ModelStatistics` (the same figures Triton reports, so existing tools read them).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the total time it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Duration64 {
    /// Number of events.
    pub count: u64,
    /// Total time of those events, in nanoseconds.
    pub ns: u64,
}

impl Duration64 {
    fn add(&mut self, n: u64, took: Duration) {
        self.count += n;
        self.ns += took.as_nanos() as u64;
    }
}

/// Statistics of one model version since it was loaded.
#[derive(Debug, Clone, Default)]
pub struct VersionStats {
    /// Milliseconds since the epoch of the last finished request; 0 when none.
    pub last_inference_ms: u64,
    /// Texts (rows) inferred.
    pub inference_count: u64,
    /// Model executions (batches).
    pub execution_count: u64,
    /// Requests answered successfully, and their end-to-end time.
    pub success: Duration64,
    /// Requests that failed, and their time.
    pub fail: Duration64,
    /// Time requests waited in the queue.
    pub queue: Duration64,
    /// Time spent preparing input tensors (padding), per request.
    pub compute_input: Duration64,
    /// Time the model ran, per request.
    pub compute_infer: Duration64,
    /// Time spent splitting outputs, per request.
    pub compute_output: Duration64,
    /// Per batch size (rows): executions and their stage times.
    pub batches: BTreeMap<u64, BatchStageStats>,
}

/// Stage times of the executions of one batch size.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchStageStats {
    /// Input preparation.
    pub compute_input: Duration64,
    /// Model run.
    pub compute_infer: Duration64,
    /// Output splitting.
    pub compute_output: Duration64,
}

/// Thread-safe holder of [`VersionStats`].
#[derive(Debug, Default)]
pub struct StatsRecorder(Mutex<VersionStats>);

/// Times of one execution, as measured by the batcher.
pub struct ExecutionTimes {
    /// Rows in the batch.
    pub rows: u64,
    /// Requests in the batch.
    pub requests: u64,
    /// Sum over the batch's requests of their queue waits.
    pub queue_total: Duration,
    /// Input preparation.
    pub input: Duration,
    /// Model run.
    pub infer: Duration,
    /// Output splitting.
    pub output: Duration,
}

impl StatsRecorder {
    /// Records one finished execution.
    pub fn execution(&self, t: &ExecutionTimes) {
        let mut s = self.lock();
        s.inference_count += t.rows;
        s.execution_count += 1;
        s.queue.count += t.requests;
        s.queue.ns += t.queue_total.as_nanos() as u64;
        s.compute_input.add(t.requests, t.input * t.requests as u32);
        s.compute_infer.add(t.requests, t.infer * t.requests as u32);
        s.compute_output
            .add(t.requests, t.output * t.requests as u32);
        let per_size = s.batches.entry(t.rows).or_default();
        per_size.compute_input.add(1, t.input);
        per_size.compute_infer.add(1, t.infer);
        per_size.compute_output.add(1, t.output);
    }

    /// Records the outcome of one request, with its end-to-end time.
    pub fn request(&self, ok: bool, took: Duration) {
        let mut s = self.lock();
        if ok {
            s.success.add(1, took);
        } else {
            s.fail.add(1, took);
        }
        s.last_inference_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
    }

    /// Forgets everything recorded so far (used after warm-up, so that statistics count
    /// only real traffic).
    pub fn reset(&self) {
        *self.lock() = VersionStats::default();
    }

    /// A copy of the current figures.
    pub fn snapshot(&self) -> VersionStats {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VersionStats> {
        // Statistics stay usable even if a thread panicked while holding the lock.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

//! Dynamic batching: one bounded queue and one model thread per loaded model version.
//!
//! The model thread blocks until a request arrives; while a batch runs, new requests
//! accumulate in the queue; when the model is free again the thread takes everything queued,
//! up to the max batch size (rows) and the token budget (rows × longest row, padding
//! included). A busy model therefore forms full batches without a fixed delay window. A
//! request whose deadline passed, or whose caller went away, is dropped before compute.
//!
//! An idle model (nothing queued, no batch running) serves a lone request on the caller's
//! own thread ([`DynamicBatcher::run_or_queue`]): handing it to the model thread and the
//! answer back costs two thread wake-ups, a measurable share of a single request's latency
//! on a small machine. The caller holds the model while it runs, so whatever arrives
//! meanwhile queues and runs as the model thread's next batch, exactly as behind a batch.
//!
//! Admission control is a semaphore of `max_queue_size` permits per version: a request that
//! finds none left is refused at once with RESOURCE_EXHAUSTED, so the queue never grows
//! without bound.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::InferError;
use crate::metrics;
use crate::runtime::{Backend, EncodedBatch};
use crate::stats::{ExecutionTimes, StatsRecorder};
use crate::tokenize::TokenIds;

/// Limits that close a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most rows (texts) in one execution.
    pub max_rows: usize,
    /// Most padded tokens (rows × longest row) in one execution.
    pub max_tokens: usize,
    /// Requests admitted at once (queued or running).
    pub max_queue_size: usize,
    /// How long an idle model waits for companions of a lone request (0: not at all).
    pub idle_delay: Duration,
    /// Whether an idle model runs a lone request on the caller's thread instead of the model
    /// thread's. Only without an `idle_delay` (a model told to wait for companions waits).
    pub run_idle_on_caller: bool,
}

/// A tokenized request waiting for its batch.
pub struct QueuedRequest {
    /// Token ids, one entry per text (row).
    pub tokens: Vec<TokenIds>,
    /// Indexes, into the batcher's graph outputs, of the outputs this request wants.
    pub outputs: Vec<usize>,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// When the request entered the queue.
    pub enqueued: Instant,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<BatchReply, InferError>>,
    /// The request's span; the compute span is its child.
    pub span: tracing::Span,
    /// Open from enqueue until the request's batch starts (or it is dropped).
    pub queue_span: tracing::Span,
    /// The admission permit, released when the request leaves the batcher.
    pub permit: OwnedSemaphorePermit,
}

/// What the model thread sends back to one request.
#[derive(Debug)]
pub struct BatchReply {
    /// One entry per requested output, row-major `[rows, row_len]`.
    pub outputs: Vec<Vec<f32>>,
    /// Time in the queue.
    pub queue: Duration,
    /// Time the batch spent in the model (input preparation, run, output split).
    pub compute: Duration,
    /// Rows in the batch that carried this request.
    pub batch_rows: usize,
}

/// The queue and model thread of one model version.
pub struct DynamicBatcher {
    sender: SyncSender<QueuedRequest>,
    attributes: [opentelemetry::KeyValue; 2],
    admission: Arc<Semaphore>,
    /// Requests queued and not yet taken into a batch. The model thread takes them off only
    /// while it holds `runner`, so 0 seen under that lock means nothing waits.
    depth: Arc<AtomicUsize>,
    label: Arc<str>,
    /// The model, held by whoever runs it: the model thread for a batch, or a caller for a
    /// lone request on an idle model.
    runner: Arc<Mutex<BatchRunner>>,
    /// [`BatchLimits::run_idle_on_caller`], off when the model waits for companions.
    run_idle_on_caller: bool,
}

impl DynamicBatcher {
    /// Starts the model thread of `model` version `version` for `backend`, which answers the
    /// graph outputs `outputs`.
    pub fn start(
        model: &str,
        version: i64,
        backend: Box<dyn Backend>,
        outputs: Vec<String>,
        limits: BatchLimits,
        stats: Arc<StatsRecorder>,
    ) -> Result<DynamicBatcher, InferError> {
        let (sender, receiver) = mpsc::sync_channel(limits.max_queue_size);
        let depth = Arc::new(AtomicUsize::new(0));
        let label: Arc<str> = Arc::from(format!("model '{model}' version {version}"));
        let attributes = metrics::model_attributes(model, version);
        let runner = Arc::new(Mutex::new(BatchRunner {
            model: model.to_owned(),
            version,
            attributes: attributes.clone(),
            label: label.clone(),
            backend,
            outputs,
            stats,
        }));
        let worker = ModelWorker {
            attributes: attributes.clone(),
            label: label.clone(),
            runner: runner.clone(),
            limits,
            depth: depth.clone(),
            receiver,
            carried: VecDeque::new(),
        };
        std::thread::Builder::new()
            .name(format!("model {label}"))
            .spawn(move || worker.run())
            .map_err(|err| {
                InferError::Load(format!("cannot start the model thread of {label}: {err}"))
            })?;
        Ok(DynamicBatcher {
            sender,
            attributes,
            admission: Arc::new(Semaphore::new(limits.max_queue_size)),
            depth,
            label,
            runner,
            run_idle_on_caller: limits.run_idle_on_caller && limits.idle_delay.is_zero(),
        })
    }

    /// Takes an admission permit, or refuses at once when the queue is full.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, InferError> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            InferError::Overloaded(format!(
                "the queue of {} is full ({} requests admitted); retry later",
                self.label,
                self.depth.load(Ordering::Relaxed)
            ))
        })
    }

    /// Runs an admitted request at once on this thread when the model is idle (nothing
    /// queued, no batch running) and this thread may block for it; queues it otherwise.
    /// Either way the answer arrives through the request's reply channel.
    ///
    /// On a tokio worker the run blocks the worker itself: measured, that is cheaper than
    /// [`tokio::task::block_in_place`], which wakes a thread to take over the worker and sends
    /// the reply through the runtime's shared queue, one more wake-up than the model thread's
    /// hand-off. Blocking is bounded instead: only a small request ([`CALLER_RUN_MAX_TOKENS`])
    /// that is not due soon ([`CALLER_RUN_MIN_SLACK`]), only on a multi-threaded runtime, and
    /// never on its last free worker, so the runtime keeps serving the other calls meanwhile.
    pub fn run_or_queue(&self, request: QueuedRequest) -> Result<(), InferError> {
        match self.claim_idle(&request) {
            Some(idle) => {
                idle.run(request);
                Ok(())
            }
            None => self.submit(request),
        }
    }

    /// Holds the model if it is idle and `request` may run on its caller's thread.
    fn claim_idle(&self, request: &QueuedRequest) -> Option<IdleModel<'_>> {
        // Cheap checks first: a busy model costs the caller no lock attempt.
        let padded = request.tokens.len() * longest_row(request);
        let due_soon = request.deadline.is_some_and(|deadline| {
            deadline.saturating_duration_since(Instant::now()) < CALLER_RUN_MIN_SLACK
        });
        if !self.run_idle_on_caller
            || padded > CALLER_RUN_MAX_TOKENS
            || due_soon
            || self.depth.load(Ordering::Relaxed) != 0
        {
            return None;
        }
        let slot = CallerRunSlot::take()?;
        let runner = match self.runner.try_lock() {
            Ok(runner) => runner,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        // Again under the lock: queued requests go first, and the model thread takes them off
        // `depth` only while holding it.
        (self.depth.load(Ordering::Relaxed) == 0).then_some(IdleModel {
            runner,
            _slot: slot,
        })
    }

    /// Queues an admitted request for the model thread.
    pub fn submit(&self, request: QueuedRequest) -> Result<(), InferError> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(request) {
            Ok(()) => {
                metrics::instruments().queue_depth.add(1, &self.attributes);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(InferError::Overloaded(format!(
                    "the queue of {} is full; retry later",
                    self.label
                )))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(InferError::Unavailable(format!(
                    "{} has stopped",
                    self.label
                )))
            }
        }
    }

    /// Requests waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

/// Largest request, in padded tokens (rows × longest row), that runs on its caller's thread:
/// a search query or a few (the product searches are about 32 tokens each), milliseconds of
/// compute. A bigger request goes to the model thread, where the hand-off is a negligible
/// share of its compute and no tokio worker is held for long.
pub const CALLER_RUN_MAX_TOKENS: usize = 128;

/// A request due sooner than this goes to the model thread: while it waits there, the core
/// can still answer DEADLINE_EXCEEDED before the caller's deadline, which a run on the
/// caller's own thread could not interrupt.
pub const CALLER_RUN_MIN_SLACK: Duration = Duration::from_millis(100);

/// Callers of the process now running a request on their own tokio worker.
static CALLER_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Permission to block the current thread for one request's run: always outside a tokio
/// runtime; on a multi-threaded runtime only while another worker stays free (counted across
/// every model of the process); never on a current-thread runtime.
struct CallerRunSlot {
    counted: bool,
}

impl CallerRunSlot {
    fn take() -> Option<CallerRunSlot> {
        let Ok(handle) = Handle::try_current() else {
            return Some(CallerRunSlot { counted: false });
        };
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return None;
        }
        let most = handle.metrics().num_workers().saturating_sub(1);
        CALLER_RUNS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < most).then_some(running + 1)
            })
            .ok()
            .map(|_| CallerRunSlot { counted: true })
    }
}

impl Drop for CallerRunSlot {
    fn drop(&mut self) {
        if self.counted {
            CALLER_RUNS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An idle model held by a caller: requests arriving meanwhile queue behind it.
struct IdleModel<'a> {
    runner: MutexGuard<'a, BatchRunner>,
    _slot: CallerRunSlot,
}

impl IdleModel<'_> {
    /// Runs `request` on this thread (it blocks for the whole execution).
    fn run(mut self, request: QueuedRequest) {
        self.runner.execute(vec![request]);
    }
}

/// Locks the model, even if a thread panicked while holding it (runs catch the runtime's
/// panics; what remains is bookkeeping that stays consistent).
fn lock(runner: &Mutex<BatchRunner>) -> MutexGuard<'_, BatchRunner> {
    runner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The model thread: forms batches from the queue and runs them.
struct ModelWorker {
    attributes: [opentelemetry::KeyValue; 2],
    label: Arc<str>,
    runner: Arc<Mutex<BatchRunner>>,
    limits: BatchLimits,
    depth: Arc<AtomicUsize>,
    receiver: Receiver<QueuedRequest>,
    /// Requests taken from the channel that did not fit the previous batch.
    carried: VecDeque<QueuedRequest>,
}

impl ModelWorker {
    fn run(mut self) {
        tracing::debug!(model = %self.label, "model thread started");
        let runner = self.runner.clone();
        while let Some(first) = self.next_request() {
            // Waits here while a caller runs a lone request; what queues meanwhile joins the
            // batch.
            let mut runner = lock(&runner);
            let batch = self.fill_batch(first);
            runner.execute(batch);
        }
        tracing::debug!(model = %self.label, "model thread stopped: queue closed and drained");
    }

    /// Blocks for the next request; `None` once the queue is closed and drained.
    fn next_request(&mut self) -> Option<QueuedRequest> {
        match self.carried.pop_front() {
            Some(request) => Some(request),
            None => self.receiver.recv().ok(),
        }
    }

    /// The next request already waiting, without blocking.
    fn take(&mut self) -> Option<QueuedRequest> {
        self.carried
            .pop_front()
            .or_else(|| self.receiver.try_recv().ok())
    }

    /// Adds to `first` what is queued, up to the limits (waiting up to the idle delay for
    /// companions), and takes the batch off the queue depth.
    fn fill_batch(&mut self, first: QueuedRequest) -> Vec<QueuedRequest> {
        let idle_deadline = first.enqueued + self.limits.idle_delay;
        let mut batch = BatchBuilder::default();
        // The first request always goes, even when it alone exceeds the token budget.
        batch.push(first);
        while batch.rows < self.limits.max_rows {
            let next = match self.take() {
                Some(request) => request,
                None if Instant::now() < idle_deadline => {
                    match self
                        .receiver
                        .recv_timeout(idle_deadline.saturating_duration_since(Instant::now()))
                    {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => break,
            };
            if !batch.fits(&next, &self.limits) {
                self.carried.push_front(next);
                break;
            }
            batch.push(next);
        }
        self.depth
            .fetch_sub(batch.requests.len(), Ordering::Relaxed);
        metrics::instruments()
            .queue_depth
            .add(-(batch.requests.len() as i64), &self.attributes);
        batch.requests
    }
}

/// The model of one version and what running a batch needs: held by the model thread for a
/// batch, or by a caller for a lone request on an idle model.
struct BatchRunner {
    model: String,
    version: i64,
    attributes: [opentelemetry::KeyValue; 2],
    label: Arc<str>,
    backend: Box<dyn Backend>,
    outputs: Vec<String>,
    stats: Arc<StatsRecorder>,
}

impl BatchRunner {
    fn execute(&mut self, batch: Vec<QueuedRequest>) {
        let started = Instant::now();
        // Drop what nobody waits for any more, before spending compute on it.
        let mut live = Vec::with_capacity(batch.len());
        for mut request in batch {
            // Closing the queue-wait span here gives it the true wait as its duration.
            request.queue_span = tracing::Span::none();
            let waited = started.saturating_duration_since(request.enqueued);
            if request.reply.is_closed() {
                tracing::debug!(parent: &request.span, model = %self.label, "request cancelled while queued");
                self.stats.request(false, waited);
            } else if request.deadline.is_some_and(|deadline| deadline <= started) {
                self.stats.request(false, waited);
                let _ = request.reply.send(Err(InferError::DeadlineExceeded {
                    model: self.label.to_string(),
                    waited_ms: waited.as_millis() as u64,
                }));
            } else {
                live.push(request);
            }
        }
        for run in split_by_length(live) {
            self.run_padded(run, started);
        }
    }

    /// Runs one padded execution and replies to its requests.
    fn run_padded(&mut self, live: Vec<QueuedRequest>, started: Instant) {
        let rows: usize = live.iter().map(|r| r.tokens.len()).sum();
        metrics::instruments()
            .batch_size
            .record(rows as u64, &self.attributes);
        let seq_len = live
            .iter()
            .flat_map(|r| r.tokens.iter().map(Vec::len))
            .max()
            .unwrap_or(0);
        let compute_spans: Vec<tracing::Span> = live
            .iter()
            .map(|r| tracing::info_span!(parent: &r.span, "compute", batch_rows = rows, seq_len))
            .collect();

        let mut wanted = vec![false; self.outputs.len()];
        for request in &live {
            for &index in &request.outputs {
                wanted[index] = true;
            }
        }
        let names: Vec<String> = self
            .outputs
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(name, _)| name.clone())
            .collect();
        // Position of each graph output in the run's result, when it was run.
        let mut position = vec![usize::MAX; self.outputs.len()];
        let mut next = 0;
        for (index, w) in wanted.iter().enumerate() {
            if *w {
                position[index] = next;
                next += 1;
            }
        }

        let input_started = Instant::now();
        let encoded = pad(&live, rows, seq_len);
        let infer_started = Instant::now();
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.backend.run(&encoded, &names)))
                .unwrap_or_else(|panic| {
                    Err(format!("the runtime panicked: {}", panic_text(&panic)))
                });
        let output_started = Instant::now();
        drop(compute_spans);

        match result {
            Ok(outputs) => {
                let mut offset = 0;
                let mut replies = Vec::with_capacity(live.len());
                for request in &live {
                    let n = request.tokens.len();
                    let values = request
                        .outputs
                        .iter()
                        .map(|&index| {
                            let out = &outputs[position[index]];
                            out.values[offset * out.row_len..(offset + n) * out.row_len].to_vec()
                        })
                        .collect::<Vec<_>>();
                    offset += n;
                    replies.push(values);
                }
                let finished = Instant::now();
                let queue_total = live
                    .iter()
                    .map(|r| started.saturating_duration_since(r.enqueued))
                    .sum();
                self.stats.execution(&ExecutionTimes {
                    rows: rows as u64,
                    requests: live.len() as u64,
                    queue_total,
                    input: infer_started - input_started,
                    infer: output_started - infer_started,
                    output: finished - output_started,
                });
                for (request, outputs) in live.into_iter().zip(replies) {
                    let reply = BatchReply {
                        outputs,
                        queue: started.saturating_duration_since(request.enqueued),
                        compute: finished - input_started,
                        batch_rows: rows,
                    };
                    self.stats
                        .request(true, finished.saturating_duration_since(request.enqueued));
                    let _ = request.reply.send(Ok(reply));
                }
            }
            Err(reason) => {
                tracing::error!(model = %self.label, %reason, rows, seq_len, "batch failed");
                for request in live {
                    self.stats.request(false, request.enqueued.elapsed());
                    let _ = request.reply.send(Err(InferError::Runtime {
                        model: self.model.clone(),
                        version: self.version,
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
}

/// Fixed cost of one execution, in padded tokens: what a run costs beyond its tokens
/// (operator launches, thread hand-offs). Measured on this model: batch 1 of 32 tokens takes
/// about as long as one extra 32-token row of a large batch, so about 32 tokens; set higher
/// so that a batch is split only when padding would clearly waste more.
const RUN_OVERHEAD_TOKENS: usize = 64;

/// Splits a batch into runs of similar length when that computes fewer padded tokens.
///
/// Every row of a run is padded to the run's longest row, so one run mixing 20- and 48-token
/// texts computes 48 tokens for each. Requests are sorted by length and cut where the padding
/// saved outweighs [`RUN_OVERHEAD_TOKENS`] per extra run (an exact dynamic programme; batches
/// hold at most a few hundred requests). Uniform batches stay whole.
fn split_by_length(mut requests: Vec<QueuedRequest>) -> Vec<Vec<QueuedRequest>> {
    if requests.len() <= 1 {
        return if requests.is_empty() {
            Vec::new()
        } else {
            vec![requests]
        };
    }
    requests.sort_by_key(longest_row);
    let n = requests.len();
    let rows: Vec<usize> = requests.iter().map(|r| r.tokens.len()).collect();
    // best[i]: cheapest cost of the first i requests; cut[i]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0; n + 1];
    best[0] = 0;
    for end in 1..=n {
        let longest = longest_row(&requests[end - 1]);
        let mut run_rows = 0;
        for start in (0..end).rev() {
            run_rows += rows[start];
            let cost = best[start] + RUN_OVERHEAD_TOKENS + run_rows * longest;
            if cost < best[end] {
                best[end] = cost;
                cut[end] = start;
            }
        }
    }
    let mut bounds = Vec::new();
    let mut end = n;
    while end > 0 {
        bounds.push(cut[end]);
        end = cut[end];
    }
    let mut runs = Vec::with_capacity(bounds.len());
    for start in bounds {
        runs.push(requests.split_off(start));
    }
    runs.reverse();
    runs
}

/// A batch being formed, with its row count and longest row.
#[derive(Default)]
struct BatchBuilder {
    requests: Vec<QueuedRequest>,
    rows: usize,
    longest: usize,
}

impl BatchBuilder {
    fn push(&mut self, request: QueuedRequest) {
        self.rows += request.tokens.len();
        self.longest = self.longest.max(longest_row(&request));
        self.requests.push(request);
    }

    /// Whether adding `request` keeps the batch within the row and padded-token limits.
    fn fits(&self, request: &QueuedRequest, limits: &BatchLimits) -> bool {
        let rows = self.rows + request.tokens.len();
        let longest = self.longest.max(longest_row(request));
        rows <= limits.max_rows && rows * longest <= limits.max_tokens
    }
}

fn longest_row(request: &QueuedRequest) -> usize {
    request.tokens.iter().map(Vec::len).max().unwrap_or(0)
}

/// Pads every row of the batch to `seq_len`, row-major.
fn pad(batch: &[QueuedRequest], rows: usize, seq_len: usize) -> EncodedBatch {
    let mut input_ids = vec![0_i64; rows * seq_len];
    let mut attention_mask = vec![0_i64; rows * seq_len];
    let texts = batch.iter().flat_map(|r| r.tokens.iter());
    for (row, ids) in texts.enumerate() {
        let start = row * seq_len;
        for (slot, id) in input_ids[start..start + ids.len()].iter_mut().zip(ids) {
            *slot = i64::from(*id);
        }
        attention_mask[start..start + ids.len()].fill(1);
    }
    EncodedBatch {
        rows,
        seq_len,
        input_ids,
        attention_mask,
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, Sender};

    use super::*;
    use crate::runtime::BatchOutput;

    /// A backend that says when a batch starts, waits to be released, records the batch's
    /// shape and whether the model thread ran it, and echoes each row's length.
    struct GatedBackend {
        batches: Arc<Mutex<Vec<(usize, usize)>>>,
        on_model_thread: Arc<Mutex<Vec<bool>>>,
        started: Sender<()>,
        release: Receiver<()>,
    }

    impl Backend for GatedBackend {
        fn run(
            &mut self,
            batch: &EncodedBatch,
            _outputs: &[String],
        ) -> Result<Vec<BatchOutput>, String> {
            let _ = self.started.send(());
            let _ = self.release.recv();
            self.batches
                .lock()
                .unwrap()
                .push((batch.rows, batch.seq_len));
            let thread = std::thread::current();
            self.on_model_thread
                .lock()
                .unwrap()
                .push(thread.name().is_some_and(|name| name.starts_with("model ")));
            let values = (0..batch.rows)
                .map(|row| {
                    batch.attention_mask[row * batch.seq_len..(row + 1) * batch.seq_len]
                        .iter()
                        .sum::<i64>() as f32
                })
                .collect();
            Ok(vec![BatchOutput { values, row_len: 1 }])
        }
    }

    struct Harness {
        batcher: DynamicBatcher,
        batches: Arc<Mutex<Vec<(usize, usize)>>>,
        on_model_thread: Arc<Mutex<Vec<bool>>>,
        stats: Arc<StatsRecorder>,
        started: Mutex<Receiver<()>>,
        release: Sender<()>,
    }

    impl Harness {
        fn new(limits: BatchLimits) -> Harness {
            let batches = Arc::new(Mutex::new(Vec::new()));
            let on_model_thread = Arc::new(Mutex::new(Vec::new()));
            let stats = Arc::new(StatsRecorder::default());
            let (started_tx, started) = std::sync::mpsc::channel();
            let (release, release_rx) = std::sync::mpsc::channel();
            let backend = GatedBackend {
                batches: batches.clone(),
                on_model_thread: on_model_thread.clone(),
                started: started_tx,
                release: release_rx,
            };
            let batcher = DynamicBatcher::start(
                "fake",
                1,
                Box::new(backend),
                vec!["len".into()],
                limits,
                stats.clone(),
            )
            .unwrap();
            Harness {
                batcher,
                batches,
                on_model_thread,
                stats,
                started: Mutex::new(started),
                release,
            }
        }

        /// Blocks until a batch is running (on the model thread or a caller's).
        fn wait_until_running(&self) {
            self.started.lock().unwrap().recv().unwrap();
        }

        /// Lets every batch, current and future, finish.
        fn release_all(&self) {
            for _ in 0..64 {
                self.release.send(()).unwrap();
            }
        }

        /// Queues a request of one text of `tokens` tokens for the model thread.
        fn submit(
            &self,
            tokens: usize,
            deadline: Option<Instant>,
        ) -> oneshot::Receiver<Result<BatchReply, InferError>> {
            let (request, answer) = self.request(tokens, deadline);
            self.batcher.submit(request).unwrap();
            answer
        }

        /// Sends a request the way the core does: run here when idle, queued otherwise.
        fn run_or_queue(&self, tokens: usize) -> oneshot::Receiver<Result<BatchReply, InferError>> {
            let (request, answer) = self.request(tokens, None);
            self.batcher.run_or_queue(request).unwrap();
            answer
        }

        fn request(
            &self,
            tokens: usize,
            deadline: Option<Instant>,
        ) -> (
            QueuedRequest,
            oneshot::Receiver<Result<BatchReply, InferError>>,
        ) {
            let (reply, answer) = oneshot::channel();
            let request = QueuedRequest {
                tokens: vec![vec![7; tokens]],
                outputs: vec![0],
                deadline,
                enqueued: Instant::now(),
                reply,
                span: tracing::Span::none(),
                queue_span: tracing::Span::none(),
                permit: self.batcher.admit().unwrap(),
            };
            (request, answer)
        }

        fn batches(&self) -> Vec<(usize, usize)> {
            self.batches.lock().unwrap().clone()
        }

        /// For each batch run so far, whether the model thread ran it.
        fn on_model_thread(&self) -> Vec<bool> {
            self.on_model_thread.lock().unwrap().clone()
        }
    }

    fn limits() -> BatchLimits {
        BatchLimits {
            max_rows: 8,
            max_tokens: 1000,
            max_queue_size: 100,
            idle_delay: Duration::ZERO,
            run_idle_on_caller: true,
        }
    }

    #[tokio::test]
    async fn an_idle_model_runs_a_lone_request_at_once_and_rows_return_to_their_requests() {
        let h = Harness::new(limits());
        h.release_all();
        assert_eq!(
            h.submit(3, None).await.unwrap().unwrap().outputs,
            vec![vec![3.0]]
        );
        assert_eq!(
            h.submit(9, None).await.unwrap().unwrap().outputs,
            vec![vec![9.0]]
        );
        assert_eq!(h.batches(), vec![(1, 3), (1, 9)]);
    }

    #[tokio::test]
    async fn requests_queued_while_busy_share_one_batch_within_the_row_limit() {
        let h = Harness::new(limits());
        let first = h.submit(4, None);
        h.wait_until_running();
        let rest: Vec<_> = (0..10).map(|_| h.submit(4, None)).collect();
        h.release_all();
        first.await.unwrap().unwrap();
        for answer in rest {
            assert_eq!(answer.await.unwrap().unwrap().outputs, vec![vec![4.0]]);
        }
        assert_eq!(h.batches(), vec![(1, 4), (8, 4), (2, 4)]);
    }

    #[tokio::test]
    async fn the_token_budget_closes_a_batch() {
        let h = Harness::new(BatchLimits {
            max_tokens: 40,
            ..limits()
        });
        let first = h.submit(4, None);
        h.wait_until_running();
        // 3 rows × 10 tokens = 30 fits; a 4th row of 20 tokens would make 4 × 20 = 80.
        let rest: Vec<_> = [10, 10, 10, 20]
            .into_iter()
            .map(|t| h.submit(t, None))
            .collect();
        h.release_all();
        first.await.unwrap().unwrap();
        for answer in rest {
            answer.await.unwrap().unwrap();
        }
        assert_eq!(h.batches(), vec![(1, 4), (3, 10), (1, 20)]);
    }

    #[tokio::test]
    async fn a_batch_of_mixed_lengths_runs_as_shorter_and_longer_runs() {
        let h = Harness::new(limits());
        let first = h.submit(4, None);
        h.wait_until_running();
        // One run would pad all six to 60 tokens (360); two runs compute 4×5 + 2×60 = 140.
        let rest: Vec<_> = [60, 5, 5, 60, 5, 5]
            .into_iter()
            .map(|t| h.submit(t, None))
            .collect();
        h.release_all();
        first.await.unwrap().unwrap();
        let outputs: Vec<f32> = futures::future::join_all(rest)
            .await
            .into_iter()
            .map(|answer| answer.unwrap().unwrap().outputs[0][0])
            .collect();
        assert_eq!(
            outputs,
            vec![60.0, 5.0, 5.0, 60.0, 5.0, 5.0],
            "each request gets its own row"
        );
        assert_eq!(h.batches(), vec![(1, 4), (4, 5), (2, 60)]);
    }

    #[tokio::test]
    async fn expired_and_cancelled_requests_are_dropped_before_compute() {
        let h = Harness::new(limits());
        let first = h.submit(4, None);
        h.wait_until_running();
        let expired = h.submit(5, Some(Instant::now()));
        drop(h.submit(6, None)); // the caller went away
        let kept = h.submit(7, None);
        h.release_all();
        first.await.unwrap().unwrap();
        let err = expired.await.unwrap().unwrap_err();
        assert!(matches!(err, InferError::DeadlineExceeded { .. }), "{err}");
        kept.await.unwrap().unwrap();
        assert_eq!(
            h.batches(),
            vec![(1, 4), (1, 7)],
            "only live requests reach the model"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let h = Harness::new(BatchLimits {
            max_queue_size: 2,
            ..limits()
        });
        let _a = h.submit(1, None);
        let _b = h.submit(1, None);
        let err = h.batcher.admit().unwrap_err();
        assert!(matches!(err, InferError::Overloaded(_)), "{err}");
        assert!(err.to_string().contains("full"), "{err}");
        h.release_all();
    }

    // The tests of the caller's run call from plain threads (outside any runtime, where
    // blocking needs no leave) unless they test the leave itself: it is counted per process,
    // and tests run in parallel.

    #[test]
    fn an_idle_model_runs_a_lone_request_on_the_callers_thread_and_counts_it() {
        let h = Harness::new(limits());
        h.release_all();
        let mut answer = h.run_or_queue(5);
        // Answered before the call returned: no hand-off to the model thread and back.
        let reply = answer
            .try_recv()
            .expect("answered during the call")
            .unwrap();
        assert_eq!(reply.outputs, vec![vec![5.0]]);
        assert_eq!(reply.batch_rows, 1);
        assert_eq!(h.batches(), vec![(1, 5)]);
        assert_eq!(
            h.on_model_thread(),
            vec![false],
            "ran on the caller's thread"
        );
        assert_eq!(h.batcher.queue_depth(), 0);
        let stats = h.stats.snapshot();
        assert_eq!(
            (stats.inference_count, stats.execution_count),
            (1, 1),
            "counted as one execution of one row"
        );
        assert_eq!((stats.success.count, stats.fail.count), (1, 0));
        assert_eq!(stats.queue.count, 1);
        assert_eq!(stats.batches.keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_busy_model_queues_and_what_queued_meanwhile_runs_as_one_batch() {
        let h = Harness::new(limits());
        let first = h.submit(4, None);
        h.wait_until_running();
        // The model thread holds the model: these return at once, queued.
        let rest: Vec<_> = (0..3).map(|_| h.run_or_queue(4)).collect();
        assert_eq!(h.batcher.queue_depth(), 3);
        h.release_all();
        first.blocking_recv().unwrap().unwrap();
        for answer in rest {
            assert_eq!(answer.blocking_recv().unwrap().unwrap().batch_rows, 3);
        }
        assert_eq!(h.batches(), vec![(1, 4), (3, 4)]);
        assert_eq!(h.on_model_thread(), vec![true, true]);
    }

    #[test]
    fn requests_arriving_while_a_caller_runs_one_wait_for_it_and_batch() {
        let h = Arc::new(Harness::new(limits()));
        let caller = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut answer = h.run_or_queue(3);
                answer
                    .try_recv()
                    .expect("answered during the call")
                    .unwrap()
            })
        };
        h.wait_until_running();
        let rest: Vec<_> = (0..3).map(|_| h.run_or_queue(6)).collect();
        assert_eq!(h.batcher.queue_depth(), 3, "queued behind the caller's run");
        h.release_all();
        assert_eq!(caller.join().unwrap().outputs, vec![vec![3.0]]);
        for answer in rest {
            assert_eq!(
                answer.blocking_recv().unwrap().unwrap().outputs,
                vec![vec![6.0]]
            );
        }
        assert_eq!(h.batches(), vec![(1, 3), (3, 6)]);
        assert_eq!(h.on_model_thread(), vec![false, true]);
    }

    #[test]
    fn a_queued_request_is_never_overtaken_by_a_callers_run() {
        let h = Harness::new(limits());
        let (probe, _answer) = h.request(5, None);
        let claim = h.batcher.claim_idle(&probe).expect("an idle model");
        let queued = h.submit(5, None);
        drop(claim);
        // The model thread has the queued request or is about to take it: a caller that found
        // the model free here would run ahead of it.
        assert!(
            h.batcher.claim_idle(&probe).is_none(),
            "claimed ahead of a queued request"
        );
        h.release_all();
        queued.blocking_recv().unwrap().unwrap();
        assert_eq!(h.on_model_thread(), vec![true]);
    }

    #[test]
    fn a_large_request_one_due_soon_or_an_idle_delay_stays_on_the_model_thread() {
        let h = Harness::new(limits());
        h.release_all();
        // 2 rows × 65 tokens = 130 padded tokens: over the bound.
        let (mut request, answer) = h.request(65, None);
        request.tokens.push(vec![7; 65]);
        h.batcher.run_or_queue(request).unwrap();
        answer.blocking_recv().unwrap().unwrap();
        // A request due soon waits where the core can still give up on it in time.
        let (request, answer) = h.request(4, Some(Instant::now() + Duration::from_millis(50)));
        h.batcher.run_or_queue(request).unwrap();
        answer.blocking_recv().unwrap().unwrap();
        // A model told to wait for companions waits for them on its own thread.
        let delayed = Harness::new(BatchLimits {
            idle_delay: Duration::from_millis(1),
            ..limits()
        });
        delayed.release_all();
        delayed.run_or_queue(4).blocking_recv().unwrap().unwrap();
        assert_eq!(h.on_model_thread(), vec![true, true]);
        assert_eq!(delayed.on_model_thread(), vec![true]);
    }

    #[tokio::test]
    async fn a_current_thread_runtime_never_blocks_for_a_run() {
        let h = Harness::new(limits());
        h.release_all();
        h.run_or_queue(4).await.unwrap().unwrap();
        assert_eq!(h.on_model_thread(), vec![true]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_last_free_worker_of_a_runtime_never_blocks_for_a_run() {
        let h = Harness::new(limits());
        h.release_all();
        let answer = tokio::spawn(async move {
            let answer = h.run_or_queue(4);
            (answer.await.unwrap().unwrap(), h)
        });
        let (_, h) = answer.await.unwrap();
        assert_eq!(h.on_model_thread(), vec![true]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_of_a_runtime_with_another_free_runs_an_idle_models_request() {
        let h = Harness::new(limits());
        h.release_all();
        let answer = tokio::spawn(async move {
            let mut answer = h.run_or_queue(4);
            (answer.try_recv().expect("answered during the call"), h)
        });
        let (reply, h) = answer.await.unwrap();
        assert_eq!(reply.unwrap().outputs, vec![vec![4.0]]);
        assert_eq!(h.on_model_thread(), vec![false]);
        assert_eq!(
            CALLER_RUNS.load(Ordering::Acquire),
            0,
            "the leave is given back"
        );
    }
}

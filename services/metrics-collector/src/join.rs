//! The prediction–feedback join: predictions served by the gateway wait here, keyed by request
//! id, for the feedback that shoppers give later (impressions, clicks, purchases, explicit
//! labels). Online model quality per model version is computed from the joined records: for the
//! purchase-intent classifier accuracy, AUC and calibration error; for rankings CTR and NDCG@k.
//!
//! Memory is bounded: predictions leave after the join window or, when the join holds its
//! maximum, oldest first (counted); each keeps at most [`MAX_ITEMS`] items and
//! [`MAX_EVENTS`] events; request ids, model names and item ids longer than [`MAX_ID_BYTES`]
//! are refused, texts cut at [`MAX_TEXT_BYTES`]. The count of predictions that left unmatched
//! is kept per model version for at most twice as many versions as predictions are held (see
//! [`FeedbackJoin::unmatched_versions_cap`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::statistics;

pub mod log;

/// Items kept per prediction (the top of a ranking; NDCG@k needs no more than k).
pub const MAX_ITEMS: usize = 100;

/// Feedback events kept per prediction; further ones are counted as unmatched.
pub const MAX_EVENTS: usize = 256;

/// Longest request id, model name and item id accepted, in bytes (the gateway refuses longer
/// ids from its callers too). A record holding a longer one is refused, not cut: these are the
/// join's keys, and two cut ones could merge two requests, two items or two models' figures.
pub const MAX_ID_BYTES: usize = 256;

/// How far ahead of the collector's clock a prediction's time may be, in milliseconds: clocks
/// of the mesh drift by far less. A prediction further ahead is refused: predictions leave the
/// join oldest first by arrival, and one timed in the future would stay until its time came,
/// holding every later one past its window with it.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// What a prediction was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Purchase-intent probabilities of texts; items are text positions.
    Classify,
    /// Candidates in the order returned, with similarity scores.
    Rank,
}

/// What the shopper did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Shown.
    Impression,
    /// Clicked.
    Click,
    /// Added to cart.
    AddToCart,
    /// Bought.
    Purchase,
    /// An explicit label (a class, or a graded relevance).
    Label(u32),
}

/// A served prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The request id.
    pub request_id: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: i64,
    /// Task.
    pub task: Task,
    /// Item ids, in the order served.
    pub items: Vec<String>,
    /// One score per item.
    pub scores: Vec<f32>,
    /// Classify: the texts (masked by the gateway), when its payload logging kept them.
    pub texts: Vec<String>,
    /// When it was served, Unix milliseconds.
    pub at_ms: i64,
}

/// A kept text with the label a shopper gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledExample {
    /// The text.
    pub text: String,
    /// The label.
    pub label: u32,
    /// The version that classified it.
    pub version: i64,
    /// When it was served.
    pub at_ms: i64,
}

/// Longest text kept per item, in bytes (longer ones are cut at a character boundary).
pub const MAX_TEXT_BYTES: usize = 1024;

fn cut(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A feedback event.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The request it is about.
    pub request_id: String,
    /// The item.
    pub item_id: String,
    /// What happened.
    pub event: Event,
}

/// Quality of one model version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionQuality {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: i64,
    /// Predictions in the window.
    pub predictions: u64,
    /// Predictions with at least one event.
    pub with_feedback: u64,
    /// Classifier items with a known label.
    pub labelled: u64,
    /// Accuracy at 0.5.
    pub accuracy: Option<f64>,
    /// ROC AUC.
    pub auc: Option<f64>,
    /// Expected calibration error (10 bins).
    pub calibration_error: Option<f64>,
    /// Rankings in the window.
    pub rankings: u64,
    /// Rankings with a click (or better) over rankings.
    pub ctr: Option<f64>,
    /// Mean NDCG@k over rankings with a relevant item.
    pub ndcg_at_k: Option<f64>,
    /// Rankings NDCG was computed over.
    pub ndcg_rankings: u64,
    /// Predictions that left the join without feedback (counted afresh when the version's
    /// count was dropped while none of its predictions was held, see
    /// [`FeedbackJoin::unmatched_versions_cap`]).
    pub unmatched_predictions: u64,
}

/// Counters of what the join could not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinCounts {
    /// Feedback whose request or item was not in the join (or beyond the events kept).
    pub unmatched_feedback: u64,
    /// Predictions evicted early because the join was full.
    pub evicted_predictions: u64,
    /// Records the sender dropped before sending.
    pub dropped_by_sender: u64,
}

struct Held {
    prediction: Prediction,
    /// (item index, event).
    events: Vec<(usize, Event)>,
}

struct Inner {
    held: HashMap<String, Held>,
    /// Request ids by arrival, oldest first.
    order: VecDeque<String>,
    unmatched_predictions: HashMap<(String, i64), u64>,
    counts: JoinCounts,
}

/// The join.
pub struct FeedbackJoin {
    inner: Mutex<Inner>,
    /// Where every change is logged, when the collector keeps its state on disk.
    wal: std::sync::OnceLock<std::sync::Arc<crate::durable::wal::Wal>>,
    window_ms: i64,
    max_predictions: usize,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    /// A field is missing or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

impl FeedbackJoin {
    /// A join keeping predictions for `window_ms` milliseconds, at most `max_predictions`.
    pub fn new(window_ms: i64, max_predictions: usize) -> FeedbackJoin {
        FeedbackJoin {
            inner: Mutex::new(Inner {
                held: HashMap::new(),
                order: VecDeque::new(),
                unmatched_predictions: HashMap::new(),
                counts: JoinCounts::default(),
            }),
            wal: std::sync::OnceLock::new(),
            window_ms,
            max_predictions: max_predictions.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept texts of `model`'s classifications with an explicit label, newest first, at
    /// most `limit`.
    pub fn labelled_examples(
        &self,
        model: &str,
        limit: usize,
        now_ms: i64,
    ) -> Vec<LabelledExample> {
        let mut inner = self.lock();
        self.expire(&mut inner, now_ms);
        let mut out = Vec::new();
        for id in inner.order.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let Some(held) = inner.held.get(id) else {
                continue;
            };
            let p = &held.prediction;
            if p.model != model || p.task != Task::Classify || p.texts.is_empty() {
                continue;
            }
            // The last label given to each item counts.
            let mut labels: BTreeMap<usize, u32> = BTreeMap::new();
            for (item, event) in &held.events {
                if let Event::Label(label) = event {
                    labels.insert(*item, *label);
                }
            }
            for (item, label) in labels {
                if let Some(text) = p.texts.get(item) {
                    out.push(LabelledExample {
                        text: text.clone(),
                        label,
                        version: p.version,
                        at_ms: p.at_ms,
                    });
                }
            }
        }
        out.truncate(limit);
        out
    }

    /// Adds a prediction received at `now_ms`.
    pub fn predict(&self, mut prediction: Prediction, now_ms: i64) -> Result<(), BadRecord> {
        if prediction.request_id.is_empty() {
            return Err(BadRecord::Invalid("prediction without request_id".into()));
        }
        if prediction.request_id.len() > MAX_ID_BYTES {
            return Err(BadRecord::Invalid(format!(
                "a prediction's request_id is {} bytes; at most {MAX_ID_BYTES} are accepted",
                prediction.request_id.len()
            )));
        }
        if prediction.model.len() > MAX_ID_BYTES {
            return Err(BadRecord::Invalid(format!(
                "prediction {} names a model of {} bytes; at most {MAX_ID_BYTES} are accepted",
                prediction.request_id,
                prediction.model.len()
            )));
        }
        if let Some((i, item)) = prediction
            .items
            .iter()
            .take(MAX_ITEMS)
            .enumerate()
            .find(|(_, item)| item.len() > MAX_ID_BYTES)
        {
            return Err(BadRecord::Invalid(format!(
                "prediction {} has an item id of {} bytes (item {i}); at most {MAX_ID_BYTES} are accepted",
                prediction.request_id,
                item.len()
            )));
        }
        if prediction.items.len() != prediction.scores.len() {
            return Err(BadRecord::Invalid(format!(
                "prediction {} has {} items but {} scores",
                prediction.request_id,
                prediction.items.len(),
                prediction.scores.len()
            )));
        }
        if prediction.scores.iter().any(|s| !s.is_finite()) {
            return Err(BadRecord::Invalid(format!(
                "prediction {} has a non-finite score",
                prediction.request_id
            )));
        }
        if prediction.at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(BadRecord::Invalid(format!(
                "prediction {} was served at Unix millisecond {}, {} s ahead of the collector's clock; at most {} s ahead is accepted (check the sender's clock)",
                prediction.request_id,
                prediction.at_ms,
                prediction.at_ms.saturating_sub(now_ms) / 1000,
                MAX_CLOCK_SKEW_MS / 1000
            )));
        }
        if !prediction.texts.is_empty() && prediction.texts.len() != prediction.items.len() {
            return Err(BadRecord::Invalid(format!(
                "prediction {} has {} items but {} texts",
                prediction.request_id,
                prediction.items.len(),
                prediction.texts.len()
            )));
        }
        prediction.items.truncate(MAX_ITEMS);
        prediction.scores.truncate(MAX_ITEMS);
        prediction.texts.truncate(MAX_ITEMS);
        prediction.texts = std::mem::take(&mut prediction.texts)
            .into_iter()
            .map(cut)
            .collect();
        let mut inner = self.lock();
        self.expire(&mut inner, now_ms);
        if inner.held.contains_key(&prediction.request_id) {
            return Err(BadRecord::Invalid(format!(
                "a prediction for request {} is already held",
                prediction.request_id
            )));
        }
        while inner.held.len() >= self.max_predictions {
            if !self.evict_oldest(&mut inner) {
                break;
            }
            inner.counts.evicted_predictions += 1;
        }
        self.log_prediction(&prediction, now_ms);
        inner.order.push_back(prediction.request_id.clone());
        inner.held.insert(
            prediction.request_id.clone(),
            Held {
                prediction,
                events: Vec::new(),
            },
        );
        Ok(())
    }

    /// Joins a feedback event to its prediction; one naming an id longer than
    /// [`MAX_ID_BYTES`] is refused (no prediction can hold it).
    pub fn feedback(&self, feedback: Feedback) -> Result<(), BadRecord> {
        for (what, id) in [
            ("request_id", &feedback.request_id),
            ("item_id", &feedback.item_id),
        ] {
            if id.len() > MAX_ID_BYTES {
                return Err(BadRecord::Invalid(format!(
                    "a feedback's {what} is {} bytes; at most {MAX_ID_BYTES} are accepted",
                    id.len()
                )));
            }
        }
        let mut inner = self.lock();
        self.log_feedback(&feedback);
        let joined = match inner.held.get_mut(&feedback.request_id) {
            Some(held) if held.events.len() < MAX_EVENTS => {
                match held
                    .prediction
                    .items
                    .iter()
                    .position(|i| *i == feedback.item_id)
                {
                    Some(item) => {
                        held.events.push((item, feedback.event));
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !joined {
            inner.counts.unmatched_feedback += 1;
        }
        Ok(())
    }

    /// Counts records a sender dropped.
    pub fn sender_dropped(&self, n: u64) {
        let mut inner = self.lock();
        self.log_dropped(n);
        inner.counts.dropped_by_sender += n;
    }

    /// Drops predictions older than the join window.
    fn expire(&self, inner: &mut Inner, now_ms: i64) {
        let horizon = now_ms - self.window_ms;
        while let Some(id) = inner.order.front() {
            match inner.held.get(id) {
                Some(h) if h.prediction.at_ms >= horizon => break,
                _ => {
                    self.evict_oldest(inner);
                }
            }
        }
    }

    /// Quality per model version over predictions made within `window_ms` of `now_ms` (0 for
    /// the whole join window), NDCG cut at `k`.
    pub fn quality(
        &self,
        model: &str,
        window_ms: i64,
        k: usize,
        now_ms: i64,
    ) -> (Vec<VersionQuality>, JoinCounts) {
        let mut inner = self.lock();
        self.expire(&mut inner, now_ms);
        let since = if window_ms > 0 {
            now_ms - window_ms
        } else {
            i64::MIN
        };
        let mut versions: BTreeMap<(String, i64), Accumulator> = BTreeMap::new();
        for held in inner.held.values() {
            let p = &held.prediction;
            if p.at_ms < since || (!model.is_empty() && p.model != model) {
                continue;
            }
            let (q, scored, ndcg_sum) = versions
                .entry((p.model.clone(), p.version))
                .or_insert_with(|| {
                    (
                        VersionQuality {
                            model: p.model.clone(),
                            version: p.version,
                            ..Default::default()
                        },
                        Vec::new(),
                        0.0,
                    )
                });
            q.predictions += 1;
            if !held.events.is_empty() {
                q.with_feedback += 1;
            }
            match p.task {
                Task::Classify => {
                    for (item, score) in p.scores.iter().enumerate() {
                        if let Some(label) = class_label(&held.events, item) {
                            scored.push((*score, label));
                        }
                    }
                }
                Task::Rank => {
                    q.rankings += 1;
                    let relevances: Vec<f64> = (0..p.items.len())
                        .map(|item| relevance(&held.events, item))
                        .collect();
                    if relevances.iter().any(|r| *r > 0.0) {
                        q.ctr = Some(q.ctr.unwrap_or(0.0) + 1.0);
                    }
                    if let Some(ndcg) = statistics::ndcg_at_k(&relevances, k) {
                        *ndcg_sum += ndcg;
                        q.ndcg_rankings += 1;
                    }
                }
            }
        }
        let unmatched = &inner.unmatched_predictions;
        let result = versions
            .into_values()
            .map(|(mut q, scored, ndcg_sum)| {
                q.labelled = scored.len() as u64;
                q.accuracy = statistics::accuracy(&scored);
                q.auc = statistics::auc(&scored);
                q.calibration_error = statistics::calibration_error(&scored, 10);
                if q.rankings > 0 {
                    q.ctr = Some(q.ctr.unwrap_or(0.0) / q.rankings as f64);
                }
                q.ndcg_at_k = (q.ndcg_rankings > 0).then(|| ndcg_sum / q.ndcg_rankings as f64);
                q.unmatched_predictions = unmatched
                    .get(&(q.model.clone(), q.version))
                    .copied()
                    .unwrap_or(0);
                q
            })
            .collect();
        (result, inner.counts)
    }
}

/// A version's quality so far, its scored classifier items, and its sum of NDCG values.
type Accumulator = (VersionQuality, Vec<(f32, bool)>, f64);

impl FeedbackJoin {
    /// Most model versions whose unmatched predictions are counted at once: twice the
    /// predictions held. A version's count is reported only while a prediction of it is held,
    /// so at most `max_predictions` counts are ever shown; when the map reaches this cap, the
    /// counts of versions with no prediction held are dropped (a version that comes back counts
    /// afresh). Live versions never lose theirs, and none is folded into another's, so every
    /// figure shown stays whole; the pruning runs once per `max_predictions` new versions.
    pub fn unmatched_versions_cap(&self) -> usize {
        self.max_predictions.saturating_mul(2)
    }

    /// Removes the oldest held prediction, counting it unmatched when it got no feedback. False
    /// when nothing is held.
    fn evict_oldest(&self, inner: &mut Inner) -> bool {
        while let Some(id) = inner.order.pop_front() {
            if let Some(held) = inner.held.remove(&id) {
                if held.events.is_empty() {
                    let key = (held.prediction.model, held.prediction.version);
                    if !inner.unmatched_predictions.contains_key(&key)
                        && inner.unmatched_predictions.len() >= self.unmatched_versions_cap()
                    {
                        prune_unmatched(inner);
                    }
                    *inner.unmatched_predictions.entry(key).or_default() += 1;
                }
                return true;
            }
        }
        false
    }
}

/// Drops the unmatched counts of versions with no prediction held (none of them is reported).
fn prune_unmatched(inner: &mut Inner) {
    let live: HashSet<(&str, i64)> = inner
        .held
        .values()
        .map(|h| (h.prediction.model.as_str(), h.prediction.version))
        .collect();
    inner
        .unmatched_predictions
        .retain(|(model, version), _| live.contains(&(model.as_str(), *version)));
}

/// The class of a Classify item: an explicit label wins, then a purchase (1), then an
/// impression without purchase (0).
fn class_label(events: &[(usize, Event)], item: usize) -> Option<bool> {
    let mut label = None;
    let mut explicit = None;
    for (i, event) in events {
        if *i != item {
            continue;
        }
        match event {
            Event::Label(l) => explicit = Some(*l > 0),
            Event::Purchase => label = Some(true),
            Event::Impression => label = label.or(Some(false)),
            Event::Click | Event::AddToCart => {}
        }
    }
    explicit.or(label)
}

/// Graded relevance of a ranked item: the strongest event (click 1, add-to-cart 2, purchase 3,
/// or the explicit label).
fn relevance(events: &[(usize, Event)], item: usize) -> f64 {
    events
        .iter()
        .filter(|(i, _)| *i == item)
        .map(|(_, e)| match e {
            Event::Impression => 0.0,
            Event::Click => 1.0,
            Event::AddToCart => 2.0,
            Event::Purchase => 3.0,
            Event::Label(l) => f64::from(*l),
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_texts_are_served_newest_first_with_their_last_label() {
        let join = FeedbackJoin::new(60_000, 100);
        let mut kept = prediction("a", 2, Task::Classify, &[0.9, 0.1], 0);
        kept.texts = vec!["buy a lamp".into(), "x".repeat(2000)];
        join.predict(kept, 0).unwrap();
        // Not kept by the gateway: no texts.
        join.predict(prediction("b", 2, Task::Classify, &[0.5], 1), 1)
            .unwrap();
        for (id, item, label) in [("a", "0", 0), ("a", "0", 1), ("a", "1", 0), ("b", "0", 1)] {
            join.feedback(Feedback {
                request_id: id.into(),
                item_id: item.into(),
                event: Event::Label(label),
            })
            .unwrap();
        }
        let found = join.labelled_examples("m", 10, 2);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].text.as_str(), found[0].label), ("buy a lamp", 1));
        assert_eq!(found[1].text.len(), MAX_TEXT_BYTES);
        assert_eq!(found[1].version, 2);
        assert!(join.labelled_examples("other", 10, 2).is_empty());
        assert_eq!(join.labelled_examples("m", 1, 2).len(), 1);
        let mut bad = prediction("c", 2, Task::Classify, &[0.5, 0.5], 3);
        bad.texts = vec!["one".into()];
        assert!(join.predict(bad, 3).is_err(), "texts must match items");
    }

    fn prediction(id: &str, version: i64, task: Task, scores: &[f32], at_ms: i64) -> Prediction {
        Prediction {
            request_id: id.to_owned(),
            model: "m".to_owned(),
            version,
            task,
            items: (0..scores.len()).map(|i| i.to_string()).collect(),
            scores: scores.to_vec(),
            texts: Vec::new(),
            at_ms,
        }
    }

    fn feedback(id: &str, item: &str, event: Event) -> Feedback {
        Feedback {
            request_id: id.to_owned(),
            item_id: item.to_owned(),
            event,
        }
    }

    #[test]
    fn classifier_labels_come_from_labels_purchases_and_impressions() {
        let join = FeedbackJoin::new(60_000, 100);
        join.predict(prediction("a", 1, Task::Classify, &[0.9, 0.2, 0.6], 0), 0)
            .unwrap();
        join.feedback(feedback("a", "0", Event::Impression))
            .unwrap();
        join.feedback(feedback("a", "0", Event::Purchase)).unwrap();
        join.feedback(feedback("a", "1", Event::Impression))
            .unwrap();
        join.feedback(feedback("a", "2", Event::Label(0))).unwrap();
        join.feedback(feedback("a", "7", Event::Click)).unwrap();
        join.feedback(feedback("zzz", "0", Event::Click)).unwrap();
        let (q, counts) = join.quality("", 0, 10, 1000);
        assert_eq!(q[0].labelled, 3);
        // Labels 1, 0, 0 for scores 0.9, 0.2, 0.6: AUC 1, accuracy 2/3.
        assert_eq!(q[0].auc, Some(1.0));
        assert!((q[0].accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(counts.unmatched_feedback, 2);
    }

    #[test]
    fn rankings_give_ctr_and_ndcg_and_unmatched_predictions_are_counted() {
        let join = FeedbackJoin::new(10_000, 100);
        join.predict(prediction("r1", 2, Task::Rank, &[0.9, 0.8, 0.7], 0), 0)
            .unwrap();
        join.predict(prediction("r2", 2, Task::Rank, &[0.9, 0.8], 0), 0)
            .unwrap();
        join.feedback(feedback("r1", "1", Event::Click)).unwrap();
        let (q, _) = join.quality("m", 0, 10, 5000);
        assert_eq!(q[0].rankings, 2);
        assert_eq!(q[0].ctr, Some(0.5));
        // Relevances [0, 1, 0]: DCG = 1/log2(3), IDCG = 1.
        let expected = 1.0 / 3f64.log2();
        assert!((q[0].ndcg_at_k.unwrap() - expected).abs() < 1e-12);
        // After the window both leave; r2 had no feedback.
        let (q, _) = join.quality("m", 0, 10, 20_000);
        assert!(q.is_empty());
        join.predict(prediction("r3", 2, Task::Rank, &[0.5], 20_000), 20_000)
            .unwrap();
        let (q, _) = join.quality("m", 0, 10, 20_000);
        assert_eq!(q[0].unmatched_predictions, 1);
    }

    #[test]
    fn a_prediction_from_the_future_does_not_keep_older_ones_from_expiring() {
        let join = FeedbackJoin::new(10_000, 100);
        // A sender whose clock is a day ahead.
        let day = 86_400_000;
        let ahead = join.predict(prediction("future", 1, Task::Rank, &[0.5], day), 0);
        assert!(ahead.is_err(), "a prediction a day ahead was accepted");
        assert!(
            ahead.unwrap_err().to_string().contains("future"),
            "the refusal names the prediction"
        );
        join.predict(prediction("now", 1, Task::Rank, &[0.5], 0), 0)
            .unwrap();
        let (q, _) = join.quality("m", 0, 10, 20_000);
        assert!(q.is_empty(), "the window passed, nothing is held: {q:?}");
        // Within the allowed skew, a clock slightly ahead is accepted.
        join.predict(prediction("close", 1, Task::Rank, &[0.5], 21_000), 20_000)
            .unwrap();
    }

    #[test]
    fn unmatched_counts_stay_bounded_and_live_versions_keep_theirs() {
        let join = FeedbackJoin::new(1_000_000, 10);
        // Every other prediction is of version 0, which always has predictions held; the
        // others each of a version of their own, evicted unmatched when the join is full.
        let total = 100_000;
        for i in 0..total {
            let version = if i % 2 == 0 { 0 } else { i };
            join.predict(
                prediction(&format!("r{i}"), version, Task::Rank, &[0.5], i),
                i,
            )
            .unwrap();
        }
        let held = join.lock().unmatched_predictions.len();
        assert!(
            held <= 2 * 10,
            "{held} unmatched counts held by a join of 10 predictions"
        );
        let (q, counts) = join.quality("m", 0, 10, total);
        assert_eq!(counts.evicted_predictions, (total - 10) as u64);
        let live = q.iter().find(|q| q.version == 0).unwrap();
        assert_eq!(
            live.unmatched_predictions,
            (total as u64 - 10) / 2,
            "version 0 still has predictions held: its count is whole"
        );
    }

    #[test]
    fn over_long_ids_model_names_and_items_are_refused() {
        let join = FeedbackJoin::new(60_000, 100);
        let huge = "x".repeat(1 << 20);
        let long_id = prediction(&huge, 1, Task::Rank, &[0.5], 0);
        let err = join.predict(long_id, 0).unwrap_err().to_string();
        assert!(
            err.contains("request_id") && err.contains(&MAX_ID_BYTES.to_string()),
            "{}",
            &err[..err.len().min(200)]
        );
        assert!(
            err.len() < 500,
            "the refusal echoes the id: {} bytes",
            err.len()
        );
        let long_model = Prediction {
            model: huge.clone(),
            ..prediction("a", 1, Task::Rank, &[0.5], 0)
        };
        assert!(
            join.predict(long_model, 0).is_err(),
            "a 1 MiB model name was kept"
        );
        let mut long_item = prediction("b", 1, Task::Rank, &[0.5, 0.4], 0);
        long_item.items[1] = huge.clone();
        assert!(
            join.predict(long_item, 0).is_err(),
            "a 1 MiB item id was kept"
        );
        // At the limit: kept.
        let at_limit = prediction(&"y".repeat(MAX_ID_BYTES), 1, Task::Rank, &[0.5], 0);
        join.predict(at_limit, 0).unwrap();
        // Feedback naming such an id cannot match anything: refused, not logged.
        assert!(
            join.feedback(feedback(&huge, "0", Event::Click)).is_err(),
            "feedback with a 1 MiB request id was taken"
        );
        assert!(join.feedback(feedback("b", &huge, Event::Click)).is_err());
        let (q, counts) = join.quality("", 0, 10, 1);
        assert_eq!(q[0].predictions, 1);
        assert_eq!(counts.unmatched_feedback, 0);
    }

    #[test]
    fn a_full_join_evicts_the_oldest_and_counts_it() {
        let join = FeedbackJoin::new(1_000_000, 2);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            join.predict(prediction(id, 1, Task::Rank, &[0.1], i as i64), i as i64)
                .unwrap();
        }
        join.feedback(feedback("a", "0", Event::Click)).unwrap();
        let (q, counts) = join.quality("", 0, 10, 3);
        assert_eq!(q[0].predictions, 2);
        assert_eq!(counts.evicted_predictions, 1);
        assert_eq!(counts.unmatched_feedback, 1);
        assert!(
            join.predict(
                Prediction {
                    scores: vec![],
                    texts: vec![],
                    ..prediction("x", 1, Task::Rank, &[0.1], 0)
                },
                0
            )
            .is_err()
        );
    }
}

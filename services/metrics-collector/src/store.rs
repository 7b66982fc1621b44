//! The metric store: every series received over OTLP, its current value and its time windows.
//!
//! A series is a metric name plus its labels (the data point's attributes and the sender's
//! `service.name` as `job`). Cumulative sums and histograms are kept as sent, with counter resets
//! (a new start time, or a value going down) folded into an offset so that the value never goes
//! backwards; delta points are added up. After each point the series' value is written into its
//! [`Ring`]s (1 s for an hour, 1 min for a day), which the [`crate::query`] engine reads.
//!
//! Memory is bounded twice: each metric holds at most `max_series` series, and the windows of all
//! series together at most `max_window_bytes` (each series reserves its windows' full size when
//! created). Points of series beyond either bound are refused and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::window::{Columns, HOUR_STEPS, MINUTE_STEPS, SECOND_STEPS, Slot};

pub mod log;

/// Labels of a series, sorted by name.
pub type Labels = Vec<(String, String)>;

/// What kind of metric a family is, as Prometheus sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic sum.
    Counter,
    /// A gauge or a non-monotonic sum.
    Gauge,
    /// An explicit-bucket histogram.
    Histogram,
}

/// One series' value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Counter or gauge value.
    Scalar(f64),
    /// Histogram: upper bounds, count per bucket (one more than the bounds, the last is +Inf),
    /// sum and count.
    Histogram {
        /// Bucket upper bounds.
        bounds: Vec<f64>,
        /// Count per bucket (not cumulative across buckets).
        counts: Vec<u64>,
        /// Sum of observations.
        sum: f64,
        /// Number of observations.
        count: u64,
    },
}

impl Value {
    /// The value as the numbers a window step holds: a scalar as itself; a histogram as its
    /// bucket counts, then its sum, then its count.
    fn flat(&self) -> Vec<f64> {
        match self {
            Value::Scalar(v) => vec![*v],
            Value::Histogram {
                counts, sum, count, ..
            } => counts
                .iter()
                .map(|c| *c as f64)
                .chain([*sum, *count as f64])
                .collect(),
        }
    }
}

/// Numbers per step of a gauge's minute and hour tiers: sum and number of points in the step,
/// maximum, minimum, last.
const GAUGE_MINUTE_WIDTH: usize = 5;

/// One series: its labels, current value, and where its columns are in the family's windows.
#[derive(Debug)]
pub struct Series {
    /// Labels, sorted.
    pub labels: Labels,
    /// The current value (cumulative for counters and histograms).
    pub(crate) value: Value,
    /// Last raw cumulative point and its start time, to detect resets.
    pub(crate) last_raw: Option<(u64, Value)>,
    /// Value before the first point: zero when the sender started counting after the collector
    /// did (everything it reports is new), else the first point's value (what was counted
    /// before is not attributed to any window).
    pub(crate) origin: Vec<f64>,
    /// Offset and width of the series' column in the 1 s tier.
    pub(crate) second_column: (usize, usize),
    /// Offset and width of the series' column in the 1 min tier.
    pub(crate) minute_column: (usize, usize),
    /// Offset and width of the series' column in the 1 h tier (same width as the minute tier's).
    pub(crate) hour_column: (usize, usize),
    /// First second a point arrived.
    pub first: i64,
    /// Last second a point arrived.
    pub updated: i64,
    /// Last minute a point arrived (a gauge's minute aggregate starts afresh in a new minute).
    pub(crate) last_minute: i64,
    /// Last hour a point arrived.
    pub(crate) last_hour: i64,
    /// Replaced by a new series of the same labels (its bucket bounds changed); kept only
    /// because its columns cannot be reclaimed.
    pub retired: bool,
}

impl Series {
    /// The current value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Offset of the series' column in a tier.
    pub fn offset(&self, tier: Tier) -> usize {
        match tier {
            Tier::Seconds => self.second_column.0,
            Tier::Minutes => self.minute_column.0,
            Tier::Hours => self.hour_column.0,
        }
    }
}

/// Series indices a selector matched, and the generation they were computed at.
pub type Selected = (u64, Arc<Vec<usize>>);

/// A result cached by key, valid while the family's generation is the one recorded.
pub type Cached<K, V> = (K, u64, Arc<V>);

/// The group of every series for one `group_by` list.
#[derive(Debug)]
pub struct Grouping {
    /// Group index of each series (by series index).
    pub group_of: Vec<u32>,
    /// Label values of each group, in `group_by` order.
    pub keys: Vec<Vec<String>>,
}

/// A resolution tier of the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// One step per second, the last hour.
    Seconds,
    /// One step per minute, the last 24 hours.
    Minutes,
    /// One step per hour, the last 7 days.
    Hours,
}

impl Tier {
    /// Seconds per step.
    pub fn step_seconds(self) -> i64 {
        match self {
            Tier::Seconds => 1,
            Tier::Minutes => 60,
            Tier::Hours => 3600,
        }
    }

    /// How far back the tier answers, in seconds.
    pub fn reach_seconds(self) -> i64 {
        match self {
            Tier::Seconds => 3600,
            Tier::Minutes => 86_400,
            Tier::Hours => 7 * 86_400,
        }
    }
}

/// One metric as [`MetricStore::catalog`] lists it.
#[derive(Debug, Clone)]
pub struct MetricInfo {
    /// The metric's name.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Unit, as sent.
    pub unit: String,
    /// Description, as sent.
    pub description: String,
    /// Series kept (retired ones included).
    pub series: usize,
    /// Points refused for this metric.
    pub refused: u64,
}

/// A metric family: one name, one kind, many series, and their windows.
#[derive(Debug)]
pub struct Family {
    /// Kind.
    pub kind: Kind,
    /// Description, as sent.
    pub description: String,
    /// Unit, as sent (UCUM, e.g. `s`).
    pub unit: String,
    /// Every series, in order of appearance (retired ones included).
    pub series: Vec<Series>,
    /// Index of the live series of each label set.
    pub(crate) index: HashMap<Labels, usize, foldhash::fast::RandomState>,
    /// 1 s steps of every series.
    pub(crate) seconds: Columns,
    /// 1 min steps of every series.
    pub(crate) minutes: Columns,
    /// 1 h steps of every series.
    pub(crate) hours: Columns,
    /// The sender that created the metric, as [`MetricStore::record_sent`] named it (the key it
    /// presented, or its `service.name` when writes are open); empty when not known.
    pub(crate) creator: String,
    /// Set when its last series was retired and the metric left the store (its creator's count
    /// given back): a writer that still holds it looks the name up again.
    pub(crate) removed: bool,
    /// Changes whenever a series is added, so that cached groupings can tell they are stale.
    pub generation: u64,
    /// Groupings of the series computed by queries, reused while `generation` holds.
    pub groupings: Mutex<Vec<Cached<Vec<String>, Grouping>>>,
    /// Series selected by queries' matchers (by their text) and the generation they were
    /// computed at, reused while `generation` holds.
    pub selections: Mutex<HashMap<String, Selected>>,
    /// Points refused for this family.
    pub refused: u64,
}

impl Family {
    pub(crate) fn new(kind: Kind, description: &str, unit: &str) -> Family {
        Family {
            creator: String::new(),
            removed: false,
            kind,
            description: description.to_owned(),
            unit: unit.to_owned(),
            series: Vec::new(),
            index: HashMap::default(),
            seconds: Columns::new(SECOND_STEPS),
            minutes: Columns::new(MINUTE_STEPS),
            hours: Columns::new(HOUR_STEPS),
            generation: 0,
            groupings: Mutex::new(Vec::new()),
            selections: Mutex::new(HashMap::new()),
            refused: 0,
        }
    }

    /// Live series (not retired).
    pub fn live_series(&self) -> usize {
        self.index.len()
    }

    /// The tier's columns.
    pub fn tier(&self, tier: Tier) -> &Columns {
        match tier {
            Tier::Seconds => &self.seconds,
            Tier::Minutes => &self.minutes,
            Tier::Hours => &self.hours,
        }
    }

    /// A series' value at the end of `step` of a tier, as flat numbers: before its first point,
    /// its origin; `None` when the step is older than the tier keeps.
    pub fn at<'a>(&'a self, series: &'a Series, tier: Tier, step: i64) -> Option<&'a [f64]> {
        let (offset, width) = match tier {
            Tier::Seconds => series.second_column,
            Tier::Minutes => series.minute_column,
            Tier::Hours => series.hour_column,
        };
        match self.tier(tier).get(step, offset, width) {
            Slot::Before if tier == Tier::Seconds || self.kind != Kind::Gauge => {
                Some(&series.origin)
            }
            Slot::Before => None,
            Slot::Value(v) => Some(v),
            Slot::Evicted => None,
        }
    }

    /// A series' value in a row found by [`Columns::row`]: before its first point, its origin;
    /// `None` when the row is evicted.
    pub fn in_row<'a>(
        &'a self,
        series: &'a Series,
        tier: Tier,
        row: Slot<'a>,
    ) -> Option<&'a [f64]> {
        let (offset, width) = match tier {
            Tier::Seconds => series.second_column,
            Tier::Minutes => series.minute_column,
            Tier::Hours => series.hour_column,
        };
        match row {
            Slot::Value(values) if values.len() >= offset + width => {
                Some(&values[offset..offset + width])
            }
            Slot::Evicted => None,
            _ if tier == Tier::Seconds || self.kind != Kind::Gauge => Some(&series.origin),
            _ => None,
        }
    }

    /// Writes series `i`'s current value into the windows at second `now`.
    fn write_windows(&mut self, i: usize, now: i64) {
        let series = &mut self.series[i];
        let (offset, width) = series.second_column;
        let slot = self.seconds.slot_mut(now, offset, width);
        match &series.value {
            Value::Scalar(v) => slot[0] = *v,
            Value::Histogram {
                counts, sum, count, ..
            } => {
                let n = counts.len();
                for (s, c) in slot.iter_mut().zip(counts) {
                    *s = *c as f64;
                }
                slot[n] = *sum;
                slot[n + 1] = *count as f64;
            }
        }
        // A scalar is copied by value; a histogram's numbers once, since the tiers are other
        // row buffers.
        let scalar = slot[0];
        let histogram: Option<Vec<f64>> =
            matches!(series.value, Value::Histogram { .. }).then(|| slot.to_vec());
        let gauge = self.kind == Kind::Gauge;
        let minute = now.div_euclid(60);
        let hour = now.div_euclid(3600);
        let coarse = [
            (
                &mut self.minutes,
                series.minute_column,
                minute,
                series.last_minute,
            ),
            (&mut self.hours, series.hour_column, hour, series.last_hour),
        ];
        for (columns, (offset, width), step, last) in coarse {
            let agg = columns.slot_mut(step, offset, width);
            match &histogram {
                Some(numbers) => agg.copy_from_slice(numbers),
                None if !gauge => agg[0] = scalar,
                None if last < step => agg.copy_from_slice(&[scalar, 1.0, scalar, scalar, scalar]),
                None => {
                    agg[0] += scalar;
                    agg[1] += 1.0;
                    agg[2] = agg[2].max(scalar);
                    agg[3] = agg[3].min(scalar);
                    agg[4] = scalar;
                }
            }
        }
        series.last_minute = minute;
        series.last_hour = hour;
        series.updated = now;
    }
}

/// A copy of a family's current values, for exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyValues {
    /// Kind.
    pub kind: Kind,
    /// Description, as sent.
    pub description: String,
    /// Unit, as sent.
    pub unit: String,
    /// Series, sorted by labels, with their current values.
    pub series: BTreeMap<Labels, Value>,
}

/// A data point as received, already decoded from OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Labels, sorted.
    pub labels: Labels,
    /// Start of the point's time window (cumulative points share it until a reset).
    pub start_time_ns: u64,
    /// Whether the point is a delta (added) or cumulative (absolute).
    pub delta: bool,
    /// The value.
    pub value: Value,
}

/// Why a point was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The metric already holds its maximum number of series.
    #[error("metric '{0}' holds its maximum of {1} series")]
    Cardinality(String, usize),
    /// The windows of all series together reached their memory limit.
    #[error("the collector's windows hold their limit of {0} bytes; series of '{1}' refused")]
    Memory(u64, String),
    /// The metric was first sent as another kind.
    #[error("metric '{0}' was first sent as {1:?}, now as {2:?}")]
    KindChanged(String, Kind, Kind),
    /// A histogram point whose bucket counts do not match its bounds.
    #[error("histogram '{0}' has {1} bucket counts for {2} bounds")]
    BadHistogram(String, usize, usize),
    /// A value that is not a finite number.
    #[error("metric '{0}' has a non-finite value")]
    NotFinite(String),
    /// A negative value of a monotonic sum (a counter only goes up).
    #[error("metric '{0}' is a monotonic sum, which only goes up: a point may not be negative")]
    Negative(String),
    /// A histogram point whose bucket counts do not add up to its count (OTLP requires it).
    #[error("histogram '{0}' has bucket counts adding up to {1}, not its count {2}")]
    BucketsNotCount(String, u128, u64),
    /// A point whose addition would take its series' total beyond what can be held (a sum
    /// past the largest finite number, a count past 2^64 - 1); the total stays as it was.
    #[error(
        "metric '{0}': adding the point would take the series' total beyond the largest number it can hold; the total is kept as it was"
    )]
    Overflow(String),
    /// The store already holds its maximum number of metrics.
    #[error("the collector holds its maximum of {1} metrics; new metric '{0}' refused")]
    Families(String, usize),
    /// The sender already created its maximum number of metrics.
    #[error(
        "sender '{0}' already sent its maximum of {2} metrics; new metric '{1}' refused (a metric whose series all went silent and were retired no longer counts)"
    )]
    SenderFamilies(String, String, usize),
}

/// Limits of a store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Series per metric.
    pub max_series: usize,
    /// Bytes of windows, all series together.
    pub max_window_bytes: u64,
    /// Metrics (families), all senders together.
    pub max_families: usize,
    /// Metrics one sender may create and hold: the key it presents, or its `service.name` when
    /// writes are open (see [`MetricStore::record_sent`]). A metric whose last series is retired
    /// no longer counts.
    pub max_families_per_sender: usize,
    /// Unix nanoseconds when the collector started: cumulative points whose start time is later
    /// were counted entirely while the collector listened.
    pub started_ns: u64,
    /// Seconds without a point after which a series is stale: its sender (a replica that went
    /// away) no longer counts in instant (`last`) queries nor on `/metrics`. Window queries
    /// still count what it sent within the window.
    pub stale_after_seconds: i64,
}

/// Every family, by name.
pub struct MetricStore {
    families: RwLock<HashMap<String, Arc<RwLock<Family>>>>,
    limits: Limits,
    window_bytes: AtomicU64,
    refused: AtomicU64,
    /// Metrics held per creator, for [`Limits::max_families_per_sender`].
    created_by: Mutex<HashMap<String, usize>>,
    /// Where every stored point is logged, when the collector keeps its state on disk.
    wal: std::sync::OnceLock<Arc<crate::durable::wal::Wal>>,
}

/// Adds `new` to `total`, less `old` when given (the last cumulative point of the same start):
/// `false`, with `total` as it was, when a number of it would overflow (a sum no longer finite,
/// a count past `u64::MAX`), so that a total never becomes infinite nor wraps around.
fn add(total: &mut Value, new: &Value, old: Option<&Value>) -> bool {
    match (total, new) {
        (Value::Scalar(t), Value::Scalar(n)) => {
            let o = match old {
                Some(Value::Scalar(o)) => *o,
                _ => 0.0,
            };
            let next = *t + (n - o);
            if !next.is_finite() {
                return false;
            }
            *t = next;
            true
        }
        (
            Value::Histogram {
                counts, sum, count, ..
            },
            Value::Histogram {
                counts: nc,
                sum: ns,
                count: nn,
                ..
            },
        ) => {
            let (oc, os, on) = match old {
                Some(Value::Histogram {
                    counts, sum, count, ..
                }) => (counts.as_slice(), *sum, *count),
                _ => (&[][..], 0.0, 0),
            };
            let increase = |i: usize, n: u64| n.saturating_sub(oc.get(i).copied().unwrap_or(0));
            let next_sum = *sum + (ns - os);
            let Some(next_count) = count.checked_add(nn.saturating_sub(on)) else {
                return false;
            };
            let buckets_fit = counts
                .iter()
                .zip(nc)
                .enumerate()
                .all(|(i, (c, n))| c.checked_add(increase(i, *n)).is_some());
            if !next_sum.is_finite() || !buckets_fit {
                return false;
            }
            for (i, (c, n)) in counts.iter_mut().zip(nc).enumerate() {
                *c += increase(i, *n);
            }
            *sum = next_sum;
            *count = next_count;
            true
        }
        _ => true,
    }
}

/// Whether a cumulative point went down from the last one: a reset (cumulative bucket counts
/// never go down either).
fn decreased(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Scalar(a), Value::Scalar(b)) => b < a,
        (
            Value::Histogram {
                count: a,
                counts: ac,
                ..
            },
            Value::Histogram {
                count: b,
                counts: bc,
                ..
            },
        ) => b < a || bc.iter().zip(ac).any(|(b, a)| b < a),
        _ => false,
    }
}

/// Whether `point` can be stored in a metric of kind `kind`.
fn check(name: &str, kind: Kind, point: &Point) -> Result<(), Refused> {
    match &point.value {
        Value::Scalar(v) if !v.is_finite() => Err(Refused::NotFinite(name.to_owned())),
        Value::Scalar(v) if kind == Kind::Counter && *v < 0.0 => {
            Err(Refused::Negative(name.to_owned()))
        }
        Value::Histogram {
            bounds,
            counts,
            sum,
            count,
        } => {
            if counts.len() != bounds.len() + 1 {
                return Err(Refused::BadHistogram(
                    name.to_owned(),
                    counts.len(),
                    bounds.len(),
                ));
            }
            if !sum.is_finite() || bounds.iter().any(|b| !b.is_finite()) {
                return Err(Refused::NotFinite(name.to_owned()));
            }
            let buckets: u128 = counts.iter().map(|c| u128::from(*c)).sum();
            if buckets != u128::from(*count) {
                return Err(Refused::BucketsNotCount(name.to_owned(), buckets, *count));
            }
            Ok(())
        }
        Value::Scalar(_) => Ok(()),
    }
}

impl MetricStore {
    /// A store with the given limits.
    pub fn new(limits: Limits) -> MetricStore {
        MetricStore {
            families: RwLock::new(HashMap::new()),
            limits,
            window_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            created_by: Mutex::new(HashMap::new()),
            wal: std::sync::OnceLock::new(),
        }
    }

    /// Logs every point stored from now on to `wal`.
    pub fn attach_wal(&self, wal: Arc<crate::durable::wal::Wal>) {
        let _ = self.wal.set(wal);
    }

    /// Replaces the families with restored ones (at start-up, before any point is received),
    /// recomputing the memory reserved and the metrics each sender created.
    pub(crate) fn restore(&self, families: Vec<(String, Family)>, refused: u64) {
        let mut bytes = 0;
        let mut created: HashMap<String, usize> = HashMap::new();
        let mut map = HashMap::new();
        for (name, family) in families {
            for series in &family.series {
                bytes += Self::series_bytes(family.kind, &series.value);
            }
            if !family.creator.is_empty() {
                *created.entry(family.creator.clone()).or_default() += 1;
            }
            map.insert(name, Arc::new(RwLock::new(family)));
        }
        *self.families.write().unwrap_or_else(|p| p.into_inner()) = map;
        *self.created_by.lock().unwrap_or_else(|p| p.into_inner()) = created;
        self.window_bytes.store(bytes, Ordering::Relaxed);
        self.refused.store(refused, Ordering::Relaxed);
    }

    /// Points refused so far (cardinality, memory, kind changes, malformed values).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts `n` points of metric `name` refused before they reached the store (a label the
    /// receiver refused), on the metric when it exists and in the total.
    pub fn count_refused(&self, name: &str, n: usize) {
        self.refused.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(family) = self.family(name) {
            family.write().unwrap_or_else(|p| p.into_inner()).refused += n as u64;
        }
    }

    /// Bytes reserved by the windows of every series.
    pub fn window_bytes(&self) -> u64 {
        self.window_bytes.load(Ordering::Relaxed)
    }

    /// The store's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The family called `name`, if any.
    pub fn family(&self, name: &str) -> Option<Arc<RwLock<Family>>> {
        let families = self.families.read().unwrap_or_else(|p| p.into_inner());
        families.get(name).cloned()
    }

    /// Every family, sorted by name.
    pub fn families(&self) -> BTreeMap<String, Arc<RwLock<Family>>> {
        let families = self.families.read().unwrap_or_else(|p| p.into_inner());
        families
            .iter()
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect()
    }

    /// What the store holds, one entry per metric in name order: its kind, unit, description,
    /// series count and refused points.
    pub fn catalog(&self) -> Vec<MetricInfo> {
        self.families()
            .into_iter()
            .map(|(name, family)| {
                let f = family.read().unwrap_or_else(|p| p.into_inner());
                MetricInfo {
                    name,
                    kind: f.kind,
                    unit: f.unit.clone(),
                    description: f.description.clone(),
                    series: f.series.len(),
                    refused: f.refused,
                }
            })
            .collect()
    }

    /// As [`MetricStore::record`], for points sent by `sender` (whom the quota counts: the key
    /// it presented, or its `service.name` when writes are open): a metric not yet known is
    /// created only within [`Limits::max_families`] and the sender's
    /// [`Limits::max_families_per_sender`], so one sender's names cannot fill the store.
    #[allow(clippy::too_many_arguments)]
    pub fn record_sent(
        &self,
        now: i64,
        sender: &str,
        name: &str,
        kind: Kind,
        description: &str,
        unit: &str,
        points: Vec<Point>,
    ) -> Result<(), (usize, Refused)> {
        self.record_from(now, sender, true, name, kind, description, unit, points)
    }

    /// Stores the points of one metric, received at Unix second `now`. Points that cannot be
    /// stored are refused one by one; the error names the first refusal and counts them all.
    pub fn record(
        &self,
        now: i64,
        name: &str,
        kind: Kind,
        description: &str,
        unit: &str,
        points: Vec<Point>,
    ) -> Result<(), (usize, Refused)> {
        self.record_from(now, "", false, name, kind, description, unit, points)
    }

    /// The family called `name`, created (with `sender` as its creator, counted for it) when
    /// new; `limited`: only within [`Limits::max_families`] and the sender's
    /// [`Limits::max_families_per_sender`]. Checked and created under the families' lock, so
    /// that two exports cannot both take a sender's last place.
    fn family_or_new(
        &self,
        sender: &str,
        limited: bool,
        name: &str,
        kind: Kind,
        description: &str,
        unit: &str,
    ) -> Result<Arc<RwLock<Family>>, Refused> {
        if let Some(family) = self.family(name) {
            return Ok(family);
        }
        let mut families = self.families.write().unwrap_or_else(|p| p.into_inner());
        if let Some(family) = families.get(name) {
            return Ok(family.clone());
        }
        let mut created = self.created_by.lock().unwrap_or_else(|p| p.into_inner());
        if limited {
            if families.len() >= self.limits.max_families {
                return Err(Refused::Families(name.to_owned(), self.limits.max_families));
            }
            if created.get(sender).copied().unwrap_or(0) >= self.limits.max_families_per_sender {
                return Err(Refused::SenderFamilies(
                    sender.to_owned(),
                    name.to_owned(),
                    self.limits.max_families_per_sender,
                ));
            }
        }
        if !sender.is_empty() {
            *created.entry(sender.to_owned()).or_default() += 1;
        }
        let mut family = Family::new(kind, description, unit);
        family.creator = sender.to_owned();
        let family = Arc::new(RwLock::new(family));
        families.insert(name.to_owned(), family.clone());
        Ok(family)
    }

    /// Runs `f` on the family called `name` (see [`MetricStore::family_or_new`]), write-locked;
    /// a family removed meanwhile (its last series retired) is looked up again.
    #[allow(clippy::too_many_arguments)]
    fn with_family<R>(
        &self,
        sender: &str,
        limited: bool,
        name: &str,
        kind: Kind,
        description: &str,
        unit: &str,
        f: impl FnOnce(&mut Family) -> R,
    ) -> Result<R, Refused> {
        loop {
            let family = self.family_or_new(sender, limited, name, kind, description, unit)?;
            let mut locked = family.write().unwrap_or_else(|p| p.into_inner());
            if !locked.removed {
                return Ok(f(&mut locked));
            }
            drop(locked);
            self.unlist(name, &family);
        }
    }

    /// Takes `family` out of the map under `name`, unless another family took its place.
    fn unlist(&self, name: &str, family: &Arc<RwLock<Family>>) {
        let mut families = self.families.write().unwrap_or_else(|p| p.into_inner());
        if families.get(name).is_some_and(|f| Arc::ptr_eq(f, family)) {
            families.remove(name);
        }
    }

    /// Marks a family whose last series was retired as removed, and gives its place back to
    /// its creator (called with the family locked, so that no point reaches it after).
    fn free(&self, family: &mut Family) {
        family.removed = true;
        if family.creator.is_empty() {
            return;
        }
        let mut created = self.created_by.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = created.get_mut(&family.creator) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                created.remove(&family.creator);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_from(
        &self,
        now: i64,
        sender: &str,
        limited: bool,
        name: &str,
        kind: Kind,
        description: &str,
        unit: &str,
        points: Vec<Point>,
    ) -> Result<(), (usize, Refused)> {
        let n = points.len();
        self.with_family(sender, limited, name, kind, description, unit, |family| {
            self.record_in(now, sender, name, kind, family, points)
        })
        .unwrap_or_else(|refusal| {
            self.refused.fetch_add(n as u64, Ordering::Relaxed);
            Err((n, refusal))
        })
    }

    /// Stores `points` in `family` (locked), logging them.
    fn record_in(
        &self,
        now: i64,
        sender: &str,
        name: &str,
        kind: Kind,
        family: &mut Family,
        points: Vec<Point>,
    ) -> Result<(), (usize, Refused)> {
        if family.kind != kind {
            let n = points.len();
            family.refused += n as u64;
            self.refused.fetch_add(n as u64, Ordering::Relaxed);
            return Err((n, Refused::KindChanged(name.to_owned(), family.kind, kind)));
        }
        let wal = self.wal.get();
        let mut log = wal.map(|_| log::Batch::start(now, sender, name, family));
        let mut refused = 0;
        let mut first_error = None;
        for point in points {
            let applied = self
                .resolve(name, family, &point, false)
                .and_then(|(i, created)| {
                    // Logged before it is applied (the record reads the series as it was), and
                    // taken back out when it cannot be. A point that created its series always
                    // applies: it is added to zero.
                    let mark = log.as_mut().map(|log| {
                        let mark = log.mark();
                        log.point(family, i, created, &point);
                        mark
                    });
                    Self::apply(name, now, family, i, point).inspect_err(|_| {
                        if let (Some(log), Some(mark)) = (&mut log, mark) {
                            log.rewind(mark);
                        }
                    })
                });
            if let Err(err) = applied {
                refused += 1;
                first_error.get_or_insert(err);
            }
        }
        family.refused += refused as u64;
        self.refused.fetch_add(refused as u64, Ordering::Relaxed);
        if let (Some(wal), Some(log)) = (wal, log) {
            // Appended while the family is locked: its records reach the log in the order
            // they were applied.
            wal.append(&log.finish(refused));
        }
        first_error.map_or(Ok(()), |err| Err((refused, err)))
    }

    /// Applies a batch read back from the write-ahead log (its `header` already read), as
    /// [`MetricStore::record_sent`] applied it before the restart; limits are not checked again
    /// (the batch was admitted).
    pub(crate) fn replay(
        &self,
        header: log::Header,
        reader: &mut crate::durable::codec::Reader<'_>,
    ) -> Result<(), crate::durable::codec::Malformed> {
        let replayed = self.with_family(
            &header.sender,
            false,
            &header.name,
            header.kind,
            &header.description,
            &header.unit,
            |family| {
                for _ in 0..header.points {
                    let point = log::read_point(reader, family)?;
                    if let Ok((i, _)) = self.resolve(&header.name, family, &point, true) {
                        let _ = Self::apply(&header.name, header.now, family, i, point);
                    }
                }
                let refused = reader.varint()?;
                family.refused += refused;
                self.refused.fetch_add(refused, Ordering::Relaxed);
                Ok(())
            },
        );
        // Not limited: the family is always found or created.
        replayed.unwrap_or(Ok(()))
    }

    /// Removes the series of every metric that have had no point since before Unix second
    /// `cutoff`, with their columns in every tier, so that the room of replicas gone for good
    /// is given back; a metric left without series leaves the store and no longer counts for
    /// its creator. Returns the series removed. Logged, so that a replay removes the same.
    pub fn retire_silent(&self, cutoff: i64) -> usize {
        let mut removed = 0;
        for (name, family) in self.families() {
            let silent = |f: &Family| f.series.iter().any(|s| s.updated < cutoff);
            if !silent(&family.read().unwrap_or_else(|p| p.into_inner())) {
                continue;
            }
            let mut locked = family.write().unwrap_or_else(|p| p.into_inner());
            removed += self.retire_in(&mut locked, cutoff);
            if let Some(wal) = self.wal.get() {
                wal.append(&log::retire_record(&name, cutoff));
            }
            let gone = locked.removed;
            drop(locked);
            if gone {
                self.unlist(&name, &family);
            }
        }
        removed
    }

    /// Applies a logged [`MetricStore::retire_silent`] to one metric.
    pub(crate) fn replay_retire(&self, name: &str, cutoff: i64) {
        if let Some(family) = self.family(name) {
            let mut locked = family.write().unwrap_or_else(|p| p.into_inner());
            self.retire_in(&mut locked, cutoff);
            let gone = locked.removed;
            drop(locked);
            if gone {
                self.unlist(name, &family);
            }
        }
    }

    /// Removes `family`'s series silent since before `cutoff`; frees the family (see
    /// [`MetricStore::free`]) when that was its last.
    fn retire_in(&self, family: &mut Family, cutoff: i64) -> usize {
        let (keep, gone): (Vec<Series>, Vec<Series>) = std::mem::take(&mut family.series)
            .into_iter()
            .partition(|s| s.updated >= cutoff);
        let freed: u64 = gone
            .iter()
            .map(|s| Self::series_bytes(family.kind, &s.value))
            .sum();
        self.window_bytes.fetch_sub(
            freed.min(self.window_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let columns = |pick: fn(&Series) -> (usize, usize)| -> Vec<(usize, usize)> {
            keep.iter().map(pick).collect()
        };
        let seconds = family.seconds.compact(&columns(|s| s.second_column));
        let minutes = family.minutes.compact(&columns(|s| s.minute_column));
        let hours = family.hours.compact(&columns(|s| s.hour_column));
        family.series = keep;
        family.index.clear();
        for (i, series) in family.series.iter_mut().enumerate() {
            series.second_column.0 = seconds[i];
            series.minute_column.0 = minutes[i];
            series.hour_column.0 = hours[i];
            if !series.retired {
                family.index.insert(series.labels.clone(), i);
            }
        }
        family.generation += 1;
        if family.series.is_empty() && !gone.is_empty() && !family.removed {
            self.free(family);
        }
        gone.len()
    }

    /// Bytes a series of this kind and value reserves in the windows.
    pub fn series_bytes(kind: Kind, value: &Value) -> u64 {
        let (second, coarse) = widths(kind, value);
        (Columns::column_bytes(SECOND_STEPS, second)
            + Columns::column_bytes(MINUTE_STEPS, coarse)
            + Columns::column_bytes(HOUR_STEPS, coarse)) as u64
    }

    /// Reserves the windows of a new series, or says why not; `replaying` admits it anyway.
    fn admit(
        &self,
        name: &str,
        family: &Family,
        value: &Value,
        replaying: bool,
    ) -> Result<(), Refused> {
        let bytes = Self::series_bytes(family.kind, value);
        if replaying {
            self.window_bytes.fetch_add(bytes, Ordering::Relaxed);
            return Ok(());
        }
        if family.live_series() >= self.limits.max_series {
            return Err(Refused::Cardinality(
                name.to_owned(),
                self.limits.max_series,
            ));
        }
        let limit = self.limits.max_window_bytes;
        self.window_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= limit).then_some(used + bytes)
            })
            .map_err(|_| Refused::Memory(limit, name.to_owned()))?;
        Ok(())
    }

    /// Adds a series for `point` to `family` and returns its index.
    fn add_series(
        &self,
        name: &str,
        family: &mut Family,
        point: &Point,
        replaying: bool,
    ) -> Result<usize, Refused> {
        self.admit(name, family, &point.value, replaying)?;
        let (second, minute) = widths(family.kind, &point.value);
        let started_before_us = !point.delta
            && family.kind != Kind::Gauge
            && point.start_time_ns < self.limits.started_ns;
        let origin = if started_before_us {
            point.value.flat()
        } else {
            vec![0.0; second]
        };
        let i = family.series.len();
        let second_column = (family.seconds.add_column(second), second);
        let minute_column = (family.minutes.add_column(minute), minute);
        let hour_column = (family.hours.add_column(minute), minute);
        family.series.push(Series {
            labels: point.labels.clone(),
            value: zero_like(&point.value),
            last_raw: None,
            origin,
            second_column,
            minute_column,
            hour_column,
            first: i64::MAX,
            updated: i64::MIN,
            last_minute: i64::MIN,
            last_hour: i64::MIN,
            retired: false,
        });
        family.index.insert(point.labels.clone(), i);
        family.generation += 1;
        Ok(i)
    }

    /// The index of the series `point` goes to, adding the series when new (or when its
    /// bucket bounds changed); `true` when it was added.
    fn resolve(
        &self,
        name: &str,
        family: &mut Family,
        point: &Point,
        replaying: bool,
    ) -> Result<(usize, bool), Refused> {
        // A logged point was checked when it was received (by the rules of then: checking it
        // again by today's could leave out a series that later records name by its index).
        if !replaying {
            check(name, family.kind, point)?;
        }
        match family.index.get(&point.labels).copied() {
            // Bucket bounds changed: the series starts again (its old columns stay reserved).
            Some(i) if shape_differs(&family.series[i].value, &point.value) => {
                family.index.remove(&point.labels);
                family.series[i].retired = true;
                Ok((self.add_series(name, family, point, replaying)?, true))
            }
            Some(i) => Ok((i, false)),
            None => Ok((self.add_series(name, family, point, replaying)?, true)),
        }
    }

    /// Applies `point` to series `i` at second `now`; refused, with the series as it was, when
    /// its total would overflow.
    fn apply(
        name: &str,
        now: i64,
        family: &mut Family,
        i: usize,
        point: Point,
    ) -> Result<(), Refused> {
        let kind = family.kind;
        let series = &mut family.series[i];
        match (kind, point.delta) {
            (Kind::Gauge, _) => series.value = point.value,
            (_, true) => {
                if !add(&mut series.value, &point.value, None) {
                    return Err(Refused::Overflow(name.to_owned()));
                }
            }
            (_, false) => {
                // Cumulative: expose offset + raw, where the offset absorbs every reset.
                let since = match &series.last_raw {
                    Some((start, last))
                        if *start == point.start_time_ns && !decreased(last, &point.value) =>
                    {
                        Some(last)
                    }
                    // First point, or a reset (new start time, or the value went down): the raw
                    // value is all new.
                    _ => None,
                };
                if !add(&mut series.value, &point.value, since) {
                    return Err(Refused::Overflow(name.to_owned()));
                }
                series.last_raw = Some((point.start_time_ns, point.value));
            }
        }
        series.first = series.first.min(now);
        family.write_windows(i, now);
        Ok(())
    }

    /// A copy of every family's current values at Unix second `now`, sorted by name; stale
    /// series (see [`Limits::stale_after_seconds`]) are left out.
    pub fn snapshot(&self, now: i64) -> BTreeMap<String, FamilyValues> {
        let fresh_since = now.saturating_sub(self.limits.stale_after_seconds);
        self.families()
            .into_iter()
            .map(|(name, family)| {
                let family = family.read().unwrap_or_else(|p| p.into_inner());
                let values = FamilyValues {
                    kind: family.kind,
                    description: family.description.clone(),
                    unit: family.unit.clone(),
                    series: family
                        .series
                        .iter()
                        .filter(|s| !s.retired && s.updated >= fresh_since)
                        .map(|s| (s.labels.clone(), s.value.clone()))
                        .collect(),
                };
                (name, values)
            })
            .collect()
    }
}

fn zero_like(value: &Value) -> Value {
    match value {
        Value::Scalar(_) => Value::Scalar(0.0),
        Value::Histogram { bounds, counts, .. } => Value::Histogram {
            bounds: bounds.clone(),
            counts: vec![0; counts.len()],
            sum: 0.0,
            count: 0,
        },
    }
}

fn shape_differs(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Scalar(_), Value::Scalar(_)) => false,
        (Value::Histogram { bounds: x, .. }, Value::Histogram { bounds: y, .. }) => x != y,
        _ => true,
    }
}

/// Numbers per step of a series in the 1 s and 1 min tiers.
fn widths(kind: Kind, value: &Value) -> (usize, usize) {
    let second = match value {
        Value::Scalar(_) => 1,
        Value::Histogram { counts, .. } => counts.len() + 2,
    };
    let minute = if kind == Kind::Gauge {
        GAUGE_MINUTE_WIDTH
    } else {
        second
    };
    (second, minute)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Limits for tests: the collector started at Unix nanosecond 1000.
    pub(crate) fn limits(max_series: usize) -> Limits {
        Limits {
            max_series,
            max_window_bytes: u64::MAX,
            max_families: usize::MAX,
            max_families_per_sender: usize::MAX,
            started_ns: 1000,
            stale_after_seconds: 120,
        }
    }

    fn point(value: f64, start: u64, delta: bool) -> Point {
        Point {
            labels: vec![("job".into(), "svc".into())],
            start_time_ns: start,
            delta,
            value: Value::Scalar(value),
        }
    }

    fn value(store: &MetricStore, name: &str) -> Value {
        let families = store.snapshot(i64::MIN);
        families[name].series.values().next().cloned().unwrap()
    }

    fn record(
        store: &MetricStore,
        name: &str,
        kind: Kind,
        p: Point,
    ) -> Result<(), (usize, Refused)> {
        store.record(0, name, kind, "", "", vec![p])
    }

    #[test]
    fn cumulative_counters_survive_a_restart_of_the_sender() {
        let store = MetricStore::new(limits(10));
        for (v, start) in [(5.0, 1), (8.0, 1), (2.0, 2), (3.0, 2)] {
            record(&store, "requests", Kind::Counter, point(v, start, false)).unwrap();
        }
        // 8 before the restart, then 3 more since: never goes backwards.
        assert_eq!(value(&store, "requests"), Value::Scalar(11.0));
        // A value going down with the same start time is a reset too.
        record(&store, "requests", Kind::Counter, point(1.0, 2, false)).unwrap();
        assert_eq!(value(&store, "requests"), Value::Scalar(12.0));
    }

    #[test]
    fn deltas_add_up_and_gauges_take_the_last_value() {
        let store = MetricStore::new(limits(10));
        for v in [1.0, 2.0, 3.0] {
            record(&store, "d", Kind::Counter, point(v, 0, true)).unwrap();
            record(&store, "g", Kind::Gauge, point(v, 0, false)).unwrap();
        }
        assert_eq!(value(&store, "d"), Value::Scalar(6.0));
        assert_eq!(value(&store, "g"), Value::Scalar(3.0));
    }

    #[test]
    fn windows_hold_the_value_of_every_second_and_minute() {
        let store = MetricStore::new(limits(10));
        // A sender that started counting after the collector: its first total is all new.
        for (now, v) in [(120, 2.0), (121, 5.0), (185, 9.0)] {
            store
                .record(now, "c", Kind::Counter, "", "", vec![point(v, 2000, false)])
                .unwrap();
        }
        let family = store.family("c").unwrap();
        let family = family.read().unwrap();
        let series = &family.series[0];
        assert_eq!(family.at(series, Tier::Seconds, 119), Some(&[0.0][..]));
        assert_eq!(family.at(series, Tier::Seconds, 150), Some(&[5.0][..]));
        assert_eq!(family.at(series, Tier::Seconds, 185), Some(&[9.0][..]));
        assert_eq!(family.at(series, Tier::Minutes, 2), Some(&[5.0][..]));
        assert_eq!(family.at(series, Tier::Minutes, 3), Some(&[9.0][..]));
        // One that started before: what it counted before is nobody's increase.
        store
            .record(
                120,
                "old",
                Kind::Counter,
                "",
                "",
                vec![point(40.0, 10, false)],
            )
            .unwrap();
        let family = store.family("old").unwrap();
        let family = family.read().unwrap();
        let series = &family.series[0];
        assert_eq!(family.at(series, Tier::Seconds, 100), Some(&[40.0][..]));
    }

    #[test]
    fn cardinality_and_window_memory_are_bounded_and_refusals_counted() {
        let store = MetricStore::new(limits(100));
        let points = (0..1000)
            .map(|i| Point {
                labels: vec![("user".into(), i.to_string())],
                start_time_ns: 0,
                delta: true,
                value: Value::Scalar(1.0),
            })
            .collect();
        let err = store
            .record(0, "exploding", Kind::Counter, "", "", points)
            .unwrap_err();
        assert_eq!(err, (900, Refused::Cardinality("exploding".into(), 100)));
        assert_eq!(store.snapshot(i64::MIN)["exploding"].series.len(), 100);
        assert_eq!(store.refused(), 900);

        let one = MetricStore::series_bytes(Kind::Counter, &Value::Scalar(0.0));
        let store = MetricStore::new(Limits {
            max_families: usize::MAX,
            max_families_per_sender: usize::MAX,
            max_window_bytes: 3 * one,
            ..limits(100)
        });
        let points = (0..5).map(|i| Point {
            labels: vec![("user".into(), i.to_string())],
            ..point(1.0, 0, true)
        });
        let err = store
            .record(0, "m", Kind::Counter, "", "", points.collect())
            .unwrap_err();
        assert_eq!(err.0, 2);
        assert!(matches!(err.1, Refused::Memory(..)));
        assert_eq!(store.window_bytes(), 3 * one);
    }

    #[test]
    fn silent_series_give_their_room_back_and_the_others_keep_their_windows() {
        let store = MetricStore::new(limits(10));
        let labelled = |job: &str, v: f64| Point {
            labels: vec![("job".into(), job.into())],
            ..point(v, 2000, false)
        };
        for t in 100..110 {
            let mut points = vec![labelled("a", t as f64), labelled("gone", 1.0)];
            if t >= 105 {
                points.pop();
            }
            store.record(t, "c", Kind::Counter, "", "", points).unwrap();
        }
        let one = MetricStore::series_bytes(Kind::Counter, &Value::Scalar(0.0));
        assert_eq!(store.window_bytes(), 2 * one);
        assert_eq!(store.retire_silent(104), 0, "both had a point at 104");
        assert_eq!(store.retire_silent(105), 1);
        assert_eq!(
            store.window_bytes(),
            one,
            "the room of the silent series is back"
        );
        let family = store.family("c").unwrap();
        {
            let family = family.read().unwrap();
            assert_eq!(family.series.len(), 1);
            let a = &family.series[0];
            assert_eq!(a.labels[0].1, "a");
            for t in [100, 103, 107, 109] {
                assert_eq!(family.at(a, Tier::Seconds, t), Some(&[t as f64][..]));
            }
            assert_eq!(family.at(a, Tier::Minutes, 1), Some(&[109.0][..]));
        }
        // A new series (the replica's successor) takes the room, and both write on.
        store
            .record(
                110,
                "c",
                Kind::Counter,
                "",
                "",
                vec![labelled("a", 110.0), labelled("new", 4.0)],
            )
            .unwrap();
        let family = family.read().unwrap();
        let new = &family.series[1];
        assert_eq!(family.at(new, Tier::Seconds, 110), Some(&[4.0][..]));
        assert_eq!(
            family.at(new, Tier::Seconds, 105),
            Some(&[0.0][..]),
            "its origin before"
        );
        assert_eq!(
            family.at(&family.series[0], Tier::Seconds, 110),
            Some(&[110.0][..])
        );
    }

    #[test]
    fn a_metric_whose_last_series_was_retired_no_longer_counts_for_its_sender() {
        let store = MetricStore::new(Limits {
            max_families: 3,
            max_families_per_sender: 2,
            ..limits(10)
        });
        let send = |now: i64, name: &str| {
            store.record_sent(
                now,
                "svc",
                name,
                Kind::Counter,
                "",
                "",
                vec![point(1.0, 2000, false)],
            )
        };
        send(100, "a").unwrap();
        send(100, "b").unwrap();
        assert!(
            matches!(send(100, "c"), Err((1, Refused::SenderFamilies(..)))),
            "the sender's third metric was accepted"
        );
        // `a` goes silent; `b` sends on. Retiring `a`'s only series frees the metric.
        send(200, "b").unwrap();
        assert_eq!(store.retire_silent(150), 1);
        assert!(
            store.family("a").is_none(),
            "a metric without series is kept"
        );
        send(200, "c").expect("the retired metric still counts for its sender");
        // `a` coming back is a new metric, within the quota again.
        assert!(matches!(
            send(210, "a"),
            Err((1, Refused::SenderFamilies(..)))
        ));
        // Another sender fills the store's last place; freeing one gives it back.
        store
            .record_sent(
                210,
                "other",
                "d",
                Kind::Gauge,
                "",
                "",
                vec![point(1.0, 0, false)],
            )
            .unwrap();
        assert!(matches!(
            store.record_sent(
                220,
                "other",
                "e",
                Kind::Gauge,
                "",
                "",
                vec![point(1.0, 0, false)]
            ),
            Err((1, Refused::Families(..)))
        ));
        assert_eq!(store.retire_silent(205), 2, "b and c, silent since 200");
        store
            .record_sent(
                220,
                "other",
                "e",
                Kind::Gauge,
                "",
                "",
                vec![point(1.0, 0, false)],
            )
            .unwrap();
    }

    #[test]
    fn totals_that_would_overflow_are_refused_and_keep_their_value() {
        let store = MetricStore::new(limits(10));
        // A delta counter: the second 1e308 would make the total infinite.
        record(&store, "big", Kind::Counter, point(1e308, 0, true)).unwrap();
        let err = record(&store, "big", Kind::Counter, point(1e308, 0, true));
        assert!(err.is_err(), "an infinite total was accepted");
        assert_eq!(value(&store, "big"), Value::Scalar(1e308));
        // A cumulative counter whose resets pile up past the largest number.
        record(&store, "resets", Kind::Counter, point(1e308, 1, false)).unwrap();
        assert!(record(&store, "resets", Kind::Counter, point(1e308, 2, false)).is_err());
        assert_eq!(value(&store, "resets"), Value::Scalar(1e308));
        // A monotonic sum never goes down, whether as a delta or as a cumulative value.
        assert!(record(&store, "big", Kind::Counter, point(-1.0, 0, true)).is_err());
        assert!(record(&store, "neg", Kind::Counter, point(-1.0, 5, false)).is_err());
        assert_eq!(value(&store, "big"), Value::Scalar(1e308));

        let histogram = |counts: Vec<u64>, count: u64| Point {
            labels: vec![],
            start_time_ns: 0,
            delta: true,
            value: Value::Histogram {
                bounds: vec![1.0],
                counts,
                sum: 1.0,
                count,
            },
        };
        // OTLP: the bucket counts add up to the count.
        assert!(
            record(
                &store,
                "h",
                Kind::Histogram,
                histogram(vec![u64::MAX, 1], 0)
            )
            .is_err()
        );
        assert!(record(&store, "h", Kind::Histogram, histogram(vec![1, 1], 3)).is_err());
        let most = u64::MAX - 1;
        record(&store, "h", Kind::Histogram, histogram(vec![most, 0], most)).unwrap();
        assert!(
            record(&store, "h", Kind::Histogram, histogram(vec![1, 1], 2)).is_err(),
            "a count past u64::MAX was accepted"
        );
        assert!(
            matches!(value(&store, "h"), Value::Histogram { count, ref counts, .. }
                if count == most && counts == &[most, 0]),
            "the total before the refused point is kept"
        );
        assert_eq!(store.refused(), 7);
    }

    #[test]
    fn malformed_points_are_refused() {
        let store = MetricStore::new(limits(10));
        assert!(record(&store, "nan", Kind::Gauge, point(f64::NAN, 0, false)).is_err());
        let bad = Value::Histogram {
            bounds: vec![1.0],
            counts: vec![1],
            sum: 1.0,
            count: 1,
        };
        let p = Point {
            labels: vec![],
            start_time_ns: 0,
            delta: true,
            value: bad,
        };
        assert!(matches!(
            record(&store, "h", Kind::Histogram, p),
            Err((1, Refused::BadHistogram(..)))
        ));
        record(&store, "k", Kind::Gauge, point(1.0, 0, false)).unwrap();
        assert!(matches!(
            record(&store, "k", Kind::Counter, point(1.0, 0, true)),
            Err((1, Refused::KindChanged(..)))
        ));
    }
}

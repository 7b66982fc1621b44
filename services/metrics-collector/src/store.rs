//! The metric store: the current value of every series received over OTLP.
//!
//! A series is a metric name plus its labels (the data point's attributes and the sender's
//! `service.name`). Cumulative sums and histograms are kept as sent, with counter resets (a new
//! start time, or a value going down) folded into an offset so that what is exposed never goes
//! backwards; delta points are added up. Each metric holds at most `max_series` series: points
//! of further series are refused and counted, so memory stays bounded under an attribute
//! explosion.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// One series' state.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Counter or gauge value.
    Scalar(f64),
    /// Histogram: upper bounds, cumulative-over-time count per bucket (one more than the
    /// bounds, the last is +Inf), sum and count.
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

#[derive(Debug, Clone)]
struct Series {
    /// What is exposed.
    value: Value,
    /// Last raw cumulative point and its start time, to detect resets.
    last_raw: Option<(u64, Value)>,
}

/// A metric family: one name, one kind, many series.
#[derive(Debug, Clone)]
pub struct Family {
    /// Kind.
    pub kind: Kind,
    /// Description, as sent.
    pub description: String,
    /// Unit, as sent (UCUM, e.g. `s`).
    pub unit: String,
    series: HashMap<Labels, Series>,
}

impl Family {
    /// Series of the family, sorted by labels, with their values.
    pub fn series(&self) -> BTreeMap<&Labels, &Value> {
        self.series
            .iter()
            .map(|(labels, s)| (labels, &s.value))
            .collect()
    }
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
    /// The metric was first sent as another kind.
    #[error("metric '{0}' was first sent as {1:?}, now as {2:?}")]
    KindChanged(String, Kind, Kind),
    /// A histogram point whose bucket counts do not match its bounds.
    #[error("histogram '{0}' has {1} bucket counts for {2} bounds")]
    BadHistogram(String, usize, usize),
    /// A value that is not a finite number.
    #[error("metric '{0}' has a non-finite value")]
    NotFinite(String),
}

/// Every family, by name.
pub struct MetricStore {
    families: RwLock<HashMap<String, Family>>,
    max_series: usize,
    refused: AtomicU64,
}

fn add(into: &mut Value, delta: &Value) {
    match (into, delta) {
        (Value::Scalar(a), Value::Scalar(b)) => *a += b,
        (
            Value::Histogram {
                counts, sum, count, ..
            },
            Value::Histogram {
                counts: dc,
                sum: ds,
                count: dn,
                ..
            },
        ) => {
            for (c, d) in counts.iter_mut().zip(dc) {
                *c += d;
            }
            *sum += ds;
            *count += dn;
        }
        _ => {}
    }
}

fn decreased(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Scalar(a), Value::Scalar(b)) => b < a,
        (Value::Histogram { count: a, .. }, Value::Histogram { count: b, .. }) => b < a,
        _ => false,
    }
}

impl MetricStore {
    /// A store allowing `max_series` series per metric.
    pub fn new(max_series: usize) -> MetricStore {
        MetricStore {
            families: RwLock::new(HashMap::new()),
            max_series,
            refused: AtomicU64::new(0),
        }
    }

    /// Points refused so far (cardinality, kind changes, malformed values).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Stores the points of one metric. Points that cannot be stored are refused one by one;
    /// the error names the first refusal and counts them all.
    pub fn record(
        &self,
        name: &str,
        kind: Kind,
        description: &str,
        unit: &str,
        points: Vec<Point>,
    ) -> Result<(), (usize, Refused)> {
        let mut families = self.families.write().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            kind,
            description: description.to_owned(),
            unit: unit.to_owned(),
            series: HashMap::new(),
        });
        if family.kind != kind {
            self.refused
                .fetch_add(points.len() as u64, Ordering::Relaxed);
            return Err((
                points.len(),
                Refused::KindChanged(name.to_owned(), family.kind, kind),
            ));
        }
        let mut refused = 0;
        let mut first_error = None;
        for point in points {
            if let Err(err) = self.record_point(name, family, point) {
                refused += 1;
                first_error.get_or_insert(err);
            }
        }
        self.refused.fetch_add(refused as u64, Ordering::Relaxed);
        first_error.map_or(Ok(()), |err| Err((refused, err)))
    }

    fn record_point(&self, name: &str, family: &mut Family, point: Point) -> Result<(), Refused> {
        match &point.value {
            Value::Scalar(v) if !v.is_finite() => return Err(Refused::NotFinite(name.to_owned())),
            Value::Histogram {
                bounds,
                counts,
                sum,
                ..
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
            }
            Value::Scalar(_) => {}
        }
        let at_limit = family.series.len() >= self.max_series;
        let series = match family.series.get_mut(&point.labels) {
            Some(series) => series,
            None if at_limit => return Err(Refused::Cardinality(name.to_owned(), self.max_series)),
            None => family.series.entry(point.labels.clone()).or_insert(Series {
                value: zero_like(&point.value),
                last_raw: None,
            }),
        };
        if shape_differs(&series.value, &point.value) {
            // Bucket bounds changed: start the series again.
            series.value = zero_like(&point.value);
            series.last_raw = None;
        }
        match (family.kind, point.delta) {
            (Kind::Gauge, _) => series.value = point.value,
            (_, true) => add(&mut series.value, &point.value),
            (_, false) => {
                // Cumulative: expose offset + raw, where the offset absorbs every reset.
                match series.last_raw.take() {
                    Some((start, last))
                        if start == point.start_time_ns && !decreased(&last, &point.value) =>
                    {
                        let mut step = point.value.clone();
                        subtract(&mut step, &last);
                        add(&mut series.value, &step);
                    }
                    // First point, or a reset (new start time, or the value went down): the raw
                    // value is all new.
                    _ => add(&mut series.value, &point.value),
                }
                series.last_raw = Some((point.start_time_ns, point.value));
            }
        }
        Ok(())
    }

    /// A copy of every family, sorted by name.
    pub fn snapshot(&self) -> BTreeMap<String, Family> {
        let families = self.families.read().unwrap_or_else(|p| p.into_inner());
        families
            .iter()
            .map(|(name, f)| (name.clone(), f.clone()))
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

fn subtract(from: &mut Value, other: &Value) {
    match (from, other) {
        (Value::Scalar(a), Value::Scalar(b)) => *a -= b,
        (
            Value::Histogram {
                counts, sum, count, ..
            },
            Value::Histogram {
                counts: oc,
                sum: os,
                count: on,
                ..
            },
        ) => {
            for (c, o) in counts.iter_mut().zip(oc) {
                *c = c.saturating_sub(*o);
            }
            *sum -= os;
            *count = count.saturating_sub(*on);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(value: f64, start: u64, delta: bool) -> Point {
        Point {
            labels: vec![("job".into(), "svc".into())],
            start_time_ns: start,
            delta,
            value: Value::Scalar(value),
        }
    }

    fn value(store: &MetricStore, name: &str) -> Value {
        let families = store.snapshot();
        families[name]
            .series()
            .values()
            .next()
            .map(|v| (*v).clone())
            .unwrap()
    }

    #[test]
    fn cumulative_counters_survive_a_restart_of_the_sender() {
        let store = MetricStore::new(10);
        for (v, start) in [(5.0, 1), (8.0, 1), (2.0, 2), (3.0, 2)] {
            store
                .record(
                    "requests",
                    Kind::Counter,
                    "",
                    "",
                    vec![point(v, start, false)],
                )
                .unwrap();
        }
        // 8 before the restart, then 3 more since: never goes backwards.
        assert_eq!(value(&store, "requests"), Value::Scalar(11.0));
        // A value going down with the same start time is a reset too.
        store
            .record(
                "requests",
                Kind::Counter,
                "",
                "",
                vec![point(1.0, 2, false)],
            )
            .unwrap();
        assert_eq!(value(&store, "requests"), Value::Scalar(12.0));
    }

    #[test]
    fn deltas_add_up_and_gauges_take_the_last_value() {
        let store = MetricStore::new(10);
        for v in [1.0, 2.0, 3.0] {
            store
                .record("d", Kind::Counter, "", "", vec![point(v, 0, true)])
                .unwrap();
            store
                .record("g", Kind::Gauge, "", "", vec![point(v, 0, false)])
                .unwrap();
        }
        assert_eq!(value(&store, "d"), Value::Scalar(6.0));
        assert_eq!(value(&store, "g"), Value::Scalar(3.0));
    }

    #[test]
    fn cardinality_is_bounded_and_refusals_counted() {
        let store = MetricStore::new(100);
        let points = (0..1000)
            .map(|i| Point {
                labels: vec![("user".into(), i.to_string())],
                start_time_ns: 0,
                delta: true,
                value: Value::Scalar(1.0),
            })
            .collect();
        let err = store
            .record("exploding", Kind::Counter, "", "", points)
            .unwrap_err();
        assert_eq!(err, (900, Refused::Cardinality("exploding".into(), 100)));
        assert_eq!(store.snapshot()["exploding"].series().len(), 100);
        assert_eq!(store.refused(), 900);
    }

    #[test]
    fn malformed_points_are_refused() {
        let store = MetricStore::new(10);
        assert!(
            store
                .record("nan", Kind::Gauge, "", "", vec![point(f64::NAN, 0, false)])
                .is_err()
        );
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
            store.record("h", Kind::Histogram, "", "", vec![p]),
            Err((1, Refused::BadHistogram(..)))
        ));
        store
            .record("k", Kind::Gauge, "", "", vec![point(1.0, 0, false)])
            .unwrap();
        assert!(matches!(
            store.record("k", Kind::Counter, "", "", vec![point(1.0, 0, true)]),
            Err((1, Refused::KindChanged(..)))
        ));
    }
}

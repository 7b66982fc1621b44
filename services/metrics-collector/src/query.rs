//! The query engine: functions over the store's windows (rate, increase, quantile, gauge
//! average/max/min/last), aggregated per group of labels, and drift between a window's
//! histogram and a baseline.
//!
//! Windows are read at the finest tier that still holds their start: 1 s steps within the last
//! hour, 1 min steps within the last 24 hours. The increase of a series over `(start, end]` is its
//! value at `end` less its value at `start` (values never go backwards: resets are folded in at
//! ingest), so a query costs two reads per series whatever the window's length.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use regex::Regex;

use crate::prometheus;
use crate::statistics::{self, Drift};
use crate::store::{Family, Grouping, Kind, Labels, MetricStore, Series, Tier, Value};

/// Longest accepted window: the 1 h tier's reach (7 days).
pub const MAX_WINDOW_SECONDS: i64 = 7 * 86_400;

/// Largest compiled size of a label regular expression, in bytes.
const MAX_REGEX_BYTES: usize = 64 * 1024;

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query is malformed: the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The window reaches back beyond what the collector keeps.
    #[error("{0}")]
    OutOfRange(String),
    /// A named baseline does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The evaluation itself failed (a worker thread panicked).
    #[error("{0}")]
    Internal(String),
}

impl shared::error::ServiceError for QueryError {
    fn kind(&self) -> shared::error::ErrorKind {
        use shared::error::ErrorKind;
        match self {
            QueryError::Invalid(_) => ErrorKind::InvalidArgument,
            QueryError::OutOfRange(_) => ErrorKind::OutOfRange,
            QueryError::NotFound(_) => ErrorKind::NotFound,
            QueryError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// How a matcher compares.
#[derive(Debug, Clone)]
pub enum MatchOp {
    /// Equal.
    Equal(String),
    /// Not equal.
    NotEqual(String),
    /// Matches the whole label.
    Regex(Regex),
    /// Does not match the whole label.
    NotRegex(Regex),
}

/// A condition on one label (a missing label reads as "").
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// The comparison.
    pub op: MatchOp,
}

impl Matcher {
    /// A matcher; `regex` patterns must match the whole label.
    pub fn new(name: &str, value: &str, regex: bool, negate: bool) -> Result<Matcher, QueryError> {
        let op = if regex {
            let re = regex::RegexBuilder::new(&format!("^(?:{value})$"))
                .size_limit(MAX_REGEX_BYTES)
                .build()
                .map_err(|e| {
                    QueryError::Invalid(format!("matcher on '{name}': bad regular expression: {e}"))
                })?;
            if negate {
                MatchOp::NotRegex(re)
            } else {
                MatchOp::Regex(re)
            }
        } else if negate {
            MatchOp::NotEqual(value.to_owned())
        } else {
            MatchOp::Equal(value.to_owned())
        };
        Ok(Matcher {
            name: name.to_owned(),
            op,
        })
    }

    fn matches(&self, labels: &Labels) -> bool {
        let value = label(labels, &self.name);
        match &self.op {
            MatchOp::Equal(v) => value == v,
            MatchOp::NotEqual(v) => value != v,
            MatchOp::Regex(re) => re.is_match(value),
            MatchOp::NotRegex(re) => !re.is_match(value),
        }
    }
}

fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels
        .binary_search_by(|(k, _)| k.as_str().cmp(name))
        .map_or("", |i| labels[i].1.as_str())
}

/// Which series: a metric and conditions on its labels.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Metric name, as sent over OTLP or in its Prometheus spelling.
    pub metric: String,
    /// All must hold.
    pub matchers: Vec<Matcher>,
}

impl Selector {
    fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The matchers as text, the key of cached selections.
    fn key(&self) -> String {
        let mut key = String::new();
        for m in &self.matchers {
            let (op, value) = match &m.op {
                MatchOp::Equal(v) => ("=", v.as_str()),
                MatchOp::NotEqual(v) => ("!=", v.as_str()),
                MatchOp::Regex(re) => ("=~", re.as_str()),
                MatchOp::NotRegex(re) => ("!~", re.as_str()),
            };
            key.push_str(&format!("{}{op}{value:?},", m.name));
        }
        key
    }
}

/// Selections kept per family; when full, the cache starts afresh (one full scan per selector).
const MAX_SELECTIONS: usize = 1024;

/// Longest selector text cached (a rule's selector is far shorter); a longer one is answered by
/// a full scan each time, so the cache holds at most `MAX_SELECTIONS` × this per family.
const MAX_SELECTION_KEY_BYTES: usize = 1024;

/// Indices of the series of `family` that `selector` matches (retired ones included), computed
/// once per set of series: rules evaluated every second ask the same questions.
fn selection(family: &Family, selector: &Selector) -> Arc<Vec<usize>> {
    let key = selector.key();
    let mut cache = family.selections.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((generation, s)) = cache.get(&key)
        && *generation == family.generation
    {
        return s.clone();
    }
    let selected: Arc<Vec<usize>> = Arc::new(
        family
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| selector.matches(&s.labels))
            .map(|(i, _)| i)
            .collect(),
    );
    if key.len() > MAX_SELECTION_KEY_BYTES {
        return selected;
    }
    if cache.len() >= MAX_SELECTIONS {
        cache.clear();
    }
    cache.insert(key, (family.generation, selected.clone()));
    selected
}

/// What to compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Function {
    /// Per-second increase of a counter or a histogram's count.
    Rate,
    /// Increase of a counter or a histogram's count.
    Increase,
    /// Quantile of a histogram's observations in the window.
    Quantile(f64),
    /// Time-average of a gauge.
    Avg,
    /// Maximum of a gauge.
    Max,
    /// Minimum of a gauge.
    Min,
    /// Latest value.
    Last,
}

/// A query.
#[derive(Debug, Clone)]
pub struct Query {
    /// Which series.
    pub selector: Selector,
    /// What to compute.
    pub function: Function,
    /// Window length in seconds.
    pub window: i64,
    /// Labels to group by.
    pub group_by: Vec<String>,
    /// Evaluation time (Unix seconds); `None` for now.
    pub at: Option<i64>,
}

/// One group's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The group's labels (non-empty group_by labels).
    pub labels: Labels,
    /// The value.
    pub value: f64,
    /// Series that contributed.
    pub series: u32,
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// One sample per group, sorted by labels.
    pub samples: Vec<Sample>,
    /// Evaluation time used.
    pub at: i64,
    /// Seconds per step of the tier read.
    pub resolution: i64,
}

/// The steps of a window in one tier.
#[derive(Debug, Clone, Copy)]
struct Span {
    tier: Tier,
    /// Step of the window's start (exclusive) and end (inclusive).
    start: i64,
    end: i64,
    /// Seconds: start and end.
    start_s: i64,
    end_s: i64,
}

fn span(now: i64, at: Option<i64>, window: i64) -> Result<Span, QueryError> {
    let at = at.filter(|t| *t > 0).unwrap_or(now);
    if at > now {
        return Err(QueryError::Invalid(format!(
            "evaluation time {at} is in the future (now is {now})"
        )));
    }
    if !(0..=MAX_WINDOW_SECONDS).contains(&window) {
        return Err(QueryError::Invalid(format!(
            "window of {window} s; at most {MAX_WINDOW_SECONDS} s (7 days)"
        )));
    }
    let start_s = at - window;
    let tier = if now - start_s <= Tier::Seconds.reach_seconds() {
        Tier::Seconds
    } else if now - start_s <= Tier::Minutes.reach_seconds() {
        Tier::Minutes
    } else if now - start_s <= Tier::Hours.reach_seconds() {
        Tier::Hours
    } else {
        return Err(QueryError::OutOfRange(format!(
            "the window starts {} s ago; the collector keeps 7 days at 1 h resolution",
            now - start_s
        )));
    };
    let step = tier.step_seconds();
    Ok(Span {
        tier,
        start: start_s.div_euclid(step),
        end: at.div_euclid(step),
        start_s,
        end_s: at,
    })
}

/// Finds a family by its OTLP name or its Prometheus name.
fn resolve(store: &MetricStore, name: &str) -> Option<Arc<RwLock<Family>>> {
    if let Some(family) = store.family(name) {
        return Some(family);
    }
    store.families().into_iter().find_map(|(otel, family)| {
        let (kind, unit) = {
            let f = family.read().unwrap_or_else(|p| p.into_inner());
            (f.kind, f.unit.clone())
        };
        let prom = prometheus::metric_name(&otel, kind, &unit);
        (prom == name).then_some(family)
    })
}

fn group_labels(key: &[String], group_by: &[String]) -> Labels {
    let mut labels: Labels = group_by
        .iter()
        .zip(key)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.sort();
    labels
}

/// Whether a series had data in the window: created by its end, updated after its start. For
/// an instant query (no window, `stale_after` given), whether its last point is at most that
/// many seconds before the end: a replica gone longer no longer counts.
fn live(series: &Series, span: &Span, stale_after: Option<i64>) -> bool {
    let fresh = match stale_after {
        Some(stale_after) => series.updated >= span.end_s.saturating_sub(stale_after),
        None => series.updated > span.start_s,
    };
    !series.retired && series.first <= span.end_s && fresh
}

/// Groupings kept per family (the most recent ones).
const MAX_GROUPINGS: usize = 16;

/// The group of every series of `family` for `group_by`, computed once per set of series.
fn grouping(family: &Family, group_by: &[String]) -> Arc<Grouping> {
    let mut cache = family.groupings.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, g)) = cache
        .iter()
        .find(|(by, generation, _)| by == group_by && *generation == family.generation)
    {
        return g.clone();
    }
    let mut ids: HashMap<Vec<&str>, u32> = HashMap::new();
    let mut keys = Vec::new();
    let group_of = family
        .series
        .iter()
        .map(|series| {
            let key: Vec<&str> = group_by.iter().map(|n| label(&series.labels, n)).collect();
            *ids.entry(key).or_insert_with_key(|key| {
                keys.push(key.iter().map(|v| (*v).to_owned()).collect());
                (keys.len() - 1) as u32
            })
        })
        .collect();
    let grouping = Arc::new(Grouping { group_of, keys });
    cache.retain(|(by, _, _)| by != group_by);
    if cache.len() >= MAX_GROUPINGS {
        cache.remove(0);
    }
    cache.push((group_by.to_vec(), family.generation, grouping.clone()));
    grouping
}

/// Per-bucket increases of a histogram over the span, with its bounds.
fn bucket_increase<'a>(
    family: &'a Family,
    series: &'a Series,
    span: &Span,
) -> Option<(&'a [f64], Vec<f64>)> {
    let Value::Histogram { bounds, .. } = series.value() else {
        return None;
    };
    let end = family.at(series, span.tier, span.end)?;
    let start = family.at(series, span.tier, span.start)?;
    let buckets = bounds.len() + 1;
    let counts = end[..buckets]
        .iter()
        .zip(&start[..buckets])
        .map(|(e, s)| (e - s).max(0.0))
        .collect();
    Some((bounds, counts))
}

/// Histogram buckets summed per group: bounds, counts, and series summed.
type Buckets = HashMap<Vec<String>, (Vec<f64>, Vec<f64>)>;

fn sum_buckets(
    family: &Family,
    selector: &Selector,
    group_by: &[String],
    span: &Span,
) -> (Buckets, HashMap<Vec<String>, u32>) {
    let grouping = grouping(family, group_by);
    // Per group: bucket bounds, summed counts, series.
    type Group<'a> = Option<(&'a [f64], Vec<f64>, u32)>;
    let mut groups: HashMap<u32, Group> = HashMap::new();
    for &i in selection(family, selector).iter() {
        let series = &family.series[i];
        if !live(series, span, None) {
            continue;
        }
        let Some((bounds, counts)) = bucket_increase(family, series, span) else {
            continue;
        };
        match groups.entry(grouping.group_of[i]).or_insert(None) {
            Some((b, c, n)) if *b == bounds => {
                c.iter_mut().zip(&counts).for_each(|(a, x)| *a += x);
                *n += 1;
            }
            // Series of one group with other bucket bounds cannot be added up: left out.
            Some(_) => {}
            slot @ None => *slot = Some((bounds, counts, 1)),
        }
    }
    let mut buckets = HashMap::new();
    let mut members = HashMap::new();
    for (g, group) in groups {
        if let Some((bounds, counts, n)) = group {
            let key = grouping.keys[g as usize].clone();
            members.insert(key.clone(), n);
            buckets.insert(key, (bounds.to_vec(), counts));
        }
    }
    (buckets, members)
}

/// Running aggregate of a group.
#[derive(Debug, Clone, Copy)]
struct Acc {
    value: f64,
    series: u32,
}

/// Time-average, maximum or minimum of every selected gauge over the span, by series index.
fn gauges_over(
    family: &Family,
    selected: &[usize],
    span: &Span,
    function: Function,
) -> Vec<Option<f64>> {
    let Some(rows) = family.tier(span.tier).rows_over(span.start + 1, span.end) else {
        return vec![None; selected.len()];
    };
    // Per series: weighted sum, steps, maximum, minimum.
    let mut acc = vec![(0.0, 0.0, f64::NEG_INFINITY, f64::INFINITY); selected.len()];
    let offsets: Vec<usize> = selected
        .iter()
        .map(|i| family.series[*i].offset(span.tier))
        .collect();
    for (row, steps) in rows {
        let steps = steps as f64;
        for (a, offset) in acc.iter_mut().zip(&offsets) {
            let Some(v) = row.get(*offset) else { continue };
            let (mean, hi, lo) = match span.tier {
                Tier::Seconds => (*v, *v, *v),
                // A minute's or an hour's aggregate: sum, points, maximum, minimum, last.
                Tier::Minutes | Tier::Hours => (
                    *v / row[offset + 1].max(1.0),
                    row[offset + 2],
                    row[offset + 3],
                ),
            };
            a.0 += mean * steps;
            a.1 += steps;
            a.2 = f64::max(a.2, hi);
            a.3 = f64::min(a.3, lo);
        }
    }
    acc.into_iter()
        .map(|(sum, n, max, min)| {
            (n > 0.0).then(|| match function {
                Function::Avg => sum / n,
                Function::Max => max,
                _ => min,
            })
        })
        .collect()
}

fn check_kind(function: Function, kind: Kind, metric: &str) -> Result<(), QueryError> {
    let ok = match function {
        Function::Rate | Function::Increase => kind != Kind::Gauge,
        Function::Quantile(_) => kind == Kind::Histogram,
        Function::Avg | Function::Max | Function::Min => kind == Kind::Gauge,
        Function::Last => true,
    };
    if ok {
        Ok(())
    } else {
        Err(QueryError::Invalid(format!(
            "{function:?} does not apply to '{metric}', a {kind:?}: rate and increase take counters and histograms, quantile takes histograms, avg/max/min take gauges"
        )))
    }
}

/// Evaluates `query` at Unix second `now`.
pub fn evaluate(store: &MetricStore, query: &Query, now: i64) -> Result<Answer, QueryError> {
    if let Function::Quantile(q) = query.function
        && !(0.0..=1.0).contains(&q)
    {
        return Err(QueryError::Invalid(format!(
            "quantile {q} is outside [0, 1]"
        )));
    }
    if query.window == 0 && query.function != Function::Last {
        return Err(QueryError::Invalid(
            "window_seconds is 0: give the window to compute over (e.g. 300)".into(),
        ));
    }
    let span = span(now, query.at, query.window)?;
    let mut answer = Answer {
        samples: Vec::new(),
        at: span.end_s,
        resolution: span.tier.step_seconds(),
    };
    let Some(family) = resolve(store, &query.selector.metric) else {
        return Ok(answer);
    };
    let family = family.read().unwrap_or_else(|p| p.into_inner());
    check_kind(query.function, family.kind, &query.selector.metric)?;
    if let Function::Quantile(q) = query.function {
        let (groups, members) = sum_buckets(&family, &query.selector, &query.group_by, &span);
        answer.samples = groups
            .into_iter()
            .filter_map(|(key, (bounds, counts))| {
                let value = statistics::histogram_quantile(q, &bounds, &counts)?;
                Some(Sample {
                    labels: group_labels(&key, &query.group_by),
                    value,
                    series: members[&key],
                })
            })
            .collect();
        answer.samples.sort_by(|a, b| a.labels.cmp(&b.labels));
        return Ok(answer);
    }
    let stale_after = (query.window == 0).then(|| store.limits().stale_after_seconds);
    let selected: Vec<usize> = selection(&family, &query.selector)
        .iter()
        .copied()
        .filter(|i| live(&family.series[*i], &span, stale_after))
        .collect();
    let values: Vec<Option<f64>> = match query.function {
        Function::Rate | Function::Increase | Function::Last => {
            let columns = family.tier(span.tier);
            let end = columns.row(span.end);
            let start = columns.row(span.start);
            selected
                .iter()
                .map(|i| {
                    let series = &family.series[*i];
                    let end = family.in_row(series, span.tier, end)?;
                    if query.function == Function::Last {
                        return Some(match (family.kind, span.tier) {
                            (Kind::Gauge, Tier::Minutes | Tier::Hours) => end[4],
                            _ => end[end.len() - 1],
                        });
                    }
                    let start = family.in_row(series, span.tier, start)?;
                    let i = end.len() - 1;
                    let increase = (end[i] - start[i]).max(0.0);
                    Some(if query.function == Function::Rate {
                        increase / query.window as f64
                    } else {
                        increase
                    })
                })
                .collect()
        }
        f => gauges_over(&family, &selected, &span, f),
    };
    let grouping = grouping(&family, &query.group_by);
    // Only the groups this query touches (a grouping can hold thousands).
    let mut groups: HashMap<u32, Acc> = HashMap::new();
    for (i, value) in selected.iter().zip(values) {
        let Some(value) = value else { continue };
        let acc = groups.entry(grouping.group_of[*i]).or_insert(Acc {
            value: match query.function {
                Function::Max => f64::NEG_INFINITY,
                Function::Min => f64::INFINITY,
                _ => 0.0,
            },
            series: 0,
        });
        acc.value = match query.function {
            Function::Max => acc.value.max(value),
            Function::Min => acc.value.min(value),
            _ => acc.value + value,
        };
        acc.series += 1;
    }
    answer.samples = groups
        .into_iter()
        .map(|(g, acc)| Sample {
            labels: group_labels(&grouping.keys[g as usize], &query.group_by),
            value: if query.function == Function::Avg {
                acc.value / f64::from(acc.series)
            } else {
                acc.value
            },
            series: acc.series,
        })
        .collect();
    answer.samples.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(answer)
}

/// Divides `numerator` by `denominator` group by group; groups with a zero or missing
/// denominator are left out.
pub fn ratio(
    store: &MetricStore,
    numerator: &Query,
    denominator: &Query,
    now: i64,
) -> Result<Answer, QueryError> {
    if numerator.group_by != denominator.group_by {
        return Err(QueryError::Invalid(format!(
            "numerator groups by {:?} but denominator by {:?}: give both the same group_by",
            numerator.group_by, denominator.group_by
        )));
    }
    let num = evaluate(store, numerator, now)?;
    let den = evaluate(store, denominator, now)?;
    let by_labels: HashMap<&Labels, f64> =
        num.samples.iter().map(|s| (&s.labels, s.value)).collect();
    let samples = den
        .samples
        .iter()
        .filter(|d| d.value != 0.0)
        .map(|d| Sample {
            labels: d.labels.clone(),
            // A group without failures has no numerator series yet: its ratio is 0.
            value: by_labels.get(&d.labels).copied().unwrap_or(0.0) / d.value,
            series: d.series,
        })
        .collect();
    Ok(Answer { samples, ..den })
}

/// A pinned distribution: per group, bucket bounds and counts.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The metric it was taken from.
    pub metric: String,
    /// The labels it is grouped by.
    pub group_by: Vec<String>,
    /// Bounds and counts per group.
    groups: Buckets,
}

impl Baseline {
    /// Observations pinned, all groups together.
    pub fn observations(&self) -> u64 {
        self.groups
            .values()
            .map(|(_, c)| c.iter().sum::<f64>() as u64)
            .sum()
    }

    /// Groups pinned.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }
}

/// Where a drift comparison takes its baseline.
#[derive(Debug, Clone)]
pub enum BaselineSource {
    /// A window ending `offset` seconds before the evaluation time, `window` seconds long.
    PastWindow {
        /// Seconds between the baseline's end and the evaluation time.
        offset: i64,
        /// Length; 0 for the compared window's.
        window: i64,
    },
    /// A pinned snapshot.
    Snapshot(Baseline),
}

/// Drift of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDrift {
    /// The group.
    pub labels: Labels,
    /// PSI, KS statistic and p-value.
    pub drift: Drift,
    /// Observations in the window and in the baseline.
    pub window_count: u64,
    /// Observations in the baseline.
    pub baseline_count: u64,
}

fn histogram_family<'a>(
    family: &'a Option<std::sync::Arc<RwLock<Family>>>,
    metric: &str,
) -> Result<Option<std::sync::RwLockReadGuard<'a, Family>>, QueryError> {
    let Some(family) = family else {
        return Ok(None);
    };
    let family = family.read().unwrap_or_else(|p| p.into_inner());
    if family.kind != Kind::Histogram {
        return Err(QueryError::Invalid(format!(
            "'{metric}' is a {:?}; drift compares histograms",
            family.kind
        )));
    }
    Ok(Some(family))
}

/// Pins the distribution of `selector`'s histogram over the `window` seconds before `now`.
pub fn pin(
    store: &MetricStore,
    selector: &Selector,
    group_by: &[String],
    window: i64,
    now: i64,
) -> Result<Baseline, QueryError> {
    if window == 0 {
        return Err(QueryError::Invalid(
            "window_seconds is 0: give the window to pin".into(),
        ));
    }
    let span = span(now, None, window)?;
    let family = resolve(store, &selector.metric);
    let groups = match histogram_family(&family, &selector.metric)? {
        Some(family) => sum_buckets(&family, selector, group_by, &span).0,
        None => HashMap::new(),
    };
    Ok(Baseline {
        metric: selector.metric.clone(),
        group_by: group_by.to_vec(),
        groups,
    })
}

/// Compares the histogram of `selector` over `window` seconds ending at `at` (or now) with a
/// baseline, per group present in both.
pub fn drift(
    store: &MetricStore,
    selector: &Selector,
    group_by: &[String],
    window: i64,
    at: Option<i64>,
    baseline: &BaselineSource,
    now: i64,
) -> Result<(i64, Vec<GroupDrift>), QueryError> {
    if window == 0 {
        return Err(QueryError::Invalid(
            "window_seconds is 0: give the window to compare".into(),
        ));
    }
    let current = span(now, at, window)?;
    let family = resolve(store, &selector.metric);
    let Some(family) = histogram_family(&family, &selector.metric)? else {
        return Ok((current.end_s, Vec::new()));
    };
    let (group_by, base) = match baseline {
        BaselineSource::PastWindow { offset, window: w } => {
            let w = if *w == 0 { window } else { *w };
            let past = span(now, Some(current.end_s - offset), w)?;
            (
                group_by.to_vec(),
                sum_buckets(&family, selector, group_by, &past).0,
            )
        }
        BaselineSource::Snapshot(b) => (b.group_by.clone(), b.groups.clone()),
    };
    let (groups, _) = sum_buckets(&family, selector, &group_by, &current);
    let mut results: Vec<GroupDrift> = groups
        .into_iter()
        .filter_map(|(key, (bounds, counts))| {
            let (base_bounds, base_counts) = base.get(&key)?;
            if *base_bounds != bounds {
                return None;
            }
            let drift = statistics::drift(base_counts, &counts)?;
            Some(GroupDrift {
                labels: group_labels(&key, &group_by),
                drift,
                window_count: counts.iter().sum::<f64>() as u64,
                baseline_count: base_counts.iter().sum::<f64>() as u64,
            })
        })
        .collect();
    results.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok((current.end_s, results))
}

/// Named baselines, bounded.
pub struct Baselines {
    pinned: RwLock<BTreeMap<String, Baseline>>,
    max: usize,
    /// The file every pin is written to, when the collector keeps its state on disk.
    file: std::sync::OnceLock<std::path::PathBuf>,
}

impl Baselines {
    /// At most `max` names.
    pub fn new(max: usize) -> Baselines {
        Baselines {
            pinned: RwLock::new(BTreeMap::new()),
            max,
            file: std::sync::OnceLock::new(),
        }
    }

    /// Reads the baselines pinned before a restart from `file` (when it exists) and writes
    /// every later pin there.
    pub fn keep_in(&self, file: std::path::PathBuf) -> std::io::Result<()> {
        if let Some(bytes) = crate::durable::read_if_exists(&file)? {
            let mut r = crate::durable::codec::Reader::new(&bytes);
            match decode_baselines(&mut r) {
                Ok(pinned) => {
                    *self.pinned.write().unwrap_or_else(|p| p.into_inner()) = pinned;
                }
                Err(err) => {
                    let aside = crate::durable::set_aside(&file)?;
                    tracing::error!(file = %file.display(), moved_to = %aside.display(), error = %err, "pinned baselines unreadable; set aside, starting with none");
                }
            }
        }
        let _ = self.file.set(file);
        Ok(())
    }

    /// Writes every pinned baseline to the file, replacing it whole.
    fn save(&self, pinned: &BTreeMap<String, Baseline>) -> Result<(), QueryError> {
        let Some(file) = self.file.get() else {
            return Ok(());
        };
        let mut w = crate::durable::codec::Writer::new();
        w.len(pinned.len());
        for (name, b) in pinned {
            w.str(name);
            w.str(&b.metric);
            w.len(b.group_by.len());
            for g in &b.group_by {
                w.str(g);
            }
            w.len(b.groups.len());
            for (key, (bounds, counts)) in &b.groups {
                w.len(key.len());
                for k in key {
                    w.str(k);
                }
                w.f64s(bounds);
                w.f64s(counts);
            }
        }
        crate::durable::write_atomically(file, &w.bytes).map_err(|e| {
            QueryError::Internal(format!(
                "the baseline could not be saved to {}: {e}",
                file.display()
            ))
        })
    }

    /// Pins `baseline` under `name` (replacing one of the same name).
    pub fn insert(&self, name: &str, baseline: Baseline) -> Result<(), QueryError> {
        let mut pinned = self.pinned.write().unwrap_or_else(|p| p.into_inner());
        if !pinned.contains_key(name) && pinned.len() >= self.max {
            return Err(QueryError::Invalid(format!(
                "{} baselines are pinned, the most kept; reuse a name to replace one",
                self.max
            )));
        }
        let previous = pinned.insert(name.to_owned(), baseline);
        if let Err(err) = self.save(&pinned) {
            match previous {
                Some(previous) => pinned.insert(name.to_owned(), previous),
                None => pinned.remove(name),
            };
            return Err(err);
        }
        Ok(())
    }

    /// Pins, under `name`, the distribution of `selector`'s histograms over the `window`
    /// seconds before `now`, per group of `group_by`: what a drift query compares with later.
    /// Returns the groups and the observations pinned.
    pub fn pin(
        &self,
        name: &str,
        store: &MetricStore,
        selector: &Selector,
        group_by: &[String],
        window: i64,
        now: i64,
    ) -> Result<(usize, u64), QueryError> {
        let baseline = pin(store, selector, group_by, window, now)?;
        let pinned = (baseline.groups(), baseline.observations());
        self.insert(name, baseline)?;
        Ok(pinned)
    }

    /// The baseline called `name`.
    pub fn get(&self, name: &str) -> Result<Baseline, QueryError> {
        let pinned = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        pinned
            .get(name)
            .cloned()
            .ok_or_else(|| QueryError::NotFound(format!("no baseline is pinned as '{name}'")))
    }
}

fn decode_baselines(
    r: &mut crate::durable::codec::Reader<'_>,
) -> Result<BTreeMap<String, Baseline>, crate::durable::codec::Malformed> {
    let mut out = BTreeMap::new();
    for _ in 0..r.len(2)? {
        let name = r.str()?;
        let metric = r.str()?;
        let group_by = (0..r.len(1)?).map(|_| r.str()).collect::<Result<_, _>>()?;
        let mut groups = Buckets::new();
        for _ in 0..r.len(3)? {
            let key = (0..r.len(1)?).map(|_| r.str()).collect::<Result<_, _>>()?;
            groups.insert(key, (r.f64s()?, r.f64s()?));
        }
        out.insert(
            name,
            Baseline {
                metric,
                group_by,
                groups,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Point;
    use crate::store::tests::limits;

    fn selector(metric: &str, matchers: Vec<Matcher>) -> Selector {
        Selector {
            metric: metric.to_owned(),
            matchers,
        }
    }

    fn query(metric: &str, function: Function, window: i64, group_by: &[&str]) -> Query {
        Query {
            selector: selector(metric, vec![]),
            function,
            window,
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            at: None,
        }
    }

    fn counter(store: &MetricStore, now: i64, status: &str, replica: &str, v: f64) {
        store
            .record(
                now,
                "requests",
                Kind::Counter,
                "",
                "",
                vec![Point {
                    labels: vec![
                        ("replica".into(), replica.into()),
                        ("status".into(), status.into()),
                    ],
                    start_time_ns: 5000,
                    delta: false,
                    value: Value::Scalar(v),
                }],
            )
            .unwrap();
    }

    #[test]
    fn rate_increase_and_ratio_per_group() {
        let store = MetricStore::new(limits(100));
        // Two replicas, 1 s apart, over 100 s: OK grows by 10/s on each, ERROR by 1/s on one.
        for t in 0..=100 {
            let now = 10_000 + t;
            counter(&store, now, "OK", "a", 10.0 * t as f64);
            counter(&store, now, "OK", "b", 10.0 * t as f64);
            counter(&store, now, "ERROR", "a", t as f64);
        }
        let now = 10_100;
        let inc = evaluate(
            &store,
            &query("requests", Function::Increase, 60, &["status"]),
            now,
        )
        .unwrap();
        let values: Vec<(String, f64, u32)> = inc
            .samples
            .iter()
            .map(|s| (s.labels[0].1.clone(), s.value, s.series))
            .collect();
        assert_eq!(
            values,
            [("ERROR".into(), 60.0, 1), ("OK".into(), 1200.0, 2)]
        );
        assert_eq!(inc.resolution, 1);
        let rate = evaluate(
            &store,
            &query("requests_total", Function::Rate, 60, &[]),
            now,
        )
        .unwrap();
        assert_eq!(rate.samples[0].value, 21.0);
        let mut errors = query("requests", Function::Rate, 30, &["replica"]);
        errors.selector.matchers = vec![Matcher::new("status", "ERR.*", true, false).unwrap()];
        let all = query("requests", Function::Rate, 30, &["replica"]);
        let r = ratio(&store, &errors, &all, now).unwrap();
        assert_eq!(r.samples.len(), 2);
        assert!((r.samples[0].value - 1.0 / 11.0).abs() < 1e-12);
        assert_eq!(r.samples[1].value, 0.0);
        // A window from before the series existed counts from zero (the sender started after
        // the collector).
        let early = evaluate(
            &store,
            &query("requests", Function::Increase, 3000, &[]),
            now,
        )
        .unwrap();
        assert_eq!(early.samples[0].value, 2100.0);
        // Wrong kind and bad input are refused with a reason.
        assert!(matches!(
            evaluate(&store, &query("requests", Function::Avg, 60, &[]), now),
            Err(QueryError::Invalid(_))
        ));
        assert!(matches!(
            evaluate(&store, &query("requests", Function::Rate, 0, &[]), now),
            Err(QueryError::Invalid(_))
        ));
        assert!(matches!(
            evaluate(
                &store,
                &query("requests", Function::Rate, 700_000, &[]),
                now
            ),
            Err(QueryError::Invalid(_))
        ));
        assert!(Matcher::new("x", "(", true, false).is_err());
        // Unknown metrics have no samples.
        let none = evaluate(&store, &query("nothing", Function::Rate, 60, &[]), now).unwrap();
        assert!(none.samples.is_empty());
    }

    #[test]
    fn long_windows_read_the_minute_tier() {
        let store = MetricStore::new(limits(100));
        // One point a minute for 3 hours, +60 each.
        for m in 0..=180 {
            counter(&store, 60 * m, "OK", "a", 60.0 * m as f64);
        }
        let now = 60 * 180;
        let q = query("requests", Function::Increase, 7200, &[]);
        let answer = evaluate(&store, &q, now).unwrap();
        assert_eq!(answer.resolution, 60);
        assert_eq!(answer.samples[0].value, 7200.0);
    }

    #[test]
    fn windows_of_days_read_the_hour_tier() {
        let store = MetricStore::new(limits(100));
        // One point an hour for 4 days, +3600 each.
        for h in 0..=96 {
            counter(&store, 3600 * h, "OK", "a", 3600.0 * h as f64);
        }
        let now = 3600 * 96;
        let answer = evaluate(
            &store,
            &query("requests", Function::Rate, 3 * 86_400, &[]),
            now,
        )
        .unwrap();
        assert_eq!(answer.resolution, 3600);
        assert_eq!(answer.samples[0].value, 1.0);
    }

    #[test]
    fn gauges_average_max_min_and_last() {
        let store = MetricStore::new(limits(100));
        for (t, v) in [(100, 1.0), (101, 5.0), (103, 3.0)] {
            store
                .record(
                    t,
                    "depth",
                    Kind::Gauge,
                    "",
                    "",
                    vec![Point {
                        labels: vec![],
                        start_time_ns: 0,
                        delta: false,
                        value: Value::Scalar(v),
                    }],
                )
                .unwrap();
        }
        let now = 104;
        let get = |f| {
            evaluate(&store, &query("depth", f, 4, &[]), now)
                .unwrap()
                .samples[0]
                .value
        };
        // Steps 101..=104 hold 5, 5, 3, 3.
        assert_eq!(get(Function::Avg), 4.0);
        assert_eq!(get(Function::Max), 5.0);
        assert_eq!(get(Function::Min), 3.0);
        assert_eq!(get(Function::Last), 3.0);
        // Stale: no point in the last 0.5 min of a later evaluation.
        let later = evaluate(&store, &query("depth", Function::Last, 30, &[]), 200).unwrap();
        assert!(later.samples.is_empty());
    }

    /// A replica that went away (its series no longer updated) stops counting in instant
    /// queries once stale, while what it counted within a window still counts.
    #[test]
    fn a_departed_replica_leaves_instant_queries_once_stale() {
        let store = MetricStore::new(limits(100));
        let gauge = |t: i64, instance: &str, v: f64| {
            store
                .record(
                    t,
                    "depth",
                    Kind::Gauge,
                    "",
                    "",
                    vec![Point {
                        labels: vec![("instance".into(), instance.into())],
                        start_time_ns: 0,
                        delta: false,
                        value: Value::Scalar(v),
                    }],
                )
                .unwrap();
        };
        gauge(1000, "a", 4.0);
        gauge(1000, "b", 6.0);
        gauge(1100, "a", 5.0);
        let last = |now| evaluate(&store, &query("depth", Function::Last, 0, &[]), now).unwrap();
        // b's last point is 100 s old: within the 120 s, it still counts.
        assert_eq!(last(1100).samples[0].value, 11.0);
        assert_eq!(last(1100).samples[0].series, 2);
        // 121 s without a point: b is gone.
        gauge(1121, "a", 5.0);
        assert_eq!(last(1121).samples[0].value, 5.0);
        assert_eq!(last(1121).samples[0].series, 1);
        assert_eq!(store.snapshot(1121)["depth"].series.len(), 1);
        // A window reaching back to b's points still sees it.
        let avg = evaluate(
            &store,
            &query("depth", Function::Max, 200, &["instance"]),
            1121,
        )
        .unwrap();
        assert_eq!(avg.samples.len(), 2, "{avg:?}");
    }

    fn scores(store: &MetricStore, now: i64, counts: Vec<u64>) {
        let count = counts.iter().sum();
        store
            .record(
                now,
                "score",
                Kind::Histogram,
                "",
                "",
                vec![Point {
                    labels: vec![("version".into(), "1".into())],
                    start_time_ns: 0,
                    delta: true,
                    value: Value::Histogram {
                        bounds: vec![0.25, 0.5, 0.75, 1.0],
                        counts,
                        sum: 0.0,
                        count,
                    },
                }],
            )
            .unwrap();
    }

    #[test]
    fn quantiles_and_drift_of_histograms() {
        let store = MetricStore::new(limits(100));
        // Baseline minutes: uniform; later: shifted to the top buckets.
        for t in 1000..1060 {
            scores(&store, t, vec![10, 10, 10, 10, 0]);
        }
        for t in 1060..1120 {
            scores(&store, t, vec![2, 3, 15, 20, 0]);
        }
        let now = 1119;
        let median = evaluate(
            &store,
            &query("score", Function::Quantile(0.5), 60, &[]),
            now,
        )
        .unwrap();
        // 2400 observations: rank 1200 falls in (0.5, 0.75] after 300 below: 0.5 + 0.25 * 900/900.
        assert!((median.samples[0].value - 0.75).abs() < 1e-9, "{median:?}");
        let sel = selector("score", vec![]);
        let past = BaselineSource::PastWindow {
            offset: 60,
            window: 0,
        };
        let (_, shifted) = drift(&store, &sel, &["version".into()], 59, None, &past, now).unwrap();
        assert!(shifted[0].drift.psi > 0.25, "{shifted:?}");
        assert!(shifted[0].drift.ks_p_value < 0.01, "{shifted:?}");
        let pinned = pin(&store, &sel, &["version".into()], 50, 1055).unwrap();
        assert_eq!(pinned.observations(), 2000);
        let (_, same) = drift(
            &store,
            &sel,
            &[],
            30,
            Some(1050),
            &BaselineSource::Snapshot(pinned),
            now,
        )
        .unwrap();
        assert!(same[0].drift.psi < 0.1, "{same:?}");
    }
}

#[cfg(test)]
mod properties {
    //! Label matchers as a stranger writes them: any pattern is compiled or refused with a
    //! message, never a panic; an equality matcher matches its value and nothing else.

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_pattern_is_compiled_or_refused(pattern in ".{0,40}", negate in any::<bool>()) {
            match Matcher::new("page", &pattern, true, negate) {
                Ok(m) => {
                    let labels: Labels = vec![("page".into(), "home".into())];
                    let _ = m.matches(&labels);
                }
                Err(err) => prop_assert!(err.to_string().contains("matcher on 'page'")),
            }
        }

        #[test]
        fn equality_matches_its_value_only(value in ".{0,20}", other in ".{0,20}") {
            let m = Matcher::new("page", &value, false, false).unwrap();
            let labels: Labels = vec![("page".into(), other.clone())];
            prop_assert_eq!(m.matches(&labels), value == other);
            let not = Matcher::new("page", &value, false, true).unwrap();
            prop_assert_eq!(not.matches(&labels), value != other);
        }
    }
}

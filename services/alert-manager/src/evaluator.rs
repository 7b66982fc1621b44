//! Rule evaluation: each rule becomes queries of the metrics collector (a query, a ratio, the
//! burn rates of an objective over window pairs, a drift comparison), and each group of the
//! answer an observation: a value and whether the rule's condition holds for it.
//!
//! [`Alerts`] turns observations into alert states (pending → firing → resolved, with `for`
//! and `keep_firing_for`) and reports the transitions that incidents are made of. A rule
//! without data (its query failed, or the collector restarted without its series: see
//! [`read_all`]) changes no state: its alerts say since when they have had none. For one
//! window after its data returns ([`data_back_grace`]), a rule resolves none of the alerts it
//! kept through the gap: its first answers may still read the gap.

use std::collections::{BTreeMap, HashMap};

use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
use tonic::transport::Channel;

pub use crate::alert::{Alert, State, Transition, fingerprint};
use crate::labels::LabelSet;
use crate::rules::{self, BaselineSpec, Function, QuerySpec, Rule, RuleKind};

/// One group of a rule's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The group's labels (and, for burn rates, the window pair's).
    pub labels: LabelSet,
    /// The value the condition is about.
    pub value: f64,
    /// Whether the condition holds.
    pub holds: bool,
}

impl Observation {
    /// Whether this is the group that `alert` was raised for (its labels are among the
    /// alert's).
    pub fn is_group_of(&self, alert: &Alert) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| alert.labels.get(k) == Some(v))
    }
}

/// What the collector told of one rule at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// Its observations. None at all is an answer too: no group matched (an error counter
    /// with no series because nothing failed), or every group is gone.
    Observed(Vec<Observation>),
    /// No data, and why: the query failed, or came back empty while the collector held none
    /// of the series the rule reads.
    NoData(String),
}

fn matchers(spec: &BTreeMap<String, String>) -> Vec<pb::LabelMatcher> {
    spec.iter()
        .map(|(name, value)| {
            let (op, value) = if let Some(v) = value.strip_prefix("!=") {
                (pb::MatchOp::NotEqual, v)
            } else if let Some(v) = value.strip_prefix("=~") {
                (pb::MatchOp::Regex, v)
            } else if let Some(v) = value.strip_prefix("!~") {
                (pb::MatchOp::NotRegex, v)
            } else {
                (pb::MatchOp::Equal, value.as_str())
            };
            pb::LabelMatcher {
                name: name.clone(),
                value: value.to_owned(),
                op: op as i32,
            }
        })
        .collect()
}

fn selector(metric: &str, spec: &BTreeMap<String, String>) -> Option<pb::Selector> {
    Some(pb::Selector {
        metric: metric.to_owned(),
        matchers: matchers(spec),
    })
}

/// The collector request of a query of a rule, evaluated at Unix second `at` (0 = now).
pub fn query_request(spec: &QuerySpec, group_by: &[String], at: i64) -> pb::QueryRequest {
    let function = match spec.function {
        Function::Rate => pb::Function::Rate,
        Function::Increase => pb::Function::Increase,
        Function::Quantile => pb::Function::Quantile,
        Function::Avg => pb::Function::Avg,
        Function::Max => pb::Function::Max,
        Function::Min => pb::Function::Min,
        Function::Last => pb::Function::Last,
    };
    pb::QueryRequest {
        selector: selector(&spec.metric, &spec.matchers),
        function: function as i32,
        window_seconds: spec.window.0.as_secs().max(1) as u32,
        quantile: spec.quantile.unwrap_or(0.0),
        group_by: group_by.to_vec(),
        at_unix_seconds: at,
    }
}

fn labels_of(sample_labels: HashMap<String, String>) -> LabelSet {
    sample_labels.into_iter().collect()
}

/// The rate request of a spec over `window` (burn rates).
fn rate_request(
    spec: &QuerySpec,
    group_by: &[String],
    window: std::time::Duration,
    at: i64,
) -> pb::QueryRequest {
    let mut spec = spec.clone();
    spec.function = Function::Rate;
    spec.window = rules::Span(window);
    query_request(&spec, group_by, at)
}

/// The collector items that evaluate `rule` at Unix second `at` (0 = now), in the order that
/// [`interpret`] reads their answers.
pub fn plan(rule: &Rule, at: i64) -> Vec<pb::BatchItem> {
    use pb::batch_item::Item;
    let item = |i: Item| pb::BatchItem { item: Some(i) };
    match &rule.kind {
        RuleKind::Threshold { query, ratio, .. } => match (query, ratio) {
            (Some(q), _) => vec![item(Item::Query(query_request(q, &rule.group_by, at)))],
            (None, Some(r)) => vec![item(Item::Ratio(pb::RatioRequest {
                numerator: Some(query_request(&r.numerator, &rule.group_by, at)),
                denominator: Some(query_request(&r.denominator, &rule.group_by, at)),
            }))],
            (None, None) => Vec::new(),
        },
        RuleKind::BurnRate {
            good,
            total,
            windows,
            ..
        } => windows
            .iter()
            .flat_map(|pair| [pair.long.0, pair.short.0])
            .map(|window| {
                item(Item::Ratio(pb::RatioRequest {
                    numerator: Some(rate_request(good, &rule.group_by, window, at)),
                    denominator: Some(rate_request(total, &rule.group_by, window, at)),
                }))
            })
            .collect(),
        RuleKind::Drift {
            metric,
            matchers: spec,
            window,
            baseline,
            ..
        } => {
            let baseline = match baseline {
                BaselineSpec::Snapshot(name) => pb::drift_request::Baseline::Snapshot(name.clone()),
                BaselineSpec::Offset(offset) => {
                    pb::drift_request::Baseline::PastWindow(pb::PastWindow {
                        offset_seconds: offset.0.as_secs() as u32,
                        window_seconds: 0,
                    })
                }
            };
            vec![item(Item::Drift(pb::DriftRequest {
                selector: selector(metric, spec),
                window_seconds: window.0.as_secs().max(1) as u32,
                group_by: rule.group_by.clone(),
                baseline: Some(baseline),
                at_unix_seconds: at,
            }))]
        }
        RuleKind::CanaryQuality { model, window, .. } => {
            vec![item(Item::Quality(pb::ModelQualityRequest {
                model: model.clone(),
                window_seconds: window.0.as_secs().max(1) as u32,
                k: 0,
            }))]
        }
    }
}

fn samples(result: &pb::BatchResult) -> Result<Vec<pb::Sample>, String> {
    match &result.result {
        Some(pb::batch_result::Result::Samples(r)) => Ok(r.samples.clone()),
        Some(pb::batch_result::Result::Error(e)) => Err(e.clone()),
        _ => Err("the collector answered another kind of result".into()),
    }
}

/// Observations of `rule` from the answers to its [`plan`].
pub fn interpret(rule: &Rule, results: &[pb::BatchResult]) -> Result<Vec<Observation>, String> {
    match &rule.kind {
        RuleKind::Threshold { op, threshold, .. } => {
            let Some(first) = results.first() else {
                return Ok(Vec::new());
            };
            Ok(samples(first)?
                .into_iter()
                .map(|s| Observation {
                    holds: op.holds(s.value, *threshold),
                    value: s.value,
                    labels: labels_of(s.labels),
                })
                .collect())
        }
        RuleKind::BurnRate {
            objective, windows, ..
        } => {
            let budget = 1.0 - objective;
            let error_ratios = |r: &pb::BatchResult| -> Result<Vec<(LabelSet, f64)>, String> {
                Ok(samples(r)?
                    .into_iter()
                    .map(|s| (labels_of(s.labels), (1.0 - s.value).max(0.0)))
                    .collect())
            };
            let mut out = Vec::new();
            for (pair, answers) in windows.iter().zip(results.chunks(2)) {
                let [long, short] = answers else {
                    return Err("missing burn-rate answers".into());
                };
                let short: HashMap<LabelSet, f64> = error_ratios(short)?.into_iter().collect();
                for (mut labels, long_ratio) in error_ratios(long)? {
                    let long_burn = long_ratio / budget;
                    let short_burn = short.get(&labels).copied().unwrap_or(0.0) / budget;
                    labels.insert(
                        "burn_window".into(),
                        format!("{}/{}", human(pair.long.0), human(pair.short.0)),
                    );
                    labels.insert("severity".into(), pair.severity.clone());
                    out.push(Observation {
                        holds: long_burn > pair.factor && short_burn > pair.factor,
                        value: long_burn,
                        labels,
                    });
                }
            }
            Ok(out)
        }
        RuleKind::Drift {
            psi_above,
            ks_p_below,
            ..
        } => {
            let drift = match results.first().and_then(|r| r.result.as_ref()) {
                Some(pb::batch_result::Result::Drift(d)) => d.results.clone(),
                Some(pb::batch_result::Result::Error(e)) => return Err(e.clone()),
                _ => return Err("the collector answered another kind of result".into()),
            };
            Ok(drift
                .into_iter()
                .map(|r| Observation {
                    holds: psi_above.is_some_and(|t| r.psi > t)
                        || ks_p_below.is_some_and(|t| r.ks_p_value < t),
                    value: r.psi,
                    labels: labels_of(r.labels),
                })
                .collect())
        }
        RuleKind::CanaryQuality {
            measure,
            min_samples,
            op,
            threshold,
            ..
        } => {
            let versions = match results.first().and_then(|r| r.result.as_ref()) {
                Some(pb::batch_result::Result::Quality(q)) => q.versions.clone(),
                Some(pb::batch_result::Result::Error(e)) => return Err(e.clone()),
                _ => return Err("the collector answered another kind of result".into()),
            };
            Ok(compare_versions(&versions, *measure, *min_samples)
                .into_iter()
                .map(|(labels, value)| Observation {
                    holds: op.holds(value, *threshold),
                    value,
                    labels,
                })
                .collect())
        }
    }
}

/// Each version of a model with enough samples of `measure` against the one with the most
/// (the stable version, which most traffic goes to): its labels (`model`, `model_version`,
/// `baseline_version`) and `measure(version) − measure(baseline)`.
pub fn compare_versions(
    versions: &[pb::VersionQuality],
    measure: rules::QualityMeasure,
    min_samples: u64,
) -> Vec<(LabelSet, f64)> {
    let value = |v: &pb::VersionQuality| measure.of(v);
    let ready: Vec<&pb::VersionQuality> = versions
        .iter()
        .filter(|v| measure.samples(v) >= min_samples && value(v).is_finite())
        .collect();
    let Some(baseline) = ready
        .iter()
        .max_by_key(|v| (measure.samples(v), std::cmp::Reverse(v.version)))
    else {
        return Vec::new();
    };
    ready
        .iter()
        .filter(|v| v.version != baseline.version)
        .map(|v| {
            let labels: LabelSet = [
                ("model".to_owned(), v.model.clone()),
                ("model_version".to_owned(), v.version.to_string()),
                ("baseline_version".to_owned(), baseline.version.to_string()),
            ]
            .into();
            (labels, value(v) - value(baseline))
        })
        .collect()
}

/// Items of one batch call, at most (the collector's limit).
const BATCH_ITEMS: usize = 10_000;

/// Answers to `items`, in order, with as few calls as possible (one batch per 10,000 items),
/// or why the collector gave none.
async fn batch(
    client: &mut MetricsQueryClient<Channel>,
    items: &[pb::BatchItem],
) -> Result<Vec<pb::BatchResult>, String> {
    let mut results: Vec<pb::BatchResult> = Vec::with_capacity(items.len());
    for chunk in items.chunks(BATCH_ITEMS) {
        let answer = client
            .batch(pb::BatchRequest {
                items: chunk.to_vec(),
            })
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        results.extend(answer.into_inner().results);
    }
    Ok(results)
}

/// Evaluates every rule with as few calls as possible (one batch per 10,000 items); each rule
/// gets its observations or the reason it could not be evaluated.
pub async fn observe_all(
    client: &mut MetricsQueryClient<Channel>,
    rules: &[Rule],
    at: i64,
) -> Vec<Result<Vec<Observation>, String>> {
    let plans: Vec<Vec<pb::BatchItem>> = rules.iter().map(|r| plan(r, at)).collect();
    let items: Vec<pb::BatchItem> = plans.iter().flatten().cloned().collect();
    let results = match batch(client, &items).await {
        Ok(results) => results,
        Err(why) => return rules.iter().map(|_| Err(why.clone())).collect(),
    };
    let mut offset = 0;
    rules
        .iter()
        .zip(&plans)
        .map(|(rule, plan)| {
            let answers = results.get(offset..offset + plan.len()).unwrap_or(&[]);
            offset += plan.len();
            interpret(rule, answers)
        })
        .collect()
}

/// How far back the collector is asked whether it holds a rule's series at all: within the
/// 1 s tier, where every kind of series reads as its latest value.
const PRESENCE_WINDOW_SECONDS: u32 = 3600;

/// The metrics (and label conditions) a rule reads; none for a canary-quality rule, which
/// reads the prediction–feedback join.
fn selectors(rule: &Rule) -> Vec<(&str, &BTreeMap<String, String>)> {
    fn of(q: &QuerySpec) -> (&str, &BTreeMap<String, String>) {
        (q.metric.as_str(), &q.matchers)
    }
    match &rule.kind {
        RuleKind::Threshold { query, ratio, .. } => match (query, ratio) {
            (Some(q), _) => vec![of(q)],
            (None, Some(r)) => vec![of(&r.numerator), of(&r.denominator)],
            (None, None) => Vec::new(),
        },
        RuleKind::BurnRate { good, total, .. } => vec![of(good), of(total)],
        RuleKind::Drift {
            metric, matchers, ..
        } => vec![(metric.as_str(), matchers)],
        RuleKind::CanaryQuality { .. } => Vec::new(),
    }
}

/// The collector items that ask whether it holds any series `rule` reads, updated within the
/// last hour (the latest value of each, all in one group).
fn presence_plan(rule: &Rule, at: i64) -> Vec<pb::BatchItem> {
    selectors(rule)
        .into_iter()
        .map(|(metric, spec)| pb::BatchItem {
            item: Some(pb::batch_item::Item::Query(pb::QueryRequest {
                selector: selector(metric, spec),
                function: pb::Function::Last as i32,
                window_seconds: PRESENCE_WINDOW_SECONDS,
                quantile: 0.0,
                group_by: Vec::new(),
                at_unix_seconds: at,
            })),
        })
        .collect()
}

/// Whether the answers to a [`presence_plan`] show any series.
fn holds_any(answers: &[pb::BatchResult], asked: usize) -> Result<bool, String> {
    if answers.len() != asked {
        return Err(format!(
            "the collector answered {} of {asked} items",
            answers.len()
        ));
    }
    let mut failed = None;
    for answer in answers {
        match samples(answer) {
            Ok(found) if !found.is_empty() => return Ok(true),
            Ok(_) => {}
            Err(why) => failed = Some(why),
        }
    }
    failed.map_or(Ok(false), Err)
}

/// Reads every rule at Unix second `at` (0 = now); `active` names the rules that have a
/// pending or firing alert.
///
/// No data, and not an answer, is:
/// - a query that failed: the collector unreachable or restarting (`UNAVAILABLE`, a timeout),
///   or an error for the item;
/// - an empty answer for a rule in `active`, when the collector holds none of the series the
///   rule reads updated within the last hour: it restarted without them (no data directory,
///   or a lost one) and the senders have not exported since. One more batch call asks, only
///   for such rules.
///
/// Every other empty answer is an answer, as it always was: a rule without alerts has nothing
/// to keep (an error counter with no series because nothing failed reads as nothing holding),
/// and a group that left while the collector still holds the metric's series (a replica that
/// went away, a label value no longer seen) resolves its alert as before. A canary-quality
/// rule reads the prediction–feedback join, not series: its empty answers are taken as they
/// are.
pub async fn read_all(
    client: &mut MetricsQueryClient<Channel>,
    rules: &[Rule],
    active: &std::collections::HashSet<String>,
    at: i64,
) -> Vec<Reading> {
    let observed = observe_all(client, rules, at).await;
    let suspects: Vec<(usize, Vec<pb::BatchItem>)> = observed
        .iter()
        .zip(rules)
        .enumerate()
        .filter(|(_, (result, rule))| {
            matches!(result, Ok(o) if o.is_empty()) && active.contains(&rule.name)
        })
        .map(|(i, (_, rule))| (i, presence_plan(rule, at)))
        .filter(|(_, probe)| !probe.is_empty())
        .collect();
    let mut readings: Vec<Reading> = observed
        .into_iter()
        .map(|result| match result {
            Ok(observations) => Reading::Observed(observations),
            Err(why) => Reading::NoData(why),
        })
        .collect();
    if suspects.is_empty() {
        return readings;
    }
    let items: Vec<pb::BatchItem> = suspects.iter().flat_map(|(_, p)| p.clone()).collect();
    let answers = batch(client, &items).await;
    let mut offset = 0;
    for (i, probe) in &suspects {
        let held = match &answers {
            Ok(results) => holds_any(
                results.get(offset..offset + probe.len()).unwrap_or(&[]),
                probe.len(),
            ),
            Err(why) => Err(why.clone()),
        };
        offset += probe.len();
        match held {
            Ok(true) => {}
            Ok(false) => {
                let metrics: Vec<&str> =
                    selectors(&rules[*i]).into_iter().map(|(m, _)| m).collect();
                readings[*i] = Reading::NoData(format!(
                    "the collector holds no series of {} from the last hour: restarted without its data?",
                    metrics.join(", ")
                ));
            }
            Err(why) => readings[*i] = Reading::NoData(why),
        }
    }
    readings
}

/// Evaluates one rule at Unix second `at` (0 = now).
pub async fn observe_at(
    client: &mut MetricsQueryClient<Channel>,
    rule: &Rule,
    at: i64,
) -> Result<Vec<Observation>, String> {
    observe_all(client, std::slice::from_ref(rule), at)
        .await
        .pop()
        .unwrap_or_else(|| Ok(Vec::new()))
}

/// `3600s` → `1h`, `300s` → `5m`.
fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// How long a resolved alert stays listed.
const KEEP_RESOLVED_MS: i64 = 3_600_000;

/// The longest grace after data returns, whatever a rule's windows (a burn rate's long window
/// can be days).
const DATA_BACK_GRACE_MAX: std::time::Duration = std::time::Duration::from_secs(600);

/// How long after its data returns a rule resolves none of the alerts it kept through the
/// gap: its longest query window, at most 10 minutes.
///
/// Until then its answers may still read the gap rather than the system: a collector back
/// with its data, before the senders export again, holds the rule's series but none of their
/// points within the window (an empty answer, every group missing), and a rate or an average
/// over a window that covers the gap reads low. After one window every answer is made of
/// points from after the return. A canary-quality rule has none: it reads the
/// prediction–feedback join, whose window is of predictions, not of time the collector was up.
pub fn data_back_grace(rule: &Rule) -> std::time::Duration {
    let longest = match &rule.kind {
        RuleKind::Threshold { query, ratio, .. } => query
            .iter()
            .map(|q| q.window.0)
            .chain(
                ratio
                    .iter()
                    .flat_map(|r| [r.numerator.window.0, r.denominator.window.0]),
            )
            .max(),
        RuleKind::BurnRate { windows, .. } => {
            windows.iter().flat_map(|p| [p.long.0, p.short.0]).max()
        }
        RuleKind::Drift { window, .. } => Some(window.0),
        RuleKind::CanaryQuality { .. } => None,
    };
    longest.unwrap_or_default().min(DATA_BACK_GRACE_MAX)
}

/// Every alert, by fingerprint.
#[derive(Debug, Default)]
pub struct Alerts {
    alerts: HashMap<String, Alert>,
}

impl Alerts {
    /// Takes what the collector told of `rule` at `now_ms`; returns what fired and what
    /// resolved.
    ///
    /// Missing data is no verdict, either way (see [`read_all`] for what counts as missing):
    /// the rule's pending and firing alerts keep their state, nothing fires and nothing
    /// resolves, and each says since when it has had no data, and why. The clocks stop too:
    /// when data returns, a pending alert's `for` and a firing one's `keep_firing_for` go on
    /// from where they stood, so that neither the one fires nor the other resolves on time
    /// that nobody saw (a pending alert needs its `for` of observed holding). Evaluation then
    /// goes on from the kept state: a breach that lasted through the gap is the same alert,
    /// and the same incident, with no resolved-then-fired pair.
    ///
    /// For [`data_back_grace`] (one window of the rule) after data returns, the alerts kept
    /// through the gap are not resolved (nor, if pending, forgotten) on what the first answers
    /// say: their group missing, or their condition no longer holding, may be the gap still
    /// in the window. They keep their state and say until when
    /// ([`Alert::data_back_grace_until_ms`]). Everything else goes on as usual: values update,
    /// a condition that holds keeps an alert firing (or fires a pending one, whose `for` ran
    /// on through the low reads: they were no verdict), new groups go pending and fire. After
    /// the grace, evaluation is as before: a firing alert whose group is still missing, or
    /// whose condition has not held for `keep_firing_for`, resolves; a pending one goes.
    pub fn take(&mut self, rule: &Rule, reading: Reading, now_ms: i64) -> Vec<Transition> {
        match reading {
            Reading::Observed(observations) => {
                self.resume(rule, now_ms);
                self.apply(rule, observations, now_ms)
            }
            Reading::NoData(why) => {
                for alert in self.alerts.values_mut() {
                    if alert.rule == rule.name && alert.state != State::Resolved {
                        if alert.no_data_since_ms == 0 {
                            alert.no_data_since_ms = now_ms;
                        }
                        alert.no_data_reason.clone_from(&why);
                        // A new gap: its own grace starts when data returns.
                        alert.data_back_at_ms = 0;
                        alert.data_back_grace_until_ms = 0;
                    }
                }
                Vec::new()
            }
        }
    }

    /// Data about `rule` again at `now_ms`: its alerts' clocks move on by the time without
    /// data, so that they count only time with data, and the grace of those it kept through
    /// the gap starts (see [`data_back_grace`]); a grace that has run out ends.
    fn resume(&mut self, rule: &Rule, now_ms: i64) {
        let grace_ms = data_back_grace(rule).as_millis() as i64;
        for alert in self.alerts.values_mut() {
            if alert.rule != rule.name {
                continue;
            }
            if alert.data_back_grace_until_ms != 0 && now_ms >= alert.data_back_grace_until_ms {
                alert.data_back_at_ms = 0;
                alert.data_back_grace_until_ms = 0;
            }
            if alert.no_data_since_ms == 0 {
                continue;
            }
            if grace_ms > 0 && alert.state != State::Resolved {
                alert.data_back_at_ms = now_ms;
                alert.data_back_grace_until_ms = now_ms + grace_ms;
            }
            let gap = (now_ms - alert.no_data_since_ms).max(0);
            match alert.state {
                State::Pending => alert.active_since_ms += gap,
                State::Firing => alert.last_held_ms += gap,
                State::Resolved => {}
            }
            alert.no_data_since_ms = 0;
            alert.no_data_reason.clear();
        }
    }

    /// Names of the rules that have a pending or firing alert.
    pub fn active_rules(&self) -> std::collections::HashSet<String> {
        self.alerts
            .values()
            .filter(|a| a.state != State::Resolved)
            .map(|a| a.rule.clone())
            .collect()
    }

    /// Applies a rule's observations at `now_ms`; returns what fired and what resolved.
    pub fn apply(
        &mut self,
        rule: &Rule,
        observations: Vec<Observation>,
        now_ms: i64,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let for_ms = rule.for_duration().as_millis() as i64;
        for obs in observations {
            let mut labels = obs.labels.clone();
            for (k, v) in &rule.labels {
                labels.insert(k.clone(), crate::labels::render(v, &obs.labels, obs.value));
            }
            labels.insert("alertname".into(), rule.name.clone());
            let fp = fingerprint(&labels);
            if !obs.holds {
                continue;
            }
            seen.insert(fp.clone());
            let annotations = rule
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), crate::labels::render(v, &labels, obs.value)))
                .collect();
            let alert = self.alerts.entry(fp.clone()).or_insert_with(|| Alert {
                rule: rule.name.clone(),
                labels: labels.clone(),
                annotations: BTreeMap::new(),
                state: State::Pending,
                value: obs.value,
                active_since_ms: now_ms,
                fired_at_ms: 0,
                resolved_at_ms: 0,
                last_held_ms: now_ms,
                fingerprint: fp.clone(),
                no_data_since_ms: 0,
                no_data_reason: String::new(),
                data_back_at_ms: 0,
                data_back_grace_until_ms: 0,
            });
            if alert.state == State::Resolved {
                // It holds again: a new episode.
                alert.state = State::Pending;
                alert.active_since_ms = now_ms;
                alert.fired_at_ms = 0;
                alert.resolved_at_ms = 0;
            }
            alert.value = obs.value;
            alert.annotations = annotations;
            alert.last_held_ms = now_ms;
            if alert.state == State::Pending && now_ms - alert.active_since_ms >= for_ms {
                alert.state = State::Firing;
                alert.fired_at_ms = now_ms;
                transitions.push(Transition::Fired(alert.clone()));
            }
        }
        let keep_ms = rule.keep_firing_duration().as_millis() as i64;
        self.alerts.retain(|fp, alert| {
            if alert.rule != rule.name || seen.contains(fp) {
                return true;
            }
            if alert.state != State::Resolved && now_ms < alert.data_back_grace_until_ms {
                // Kept through a gap, and the window may still read it: no verdict yet.
                return true;
            }
            match alert.state {
                // Stopped holding before it fired: forgotten.
                State::Pending => false,
                State::Firing if now_ms - alert.last_held_ms >= keep_ms => {
                    alert.state = State::Resolved;
                    alert.resolved_at_ms = now_ms;
                    transitions.push(Transition::Resolved(alert.clone()));
                    true
                }
                State::Firing => true,
                State::Resolved => now_ms - alert.resolved_at_ms < KEEP_RESOLVED_MS,
            }
        });
        transitions
    }

    /// Forgets the alerts of rules no longer in force, resolving those that fired.
    pub fn retain_rules(
        &mut self,
        names: &std::collections::HashSet<String>,
        now_ms: i64,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        self.alerts.retain(|_, alert| {
            if names.contains(&alert.rule) {
                return true;
            }
            if alert.state == State::Firing {
                alert.state = State::Resolved;
                alert.resolved_at_ms = now_ms;
                transitions.push(Transition::Resolved(alert.clone()));
            }
            false
        });
        transitions
    }

    /// Whether any alert is pending or firing.
    pub fn any_active(&self) -> bool {
        self.alerts.values().any(|a| a.state != State::Resolved)
    }

    /// Every alert (pending, firing and recently resolved), for a snapshot of the state.
    pub fn snapshot(&self) -> Vec<Alert> {
        self.alerts.values().cloned().collect()
    }

    /// Takes the alerts of a snapshot (a previous run's, or another replica's) in place of
    /// these: pending alerts keep counting their `for` from when they started to hold.
    pub fn restore(&mut self, alerts: Vec<Alert>) {
        self.alerts = alerts
            .into_iter()
            .map(|a| (a.fingerprint.clone(), a))
            .collect();
    }

    /// A digest of what a snapshot must keep: each alert's identity, state and timers (not its
    /// value, which changes every evaluation).
    pub fn timers_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut keys: Vec<_> = self
            .alerts
            .values()
            .map(|a| {
                (
                    &a.fingerprint,
                    a.state as u8,
                    a.active_since_ms,
                    a.fired_at_ms,
                    a.resolved_at_ms,
                    a.no_data_since_ms,
                    a.data_back_grace_until_ms,
                )
            })
            .collect();
        keys.sort_unstable();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        keys.hash(&mut hasher);
        hasher.finish()
    }

    /// Every alert, sorted by rule and labels.
    pub fn list(&self, include_resolved: bool) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self
            .alerts
            .values()
            .filter(|a| include_resolved || a.state != State::Resolved)
            .cloned()
            .collect();
        alerts.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
        alerts
    }

    /// Whether any alert of the incident group `group_key` is pending or firing.
    pub fn group_active(&self, group_by: &[String], group_key: &str) -> bool {
        self.alerts
            .values()
            .any(|a| a.state != State::Resolved && group_key_of(group_by, &a.labels).0 == group_key)
    }

    /// Whether any alert of the incident group `group_key` is firing.
    pub fn group_firing(&self, group_by: &[String], group_key: &str) -> bool {
        self.alerts
            .values()
            .any(|a| a.state == State::Firing && group_key_of(group_by, &a.labels).0 == group_key)
    }
}

/// The incident group of an alert: its key (`name=value,…` of the group_by labels) and labels.
pub fn group_key_of(group_by: &[String], labels: &LabelSet) -> (String, LabelSet) {
    let group: LabelSet = group_by
        .iter()
        .filter_map(|name| labels.get(name).map(|v| (name.clone(), v.clone())))
        .collect();
    let key = group
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    (key, group)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_compared_with_the_most_labelled_one() {
        let v = |version, labelled, auc| pb::VersionQuality {
            model: "m".into(),
            version,
            labelled,
            auc,
            accuracy: f64::NAN,
            ..Default::default()
        };
        let found = compare_versions(
            &[
                v(1, 500, 0.5),
                v(2, 120, 0.9),
                v(3, 10, 0.1),
                v(4, 300, f64::NAN),
            ],
            rules::QualityMeasure::Auc,
            100,
        );
        // Version 3 has too few labels, version 4 no AUC: only 2 is compared, with 1.
        assert_eq!(found.len(), 1, "{found:?}");
        let (labels, value) = &found[0];
        assert_eq!(labels["model_version"], "2");
        assert_eq!(labels["baseline_version"], "1");
        assert!((value - 0.4).abs() < 1e-12);
        assert!(compare_versions(&[v(1, 500, 0.5)], rules::QualityMeasure::Auc, 100).is_empty());
    }

    #[test]
    fn ranking_versions_are_compared_by_ndcg_over_their_rankings() {
        // An embedding model's versions have rankings, not labels.
        let v = |version, ndcg_rankings, ndcg_at_k| pb::VersionQuality {
            model: "minilm-l6".into(),
            version,
            rankings: ndcg_rankings * 2,
            ndcg_rankings,
            ndcg_at_k,
            ctr: 0.25,
            auc: f64::NAN,
            accuracy: f64::NAN,
            ..Default::default()
        };
        let found = compare_versions(
            &[v(1, 900, 0.80), v(2, 250, 0.77), v(3, 20, 0.1)],
            rules::QualityMeasure::Ndcg,
            200,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        let (labels, value) = &found[0];
        assert_eq!(labels["model_version"], "2");
        assert_eq!(labels["baseline_version"], "1");
        assert!((value + 0.03).abs() < 1e-9, "{value}");
        let ctr = compare_versions(
            &[v(1, 900, 0.8), v(2, 250, 0.7)],
            rules::QualityMeasure::Ctr,
            400,
        );
        assert_eq!(
            ctr.len(),
            1,
            "CTR counts rankings (500 for version 2): {ctr:?}"
        );
        assert_eq!(ctr[0].1, 0.0);
    }

    use super::*;
    use crate::rules::{Op, Span};
    use std::time::Duration;

    fn rule(for_s: u64, keep_s: u64) -> Rule {
        Rule {
            name: "HighErrors".into(),
            kind: RuleKind::Threshold {
                query: None,
                ratio: None,
                op: Op::Above,
                threshold: 1.0,
            },
            group_by: vec!["model".into()],
            for_: Some(Span(Duration::from_secs(for_s))),
            keep_firing_for: Some(Span(Duration::from_secs(keep_s))),
            labels: BTreeMap::from([("severity".into(), "critical".into())]),
            annotations: BTreeMap::from([(
                "summary".into(),
                "{{ $labels.model }} at {{ $value }}".into(),
            )]),
            actions: vec![],
            file: "r.yaml".into(),
        }
    }

    fn obs(model: &str, value: f64) -> Observation {
        Observation {
            labels: BTreeMap::from([("model".into(), model.into())]),
            value,
            holds: value > 1.0,
        }
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_after_keep_firing_for() {
        let rule = rule(10, 5);
        let mut alerts = Alerts::default();
        assert!(alerts.apply(&rule, vec![obs("a", 2.0)], 0).is_empty());
        assert_eq!(alerts.list(false)[0].state, State::Pending);
        assert!(alerts.apply(&rule, vec![obs("a", 2.0)], 9_000).is_empty());
        let fired = alerts.apply(&rule, vec![obs("a", 3.0)], 10_000);
        let [Transition::Fired(alert)] = fired.as_slice() else {
            panic!("{fired:?}")
        };
        assert_eq!(alert.annotations["summary"], "a at 3");
        assert_eq!(alert.labels["alertname"], "HighErrors");
        assert_eq!(alert.severity(), "critical");
        // Stops holding: still firing within keep_firing_for, resolved after.
        assert!(alerts.apply(&rule, vec![obs("a", 0.5)], 12_000).is_empty());
        assert!(alerts.apply(&rule, vec![], 14_000).is_empty());
        let resolved = alerts.apply(&rule, vec![], 15_000);
        assert!(matches!(resolved.as_slice(), [Transition::Resolved(_)]));
        assert!(alerts.list(false).is_empty());
        assert_eq!(alerts.list(true).len(), 1);
        // A blip shorter than `for` never fires.
        alerts.apply(&rule, vec![obs("b", 5.0)], 20_000);
        assert!(alerts.apply(&rule, vec![], 21_000).is_empty());
        assert_eq!(alerts.list(false).len(), 0);
    }

    const NO_ANSWER: &str = "Unavailable: tcp connect error: Connection refused";

    #[test]
    fn a_firing_alert_keeps_firing_without_data_and_says_since_when() {
        let rule = rule(0, 0);
        let mut alerts = Alerts::default();
        let fired = alerts.take(&rule, Reading::Observed(vec![obs("a", 2.0)]), 1_000);
        assert!(
            matches!(fired.as_slice(), [Transition::Fired(_)]),
            "{fired:?}"
        );
        // The collector restarts: a minute without an answer. Nothing resolves, nothing fires.
        for at in (2_000..=61_000).step_by(1_000) {
            let changed = alerts.take(&rule, Reading::NoData(NO_ANSWER.into()), at);
            assert!(changed.is_empty(), "at {at} ms without data: {changed:?}");
        }
        let [alert] = alerts.list(false).try_into().expect("one alert");
        assert_eq!(alert.state, State::Firing);
        assert_eq!(
            alert.no_data_since_ms, 2_000,
            "since the first evaluation without data"
        );
        assert_eq!(
            alert.state_text(),
            format!("firing; no data since 1970-01-01T00:00:02.000Z ({NO_ANSWER})")
        );
        // The collector answers again and the breach goes on: no second firing, and the alert
        // says it has data again.
        let back = alerts.take(&rule, Reading::Observed(vec![obs("a", 3.0)]), 62_000);
        assert!(back.is_empty(), "{back:?}");
        let [alert] = alerts.list(false).try_into().expect("one alert");
        assert_eq!((alert.state, alert.fired_at_ms), (State::Firing, 1_000));
        assert_eq!(
            (alert.no_data_since_ms, alert.state_text().as_str()),
            (0, "firing")
        );
    }

    #[test]
    fn a_pending_alert_does_not_count_its_for_through_missing_data() {
        let rule = rule(10, 0);
        let mut alerts = Alerts::default();
        assert!(
            alerts
                .take(&rule, Reading::Observed(vec![obs("a", 2.0)]), 0)
                .is_empty()
        );
        assert!(
            alerts
                .take(&rule, Reading::Observed(vec![obs("a", 2.0)]), 5_000)
                .is_empty()
        );
        // No data from 6 s to 60 s: the pending alert is neither forgotten nor fired.
        for at in [6_000, 30_000, 60_000] {
            assert!(
                alerts
                    .take(&rule, Reading::NoData(NO_ANSWER.into()), at)
                    .is_empty()
            );
            assert_eq!(alerts.list(false)[0].state, State::Pending, "at {at} ms");
        }
        // Data again at 61 s, still holding: 6 s of its 10 s `for` were seen, so it fires 4 s
        // later, not at once on the strength of the 55 s nobody saw.
        for at in [61_000, 64_000] {
            let changed = alerts.take(&rule, Reading::Observed(vec![obs("a", 2.0)]), at);
            assert!(
                changed.is_empty(),
                "fired at {at} ms on missing data: {changed:?}"
            );
            assert_eq!(alerts.list(false)[0].state, State::Pending);
        }
        let fired = alerts.take(&rule, Reading::Observed(vec![obs("a", 2.0)]), 65_000);
        assert!(
            matches!(fired.as_slice(), [Transition::Fired(_)]),
            "{fired:?}"
        );
    }

    #[test]
    fn keep_firing_for_does_not_run_out_while_the_collector_is_away() {
        let rule = rule(0, 5);
        let mut alerts = Alerts::default();
        alerts.take(&rule, Reading::Observed(vec![obs("a", 2.0)]), 0);
        for at in (1_000..=100_000).step_by(1_000) {
            assert!(
                alerts
                    .take(&rule, Reading::NoData(NO_ANSWER.into()), at)
                    .is_empty()
            );
        }
        // Back, and the condition no longer holds: `keep_firing_for` (5 s) starts counting
        // from the data, as it would have without the gap.
        for at in [101_000, 104_000] {
            let changed = alerts.take(&rule, Reading::Observed(vec![obs("a", 0.5)]), at);
            assert!(changed.is_empty(), "resolved at {at} ms: {changed:?}");
        }
        let resolved = alerts.take(&rule, Reading::Observed(vec![obs("a", 0.5)]), 105_000);
        assert!(
            matches!(resolved.as_slice(), [Transition::Resolved(_)]),
            "{resolved:?}"
        );
    }

    /// `rule(for_s, keep_s)` reading a gauge's minimum over `window_s` seconds.
    fn windowed(for_s: u64, keep_s: u64, window_s: u64) -> Rule {
        let mut rule = rule(for_s, keep_s);
        rule.kind = RuleKind::Threshold {
            query: Some(QuerySpec {
                metric: "inference.queue.depth".into(),
                matchers: BTreeMap::new(),
                function: Function::Min,
                window: Span(Duration::from_secs(window_s)),
                quantile: None,
            }),
            ratio: None,
            op: Op::Above,
            threshold: 1.0,
        };
        rule
    }

    /// A firing alert of `rule`, then no data from 2 s to 10 s.
    fn fired_then_away(rule: &Rule) -> Alerts {
        let mut alerts = Alerts::default();
        let fired = alerts.take(rule, Reading::Observed(vec![obs("a", 2.0)]), 1_000);
        assert!(
            matches!(fired.as_slice(), [Transition::Fired(_)]),
            "{fired:?}"
        );
        for at in (2_000..=10_000).step_by(1_000) {
            assert!(
                alerts
                    .take(rule, Reading::NoData(NO_ANSWER.into()), at)
                    .is_empty()
            );
        }
        alerts
    }

    #[test]
    fn a_group_missing_right_after_data_returns_resolves_only_after_a_full_window() {
        // The collector came back at 11 s with its data, but the rule's 10 s window is empty
        // (its points are older, the senders have not exported yet): the answer has no group.
        let rule = windowed(0, 0, 10);
        let mut alerts = fired_then_away(&rule);
        for at in [11_000, 15_000, 20_999] {
            let changed = alerts.take(&rule, Reading::Observed(vec![]), at);
            assert!(
                changed.is_empty(),
                "resolved at {at} ms, within a window of the data's return: {changed:?}"
            );
            let [alert] = alerts.list(false).try_into().expect("one alert");
            assert_eq!((alert.state, alert.fired_at_ms), (State::Firing, 1_000));
            assert_eq!(
                alert.state_text(),
                "firing; data back since 1970-01-01T00:00:11.000Z, resolving waits for a full \
                 window until 1970-01-01T00:00:21.000Z"
            );
        }
        // A full window of data since 11 s and the group is still missing: it left.
        let resolved = alerts.take(&rule, Reading::Observed(vec![]), 21_000);
        assert!(
            matches!(resolved.as_slice(), [Transition::Resolved(_)]),
            "{resolved:?}"
        );
    }

    #[test]
    fn a_condition_read_false_right_after_data_returns_resolves_only_after_a_full_window() {
        // A window that covers the gap reads low for a while after the return.
        let rule = windowed(0, 0, 10);
        let mut alerts = fired_then_away(&rule);
        for at in [11_000, 20_999] {
            let changed = alerts.take(&rule, Reading::Observed(vec![obs("a", 0.5)]), at);
            assert!(changed.is_empty(), "resolved at {at} ms: {changed:?}");
            assert_eq!(alerts.list(false)[0].state, State::Firing, "at {at} ms");
        }
        let resolved = alerts.take(&rule, Reading::Observed(vec![obs("a", 0.5)]), 21_000);
        assert!(
            matches!(resolved.as_slice(), [Transition::Resolved(_)]),
            "{resolved:?}"
        );
    }

    #[test]
    fn within_the_grace_evaluation_goes_on_except_resolving_what_the_gap_kept() {
        let rule = windowed(5, 0, 10);
        let mut alerts = Alerts::default();
        // `a` fired before the gap; `b` was pending (3 s of its 5 s `for`).
        alerts.take(&rule, Reading::Observed(vec![obs("a", 2.0)]), 0);
        alerts.take(
            &rule,
            Reading::Observed(vec![obs("a", 2.0), obs("b", 2.0)]),
            5_000,
        );
        alerts.take(
            &rule,
            Reading::Observed(vec![obs("a", 2.0), obs("b", 2.0)]),
            8_000,
        );
        assert!(
            alerts
                .take(&rule, Reading::NoData(NO_ANSWER.into()), 9_000)
                .is_empty()
        );
        // Back at 20 s: `a` holds (its value updates, no second firing), `b` reads low (kept
        // pending, not forgotten), `c` is new and goes pending as usual.
        let back = alerts.take(
            &rule,
            Reading::Observed(vec![obs("a", 7.0), obs("b", 0.5), obs("c", 2.0)]),
            20_000,
        );
        assert!(back.is_empty(), "{back:?}");
        let state = |alerts: &Alerts, model: &str| {
            alerts
                .list(false)
                .into_iter()
                .find(|a| a.labels["model"] == model)
                .map(|a| (a.state, a.value))
        };
        assert_eq!(state(&alerts, "a"), Some((State::Firing, 7.0)));
        assert_eq!(state(&alerts, "b"), Some((State::Pending, 2.0)));
        assert_eq!(state(&alerts, "c"), Some((State::Pending, 2.0)));
        // `c` stops holding within the grace: it was not kept through the gap, so it goes.
        alerts.take(
            &rule,
            Reading::Observed(vec![obs("a", 7.0), obs("b", 0.5)]),
            22_000,
        );
        assert_eq!(state(&alerts, "c"), None);
        // `b` holds again: the low read within the grace was no verdict, so its `for` ran on
        // (3 s before the gap, 3 s since the return): it fires.
        let fired = alerts.take(
            &rule,
            Reading::Observed(vec![obs("a", 7.0), obs("b", 2.0)]),
            23_000,
        );
        assert!(
            matches!(fired.as_slice(), [Transition::Fired(f)] if f.labels["model"] == "b"),
            "{fired:?}"
        );
        // After the grace (30 s), a group gone resolves at once.
        let resolved = alerts.take(&rule, Reading::Observed(vec![obs("a", 7.0)]), 30_000);
        assert!(
            matches!(resolved.as_slice(), [Transition::Resolved(r)] if r.labels["model"] == "b"),
            "{resolved:?}"
        );
        let [alert] = alerts.list(false).try_into().expect("one alert");
        assert_eq!(alert.state_text(), "firing");
    }

    #[test]
    fn the_grace_is_the_rules_longest_window_at_most_ten_minutes() {
        assert_eq!(
            data_back_grace(&windowed(0, 0, 120)),
            Duration::from_secs(120)
        );
        assert_eq!(
            data_back_grace(&windowed(0, 0, 3600)),
            Duration::from_secs(600)
        );
        let mut canary = rule(0, 0);
        canary.kind = RuleKind::CanaryQuality {
            model: "m".into(),
            measure: rules::QualityMeasure::Auc,
            min_samples: 10,
            window: Span(Duration::from_secs(300)),
            op: Op::Below,
            threshold: -0.05,
        };
        assert_eq!(data_back_grace(&canary), Duration::ZERO);
        // Without a grace, an alert whose group is missing when data returns resolves at once.
        let mut alerts = fired_then_away(&canary);
        let resolved = alerts.take(&canary, Reading::Observed(vec![]), 11_000);
        assert!(
            matches!(resolved.as_slice(), [Transition::Resolved(_)]),
            "{resolved:?}"
        );
    }

    #[test]
    fn the_grace_is_saved_with_the_state() {
        let rule = windowed(0, 0, 10);
        let mut alerts = fired_then_away(&rule);
        alerts.take(&rule, Reading::Observed(vec![]), 11_000);
        // Another replica takes over from the saved state, within the grace.
        let saved = serde_json::to_value(alerts.snapshot()).unwrap();
        let mut next = Alerts::default();
        next.restore(serde_json::from_value(saved).unwrap());
        assert!(
            next.take(&rule, Reading::Observed(vec![]), 12_000)
                .is_empty()
        );
        assert_eq!(next.list(false)[0].data_back_grace_until_ms, 21_000);
        assert_eq!(
            next.take(&rule, Reading::Observed(vec![]), 21_000).len(),
            1,
            "resolved after the grace"
        );
    }

    #[test]
    fn no_data_touches_only_its_rules_alerts() {
        let (first, mut second) = (rule(0, 0), rule(0, 0));
        second.name = "Other".into();
        let mut alerts = Alerts::default();
        alerts.take(&first, Reading::Observed(vec![obs("a", 2.0)]), 0);
        alerts.take(&second, Reading::Observed(vec![obs("a", 2.0)]), 0);
        alerts.take(&first, Reading::NoData(NO_ANSWER.into()), 1_000);
        let listed = alerts.list(false);
        let since = |name: &str| {
            listed
                .iter()
                .find(|a| a.rule == name)
                .map(|a| a.no_data_since_ms)
        };
        assert_eq!(
            (since("HighErrors"), since("Other")),
            (Some(1_000), Some(0))
        );
        assert_eq!(
            alerts.active_rules(),
            ["HighErrors".to_owned(), "Other".to_owned()].into()
        );
    }

    #[test]
    fn groups_and_fingerprints() {
        let mut labels = BTreeMap::from([
            ("alertname".to_owned(), "X".to_owned()),
            ("model".to_owned(), "m".to_owned()),
            ("replica".to_owned(), "r1".to_owned()),
        ]);
        let (key, group) = group_key_of(&["alertname".into(), "model".into()], &labels);
        assert_eq!(key, "alertname=X,model=m");
        assert_eq!(group.len(), 2);
        let a = fingerprint(&labels);
        labels.insert("replica".into(), "r2".into());
        assert_ne!(a, fingerprint(&labels));
        assert_eq!(a.len(), 16);
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(300)), "5m");
    }
}

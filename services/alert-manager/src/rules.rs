//! Alert rules, read from YAML files and checked on load: a rules file that does not parse or
//! does not make sense is refused whole, with the file, the rule and the field named, and the
//! rules in force stay as they were.
//!
//! ```yaml
//! group_by: [alertname, model]         # alerts of one group share an incident
//! rules:
//!   - name: GatewayErrorRate
//!     kind: threshold                  # a query (or a ratio of two) against a threshold
//!     ratio:
//!       numerator:   {metric: gateway.requests, function: rate, window: 1m,
//!                     matchers: {status: "!=OK"}}
//!       denominator: {metric: gateway.requests, function: rate, window: 1m}
//!     group_by: [model]
//!     op: ">"
//!     threshold: 0.05
//!     for: 10s
//!     keep_firing_for: 30s
//!     labels: {severity: critical}
//!     annotations: {summary: "{{ $labels.model }} fails {{ $value }} of its calls"}
//!   - name: CheckoutAvailability
//!     kind: burn_rate                  # SRE-workbook multi-window, multi-burn-rate alerts
//!     objective: 0.999
//!     good:  {metric: gateway.requests, matchers: {status: OK}}
//!     total: {metric: gateway.requests}
//!   - name: ScoreDrift
//!     kind: drift                      # PSI / KS against a baseline
//!     metric: gateway.prediction.score
//!     window: 10m
//!     baseline: {snapshot: launch}     # or {offset: 1h}
//!     psi_above: 0.25
//!   - name: CanaryWorse
//!     kind: canary_quality             # online quality of each version vs the most-served
//!     model: purchase-intent
//!     measure: auc                     # or accuracy; ndcg or ctr for a ranking model (from
//!                                      # the collector's prediction-feedback join)
//!     min_samples: 200                 # labelled predictions (rankings) per version first
//!     window: 30m
//!     op: "<"                          # version − baseline below −0.05: worse
//!     threshold: -0.05
//!     actions:                         # set_canary_weight / promote_canary / reload_model /
//!       - {kind: set_canary_weight, model: "{{ $labels.model }}",   # unload_model / webhook
//!          version: "{{ $labels.model_version }}", weight: 0}
//! ```
//!
//! Matcher values: `value` (equal), `!=value`, `=~regex`, `!~regex`. Durations: `500ms`,
//! `10s`, `5m`, `1h`, `3d`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::monitoring::metrics::v1::VersionQuality;
use serde::Deserialize;

/// The longest window the collector answers (its 1 h tier keeps 7 days).
const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// Why rules could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(pub String);

/// A duration as written in a rules file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a duration as `humantime` writes them: `500ms`, `10s`, `5m`, `1h`, `3d`, or a sum
/// such as `1h 30m`. Whole numbers only (`90m`, not `1.5h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!(
            "duration '{}': {err} (write e.g. 500ms, 10s, 5m, 1h or 3d)",
            text.trim()
        )
    })
}

/// What a query computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// Per-second increase.
    Rate,
    /// Increase.
    Increase,
    /// Histogram quantile.
    Quantile,
    /// Gauge time-average.
    Avg,
    /// Gauge maximum.
    Max,
    /// Gauge minimum.
    Min,
    /// Latest value.
    Last,
}

/// A query of the collector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Metric name (OTLP or Prometheus spelling).
    pub metric: String,
    /// Label conditions: `value`, `!=value`, `=~regex`, `!~regex`.
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// What to compute (rate by default).
    #[serde(default = "default_function")]
    pub function: Function,
    /// Window (1m by default).
    #[serde(default = "default_window")]
    pub window: Span,
    /// For `quantile`: which one, in [0, 1].
    #[serde(default)]
    pub quantile: Option<f64>,
}

fn default_function() -> Function {
    Function::Rate
}

fn default_window() -> Span {
    Span(Duration::from_secs(60))
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Op {
    /// Greater than.
    #[serde(rename = ">")]
    Above,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    AtLeast,
    /// Less than.
    #[serde(rename = "<")]
    Below,
    /// Less than or equal.
    #[serde(rename = "<=")]
    AtMost,
}

impl Op {
    /// Whether `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Above => value > threshold,
            Op::AtLeast => value >= threshold,
            Op::Below => value < threshold,
            Op::AtMost => value <= threshold,
        }
    }
}

/// Numerator over denominator, matched by group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatioSpec {
    /// E.g. the rate of failed calls.
    pub numerator: QuerySpec,
    /// E.g. the rate of all calls.
    pub denominator: QuerySpec,
}

/// One long/short window pair of a burn-rate rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurnWindow {
    /// The long window (e.g. 1h).
    pub long: Span,
    /// The short window (e.g. 5m).
    pub short: Span,
    /// Burn-rate factor both windows must exceed (e.g. 14.4).
    pub factor: f64,
    /// Severity of the alert of this pair.
    pub severity: String,
}

/// The SRE workbook's pairs: 14.4× over 1h and 5m, 6× over 6h and 30m (page), 1× over 3d and
/// 6h (ticket).
pub fn workbook_windows() -> Vec<BurnWindow> {
    let h = |n: u64| Span(Duration::from_secs(n * 3600));
    let m = |n: u64| Span(Duration::from_secs(n * 60));
    vec![
        BurnWindow {
            long: h(1),
            short: m(5),
            factor: 14.4,
            severity: "critical".into(),
        },
        BurnWindow {
            long: h(6),
            short: m(30),
            factor: 6.0,
            severity: "critical".into(),
        },
        BurnWindow {
            long: h(72),
            short: h(6),
            factor: 1.0,
            severity: "warning".into(),
        },
    ]
}

/// A drift baseline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum BaselineSpec {
    /// A snapshot pinned in the collector.
    Snapshot(String),
    /// The same window this long before.
    Offset(Span),
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// A query (or a ratio) against a threshold.
    Threshold {
        /// The query, or…
        query: Option<QuerySpec>,
        /// …a ratio of two.
        ratio: Option<RatioSpec>,
        /// Comparison.
        op: Op,
        /// Threshold.
        threshold: f64,
    },
    /// Error-budget burn rate of an objective, over multi-window pairs.
    BurnRate {
        /// The objective, e.g. 0.999.
        objective: f64,
        /// Good events (a counter).
        good: QuerySpec,
        /// All events (a counter).
        total: QuerySpec,
        /// Window pairs; the SRE workbook's by default.
        windows: Vec<BurnWindow>,
    },
    /// Drift of a histogram against a baseline.
    Drift {
        /// A histogram metric.
        metric: String,
        /// Label conditions.
        matchers: BTreeMap<String, String>,
        /// The compared window.
        window: Span,
        /// The baseline.
        baseline: BaselineSpec,
        /// Fires when the PSI is above this…
        psi_above: Option<f64>,
        /// …or the KS p-value below this.
        ks_p_below: Option<f64>,
    },
    /// Online quality of each version of a model against its most-served version, from the
    /// collector's prediction–feedback join: the value is `measure(version) −
    /// measure(baseline)`, compared with the threshold (e.g. `<` −0.05: the canary is worse).
    CanaryQuality {
        /// The model.
        model: String,
        /// What is compared.
        measure: QualityMeasure,
        /// Labelled predictions each version needs before it is compared.
        min_samples: u64,
        /// Predictions of this long ago or less.
        window: Span,
        /// Comparison.
        op: Op,
        /// Threshold of the difference.
        threshold: f64,
    },
}

/// A quality measure of the collector's join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityMeasure {
    /// Area under the ROC curve.
    Auc,
    /// Share of labelled predictions on the right side of 0.5.
    Accuracy,
    /// Mean NDCG@k of a ranking model's rankings (clicks, add-to-carts and purchases as gains).
    Ndcg,
    /// Share of a ranking model's rankings with at least one click.
    Ctr,
}

impl QualityMeasure {
    /// The measure of one version.
    pub fn of(self, v: &VersionQuality) -> f64 {
        match self {
            QualityMeasure::Auc => v.auc,
            QualityMeasure::Accuracy => v.accuracy,
            QualityMeasure::Ndcg => v.ndcg_at_k,
            QualityMeasure::Ctr => v.ctr,
        }
    }

    /// How many samples the measure of one version stands on: labelled predictions for a
    /// classifier's, rankings (with a relevant item, for NDCG) for a ranking model's.
    pub fn samples(self, v: &VersionQuality) -> u64 {
        match self {
            QualityMeasure::Auc | QualityMeasure::Accuracy => v.labelled,
            QualityMeasure::Ndcg => v.ndcg_rankings,
            QualityMeasure::Ctr => v.rankings,
        }
    }
}

/// A rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name; the alerts' `alertname` label.
    pub name: String,
    /// What it watches.
    pub kind: RuleKind,
    /// Labels of the query's groups that the alerts keep.
    pub group_by: Vec<String>,
    /// How long the condition must hold before the alert fires.
    pub for_: Option<Span>,
    /// How long a firing alert stays firing after the condition stops.
    pub keep_firing_for: Option<Span>,
    /// Labels added to the alerts (templated).
    pub labels: BTreeMap<String, String>,
    /// Annotations (templated: `{{ $labels.x }}`, `{{ $value }}`).
    pub annotations: BTreeMap<String, String>,
    /// Remediation actions run when the rule's alert opens an incident.
    pub actions: Vec<crate::alert::ActionSpec>,
    /// The file the rule came from.
    pub file: PathBuf,
}

/// The kinds of rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindName {
    Threshold,
    BurnRate,
    Drift,
    CanaryQuality,
}

/// A rule as written: every field of every kind, checked against its kind on conversion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    kind: KindName,
    query: Option<QuerySpec>,
    ratio: Option<RatioSpec>,
    op: Option<Op>,
    threshold: Option<f64>,
    objective: Option<f64>,
    good: Option<QuerySpec>,
    total: Option<QuerySpec>,
    windows: Option<Vec<BurnWindow>>,
    metric: Option<String>,
    #[serde(default)]
    matchers: BTreeMap<String, String>,
    window: Option<Span>,
    baseline: Option<BaselineSpec>,
    psi_above: Option<f64>,
    ks_p_below: Option<f64>,
    model: Option<String>,
    measure: Option<QualityMeasure>,
    min_samples: Option<u64>,
    #[serde(default)]
    group_by: Vec<String>,
    #[serde(rename = "for")]
    for_: Option<Span>,
    keep_firing_for: Option<Span>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    actions: Vec<crate::alert::ActionSpec>,
}

impl RawRule {
    /// The rule, or which field is missing or does not belong to its kind.
    fn into_rule(self, file: &Path) -> Result<Rule, String> {
        let at = format!("rule '{}'", self.name);
        let need = |what: &str| format!("{at}: a {:?} rule needs '{what}'", self.kind);
        let foreign = |present: bool, what: &str| {
            if present {
                Err(format!(
                    "{at}: '{what}' does not belong to a {:?} rule",
                    self.kind
                ))
            } else {
                Ok(())
            }
        };
        if self.kind != KindName::CanaryQuality {
            foreign(
                self.model.is_some() || self.measure.is_some() || self.min_samples.is_some(),
                "model/measure/min_samples",
            )?;
        }
        let kind = match self.kind {
            KindName::CanaryQuality => {
                foreign(
                    self.query.is_some()
                        || self.ratio.is_some()
                        || self.objective.is_some()
                        || self.good.is_some()
                        || self.total.is_some()
                        || self.windows.is_some()
                        || self.metric.is_some()
                        || self.baseline.is_some()
                        || self.psi_above.is_some()
                        || self.ks_p_below.is_some()
                        || !self.matchers.is_empty(),
                    "query/ratio/objective/good/total/windows/metric/baseline/psi_above/ks_p_below/matchers",
                )?;
                RuleKind::CanaryQuality {
                    model: self.model.ok_or_else(|| need("model"))?,
                    measure: self.measure.unwrap_or(QualityMeasure::Auc),
                    min_samples: self.min_samples.unwrap_or(200),
                    window: self.window.ok_or_else(|| need("window"))?,
                    op: self.op.ok_or_else(|| need("op"))?,
                    threshold: self.threshold.ok_or_else(|| need("threshold"))?,
                }
            }
            KindName::Threshold => {
                foreign(
                    self.objective.is_some()
                        || self.good.is_some()
                        || self.total.is_some()
                        || self.windows.is_some(),
                    "objective/good/total/windows",
                )?;
                foreign(
                    self.metric.is_some()
                        || self.window.is_some()
                        || self.baseline.is_some()
                        || self.psi_above.is_some()
                        || self.ks_p_below.is_some(),
                    "metric/window/baseline/psi_above/ks_p_below",
                )?;
                foreign(
                    !self.matchers.is_empty(),
                    "matchers (put them in the query)",
                )?;
                RuleKind::Threshold {
                    query: self.query,
                    ratio: self.ratio,
                    op: self.op.ok_or_else(|| need("op"))?,
                    threshold: self.threshold.ok_or_else(|| need("threshold"))?,
                }
            }
            KindName::BurnRate => {
                foreign(
                    self.query.is_some()
                        || self.ratio.is_some()
                        || self.op.is_some()
                        || self.threshold.is_some(),
                    "query/ratio/op/threshold",
                )?;
                foreign(
                    self.metric.is_some()
                        || self.window.is_some()
                        || self.baseline.is_some()
                        || self.psi_above.is_some()
                        || self.ks_p_below.is_some(),
                    "metric/window/baseline/psi_above/ks_p_below",
                )?;
                RuleKind::BurnRate {
                    objective: self.objective.ok_or_else(|| need("objective"))?,
                    good: self.good.ok_or_else(|| need("good"))?,
                    total: self.total.ok_or_else(|| need("total"))?,
                    windows: self.windows.unwrap_or_else(workbook_windows),
                }
            }
            KindName::Drift => {
                foreign(
                    self.query.is_some()
                        || self.ratio.is_some()
                        || self.op.is_some()
                        || self.threshold.is_some(),
                    "query/ratio/op/threshold",
                )?;
                foreign(
                    self.objective.is_some()
                        || self.good.is_some()
                        || self.total.is_some()
                        || self.windows.is_some(),
                    "objective/good/total/windows",
                )?;
                RuleKind::Drift {
                    metric: self.metric.ok_or_else(|| need("metric"))?,
                    matchers: self.matchers,
                    window: self.window.ok_or_else(|| need("window"))?,
                    baseline: self.baseline.ok_or_else(|| need("baseline"))?,
                    psi_above: self.psi_above,
                    ks_p_below: self.ks_p_below,
                }
            }
        };
        Ok(Rule {
            name: self.name,
            kind,
            group_by: self.group_by,
            for_: self.for_,
            keep_firing_for: self.keep_firing_for,
            labels: self.labels,
            annotations: self.annotations,
            actions: self.actions,
            file: file.to_owned(),
        })
    }
}

impl Rule {
    /// `for`, zero by default.
    pub fn for_duration(&self) -> Duration {
        self.for_.map_or(Duration::ZERO, |s| s.0)
    }

    /// `keep_firing_for`, zero by default.
    pub fn keep_firing_duration(&self) -> Duration {
        self.keep_firing_for.map_or(Duration::ZERO, |s| s.0)
    }

    /// The kind's name.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            RuleKind::Threshold { .. } => "threshold",
            RuleKind::BurnRate { .. } => "burn_rate",
            RuleKind::Drift { .. } => "drift",
            RuleKind::CanaryQuality { .. } => "canary_quality",
        }
    }
}

/// Timing of notifications per alert group (Alertmanager's meanings).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Wait before the first notification of a new group (to gather its alerts).
    #[serde(default = "zero")]
    pub group_wait: Span,
    /// Wait before notifying of changes to a group already notified.
    #[serde(default = "five_minutes")]
    pub group_interval: Span,
    /// Wait before repeating an unchanged notification.
    #[serde(default = "four_hours")]
    pub repeat_interval: Span,
}

fn zero() -> Span {
    Span(Duration::ZERO)
}

fn five_minutes() -> Span {
    Span(Duration::from_secs(300))
}

fn four_hours() -> Span {
    Span(Duration::from_secs(4 * 3600))
}

impl Default for Route {
    fn default() -> Route {
        Route {
            group_wait: zero(),
            group_interval: five_minutes(),
            repeat_interval: four_hours(),
        }
    }
}

/// Payload shape of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Alertmanager's webhook JSON, version 4.
    Alertmanager,
    /// PagerDuty Events API v2.
    Pagerduty,
}

/// A webhook that notifications are POSTed to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Name, on the timeline.
    pub name: String,
    /// `http://…` URL.
    pub url: String,
    /// Payload shape (Alertmanager v4 by default).
    #[serde(default = "alertmanager")]
    pub format: Format,
    /// PagerDuty's routing key (format pagerduty).
    #[serde(default)]
    pub routing_key: Option<String>,
}

fn alertmanager() -> Format {
    Format::Alertmanager
}

/// Mutes target alerts while a source alert fires with the same values of `equal`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    /// Matchers of the muting alert.
    pub source_matchers: BTreeMap<String, String>,
    /// Matchers of the muted alerts.
    pub target_matchers: BTreeMap<String, String>,
    /// Labels whose values must be equal in both.
    #[serde(default)]
    pub equal: Vec<String>,
}

/// One rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRulesFile {
    #[serde(default)]
    group_by: Option<Vec<String>>,
    #[serde(default)]
    route: Option<Route>,
    #[serde(default)]
    receivers: Vec<Receiver>,
    #[serde(default)]
    inhibit_rules: Vec<InhibitRule>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// One rules file, checked.
#[derive(Debug)]
struct RulesFile {
    group_by: Option<Vec<String>>,
    route: Option<Route>,
    receivers: Vec<Receiver>,
    inhibit_rules: Vec<InhibitRule>,
    rules: Vec<Rule>,
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Every rule.
    pub rules: Vec<Rule>,
    /// Labels that group alerts into one incident and one notification (`alertname` is the
    /// rule's name).
    pub group_by: Vec<String>,
    /// Notification timing.
    pub route: Route,
    /// Where notifications go.
    pub receivers: Vec<Receiver>,
    /// Inhibitions.
    pub inhibit_rules: Vec<InhibitRule>,
}

fn check_matchers(where_: &str, matchers: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in matchers {
        if let Some(re) = value
            .strip_prefix("=~")
            .or_else(|| value.strip_prefix("!~"))
        {
            regex::Regex::new(re)
                .map_err(|e| format!("{where_}: matcher '{name}': bad regular expression: {e}"))?;
        }
    }
    Ok(())
}

fn check_query(where_: &str, q: &QuerySpec) -> Result<(), String> {
    if q.metric.is_empty() {
        return Err(format!("{where_}: metric is empty"));
    }
    if q.function == Function::Quantile && !q.quantile.is_some_and(|v| (0.0..=1.0).contains(&v)) {
        return Err(format!(
            "{where_}: function quantile needs quantile: in [0, 1]"
        ));
    }
    if q.window.0.is_zero() && q.function != Function::Last {
        return Err(format!("{where_}: window is 0"));
    }
    if q.window.0 > Duration::from_secs(86_400) {
        return Err(format!(
            "{where_}: window is longer than the collector's 24 h"
        ));
    }
    check_matchers(where_, &q.matchers)
}

fn check_rule(rule: &Rule) -> Result<(), String> {
    let at = format!("rule '{}'", rule.name);
    if rule.name.is_empty() {
        return Err("a rule has no name".into());
    }
    match &rule.kind {
        RuleKind::Threshold {
            query,
            ratio,
            threshold,
            ..
        } => {
            match (query, ratio) {
                (Some(q), None) => check_query(&format!("{at}: query"), q)?,
                (None, Some(r)) => {
                    check_query(&format!("{at}: ratio.numerator"), &r.numerator)?;
                    check_query(&format!("{at}: ratio.denominator"), &r.denominator)?;
                }
                _ => return Err(format!("{at}: give exactly one of query and ratio")),
            }
            if !threshold.is_finite() {
                return Err(format!("{at}: threshold is not a finite number"));
            }
        }
        RuleKind::BurnRate {
            objective,
            good,
            total,
            windows,
        } => {
            if !(*objective > 0.0 && *objective < 1.0) {
                return Err(format!(
                    "{at}: objective {objective} must be between 0 and 1 (e.g. 0.999)"
                ));
            }
            check_matchers(&format!("{at}: good"), &good.matchers)?;
            check_matchers(&format!("{at}: total"), &total.matchers)?;
            if windows.is_empty() {
                return Err(format!("{at}: windows is empty"));
            }
            for w in windows {
                if w.short.0 >= w.long.0 || w.short.0.is_zero() {
                    return Err(format!(
                        "{at}: a window pair's short window must be shorter than its long one, and not 0"
                    ));
                }
                if w.long.0 > MAX_WINDOW {
                    return Err(format!(
                        "{at}: long window {:?} is beyond the collector's 7 days; shorten it",
                        w.long.0
                    ));
                }
            }
        }
        RuleKind::Drift {
            matchers,
            window,
            psi_above,
            ks_p_below,
            ..
        } => {
            check_matchers(&at, matchers)?;
            if psi_above.is_none() && ks_p_below.is_none() {
                return Err(format!("{at}: give psi_above, ks_p_below or both"));
            }
            if window.0.is_zero() {
                return Err(format!("{at}: window is 0"));
            }
        }
        RuleKind::CanaryQuality {
            model,
            min_samples,
            window,
            threshold,
            ..
        } => {
            if model.is_empty() {
                return Err(format!("{at}: model is empty"));
            }
            if *min_samples == 0 {
                return Err(format!("{at}: min_samples must be at least 1"));
            }
            if window.0.is_zero() {
                return Err(format!("{at}: window is 0"));
            }
            if !threshold.is_finite() {
                return Err(format!("{at}: threshold is not a finite number"));
            }
        }
    }
    Ok(())
}

/// The rules files named by `paths` (files, or folders whose `*.yaml`/`*.yml` files are read).
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RulesError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| RulesError(format!("{}: {e}", path.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Reads and checks every rules file; any error refuses them all.
pub fn load(paths: &[PathBuf]) -> Result<RuleSet, RulesError> {
    let mut set = RuleSet {
        group_by: vec!["alertname".into()],
        ..RuleSet::default()
    };
    let mut names = HashSet::new();
    for file in files(paths)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| RulesError(format!("{}: {e}", file.display())))?;
        let parsed = parse(&file, &text)?;
        if let Some(group_by) = parsed.group_by {
            set.group_by = group_by;
        }
        if let Some(route) = parsed.route {
            set.route = route;
        }
        set.receivers.extend(parsed.receivers);
        set.inhibit_rules.extend(parsed.inhibit_rules);
        for rule in parsed.rules {
            if !names.insert(rule.name.clone()) {
                return Err(RulesError(format!(
                    "{}: rule '{}' is defined twice",
                    file.display(),
                    rule.name
                )));
            }
            set.rules.push(rule);
        }
    }
    Ok(set)
}

fn parse(file: &Path, text: &str) -> Result<RulesFile, RulesError> {
    let in_file = |e: String| RulesError(format!("{}: {e}", file.display()));
    let parsed: RawRulesFile = serde_saphyr::from_str(text).map_err(|e| in_file(e.to_string()))?;
    let mut rules = Vec::with_capacity(parsed.rules.len());
    for raw in parsed.rules {
        let rule = raw.into_rule(file).map_err(in_file)?;
        check_rule(&rule).map_err(in_file)?;
        rules.push(rule);
    }
    for receiver in &parsed.receivers {
        if !receiver.url.starts_with("http://") && !receiver.url.starts_with("https://") {
            return Err(in_file(format!(
                "receiver '{}': url '{}' is not http:// or https://",
                receiver.name, receiver.url
            )));
        }
        if receiver.format == Format::Pagerduty && receiver.routing_key.is_none() {
            return Err(in_file(format!(
                "receiver '{}': format pagerduty needs routing_key",
                receiver.name
            )));
        }
    }
    for (i, inhibit) in parsed.inhibit_rules.iter().enumerate() {
        check_matchers(
            &format!("inhibit rule {}: source_matchers", i + 1),
            &inhibit.source_matchers,
        )
        .map_err(in_file)?;
        check_matchers(
            &format!("inhibit rule {}: target_matchers", i + 1),
            &inhibit.target_matchers,
        )
        .map_err(in_file)?;
    }
    Ok(RulesFile {
        group_by: parsed.group_by,
        route: parsed.route,
        receivers: parsed.receivers,
        inhibit_rules: parsed.inhibit_rules,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
group_by: [alertname, model]
rules:
  - name: GatewayErrorRate
    kind: threshold
    ratio:
      numerator: {metric: gateway.requests, function: rate, window: 1m, matchers: {status: "!=OK"}}
      denominator: {metric: gateway.requests, window: 1m}
    group_by: [model]
    op: ">"
    threshold: 0.05
    for: 10s
    keep_firing_for: 30s
    labels: {severity: critical}
    annotations: {summary: "{{ $labels.model }} fails {{ $value }} of its calls"}
  - name: Availability
    kind: burn_rate
    objective: 0.999
    good: {metric: gateway.requests, matchers: {status: OK}}
    total: {metric: gateway.requests}
  - name: ScoreDrift
    kind: drift
    metric: gateway.prediction.score
    window: 10m
    baseline: {snapshot: launch}
    psi_above: 0.25
"#;

    #[test]
    fn a_good_file_loads_with_defaults() {
        let parsed = parse(Path::new("r.yaml"), GOOD).unwrap();
        assert_eq!(parsed.rules.len(), 3);
        let rule = &parsed.rules[0];
        assert_eq!(rule.for_duration(), Duration::from_secs(10));
        assert_eq!(rule.keep_firing_duration(), Duration::from_secs(30));
        let RuleKind::BurnRate { windows, .. } = &parsed.rules[1].kind else {
            panic!("burn rate")
        };
        assert_eq!(windows.len(), 3);
        assert_eq!(windows[0].factor, 14.4);
        assert_eq!(parsed.group_by.unwrap(), ["alertname", "model"]);
    }

    #[test]
    fn bad_files_are_refused_with_the_rule_and_field_named() {
        for (text, words) in [
            (
                "rules: [{name: x, kind: threshold, op: '>', threshold: 1}]",
                "exactly one of query and ratio",
            ),
            (
                "rules: [{name: x, kind: threshold, op: '>', query: {metric: m}}]",
                "needs 'threshold'",
            ),
            (
                "rules: [{name: x, kind: drift, metric: m, window: 1m, baseline: {offset: 1h}, psi_above: 1, op: '>'}]",
                "does not belong",
            ),
            (
                "rules: [{name: x, kind: threshold, op: '>', threshold: 1, query: {metric: m, window: 5 parsecs}}]",
                "unit",
            ),
            (
                "rules: [{name: x, kind: threshold, op: '=>', threshold: 1, query: {metric: m}}]",
                "expected one of `>`",
            ),
            (
                "rules: [{name: x, kind: threshold, op: '>', threshold: 1, query: {metric: m, matchers: {a: '=~('}}}]",
                "regular expression",
            ),
            (
                "rules: [{name: x, kind: burn_rate, objective: 99.9, good: {metric: g}, total: {metric: t}}]",
                "between 0 and 1",
            ),
            (
                "rules: [{name: x, kind: drift, metric: m, window: 1m, baseline: {offset: 1h}}]",
                "psi_above",
            ),
            ("rules: [{name: x, kind: sometimes}]", "sometimes"),
            (
                "rules: [{name: x, kind: threshold, op: '>', threshold: 1, query: {metric: m}, colour: red}]",
                "colour",
            ),
            ("rules: {", "r.yaml"),
        ] {
            let err = parse(Path::new("r.yaml"), text).unwrap_err().0;
            assert!(err.contains(words), "{text}: {err}");
        }
    }

    #[test]
    fn the_example_rules_of_deploy_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rules");
        let set = load(&[root]).unwrap();
        assert_eq!(set.rules.len(), 11);
        assert_eq!(set.inhibit_rules.len(), 2);
        assert_eq!(set.rules[1].actions.len(), 1);
        let ranking = set
            .rules
            .iter()
            .find(|r| r.name == "CanaryRankingWorse")
            .unwrap();
        assert!(
            matches!(
                ranking.kind,
                RuleKind::CanaryQuality {
                    measure: QualityMeasure::Ndcg,
                    ..
                }
            ),
            "{ranking:?}"
        );
        assert_eq!(set.group_by, ["alertname", "model"]);
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3d").unwrap(), Duration::from_secs(259_200));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        let err = parse_duration("5 parsecs").unwrap_err();
        assert!(
            err.contains("'5 parsecs'") && err.contains("e.g. 500ms"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod properties {
    //! Rules files as an operator (or a bad merge) may write them: any text is loaded or refused
    //! with a message naming the file, never a panic.

    use super::*;
    use proptest::prelude::*;

    /// Pieces of real rules files, shuffled into texts that are often almost right.
    fn pieces() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("rules:\n".to_owned()),
            Just("  - name: Errors\n".to_owned()),
            Just("    kind: threshold\n".to_owned()),
            Just("    kind: burn_rate\n".to_owned()),
            Just("    query: {metric: shop.errors, function: rate, window: 2s}\n".to_owned()),
            Just("    op: \">\"\n".to_owned()),
            Just("    threshold: 5\n".to_owned()),
            Just("    for: 3s\n".to_owned()),
            Just("    labels: {severity: critical}\n".to_owned()),
            Just("group_by: [alertname, model]\n".to_owned()),
            Just("route: {group_wait: 0s, group_interval: 1s}\n".to_owned()),
            Just("receivers:\n  - {name: ops, url: \"http://x/hook\"}\n".to_owned()),
            ".{0,30}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn any_rules_text_is_loaded_or_refused_with_its_file(text in pieces()) {
            if let Err(err) = parse(Path::new("fuzz.yaml"), &text) {
                prop_assert!(err.0.contains("fuzz.yaml"), "{}", err.0);
            }
        }

        #[test]
        fn any_duration_text_is_parsed_or_refused(text in ".{0,12}") {
            let _ = parse_duration(&text);
        }
    }
}

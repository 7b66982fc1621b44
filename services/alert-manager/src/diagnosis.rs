//! The diagnosis report written when an incident opens: the offending value around the breach,
//! the related signals of the same model (and version) from the collector, exemplar trace ids,
//! and a ranked list of suspected causes from explicit heuristics. Stored as JSON and as text.
//!
//! Every query is best-effort: a signal the mesh does not export (or a collector that does not
//! answer) is reported as missing, never as zero.

use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::alert::Alert;
use crate::evaluator;
use crate::rules::{Rule, RuleKind};

/// A report: JSON for tools, text for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Structured form.
    pub json: Value,
    /// Readable form.
    pub text: String,
}

fn selector(metric: &str, matchers: &[(&str, &str, pb::MatchOp)]) -> Option<pb::Selector> {
    Some(pb::Selector {
        metric: metric.to_owned(),
        matchers: matchers
            .iter()
            .map(|(n, v, op)| pb::LabelMatcher {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
                op: *op as i32,
            })
            .collect(),
    })
}

async fn one(client: &mut MetricsQueryClient<Channel>, request: pb::QueryRequest) -> Option<f64> {
    let samples = client.query(request).await.ok()?.into_inner().samples;
    samples.first().map(|s| s.value)
}

fn query(
    metric: &str,
    matchers: &[(&str, &str, pb::MatchOp)],
    function: pb::Function,
    window: u32,
    quantile: f64,
    at: i64,
) -> pb::QueryRequest {
    pb::QueryRequest {
        selector: selector(metric, matchers),
        function: function as i32,
        window_seconds: window,
        quantile,
        group_by: vec![],
        at_unix_seconds: at,
    }
}

/// Failed calls over all calls of `metric` (a counter with a `status` label) matching `m`, over
/// the minute before Unix second `at` (0 = now).
async fn failure_ratio(
    client: &mut MetricsQueryClient<Channel>,
    metric: &str,
    m: &[(&str, &str, pb::MatchOp)],
    at: i64,
) -> Option<f64> {
    let failed: Vec<(&str, &str, pb::MatchOp)> = m
        .iter()
        .copied()
        .chain([("status", "OK", pb::MatchOp::NotEqual)])
        .collect();
    client
        .ratio(pb::RatioRequest {
            numerator: Some(query(metric, &failed, pb::Function::Rate, 60, 0.0, at)),
            denominator: Some(query(metric, m, pb::Function::Rate, 60, 0.0, at)),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().samples.first().map(|s| s.value))
}

/// Related signals of one model (and version) at Unix second `at` (0 = now).
async fn signals(
    client: &mut MetricsQueryClient<Channel>,
    model: &str,
    version: Option<&str>,
    at: i64,
) -> Value {
    use pb::MatchOp::Equal;
    let mut m: Vec<(&str, &str, pb::MatchOp)> = vec![("model", model, Equal)];
    if let Some(v) = version {
        m.push(("model_version", v, Equal));
    }
    let error_rate = failure_ratio(client, "inference.requests", &m, at).await;
    // The gateway sees failures that never reach a replica (e.g. a version no replica serves).
    let gateway_error_rate = failure_ratio(client, "gateway.requests", &m, at).await;
    let by_model = &m[..1];
    let p50 = one(
        client,
        query(
            "inference.request.duration",
            &m,
            pb::Function::Quantile,
            60,
            0.5,
            at,
        ),
    )
    .await;
    let p99 = one(
        client,
        query(
            "inference.request.duration",
            &m,
            pb::Function::Quantile,
            60,
            0.99,
            at,
        ),
    )
    .await;
    let queue = one(
        client,
        query(
            "inference.queue.depth",
            by_model,
            pb::Function::Avg,
            60,
            0.0,
            at,
        ),
    )
    .await;
    let batch = one(
        client,
        query(
            "inference.batch.size",
            by_model,
            pb::Function::Quantile,
            60,
            0.5,
            at,
        ),
    )
    .await;
    let loads = one(
        client,
        query(
            "inference.model.loads",
            by_model,
            pb::Function::Increase,
            900,
            0.0,
            at,
        ),
    )
    .await;
    // Resident memory of the inference replicas (the largest, over the last minute).
    let memory = one(
        client,
        query(
            "process.memory.usage",
            &[("job", "inference", Equal)],
            pb::Function::Max,
            60,
            0.0,
            at,
        ),
    )
    .await;
    let providers = client
        .query(pb::QueryRequest {
            group_by: vec!["provider".into()],
            ..query(
                "inference.model.loads",
                by_model,
                pb::Function::Last,
                0,
                0.0,
                at,
            )
        })
        .await
        .ok()
        .map(|r| {
            r.into_inner()
                .samples
                .into_iter()
                .filter_map(|s| s.labels.get("provider").cloned())
                .collect::<Vec<_>>()
        });
    json!({
        "error_rate": error_rate,
        "gateway_error_rate": gateway_error_rate,
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "queue_depth_avg": queue,
        "batch_size_p50": batch,
        "model_loads_last_15m": loads,
        "execution_providers": providers,
        "inference_memory_bytes": memory,
    })
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Suspected causes, most likely first, from the signals now and 10 minutes earlier.
fn suspects(rule: &Rule, now: &Value, before: &Value) -> Vec<Value> {
    let mut out: Vec<(f64, String, String)> = Vec::new();
    let grew = |key: &str, factor: f64| match (num(&now[key]), num(&before[key])) {
        (Some(n), Some(b)) => n > b * factor && n > 0.0,
        (Some(n), None) => n > 0.0,
        _ => false,
    };
    if grew("latency_p99_s", 1.5) && grew("queue_depth_avg", 1.5) {
        out.push((
            0.8,
            "saturation".into(),
            "latency and queue depth rose together: more load than the replicas serve; scale out or shed load".into(),
        ));
    }
    let errors = num(&now["error_rate"])
        .unwrap_or(0.0)
        .max(num(&now["gateway_error_rate"]).unwrap_or(0.0));
    if errors > 0.0 && num(&now["model_loads_last_15m"]).unwrap_or(0.0) > 0.0 {
        out.push((
            0.7,
            "bad rollout".into(),
            "errors come with a model version loaded in the last 15 minutes: roll the version back (canary weight 0)".into(),
        ));
    }
    if let RuleKind::Drift { .. } = rule.kind {
        out.push((
            0.6,
            "input shift".into(),
            "the distribution drifted from its baseline: shoppers' inputs changed, or an upstream feature broke".into(),
        ));
    }
    if now["execution_providers"]
        .as_array()
        .is_some_and(|p| p.iter().any(|v| v == "cpu"))
        && grew("latency_p99_s", 1.5)
    {
        out.push((
            0.5,
            "CPU fallback".into(),
            "a replica runs the model on CPU: its GPU provider did not register".into(),
        ));
    }
    // Only against a measured earlier value: memory is never zero.
    let memory_grew = match (
        num(&now["inference_memory_bytes"]),
        num(&before["inference_memory_bytes"]),
    ) {
        (Some(n), Some(b)) => n > b * 1.5,
        _ => false,
    };
    if memory_grew && (errors > 0.0 || grew("latency_p99_s", 1.5)) {
        out.push((
            0.5,
            "memory pressure".into(),
            "the inference replicas' memory grew by half while requests failed or slowed: a leak, or more models loaded than fit".into(),
        ));
    }
    if errors > 0.0 && out.is_empty() {
        out.push((
            0.3,
            "failing requests".into(),
            "errors without a load change or a rollout: check the exemplar traces".into(),
        ));
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.into_iter()
        .map(|(score, cause, why)| json!({"cause": cause, "score": score, "why": why}))
        .collect()
}

/// Builds the report of an incident opened by `alert` of `rule`.
pub async fn diagnose(
    client: &mut MetricsQueryClient<Channel>,
    rule: &Rule,
    alert: &Alert,
    now_s: i64,
) -> Report {
    // The offending value, every 30 s over the 5 minutes before the breach and now.
    let mut around = Vec::new();
    for k in (0..=10).rev() {
        let at = now_s - 30 * k;
        let value = match evaluator::observe_at(client, rule, at).await {
            Ok(obs) => obs
                .into_iter()
                .find(|o| o.is_group_of(alert))
                .map(|o| o.value),
            Err(_) => None,
        };
        around.push(json!({"at_unix_seconds": at, "value": value}));
    }
    let model = alert.labels.get("model").cloned();
    let version = alert.labels.get("model_version").cloned();
    let (related_now, related_before, exemplars) = match &model {
        Some(model) => {
            let now = signals(client, model, version.as_deref(), 0).await;
            let before = signals(client, model, version.as_deref(), now_s - 600).await;
            let exemplars = client
                .exemplars(pb::ExemplarsRequest {
                    service: String::new(),
                    model: model.clone(),
                    version: version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
                    status: pb::ExemplarStatus::Unspecified as i32,
                    since_seconds: 600,
                    limit: 5,
                })
                .await
                .map(|r| {
                    r.into_inner()
                        .exemplars
                        .into_iter()
                        .map(|e| {
                            json!({"trace_id": e.trace_id, "service": e.service, "span": e.span_name,
                                   "error": e.error, "duration_ms": e.duration_ms})
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            (now, before, exemplars)
        }
        None => (Value::Null, Value::Null, Vec::new()),
    };
    let suspects = suspects(rule, &related_now, &related_before);
    let json = json!({
        "rule": rule.name,
        "kind": rule.kind_name(),
        "labels": alert.labels,
        "value": alert.value,
        "around_breach": around,
        "related": {"now": related_now, "ten_minutes_before": related_before},
        "exemplars": exemplars,
        "suspected_causes": suspects,
    });
    let mut text = format!(
        "{} fired at value {} for {}\n",
        rule.name,
        alert.value,
        alert
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(model) = &model {
        text.push_str(&format!(
            "Related signals of {model} now / 10 min before:\n"
        ));
        for key in [
            "error_rate",
            "gateway_error_rate",
            "latency_p50_s",
            "latency_p99_s",
            "queue_depth_avg",
            "batch_size_p50",
            "model_loads_last_15m",
            "inference_memory_bytes",
        ] {
            let show = |v: &Value| {
                v.as_f64()
                    .map_or("missing".to_owned(), |f| format!("{f:.4}"))
            };
            text.push_str(&format!(
                "  {key}: {} / {}\n",
                show(&related_now[key]),
                show(&related_before[key])
            ));
        }
    }
    if !exemplars.is_empty() {
        text.push_str("Exemplar traces:\n");
        for e in &exemplars {
            text.push_str(&format!(
                "  {} ({})\n",
                e["trace_id"].as_str().unwrap_or(""),
                e["span"].as_str().unwrap_or("")
            ));
        }
    }
    text.push_str("Suspected causes:\n");
    if suspects.is_empty() {
        text.push_str("  none of the heuristics matched\n");
    }
    for (i, s) in suspects.iter().enumerate() {
        text.push_str(&format!(
            "  {}. {} — {}\n",
            i + 1,
            s["cause"].as_str().unwrap_or(""),
            s["why"].as_str().unwrap_or("")
        ));
    }
    Report { json, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            name: "Slow".into(),
            kind: RuleKind::Threshold {
                query: None,
                ratio: None,
                op: crate::rules::Op::Above,
                threshold: 1.0,
            },
            group_by: vec![],
            for_: None,
            keep_firing_for: None,
            labels: Default::default(),
            annotations: Default::default(),
            actions: vec![],
            file: "r.yaml".into(),
        }
    }

    #[test]
    fn heuristics_rank_saturation_and_rollouts() {
        let before = json!({"latency_p99_s": 0.05, "queue_depth_avg": 2.0, "error_rate": 0.0});
        let now = json!({"latency_p99_s": 0.5, "queue_depth_avg": 40.0, "error_rate": 0.2,
                         "model_loads_last_15m": 1.0});
        let found = suspects(&rule(), &now, &before);
        let causes: Vec<&str> = found.iter().map(|s| s["cause"].as_str().unwrap()).collect();
        assert_eq!(causes, ["saturation", "bad rollout"]);
        let calm = json!({"latency_p99_s": 0.05, "queue_depth_avg": 2.0, "error_rate": 0.0});
        assert!(suspects(&rule(), &calm, &before).is_empty());
        let leaking = json!({"latency_p99_s": 0.05, "queue_depth_avg": 2.0, "error_rate": 0.1,
                             "inference_memory_bytes": 9.0e9});
        let before = json!({"latency_p99_s": 0.05, "queue_depth_avg": 2.0, "error_rate": 0.0,
                            "inference_memory_bytes": 2.0e9});
        let found = suspects(&rule(), &leaking, &before);
        assert_eq!(found[0]["cause"], "memory pressure", "{found:?}");
        // Memory without an earlier figure to compare with says nothing.
        let found = suspects(&rule(), &leaking, &json!({}));
        assert!(
            found.iter().all(|s| s["cause"] != "memory pressure"),
            "{found:?}"
        );
        // Failures seen only by the gateway, after a version load: a bad rollout.
        let rollout =
            json!({"error_rate": 0.0, "gateway_error_rate": 0.5, "model_loads_last_15m": 1.0});
        let found = suspects(&rule(), &rollout, &json!({}));
        assert_eq!(found[0]["cause"], "bad rollout", "{found:?}");
    }
}

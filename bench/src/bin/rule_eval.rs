//! Time of one full evaluation cycle of the alert manager: 1,000 rules over 10,000 series.
//!
//! Starts a metrics collector in-process, feeds it 10,000 counter series (1,000 models × 10
//! replicas, a status label), and evaluates 1,000 error-ratio rules (one per model: failed calls
//! over all calls, 1 min window) the way the alert manager does each second: one batch call to
//! the collector, then the alert state machine. Prints one JSON object.
//!
//!     rule_eval --cycles 50

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alert_manager::evaluator::{self, Alerts};
use alert_manager::rules::{Function, Op, QuerySpec, RatioSpec, Rule, RuleKind, Span};
use clap::Parser;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;

/// Measures rule evaluation cycles.
#[derive(Debug, Parser)]
struct Args {
    /// Rules (one per model).
    #[arg(long, default_value_t = 1000)]
    rules: usize,
    /// Series per model.
    #[arg(long, default_value_t = 10)]
    replicas: usize,
    /// Measured cycles.
    #[arg(long, default_value_t = 50)]
    cycles: usize,
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn series(models: usize, replicas: usize, value: f64) -> ExportMetricsServiceRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let points = (0..models)
        .flat_map(|m| {
            (0..replicas).map(move |r| NumberDataPoint {
                attributes: vec![
                    kv("model", format!("model-{m:04}")),
                    kv("replica", format!("r{r}")),
                    kv("status", if r == 0 { "UNAVAILABLE" } else { "OK" }.into()),
                ],
                start_time_unix_nano: now,
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            })
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "bench.requests".into(),
                    data: Some(Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: AggregationTemporality::Delta as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn rule(model: usize) -> Rule {
    let spec = |extra: Option<(&str, &str)>| QuerySpec {
        metric: "bench.requests".into(),
        matchers: [("model".to_owned(), format!("model-{model:04}"))]
            .into_iter()
            .chain(extra.map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
        function: Function::Rate,
        window: Span(Duration::from_secs(60)),
        quantile: None,
    };
    Rule {
        name: format!("ErrorRate{model:04}"),
        kind: RuleKind::Threshold {
            query: None,
            ratio: Some(RatioSpec {
                numerator: spec(Some(("status", "!=OK"))),
                denominator: spec(None),
            }),
            op: Op::Above,
            threshold: 0.05,
        },
        group_by: vec!["model".into()],
        for_: None,
        keep_firing_for: None,
        labels: BTreeMap::from([("severity".to_owned(), "critical".to_owned())]),
        annotations: BTreeMap::new(),
        actions: Vec::new(),
        file: "bench".into(),
    }
}

fn millis(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use clap::Parser as _;
    let args = Args::parse();
    let (grpc, addr) = shared::testing::ephemeral_listener().await?;
    let (http, _) = shared::testing::ephemeral_listener().await?;
    let config = metrics_collector::Config::parse_from(["metrics-collector", "--plaintext"]);
    tokio::spawn(metrics_collector::serve(
        grpc,
        http,
        config,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut otlp = MetricsServiceClient::new(channel.clone());
    // Two points a second apart, so that every series has a rate.
    otlp.export(series(args.rules, args.replicas, 10.0)).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    otlp.export(series(args.rules, args.replicas, 10.0)).await?;

    let rules: Vec<Rule> = (0..args.rules).map(rule).collect();
    let mut client = MetricsQueryClient::new(channel);
    let mut alerts = Alerts::default();
    let mut cycles = Vec::new();
    let mut firing = 0;
    for i in 0..args.cycles + 3 {
        let started = Instant::now();
        let observed = evaluator::observe_all(&mut client, &rules, 0).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut errors = 0;
        for (rule, result) in rules.iter().zip(observed) {
            match result {
                Ok(obs) => firing += alerts.apply(rule, obs, now).len(),
                Err(_) => errors += 1,
            }
        }
        anyhow::ensure!(errors == 0, "{errors} rules failed to evaluate");
        // The first cycles warm the collector's caches of selections and groupings.
        if i >= 3 {
            cycles.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let report = serde_json::json!({
        "rules": args.rules,
        "series": args.rules * args.replicas,
        "cycles": cycles.len(),
        "cycle_p50_ms": millis(cycles.clone(), 0.5),
        "cycle_p99_ms": millis(cycles.clone(), 0.99),
        "cycle_max_ms": millis(cycles, 1.0),
        "alerts_fired": firing,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

//! The metrics collector's query API against real senders (the OpenTelemetry Python SDK, OTLP
//! from the tests), a real Prometheus scraping `/metrics`, the drift statistics, the
//! prediction–feedback join (pushed directly and through the gateway), exemplars, and bad input.

use std::time::Duration;

use integration_tests::otlp_build::{attribute, counter, export, export_from, now_ns};
use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::Function;

fn histogram(
    name: &str,
    start_ns: u64,
    temporality: AggregationTemporality,
    bounds: &[f64],
    counts: &[u64],
) -> Metric {
    Metric {
        name: name.to_owned(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![attribute("model", "purchase-intent")],
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns(),
                count: counts.iter().sum(),
                sum: Some(0.0),
                bucket_counts: counts.to_vec(),
                explicit_bounds: bounds.to_vec(),
                ..Default::default()
            }],
            aggregation_temporality: temporality as i32,
        })),
        ..Default::default()
    }
}

async fn otlp(collector: &RunningCollector) -> MetricsServiceClient<tonic::transport::Channel> {
    MetricsServiceClient::new(connect(collector.grpc).await)
}

async fn query(collector: &RunningCollector, request: pb::QueryRequest) -> Vec<pb::Sample> {
    collector
        .query_client()
        .await
        .query(request)
        .await
        .unwrap()
        .into_inner()
        .samples
}

fn value_of(samples: &[pb::Sample], label: &str, value: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.labels.get(label).map(String::as_str) == Some(value))
        .unwrap_or_else(|| panic!("no sample with {label}={value}: {samples:?}"))
        .value
}

/// Two replicas of one service (same `service.name`, same labels, their own start times) export
/// the same counter in turn, as two gateway pods do: each keeps its own series, so neither's
/// points read as the other's counter resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_one_service_count_apart_and_add_up() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let mut client = otlp(&collector).await;
    let labels = || vec![attribute("route", "embed")];
    let starts = [("gateway-a", now_ns()), ("gateway-b", now_ns() + 1)];
    for step in 1..=4 {
        for (instance, start) in starts {
            let points = vec![(labels(), 10.0 * f64::from(step))];
            let request = export_from(
                "gateway",
                Some(instance),
                vec![counter("served", start, points)],
            );
            let answer = client.export(request).await.unwrap().into_inner();
            assert_eq!(answer.partial_success, None);
        }
    }
    let increase = |group_by: &[&str]| metric_query("served", Function::Increase, 60, group_by);
    let total = query(&collector, increase(&[])).await;
    assert_eq!(total.len(), 1, "{total:?}");
    assert_eq!(
        total[0].value, 80.0,
        "two replicas each counted 40: {total:?}"
    );
    assert_eq!(total[0].series, 2, "{total:?}");
    let apart = query(&collector, increase(&["instance"])).await;
    assert_eq!(value_of(&apart, "instance", "gateway-a"), 40.0, "{apart:?}");
    assert_eq!(value_of(&apart, "instance", "gateway-b"), 40.0, "{apart:?}");

    let (status, text) = http_get(collector.http, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for instance in ["gateway-a", "gateway-b"] {
        let line =
            format!("served_total{{instance=\"{instance}\",job=\"gateway\",route=\"embed\"}} 40");
        assert!(text.contains(&line), "{line} not in:\n{text}");
    }
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_sends_exact_counts_and_quantiles_within_a_bucket() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let python = repo_root().join(".venv-otel/bin/python");
    let script = repo_root().join("integration-tests/clients/otel_sender.py");
    for temporality in ["delta", "cumulative"] {
        let prefix = format!("shop_{temporality}");
        run_command(
            &python,
            &[
                script.to_str().unwrap(),
                "--endpoint",
                &collector.endpoint(),
                "--temporality",
                temporality,
                "--prefix",
                &prefix,
            ],
        )
        .await
        .expect("the OpenTelemetry Python SDK (.venv-otel, `make deps`) sends its metrics");
        // The sender flushed before it exited: everything is in.
        let orders = query(
            &collector,
            metric_query(
                &format!("{prefix}.orders"),
                Function::Increase,
                300,
                &["status"],
            ),
        )
        .await;
        assert_eq!(value_of(&orders, "status", "ok"), 100.0, "{temporality}");
        assert_eq!(value_of(&orders, "status", "error"), 37.0, "{temporality}");
        let latency = format!("{prefix}.latency");
        let count = query(
            &collector,
            metric_query(&latency, Function::Increase, 300, &[]),
        )
        .await;
        assert_eq!(count[0].value, 200.0, "{temporality}");
        // Values 0.001..=0.200: the true median is 0.1005, in the bucket (0.1, 0.2].
        let mut median = metric_query(&latency, Function::Quantile, 300, &[]);
        median.quantile = 0.5;
        let median = query(&collector, median).await[0].value;
        assert!(
            (0.1..=0.2).contains(&median),
            "{temporality}: median {median}"
        );
        let mut p99 = metric_query(&latency, Function::Quantile, 300, &["job"]);
        p99.quantile = 0.99;
        let p99 = query(&collector, p99).await;
        assert_eq!(p99[0].labels["job"], "python-shop");
        assert!((0.1..=0.2).contains(&p99[0].value), "{p99:?}");
    }
    collector.stop().await.unwrap();
}

/// GET over HTTP/1.0 (no chunked encoding), returning the body.
async fn http10_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_owned())
}

/// The value of a Prometheus instant query, once it has one.
async fn prometheus_value(addr: std::net::SocketAddr, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http10_get(addr, &format!("/api/v1/query?query={encoded}")).await?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_values_that_the_query_api_returns() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let start = now_ns();
    let bounds = [1.0, 2.0, 5.0, 10.0];
    otlp(&collector)
        .await
        .export(export(
            "shop",
            vec![
                counter(
                    "shop.visits",
                    start,
                    vec![(vec![attribute("page", "home")], 4242.0)],
                ),
                histogram(
                    "shop.basket.size",
                    start,
                    AggregationTemporality::Cumulative,
                    &bounds,
                    &[3, 10, 20, 6, 1],
                ),
            ],
        ))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: collector\n    honor_labels: true\n    static_configs:\n      - targets: ['{}']\n",
            collector.http
        ),
    )
    .unwrap();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (Debian package prometheus; `make deps` installs it)");
    let addr = listening_addr(prometheus.id().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();

    let scraped = eventually(
        "Prometheus' value of shop_visits_total",
        Duration::from_secs(60),
        || prometheus_value(addr, "shop_visits_total{page=\"home\"}"),
    )
    .await;
    let ours = query(
        &collector,
        metric_query("shop.visits", Function::Last, 0, &[]),
    )
    .await;
    assert_eq!(scraped, 4242.0);
    assert_eq!(ours[0].value, scraped);

    let promql = "histogram_quantile(0.9, shop_basket_size_bucket)";
    let scraped = eventually(
        "Prometheus' histogram_quantile",
        Duration::from_secs(30),
        || prometheus_value(addr, promql),
    )
    .await;
    let mut q = metric_query("shop_basket_size", Function::Quantile, 300, &[]);
    q.quantile = 0.9;
    let ours = query(&collector, q).await;
    // 40 observations: rank 36 falls in (5, 10] after 33 below: 5 + 5 * 3/6 = 7.5.
    assert!((scraped - 7.5).abs() < 1e-9, "Prometheus: {scraped}");
    assert!(
        (ours[0].value - scraped).abs() < 1e-9,
        "ours {} vs {scraped}",
        ours[0].value
    );

    prometheus.kill().await.unwrap();
    collector.stop().await.unwrap();
}

fn unix_s() -> i64 {
    (now_ns() / 1_000_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_flags_a_shifted_score_distribution_and_not_an_unshifted_one() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let bounds: Vec<f64> = (1..10).map(|i| f64::from(i) / 10.0).collect();
    static BASELINE: [u64; 10] = [40, 60, 80, 100, 110, 100, 80, 60, 40, 30];
    static SHIFTED: [u64; 10] = [5, 10, 20, 30, 50, 80, 120, 150, 150, 85];
    let client = otlp(&collector).await;
    let send = |counts: &'static [u64]| {
        let bounds = bounds.clone();
        let mut client = client.clone();
        async move {
            client
                .export(export(
                    "gateway",
                    vec![histogram(
                        "gateway.prediction.score",
                        0,
                        AggregationTemporality::Delta,
                        &bounds,
                        counts,
                    )],
                ))
                .await
                .unwrap();
        }
    };
    send(&BASELINE).await;
    let sent_at = unix_s();
    let mut queries = collector.query_client().await;
    let pinned = queries
        .pin_baseline(pb::PinBaselineRequest {
            name: "launch".into(),
            selector: Some(pb::Selector {
                metric: "gateway.prediction.score".into(),
                matchers: vec![],
            }),
            window_seconds: 60,
            group_by: vec!["model".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pinned.observations, 700);

    // The compared windows (2 s) must not reach back to the baseline's second: wait for the
    // clock to pass it.
    let drift = |window| pb::DriftRequest {
        selector: Some(pb::Selector {
            metric: "gateway.prediction.score".into(),
            matchers: vec![],
        }),
        window_seconds: window,
        group_by: vec![],
        baseline: Some(pb::drift_request::Baseline::Snapshot("launch".into())),
        at_unix_seconds: 0,
    };
    let next = |after: i64| {
        let target = after + 3;
        async move {
            while unix_s() < target {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    next(sent_at).await;
    send(&SHIFTED).await;
    let result = queries.drift(drift(2)).await.unwrap().into_inner().results;
    assert_eq!(result[0].labels["model"], "purchase-intent");
    assert_eq!(result[0].window_count, 700);
    assert!(result[0].psi > 0.25, "{result:?}");
    assert!(result[0].ks_p_value < 0.01, "{result:?}");

    let shifted_at = unix_s();
    next(shifted_at).await;
    send(&BASELINE).await;
    let result = queries.drift(drift(2)).await.unwrap().into_inner().results;
    assert!(result[0].psi < 0.1, "{result:?}");
    assert!(result[0].ks_p_value > 0.05, "{result:?}");

    // A baseline that was never pinned, and a gauge, are refused with the reason.
    let mut unknown = drift(2);
    unknown.baseline = Some(pb::drift_request::Baseline::Snapshot("nope".into()));
    let err = queries.drift(unknown).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    collector.stop().await.unwrap();
}

fn prediction(id: &str, task: pb::PredictionTask, items: &[&str], scores: &[f32]) -> pb::Record {
    pb::Record {
        kind: Some(pb::record::Kind::Prediction(pb::PredictionRecord {
            request_id: id.into(),
            model: "m".into(),
            version: 3,
            task: task as i32,
            items: items.iter().map(|s| (*s).to_owned()).collect(),
            scores: scores.to_vec(),
            at_unix_ms: 0,
            tenant: "shop".into(),
            texts: Vec::new(),
        })),
    }
}

fn feedback(id: &str, item: &str, event: pb::FeedbackEvent, label: u32) -> pb::Record {
    pb::Record {
        kind: Some(pb::record::Kind::Feedback(pb::FeedbackRecord {
            request_id: id.into(),
            item_id: item.into(),
            event: event as i32,
            label,
            at_unix_ms: 0,
        })),
    }
}

/// AUC by counting pairs: the share of (positive, negative) pairs ranked right, ties half.
fn pairwise_auc(scored: &[(f32, bool)]) -> f64 {
    let (mut good, mut pairs) = (0.0, 0.0);
    for (p, _) in scored.iter().filter(|(_, l)| *l) {
        for (n, _) in scored.iter().filter(|(_, l)| !*l) {
            pairs += 1.0;
            good += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    good / pairs
}

/// NDCG@k with gains 2^rel - 1 and discounts log2(position + 1), positions from 1.
fn ndcg(relevances: &[f64], k: usize) -> f64 {
    let dcg = |rels: &[f64]| -> f64 {
        rels.iter()
            .take(k)
            .enumerate()
            .map(|(i, r)| (2f64.powf(*r) - 1.0) / ((i + 2) as f64).log2())
            .sum()
    };
    let mut ideal = relevances.to_vec();
    ideal.sort_by(|a, b| b.partial_cmp(a).unwrap());
    dcg(relevances) / dcg(&ideal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feedback_join_gives_the_auc_and_ndcg_computed_here() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let mut ingest =
        pb::record_ingest_client::RecordIngestClient::new(connect(collector.grpc).await);
    let mut records = Vec::new();
    let mut scored = Vec::new();
    // 60 classified texts: a fixed pseudo-random score and label (with ties).
    for i in 0..60_u32 {
        let score = ((i * 37) % 11) as f32 / 10.0;
        let label = (i * 7) % 5 < 2 + (score > 0.5) as u32;
        let id = format!("c{i}");
        records.push(prediction(
            &id,
            pb::PredictionTask::Classify,
            &["0"],
            &[score],
        ));
        records.push(feedback(&id, "0", pb::FeedbackEvent::Label, label as u32));
        scored.push((score, label));
    }
    // 12 rankings of 6 candidates, with clicks, carts and purchases on fixed positions.
    let mut ndcgs = Vec::new();
    let mut clicked = 0;
    for r in 0..12_usize {
        let id = format!("r{r}");
        let items = ["p1", "p2", "p3", "p4", "p5", "p6"];
        records.push(prediction(
            &id,
            pb::PredictionTask::Rank,
            &items,
            &[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        ));
        let mut rel = [0.0; 6];
        for (position, event, grade) in [
            ((r * 5) % 6, pb::FeedbackEvent::Click, 1.0),
            ((r * 3) % 6, pb::FeedbackEvent::Purchase, 3.0),
            ((r + 2) % 6, pb::FeedbackEvent::AddToCart, 2.0),
        ] {
            if r % 4 == 3 {
                continue; // these rankings get no feedback
            }
            records.push(feedback(&id, items[position], event, 0));
            rel[position] = f64::max(rel[position], grade);
        }
        if rel.iter().any(|g| *g > 0.0) {
            clicked += 1;
            ndcgs.push(ndcg(&rel, 5));
        }
    }
    records.push(feedback("never-served", "p1", pb::FeedbackEvent::Click, 0));
    let pushed = ingest
        .push(pb::PushRecordsRequest {
            records,
            dropped_by_sender: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pushed.refused, 0, "{pushed:?}");

    let quality = collector
        .query_client()
        .await
        .model_quality(pb::ModelQualityRequest {
            model: "m".into(),
            window_seconds: 0,
            k: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let v = &quality.versions[0];
    assert_eq!((v.model.as_str(), v.version), ("m", 3));
    assert_eq!(v.labelled, 60);
    assert!(
        (v.auc - pairwise_auc(&scored)).abs() < 1e-9,
        "{} vs {}",
        v.auc,
        pairwise_auc(&scored)
    );
    let accuracy = scored.iter().filter(|(s, l)| (*s >= 0.5) == *l).count() as f64 / 60.0;
    assert!((v.accuracy - accuracy).abs() < 1e-9);
    assert_eq!(v.rankings, 12);
    assert!((v.ctr - clicked as f64 / 12.0).abs() < 1e-12);
    let mean_ndcg = ndcgs.iter().sum::<f64>() / ndcgs.len() as f64;
    assert_eq!(v.ndcg_rankings, ndcgs.len() as u64);
    assert!(
        (v.ndcg_at_k - mean_ndcg).abs() < 1e-9,
        "{} vs {mean_ndcg}",
        v.ndcg_at_k
    );
    assert_eq!(quality.unmatched_feedback, 1);
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_predictions_and_feedback_reach_the_join() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let endpoint = collector.endpoint();
    let mut gateway = RunningGateway::start(gateway_config(
        &[shared_inference()],
        &["--records-endpoint", &endpoint],
    ))
    .await
    .unwrap();
    let mut client = gateway_client(gateway.addr).await;
    use proto::ecommerce::gateway::v1 as gw;
    let texts = [
        "buy running shoes size 42 now",
        "what is the history of tea",
        "add wireless earbuds to cart",
        "weather tomorrow",
    ];
    let reply = client
        .classify(with_key(
            gw::ClassifyRequest {
                texts: texts.iter().map(|t| (*t).to_owned()).collect(),
            },
            "client-key",
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut scored = Vec::new();
    for (i, c) in reply.classifications.iter().enumerate() {
        let label = i % 2 == 0;
        scored.push((c.probabilities[1], label));
        client
            .feedback(with_key(
                gw::FeedbackRequest {
                    request_id: reply.request_id.clone(),
                    item_id: i.to_string(),
                    event: gw::FeedbackEvent::Label as i32,
                    label: label as u32,
                },
                "client-key",
                None,
            ))
            .await
            .unwrap();
    }
    let mut queries = collector.query_client().await;
    let quality = eventually(
        "the gateway's records in the join",
        Duration::from_secs(20),
        || {
            let mut queries = queries.clone();
            async move {
                let q = queries
                    .model_quality(pb::ModelQualityRequest {
                        model: "purchase-intent".into(),
                        window_seconds: 0,
                        k: 0,
                    })
                    .await
                    .ok()?
                    .into_inner();
                q.versions.into_iter().find(|v| v.labelled == 4)
            }
        },
    )
    .await;
    assert_eq!(quality.version, reply.served_by.unwrap().version);
    assert!((quality.auc - pairwise_auc(&scored)).abs() < 1e-6);
    let _ = queries
        .list_metrics(pb::ListMetricsRequest {})
        .await
        .unwrap();
    gateway.stop().await.unwrap();
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_slow_spans_are_kept_as_exemplars() {
    let mut collector = RunningCollector::start(&["--slow-span-ms", "100"])
        .await
        .unwrap();
    let end = now_ns();
    let span = |id: u8, millis: u64, error: bool, version: &str| {
        let model = vec![
            attribute("model", "minilm-l6"),
            attribute("model_version", version),
        ];
        otlp_build::span(id, end, millis, error, model)
    };
    TraceServiceClient::new(connect(collector.grpc).await)
        .export(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![attribute("service.name", "gateway")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span(1, 5, true, "2"),
                        span(2, 500, false, "2"),
                        span(3, 5, false, "2"),
                        span(4, 5, true, "1"),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let mut queries = collector.query_client().await;
    let find = |status: pb::ExemplarStatus, version| pb::ExemplarsRequest {
        service: "gateway".into(),
        model: "minilm-l6".into(),
        version,
        status: status as i32,
        since_seconds: 300,
        limit: 0,
    };
    let errors = queries
        .exemplars(find(pb::ExemplarStatus::Error, 2))
        .await
        .unwrap()
        .into_inner()
        .exemplars;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].trace_id, "01".repeat(16));
    assert_eq!(errors[0].status_message, "replica unavailable");
    let any = queries
        .exemplars(find(pb::ExemplarStatus::Unspecified, 0))
        .await
        .unwrap()
        .into_inner()
        .exemplars;
    // The fast, successful span is not an exemplar.
    let mut ids: Vec<String> = any.iter().map(|e| e.trace_id[..2].to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["01", "02", "04"]);
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_otlp_is_answered_and_memory_stays_bounded() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let mut client = otlp(&collector).await;

    // Not protobuf at all.
    let mut grpc = tonic::client::Grpc::new(connect(collector.grpc).await);
    grpc.ready().await.unwrap();
    let err = grpc
        .unary(
            tonic::Request::new(vec![0xff; 64]),
            http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            ),
            raw::RawCodec,
        )
        .await
        .unwrap_err();
    // gRPC's status-code table: a request that does not parse is INTERNAL, with the reason.
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(err.message().contains("decode"), "{err:?}");

    // NaN and infinite values are refused, counted, and said why; the finite point is kept.
    let gauge = |v: f64, page: &str| NumberDataPoint {
        attributes: vec![attribute("page", page)],
        time_unix_nano: now_ns(),
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    let reply = client
        .export(export(
            "shop",
            vec![Metric {
                name: "shop.temperature".into(),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![
                        gauge(f64::NAN, "a"),
                        gauge(f64::INFINITY, "b"),
                        gauge(21.5, "c"),
                    ],
                })),
                ..Default::default()
            }],
        ))
        .await
        .unwrap()
        .into_inner();
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, 2);
    assert!(partial.error_message.contains("non-finite"), "{partial:?}");

    // A 1 MB attribute value is cut to a label-sized prefix, not stored whole.
    let huge = "x".repeat(1 << 20);
    client
        .export(export(
            "shop",
            vec![counter(
                "shop.huge",
                now_ns(),
                vec![(vec![attribute("blob", &huge)], 1.0)],
            )],
        ))
        .await
        .unwrap();
    let (_, body) = http_get(collector.http, "/metrics").await.unwrap();
    let line = body
        .lines()
        .find(|l| l.starts_with("shop_huge_total{"))
        .expect("the series is exposed");
    assert!(line.len() < 1024, "{} bytes", line.len());

    // 100,000 distinct label values: 10,000 series kept (the default limit), the rest refused.
    let points = (0..100_000)
        .map(|i| (vec![attribute("user", &format!("user-{i}"))], 1.0))
        .collect();
    let reply = client
        .export(export(
            "shop",
            vec![counter("shop.clicks", now_ns(), points)],
        ))
        .await
        .unwrap()
        .into_inner();
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, 90_000);
    assert!(
        partial.error_message.contains("10000 series"),
        "{partial:?}"
    );
    let listed = collector
        .query_client()
        .await
        .list_metrics(pb::ListMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    let clicks = listed
        .metrics
        .iter()
        .find(|m| m.name == "shop.clicks")
        .unwrap();
    assert_eq!(clicks.series, 10_000);
    assert_eq!(clicks.refused_points, 90_000);
    assert!(listed.window_bytes <= listed.window_bytes_limit);
    // Still serving, and the exposition still lints.
    let (status, body) = http_get(collector.http, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("collector_refused_points_total 90002"),
        "refused line"
    );
    collector.stop().await.unwrap();
}

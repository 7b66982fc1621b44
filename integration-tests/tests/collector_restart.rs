//! The metrics collector restarted on its data directory, as real processes: killed (SIGKILL)
//! under ingest, it comes back with its windows and counts the gap; stopped (SIGTERM), it
//! answers every query as before; a torn log tail is cut and the rest is kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::otlp_build::{
    attribute, counter, export_from, export_once, gauge, now_ns, span,
};
use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::Function;
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;

const SHOPS: usize = 20;

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "collector-restart-{name}-{}-{}",
        std::process::id(),
        now_ns()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(dir: &Path) -> ServiceProcess {
    collector_process("127.0.0.1:0", dir).await
}

fn unix_s() -> i64 {
    (now_ns() / 1_000_000_000) as i64
}

fn delta(name: &str, n: f64) -> Metric {
    let now = now_ns();
    Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                start_time_unix_nano: now,
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(n)),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

async fn queries(addr: SocketAddr) -> MetricsQueryClient<tonic::transport::Channel> {
    MetricsQueryClient::new(connect(addr).await)
}

/// The sum of `function` over `metric` at second `at` (0: now), all series.
async fn total(addr: SocketAddr, metric: &str, function: Function, window: u32, at: i64) -> f64 {
    let mut request = metric_query(metric, function, window, &[]);
    request.at_unix_seconds = at;
    queries(addr)
        .await
        .query(request)
        .await
        .unwrap()
        .into_inner()
        .samples
        .iter()
        .map(|s| s.value)
        .sum()
}

/// What a sender had acknowledged, and when.
#[derive(Default)]
struct Sent {
    /// (when, cumulative total of `orders.placed` acknowledged, `clicks` deltas acknowledged).
    acked: Vec<(Instant, f64, f64)>,
}

/// Exports every 100 ms to whatever address `target` holds, as an SDK would: cumulative
/// counters keep counting while the collector is away; a delta that fails is dropped.
async fn send(target: Arc<Mutex<SocketAddr>>, sent: Arc<Mutex<Sent>>, stop: Arc<Mutex<bool>>) {
    let start_ns = now_ns();
    let mut totals = [0.0; SHOPS];
    let mut clicks = 0.0;
    let mut tick = 0u64;
    while !*stop.lock().unwrap() {
        tick += 1;
        for (i, t) in totals.iter_mut().enumerate() {
            *t += ((tick as usize + i) % 3 + 1) as f64;
        }
        let cumulative: f64 = totals.iter().sum();
        let points = totals
            .iter()
            .enumerate()
            .map(|(i, v)| (vec![attribute("shop", &format!("s{i}"))], *v))
            .collect();
        let request = export_from(
            "checkout",
            Some("checkout-0"),
            vec![
                counter("orders.placed", start_ns, points),
                delta("clicks", 2.0),
            ],
        );
        let addr = *target.lock().unwrap();
        if export_once(addr, request, Duration::from_millis(300)).await {
            let mut s = sent.lock().unwrap();
            clicks += 2.0;
            s.acked.push((Instant::now(), cumulative, clicks));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Killed under ingest and restarted: what was counted before the kill is there (all but at
/// most the last 2 s), the cumulative counters' increase over the gap is counted in full, and
/// only the delta points the collector never acknowledged or lost in its last 2 s are missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_collector_comes_back_with_its_windows_and_counts_the_gap() {
    let dir = data_dir("kill");
    let first = start(&dir).await;
    let target = Arc::new(Mutex::new(first.addr));
    let sent = Arc::new(Mutex::new(Sent::default()));
    let stop = Arc::new(Mutex::new(false));
    let sender = tokio::spawn(send(target.clone(), sent.clone(), stop.clone()));

    tokio::time::sleep(Duration::from_secs(3)).await;
    first.kill().await;
    let killed = Instant::now();
    let killed_s = unix_s();
    // Down for a while: the sender keeps counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = start(&dir).await;
    *target.lock().unwrap() = second.addr;
    tokio::time::sleep(Duration::from_secs(2)).await;
    *stop.lock().unwrap() = true;
    sender.await.unwrap();

    let acked = std::mem::take(&mut sent.lock().unwrap().acked);
    let at = |limit: Instant| {
        acked
            .iter()
            .rev()
            .find(|(when, ..)| *when <= limit)
            .map_or((0.0, 0.0), |(_, c, d)| (*c, *d))
    };
    let (cumulative_at_kill, clicks_at_kill) = at(killed);
    let (cumulative_2s_before, clicks_2s_before) = at(killed - Duration::from_secs(2));
    let (last_cumulative, last_clicks) = acked.last().map(|(_, c, d)| (*c, *d)).unwrap();
    assert!(
        cumulative_2s_before > 0.0,
        "the sender was acknowledged before the kill"
    );

    // Before the kill, as the windows say now.
    let before = total(
        second.addr,
        "orders.placed",
        Function::Increase,
        300,
        killed_s,
    )
    .await;
    assert!(
        before >= cumulative_2s_before && before <= cumulative_at_kill,
        "counted up to the kill: {before}; acknowledged 2 s before it {cumulative_2s_before}, at it {cumulative_at_kill}"
    );
    // Over the whole run, the gap included: the counters' last totals, exactly.
    let all = total(second.addr, "orders.placed", Function::Increase, 300, 0).await;
    assert_eq!(
        all, last_cumulative,
        "the increase over the run and the gap"
    );
    // Delta points: only those of the last 2 s before the kill may be lost.
    let clicks = total(second.addr, "clicks", Function::Increase, 300, 0).await;
    let lost = last_clicks - clicks;
    assert!(
        lost >= 0.0 && lost <= clicks_at_kill - clicks_2s_before,
        "clicks: {clicks} counted, {last_clicks} acknowledged; lost {lost}, more than the last 2 s before the kill"
    );
    second.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn score_histogram(counts: &[u64]) -> Metric {
    Metric {
        name: "gateway.prediction.score".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![attribute("model", "purchase-intent")],
                start_time_unix_nano: 0,
                time_unix_nano: now_ns(),
                count: counts.iter().sum(),
                sum: Some(counts.iter().sum::<u64>() as f64 * 0.4),
                bucket_counts: counts.to_vec(),
                explicit_bounds: vec![0.25, 0.5, 0.75],
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }
}

fn queue_gauge(v: f64) -> Metric {
    gauge("inference.queue.depth", vec![], v)
}

/// Every answer the collector gives about a fixed second: queries of each function, drift
/// against a pinned baseline, model quality, and the metric catalog.
async fn answers(addr: SocketAddr, at: i64) -> Vec<String> {
    let mut client = queries(addr).await;
    let mut out = Vec::new();
    for (metric, function, group_by) in [
        ("orders.placed", Function::Increase, vec!["shop"]),
        ("orders.placed", Function::Rate, vec![]),
        (
            "gateway.prediction.score",
            Function::Quantile,
            vec!["model"],
        ),
        ("inference.queue.depth", Function::Avg, vec![]),
        ("inference.queue.depth", Function::Max, vec![]),
    ] {
        let mut request = metric_query(metric, function, 60, &group_by);
        request.at_unix_seconds = at;
        request.quantile = 0.9;
        let mut samples = client.query(request).await.unwrap().into_inner().samples;
        samples.sort_by(|a, b| format!("{:?}", a.labels).cmp(&format!("{:?}", b.labels)));
        out.push(format!("{metric} {function:?}: {samples:?}"));
    }
    let drift = client
        .drift(pb::DriftRequest {
            selector: Some(pb::Selector {
                metric: "gateway.prediction.score".into(),
                matchers: vec![],
            }),
            window_seconds: 60,
            group_by: vec![],
            baseline: Some(pb::drift_request::Baseline::Snapshot("launch".into())),
            at_unix_seconds: at,
        })
        .await
        .unwrap()
        .into_inner();
    out.push(format!("drift: {drift:?}"));
    let quality = client
        .model_quality(pb::ModelQualityRequest {
            model: "m".into(),
            window_seconds: 0,
            k: 5,
        })
        .await
        .unwrap()
        .into_inner();
    out.push(format!("quality: {quality:?}"));
    let exemplars = client
        .exemplars(pb::ExemplarsRequest {
            service: "gateway".into(),
            model: String::new(),
            version: 0,
            status: pb::ExemplarStatus::Unspecified as i32,
            since_seconds: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exemplars.exemplars.len(), 2, "{exemplars:?}");
    out.push(format!("exemplars: {exemplars:?}"));
    let mut catalog = client
        .list_metrics(pb::ListMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(catalog.disk_bytes > 0, "the catalog reports the disk used");
    catalog.disk_bytes = 0;
    out.push(format!("catalog: {catalog:?}"));
    out
}

/// Stopped with SIGTERM and started again, the collector gives the same answer to every query
/// about the same second, its pinned baseline and its prediction–feedback join included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_collector_answers_every_query_as_before() {
    let dir = data_dir("term");
    let first = start(&dir).await;
    let mut otlp = MetricsServiceClient::new(connect(first.addr).await);
    let start_ns = now_ns();
    for step in 1..=4u64 {
        let points = (0..SHOPS)
            .map(|i| {
                let v = (step * (i as u64 + 1)) as f64;
                (vec![attribute("shop", &format!("s{i}"))], v)
            })
            .collect();
        otlp.export(export_from(
            "checkout",
            Some("checkout-0"),
            vec![
                counter("orders.placed", start_ns, points),
                score_histogram(&[step, 10, 20 - step, 5]),
                queue_gauge(step as f64 * 1.5),
            ],
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut client = queries(first.addr).await;
    client
        .pin_baseline(pb::PinBaselineRequest {
            name: "launch".into(),
            selector: Some(pb::Selector {
                metric: "gateway.prediction.score".into(),
                matchers: vec![],
            }),
            window_seconds: 60,
            group_by: vec![],
        })
        .await
        .unwrap();
    let mut ingest = pb::record_ingest_client::RecordIngestClient::new(connect(first.addr).await);
    let mut records = Vec::new();
    for i in 0..30u32 {
        let id = format!("r{i}");
        records.push(pb::Record {
            kind: Some(pb::record::Kind::Prediction(pb::PredictionRecord {
                request_id: id.clone(),
                model: "m".into(),
                version: 2,
                task: pb::PredictionTask::Classify as i32,
                items: vec!["0".into()],
                scores: vec![(i % 10) as f32 / 10.0],
                at_unix_ms: 0,
                tenant: "shop".into(),
                texts: vec![],
            })),
        });
        records.push(pb::Record {
            kind: Some(pb::record::Kind::Feedback(pb::FeedbackRecord {
                request_id: id,
                item_id: "0".into(),
                event: pb::FeedbackEvent::Label as i32,
                label: u32::from(i % 3 == 0),
                at_unix_ms: 0,
            })),
        });
    }
    let pushed = ingest
        .push(pb::PushRecordsRequest {
            records,
            dropped_by_sender: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pushed.refused, 0);
    // A failed span and a slow one: exemplars.
    let end = now_ns();
    let model = || vec![attribute("model", "minilm-l6")];
    TraceServiceClient::new(connect(first.addr).await)
        .export(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![attribute("service.name", "gateway")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span(1, end, 5, true, model()),
                        span(2, end, 900, false, model()),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    // A second that is over: its answers can no longer change.
    let at = unix_s();
    while unix_s() <= at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = answers(first.addr, at).await;
    assert!(before[0].contains("value"), "{before:?}");
    assert!(
        first.terminate().await,
        "SIGTERM ends the collector with status 0"
    );
    let second = start(&dir).await;
    let after = answers(second.addr, at).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a, b, "an answer changed across the restart");
    }
    second.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A log whose last record was half written when the collector died: the collector starts,
/// cuts the tail at the last whole record, and keeps everything before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_cut_and_the_rest_kept() {
    let dir = data_dir("torn");
    let first = start(&dir).await;
    let mut otlp = MetricsServiceClient::new(connect(first.addr).await);
    for _ in 0..5 {
        otlp.export(export_from("checkout", None, vec![delta("clicks", 3.0)]))
            .await
            .unwrap();
    }
    // The flusher writes every 200 ms: wait until the log holds all five.
    let segment = eventually("the log holds the points", Duration::from_secs(5), || {
        let dir = dir.clone();
        async move {
            let mut segments: Vec<_> = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            segments.sort();
            let last = segments.pop()?;
            (std::fs::metadata(&last).ok()?.len() > 200).then_some(last)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill().await;
    let whole = std::fs::metadata(&segment).unwrap().len();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap();
        // A record header promising 90 bytes, and only some of them.
        f.write_all(&[90, 0, 0, 0, 7, 7, 7, 7, 1, 2, 3]).unwrap();
    }
    let second = start(&dir).await;
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        whole,
        "the torn record is cut, the whole ones kept"
    );
    let clicks = total(second.addr, "clicks", Function::Increase, 300, 0).await;
    assert_eq!(clicks, 15.0, "the five points before the tear");
    second.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

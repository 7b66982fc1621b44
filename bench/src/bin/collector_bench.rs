//! Benchmarks a running metrics collector: OTLP ingest rate (batches of 1,000 data points,
//! pre-encoded so that the sender costs little), its resident memory for 10,000 active series,
//! and the latency of queries over those series.
//!
//! `scripts/bench.sh` starts `target/release/metrics-collector` and runs this against it:
//!
//!     collector_bench --addr 127.0.0.1:4317 --pid 1234 --duration-secs 10
//!
//! Prints one JSON object: points per second, resident memory before and after, the windows'
//! reserved bytes, and query latency percentiles.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use clap::Parser;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use proto::monitoring::metrics::v1 as pb;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Measures a running metrics collector.
#[derive(Debug, Parser)]
struct Args {
    /// The collector's gRPC address.
    #[arg(long)]
    addr: String,
    /// The collector's process id, to read its resident memory.
    #[arg(long)]
    pid: u32,
    /// Seconds of ingest.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Concurrent senders (each its own connection).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Active counter series (spread over 10 models).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Queries per measured query kind.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
}

/// Sends pre-encoded protobuf bodies.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

fn attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn request(metrics: Vec<Metric>) -> Bytes {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "bench".into())],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
    .into()
}

/// Batches of 1,000 counter points covering `series` series (labels model, version, user).
fn counter_batches(series: usize, start: u64, value: f64) -> Vec<Bytes> {
    (0..series)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|users| {
            let points = users
                .iter()
                .map(|u| NumberDataPoint {
                    attributes: vec![
                        attribute("model", format!("model-{}", u % 10)),
                        attribute("model_version", "1".into()),
                        attribute("user", format!("user-{u}")),
                    ],
                    start_time_unix_nano: start,
                    time_unix_nano: now_ns(),
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                })
                .collect();
            request(vec![Metric {
                name: "bench.requests".into(),
                data: Some(Data::Sum(Sum {
                    data_points: points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            }])
        })
        .collect()
}

/// 1,000 histogram series (12 buckets), one delta point each.
fn histogram_batch() -> Bytes {
    let bounds: Vec<f64> = (1..=11).map(|i| 0.001 * f64::from(1 << i)).collect();
    let points = (0..1000)
        .map(|u| HistogramDataPoint {
            attributes: vec![
                attribute("model", format!("model-{}", u % 10)),
                attribute("replica", format!("replica-{u}")),
            ],
            time_unix_nano: now_ns(),
            count: 66,
            sum: Some(1.0),
            bucket_counts: (0..12).collect(),
            explicit_bounds: bounds.clone(),
            ..Default::default()
        })
        .collect();
    request(vec![Metric {
        name: "bench.duration".into(),
        unit: "s".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }])
}

async fn export(grpc: &mut tonic::client::Grpc<Channel>, body: Bytes) -> anyhow::Result<()> {
    grpc.ready().await?;
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        ),
        RawCodec,
    )
    .await?;
    Ok(())
}

fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // Linux reports in clock ticks, 100 per second on every common configuration.
    Ok(ticks / 100.0)
}

fn percentiles(mut micros: Vec<u64>) -> serde_json::Value {
    micros.sort_unstable();
    let at =
        |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)] as f64 / 1000.0;
    serde_json::json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)})
}

async fn time_queries(
    client: &mut pb::metrics_query_client::MetricsQueryClient<Channel>,
    request: pb::QueryRequest,
    n: usize,
) -> anyhow::Result<(serde_json::Value, usize)> {
    let mut micros = Vec::with_capacity(n);
    let mut groups = 0;
    for _ in 0..n {
        let started = Instant::now();
        let answer = client.query(request.clone()).await?.into_inner();
        micros.push(started.elapsed().as_micros() as u64);
        groups = answer.samples.len();
    }
    Ok((percentiles(micros), groups))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoint = format!("http://{}", args.addr);
    let before_kib = resident_kib(args.pid)?;
    let start = now_ns();

    // Ingest: every sender loops over pre-encoded rounds of batches (counter values growing
    // from round to round), so that the measured cost is the collector's, not the encoding's.
    let rounds: Vec<Vec<Bytes>> = (1..=8)
        .map(|round| counter_batches(args.series, start, f64::from(round * 10)))
        .collect();
    let rounds = std::sync::Arc::new(rounds);
    let cpu_before = cpu_seconds(args.pid)?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..args.senders {
        let channel = Channel::from_shared(endpoint.clone())?.connect().await?;
        let rounds = rounds.clone();
        tasks.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let mut points = 0_u64;
            let mut round = sender;
            while Instant::now() < deadline {
                for body in &rounds[round % rounds.len()] {
                    export(&mut grpc, body.clone()).await?;
                    points += 1000;
                }
                round += 1;
            }
            anyhow::Ok(points)
        }));
    }
    let mut points = 0;
    for task in tasks {
        points += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let collector_cpu = cpu_seconds(args.pid)? - cpu_before;
    let after_kib = resident_kib(args.pid)?;

    // Encoding cost is on the sender: measure it separately so the rate can be read both ways.
    let encode_started = Instant::now();
    let encoded = counter_batches(args.series, start, 1.0).len() * 1000;
    let encode_per_s = encoded as f64 / encode_started.elapsed().as_secs_f64();

    let channel = Channel::from_shared(endpoint)?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    export(&mut grpc, histogram_batch()).await?;
    let mut client = pb::metrics_query_client::MetricsQueryClient::new(channel);
    let selector = |metric: &str| {
        Some(pb::Selector {
            metric: metric.into(),
            matchers: vec![],
        })
    };
    let rate = pb::QueryRequest {
        selector: selector("bench.requests"),
        function: pb::Function::Rate as i32,
        window_seconds: 300,
        quantile: 0.0,
        group_by: vec!["model".into()],
        at_unix_seconds: 0,
    };
    let (rate_latency, rate_groups) = time_queries(&mut client, rate, args.queries).await?;
    let matched = pb::QueryRequest {
        selector: Some(pb::Selector {
            metric: "bench.requests".into(),
            matchers: vec![pb::LabelMatcher {
                name: "user".into(),
                value: "user-1.*".into(),
                op: pb::MatchOp::Regex as i32,
            }],
        }),
        function: pb::Function::Increase as i32,
        window_seconds: 3600,
        quantile: 0.0,
        group_by: vec![],
        at_unix_seconds: 0,
    };
    let (regex_latency, _) = time_queries(&mut client, matched, args.queries).await?;
    let quantile = pb::QueryRequest {
        selector: selector("bench.duration"),
        function: pb::Function::Quantile as i32,
        window_seconds: 300,
        quantile: 0.99,
        group_by: vec!["model".into()],
        at_unix_seconds: 0,
    };
    let (quantile_latency, _) = time_queries(&mut client, quantile, args.queries).await?;
    let listed = client
        .list_metrics(pb::ListMetricsRequest {})
        .await?
        .into_inner();
    let report = serde_json::json!({
        "ingest": {
            "points": points,
            "seconds": elapsed,
            "points_per_second": points as f64 / elapsed,
            "senders": args.senders,
            "batch_points": 1000,
            "sender_encode_points_per_second": encode_per_s,
            "collector_cpu_seconds": collector_cpu,
            "points_per_collector_cpu_second": points as f64 / collector_cpu,
        },
        "memory": {
            "series": args.series,
            "resident_kib_before": before_kib,
            "resident_kib_after": after_kib,
            "resident_kib_added": after_kib.saturating_sub(before_kib),
            "window_bytes_reserved": listed.window_bytes,
        },
        "query": {
            "rate_5m_10k_series_by_model": rate_latency,
            "rate_groups": rate_groups,
            "increase_1h_regex_matcher_10k_series": regex_latency,
            "quantile_5m_1k_histograms_by_model": quantile_latency,
        },
        "refused_points": listed.refused_points,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

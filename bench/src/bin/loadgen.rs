//! `loadgen`: a closed-loop gRPC load generator for the inference service and the gateway.
//!
//! `--concurrency` workers each send one request, wait for its answer and send the next, for
//! `--warmup-secs` unmeasured and then `--duration-secs` measured seconds. The texts cycle
//! through sixty-four realistic product-search texts (about 32 tokens each), so the dynamic
//! batcher sees a real token mix. Prints one JSON object: requests/s, latency percentiles and
//! errors by status code.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::latency::LatencyRecorder;
use bench::texts::PRODUCT_SEARCHES;
use clap::{Parser, ValueEnum};
use proto::ecommerce::gateway::v1::gateway_client::GatewayClient;
use proto::ecommerce::gateway::v1::{Candidate, RankRequest};
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use proto::inference::{ModelInferRequest, ModelMetadataRequest};
use proto::serving::inference::v1::inference_tasks_client::InferenceTasksClient;
use proto::serving::inference::v1::{EmbedRequest, ModelRef};
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Closed-loop load generator: N workers send embedding requests back to back over gRPC and
/// measure throughput (requests/s), latency (p50/p90/p99, ms) and errors. Prints one JSON
/// object to stdout.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about)]
struct Args {
    /// The inference service or the gateway, `host:port` or `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    addr: String,

    /// Which API to call.
    #[arg(long, value_enum, default_value_t = Api::Oip)]
    api: Api,

    /// Model to call.
    #[arg(long, default_value = "minilm-l6")]
    model: String,

    /// Workers, each with one request in flight at all times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,

    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// Unmeasured seconds of load before the measurement starts.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,

    /// Texts in each request (rows of the request's batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    texts_per_request: u32,

    /// Cycle through only the first N of the 64 texts. 1 sends the in-process benchmark's
    /// default sentence (exactly 32 tokens) every time: a like-for-like comparison with
    /// `inprocess`, free of padding to the longest text of each batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=64))]
    texts: u32,

    /// HTTP/2 connections the workers share, round-robin; 0 opens one per worker.
    /// One connection multiplexes every worker's requests and measured as fast as one per
    /// worker on a 2-core machine (see bench/history/2026-11-29-served-model.md).
    #[arg(long, default_value_t = 1)]
    connections: u32,

    /// API key sent as `authorization: Bearer <key>` (for calls through the gateway).
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// A second address (say, the gateway in front of `--addr`): every worker alternates its
    /// requests between the two, and the report adds the second's latency and the difference
    /// of each percentile (`added_ms`). Alternating request by request cancels the drift of a
    /// shared machine, which moves separate runs by more than a hop costs. Requests per
    /// second then count both sides.
    #[arg(long)]
    versus: Option<String>,

    /// Threads of the load generator's async runtime. Keep it small: the generator shares
    /// the machine's cores with the service it measures.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    client_threads: u32,

    /// TLS for an `https://` address (either of --addr and --versus): the mesh's CA, and a
    /// client certificate for a service that asks for one. `http://` addresses stay plaintext.
    #[command(flatten)]
    tls: shared::tls::TlsArgs,
}

/// The API a worker calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Api {
    /// Open Inference Protocol `ModelInfer` (input `TEXT`, BYTES `[n, 1]`, raw contents, as
    /// `tritonclient` sends it), asking for `sentence_embedding`.
    Oip,
    /// The task API's `Embed`.
    Task,
    /// The gateway's `Rank`: the request's text as the query against 100 fixed product
    /// candidates (after the warm-up their embeddings all come from the gateway's cache).
    GatewayRank,
    /// Open Inference Protocol `ModelMetadata`: no model run, so the figures are the cost of
    /// the gRPC hops alone (through the gateway: what forwarding adds).
    Metadata,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Oip => "oip",
            Api::Task => "task",
            Api::GatewayRank => "gateway-rank",
            Api::Metadata => "metadata",
        }
    }
}

/// A connected client of one API.
#[derive(Clone)]
enum Client {
    Oip(GrpcInferenceServiceClient<Channel>),
    Metadata(GrpcInferenceServiceClient<Channel>),
    Task(InferenceTasksClient<Channel>),
    Rank(GatewayClient<Channel>),
}

/// Wraps a message with the API key, if any.
fn with_key<T>(message: T, key: Option<&MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", key.clone());
    }
    request
}

/// The 100 candidates of `--api gateway-rank`: the 64 product texts and 36 variants.
fn rank_candidates() -> Vec<Candidate> {
    let texts = PRODUCT_SEARCHES.as_slice();
    (0..100)
        .map(|i| {
            let text = if i < texts.len() {
                texts[i].clone()
            } else {
                format!("{} (bundle {i})", texts[i % texts.len()])
            };
            Candidate {
                id: format!("sku-{i}"),
                text,
            }
        })
        .collect()
}

impl Client {
    fn new(api: Api, channel: Channel) -> Client {
        match api {
            Api::Oip => Client::Oip(GrpcInferenceServiceClient::new(channel)),
            Api::Metadata => Client::Metadata(GrpcInferenceServiceClient::new(channel)),
            Api::Task => Client::Task(InferenceTasksClient::new(channel)),
            Api::GatewayRank => Client::Rank(GatewayClient::new(channel)),
        }
    }

    /// Sends one request for `texts` and waits for its answer.
    async fn call(
        &mut self,
        model: &str,
        texts: &[&str],
        key: Option<&MetadataValue<Ascii>>,
        candidates: &[Candidate],
    ) -> Result<(), tonic::Status> {
        match self {
            Client::Oip(client) => {
                // BYTES elements, each prefixed by its 4-byte little-endian length.
                let mut raw = Vec::new();
                for text in texts {
                    raw.extend_from_slice(&(text.len() as u32).to_le_bytes());
                    raw.extend_from_slice(text.as_bytes());
                }
                let request = ModelInferRequest {
                    model_name: model.to_owned(),
                    inputs: vec![InferInputTensor {
                        name: "TEXT".into(),
                        datatype: "BYTES".into(),
                        shape: vec![texts.len() as i64, 1],
                        ..Default::default()
                    }],
                    outputs: vec![InferRequestedOutputTensor {
                        name: "sentence_embedding".into(),
                        ..Default::default()
                    }],
                    raw_input_contents: vec![raw.into()],
                    ..Default::default()
                };
                client.model_infer(with_key(request, key)).await.map(drop)
            }
            Client::Metadata(client) => {
                let request = ModelMetadataRequest {
                    name: model.to_owned(),
                    version: String::new(),
                };
                client
                    .model_metadata(with_key(request, key))
                    .await
                    .map(drop)
            }
            Client::Task(client) => {
                let request = EmbedRequest {
                    model: Some(ModelRef {
                        name: model.to_owned(),
                        version: 0,
                    }),
                    texts: texts.iter().map(|t| (*t).to_owned()).collect(),
                };
                client.embed(with_key(request, key)).await.map(drop)
            }
            Client::Rank(client) => {
                let request = RankRequest {
                    query: texts.join(" "),
                    candidates: candidates.to_vec(),
                    top_k: 10,
                };
                client.rank(with_key(request, key)).await.map(drop)
            }
        }
    }
}

/// What one worker measured (of one address).
#[derive(Default)]
struct WorkerReport {
    latency: LatencyRecorder,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl WorkerReport {
    /// Adds `other`'s counts to these.
    fn merge(&mut self, other: WorkerReport) {
        self.latency.merge(&other.latency);
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// `addr` as a URI (`http://` added when it has no scheme).
fn uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// `connections` HTTP/2 connections to `addr`.
async fn connect(
    addr: &str,
    connections: u32,
    tls: &shared::tls::MeshTls,
) -> anyhow::Result<Vec<Channel>> {
    let mut endpoint = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("{addr} is not a valid URI"))?
        .tcp_nodelay(true);
    if addr.starts_with("https://") {
        let config = tls
            .client(None)
            .with_context(|| format!("{addr} is https: give --tls-ca"))?;
        endpoint = endpoint.tls_config(config)?;
    }
    let mut channels = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
        );
    }
    Ok(channels)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.duration_secs > 0.0 && args.warmup_secs >= 0.0) {
        bail!("--duration-secs must be positive and --warmup-secs not negative");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .enable_all()
        .build()?
        .block_on(generate(args))
}

async fn generate(args: Args) -> anyhow::Result<()> {
    let addr = uri(&args.addr);
    let connections = if args.connections == 0 {
        args.concurrency
    } else {
        args.connections.min(args.concurrency)
    };
    let tls = shared::tls::MeshTls::load_client(&args.tls)?;
    let channels = connect(&addr, connections, &tls).await?;
    let versus = match &args.versus {
        Some(versus) => {
            let versus = uri(versus);
            let channels = connect(&versus, connections, &tls).await?;
            Some((versus, channels))
        }
        None => None,
    };

    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup_secs);
    let measure_until = measure_from + Duration::from_secs_f64(args.duration_secs);
    let per_request = args.texts_per_request as usize;
    let texts_used = args.texts as usize;
    let key = args
        .api_key
        .as_deref()
        .map(|k| format!("Bearer {k}").parse::<MetadataValue<Ascii>>())
        .transpose()
        .context("--api-key holds characters not allowed in gRPC metadata")?;
    let candidates = std::sync::Arc::new(rank_candidates());
    let workers = (0..args.concurrency as usize).map(|worker| {
        let mut clients = vec![Client::new(
            args.api,
            channels[worker % channels.len()].clone(),
        )];
        if let Some((_, channels)) = &versus {
            clients.push(Client::new(
                args.api,
                channels[worker % channels.len()].clone(),
            ));
        }
        let model = args.model.clone();
        let (key, candidates) = (key.clone(), candidates.clone());
        tokio::spawn(async move {
            let mut reports: Vec<WorkerReport> =
                clients.iter().map(|_| WorkerReport::default()).collect();
            let mut turn = clients.len() - 1;
            // Workers start at different texts so that concurrent requests differ.
            let mut next = worker * 17;
            let mut texts = Vec::with_capacity(per_request);
            while Instant::now() < measure_until {
                turn = (turn + 1) % clients.len();
                // With `--versus`, both addresses get the same texts, one after the other.
                if turn == 0 {
                    texts.clear();
                    for _ in 0..per_request {
                        texts.push(PRODUCT_SEARCHES[next % texts_used].as_str());
                        next += 1;
                    }
                }
                let sent = Instant::now();
                let result = clients[turn]
                    .call(&model, &texts, key.as_ref(), &candidates)
                    .await;
                let done = Instant::now();
                if done < measure_from || done > measure_until {
                    continue;
                }
                let report = &mut reports[turn];
                match result {
                    Ok(()) => report.latency.record(done - sent),
                    Err(status) => {
                        *report
                            .errors
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                        report.first_error.get_or_insert_with(|| status.to_string());
                    }
                }
            }
            reports
        })
    });
    let mut totals = vec![WorkerReport::default(), WorkerReport::default()];
    for reports in futures::future::join_all(workers.collect::<Vec<_>>()).await {
        let reports = reports.context("a worker panicked")?;
        for (total, report) in totals.iter_mut().zip(reports) {
            total.merge(report);
        }
    }
    let versus_total = totals.pop().expect("two totals");
    let total = totals.pop().expect("two totals");

    let ok = total.latency.count() + versus_total.latency.count();
    let errors: u64 = total.errors.values().sum();
    let requests_per_sec = ok as f64 / args.duration_secs;
    if let Some(error) = &total.first_error {
        eprintln!("[loadgen] {errors} error(s); first: {error}");
    }
    eprintln!(
        "[loadgen] {} c={}: {requests_per_sec:.1} req/s, {}",
        args.api.name(),
        args.concurrency,
        total.latency.summary()
    );
    let mut report = json!({
        "api": args.api.name(),
        "addr": addr,
        "model": args.model,
        "concurrency": args.concurrency,
        "connections": connections,
        "client_threads": args.client_threads,
        "texts_per_request": args.texts_per_request,
        "distinct_texts": args.texts,
        "warmup_secs": args.warmup_secs,
        "duration_secs": args.duration_secs,
        "requests": ok,
        "errors": errors,
        "errors_by_code": total.errors,
        "first_error": total.first_error,
        "requests_per_sec": requests_per_sec,
        "texts_per_sec": requests_per_sec * f64::from(args.texts_per_request),
        "latency": total.latency.summary(),
    });
    if let Some((versus, _)) = &versus {
        let (main, other) = (total.latency.summary(), versus_total.latency.summary());
        let added =
            |p: &str| other[p].as_f64().unwrap_or(f64::NAN) - main[p].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "[loadgen] versus {versus}: {other}; added p50 {:+.3} ms",
            added("p50_ms")
        );
        report["versus"] = json!({
            "addr": versus,
            "requests": versus_total.latency.count(),
            "errors": versus_total.errors.values().sum::<u64>(),
            "errors_by_code": versus_total.errors,
            "first_error": versus_total.first_error,
            "latency": other,
        });
        report["added_ms"] = json!({
            "p50": added("p50_ms"),
            "p90": added("p90_ms"),
            "p99": added("p99_ms"),
            "mean": added("mean_ms"),
        });
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

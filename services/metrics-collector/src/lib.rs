//! The metrics collector: receives OTLP metrics and traces from every service of the mesh,
//! keeps every series in bounded time windows, answers queries over them (rates, ratios,
//! quantiles, drift) for the alert-manager and operators, joins delayed feedback to predictions
//! for online model quality, keeps exemplar traces, and exposes Prometheus text on `/metrics`.
//!
//! [`otlp`] decodes OTLP into [`store`] points kept in [`window`] rings; [`query`] reads them;
//! [`join`] holds predictions and feedback; [`exemplars`] the slow and failed spans;
//! [`statistics`] the formulas; [`grpc`] the `monitoring.metrics.v1` handlers; [`prometheus`]
//! renders the current values.

pub mod durable;
pub mod exemplars;
pub mod grpc;
pub mod join;
pub mod otlp;
pub mod prometheus;
pub mod query;
pub mod sanitize;
pub mod senders;
pub mod statistics;
pub mod store;
pub mod window;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use proto::monitoring::metrics::v1::metrics_query_server::MetricsQueryServer;
use proto::monitoring::metrics::v1::record_ingest_server::RecordIngestServer;
use shared::serving::Serving;
use shared::telemetry::TelemetryArgs;
use shared::tls::{Callers, MeshTls, TlsArgs};
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;

use crate::exemplars::ExemplarRings;
use crate::grpc::QueryService;
use crate::join::FeedbackJoin;
use crate::otlp::OtlpReceiver;
use crate::store::{Limits, MetricStore};

/// Receives OTLP metrics and traces from the mesh and exposes the metrics in Prometheus text
/// format on `/metrics`.
///
/// Every flag can also be set through the environment variable named in its help.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "metrics-collector", version, about, long_about)]
pub struct Config {
    /// Address of the OTLP/gRPC receiver (the standard OTLP port).
    #[arg(long, env = "COLLECTOR_LISTEN", default_value = "127.0.0.1:4317")]
    pub listen: SocketAddr,

    /// Address of the HTTP server that exposes `/metrics` in Prometheus text format.
    #[arg(long, env = "COLLECTOR_HTTP_LISTEN", default_value = "127.0.0.1:9464")]
    pub http_listen: SocketAddr,

    /// Series kept per metric; points of further series are refused and counted
    /// (`collector_refused_points_total`), so memory stays bounded under an attribute explosion.
    #[arg(long, env = "COLLECTOR_MAX_SERIES", default_value_t = 10_000)]
    pub max_series: usize,

    /// Metrics (distinct names) kept, all senders together; points of further metrics are
    /// refused and counted.
    #[arg(long, env = "COLLECTOR_MAX_METRICS", default_value_t = 10_000)]
    pub max_metrics: usize,

    /// Metrics one sender may create and hold, so that one sender's made-up names cannot take
    /// every other sender's room. A sender is the key it presents (`--api-keys`), or its
    /// `service.name` when no key is configured; a metric whose series all went silent and
    /// were retired (`--retire-after-hours`) no longer counts.
    #[arg(
        long,
        env = "COLLECTOR_MAX_METRICS_PER_SENDER",
        default_value_t = 1_000
    )]
    pub max_metrics_per_sender: usize,

    /// Memory for the time windows of all series together, in MiB. Each series reserves its
    /// windows when first seen (1 s steps for an hour, 1 min steps for a day, 1 h steps for a
    /// week: about 42 KiB for a counter, 8 bytes per step per histogram bucket); further series
    /// are refused and counted.
    #[arg(long, env = "COLLECTOR_WINDOW_MEMORY_MB", default_value_t = 2048)]
    pub window_memory_mb: u64,

    /// Seconds without a point after which a series is stale, as when the replica that sent it
    /// went away: it no longer counts in instant (`last`) queries and leaves `/metrics`.
    /// Window queries (rate, increase, ...) still count what it sent within their window.
    /// Keep it above two export intervals of the slowest sender (OpenTelemetry SDKs export
    /// every 60 s by default; the mesh's services every second).
    #[arg(long, env = "COLLECTOR_STALE_AFTER_SECONDS", default_value_t = 120)]
    pub stale_after_seconds: i64,

    /// Directory where the collector keeps its state (a write-ahead log of every point,
    /// prediction and feedback, and snapshots of every window), so that a restart forgets
    /// nothing: a SIGKILL loses at most the last fraction of a second, a SIGTERM nothing. One
    /// collector per directory (a lock file says so). Without it, the state lives in memory
    /// only and a restart starts the windows afresh.
    #[arg(long, env = "COLLECTOR_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// Longest time between two snapshots of the state, in seconds (start-up replays the log
    /// written since the last one).
    #[arg(long, env = "COLLECTOR_SNAPSHOT_EVERY_SECONDS", default_value_t = 60)]
    pub snapshot_every_seconds: u64,

    /// Size of the write-ahead log, in MiB, after which a snapshot is taken early; it bounds
    /// the disk the log takes and the time a restart spends replaying it.
    #[arg(long, env = "COLLECTOR_WAL_MAX_MB", default_value_t = 256)]
    pub wal_max_mb: u64,

    /// Hours without a point after which a series is removed with its windows, so that the
    /// room of replicas gone for good (each pod's series are its own) is given back; checked
    /// every ten minutes; a metric left without series leaves the store (and its sender's
    /// `--max-metrics-per-sender` count). The default, a week, is the longest tier's reach: no query loses
    /// anything it could still read. Lower it where pods come and go many times a week; 0
    /// keeps every series until the collector's state is removed.
    #[arg(long, env = "COLLECTOR_RETIRE_AFTER_HOURS", default_value_t = 168)]
    pub retire_after_hours: u64,

    /// How long a prediction waits for its feedback in the prediction–feedback join, seconds.
    #[arg(long, env = "COLLECTOR_JOIN_WINDOW_SECONDS", default_value_t = 3600)]
    pub join_window_seconds: u32,

    /// Predictions held in the join; when full, the oldest leave first (counted).
    #[arg(
        long,
        env = "COLLECTOR_JOIN_MAX_PREDICTIONS",
        default_value_t = 200_000
    )]
    pub join_max_predictions: usize,

    /// A span at least this long (milliseconds) is kept as a slow exemplar; failed spans always
    /// are.
    #[arg(long, env = "COLLECTOR_SLOW_SPAN_MS", default_value_t = 250.0)]
    pub slow_span_ms: f64,

    /// Exemplars kept per service (the oldest go first), for at most 64 services.
    #[arg(long, env = "COLLECTOR_EXEMPLARS_PER_SERVICE", default_value_t = 1000)]
    pub exemplars_per_service: usize,

    /// Largest accepted OTLP message, in bytes.
    #[arg(long, env = "COLLECTOR_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// How long shutdown waits for in-flight calls to finish, in seconds (health turns
    /// NOT_SERVING first; calls still running then are abandoned).
    #[arg(long, env = "COLLECTOR_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Keys of the senders, as `key:tenant:role` (comma-separated). With any configured, OTLP
    /// exports, record pushes and baseline pins need one (`authorization: Bearer <key>`;
    /// OpenTelemetry SDKs send it from `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<key>`),
    /// so that no neighbour can forge the numbers the alert rules act on. Queries stay open.
    /// Without keys, anyone who reaches the port may write (a warning says so at start).
    #[arg(
        long,
        env = "COLLECTOR_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// A TOML file of sender keys (SHA-256 digests, as `deploy/api-keys.example.toml`), read
    /// with `--api-keys`.
    #[arg(long, env = "COLLECTOR_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// TLS: the collector asks its callers (senders and queriers) for a certificate signed by
    /// the mesh's CA. The Prometheus `/metrics` listener stays plain HTTP.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Telemetry (the collector's own logs; leave the OTLP endpoint unset or it exports to itself).
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Why the collector stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    /// The sender keys could not be read.
    #[error("API keys: {0}")]
    Keys(#[from] shared::auth::KeyStoreError),
    /// The TLS certificates could not be read, or none was given without `--plaintext`.
    #[error("TLS: {0}")]
    Tls(#[from] shared::tls::TlsError),
    /// The data directory cannot be used.
    #[error("{0}")]
    Data(#[from] durable::DurableError),
}

/// Serves OTLP on `grpc` and `/metrics` on `http` until `shutdown` resolves.
pub async fn serve(
    grpc: TcpListener,
    http: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = MeshTls::load(&config.tls)?;
    let recovery = match &config.data_dir {
        Some(dir) => Some(durable::Recovery::begin(durable::Options {
            dir: dir.clone(),
            snapshot_every: Duration::from_secs(config.snapshot_every_seconds.max(1)),
            wal_max_bytes: config.wal_max_mb.max(1).saturating_mul(1024 * 1024),
        })?),
        None => {
            tracing::warn!(
                "no --data-dir: the windows live in memory only, and a restart starts them afresh"
            );
            None
        }
    };
    let started_ns = recovery
        .as_ref()
        .map_or_else(durable::now_ns, durable::Recovery::started_ns);
    let store = Arc::new(MetricStore::new(Limits {
        max_series: config.max_series,
        max_window_bytes: config.window_memory_mb.saturating_mul(1024 * 1024),
        max_families: config.max_metrics,
        max_families_per_sender: config.max_metrics_per_sender,
        started_ns,
        stale_after_seconds: config.stale_after_seconds.max(1),
    }));
    let exemplars = Arc::new(ExemplarRings::new(
        config.exemplars_per_service,
        64,
        config.slow_span_ms,
    ));
    let join = Arc::new(FeedbackJoin::new(
        i64::from(config.join_window_seconds) * 1000,
        config.join_max_predictions,
    ));
    let senders = senders::Senders::new(shared::auth::ApiKeys::load(
        config.api_keys_file.as_deref(),
        &config.api_keys,
    )?);
    let baselines = Arc::new(query::Baselines::new(256));
    let durable = match recovery {
        Some(recovery) => {
            let file = recovery.dir().join("baselines.bin");
            baselines
                .keep_in(file.clone())
                .map_err(|error| durable::DurableError::Io { dir: file, error })?;
            let (store, join, exemplars) = (store.clone(), join.clone(), exemplars.clone());
            Some(
                tokio::task::spawn_blocking(move || recovery.finish(&store, &join, &exemplars))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??,
            )
        }
        None => None,
    };
    if config.retire_after_hours > 0 {
        let after =
            i64::try_from(config.retire_after_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
        let store = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(600));
            loop {
                every.tick().await;
                let store = store.clone();
                let cutoff = otlp::unix_now().saturating_sub(after);
                let removed = tokio::task::spawn_blocking(move || store.retire_silent(cutoff))
                    .await
                    .unwrap_or(0);
                if removed > 0 {
                    tracing::info!(removed, "series silent for --retire-after-hours removed");
                }
            }
        });
    }
    let receiver = OtlpReceiver::new(store.clone(), exemplars.clone(), senders.clone());
    let (mut routes, health, health_only) = shared::grpc::base_routes().await?;
    let mut serving = Serving::new(
        "metrics-collector",
        health,
        Duration::from_secs(config.shutdown_grace_secs),
    );
    shared::tls::health_port(&mut serving, &config.tls, health_only).await?;
    let stop = serving.stop_signal();
    let queries = QueryService::new(
        store.clone(),
        join,
        exemplars,
        receiver.clone(),
        stop.clone(),
        senders,
    )
    .with_state(baselines, durable.clone());
    let limit = config.max_message_bytes;
    routes
        .add_service(
            MetricsServiceServer::new(receiver.clone())
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            TraceServiceServer::new(receiver)
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(MetricsQueryServer::new(queries.clone()))
        .add_service(
            RecordIngestServer::new(queries)
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip),
        );

    let metrics_store = store.clone();
    let metrics_durable = durable.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let store = metrics_store.clone();
            let disk = metrics_durable.as_ref().map(|d| d.disk_bytes());
            async move {
                let body =
                    prometheus::render(&store.snapshot(otlp::unix_now()), store.refused(), disk);
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    body,
                )
            }
        }),
    );
    let http_stop = stop.clone();
    serving.also_drain(
        "/metrics",
        tokio::spawn(async move {
            axum::serve(http, app)
                .with_graceful_shutdown(http_stop.wait())
                .await
                .map_err(Into::into)
        }),
    );
    tracing::info!(otlp = ?grpc.local_addr().ok(), tls = !tls.is_plaintext(), "metrics collector listening");
    serving.spawn(
        shared::tls::server_builder(&tls, Callers::MustPresentCertificate)?
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(shared::grpc::incoming(grpc), stop.wait()),
    );
    serving.ready(&[]).await;
    let served = serving.run_until(shutdown).await;
    if let Some(durable) = durable {
        // Every call has ended: a last snapshot holds everything received.
        let _ = tokio::task::spawn_blocking(move || durable.close()).await;
    }
    served?;
    tracing::info!("metrics collector stopped");
    Ok(())
}

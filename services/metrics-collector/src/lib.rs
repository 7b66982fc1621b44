//! The metrics collector: receives OTLP metrics (and traces) from every service of the mesh,
//! keeps the current value of every series in a bounded store, and exposes them in Prometheus
//! text format on `/metrics` for existing scrapers and dashboards.
//!
//! [`otlp`] decodes OTLP into [`store`] points; [`prometheus`] renders the store.

pub mod otlp;
pub mod prometheus;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use shared::telemetry::TelemetryArgs;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;

use crate::otlp::OtlpReceiver;
use crate::store::MetricStore;

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

    /// Largest accepted OTLP message, in bytes.
    #[arg(long, env = "COLLECTOR_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

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
}

/// Serves OTLP on `grpc` and `/metrics` on `http` until `shutdown` resolves.
pub async fn serve(
    grpc: TcpListener,
    http: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = Arc::new(MetricStore::new(config.max_series));
    let receiver = OtlpReceiver::new(store.clone());
    let (mut routes, health) = shared::grpc::base_routes().await?;
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
        );

    let (trigger, stop) = shared::shutdown::channel();
    let metrics_store = store.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let store = metrics_store.clone();
            async move {
                let body = prometheus::render(&store.snapshot(), store.refused());
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    body,
                )
            }
        }),
    );
    let http_stop = stop.clone();
    let http_server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(http_stop.wait())
            .await
    });
    health
        .set_service_status("", shared::grpc::ServingStatus::Serving)
        .await;
    tracing::info!(otlp = ?grpc.local_addr().ok(), "metrics collector listening");
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(shared::grpc::incoming(grpc), stop.wait()),
    );
    shutdown.await;
    trigger.trigger();
    shared::grpc::server_outcome(grpc_server.await)?;
    if let Ok(result) = http_server.await {
        result?;
    }
    tracing::info!("metrics collector stopped");
    Ok(())
}

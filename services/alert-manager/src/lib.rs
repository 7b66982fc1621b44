//! The alert-manager service. Evaluates alert rules and keeps incidents in PostgreSQL. This build serves health and reflection only.

use std::future::Future;
use std::net::SocketAddr;

use shared::telemetry::TelemetryArgs;
use tokio::net::TcpListener;

/// Evaluates alert rules and keeps incidents in PostgreSQL. This build serves health and reflection only.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "alert-manager", version, about, long_about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "ALERT_MANAGER_LISTEN", default_value = "127.0.0.1:50054")]
    pub listen: SocketAddr,

    /// Telemetry.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Why the service stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    _config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (routes, health) = shared::grpc::base_routes().await?;
    health
        .set_service_status("", shared::grpc::ServingStatus::Serving)
        .await;
    tracing::info!(addr = ?listener.local_addr().ok(), "alert-manager listening");
    tonic::transport::Server::builder()
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(shared::grpc::incoming(listener), shutdown)
        .await?;
    Ok(())
}

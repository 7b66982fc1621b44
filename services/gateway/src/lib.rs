//! The gateway service. Front door of the mesh (task API, auth, routing, canary). This build serves health and reflection only.

use std::future::Future;
use std::net::SocketAddr;

use shared::telemetry::TelemetryArgs;
use tokio::net::TcpListener;

/// Front door of the mesh (task API, auth, routing, canary). This build serves health and reflection only.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about, long_about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:50051")]
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
    tracing::info!(addr = ?listener.local_addr().ok(), "gateway listening");
    tonic::transport::Server::builder()
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(shared::grpc::incoming(listener), shutdown)
        .await?;
    Ok(())
}

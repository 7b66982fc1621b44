//! The gateway: the front door for recommender and search services.
//!
//! [`admission`] authenticates, checks roles and rate limits every call before a handler runs;
//! [`grpc`] converts wire types; [`core`] picks the model version ([`canary`]), serves
//! embeddings from the [`cache`] or the inference replicas ([`routing`]), and keeps prediction
//! and feedback [`records`]; [`payload`] logs sampled summaries with personal data masked
//! ([`pii`]).

pub mod admission;
pub mod auth;
pub mod cache;
pub mod call;
pub mod canary;
pub mod config;
pub mod core;
pub mod deployed;
pub mod error;
mod frame;
pub mod grpc;
pub mod idle;
pub mod layers;
pub mod metrics;
pub mod model_infer;
pub mod payload;
pub mod pii;
pub mod ranking;
pub mod readiness;
pub mod records;
pub mod routing;
pub mod shipper;
pub mod unary;
pub mod validation;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::ecommerce::gateway::v1::gateway_admin_server::GatewayAdminServer;
use proto::ecommerce::gateway::v1::gateway_server::GatewayServer;
use proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use shared::serving::Serving;
use shared::tls::{Callers, MeshTls};
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::auth::ApiKeys;
pub use crate::config::GatewayConfig;
use crate::core::GatewayCore;
use crate::layers::StateLayer;
use crate::routing::ReplicaPool;

/// Largest gRPC message the gateway accepts or sends.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The API keys could not be read.
    #[error("API keys: {0}")]
    Keys(#[from] auth::KeyStoreError),
    /// The inference replicas could not be resolved.
    #[error("inference replicas: {0}")]
    Routing(#[from] routing::RoutingError),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// The TLS certificates could not be read, or none was given without `--plaintext`.
    #[error("TLS: {0}")]
    Tls(#[from] shared::tls::TlsError),
    /// The records endpoint is not a valid URI.
    #[error("--records-endpoint '{0}': {1}")]
    RecordsEndpoint(String, String),
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight calls (at most
/// `shutdown_grace_secs`) and returns.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let keys = ApiKeys::load(config.api_keys_file.as_deref(), &config.api_keys)?;
    if keys.is_empty() {
        tracing::warn!(
            "no API keys configured: every call except health and reflection will be refused"
        );
    }
    let tls = MeshTls::load(&config.tls)?;
    let pool =
        Arc::new(ReplicaPool::resolve(&config.inference, config.retry_ratio, tls.clone()).await?);
    let deployed = match config
        .database_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) => Some(Arc::new(
            deployed::DeployedState::new(url)
                .map_err(|err| ServeError::Config(format!("--database-url: {err}")))?,
        )),
        None => {
            tracing::warn!(
                "no --database-url: canary splits live in this gateway only (right for one replica; with several, each holds its own)"
            );
            None
        }
    };
    // The task API's models come from the configuration: labelled by name from the start.
    metrics::name_model(&config.embed_model);
    metrics::name_model(&config.classify_model);
    let mut core = GatewayCore::new(
        pool.clone(),
        cache::EmbeddingCache::new(config.cache_entries, config.cache_bytes),
        records::RecordBuffer::new(config.record_buffer, config.record_buffer_bytes),
        config.payload_log_sample,
        &config.embed_model,
        &config.classify_model,
    )
    .with_inference_key(config.inference_api_key.as_deref())
    .map_err(ServeError::Config)?;
    if let Some(deployed) = &deployed {
        core = core.with_deployed_state(deployed.clone());
    }
    let core = Arc::new(core);
    if let Some(tenant) = &config.anonymous_tenant {
        tracing::warn!(%tenant, "calls without an API key are admitted as a client tenant (--anonymous-tenant)");
    }
    let admission = Arc::new(
        Admission::with_anonymous(
            keys,
            config.anonymous_tenant.as_deref(),
            config.rate_limit,
            config.rate_burst,
            config.max_concurrency,
        )
        .with_tenant_share(config.tenant_share_percent)
        .with_idle_deadline(Duration::from_millis(config.idle_stream_ms.max(1))),
    );

    let (mut routes, health, health_only) = shared::grpc::base_routes().await?;
    let mut serving = Serving::new(
        "gateway",
        health,
        Duration::from_secs(config.shutdown_grace_secs),
    );
    shared::tls::health_port(&mut serving, &config.tls, health_only).await?;
    let stop = serving.stop_signal();
    tokio::spawn(admission.idle_watch().sweep(stop.clone()));
    let oip = grpc::oip::OipProxy::new(core.clone(), admission.clone(), stop.clone());
    routes
        .add_service(
            GatewayServer::new(grpc::tasks::GatewayService::new(core.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(GatewayAdminServer::new(grpc::admin::AdminService::new(
            core.clone(),
        )))
        .add_service(
            GrpcInferenceServiceServer::new(oip.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );

    let state_read = Arc::new(tokio::sync::Notify::new());
    if let Some(deployed) = &deployed {
        tokio::spawn(deployed.clone().follow(
            core.canary.clone(),
            Duration::from_secs(1),
            state_read.clone(),
            stop.clone(),
        ));
    }
    let checked = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(pool.clone().run_health_checks(
        Duration::from_millis(config.health_interval_ms.max(50)),
        checked.clone(),
        stop.clone(),
    ));
    if config.resolve_interval_secs > 0 {
        tokio::spawn(pool.clone().run_resolution(
            Duration::from_secs(config.resolve_interval_secs),
            stop.clone(),
        ));
    }
    let shipper = match &config.records_endpoint {
        Some(endpoint) => {
            let shipper = shipper::RecordShipper::new(
                core.records.clone(),
                endpoint,
                config.records_api_key.as_deref(),
                &tls,
            )
            .map_err(|e| ServeError::RecordsEndpoint(endpoint.clone(), e))?;
            Some(tokio::spawn(
                shipper.run(Duration::from_secs(1), stop.clone()),
            ))
        }
        None => None,
    };
    let local = listener.local_addr().ok();
    serving.spawn(
        shared::tls::server_builder(&tls, Callers::MayPresentCertificate)?
            // One connection may not open more streams than this at once (HTTP/2's
            // SETTINGS_MAX_CONCURRENT_STREAMS): one client cannot take every slot over one socket.
            .max_concurrent_streams(Some(config.max_streams_per_connection.max(1)))
            // Admission first (auth, rate limit, concurrency), then every response in one
            // write, then ModelInfer's byte path ahead of tonic's router.
            .layer(StateLayer(admission))
            .layer(shared::small_frames::SmallFramesLayer)
            .layer(StateLayer(oip))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(shared::grpc::incoming(listener), stop.wait()),
    );
    // Serving once the replicas' health is known (calls before would find none admitted), and
    // the shared canary splits read (or found unreachable: then it serves with none).
    let _ = tokio::time::timeout(Duration::from_secs(5), checked.notified()).await;
    if deployed.is_some() {
        let _ = tokio::time::timeout(Duration::from_secs(5), state_read.notified()).await;
    }
    serving.ready(&[]).await;
    let replicas: Vec<String> = pool.replicas().iter().map(|r| r.addr.to_string()).collect();
    tracing::info!(addr = ?local, ?replicas, tls = !tls.is_plaintext(), "gateway ready");
    serving.run_until(shutdown).await?;
    if let Some(shipper) = shipper {
        // The last push empties the buffer into the collector.
        let _ = tokio::time::timeout(Duration::from_secs(10), shipper).await;
    }
    let dropped = core.records.dropped();
    tracing::info!(records_dropped = dropped, "gateway stopped");
    Ok(())
}

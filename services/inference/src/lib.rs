//! The inference service: ONNX Runtime behind the Open Inference Protocol and a task API,
//! with a Triton-style model repository and dynamic batching.
//!
//! Layers, each with one job: [`grpc`] converts wire types → [`core`] validates, admits and
//! tokenizes → [`batcher`] queues and batches per model version → [`runtime`] runs the model.
//! [`repository`] loads, warms up and retires model versions.

pub mod batcher;
pub mod config;
pub mod core;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod model_config;
pub mod repository;
pub mod runtime;
pub mod stats;
pub mod tokenize;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use proto::serving::inference::v1::inference_tasks_server::InferenceTasksServer;
use shared::serving::Serving;
use shared::tls::Callers;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;

pub use crate::config::InferenceConfig;
use crate::core::InferenceCore;
use crate::grpc::oip::OpenInferenceService;
use crate::grpc::tasks::TaskService;
use crate::repository::ModelRepository;

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A start-up model failed to load.
    #[error("cannot load model '{model}': {source}")]
    Load {
        /// The model.
        model: String,
        /// Why.
        source: error::InferError,
    },
    /// The repository holds no model to serve.
    #[error("no model to serve: {0}")]
    NoModels(String),
    /// The API keys could not be read.
    #[error("API keys: {0}")]
    Keys(#[from] shared::auth::KeyStoreError),
    /// The TLS certificates could not be read, or none was given without `--plaintext`.
    #[error("TLS: {0}")]
    Tls(#[from] shared::tls::TlsError),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests (at most
/// `shutdown_grace_secs`) and returns.
///
/// The server answers health and reflection at once; health turns SERVING (and
/// `ServerReady` true) once every start-up model is loaded and warmed up.
pub async fn serve(
    listener: TcpListener,
    config: InferenceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let repository = Arc::new(ModelRepository::new(
        config.model_repository.clone(),
        config.runtime.clone(),
    ));
    let models = if config.models.is_empty() {
        repository.models_on_disk()
    } else {
        config.models.clone()
    };
    if models.is_empty() {
        return Err(ServeError::NoModels(format!(
            "{} holds no <model>/config.toml (run `make model`, or pass --model-repository)",
            config.model_repository.display()
        )));
    }
    let tls = shared::tls::MeshTls::load(&config.tls)?;
    let keys = Arc::new(shared::auth::ApiKeys::load(
        config.api_keys_file.as_deref(),
        &config.api_keys,
    )?);
    if keys.is_empty() {
        tracing::warn!("no API key configured: model loads and unloads are refused (--api-keys)");
    }
    let core = InferenceCore::new(repository.clone());
    let ready = Arc::new(AtomicBool::new(false));

    let (mut routes, health, health_only) = shared::grpc::base_routes().await?;
    let mut serving = Serving::new(
        "inference",
        health,
        Duration::from_secs(config.shutdown_grace_secs),
    );
    shared::tls::health_port(&mut serving, &config.tls, health_only).await?;
    let limit = config.max_message_bytes;
    routes
        .add_service(
            GrpcInferenceServiceServer::new(OpenInferenceService::new(
                core.clone(),
                ready.clone(),
                serving.stop_signal(),
                keys,
            ))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
            .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            InferenceTasksServer::new(TaskService::new(core.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip),
        );

    let local = listener.local_addr().ok();
    let stop = serving.stop_signal();
    serving.spawn(
        shared::tls::server_builder(&tls, Callers::MustPresentCertificate)?
            .layer(shared::small_frames::SmallFramesLayer)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(shared::grpc::incoming(listener), stop.wait()),
    );
    let mut shutdown = Box::pin(shutdown);
    tracing::info!(addr = ?local, tls = !tls.is_plaintext(), repository = %config.model_repository.display(), ?models, "inference service listening; loading models");

    // Load the start-up models while already answering health checks (NOT_SERVING).
    let loading = async {
        for model in &models {
            repository
                .load(model, None)
                .await
                .map_err(|source| ServeError::Load {
                    model: model.clone(),
                    source,
                })?;
            for served in repository.served_versions(model) {
                metrics::instruments().loads.add(
                    1,
                    &[
                        opentelemetry::KeyValue::new("model", model.clone()),
                        opentelemetry::KeyValue::new("provider", served.provider.as_str()),
                    ],
                );
            }
        }
        Ok::<_, ServeError>(())
    };
    tokio::select! {
        result = loading => {
            if let Err(err) = result {
                let _ = serving.stop().await;
                return Err(err);
            }
        }
        () = &mut shutdown => {
            serving.stop().await?;
            return Ok(());
        }
    }
    ready.store(true, Ordering::Release);
    serving
        .ready(&[
            <GrpcInferenceServiceServer<OpenInferenceService> as NamedService>::NAME,
            <InferenceTasksServer<TaskService> as NamedService>::NAME,
        ])
        .await;
    tracing::info!(addr = ?local, "inference service ready");
    serving.run_until(shutdown).await?;
    tracing::info!("inference service stopped");
    Ok(())
}

//! `inference.GRPCInferenceService` through the gateway: the Open Inference Protocol with auth
//! (admission), routing, retries and canary splits applied, so that tritonclient and
//! perf_analyzer work through the front door unchanged.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use opentelemetry::KeyValue;
use prost::Message;
use shared::trace_context::CallSpan;

use futures::Stream;
use proto::inference as pb;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::call_context;
use crate::admission::Admission;
use crate::auth::Principal;
use crate::call::CallContext;
use crate::core::{GatewayCore, outgoing};
use crate::error::GatewayError;
use crate::model_infer::InferHead;

/// Most requests one stream may have in flight at once.
const STREAM_IN_FLIGHT: usize = 64;
/// The method `infer` calls on the replicas.
/// The streaming method, whose messages are admitted one by one.
const MODEL_STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// The protocol, proxied to the inference replicas.
#[derive(Clone)]
pub struct OipProxy {
    core: Arc<GatewayCore>,
    admission: Arc<Admission>,
    stop: shared::shutdown::Shutdown,
}

impl OipProxy {
    /// Proxies through `core`'s replicas; `admission` limits each message of a stream; open
    /// streams end when `stop` fires.
    pub fn new(
        core: Arc<GatewayCore>,
        admission: Arc<Admission>,
        stop: shared::shutdown::Shutdown,
    ) -> Self {
        OipProxy {
            core,
            admission,
            stop,
        }
    }

    /// Sends an idempotent call to one replica (retried once elsewhere if it cannot take it).
    async fn forward<M, R, F, Fut>(
        &self,
        message: M,
        call: &CallContext,
        rpc: F,
    ) -> Result<Response<R>, Status>
    where
        M: Clone,
        F: Fn(GrpcInferenceServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let response = self
            .core
            .pool
            .call(true, |channel| {
                rpc(
                    GrpcInferenceServiceClient::new(channel),
                    outgoing(message.clone(), call.deadline),
                )
            })
            .await?;
        Ok(Response::new(response.into_inner()))
    }

    /// Sends a call to every replica (model loads and unloads: every replica must serve the
    /// same versions); fails if any replica fails.
    async fn broadcast<M, R, F, Fut>(
        &self,
        message: M,
        call: &CallContext,
        rpc: F,
    ) -> Result<(), Status>
    where
        M: Clone,
        F: Fn(GrpcInferenceServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.core
            .pool
            .broadcast(|channel| {
                rpc(
                    GrpcInferenceServiceClient::new(channel),
                    self.core
                        .as_inference_admin(outgoing(message.clone(), call.deadline)),
                )
            })
            .await
            .map(drop)
    }

    /// Forwards one inference of `rpc` (a message of `ModelStreamInfer`) and counts it in
    /// `gateway.requests`; its span continues the caller's trace (`traceparent` in
    /// `metadata`).
    async fn infer(
        &self,
        rpc: &'static str,
        request: pb::ModelInferRequest,
        call: &CallContext,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<pb::ModelInferResponse, Status> {
        let head = InferHead {
            model_name: request.model_name.clone(),
            model_version: request.model_version.clone(),
        };
        let message = Bytes::from(request.encode_to_vec());
        let answer = self
            .infer_encoded(rpc, head, message, call, metadata)
            .await?;
        pb::ModelInferResponse::decode(answer).map_err(undecodable_answer)
    }

    /// Forwards one encoded `ModelInferRequest` (whose routing fields are `head`) and returns
    /// the replica's encoded answer, unchanged; counts the call in `gateway.requests`. The
    /// message is not decoded: a canary pin is appended to it as a `model_version` field
    /// (protobuf keeps the last value of a field).
    pub(crate) async fn infer_encoded(
        &self,
        rpc: &'static str,
        head: InferHead,
        message: Bytes,
        call: &CallContext,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Bytes, Status> {
        let record = crate::metrics::CallRecord::start(rpc, &head.model_name, call, Instant::now());
        // The call's span, when spans are exported: an OpenTelemetry span rather than a
        // `tracing` one, which cost the hop about 0.04 ms more per call (BENCHMARKS.md).
        let span = CallSpan::start(
            "gateway",
            || {
                vec![
                    KeyValue::new("rpc", rpc),
                    KeyValue::new("tenant", call.tenant.clone()),
                    KeyValue::new("model", head.model_name.clone()),
                ]
            },
            metadata,
        );
        // The version that answered, for the metrics; an answer that does not decode fails.
        let result = self
            .core
            .forward_infer(&head, message, call, span.onward(metadata))
            .await
            .and_then(|answer| {
                let served = InferHead::decode(answer.clone()).map_err(undecodable_answer)?;
                Ok((answer, served.model_version.parse().unwrap_or(0)))
            });
        let outcome = result
            .as_ref()
            .map(|(_, version)| *version)
            .map_err(Status::code);
        // The span names the version its metrics count the call against: the exemplars of a
        // failing canary are found by its version. A failed call may have named a version no
        // replica serves: the span then names none, as the metrics count it as unknown.
        let version = call.version_of(&outcome);
        span.end(
            || {
                let known =
                    outcome.is_ok() || crate::metrics::knows_version(&head.model_name, version);
                (version > 0 && known)
                    .then(|| KeyValue::new("model_version", version))
                    .into_iter()
                    .collect()
            },
            result.as_ref().err(),
        );
        record.finish(outcome);
        result.map(|(answer, _)| answer)
    }
}

/// The status of a replica's `ModelInfer` answer that does not decode.
fn undecodable_answer(err: prost::DecodeError) -> Status {
    GatewayError::BadAnswer(format!(
        "cannot decode the replica's ModelInfer answer: {err}"
    ))
    .into()
}

type InferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for OipProxy {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.core.pool.replicas().iter().any(|r| r.is_healthy());
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        // Ready through the gateway means ready on every replica it may send the call to,
        // as for a canary split (`GatewayCore::readiness`).
        let call = call_context(&request);
        let request = request.into_inner();
        // The caller's mistake whether or not a replica is there to say so.
        shared::grpc::parse_version(&request.name, &request.version)
            .map_err(GatewayError::Invalid)?;
        let ready = self
            .core
            .readiness(&request.name, &request.version, call.deadline)
            .await
            .verdict(&request.name, &request.version)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let call = call_context(&request);
        self.forward(request.into_inner(), &call, |mut c, r| async move {
            c.server_metadata(r).await
        })
        .await
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let call = call_context(&request);
        self.forward(request.into_inner(), &call, |mut c, r| async move {
            c.model_metadata(r).await
        })
        .await
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let call = call_context(&request);
        let (metadata, _, message) = request.into_parts();
        self.infer("ModelInfer", message, &call, &metadata)
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let call = Arc::new(call_context(&request));
        let metadata = Arc::new(request.metadata().clone());
        // Admission saw the stream once; each message still counts against the key's rate
        // limit and the gateway's concurrency limit.
        let principal = request.extensions().get::<Principal>().cloned();
        let proxy = self.clone();
        let replies = shared::grpc::answer_stream(
            request.into_inner(),
            STREAM_IN_FLIGHT,
            self.stop.clone(),
            move |message: pb::ModelInferRequest| {
                let (proxy, call, principal, metadata) = (
                    proxy.clone(),
                    call.clone(),
                    principal.clone(),
                    metadata.clone(),
                );
                async move {
                    let id = message.id.clone();
                    let admitted = match &principal {
                        Some(principal) => proxy
                            .admission
                            .admit_call(MODEL_STREAM_INFER, principal)
                            .map(Some),
                        None => Ok(None),
                    };
                    let result = match admitted {
                        Ok(_slot) => {
                            proxy
                                .infer("ModelStreamInfer", message, &call, &metadata)
                                .await
                        }
                        Err(status) => Err(status),
                    };
                    match result {
                        Ok(response) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(status) => pb::ModelStreamInferResponse {
                            error_message: status.message().to_owned(),
                            infer_response: Some(pb::ModelInferResponse {
                                id,
                                ..Default::default()
                            }),
                        },
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let call = call_context(&request);
        self.forward(request.into_inner(), &call, |mut c, r| async move {
            c.model_config(r).await
        })
        .await
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let call = call_context(&request);
        self.forward(request.into_inner(), &call, |mut c, r| async move {
            c.model_statistics(r).await
        })
        .await
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let call = call_context(&request);
        self.forward(request.into_inner(), &call, |mut c, r| async move {
            c.repository_index(r).await
        })
        .await
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let call = call_context(&request);
        self.broadcast(request.into_inner(), &call, |mut c, r| async move {
            c.repository_model_load(r).await
        })
        .await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let call = call_context(&request);
        self.broadcast(request.into_inner(), &call, |mut c, r| async move {
            c.repository_model_unload(r).await
        })
        .await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

//! `inference.GRPCInferenceService`: the Open Inference Protocol (KServe v2), as Triton
//! speaks it, so that `tritonclient` and `perf_analyzer` work unchanged.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use proto::inference as pb;
use proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{deadline, parse_version};
use crate::core::{InferenceCore, TextRequest, TextResponse};
use crate::error::InferError;
use crate::model_config::{ModelConfig, VersionPolicy};
use crate::repository::ServedVersion;

/// Protocol extensions this server implements.
const EXTENSIONS: &[&str] = &[
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "model_configuration",
];

/// Most requests one `ModelStreamInfer` stream may have in flight at once.
const STREAM_IN_FLIGHT: usize = 64;

/// Handlers of the Open Inference Protocol.
#[derive(Clone)]
pub struct OpenInferenceService {
    core: InferenceCore,
    ready: Arc<std::sync::atomic::AtomicBool>,
    stop: shared::shutdown::Shutdown,
    keys: Arc<shared::auth::ApiKeys>,
}

impl OpenInferenceService {
    /// Serves `core`; `ready` says whether start-up (loading and warm-up) has finished, `stop`
    /// fires when the server starts to stop (the server is no longer ready, and open
    /// `ModelStreamInfer` streams end).
    pub fn new(
        core: InferenceCore,
        ready: Arc<std::sync::atomic::AtomicBool>,
        stop: shared::shutdown::Shutdown,
        keys: Arc<shared::auth::ApiKeys>,
    ) -> Self {
        OpenInferenceService {
            core,
            ready,
            stop,
            keys,
        }
    }

    /// The caller holds an admin key: repository changes steer what every client is served.
    fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        use shared::error::ServiceError as _;
        self.keys
            .require(
                request.metadata(),
                shared::auth::Role::Admin,
                "model loads and unloads",
            )
            .map(drop)
            .map_err(|err| err.to_status())
    }

    fn served(&self, name: &str, version: &str) -> Result<Arc<ServedVersion>, InferError> {
        let version = parse_version(name, version)?;
        self.core.repository().get(name, version)
    }
}

/// Decodes the texts of a `ModelInferRequest` (`contents.bytes_contents` or raw contents),
/// refusing a batch over `max_batch` from its shape before anything is copied or converted.
fn decode_texts(
    request: &mut pb::ModelInferRequest,
    max_batch: usize,
) -> Result<(String, Vec<String>), InferError> {
    let model = &request.model_name;
    let input = match request.inputs.as_slice() {
        [input] => input,
        [] => {
            return Err(InferError::Invalid(format!(
                "request for model '{model}' has no inputs; send one BYTES tensor of texts"
            )));
        }
        many => {
            return Err(InferError::Invalid(format!(
                "request for model '{model}' has {} inputs; the model takes exactly one (a BYTES tensor of texts)",
                many.len()
            )));
        }
    };
    let name = input.name.clone();
    if input.datatype != "BYTES" {
        return Err(InferError::Invalid(format!(
            "input '{name}' has datatype {}; expected BYTES (UTF-8 texts)",
            input.datatype
        )));
    }
    let count = match input.shape.as_slice() {
        [rows, 1] if *rows >= 0 => *rows as usize,
        other => {
            return Err(InferError::Invalid(format!(
                "input '{name}' has shape {other:?}; expected [batch, 1]"
            )));
        }
    };
    if count > max_batch {
        return Err(InferError::Invalid(format!(
            "input '{name}' has a batch of {count} texts; model '{model}' takes at most {max_batch}"
        )));
    }
    let elements: Vec<Bytes> = if !request.raw_input_contents.is_empty() {
        if request.raw_input_contents.len() != 1 {
            return Err(InferError::Invalid(format!(
                "raw_input_contents has {} entries for 1 input",
                request.raw_input_contents.len()
            )));
        }
        if input.contents.is_some() {
            return Err(InferError::Invalid(format!(
                "input '{name}' has both contents and raw_input_contents; send one of them"
            )));
        }
        split_raw_bytes(
            &name,
            std::mem::take(&mut request.raw_input_contents[0]),
            count,
        )?
    } else {
        match request.inputs[0].contents.as_mut() {
            Some(contents) => std::mem::take(&mut contents.bytes_contents),
            None => Vec::new(),
        }
    };
    if elements.len() != count {
        return Err(InferError::Invalid(format!(
            "input '{name}' has shape [{count}, 1] but carries {} elements",
            elements.len()
        )));
    }
    let texts = elements
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            String::from_utf8(bytes.to_vec()).map_err(|err| {
                InferError::Invalid(format!(
                    "input '{name}' element {i} is not valid UTF-8: {err}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name, texts))
}

/// Splits raw BYTES contents: each element is a 4-byte little-endian length, then the bytes.
fn split_raw_bytes(name: &str, mut raw: Bytes, expected: usize) -> Result<Vec<Bytes>, InferError> {
    // The shape is the client's word: never reserve more than the bytes could hold.
    let mut elements = Vec::with_capacity(expected.min(raw.len() / 4));
    while !raw.is_empty() {
        if raw.len() < 4 {
            return Err(InferError::Invalid(format!(
                "raw contents of input '{name}' end with {} stray bytes after element {}",
                raw.len(),
                elements.len()
            )));
        }
        let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let _ = raw.split_to(4);
        if raw.len() < len {
            return Err(InferError::Invalid(format!(
                "raw contents of input '{name}': element {} declares {len} bytes but only {} remain",
                elements.len(),
                raw.len()
            )));
        }
        elements.push(raw.split_to(len));
        if elements.len() > expected {
            return Err(InferError::Invalid(format!(
                "raw contents of input '{name}' hold more elements than its shape's {expected}"
            )));
        }
    }
    Ok(elements)
}

fn encode_response(id: String, response: TextResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        let mut bytes = BytesMut::with_capacity(tensor.values.len() * 4);
        for value in &tensor.values {
            bytes.put_f32_le(*value);
        }
        raw.push(bytes.freeze());
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: tensor.name,
            datatype: "FP32".to_owned(),
            shape: tensor.shape,
            parameters: HashMap::new(),
            contents: None,
        });
    }
    pb::ModelInferResponse {
        model_name: response.model,
        model_version: response.version.to_string(),
        id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}

/// The version that answered, from its response.
fn served_version(response: &pb::ModelInferResponse) -> i64 {
    response.model_version.parse().unwrap_or(0)
}

impl OpenInferenceService {
    async fn infer_one(
        &self,
        mut request: pb::ModelInferRequest,
        deadline: Option<Instant>,
        arrived: Instant,
    ) -> Result<pb::ModelInferResponse, InferError> {
        let version = parse_version(&request.model_name, &request.model_version)?;
        // An unknown model is NOT_FOUND before its texts are looked at; a known one bounds the
        // batch before they are decoded.
        let max_batch = self
            .core
            .repository()
            .get(&request.model_name, version)?
            .spec
            .config
            .max_batch_size as usize;
        let (input, texts) = decode_texts(&mut request, max_batch)?;
        let outputs = request
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect::<Vec<_>>();
        let model = std::mem::take(&mut request.model_name);
        let response = self
            .core
            .infer(TextRequest {
                model,
                version,
                input: Some(input),
                texts,
                outputs: (!outputs.is_empty()).then_some(outputs),
                deadline,
                arrived,
            })
            .await?;
        Ok(encode_response(request.id, response))
    }
}

type StreamResult =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for OpenInferenceService {
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
        let ready =
            self.ready.load(std::sync::atomic::Ordering::Acquire) && !self.stop.is_stopping();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = match self.served(&request.name, &request.version) {
            Ok(_) => true,
            Err(InferError::Unavailable(_)) => false,
            Err(err) => return Err(err.into()),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "ecommerce-inference".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let served = self.served(&request.name, &request.version)?;
        let config = &served.spec.config;
        let versions = self
            .core
            .repository()
            .served_versions(&config.name)
            .iter()
            .map(|v| v.version.to_string())
            .collect();
        let batched = |dims: &[i64]| std::iter::once(-1).chain(dims.iter().copied()).collect();
        Ok(Response::new(pb::ModelMetadataResponse {
            name: config.name.clone(),
            versions,
            platform: config.platform.clone(),
            inputs: config
                .input
                .iter()
                .map(|i| pb::model_metadata_response::TensorMetadata {
                    name: i.name.clone(),
                    datatype: i.datatype.clone(),
                    shape: batched(&i.dims),
                })
                .collect(),
            outputs: config
                .output
                .iter()
                .map(|o| pb::model_metadata_response::TensorMetadata {
                    name: o.name.clone(),
                    datatype: o.datatype.clone(),
                    shape: batched(&o.dims),
                })
                .collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let arrived = Instant::now();
        let deadline = deadline(request.metadata(), arrived);
        let span = tracing::info_span!(
            "ModelInfer",
            model = %request.get_ref().model_name,
            model_version = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        shared::trace_context::set_remote_parent(&span, request.metadata());
        let requested = request.get_ref().model_version.parse().ok();
        let result = self
            .infer_one(request.into_inner(), deadline, arrived)
            .instrument(span.clone())
            .await;
        super::record_outcome(&span, result.as_ref().map(served_version), requested);
        Ok(Response::new(result?))
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let service = self.clone();
        let replies = shared::grpc::answer_stream(
            request.into_inner(),
            STREAM_IN_FLIGHT,
            self.stop.clone(),
            move |request: pb::ModelInferRequest| {
                let service = service.clone();
                async move {
                    let id = request.id.clone();
                    let span = tracing::info_span!(
                        "ModelStreamInfer",
                        model = %request.model_name,
                        model_version = tracing::field::Empty,
                        otel.status_code = tracing::field::Empty,
                        otel.status_description = tracing::field::Empty,
                    );
                    let requested = request.model_version.parse().ok();
                    let result = service
                        .infer_one(request, None, Instant::now())
                        .instrument(span.clone())
                        .await;
                    super::record_outcome(&span, result.as_ref().map(served_version), requested);
                    match result {
                        Ok(response) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(err) => pb::ModelStreamInferResponse {
                            error_message: err.to_string(),
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
        let request = request.into_inner();
        let served = self.served(&request.name, &request.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(to_protocol_config(&served)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let repository = self.core.repository();
        let versions: Vec<Arc<ServedVersion>> = if request.name.is_empty() {
            repository
                .models_on_disk()
                .iter()
                .flat_map(|m| repository.served_versions(m))
                .collect()
        } else if request.version.is_empty() {
            let versions = repository.served_versions(&request.name);
            if versions.is_empty() {
                repository.get(&request.name, None)?;
            }
            versions
        } else {
            vec![self.served(&request.name, &request.version)?]
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: versions.iter().map(|v| to_protocol_stats(v)).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let request = request.into_inner();
        let models = self
            .core
            .repository()
            .index(request.ready)
            .into_iter()
            .map(|entry| pb::repository_index_response::ModelIndex {
                name: entry.name,
                version: entry.version.map(|v| v.to_string()).unwrap_or_default(),
                state: entry.state.as_str().to_owned(),
                reason: entry.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.require_admin(&request)?;
        let request = request.into_inner();
        let policy = load_policy(&request)?;
        self.core
            .repository()
            .load(&request.model_name, policy)
            .await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.require_admin(&request)?;
        let request = request.into_inner();
        self.core.repository().unload(&request.model_name)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// Reads a version-policy override from a load request's `config` parameter, which holds a
/// Triton model config in JSON, e.g. `{"version_policy": {"specific": {"versions": [2]}}}`.
fn load_policy(
    request: &pb::RepositoryModelLoadRequest,
) -> Result<Option<VersionPolicy>, InferError> {
    use pb::model_repository_parameter::ParameterChoice;
    let Some(parameter) = request.parameters.get("config") else {
        return Ok(None);
    };
    let text = match &parameter.parameter_choice {
        Some(ParameterChoice::StringParam(text)) => text.clone(),
        Some(ParameterChoice::BytesParam(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => {
            return Err(InferError::Invalid(
                "parameter 'config' must be a JSON string".to_owned(),
            ));
        }
    };
    let bad = |why: String| {
        InferError::Invalid(format!(
            "parameter 'config' of model '{}': {why}",
            request.model_name
        ))
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| bad(format!("not JSON: {err}")))?;
    let Some(policy) = json.get("version_policy") else {
        return Ok(None);
    };
    if let Some(latest) = policy.get("latest") {
        let n = latest
            .get("num_versions")
            .and_then(|n| n.as_u64())
            .unwrap_or(1);
        return Ok(Some(VersionPolicy::Latest(n as u32)));
    }
    if let Some(specific) = policy.get("specific") {
        let versions = specific
            .get("versions")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("version_policy.specific needs a 'versions' array".to_owned()))?
            .iter()
            .map(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| bad("version_policy.specific.versions must hold integers".to_owned()))?;
        return Ok(Some(VersionPolicy::Specific(versions)));
    }
    if policy.get("all").is_some() {
        return Ok(Some(VersionPolicy::All(true)));
    }
    Err(bad(
        "version_policy must be one of latest, specific, all".to_owned()
    ))
}

fn to_protocol_config(served: &ServedVersion) -> pb::ModelConfig {
    let config: &ModelConfig = &served.spec.config;
    let data_type = |name: &str| match name {
        "BYTES" => pb::DataType::TypeString as i32,
        "FP32" => pb::DataType::TypeFp32 as i32,
        _ => pb::DataType::TypeInvalid as i32,
    };
    let gpu = served.provider == crate::runtime::Provider::Cuda;
    let mut parameters = HashMap::new();
    parameters.insert(
        "execution_provider".to_owned(),
        pb::ModelParameter {
            string_value: served.provider.as_str().to_owned(),
        },
    );
    pb::ModelConfig {
        name: config.name.clone(),
        platform: config.platform.clone(),
        backend: "onnxruntime".to_owned(),
        max_batch_size: config.max_batch_size as i32,
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(match &config.version_policy {
                VersionPolicy::Latest(n) => pb::model_version_policy::PolicyChoice::Latest(
                    pb::model_version_policy::Latest { num_versions: *n },
                ),
                VersionPolicy::Specific(v) => pb::model_version_policy::PolicyChoice::Specific(
                    pb::model_version_policy::Specific {
                        versions: v.clone(),
                    },
                ),
                VersionPolicy::All(_) => {
                    pb::model_version_policy::PolicyChoice::All(pb::model_version_policy::All {})
                }
            }),
        }),
        input: config
            .input
            .iter()
            .map(|i| pb::ModelInput {
                name: i.name.clone(),
                data_type: data_type(&i.datatype),
                dims: i.dims.clone(),
                ..Default::default()
            })
            .collect(),
        output: config
            .output
            .iter()
            .map(|o| pb::ModelOutput {
                name: o.name.clone(),
                data_type: data_type(&o.datatype),
                dims: o.dims.clone(),
                ..Default::default()
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: format!("{}_0", config.name),
            count: 1,
            kind: if gpu {
                pb::model_instance_group::Kind::Gpu
            } else {
                pb::model_instance_group::Kind::Cpu
            } as i32,
            ..Default::default()
        }],
        parameters,
        scheduling_choice: Some(pb::model_config::SchedulingChoice::DynamicBatching(
            pb::ModelDynamicBatching {
                max_queue_delay_microseconds: config.batching.max_queue_delay_us,
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn duration(d: crate::stats::Duration64) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

fn to_protocol_stats(served: &ServedVersion) -> pb::ModelStatistics {
    let s = served.stats.snapshot();
    pb::ModelStatistics {
        name: served.spec.config.name.clone(),
        version: served.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(Default::default()),
            cache_miss: duration(Default::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(size, b)| pb::InferBatchStatistics {
                batch_size: *size,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod properties {
    //! What a stranger may send as a text tensor: whatever the bytes and the shape, decoding
    //! answers (never panics), and what it accepts is exactly what was meant.

    use super::*;
    use proptest::prelude::*;
    use proto::inference::InferTensorContents;
    use proto::inference::model_infer_request::InferInputTensor;

    fn raw(texts: &[String]) -> Bytes {
        let mut raw = Vec::new();
        for t in texts {
            raw.extend_from_slice(&(t.len() as u32).to_le_bytes());
            raw.extend_from_slice(t.as_bytes());
        }
        raw.into()
    }

    fn request(
        shape: Vec<i64>,
        datatype: &str,
        contents: Option<Vec<Vec<u8>>>,
        raw: Option<Bytes>,
    ) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "TEXT".into(),
                datatype: datatype.into(),
                shape,
                contents: contents.map(|c| InferTensorContents {
                    bytes_contents: c.into_iter().map(Bytes::from).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            raw_input_contents: raw.into_iter().collect(),
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn raw_texts_come_back_as_sent(texts in proptest::collection::vec(".{0,40}", 0..20)) {
            let elements = split_raw_bytes("TEXT", raw(&texts), texts.len()).unwrap();
            let back: Vec<String> = elements.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect();
            prop_assert_eq!(back, texts);
        }

        #[test]
        fn any_raw_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..300), expected in 0_usize..50) {
            if let Ok(elements) = split_raw_bytes("TEXT", bytes.into(), expected) {
                prop_assert!(elements.len() <= expected);
            }
        }

        #[test]
        fn any_request_is_answered_within_the_batch_limit(
            rows in -3_i64..200,
            width in -1_i64..3,
            datatype in prop_oneof![Just("BYTES".to_owned()), Just("FP32".to_owned()), ".{0,6}"],
            contents in proptest::option::of(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 0..80)),
            raw_bytes in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        ) {
            let mut request = request(vec![rows, width], &datatype, contents, raw_bytes.map(Bytes::from));
            if let Ok((name, texts)) = decode_texts(&mut request, 64) {
                prop_assert_eq!(name, "TEXT");
                prop_assert_eq!(texts.len() as i64, rows);
                prop_assert!(texts.len() <= 64);
                prop_assert_eq!(datatype, "BYTES");
            }
        }
    }
}

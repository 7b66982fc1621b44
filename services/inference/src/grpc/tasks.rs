//! `serving.inference.v1.InferenceTasks`: the task API (`Embed`, `Classify`) the gateway
//! calls. It shares the core, and so the batching queues, with the Open Inference Protocol.

use std::time::Instant;

use proto::serving::inference::v1 as pb;
use proto::serving::inference::v1::inference_tasks_server::InferenceTasks;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::deadline;
use crate::core::{InferenceCore, TextRequest, TextResponse};
use crate::error::InferError;

/// Model used by `Embed` when the request names none.
pub const DEFAULT_EMBED_MODEL: &str = "minilm-l6";
/// Model used by `Classify` when the request names none.
pub const DEFAULT_CLASSIFY_MODEL: &str = "purchase-intent";

/// Handlers of the task API.
#[derive(Clone)]
pub struct TaskService {
    core: InferenceCore,
}

impl TaskService {
    /// Serves `core`.
    pub fn new(core: InferenceCore) -> Self {
        TaskService { core }
    }

    async fn run<T>(
        &self,
        request: Request<T>,
        rpc: &'static str,
        default_model: &str,
        output: &str,
        parts: impl FnOnce(T) -> (Option<pb::ModelRef>, Vec<String>),
    ) -> Result<TextResponse, InferError> {
        let arrived = Instant::now();
        let deadline = deadline(request.metadata(), arrived);
        let span = tracing::info_span!(
            "task",
            rpc,
            model = tracing::field::Empty,
            model_version = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        shared::trace_context::set_remote_parent(&span, request.metadata());
        let (model, texts) = parts(request.into_inner());
        let model = model.unwrap_or_default();
        let name = if model.name.is_empty() {
            default_model.to_owned()
        } else {
            model.name
        };
        span.record("model", name.as_str());
        let version = match model.version {
            0 => None,
            v if v > 0 => Some(v),
            v => {
                return Err(InferError::Invalid(format!(
                    "model '{name}': version {v} is negative; use 0 for the newest"
                )));
            }
        };
        let result = self
            .core
            .infer(TextRequest {
                model: name,
                version,
                input: None,
                texts,
                outputs: Some(vec![output.to_owned()]),
                deadline,
                arrived,
            })
            .instrument(span.clone())
            .await;
        super::record_outcome(&span, result.as_ref().map(|r| r.version), version);
        result
    }
}

fn timings(response: &TextResponse) -> pb::Timings {
    let t = &response.timings;
    pb::Timings {
        queue_us: t.queue.as_micros() as u64,
        tokenize_us: t.tokenize.as_micros() as u64,
        compute_us: t.compute.as_micros() as u64,
        total_us: t.total.as_micros() as u64,
        batch_size: t.batch_rows as u32,
    }
}

/// Splits a `[rows, width]` output into rows.
fn rows(response: &TextResponse) -> impl Iterator<Item = &[f32]> {
    let tensor = &response.outputs[0];
    let width = tensor.shape.get(1).copied().unwrap_or(1).max(1) as usize;
    tensor.values.chunks(width)
}

#[tonic::async_trait]
impl InferenceTasks for TaskService {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let response = self
            .run(
                request,
                "Embed",
                DEFAULT_EMBED_MODEL,
                "sentence_embedding",
                |r| (r.model, r.texts),
            )
            .await?;
        let embeddings = rows(&response)
            .zip(&response.token_counts)
            .map(|(values, tokens)| pb::Embedding {
                values: values.to_vec(),
                token_count: *tokens,
            })
            .collect();
        Ok(Response::new(pb::EmbedResponse {
            embeddings,
            timings: Some(timings(&response)),
            version: response.version,
            model: response.model,
        }))
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let response = self
            .run(
                request,
                "Classify",
                DEFAULT_CLASSIFY_MODEL,
                "probabilities",
                |r| (r.model, r.texts),
            )
            .await?;
        let classifications = rows(&response)
            .map(|p| pb::Classification {
                probabilities: p.to_vec(),
                label: p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i as u32),
            })
            .collect();
        Ok(Response::new(pb::ClassifyResponse {
            classifications,
            timings: Some(timings(&response)),
            version: response.version,
            model: response.model,
        }))
    }
}

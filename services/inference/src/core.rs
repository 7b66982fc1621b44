//! The inference core that both APIs call: validation, admission, tokenization off the async
//! runtime, queueing into the model version's batcher, and the reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use shared::ServiceError;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::metrics;

use crate::batcher::QueuedRequest;
use crate::error::InferError;
use crate::repository::{ModelRepository, ServedVersion};

/// How long before the caller's deadline an unfinished request is answered
/// DEADLINE_EXCEEDED (and dropped from the queue): a tenth of the time the caller allowed,
/// within these bounds, so that the answer arrives before the caller's own timer fires even on
/// a busy machine.
const MIN_DEADLINE_MARGIN: Duration = Duration::from_millis(2);
const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// Requests whose texts add up to at most this many bytes are tokenized on the async runtime
/// (microseconds of work); larger ones go to the blocking pool so they never stall it.
const INLINE_TOKENIZE_BYTES: usize = 1024;

/// A text-inference request, whichever API it came by.
pub struct TextRequest {
    /// Model name.
    pub model: String,
    /// Version, or `None` for the newest served one.
    pub version: Option<i64>,
    /// Input tensor name the client used, checked against the model's; `None` for APIs
    /// that do not name it.
    pub input: Option<String>,
    /// The texts (rows).
    pub texts: Vec<String>,
    /// Client-visible output names wanted; `None` for all of them.
    pub outputs: Option<Vec<String>>,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// When the request arrived.
    pub arrived: Instant,
}

/// One output tensor of a reply.
pub struct OutputTensor {
    /// Client-visible name.
    pub name: String,
    /// Shape, batch dimension first.
    pub shape: Vec<i64>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// Where the time of a request went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Waiting for the batch to start.
    pub queue: Duration,
    /// Tokenizing the request's texts.
    pub tokenize: Duration,
    /// The batch's model execution.
    pub compute: Duration,
    /// Arrival to reply.
    pub total: Duration,
    /// Rows in the batch that carried the request.
    pub batch_rows: usize,
}

/// The reply to a [`TextRequest`].
pub struct TextResponse {
    /// Model name.
    pub model: String,
    /// Version that served it.
    pub version: i64,
    /// Requested outputs, in the model's output order.
    pub outputs: Vec<OutputTensor>,
    /// Tokens per text, special tokens included, after truncation.
    pub token_counts: Vec<u32>,
    /// Timings.
    pub timings: Timings,
}

/// Validates, tokenizes, queues and awaits text requests.
#[derive(Clone)]
pub struct InferenceCore {
    repository: Arc<ModelRepository>,
}

impl InferenceCore {
    /// A core over `repository`.
    pub fn new(repository: Arc<ModelRepository>) -> InferenceCore {
        InferenceCore { repository }
    }

    /// The repository this core serves from.
    pub fn repository(&self) -> &Arc<ModelRepository> {
        &self.repository
    }

    /// Runs one request to completion. Cancellation: dropping the future drops the reply
    /// channel, and the batcher skips the request before compute.
    pub async fn infer(&self, request: TextRequest) -> Result<TextResponse, InferError> {
        let model = request.model.clone();
        let arrived = request.arrived;
        let result = match request.deadline {
            // Answer DEADLINE_EXCEEDED a little before the deadline: at the deadline itself the
            // transport cancels the call and the caller would only see CANCELLED.
            Some(deadline) => {
                let margin = (deadline.saturating_duration_since(arrived) / 10)
                    .clamp(MIN_DEADLINE_MARGIN, MAX_DEADLINE_MARGIN);
                let give_up = deadline.checked_sub(margin).unwrap_or(deadline);
                tokio::time::timeout_at(give_up.into(), self.infer_inner(request))
                    .await
                    .unwrap_or_else(|_| {
                        Err(InferError::DeadlineExceeded {
                            model: model.clone(),
                            waited_ms: arrived.elapsed().as_millis() as u64,
                        })
                    })
            }
            None => self.infer_inner(request).await,
        };
        let instruments = metrics::instruments();
        let (version, code) = match &result {
            Ok(response) => (response.version, "OK"),
            Err(err) => (0, err.kind().code_name()),
        };
        // A model the repository does not know is counted as `unknown`: a client's made-up
        // names never become label values.
        let label = match &result {
            Err(InferError::NotFound(_)) if !self.repository.knows(&model) => "unknown",
            _ => model.as_str(),
        };
        let [m, v] = metrics::model_attributes(label, version);
        instruments
            .requests
            .add(1, &[m.clone(), v.clone(), KeyValue::new("status", code)]);
        if let Ok(response) = &result {
            instruments
                .duration
                .record(arrived.elapsed().as_secs_f64(), &[m.clone(), v.clone()]);
            instruments
                .queue_wait
                .record(response.timings.queue.as_secs_f64(), &[m, v]);
        }
        result
    }

    async fn infer_inner(&self, request: TextRequest) -> Result<TextResponse, InferError> {
        let served = self.repository.get(&request.model, request.version)?;
        let config = &served.spec.config;
        let outputs = select_outputs(&served, request.outputs.as_deref())?;
        validate_input(&served, request.input.as_deref(), &request.texts)?;
        let permit = served.batcher.admit()?;
        let served_version = served.version;

        let span = tracing::Span::current();
        let tokenize_started = Instant::now();
        let texts = request.texts;
        let tokenize_span = tracing::info_span!("tokenize", texts = texts.len());
        let text_bytes: usize = texts.iter().map(String::len).sum();
        let tokens = if text_bytes <= INLINE_TOKENIZE_BYTES {
            // A few short texts tokenize in microseconds: cheaper than a hop to another thread.
            tokenize_span.in_scope(|| served.spec.encoder.encode(&texts))?
        } else {
            let served = served.clone();
            tokio::task::spawn_blocking(move || served.spec.encoder.encode(&texts))
                .instrument(tokenize_span)
                .await
                .map_err(|err| InferError::Runtime {
                    model: request.model.clone(),
                    version: served_version,
                    reason: format!("tokenization panicked: {err}"),
                })??
        };
        let tokenize = tokenize_started.elapsed();
        let token_counts: Vec<u32> = tokens.iter().map(|t| t.len() as u32).collect();
        let rows = tokens.len() as i64;

        let (reply, answer) = oneshot::channel();
        // An idle model runs the request here and now; a busy one queues it for its next batch.
        served.batcher.run_or_queue(QueuedRequest {
            tokens,
            outputs: outputs.clone(),
            deadline: request.deadline,
            enqueued: Instant::now(),
            reply,
            queue_span: tracing::info_span!(parent: &span, "queue_wait"),
            span,
            permit,
        })?;
        let reply = answer.await.map_err(|_| {
            InferError::Unavailable(format!(
                "model '{}' stopped before answering",
                request.model
            ))
        })??;

        let outputs = outputs
            .iter()
            .zip(reply.outputs)
            .map(|(&index, values)| {
                let out = &config.output[index];
                let mut shape = Vec::with_capacity(out.dims.len() + 1);
                shape.push(rows);
                shape.extend_from_slice(&out.dims);
                OutputTensor {
                    name: out.name.clone(),
                    shape,
                    values,
                }
            })
            .collect();
        Ok(TextResponse {
            model: request.model,
            version: served.version,
            outputs,
            token_counts,
            timings: Timings {
                queue: reply.queue,
                tokenize,
                compute: reply.compute,
                total: request.arrived.elapsed(),
                batch_rows: reply.batch_rows,
            },
        })
    }
}

/// Maps requested output names to indexes of the model's outputs (all when `None`).
fn select_outputs(
    served: &ServedVersion,
    wanted: Option<&[String]>,
) -> Result<Vec<usize>, InferError> {
    let config = &served.spec.config;
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok((0..config.output.len()).collect());
    };
    let mut indexes = Vec::with_capacity(wanted.len());
    for name in wanted {
        let index = config
            .output
            .iter()
            .position(|o| &o.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = config.output.iter().map(|o| o.name.as_str()).collect();
                InferError::Invalid(format!(
                    "model '{}' has no output '{name}'; its outputs are {known:?}",
                    config.name
                ))
            })?;
        if !indexes.contains(&index) {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    Ok(indexes)
}

fn validate_input(
    served: &ServedVersion,
    name: Option<&str>,
    texts: &[String],
) -> Result<(), InferError> {
    let config = &served.spec.config;
    let input = &config.input[0].name;
    if let Some(name) = name.filter(|name| name != input) {
        return Err(InferError::Invalid(format!(
            "model '{}' has no input '{name}'; its input is '{input}' (BYTES, [batch, 1])",
            config.name
        )));
    }
    if texts.is_empty() {
        return Err(InferError::Invalid(format!(
            "input '{input}' of model '{}' is empty: send at least one text",
            config.name
        )));
    }
    if texts.len() > config.max_batch_size as usize {
        return Err(InferError::Invalid(format!(
            "input '{input}' has a batch of {} texts; model '{}' takes at most {}",
            texts.len(),
            config.name,
            config.max_batch_size
        )));
    }
    if let Some((i, text)) = texts
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > config.max_text_bytes)
    {
        return Err(InferError::Invalid(format!(
            "input '{input}' element {i} is {} bytes; the limit is {} bytes",
            text.len(),
            config.max_text_bytes
        )));
    }
    Ok(())
}

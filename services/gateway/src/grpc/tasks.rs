//! `ecommerce.gateway.v1.Gateway`: Embed, Classify, Rank and Feedback.

use std::sync::Arc;

use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_server::Gateway;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::call_context;
use crate::call::CallContext;
use crate::core::GatewayCore;
use crate::error::GatewayError;
use crate::metrics;
use crate::payload::PayloadLogger;
use crate::ranking::Candidate;
use crate::records::RecordKind;
use crate::validation::{check_id, check_texts, invalid};

/// Handlers of the task API.
#[derive(Clone)]
pub struct GatewayService {
    core: Arc<GatewayCore>,
}

impl GatewayService {
    /// Serves `core`.
    pub fn new(core: Arc<GatewayCore>) -> Self {
        GatewayService { core }
    }
}

/// The span of one gateway call; payload fields are filled only for sampled calls.
fn call_span(rpc: &'static str, call: &CallContext) -> tracing::Span {
    tracing::info_span!(
        "gateway",
        rpc,
        tenant = %call.tenant,
        request_id = %call.request_id,
        model = tracing::field::Empty,
        model_version = tracing::field::Empty,
        payload.request = tracing::field::Empty,
        payload.response = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

fn timings(call: &CallContext, inference: std::time::Duration) -> pb::Timings {
    let total = call.arrived.elapsed();
    pb::Timings {
        gateway_us: total.saturating_sub(inference).as_micros() as u64,
        inference_us: inference.as_micros() as u64,
        total_us: total.as_micros() as u64,
    }
}

/// Runs a handler body inside the call's span, within the call's deadline, and records its
/// outcome in the metrics.
///
/// The deadline is an instant (a little before the caller's), checked in this task each time
/// the call is polled, before the server's own timeout on the same `grpc-timeout` is: the
/// caller gets DEADLINE_EXCEEDED, counted, however late the work under it started its own
/// timers (a call that waited for a replica's connection, say), never the server's CANCELLED.
async fn observed<T>(
    rpc: &'static str,
    call: &CallContext,
    model: &str,
    span: tracing::Span,
    body: impl Future<Output = Result<(T, i64), Status>>,
) -> Result<Response<T>, Status> {
    span.record("model", model);
    let record = metrics::CallRecord::start(rpc, model, call, call.arrived);
    let body = body.instrument(span.clone());
    let result = match call.deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), body)
            .await
            .unwrap_or_else(|_| Err(GatewayError::DeadlinePassed.into())),
        None => body.await,
    };
    let outcome = result
        .as_ref()
        .map(|(_, version)| *version)
        .map_err(Status::code);
    // The span names the version its metrics count the call against: the exemplars of a
    // failing canary are found by its version.
    let version = call.version_of(&outcome);
    if version > 0 {
        span.record("model_version", version);
    }
    if let Err(status) = &result {
        shared::trace_context::record_failure(&span, status);
    }
    record.finish(outcome);
    result.map(|(response, _)| Response::new(response))
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let call = call_context(&request);
        let span = call_span("Embed", &call);
        shared::trace_context::set_remote_parent(&span, request.metadata());
        let texts = request.into_inner().texts;
        let core = &self.core;
        observed("Embed", &call, &core.embed_model, span.clone(), async {
            check_texts(&texts)?;
            let embedded = core.embed(&texts, &call).await?;
            metrics::cache_lookups(embedded.cache_hits, texts.len());
            if core.payload.sampled() {
                let request = PayloadLogger::summarize(texts.iter().map(String::as_str));
                core.payload.write(
                    &span,
                    &call.request_id,
                    &request,
                    &format!("{} embeddings", texts.len()),
                );
            }
            let response = pb::EmbedResponse {
                request_id: call.request_id.clone(),
                embeddings: embedded
                    .vectors
                    .iter()
                    .map(|v| pb::Embedding { values: v.to_vec() })
                    .collect(),
                served_by: Some(pb::ServedBy {
                    model: core.embed_model.to_string(),
                    version: embedded.version,
                }),
                timings: Some(timings(&call, embedded.inference)),
            };
            Ok((response, embedded.version))
        })
        .await
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let call = call_context(&request);
        let span = call_span("Classify", &call);
        shared::trace_context::set_remote_parent(&span, request.metadata());
        let texts = request.into_inner().texts;
        let core = &self.core;
        observed(
            "Classify",
            &call,
            &core.classify_model,
            span.clone(),
            async {
                check_texts(&texts)?;
                let summary = core
                    .payload
                    .sampled()
                    .then(|| PayloadLogger::summarize(texts.iter().map(String::as_str)));
                let started = std::time::Instant::now();
                let response = core.classify(texts, summary.is_some(), &call).await?;
                let inference = started.elapsed();
                let classifications: Vec<pb::Classification> = response
                    .classifications
                    .into_iter()
                    .map(|c| pb::Classification {
                        probabilities: c.probabilities,
                        label: c.label,
                    })
                    .collect();
                if let Some(request) = summary {
                    let labels: Vec<String> = classifications
                        .iter()
                        .map(|c| c.label.to_string())
                        .collect();
                    core.payload.write(
                        &span,
                        &call.request_id,
                        &request,
                        &format!("labels {}", labels.join(",")),
                    );
                }
                let reply = pb::ClassifyResponse {
                    request_id: call.request_id.clone(),
                    classifications,
                    served_by: Some(pb::ServedBy {
                        model: response.model,
                        version: response.version,
                    }),
                    timings: Some(timings(&call, inference)),
                };
                Ok((reply, response.version))
            },
        )
        .await
    }

    async fn rank(
        &self,
        request: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RankResponse>, Status> {
        let call = call_context(&request);
        let span = call_span("Rank", &call);
        shared::trace_context::set_remote_parent(&span, request.metadata());
        let rank = request.into_inner();
        let core = &self.core;
        observed("Rank", &call, &core.embed_model, span.clone(), async {
            let candidates = rank
                .candidates
                .into_iter()
                .map(|c| Candidate {
                    id: c.id,
                    text: c.text,
                })
                .collect();
            let ranking = core
                .rank(rank.query, candidates, rank.top_k, &call, &span)
                .await?;
            let reply = pb::RankResponse {
                request_id: call.request_id.clone(),
                ranked: ranking
                    .ranked
                    .into_iter()
                    .map(|(id, score)| pb::RankedCandidate { id, score })
                    .collect(),
                served_by: Some(pb::ServedBy {
                    model: core.embed_model.to_string(),
                    version: ranking.version,
                }),
                timings: Some(timings(&call, ranking.inference)),
                cache_hits: ranking.cache_hits as u32,
            };
            Ok((reply, ranking.version))
        })
        .await
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let call = call_context(&request);
        let feedback = request.into_inner();
        if feedback.request_id.is_empty() {
            return Err(invalid(
                "request_id is empty: quote the request_id of the served call",
            ));
        }
        check_id("request_id", &feedback.request_id)?;
        check_id("item_id", &feedback.item_id)?;
        let event = match pb::FeedbackEvent::try_from(feedback.event) {
            Ok(pb::FeedbackEvent::Impression) => "impression",
            Ok(pb::FeedbackEvent::Click) => "click",
            Ok(pb::FeedbackEvent::AddToCart) => "add_to_cart",
            Ok(pb::FeedbackEvent::Purchase) => "purchase",
            Ok(pb::FeedbackEvent::Label) => "label",
            Ok(pb::FeedbackEvent::Unspecified) | Err(_) => {
                return Err(invalid(format!(
                    "event {} is not one of IMPRESSION, CLICK, ADD_TO_CART, PURCHASE, LABEL",
                    feedback.event
                )));
            }
        };
        let record_call = CallContext {
            request_id: feedback.request_id,
            ..call
        };
        self.core.record(
            &record_call,
            RecordKind::Feedback {
                item_id: feedback.item_id,
                event,
                label: (event == "label").then_some(feedback.label),
            },
        );
        Ok(Response::new(pb::FeedbackResponse { accepted: true }))
    }
}

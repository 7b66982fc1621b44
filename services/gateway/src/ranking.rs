//! Rank: the query and its candidates embedded with one model version, scored by cosine
//! similarity, sorted (ties keep the caller's order), cut to `top_k`, recorded as a
//! prediction for the feedback join, and logged when the call is sampled.

use std::time::Duration;

use tonic::Status;

use crate::call::CallContext;
use crate::core::{GatewayCore, MAX_CANDIDATES, cosine};
use crate::metrics;
use crate::payload::PayloadLogger;
use crate::records::{RecordKind, Task};
use crate::validation::{check_id, invalid};

/// A candidate of a Rank call.
pub struct Candidate {
    /// The caller's id for it, returned with its score.
    pub id: String,
    /// Its text, embedded.
    pub text: String,
}

/// The answer of a Rank call.
pub struct Ranking {
    /// Candidate ids with their scores, best first.
    pub ranked: Vec<(String, f32)>,
    /// The model version that embedded the query and every candidate.
    pub version: i64,
    /// How many of the texts came from the cache.
    pub cache_hits: usize,
    /// Time spent waiting for replicas.
    pub inference: Duration,
}

impl GatewayCore {
    /// Ranks `candidates` against `query` (see the module); `span` is the call's, for the
    /// payload log.
    pub async fn rank(
        &self,
        query: String,
        candidates: Vec<Candidate>,
        top_k: u32,
        call: &CallContext,
        span: &tracing::Span,
    ) -> Result<Ranking, Status> {
        if query.is_empty() {
            return Err(invalid("query is empty"));
        }
        if candidates.is_empty() || candidates.len() > MAX_CANDIDATES {
            return Err(invalid(format!(
                "candidates has {} entries; send 1 to {MAX_CANDIDATES}",
                candidates.len()
            )));
        }
        for (i, candidate) in candidates.iter().enumerate() {
            check_id(&format!("candidate {i}'s id"), &candidate.id)?;
        }
        if let Some(i) = candidates.iter().position(|c| c.id.is_empty()) {
            return Err(invalid(format!("candidate {i} has an empty id")));
        }
        let mut texts = Vec::with_capacity(candidates.len() + 1);
        texts.push(query);
        let mut ids = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            texts.push(candidate.text);
            ids.push(candidate.id);
        }
        let embedded = self.embed(&texts, call).await?;
        metrics::cache_lookups(embedded.cache_hits, texts.len());
        let query_vector = &embedded.vectors[0];
        let mut scored: Vec<(usize, f32)> = embedded.vectors[1..]
            .iter()
            .enumerate()
            .map(|(i, v)| (i, cosine(query_vector, v)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if top_k > 0 {
            scored.truncate(top_k as usize);
        }
        let ranked: Vec<(String, f32)> = scored
            .iter()
            .map(|&(i, score)| (ids[i].clone(), score))
            .collect();
        self.record(
            call,
            RecordKind::Prediction {
                task: Task::Rank,
                model: self.embed_model.to_string(),
                version: embedded.version,
                items: ranked.iter().map(|(id, _)| id.clone()).collect(),
                scores: ranked.iter().map(|(_, score)| *score).collect(),
                texts: Vec::new(),
            },
        );
        if self.payload.sampled() {
            let request = PayloadLogger::summarize(std::iter::once(texts[0].as_str()));
            let top: Vec<String> = ranked
                .iter()
                .take(5)
                .map(|(id, score)| format!("{id}:{score:.3}"))
                .collect();
            self.payload
                .write(span, &call.request_id, &request, &top.join(","));
        }
        Ok(Ranking {
            ranked,
            version: embedded.version,
            cache_hits: embedded.cache_hits,
            inference: embedded.inference,
        })
    }
}

//! The gateway's core: resolves the model version (canary), serves embeddings from the cache or
//! the replicas, ranks, classifies, and records predictions and feedback.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use proto::inference as oip;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::serving::inference::v1 as inference;
use proto::serving::inference::v1::inference_tasks_client::InferenceTasksClient;
use tonic::Status;

use crate::cache::EmbeddingCache;
use crate::call::CallContext;
use crate::canary::{self, CanaryError, CanaryTable, VersionWeight};
use crate::deployed::{DeployedState, Written};
use crate::error::GatewayError;
use crate::payload::PayloadLogger;
use crate::readiness::{Answer, EJECTED_WAIT, READINESS_WAIT, Readiness, says_unknown};
use crate::records::{Record, RecordBuffer, RecordKind, Task};
use crate::routing::ReplicaPool;

/// Texts one inference call carries at most (the models' max batch size).
pub const MAX_TEXTS_PER_CALL: usize = 64;
/// Candidates one Rank call may carry.
pub const MAX_CANDIDATES: usize = 1000;

/// Embeddings of a list of texts, and where they came from.
pub struct Embedded {
    /// The model version that produced them.
    pub version: i64,
    /// One vector per text.
    pub vectors: Vec<Arc<[f32]>>,
    /// How many came from the cache.
    pub cache_hits: usize,
    /// Time spent waiting for replicas.
    pub inference: Duration,
}

/// The gateway's shared state.
pub struct GatewayCore {
    /// Inference replicas.
    pub pool: Arc<ReplicaPool>,
    /// Canary splits (a copy of the shared state's, when there is one).
    pub canary: Arc<CanaryTable>,
    /// The shared deployed state every replica reads; `None`: splits live in this process.
    pub deployed: Option<Arc<DeployedState>>,
    /// Embedding cache.
    pub cache: EmbeddingCache,
    /// Prediction and feedback records.
    pub records: Arc<RecordBuffer>,
    /// Payload logging.
    pub payload: PayloadLogger,
    /// Model of Embed and Rank.
    pub embed_model: Arc<str>,
    /// Model of Classify.
    pub classify_model: Arc<str>,
    /// Newest version each model answered with when no split pinned one (absent: not known
    /// yet), so that cache lookups know which version to look for. Only a model a replica
    /// answered for gets an entry: a name a caller sends is looked up, never added, so that
    /// made-up names cannot grow it.
    current: Mutex<HashMap<String, i64>>,
    /// `Bearer <key>` for model loads and unloads on the replicas.
    inference_key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl GatewayCore {
    /// Sets `model`'s canary split to `weights`, on behalf of `changed_by` for `reason`; the
    /// replicas' readiness is asked within the caller's `deadline` (a check it cuts short
    /// changes nothing). A split that would send traffic to a version that is not ready on every replica is
    /// refused, naming the replicas (part of the canary's traffic would fail;
    /// [`GatewayCore::readiness`] says which replicas count), and one whose readiness the
    /// replicas cannot tell is refused as unavailable, as is a malformed one; with a shared
    /// state, a change it cannot store is refused as unavailable; with `expected`, a change
    /// over another revision than that one is aborted. Either way the split in force stays,
    /// on every replica.
    pub async fn set_canary(
        &self,
        model: &str,
        weights: Vec<VersionWeight>,
        expected: Option<i64>,
        changed_by: &str,
        reason: &str,
        deadline: Option<Instant>,
    ) -> Result<(), Status> {
        canary::validate(model, &weights)
            .map_err(|err| GatewayError::Invalid(format!("canary of model '{model}': {err}")))?;
        let versions: Vec<String> = weights
            .iter()
            .filter(|w| w.weight > 0 && w.version > 0)
            .map(|w| w.version.to_string())
            .collect();
        let checks = versions
            .iter()
            .map(|version| self.readiness(model, version, deadline));
        let verdicts = futures::future::join_all(checks).await;
        // A version surely not ready is the answer before one the replicas could not tell
        // about (UNAVAILABLE, nothing changed: retrying may help, while loading is needed).
        let mut cannot_tell = None;
        for (version, readiness) in versions.iter().zip(verdicts) {
            let not_ready = match readiness.verdict(model, version) {
                Ok(true) => continue,
                Ok(false) => readiness.where_not_ready(),
                Err(status) if says_unknown(&status) => {
                    format!("on any inference replica ({})", status.message())
                }
                Err(status) => {
                    cannot_tell.get_or_insert(status);
                    continue;
                }
            };
            return Err(GatewayError::VersionNotReady {
                model: model.to_owned(),
                version: version.clone(),
                not_ready,
            }
            .into());
        }
        if let Some(status) = cannot_tell {
            return Err(status);
        }
        // Its versions are ready on the replicas: the model's name and the split's versions
        // are labels from now on.
        crate::metrics::name_versions(model, weights.iter().map(|w| w.version));
        match &self.deployed {
            Some(deployed) => {
                let written = deployed
                    .write(model, &weights, expected, changed_by, reason)
                    .await
                    .map_err(GatewayError::from)?;
                let (split, what) = match written {
                    Written::Changed(split) => (split, "canary split changed (shared)"),
                    Written::Unchanged(split) => (split, "canary split set again, unchanged"),
                    Written::Stale(in_force) => {
                        let current = in_force.revision;
                        // A replica behind the database catches up now, so that the
                        // caller's next GetCanary reads what is in force.
                        if current > 0 {
                            crate::metrics::name_versions(
                                model,
                                in_force.weights.iter().map(|w| w.version),
                            );
                            self.canary.apply(model, in_force);
                        }
                        return Err(GatewayError::StaleSplit {
                            model: model.to_owned(),
                            expected: expected.unwrap_or_default(),
                            current,
                        }
                        .into());
                    }
                };
                let revision = split.revision;
                self.canary.apply(model, split);
                tracing::info!(%model, ?weights, revision, %changed_by, %reason, "{what}");
            }
            None => {
                self.canary
                    .set(model, weights.clone(), expected)
                    .map_err(|err| match err {
                        CanaryError::Invalid(err) => {
                            GatewayError::Invalid(format!("canary of model '{model}': {err}"))
                        }
                        CanaryError::Stale { current } => GatewayError::StaleSplit {
                            model: model.to_owned(),
                            expected: expected.unwrap_or_default(),
                            current,
                        },
                    })?;
                tracing::info!(%model, ?weights, %changed_by, %reason, "canary split set (this gateway only)");
            }
        }
        Ok(())
    }
}

/// Builds an outgoing request that carries the caller's remaining deadline and the current
/// trace context.
pub fn outgoing<T>(message: T, deadline: Option<Instant>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    shared::trace_context::inject(&tracing::Span::current(), request.metadata_mut());
    request
}

impl GatewayCore {
    /// The core over `pool`.
    pub fn new(
        pool: Arc<ReplicaPool>,
        cache: EmbeddingCache,
        records: RecordBuffer,
        payload_sample: f64,
        embed_model: &str,
        classify_model: &str,
    ) -> GatewayCore {
        GatewayCore {
            pool,
            canary: Arc::default(),
            deployed: None,
            cache,
            records: Arc::new(records),
            payload: PayloadLogger::new(payload_sample),
            embed_model: Arc::from(embed_model),
            classify_model: Arc::from(classify_model),
            current: Mutex::new(HashMap::new()),
            inference_key: None,
        }
    }

    /// Whether `version` of `model` (`""`: its newest) is ready on every inference replica
    /// that counts, as [`crate::readiness`] says: `ModelReady` asked of each at once, waiting
    /// [`READINESS_WAIT`] at most for a replica taking traffic and [`EJECTED_WAIT`] for one
    /// the health checks ejected (less when `deadline` comes sooner). The check of
    /// [`GatewayCore::set_canary`] and the gateway's `ModelReady` answer alike.
    pub async fn readiness(
        &self,
        model: &str,
        version: &str,
        deadline: Option<Instant>,
    ) -> Readiness {
        let request = oip::ModelReadyRequest {
            name: model.to_owned(),
            version: version.to_owned(),
        };
        let answers = self
            .pool
            .ask_each(|replica| {
                let taking_traffic = replica.is_healthy();
                let most = if taking_traffic {
                    READINESS_WAIT
                } else {
                    EJECTED_WAIT
                };
                let wait = deadline.map_or(most, |d| {
                    d.saturating_duration_since(Instant::now()).min(most)
                });
                // The caller's deadline goes on as with any call; the wait is the gateway's.
                let request = outgoing(request.clone(), deadline);
                async move {
                    let mut client = GrpcInferenceServiceClient::new(replica.channel());
                    let call = client.model_ready(request);
                    let answer = match tokio::time::timeout(wait, call).await {
                        Ok(result) => Answer::of(result.map(|r| r.into_inner().ready)),
                        Err(_) => {
                            Answer::Failed(format!("no answer within {} ms", wait.as_millis()))
                        }
                    };
                    (replica.addr, taking_traffic, answer)
                }
            })
            .await;
        Readiness::fold(answers)
    }

    /// Keeps canary splits in `deployed`, shared with every replica.
    pub fn with_deployed_state(mut self, deployed: Arc<DeployedState>) -> GatewayCore {
        self.deployed = Some(deployed);
        self
    }

    /// Sends `authorization: Bearer <key>` with the calls that change the inference replicas'
    /// repositories (model loads and unloads need an admin key there).
    pub fn with_inference_key(mut self, key: Option<&str>) -> Result<GatewayCore, String> {
        self.inference_key = key
            .map(|k| {
                shared::auth::bearer(k).ok_or_else(|| {
                    "--inference-api-key holds characters a header cannot".to_owned()
                })
            })
            .transpose()?;
        Ok(self)
    }

    /// `request` with the inference admin key, when one is configured.
    pub fn as_inference_admin<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        if let Some(key) = &self.inference_key {
            request.metadata_mut().insert("authorization", key.clone());
        }
        request
    }

    /// How many models the newest-version map holds (the tests bound it).
    #[cfg(test)]
    pub(crate) fn models_tracked(&self) -> usize {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The newest version `model` answered with (0: none known yet); adds nothing.
    fn current_version(&self, model: &str) -> i64 {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.get(model).copied().unwrap_or_default()
    }

    /// Remembers `version` as the newest of `model`, which a replica just answered with.
    fn answered_with(&self, model: &str, version: i64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.get_mut(model) {
            Some(newest) => *newest = version,
            None => {
                current.insert(model.to_owned(), version);
            }
        }
    }

    /// The version a call should use: the canary's choice, or `None` for the newest.
    pub fn pinned_version(&self, model: &str, call: &CallContext) -> Option<i64> {
        let pinned = self.canary.choose(model, &call.routing_key);
        let routed = pinned.unwrap_or_else(|| self.current_version(model));
        call.routed_version.store(routed, Ordering::Relaxed);
        pinned
    }

    /// Embeds `texts`, from the cache where possible.
    pub async fn embed(&self, texts: &[String], call: &CallContext) -> Result<Embedded, Status> {
        crate::metrics::input_lengths(&self.embed_model, texts.iter().map(String::as_str));
        let model = self.embed_model.clone();
        let pinned = self.pinned_version(&model, call);
        let current = self.current_version(&model);
        let known = pinned.or_else(|| Some(current).filter(|v| *v > 0));
        let mut vectors: Vec<Option<Arc<[f32]>>> = match known {
            Some(version) => texts
                .iter()
                .map(|t| self.cache.get(&model, version, t))
                .collect(),
            None => vec![None; texts.len()],
        };
        let mut cache_hits = vectors.iter().filter(|v| v.is_some()).count();
        let started = Instant::now();
        let mut version = known.unwrap_or(0);
        if cache_hits < texts.len() {
            // Unpinned misses ask for the newest version, so a rollout is seen at the next miss.
            let missing: Vec<usize> = (0..texts.len()).filter(|&i| vectors[i].is_none()).collect();
            let (fetched_version, fetched) = self
                .fetch_embeddings(&model, pinned.unwrap_or(0), texts, &missing, call)
                .await?;
            if cache_hits > 0 && Some(fetched_version) != known {
                // The cache hits are of an older version: one answer never mixes versions.
                let hits: Vec<usize> = (0..texts.len()).filter(|&i| vectors[i].is_some()).collect();
                let (_, refetched) = self
                    .fetch_embeddings(&model, fetched_version, texts, &hits, call)
                    .await?;
                for (index, vector) in refetched {
                    self.cache
                        .insert(&model, fetched_version, &texts[index], vector.clone());
                    vectors[index] = Some(vector);
                }
                cache_hits = 0;
            }
            version = fetched_version;
            for (index, vector) in fetched {
                self.cache
                    .insert(&model, version, &texts[index], vector.clone());
                vectors[index] = Some(vector);
            }
            if pinned.is_none() {
                self.answered_with(&model, version);
            }
        }
        let vectors = vectors
            .into_iter()
            .map(|v| v.expect("every text embedded"))
            .collect();
        Ok(Embedded {
            version,
            vectors,
            cache_hits,
            inference: started.elapsed(),
        })
    }

    /// Embeds `texts[missing]` on the replicas, in calls of at most 64 texts, all of one version.
    async fn fetch_embeddings(
        &self,
        model: &Arc<str>,
        version: i64,
        texts: &[String],
        missing: &[usize],
        call: &CallContext,
    ) -> Result<(i64, Vec<(usize, Arc<[f32]>)>), Status> {
        let chunks: Vec<&[usize]> = missing.chunks(MAX_TEXTS_PER_CALL).collect();
        let first = self
            .embed_call(model, version, texts, chunks[0], call)
            .await?;
        // Later chunks ask for the version the first one got, so one answer never mixes versions.
        let version = first.0;
        let rest = futures::future::try_join_all(
            chunks[1..]
                .iter()
                .map(|chunk| self.embed_call(model, version, texts, chunk, call)),
        )
        .await?;
        let mut all = first.1;
        for (_, vectors) in rest {
            all.extend(vectors);
        }
        Ok((version, all))
    }

    async fn embed_call(
        &self,
        model: &Arc<str>,
        version: i64,
        texts: &[String],
        indexes: &[usize],
        call: &CallContext,
    ) -> Result<(i64, Vec<(usize, Arc<[f32]>)>), Status> {
        let message = inference::EmbedRequest {
            model: Some(inference::ModelRef {
                name: model.to_string(),
                version,
            }),
            texts: indexes.iter().map(|&i| texts[i].clone()).collect(),
        };
        let response = self
            .pool
            .call(true, |channel| {
                let request = outgoing(message.clone(), call.deadline);
                async move { InferenceTasksClient::new(channel).embed(request).await }
            })
            .await?
            .into_inner();
        if response.embeddings.len() != indexes.len() {
            return Err(GatewayError::BadAnswer(format!(
                "inference answered {} embeddings for {} texts",
                response.embeddings.len(),
                indexes.len()
            ))
            .into());
        }
        let vectors = indexes
            .iter()
            .zip(response.embeddings)
            .map(|(&i, e)| (i, Arc::from(e.values)))
            .collect();
        Ok((response.version, vectors))
    }

    /// Classifies `texts`.
    /// With `keep_texts`, the prediction record carries the texts, personal data masked.
    pub async fn classify(
        &self,
        texts: Vec<String>,
        keep_texts: bool,
        call: &CallContext,
    ) -> Result<inference::ClassifyResponse, Status> {
        let kept: Vec<String> = if keep_texts {
            texts
                .iter()
                .map(|t| crate::pii::mask(t).into_owned())
                .collect()
        } else {
            Vec::new()
        };
        let model = self.classify_model.clone();
        crate::metrics::input_lengths(&model, texts.iter().map(String::as_str));
        let version = self.pinned_version(&model, call).unwrap_or(0);
        let message = inference::ClassifyRequest {
            model: Some(inference::ModelRef {
                name: model.to_string(),
                version,
            }),
            texts,
        };
        let response = self
            .pool
            .call(true, |channel| {
                let request = outgoing(message.clone(), call.deadline);
                async move { InferenceTasksClient::new(channel).classify(request).await }
            })
            .await?
            .into_inner();
        self.record(
            call,
            RecordKind::Prediction {
                task: Task::Classify,
                model: response.model.clone(),
                version: response.version,
                items: (0..response.classifications.len())
                    .map(|i| i.to_string())
                    .collect(),
                scores: response
                    .classifications
                    .iter()
                    .map(|c| c.probabilities.get(1).copied().unwrap_or(0.0))
                    .collect(),
                texts: kept,
            },
        );
        Ok(response)
    }

    /// Keeps a record for the feedback join.
    pub fn record(&self, call: &CallContext, kind: RecordKind) {
        if let RecordKind::Prediction {
            task,
            model,
            version,
            scores,
            ..
        } = &kind
        {
            crate::metrics::scores(task.rpc(), model, *version, scores);
        }
        self.records.push(Record {
            request_id: call.request_id.clone(),
            tenant: call.tenant.clone(),
            at: SystemTime::now(),
            kind,
        });
    }
}

/// Cosine similarity of two L2-normalised vectors (their dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

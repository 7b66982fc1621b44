//! The model repository: `<root>/<model>/config.toml`, `<root>/<model>/<version>/model.onnx`.
//!
//! Loading a model reads its config and tokenizer, creates a session and a batcher for each
//! version its policy selects, warms each one up, and only then swaps the new set in. Versions
//! that drop out are removed from the table at once but live on until their in-flight
//! requests finish (they hold an `Arc` to them), so switching versions under traffic fails no
//! request.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::batcher::{BatchLimits, DynamicBatcher, QueuedRequest};
use crate::error::InferError;
use crate::model_config::{ModelConfig, VersionPolicy};
use crate::runtime::{Device, OrtBackend, Provider, RuntimeOptions};
use crate::stats::StatsRecorder;
use crate::tokenize::TextEncoder;

/// What every version of a model shares: its configuration and tokenizer.
pub struct ModelSpec {
    /// The parsed `config.toml`.
    pub config: ModelConfig,
    /// The model's tokenizer.
    pub encoder: TextEncoder,
}

/// One loaded, warmed-up model version.
pub struct ServedVersion {
    /// Configuration and tokenizer.
    pub spec: Arc<ModelSpec>,
    /// Version number.
    pub version: i64,
    /// Queue and model thread.
    pub batcher: DynamicBatcher,
    /// Execution statistics since load.
    pub stats: Arc<StatsRecorder>,
    /// Execution provider the session runs on.
    pub provider: Provider,
}

/// Load state of a model, as the repository index reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// Being loaded.
    Loading,
    /// Serving.
    Ready,
    /// Not loaded (never, unloaded, or its load failed).
    Unavailable,
}

impl ModelState {
    /// Name used by the Open Inference Protocol's repository index.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "LOADING",
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}

#[derive(Default)]
struct ModelSlot {
    state: Option<ModelState>,
    reason: String,
    versions: BTreeMap<i64, Arc<ServedVersion>>,
}

/// One row of the repository index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, or `None` for a model that has no loaded version.
    pub version: Option<i64>,
    /// Load state.
    pub state: ModelState,
    /// Why it is in that state (e.g. the load error).
    pub reason: String,
}

/// The models on disk and the versions being served.
pub struct ModelRepository {
    root: PathBuf,
    runtime: RuntimeOptions,
    slots: RwLock<HashMap<String, ModelSlot>>,
    load_locks: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ModelRepository {
    /// A repository rooted at `root`; nothing is loaded yet.
    pub fn new(root: PathBuf, runtime: RuntimeOptions) -> ModelRepository {
        ModelRepository {
            root,
            runtime,
            slots: RwLock::new(HashMap::new()),
            load_locks: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The repository's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the models present on disk (folders holding a `config.toml`), sorted.
    pub fn models_on_disk(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().join("config.toml").is_file())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Version folders of `model` that hold a `model.onnx`, ascending.
    fn versions_on_disk(&self, model: &str) -> Vec<i64> {
        let mut versions: Vec<i64> = std::fs::read_dir(self.root.join(model))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().join("model.onnx").is_file())
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .filter(|v| *v > 0)
            .collect();
        versions.sort_unstable();
        versions
    }

    fn is_on_disk(&self, model: &str) -> bool {
        valid_name(model) && self.root.join(model).join("config.toml").is_file()
    }

    /// Whether `model` is loaded or in the repository on disk.
    pub fn knows(&self, model: &str) -> bool {
        let loaded = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(model);
        loaded || self.is_on_disk(model)
    }

    /// The served version of `model` to use: `version`, or the newest when `None`.
    pub fn get(&self, model: &str, version: Option<i64>) -> Result<Arc<ServedVersion>, InferError> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let slot = slots.get(model);
        let served = slot.and_then(|slot| match version {
            Some(v) => slot.versions.get(&v).cloned(),
            None => slot.versions.values().next_back().cloned(),
        });
        if let Some(served) = served {
            return Ok(served);
        }
        let loaded: Vec<i64> = slot
            .map(|s| s.versions.keys().copied().collect())
            .unwrap_or_default();
        drop(slots);
        match version {
            _ if !self.is_on_disk(model) && loaded.is_empty() => Err(InferError::NotFound(
                format!("unknown model '{model}': it is not in the model repository"),
            )),
            None => Err(InferError::Unavailable(format!(
                "model '{model}' is not loaded"
            ))),
            Some(v) if loaded.is_empty() && !self.versions_on_disk(model).contains(&v) => {
                Err(InferError::NotFound(format!(
                    "model '{model}' has no version {v} in the repository"
                )))
            }
            Some(v) if !self.versions_on_disk(model).contains(&v) => Err(InferError::NotFound(
                format!("model '{model}' has no version {v}; served versions: {loaded:?}"),
            )),
            Some(v) => Err(InferError::Unavailable(format!(
                "version {v} of model '{model}' is not loaded; served versions: {loaded:?}"
            ))),
        }
    }

    /// Every served version of `model`, ascending.
    pub fn served_versions(&self, model: &str) -> Vec<Arc<ServedVersion>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .get(model)
            .map(|slot| slot.versions.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The repository index: every model on disk or loaded, per version.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        // Copy what the table says, then read the disk without holding the lock.
        let table: HashMap<String, (Option<ModelState>, String, Vec<i64>)> = {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            slots
                .iter()
                .map(|(name, slot)| {
                    (
                        name.clone(),
                        (
                            slot.state,
                            slot.reason.clone(),
                            slot.versions.keys().copied().collect(),
                        ),
                    )
                })
                .collect()
        };
        let mut names = self.models_on_disk();
        names.extend(
            table
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        names.sort();
        let mut entries = Vec::new();
        for name in names {
            let slot = table.get(&name);
            let served: &[i64] = slot.map_or(&[], |s| s.2.as_slice());
            let mut versions: Vec<i64> = self.versions_on_disk(&name);
            versions.extend(served);
            versions.sort_unstable();
            versions.dedup();
            if versions.is_empty() {
                versions.push(0);
            }
            for version in versions {
                let is_served = served.contains(&version);
                let state = match slot.and_then(|s| s.0) {
                    Some(ModelState::Loading) if !is_served => ModelState::Loading,
                    _ if is_served => ModelState::Ready,
                    _ => ModelState::Unavailable,
                };
                if ready_only && state != ModelState::Ready {
                    continue;
                }
                let reason = match state {
                    ModelState::Ready => String::new(),
                    _ => slot
                        .map(|s| s.1.clone())
                        .unwrap_or_else(|| "not loaded".to_owned()),
                };
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: (version > 0).then_some(version),
                    state,
                    reason,
                });
            }
        }
        entries
    }

    fn set_state(&self, model: &str, state: ModelState, reason: String) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(model.to_owned()).or_default();
        slot.state = Some(state);
        slot.reason = reason;
    }

    /// Loads (or reloads) `model` with its configured version policy, or `policy` instead.
    ///
    /// Versions already served and still selected keep serving; new ones are created and
    /// warmed up before they take traffic; dropped ones finish their in-flight requests.
    pub async fn load(
        &self,
        model: &str,
        policy: Option<VersionPolicy>,
    ) -> Result<Vec<i64>, InferError> {
        if !self.is_on_disk(model) {
            return Err(InferError::NotFound(format!(
                "unknown model '{model}': no {}/{model}/config.toml",
                self.root.display()
            )));
        }
        let lock = {
            let mut locks = self.load_locks.lock().await;
            locks.entry(model.to_owned()).or_default().clone()
        };
        let _loading = lock.lock().await;
        self.set_state(model, ModelState::Loading, "loading".to_owned());
        let result = self.load_locked(model, policy).await;
        match &result {
            Ok(versions) => {
                self.set_state(model, ModelState::Ready, String::new());
                tracing::info!(model, ?versions, "model ready");
            }
            Err(err) => {
                let has_versions = !self.served_versions(model).is_empty();
                let state = if has_versions {
                    ModelState::Ready
                } else {
                    ModelState::Unavailable
                };
                self.set_state(model, state, format!("load failed: {err}"));
                tracing::error!(model, %err, "model load failed");
            }
        }
        result
    }

    async fn load_locked(
        &self,
        model: &str,
        policy: Option<VersionPolicy>,
    ) -> Result<Vec<i64>, InferError> {
        let model_dir = self.root.join(model);
        let max_tokens_dir = model_dir.clone();
        let spec = tokio::task::spawn_blocking(move || -> Result<ModelSpec, InferError> {
            let config = ModelConfig::load(&max_tokens_dir)?;
            let encoder = TextEncoder::load(
                &max_tokens_dir.join(&config.tokenizer),
                config.max_sequence_length,
            )?;
            Ok(ModelSpec { config, encoder })
        })
        .await
        .map_err(|err| InferError::Load(format!("loading '{model}' panicked: {err}")))??;
        let spec = Arc::new(spec);
        let policy = policy.unwrap_or_else(|| spec.config.version_policy.clone());
        let available = self.versions_on_disk(model);
        let selected = policy.select(&available);
        if selected.is_empty() {
            return Err(InferError::Load(format!(
                "model '{model}': version policy {policy:?} selects nothing from the versions on disk {available:?}"
            )));
        }
        let current: BTreeMap<i64, Arc<ServedVersion>> = self
            .served_versions(model)
            .into_iter()
            .map(|served| (served.version, served))
            .collect();
        let mut next = BTreeMap::new();
        for version in &selected {
            let served = match current.get(version) {
                Some(served) => served.clone(),
                None => Arc::new(self.start_version(model, *version, spec.clone()).await?),
            };
            next.insert(*version, served);
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(model.to_owned()).or_default();
        let dropped: Vec<i64> = slot
            .versions
            .keys()
            .filter(|v| !next.contains_key(v))
            .copied()
            .collect();
        slot.versions = next;
        if !dropped.is_empty() {
            tracing::info!(
                model,
                ?dropped,
                "versions retired; they finish their in-flight requests"
            );
        }
        Ok(selected)
    }

    async fn start_version(
        &self,
        model: &str,
        version: i64,
        spec: Arc<ModelSpec>,
    ) -> Result<ServedVersion, InferError> {
        let path = self
            .root
            .join(model)
            .join(version.to_string())
            .join("model.onnx");
        let device = match (&self.runtime.device, &spec.config.runtime.device) {
            (Some(device), _) => *device,
            (None, Some(text)) => Device::parse(text).ok_or_else(|| {
                InferError::Load(format!(
                    "model '{model}': runtime.device '{text}' is not cpu, cuda or auto"
                ))
            })?,
            (None, None) => Device::Auto,
        };
        let options = self.runtime.clone();
        let started = Instant::now();
        let (backend, provider) =
            tokio::task::spawn_blocking(move || OrtBackend::load(&path, device, &options))
                .await
                .map_err(|err| InferError::Load(format!("loading '{model}' panicked: {err}")))??;
        let config = &spec.config;
        let stats = Arc::new(StatsRecorder::default());
        let batcher = DynamicBatcher::start(
            model,
            version,
            Box::new(backend),
            config.output.iter().map(|o| o.source.clone()).collect(),
            BatchLimits {
                max_rows: config.max_batch_size as usize,
                max_tokens: config.batching.max_batch_tokens,
                max_queue_size: config.batching.max_queue_size,
                idle_delay: Duration::from_micros(config.batching.max_queue_delay_us),
                // On CPU a session runs as well on any thread. The CUDA provider builds state
                // per calling thread (library handles, workspaces) on its first run there, so
                // a GPU model stays on its own thread.
                run_idle_on_caller: provider == Provider::Cpu,
            },
            stats.clone(),
        )?;
        let served = ServedVersion {
            spec,
            version,
            batcher,
            stats,
            provider,
        };
        warm_up(&served).await?;
        served.stats.reset();
        tracing::info!(
            model,
            version,
            provider = provider.as_str(),
            took_ms = started.elapsed().as_millis() as u64,
            "model version loaded and warmed up"
        );
        Ok(served)
    }

    /// Stops serving every version of `model`; in-flight requests still finish.
    pub fn unload(&self, model: &str) -> Result<(), InferError> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        match slots.get_mut(model) {
            Some(slot) if !slot.versions.is_empty() => {
                slot.versions.clear();
                slot.state = Some(ModelState::Unavailable);
                slot.reason = "unloaded".to_owned();
                tracing::info!(model, "model unloaded; in-flight requests finish");
                Ok(())
            }
            _ if self.is_on_disk(model) => Ok(()),
            _ => Err(InferError::NotFound(format!("unknown model '{model}'"))),
        }
    }
}

/// Runs the model's warm-up texts through its own batcher, so the first real request does
/// not pay for lazy initialisation.
async fn warm_up(served: &ServedVersion) -> Result<(), InferError> {
    let texts = &served.spec.config.warmup.texts;
    if texts.is_empty() {
        return Ok(());
    }
    let tokens = served.spec.encoder.encode(texts)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    served.batcher.submit(QueuedRequest {
        tokens,
        outputs: (0..served.spec.config.output.len()).collect(),
        deadline: None,
        enqueued: Instant::now(),
        reply,
        span: tracing::Span::none(),
        queue_span: tracing::Span::none(),
        permit: served.batcher.admit()?,
    })?;
    answer
        .await
        .map_err(|_| InferError::Load("the model thread stopped during warm-up".to_owned()))?
        .map_err(|err| InferError::Load(format!("warm-up failed: {err}")))?;
    Ok(())
}

/// A model name is one path component: no separators, no `..`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

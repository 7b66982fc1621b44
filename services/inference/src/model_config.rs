//! The per-model configuration file, `<repository>/<model>/config.toml`.
//!
//! It says what the model takes and returns in Open Inference Protocol terms, which
//! tokenizer it uses, how requests are batched, which versions are served and how the model
//! is warmed up before it is marked ready.

use std::path::Path;

use serde::Deserialize;

use crate::error::InferError;

/// A model's configuration, as read from `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name; must equal the model's folder name.
    pub name: String,
    /// Triton platform string reported to clients (`onnxruntime_onnx`).
    #[serde(default = "default_platform")]
    pub platform: String,
    /// Largest number of texts one execution takes (the batch dimension's maximum).
    pub max_batch_size: u32,
    /// Tokenizer file, relative to the model folder.
    pub tokenizer: String,
    /// Texts are truncated to this many tokens, special tokens included.
    #[serde(default = "default_max_sequence_length")]
    pub max_sequence_length: usize,
    /// Largest accepted text, in bytes (longer texts are refused, not truncated).
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
    /// The model's inputs as clients see them (one BYTES tensor of texts).
    pub input: Vec<TensorConfig>,
    /// The model's outputs as clients see them, each mapped to an ONNX graph output.
    pub output: Vec<OutputConfig>,
    /// Which versions are loaded.
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Dynamic batching knobs.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Runtime preferences.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Requests run before the model is marked ready.
    #[serde(default)]
    pub warmup: WarmupConfig,
}

/// A client-visible input tensor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    /// Tensor name, e.g. `TEXT`.
    pub name: String,
    /// Open Inference Protocol datatype, e.g. `BYTES`.
    pub datatype: String,
    /// Shape without the batch dimension.
    pub dims: Vec<i64>,
}

/// A client-visible output tensor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Tensor name, e.g. `sentence_embedding`.
    pub name: String,
    /// Open Inference Protocol datatype (only `FP32` is produced).
    pub datatype: String,
    /// Shape without the batch dimension, e.g. `[384]`.
    pub dims: Vec<i64>,
    /// Name of the ONNX graph output that holds it.
    pub source: String,
}

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The newest N versions found in the repository.
    Latest(u32),
    /// Exactly these versions.
    Specific(Vec<i64>),
    /// Every version found.
    All(bool),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// Picks the versions to serve from those present on disk (sorted ascending).
    pub fn select(&self, available: &[i64]) -> Vec<i64> {
        match self {
            VersionPolicy::Latest(n) => {
                let skip = available.len().saturating_sub(*n as usize);
                available[skip..].to_vec()
            }
            VersionPolicy::Specific(wanted) => available
                .iter()
                .copied()
                .filter(|v| wanted.contains(v))
                .collect(),
            VersionPolicy::All(_) => available.to_vec(),
        }
    }
}

/// Dynamic batching knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// How long an idle model waits for companions of a lone request, in microseconds.
    /// 0 (the default) sends what is queued at once; while the model is busy, requests
    /// accumulate anyway and the next batch takes all of them.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Largest padded token count (rows × longest row) of one execution.
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// Requests admitted per model version (queued or running); more are refused with
    /// RESOURCE_EXHAUSTED at once.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_queue_delay_us: 0,
            max_batch_tokens: default_max_batch_tokens(),
            max_queue_size: default_max_queue_size(),
        }
    }
}

/// Runtime preferences of a model; the service's `--device` flag wins when set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `cpu`, `cuda` or `auto`.
    #[serde(default)]
    pub device: Option<String>,
}

/// Warm-up requests.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    /// Texts run as one batch before the model version is marked ready.
    #[serde(default)]
    pub texts: Vec<String>,
}

fn default_platform() -> String {
    "onnxruntime_onnx".to_owned()
}
fn default_max_sequence_length() -> usize {
    256
}
fn default_max_text_bytes() -> usize {
    16 * 1024
}
fn default_max_batch_tokens() -> usize {
    16 * 1024
}
fn default_max_queue_size() -> usize {
    1024
}

impl ModelConfig {
    /// Reads and validates `<model_dir>/config.toml`.
    pub fn load(model_dir: &Path) -> Result<ModelConfig, InferError> {
        let path = model_dir.join("config.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|err| InferError::Load(format!("cannot read {}: {err}", path.display())))?;
        let config: ModelConfig = toml::from_str(&text)
            .map_err(|err| InferError::Load(format!("invalid {}: {err}", path.display())))?;
        config.validate(model_dir, &path)?;
        Ok(config)
    }

    fn validate(&self, model_dir: &Path, path: &Path) -> Result<(), InferError> {
        let bad = |what: String| InferError::Load(format!("invalid {}: {what}", path.display()));
        let folder = model_dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if self.name != folder {
            return Err(bad(format!(
                "name '{}' differs from the folder name '{folder}'",
                self.name
            )));
        }
        if self.max_batch_size == 0 {
            return Err(bad("max_batch_size must be at least 1".into()));
        }
        match self.input.as_slice() {
            [only] if only.datatype == "BYTES" && only.dims == [1] => {}
            _ => {
                return Err(bad(
                    "exactly one input of datatype BYTES and dims [1] is supported".into(),
                ));
            }
        }
        if self.output.is_empty() {
            return Err(bad("at least one output is required".into()));
        }
        if let Some(out) = self.output.iter().find(|o| o.datatype != "FP32") {
            return Err(bad(format!(
                "output '{}' has datatype {}; only FP32 is supported",
                out.name, out.datatype
            )));
        }
        if let Some(out) = self.output.iter().find(|o| o.dims.iter().any(|d| *d <= 0)) {
            return Err(bad(format!(
                "output '{}' needs fixed positive dims, got {:?}",
                out.name, out.dims
            )));
        }
        if self.max_sequence_length < 2 {
            return Err(bad("max_sequence_length must be at least 2".into()));
        }
        if self.batching.max_queue_size == 0 {
            return Err(bad("batching.max_queue_size must be at least 1".into()));
        }
        Ok(())
    }

    /// Number of f32 values one row of `output` holds.
    pub fn row_len(output: &OutputConfig) -> usize {
        output.dims.iter().map(|d| *d as usize).product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_policy_keeps_the_newest_versions() {
        assert_eq!(VersionPolicy::Latest(2).select(&[1, 2, 5]), vec![2, 5]);
        assert_eq!(VersionPolicy::Latest(3).select(&[4]), vec![4]);
        assert_eq!(VersionPolicy::Specific(vec![1, 9]).select(&[1, 2]), vec![1]);
        assert_eq!(VersionPolicy::All(true).select(&[1, 2]), vec![1, 2]);
    }

    #[test]
    fn a_config_naming_another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("embedder");
        std::fs::create_dir(&model_dir).unwrap();
        std::fs::write(
            model_dir.join("config.toml"),
            r#"
name = "other"
max_batch_size = 4
tokenizer = "tokenizer.json"
[[input]]
name = "TEXT"
datatype = "BYTES"
dims = [1]
[[output]]
name = "e"
datatype = "FP32"
dims = [3]
source = "e"
"#,
        )
        .unwrap();
        let err = ModelConfig::load(&model_dir).unwrap_err().to_string();
        assert!(err.contains("differs from the folder name"), "{err}");
    }
}

//! The model runtime: ONNX Runtime through `ort`, behind the small [`Backend`] trait that
//! the batcher drives.
//!
//! The runtime library is loaded dynamically (`ORT_DYLIB_PATH`, default
//! `.deps/onnxruntime/lib/libonnxruntime.so`), never downloaded. The CUDA execution provider is
//! registered explicitly when asked for: `--device cuda` refuses to start without it, `auto`
//! falls back to CPU with one warning that names the reason.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::Tensor;

use crate::error::InferError;

/// Where the model should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// CPU only.
    Cpu,
    /// The CUDA execution provider; refuse to load a model without it.
    Cuda,
    /// CUDA when it works, CPU otherwise (with a warning).
    Auto,
}

impl Device {
    /// Parses a model config's `runtime.device`.
    pub fn parse(text: &str) -> Option<Device> {
        match text {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda),
            "auto" => Some(Device::Auto),
            _ => None,
        }
    }
}

/// Execution provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// ONNX Runtime's CUDA provider.
    Cuda,
}

impl Provider {
    /// Name as reported in metadata and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
        }
    }
}

/// Session options, shared by every model the service loads.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeOptions {
    /// ONNX Runtime shared library to load.
    #[arg(
        long = "ort-dylib-path",
        env = "ORT_DYLIB_PATH",
        default_value = ".deps/onnxruntime/lib/libonnxruntime.so"
    )]
    pub dylib_path: PathBuf,

    /// Where models run: `cpu`, `cuda` (refuse to start without a working CUDA provider) or
    /// `auto` (CUDA when available, else CPU with a warning). Overrides each model's config.
    #[arg(long, env = "INFERENCE_DEVICE", value_enum)]
    pub device: Option<Device>,

    /// Threads ONNX Runtime uses inside one operator; 0 = one per core.
    #[arg(long, env = "INFERENCE_INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_op_threads: usize,

    /// Graph optimisation level: 0 (off), 1 (basic), 2 (extended), 3 (all).
    #[arg(long, env = "INFERENCE_OPT_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub optimization_level: u8,

    /// On the CUDA provider, serve a version's `model.fp16.onnx` (its fp16 form, as `make
    /// model` builds it) in place of `model.onnx` when the folder has one: half the memory
    /// and the GPU's fp16 units. Every GPU the CUDA provider runs on (compute capability 7.5
    /// and up for CUDA 13) computes fp16 natively. `--no-fp16` keeps fp32 everywhere; the CPU
    /// provider always runs `model.onnx`.
    #[arg(long = "no-fp16", env = "INFERENCE_NO_FP16", action = clap::ArgAction::SetFalse)]
    pub fp16: bool,

    /// Let ONNX Runtime's worker threads spin between the operators of a run (they stop when
    /// the run returns). Lower latency at low concurrency; on a small box it takes cycles
    /// that tokenization and gRPC need under heavy load (see BENCHMARKS.md).
    #[arg(long, env = "INFERENCE_SPIN", default_value_t = false)]
    pub spin: bool,
}

/// Set once the CPU fallback has been announced.
static CPU_FALLBACK_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads the ONNX Runtime library once per process and returns its environment.
pub fn environment(dylib: &Path) -> Result<&'static Environment, InferError> {
    ENVIRONMENT
        .get_or_init(|| {
            if !dylib.exists() {
                return Err(format!(
                    "ONNX Runtime library not found at {} (run `make deps`, or set ORT_DYLIB_PATH)",
                    dylib.display()
                ));
            }
            ort::init_from(dylib)
                .map_err(|err| format!("cannot load ONNX Runtime from {}: {err}", dylib.display()))?
                .with_name("inference")
                .with_telemetry(false)
                .build()
                .map_err(|err| format!("cannot create the ONNX Runtime environment: {err}"))
        })
        .as_ref()
        .map_err(|reason| InferError::Load(reason.clone()))
}

/// A padded batch of token ids, row-major `[rows, seq_len]`.
pub struct EncodedBatch {
    /// Number of rows (texts).
    pub rows: usize,
    /// Tokens per row after padding to the longest row.
    pub seq_len: usize,
    /// Token ids, 0 on padding.
    pub input_ids: Vec<i64>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<i64>,
}

/// One model output for the whole batch, row-major `[rows, row_len]`.
pub struct BatchOutput {
    /// Values of every row.
    pub values: Vec<f32>,
    /// Values per row.
    pub row_len: usize,
}

/// A model the batcher can run. Implemented by ONNX Runtime here, and by fakes in tests.
pub trait Backend: Send + 'static {
    /// Runs one padded batch and returns the named graph outputs, in the order asked.
    fn run(&mut self, batch: &EncodedBatch, outputs: &[String])
    -> Result<Vec<BatchOutput>, String>;
}

/// An ONNX Runtime session for one model version.
pub struct OrtBackend {
    session: Session,
    has_token_type_ids: bool,
}

impl OrtBackend {
    /// Creates a session for `model_path` on the requested device.
    pub fn load(
        model_path: &Path,
        device: Device,
        options: &RuntimeOptions,
    ) -> Result<(OrtBackend, Provider), InferError> {
        let env = environment(&options.dylib_path)?;
        let fail = |err: ort::Error| {
            InferError::Load(format!("cannot load {}: {err}", model_path.display()))
        };
        let level = match options.optimization_level {
            0 => GraphOptimizationLevel::Disable,
            1 => GraphOptimizationLevel::Level1,
            2 => GraphOptimizationLevel::Level2,
            _ => GraphOptimizationLevel::All,
        };
        let threads = if options.intra_op_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            options.intra_op_threads
        };
        let mut builder = Session::builder(env)
            .map_err(fail)?
            .with_optimization_level(level)
            .map_err(|e| fail(e.into()))?
            .with_intra_threads(threads)
            .map_err(|e| fail(e.into()))?
            .with_intra_op_spinning(options.spin)
            .map_err(|e| fail(e.into()))?
            .with_inter_op_spinning(false)
            .map_err(|e| fail(e.into()))?;
        if options.spin {
            // Spin between the operators of a run only: the threads stop as soon as the run
            // returns, instead of burning the cores until the next request.
            builder = builder
                .with_config_entry("session.force_spinning_stop", "1")
                .map_err(|e| fail(e.into()))?;
        }
        let provider = match device {
            Device::Cpu => Provider::Cpu,
            Device::Cuda | Device::Auto => match register_cuda(&mut builder) {
                Ok(()) => Provider::Cuda,
                Err(reason) if device == Device::Cuda => {
                    return Err(InferError::Load(format!(
                        "--device cuda was requested but the CUDA execution provider is unusable: {reason}"
                    )));
                }
                Err(reason) => {
                    // One loud line per process; later loads repeat it at debug level only.
                    if CPU_FALLBACK_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!(%reason, model = %model_path.display(), "CUDA unavailable, running on CPU");
                    } else {
                        tracing::warn!(%reason, "CUDA unavailable: models run on the CPU execution provider");
                    }
                    Provider::Cpu
                }
            },
        };
        let file = model_file(model_path, provider, options.fp16);
        if file != model_path {
            tracing::info!(model = %model_path.display(), file = %file.display(), "serving the fp16 form on the CUDA provider");
        }
        let session = builder.commit_from_file(&file).map_err(fail)?;
        let has_token_type_ids = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        Ok((
            OrtBackend {
                session,
                has_token_type_ids,
            },
            provider,
        ))
    }
}

/// The file a version runs from: its fp16 form (`model.fp16.onnx` beside `model_path`) on the
/// CUDA provider when allowed and present, else `model_path` itself.
pub fn model_file(model_path: &Path, provider: Provider, fp16: bool) -> PathBuf {
    let half = model_path.with_file_name("model.fp16.onnx");
    if provider == Provider::Cuda && fp16 && half.is_file() {
        half
    } else {
        model_path.to_owned()
    }
}

#[cfg(feature = "cuda")]
fn register_cuda(builder: &mut ort::session::builder::SessionBuilder) -> Result<(), String> {
    use ort::ep::ExecutionProvider;
    let cuda = ort::ep::CUDA::default();
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            return Err("this ONNX Runtime library was built without the CUDA provider".into());
        }
        Err(err) => return Err(err.to_string()),
    }
    cuda.register(builder).map_err(|err| err.to_string())
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(_builder: &mut ort::session::builder::SessionBuilder) -> Result<(), String> {
    Err("the service was built without the `cuda` feature".into())
}

impl Backend for OrtBackend {
    fn run(
        &mut self,
        batch: &EncodedBatch,
        outputs: &[String],
    ) -> Result<Vec<BatchOutput>, String> {
        let shape = [batch.rows as i64, batch.seq_len as i64];
        let ids =
            Tensor::from_array((shape, batch.input_ids.clone())).map_err(|e| e.to_string())?;
        let mask =
            Tensor::from_array((shape, batch.attention_mask.clone())).map_err(|e| e.to_string())?;
        let mut selector = ort::session::OutputSelector::no_default();
        for name in outputs {
            selector = selector.with(name.clone());
        }
        let options = RunOptions::new()
            .map_err(|e| e.to_string())?
            .with_outputs(selector);
        let result = if self.has_token_type_ids {
            let types = Tensor::from_array((shape, vec![0_i64; batch.input_ids.len()]))
                .map_err(|e| e.to_string())?;
            self.session.run_with_options(
                ort::inputs!["input_ids" => ids, "attention_mask" => mask, "token_type_ids" => types],
                &options,
            )
        } else {
            self.session.run_with_options(
                ort::inputs!["input_ids" => ids, "attention_mask" => mask],
                &options,
            )
        };
        let result = result.map_err(|e| e.to_string())?;
        outputs
            .iter()
            .map(|name| {
                let value = result
                    .get(name)
                    .ok_or_else(|| format!("the graph has no output '{name}'"))?;
                let (out_shape, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| e.to_string())?;
                if out_shape.first().copied() != Some(batch.rows as i64) {
                    return Err(format!(
                        "output '{name}' has shape {out_shape:?}, expected {} rows",
                        batch.rows
                    ));
                }
                Ok(BatchOutput {
                    row_len: data.len() / batch.rows.max(1),
                    values: data.to_vec(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_provider_serves_the_fp16_form_when_present_and_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let fp32 = dir.path().join("model.onnx");
        let half = dir.path().join("model.fp16.onnx");
        std::fs::write(&fp32, b"fp32").unwrap();
        // No fp16 file: fp32 everywhere.
        assert_eq!(model_file(&fp32, Provider::Cuda, true), fp32);
        std::fs::write(&half, b"fp16").unwrap();
        assert_eq!(model_file(&fp32, Provider::Cuda, true), half);
        assert_eq!(model_file(&fp32, Provider::Cuda, false), fp32, "--no-fp16");
        assert_eq!(
            model_file(&fp32, Provider::Cpu, true),
            fp32,
            "never on the CPU"
        );
    }
}

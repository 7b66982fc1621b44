//! Command-line and environment configuration of the inference service.

use std::net::SocketAddr;
use std::path::PathBuf;

use shared::telemetry::TelemetryArgs;
use shared::tls::TlsArgs;

use crate::runtime::RuntimeOptions;

/// Serves ONNX models over the Open Inference Protocol (KServe v2, Triton-compatible) and
/// the `serving.inference.v1` task API, with dynamic batching.
///
/// Every flag can also be set through the environment variable named in its help.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "inference", version, about, long_about)]
pub struct InferenceConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "INFERENCE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// Model repository: `<repository>/<model>/config.toml` and
    /// `<repository>/<model>/<version>/model.onnx`.
    #[arg(long, env = "MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: PathBuf,

    /// Models to load at start-up, comma-separated; default: every model in the repository.
    /// The service is ready (health SERVING) once all of them are loaded and warmed up, and
    /// refuses to start if one fails to load.
    #[arg(long, env = "INFERENCE_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Runtime options.
    #[command(flatten)]
    pub runtime: RuntimeOptions,

    /// How long shutdown waits for in-flight requests to finish, in seconds.
    #[arg(long, env = "INFERENCE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// API keys as `key:tenant:role` (comma-separated). Model loads and unloads
    /// (`RepositoryModelLoad`/`Unload`) need an `admin` key; with no key configured they are
    /// refused. Inference itself stays open to whoever reaches the port (the gateway, in
    /// front, checks the clients' keys).
    #[arg(
        long,
        env = "INFERENCE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// A TOML file of API keys (SHA-256 digests, as `deploy/api-keys.example.toml`), read with
    /// `--api-keys`.
    #[arg(long, env = "INFERENCE_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Largest accepted gRPC message, in bytes.
    #[arg(long, env = "INFERENCE_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// TLS: this service asks its callers for a certificate signed by the mesh's CA.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Telemetry.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

//! Helpers for the mesh's integration tests: start services in-process on ephemeral ports,
//! wait for their readiness signal, find the real model and the real third-party clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use inference::InferenceConfig;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::serving::inference::v1::inference_tasks_client::InferenceTasksClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The model repository built by `make model`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MODEL_REPOSITORY").map_or_else(|| repo_root().join("models"), PathBuf::from)
}

/// The ONNX Runtime library installed by `make deps`.
pub fn ort_dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map_or_else(
        || repo_root().join(".deps/onnxruntime/lib/libonnxruntime.so"),
        PathBuf::from,
    )
}

/// A program of the project's Python environment (`grpcurl`, `python`, …).
pub fn venv_bin(name: &str) -> PathBuf {
    repo_root().join(".venv/bin").join(name)
}

/// One case of sentence-transformers' reference embeddings.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReferenceCase {
    /// The sentence.
    pub text: String,
    /// Token ids sentence-transformers produced, special tokens included.
    pub input_ids: Vec<u32>,
    /// The normalised embedding.
    pub embedding: Vec<f32>,
}

/// The reference cases of `fixtures/minilm_l6_embeddings.json`.
pub fn reference_cases() -> Vec<ReferenceCase> {
    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<ReferenceCase>,
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/minilm_l6_embeddings.json");
    let text = std::fs::read_to_string(&path).expect("reference fixture");
    serde_json::from_str::<Fixture>(&text)
        .expect("valid fixture")
        .cases
}

/// Largest absolute difference between two vectors of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Configuration of an in-process inference service over `repository`, loading `models`.
pub fn inference_config(repository: &Path, models: &[&str]) -> InferenceConfig {
    use clap::Parser as _;
    let mut args = vec![
        "inference".to_owned(),
        "--model-repository".to_owned(),
        repository.display().to_string(),
        "--ort-dylib-path".to_owned(),
        ort_dylib().display().to_string(),
        "--device".to_owned(),
        "cpu".to_owned(),
        "--shutdown-grace-secs".to_owned(),
        "20".to_owned(),
    ];
    if !models.is_empty() {
        args.push("--models".to_owned());
        args.push(models.join(","));
    }
    InferenceConfig::parse_from(args)
}

/// An inference service running in-process on an ephemeral port.
pub struct RunningInference {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), inference::ServeError>>>,
}

impl RunningInference {
    /// Starts the service on the current runtime and waits until its health is SERVING.
    pub async fn start(config: InferenceConfig) -> anyhow::Result<RunningInference> {
        let (listener, addr) = shared::testing::ephemeral_listener().await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(inference::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let mut running = RunningInference {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        if let Err(err) = wait_until_serving(addr).await {
            let outcome = running.stop().await;
            bail!("the service did not become ready: {err}; it returned {outcome:?}");
        }
        Ok(running)
    }

    /// Sends the shutdown signal without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the service down and returns what `serve` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.trigger_shutdown();
        if let Some(task) = self.task.take() {
            task.await.context("the server task panicked")??;
        }
        Ok(())
    }

    /// A channel to the service.
    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }
}

/// Connects a channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect")
}

/// Follows `grpc.health.v1.Health/Watch` until the overall status is SERVING (60 s at most).
pub async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let watch = async {
        let mut client = HealthClient::new(connect(addr).await);
        let mut updates = client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        while let Some(update) = updates.next().await {
            if update?.status == ServingStatus::Serving as i32 {
                return Ok(());
            }
        }
        bail!("the health stream ended before SERVING")
    };
    tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .context("not SERVING after 60 s")?
}

/// A server shared by the read-only tests of one test binary: it runs on its own thread
/// and runtime, so it outlives each test's runtime. Loads every model of the repository.
pub fn shared_inference() -> SocketAddr {
    static SHARED: OnceLock<SocketAddr> = OnceLock::new();
    *SHARED.get_or_init(|| {
        let (ready, addr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let running = RunningInference::start(inference_config(&models_dir(), &[]))
                    .await
                    .expect("shared inference service starts");
                ready.send(running.addr).expect("test waits");
                // Keep serving until the test process exits.
                std::future::pending::<()>().await;
                drop(running);
            });
        });
        addr.recv().expect("shared inference service started")
    })
}

/// An Open Inference Protocol client of `addr`.
pub async fn oip_client(addr: SocketAddr) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(connect(addr).await)
}

/// A task-API client of `addr`.
pub async fn task_client(addr: SocketAddr) -> InferenceTasksClient<Channel> {
    InferenceTasksClient::new(connect(addr).await)
}

/// Builds a `ModelInferRequest` for texts, with `contents.bytes_contents`.
pub fn text_request(model: &str, texts: &[&str]) -> proto::inference::ModelInferRequest {
    use proto::inference::model_infer_request::InferInputTensor;
    proto::inference::ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: "TEXT".to_owned(),
            datatype: "BYTES".to_owned(),
            shape: vec![texts.len() as i64, 1],
            contents: Some(proto::inference::InferTensorContents {
                bytes_contents: texts
                    .iter()
                    .map(|t| bytes::Bytes::copy_from_slice(t.as_bytes()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Encodes texts as raw BYTES contents: a 4-byte little-endian length before each element.
pub fn raw_bytes(texts: &[&str]) -> bytes::Bytes {
    let mut raw = Vec::new();
    for text in texts {
        raw.extend_from_slice(&(text.len() as u32).to_le_bytes());
        raw.extend_from_slice(text.as_bytes());
    }
    raw.into()
}

/// Decodes an FP32 raw output into floats.
pub fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs a command to completion, failing with its output when it exits non-zero.
pub async fn run_command(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {} (run `make deps`)", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{} {:?} exited with {}\nstdout:\n{stdout}\nstderr:\n{}",
            program.display(),
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

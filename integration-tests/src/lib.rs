//! Helpers for the mesh's integration tests: start services in-process on ephemeral ports,
//! wait for their readiness signal, find the real model and the real third-party clients.

pub mod otlp;
pub mod otlp_build;
pub mod postgres;
pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use inference::InferenceConfig;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::serving::inference::v1::inference_tasks_client::InferenceTasksClient;
use shared::tls::MeshTls;
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
        "--api-keys".to_owned(),
        TEST_KEYS.to_owned(),
        "--plaintext".to_owned(),
    ];
    if !models.is_empty() {
        args.push("--models".to_owned());
        args.push(models.join(","));
    }
    InferenceConfig::parse_from(args)
}

/// `--plaintext`, unless the flags (or environment variable names) already set up TLS: the
/// services refuse to start with neither, and most tests talk plaintext to them (the TLS
/// suite gives them certificates).
pub fn plaintext_unless_tls<'a>(given: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    let tls = given
        .into_iter()
        .any(|arg| arg.starts_with("--tls-") || arg.starts_with("TLS_") || arg == "--plaintext");
    (!tls).then_some("--plaintext")
}

/// The TLS a service of the test speaks, to check its health with its own certificate (which
/// also serves as a client's). Plaintext when its settings do not load: the service itself
/// then fails to start, and says why.
fn own_tls(args: &shared::tls::TlsArgs) -> MeshTls {
    MeshTls::load(args).unwrap_or_else(|_| MeshTls::plaintext())
}

/// The TLS of a process started with `args` and `envs`, to check its health with its own
/// certificate.
fn process_tls(args: &[&str], envs: &[(&str, &str)]) -> MeshTls {
    let given = |flag: &str, env: &str| {
        args.windows(2)
            .find(|pair| pair[0] == flag)
            .map(|pair| PathBuf::from(pair[1]))
            .or_else(|| {
                envs.iter()
                    .find(|(name, _)| *name == env)
                    .map(|(_, value)| PathBuf::from(value))
            })
    };
    own_tls(&shared::tls::TlsArgs {
        tls_cert: given("--tls-cert", "TLS_CERT_FILE"),
        tls_key: given("--tls-key", "TLS_KEY_FILE"),
        tls_ca: given("--tls-ca", "TLS_CA_FILE"),
        ..Default::default()
    })
}

/// A throwaway CA and certificates for every service of the mesh and `operator`, written as
/// cert-manager mounts them, for tests of the mesh over TLS.
pub struct TestPki {
    dir: tempfile::TempDir,
    certs: mesh_certs::MeshCerts,
}

impl TestPki {
    /// A new CA and its certificates.
    pub fn new() -> TestPki {
        let certs =
            mesh_certs::generate("test CA", &mesh_certs::MESH_NAMES, &mesh_certs::LOCAL_HOSTS)
                .expect("certificates");
        let dir = tempfile::tempdir().expect("temporary folder");
        certs.write_to(dir.path()).expect("certificates written");
        TestPki { dir, certs }
    }

    /// The folder of `name`'s `tls.crt`, `tls.key` and `ca.crt`.
    pub fn folder(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The flags that give a service `name`'s certificate.
    pub fn args(&self, name: &str) -> Vec<String> {
        let folder = self.folder(name);
        [
            "--tls-cert",
            "tls.crt",
            "--tls-key",
            "tls.key",
            "--tls-ca",
            "ca.crt",
        ]
        .chunks(2)
        .flat_map(|pair| {
            [
                pair[0].to_owned(),
                folder.join(pair[1]).display().to_string(),
            ]
        })
        .collect()
    }

    /// A client holding `name`'s certificate.
    pub fn client(&self, name: &str) -> MeshTls {
        self.client_trusting(name, self)
    }

    /// A client holding `name`'s certificate of this CA, trusting `other`'s CA.
    pub fn client_trusting(&self, name: &str, other: &TestPki) -> MeshTls {
        let leaf = self.certs.leaf(name).expect("a certificate of that name");
        MeshTls::from_pem(
            leaf.cert_pem.clone().into_bytes(),
            leaf.key_pem.clone().into_bytes(),
            other.certs.ca_pem.clone().into_bytes(),
        )
        .expect("client TLS")
    }
}

impl Default for TestPki {
    fn default() -> TestPki {
        TestPki::new()
    }
}

/// The API keys every test service knows: `admin-key` (tenant `ops`, admin) and `client-key`
/// (tenant `shop`, client).
pub const TEST_KEYS: &str = "admin-key:ops:admin,client-key:shop:client";

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
        let tls = own_tls(&config.tls);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(inference::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let mut running = RunningInference {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        if let Err(err) = wait_until_serving_over(addr, &tls).await {
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

/// Connects a channel to `addr` over `tls` (plaintext when it is).
pub async fn connect_over(addr: SocketAddr, tls: &MeshTls) -> anyhow::Result<Channel> {
    let url = format!("{}://{addr}", tls.scheme());
    Ok(tls.endpoint(&url, "the test's address")?.connect().await?)
}

/// Follows `grpc.health.v1.Health/Watch` until the overall status is SERVING (60 s at most).
pub async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    wait_until_serving_over(addr, &MeshTls::plaintext()).await
}

/// As [`wait_until_serving`], over `tls`.
pub async fn wait_until_serving_over(addr: SocketAddr, tls: &MeshTls) -> anyhow::Result<()> {
    let watch = async {
        let mut client = HealthClient::new(connect_over(addr, tls).await?);
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

/// A service binary of the workspace (`target/debug/<name>`), built by `make test`.
pub fn service_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// The address a child process listens on once it has bound its listening socket: the
/// readiness signal of a process started with `--listen 127.0.0.1:0` (or any program told to
/// bind port 0), read from `/proc` (its socket descriptors matched with the kernel's table of
/// listening TCP sockets). So no test picks a port for a child: the child binds one the kernel
/// chose, and the test learns it. Fails when the process exits first or `within` passes.
pub async fn listening_addr(pid: u32, within: Duration) -> anyhow::Result<SocketAddr> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(addr) = listening_now(pid) {
            return Ok(addr);
        }
        anyhow::ensure!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} exited before it listened"
        );
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "process {pid} did not listen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first IPv4 TCP socket of process `pid` that is listening, if any; one on 127.0.0.1
/// first (a second listener, such as the collector's `/metrics`, can be bound elsewhere on the
/// loopback, e.g. 127.0.0.2, to tell them apart).
fn listening_now(pid: u32) -> Option<SocketAddr> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let mut listening = table.lines().skip(1).filter_map(|line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !inodes.contains(*inode) {
            return None;
        }
        let (ip, port) = local.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::from((ip.to_le_bytes(), port)))
    });
    let first = listening.next()?;
    if first.ip() == std::net::Ipv4Addr::LOCALHOST {
        return Some(first);
    }
    Some(
        listening
            .find(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST)
            .unwrap_or(first),
    )
}

/// An inference service running as a separate process, so that a test can kill it.
pub struct InferenceProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl InferenceProcess {
    /// Starts `target/debug/inference` on a free port and waits until SERVING.
    pub async fn start(
        repository: &Path,
        models: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<InferenceProcess> {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        Self::start_on(any, repository, models, envs).await
    }

    /// Starts `target/debug/inference` serving the reference model (`minilm-l6`), exporting its
    /// spans and metrics over OTLP to `endpoint`.
    pub async fn exporting_to(endpoint: &str) -> anyhow::Result<InferenceProcess> {
        let envs = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)];
        Self::start(&models_dir(), &["minilm-l6"], &envs).await
    }

    /// Starts `target/debug/inference` on `addr` (e.g. where a killed one listened; port 0 for
    /// one the kernel picks) and waits until SERVING.
    pub async fn start_on(
        addr: SocketAddr,
        repository: &Path,
        models: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<InferenceProcess> {
        let mut command = tokio::process::Command::new(service_binary("inference"));
        command
            .args(["--listen", &addr.to_string(), "--model-repository"])
            .arg(repository)
            .arg("--ort-dylib-path")
            .arg(ort_dylib())
            .args(["--device", "cpu", "--models", &models.join(",")])
            .args(["--api-keys", TEST_KEYS])
            .args(plaintext_unless_tls(envs.iter().map(|(name, _)| *name)))
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn()?;
        let pid = child.id().context("the inference process has no pid")?;
        let addr = listening_addr(pid, Duration::from_secs(60))
            .await
            .context("inference process")?;
        let process = InferenceProcess { addr, child };
        wait_until_serving_over(addr, &process_tls(&[], envs)).await?;
        Ok(process)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Kills the process at once (SIGKILL): no draining, connections break.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the process gracefully (SIGTERM) and waits for it.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
    }
}

/// A service of the workspace running as a separate process, so that a test can kill it
/// (SIGKILL) or stop it (SIGTERM).
pub struct ServiceProcess {
    /// Where it listens (its gRPC port).
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl ServiceProcess {
    /// Starts `target/debug/<name>` with `args` (which must make it listen on port 0 or a
    /// given one) and waits until its health is SERVING.
    pub async fn start(name: &str, args: &[&str]) -> anyhow::Result<ServiceProcess> {
        Self::start_with_env(name, args, &[]).await
    }

    /// As [`ServiceProcess::start`], with environment variables `envs`.
    pub async fn start_with_env(
        name: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<ServiceProcess> {
        let child = tokio::process::Command::new(service_binary(name))
            .args(args)
            .args(plaintext_unless_tls(args.iter().copied()))
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("the process has no pid")?;
        let addr = listening_addr(pid, Duration::from_secs(60))
            .await
            .with_context(|| format!("{name} process"))?;
        let process = ServiceProcess { addr, child };
        wait_until_serving_over(addr, &process_tls(args, &[])).await?;
        Ok(process)
    }

    /// Kills the process at once (SIGKILL) and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the process gracefully (SIGTERM), waits for it, and says whether it exited 0.
    pub async fn terminate(mut self) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        self.child.wait().await.is_ok_and(|s| s.success())
    }
}

/// Gateway configuration for tests: the given replicas and keys `client-key` (tenant `shop`,
/// role client) and `admin-key` (tenant `ops`, role admin), plus `extra` flags.
pub fn gateway_config(replicas: &[SocketAddr], extra: &[&str]) -> gateway::GatewayConfig {
    use clap::Parser as _;
    let replicas: Vec<String> = replicas.iter().map(ToString::to_string).collect();
    let mut args = vec![
        "gateway".to_owned(),
        "--inference".to_owned(),
        replicas.join(","),
        "--api-keys".to_owned(),
        TEST_KEYS.to_owned(),
        "--inference-api-key".to_owned(),
        "admin-key".to_owned(),
        "--health-interval-ms".to_owned(),
        "200".to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.extend(plaintext_unless_tls(extra.iter().copied()).map(str::to_owned));
    gateway::GatewayConfig::parse_from(args)
}

/// A gateway running in-process on an ephemeral port.
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), gateway::ServeError>>>,
}

impl RunningGateway {
    /// Starts the gateway and waits until its health is SERVING.
    pub async fn start(config: gateway::GatewayConfig) -> anyhow::Result<RunningGateway> {
        let (listener, addr) = shared::testing::ephemeral_listener().await?;
        let tls = own_tls(&config.tls);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        wait_until_serving_over(addr, &tls).await?;
        Ok(RunningGateway {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Shuts the gateway down and returns what `serve` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("the gateway task panicked")??;
        }
        Ok(())
    }
}

/// Adds `authorization: Bearer <key>` (and optionally a routing key) to a request.
pub fn with_key<T>(message: T, key: &str, routing_key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    if let Some(routing_key) = routing_key {
        request
            .metadata_mut()
            .insert("x-routing-key", routing_key.parse().unwrap());
    }
    request
}

/// `request` as a call made inside the caller's span `parent_span` of trace `trace_id` (both
/// lower-case hex): a sampled W3C `traceparent`.
pub fn in_trace<T>(
    mut request: tonic::Request<T>,
    trace_id: &str,
    parent_span: &str,
) -> tonic::Request<T> {
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_span}-01").parse().unwrap(),
    );
    request
}

/// A gateway task-API client of `addr`.
pub async fn gateway_client(
    addr: SocketAddr,
) -> proto::ecommerce::gateway::v1::gateway_client::GatewayClient<Channel> {
    proto::ecommerce::gateway::v1::gateway_client::GatewayClient::new(connect(addr).await)
}

/// A plain HTTP/1.1 GET on loopback; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// A metrics collector running in-process on ephemeral ports.
pub struct RunningCollector {
    /// OTLP and query (gRPC) address.
    pub grpc: SocketAddr,
    /// `/metrics` (HTTP) address.
    pub http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), metrics_collector::ServeError>>>,
}

impl RunningCollector {
    /// Starts a collector with `extra` flags and waits until its health is SERVING.
    pub async fn start(extra: &[&str]) -> anyhow::Result<RunningCollector> {
        use clap::Parser as _;
        let (grpc_listener, grpc) = shared::testing::ephemeral_listener().await?;
        let (http_listener, http) = shared::testing::ephemeral_listener().await?;
        let mut args = vec!["metrics-collector"];
        args.extend_from_slice(extra);
        args.extend(plaintext_unless_tls(extra.iter().copied()));
        let config = metrics_collector::Config::parse_from(args);
        let tls = own_tls(&config.tls);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(metrics_collector::serve(
            grpc_listener,
            http_listener,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        wait_until_serving_over(grpc, &tls).await?;
        Ok(RunningCollector {
            grpc,
            http,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The OTLP endpoint, as senders spell it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A client of the query API.
    pub async fn query_client(
        &self,
    ) -> proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient<Channel> {
        proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient::new(
            connect(self.grpc).await,
        )
    }

    /// Shuts the collector down and returns what `serve` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("the collector task panicked")??;
        }
        Ok(())
    }
}

/// A query request of `function` over `metric` (no matchers).
pub fn metric_query(
    metric: &str,
    function: proto::monitoring::metrics::v1::Function,
    window_seconds: u32,
    group_by: &[&str],
) -> proto::monitoring::metrics::v1::QueryRequest {
    proto::monitoring::metrics::v1::QueryRequest {
        selector: Some(proto::monitoring::metrics::v1::Selector {
            metric: metric.to_owned(),
            matchers: vec![],
        }),
        function: function as i32,
        window_seconds,
        quantile: 0.0,
        group_by: group_by.iter().map(|s| (*s).to_owned()).collect(),
        at_unix_seconds: 0,
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `limit`; the error names
/// `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A database of its own on the PostgreSQL at 127.0.0.1:5432 (or `TEST_POSTGRES_URL`), dropped
/// at the end. A test that panics or is killed leaves its database behind; the next one
/// created against a server on this machine's loopback drops it, once nothing is connected
/// to it (its name holds the pid of a process that is gone).
pub struct TestDatabase {
    admin: sqlx::PgPool,
    name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates it.
    pub async fn create() -> TestDatabase {
        let server = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {server} (set TEST_POSTGRES_URL to another): {e}")
            });
        if on_this_machine(&server) {
            sweep_orphans(&admin).await;
        }
        // Unique in this process too: tests starting at once may read the same clock.
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "{TEST_DATABASE_PREFIX}{}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
            CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // A database name cannot be a bound parameter; this one is built here from digits.
        // PostgreSQL refuses to copy template1 while another session is connected to it (as
        // another test's CREATE DATABASE may be, for an instant): that one is tried again.
        let mut tries = 0;
        while let Err(err) = sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
        {
            tries += 1;
            assert!(
                tries < 20 && err.to_string().contains("is being accessed by other users"),
                "CREATE DATABASE {name} on {server}: {err}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        TestDatabase {
            url: format!("{server}/{name}"),
            admin,
            name,
        }
    }

    /// Drops it.
    pub async fn drop(self) {
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await;
    }
}

/// The start of every test database's name, followed by the creating process's pid.
const TEST_DATABASE_PREFIX: &str = "alerts_test_";

/// Whether the server at `url` (`postgres://[user@]host[:port]`) runs on this machine, where
/// the pids in test databases' names mean something.
fn on_this_machine(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// Drops the test databases whose creating process no longer runs on this machine (tests
/// that panicked or were killed before dropping theirs). Only where `/proc` lists this
/// machine's processes, and never one with a session on it (a process of another pid
/// namespace sharing the server still uses it; so may a killed test's leftover gateway):
/// `DROP DATABASE` without `FORCE` refuses those.
async fn sweep_orphans(admin: &sqlx::PgPool) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(TEST_DATABASE_PREFIX)
            .fetch_all(admin)
            .await
            .unwrap_or_default();
    for name in names {
        let pid = name[TEST_DATABASE_PREFIX.len()..].split('_').next();
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        // One with a session is skipped rather than waited for (DROP waits 5 s, then fails).
        let sessions: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&name)
                .fetch_one(admin)
                .await
                .unwrap_or(1);
        if gone && sessions == 0 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                .execute(admin)
                .await;
        }
    }
}

/// An alert manager running in-process.
pub struct RunningAlertManager {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Stops it.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// Its task.
    pub task: tokio::task::JoinHandle<Result<(), alert_manager::ServeError>>,
}

/// Starts an alert manager on `collector`, the rules in `rules` and database `db`, evaluating
/// every 200 ms, with keys `admin-key` (admin) and `client-key` (client).
pub async fn start_alert_manager(
    collector: &str,
    rules: &std::path::Path,
    db: &str,
) -> RunningAlertManager {
    start_alert_manager_with(collector, rules, db, &[]).await
}

/// As [`start_alert_manager`], with `extra` flags.
pub async fn start_alert_manager_with(
    collector: &str,
    rules: &std::path::Path,
    db: &str,
    extra: &[&str],
) -> RunningAlertManager {
    use clap::Parser as _;
    let (listener, addr) = shared::testing::ephemeral_listener().await.unwrap();
    let mut args = vec![
        "alert-manager",
        "--collector",
        collector,
        "--rules",
        rules.to_str().unwrap(),
        "--database-url",
        db,
        "--evaluation-interval-ms",
        "200",
        "--api-keys",
        "admin-key:ops:admin,client-key:shop:client",
    ];
    args.extend_from_slice(extra);
    args.extend(plaintext_unless_tls(extra.iter().copied()));
    let config = alert_manager::Config::parse_from(args);
    let tls = own_tls(&config.tls);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(alert_manager::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    wait_until_serving_over(addr, &tls).await.unwrap();
    RunningAlertManager { addr, stop, task }
}

/// The closed loop over a running inference service: a collector, a gateway that sends it
/// every call's prediction record, and an alert manager (on a database of its own) whose rules
/// act on that gateway with the admin key.
pub struct ClosedLoop {
    /// The collector: metrics, traces and the prediction-feedback join.
    pub collector: RunningCollector,
    /// The gateway in front of the inference service.
    pub gateway: RunningGateway,
    /// The alert manager.
    pub manager: RunningAlertManager,
    /// Its database.
    pub db: TestDatabase,
    _rules: tempfile::TempDir,
}

impl ClosedLoop {
    /// Starts the loop over the inference service at `inference`, the alert manager with the
    /// rules file `rules` (YAML), the gateway with `gateway_extra` flags.
    pub async fn start(inference: SocketAddr, rules: &str, gateway_extra: &[&str]) -> ClosedLoop {
        let collector = RunningCollector::start(&[]).await.unwrap();
        let endpoint = collector.endpoint();
        let mut flags = vec!["--records-endpoint", endpoint.as_str()];
        flags.extend_from_slice(gateway_extra);
        let gateway = RunningGateway::start(gateway_config(&[inference], &flags))
            .await
            .unwrap();
        let db = TestDatabase::create().await;
        let rules_dir = tempfile::tempdir().unwrap();
        std::fs::write(rules_dir.path().join("rules.yaml"), rules).unwrap();
        let gateway_url = format!("http://{}", gateway.addr);
        let manager = start_alert_manager_with(
            &endpoint,
            rules_dir.path(),
            &db.url,
            &["--gateway", &gateway_url, "--gateway-api-key", "admin-key"],
        )
        .await;
        ClosedLoop {
            collector,
            gateway,
            manager,
            db,
            _rules: rules_dir,
        }
    }

    /// Stops the alert manager, the gateway and the collector, and drops the database.
    pub async fn stop(mut self) {
        let _ = self.manager.stop.send(());
        self.manager.task.await.unwrap().unwrap();
        self.gateway.stop().await.unwrap();
        self.collector.stop().await.unwrap();
        self.db.drop().await;
    }
}

/// A canary split of `model`: these `(version, weight)` pairs.
pub fn canary_split(
    model: &str,
    weights: &[(i64, u32)],
) -> proto::ecommerce::gateway::v1::SetCanaryRequest {
    use proto::ecommerce::gateway::v1::{SetCanaryRequest, VersionWeight};
    SetCanaryRequest {
        model: model.to_owned(),
        weights: weights
            .iter()
            .map(|&(version, weight)| VersionWeight { version, weight })
            .collect(),
        expected_revision: None,
    }
}

/// The alert manager's action runner as the closed loop runs it against the gateway at `addr`
/// (plaintext, the admin key `admin-key`), without the least interval between two runs.
pub fn canary_action_runner(addr: SocketAddr) -> alert_manager::actions::ActionRunner {
    alert_manager::actions::ActionRunner::new(alert_manager::actions::ActionConfig {
        tls: shared::tls::MeshTls::plaintext(),
        gateway: Some(format!("http://{addr}")),
        gateway_api_key: Some("admin-key".into()),
        inference: None,
        inference_api_key: None,
        min_interval: std::time::Duration::ZERO,
        dry_run: false,
    })
}

/// Has the inference service at `addr` serve exactly `versions` of `model` (a load with a
/// version policy, as an operator sends it; versions left out are unloaded).
pub async fn serve_versions(addr: SocketAddr, model: &str, versions: &[i64]) {
    let policy = serde_json::json!({"version_policy": {"specific": {"versions": versions}}});
    let parameter = proto::inference::ModelRepositoryParameter {
        parameter_choice: Some(
            proto::inference::model_repository_parameter::ParameterChoice::StringParam(
                policy.to_string(),
            ),
        ),
    };
    oip_client(addr)
        .await
        .repository_model_load(with_key(
            proto::inference::RepositoryModelLoadRequest {
                repository_name: String::new(),
                model_name: model.into(),
                parameters: [("config".to_owned(), parameter)].into(),
            },
            "admin-key",
            None,
        ))
        .await
        .unwrap_or_else(|status| panic!("serving versions {versions:?} of {model}: {status:?}"));
}

/// The canary split of `model` on the gateway at `addr`, as `(version, weight)` pairs, read
/// with the admin key.
pub async fn canary_weights(
    addr: SocketAddr,
    model: &str,
) -> Result<Vec<(i64, u32)>, tonic::Status> {
    use proto::ecommerce::gateway::v1::GetCanaryRequest;
    use proto::ecommerce::gateway::v1::gateway_admin_client::GatewayAdminClient;
    let request = GetCanaryRequest {
        model: model.to_owned(),
    };
    let split = GatewayAdminClient::new(connect(addr).await)
        .get_canary(with_key(request, "admin-key", None))
        .await?
        .into_inner();
    Ok(split
        .weights
        .iter()
        .map(|w| (w.version, w.weight))
        .collect())
}

/// A webhook receiver that keeps every JSON body POSTed to `/hook`.
pub async fn start_receiver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                store
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str::<serde_json::Value>(&body).unwrap());
                "ok"
            }
        }),
    );
    let (listener, addr) = shared::testing::ephemeral_listener().await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// Notifications received so far with `status` (`firing` or `resolved`).
pub fn received_with(received: &std::sync::Mutex<Vec<serde_json::Value>>, status: &str) -> usize {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == status)
        .count()
}

/// Every incident the alert manager of `client` holds, all pages.
pub async fn all_incidents(
    client: &proto::monitoring::alerts::v1::alert_manager_client::AlertManagerClient<Channel>,
) -> Vec<proto::monitoring::alerts::v1::Incident> {
    use proto::monitoring::alerts::v1 as am;
    let mut client = client.clone();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_incidents(am::ListIncidentsRequest {
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.incidents);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// A metrics collector process listening on `listen` (`127.0.0.1:0` for a port the kernel
/// picks; its `/metrics` on 127.0.0.2) and keeping its state in `data_dir`.
pub async fn collector_process(listen: &str, data_dir: &Path) -> ServiceProcess {
    ServiceProcess::start(
        "metrics-collector",
        &[
            "--listen",
            listen,
            "--http-listen",
            "127.0.0.2:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    )
    .await
    .expect("the collector starts on its data directory")
}

/// The alerts the alert manager at `address` lists (none while it cannot be reached).
pub async fn list_alerts(
    address: std::net::SocketAddr,
) -> Vec<proto::monitoring::alerts::v1::Alert> {
    use proto::monitoring::alerts::v1 as am;
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
    else {
        return Vec::new();
    };
    am::alert_manager_client::AlertManagerClient::new(channel)
        .list_alerts(am::ListAlertsRequest::default())
        .await
        .map(|r| r.into_inner().alerts)
        .unwrap_or_default()
}

/// A repository whose `minilm-l6` serves versions 1 and 2 (links to the built model).
pub fn two_version_repository() -> tempfile::TempDir {
    repository_serving("minilm-l6", &[(1, 1), (2, 1)])
}

/// A model repository whose `model` serves the given versions, each a link to a version of
/// the project's `models/` (`(version, built_version)`): e.g. `[(1, 1), (2, 2)]` for fp32 and
/// its int8 form side by side, both loaded.
pub fn repository_serving(model: &str, versions: &[(i64, i64)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = models_dir().join(model);
    let folder = dir.path().join(model);
    std::fs::create_dir(&folder).unwrap();
    let config = std::fs::read_to_string(source.join("config.toml")).unwrap();
    let served: Vec<String> = versions.iter().map(|(v, _)| v.to_string()).collect();
    let policy = format!("specific = [{}]", served.join(", "));
    assert!(config.contains("specific = [1]"), "{config}");
    std::fs::write(
        folder.join("config.toml"),
        config.replace("specific = [1]", &policy),
    )
    .unwrap();
    std::os::unix::fs::symlink(source.join("tokenizer.json"), folder.join("tokenizer.json"))
        .unwrap();
    for (version, built) in versions {
        std::fs::create_dir(folder.join(version.to_string())).unwrap();
        std::os::unix::fs::symlink(
            source.join(built.to_string()).join("model.onnx"),
            folder.join(version.to_string()).join("model.onnx"),
        )
        .unwrap();
    }
    dir
}

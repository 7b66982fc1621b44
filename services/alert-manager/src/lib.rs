//! The alert manager: evaluates alert rules (thresholds, burn-rate SLOs, drift) against the
//! metrics collector every second, keeps the alerts' states, and records incidents with their
//! timelines in PostgreSQL, served as `monitoring.alerts.v1`.
//!
//! [`rules`] reads and checks the YAML rules; [`evaluator`] turns rules into collector queries
//! and observations into alert states; [`engine`] runs the loop; [`incidents`] is the
//! PostgreSQL store; [`grpc`] the API.

pub mod actions;
pub mod alert;
pub mod api_error;
pub mod diagnosis;
pub mod engine;
pub mod evaluator;
pub mod grpc;
pub mod incidents;
pub mod labels;
pub mod leader;
pub mod notify;
pub mod rules;
pub mod silencing;
pub mod spill;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::monitoring::alerts::v1::alert_manager_server::AlertManagerServer;
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
use shared::auth::ApiKeys;
use shared::serving::Serving;
use shared::telemetry::TelemetryArgs;
use shared::tls::{Callers, MeshTls, TlsArgs};
use tokio::net::TcpListener;

use crate::engine::{Engine, EngineConfig};
use crate::incidents::IncidentStore;

/// Evaluates alert rules against the metrics collector and keeps incidents in PostgreSQL.
///
/// Every flag can also be set through the environment variable named in its help.
#[derive(Clone, clap::Parser)]
#[command(name = "alert-manager", version, about, long_about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "ALERT_MANAGER_LISTEN", default_value = "127.0.0.1:50054")]
    pub listen: SocketAddr,

    /// How long shutdown waits for in-flight calls to finish, in seconds (health turns
    /// NOT_SERVING first; calls still running then are abandoned).
    #[arg(long, env = "ALERT_MANAGER_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// The metrics collector's query API.
    #[arg(
        long,
        env = "ALERT_MANAGER_COLLECTOR",
        default_value = "http://127.0.0.1:4317"
    )]
    pub collector: String,

    /// Rules files, or folders whose *.yaml files are read (comma-separated). They are re-read
    /// when they change; a file that does not load is refused whole and the previous rules stay.
    #[arg(
        long,
        env = "ALERT_MANAGER_RULES",
        value_delimiter = ',',
        default_value = "deploy/rules"
    )]
    pub rules: Vec<PathBuf>,

    /// PostgreSQL, e.g. postgres://user@127.0.0.1:5432/alerts (migrations are applied at start).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// How long to keep trying at start while the database cannot be reached (down, starting,
    /// or slow to answer), in seconds; after that the service exits with the error.
    #[arg(long, env = "ALERT_MANAGER_DATABASE_WAIT_SECS", default_value_t = 30)]
    pub database_wait_secs: u64,

    /// Interval between evaluations of every rule, in milliseconds.
    #[arg(
        long,
        env = "ALERT_MANAGER_EVALUATION_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub evaluation_interval_ms: u64,

    /// Resolve an incident when every alert of its group has resolved (off: an operator
    /// resolves it).
    #[arg(long, env = "ALERT_MANAGER_AUTO_RESOLVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_resolve: bool,

    /// API keys as `key:tenant:role` (comma-separated); writes need an `admin` key.
    #[arg(
        long,
        env = "ALERT_MANAGER_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// A TOML file of hashed API keys (see deploy/api-keys.example.toml).
    #[arg(long, env = "ALERT_MANAGER_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// The gateway's admin API, for `set_canary_weight` and `promote_canary` actions (e.g.
    /// http://127.0.0.1:50051). Any one replica will do when the gateways share their
    /// database (`--database-url`): a change through one is applied by all.
    #[arg(long, env = "ALERT_MANAGER_GATEWAY")]
    pub gateway: Option<String>,

    /// The admin API key the actions present to the gateway.
    #[arg(long, env = "ALERT_MANAGER_GATEWAY_API_KEY", hide_env_values = true)]
    pub gateway_api_key: Option<String>,

    /// The inference service, for `reload_model` and `unload_model` actions (e.g.
    /// http://127.0.0.1:50052). The action goes to every address the name resolves to at the
    /// time (in Kubernetes the headless Service, one address per pod), or to each of several
    /// comma-separated URLs, and the incident's timeline gets each replica's outcome.
    #[arg(long, env = "ALERT_MANAGER_INFERENCE")]
    pub inference: Option<String>,

    /// Least time between two runs of one action on one target, in seconds.
    #[arg(
        long,
        env = "ALERT_MANAGER_ACTION_MIN_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub action_min_interval_secs: u64,

    /// Admin API key of the inference service, sent with model reload and unload actions.
    #[arg(long, env = "ALERT_MANAGER_INFERENCE_API_KEY", hide_env_values = true)]
    pub inference_api_key: Option<String>,

    /// A saved evaluation state (alerts, `for` timers, notification timing) older than this is
    /// not restored at start or on taking the lead, in seconds: pending alerts start afresh.
    #[arg(long, env = "ALERT_MANAGER_STATE_MAX_AGE_SECS", default_value_t = 3600)]
    pub state_max_age_secs: u64,

    /// Folder of this replica's spill log: incident writes waiting for PostgreSQL are kept
    /// there, so that they survive a SIGTERM, a crash or a lost lead during an outage, and are
    /// written in order when the database returns; writes the database refused for their
    /// content are kept beside it in `quarantine.jsonl`. Each replica needs its own folder.
    /// Unset, waiting writes live in memory only (a warning says so at start).
    #[arg(long, env = "ALERT_MANAGER_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,

    /// How long one notification's POST may take before it counts as failed and is retried
    /// with back-off, in seconds. Each receiver is served on its own, so a receiver that never
    /// answers delays only its own notifications.
    #[arg(
        long,
        env = "ALERT_MANAGER_NOTIFICATION_TIMEOUT_SECS",
        default_value_t = 5
    )]
    pub notification_timeout_secs: u64,

    /// Record remediation actions on the timeline without running them.
    #[arg(long, env = "ALERT_MANAGER_ACTIONS_DRY_RUN")]
    pub actions_dry_run: bool,

    /// Telemetry.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// TLS: towards the collector, the gateway and the inference service; and callers of this
    /// service's API must present a certificate signed by the mesh's CA.
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database URL may hold a password and the keys are secrets: neither is printed.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("collector", &self.collector)
            .field("rules", &self.rules)
            .field("evaluation_interval_ms", &self.evaluation_interval_ms)
            .field("auto_resolve", &self.auto_resolve)
            .finish_non_exhaustive()
    }
}

/// Largest answer taken from the collector. A `Batch` answer holds every rule's samples: up to
/// 10,000 series per metric with label values of up to 256 bytes each, far beyond tonic's
/// default 4 MiB (beyond which no rule would be evaluated at all).
const MAX_COLLECTOR_ANSWER_BYTES: usize = 512 * 1024 * 1024;

/// Why the service stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The incident database could not be opened.
    #[error("incident database: {0}")]
    Database(#[from] incidents::IncidentError),
    /// The API keys could not be read.
    #[error("API keys: {0}")]
    Keys(#[from] shared::auth::KeyStoreError),
    /// The spill log could not be opened.
    #[error("--spill-dir: {0}")]
    Spill(#[from] spill::SpillError),
    /// The TLS certificates could not be read, none was given without `--plaintext`, or an
    /// address's scheme does not fit.
    #[error("TLS: {0}")]
    Tls(#[from] shared::tls::TlsError),
}

/// Serves on `listener` until `shutdown` resolves, evaluating rules meanwhile.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = MeshTls::load(&config.tls)?;
    tls.check_scheme(&config.collector, "--collector")?;
    for (url, what) in [
        (&config.gateway, "--gateway"),
        (&config.inference, "--inference"),
    ] {
        if let Some(url) = url {
            tls.check_scheme(url, what)?;
        }
    }
    let keys = Arc::new(ApiKeys::load(
        config.api_keys_file.as_deref(),
        &config.api_keys,
    )?);
    let spilled = match &config.spill_dir {
        Some(dir) => {
            let (log, replay) = spill::Spill::open::<engine::Write>(dir)?;
            if let Some(cut) = &replay.cut {
                tracing::warn!(log = %dir.display(), reason = %cut, "the spill log's tail was cut; the writes before it are kept");
            }
            Some((log, replay.writes, dir.clone()))
        }
        None => {
            tracing::warn!(
                "no --spill-dir: incident writes waiting for the database live in memory only, and a restart during an outage loses them"
            );
            None
        }
    };
    let incidents = IncidentStore::connect_within(
        &config.database_url,
        Duration::from_secs(config.database_wait_secs),
    )
    .await?;
    let engine = Arc::new(Engine::new(
        EngineConfig {
            paths: config.rules.clone(),
            auto_resolve: config.auto_resolve,
            state_max_age_ms: i64::try_from(config.state_max_age_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        },
        incidents,
        actions::ActionRunner::new(actions::ActionConfig {
            tls: tls.clone(),
            gateway: config.gateway.clone(),
            gateway_api_key: config.gateway_api_key.clone(),
            inference: config.inference.clone(),
            inference_api_key: config.inference_api_key.clone(),
            min_interval: Duration::from_secs(config.action_min_interval_secs),
            dry_run: config.actions_dry_run,
        }),
    ));
    if let Some((log, writes, dir)) = spilled {
        engine.attach_spill(log, writes, &dir);
    }
    engine.refresh_silences().await;
    if let Err(err) = engine.reload() {
        tracing::error!(error = %err, "starting without rules");
    }
    let channel = tls
        .endpoint(&config.collector, "--collector")?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let (mut routes, health, health_only) = shared::grpc::base_routes().await?;
    let mut serving = Serving::new(
        "alert-manager",
        health,
        Duration::from_secs(config.shutdown_grace_secs),
    );
    shared::tls::health_port(&mut serving, &config.tls, health_only).await?;
    let stop = serving.stop_signal();
    let delivery = tokio::spawn(engine.clone().deliver(
        stop.clone(),
        Duration::from_secs(config.notification_timeout_secs.max(1)),
    ));
    let writer = tokio::spawn(engine.clone().write(stop.clone()));
    // The lead is held until the last writes and the last save of the state are in.
    let (release, released) = shared::shutdown::channel();
    let election = tokio::spawn(leader::compete(engine.clone(), released));
    let evaluation = tokio::spawn(engine.clone().run(
        MetricsQueryClient::new(channel).max_decoding_message_size(MAX_COLLECTOR_ANSWER_BYTES),
        Duration::from_millis(config.evaluation_interval_ms.max(10)),
        stop.clone(),
    ));

    routes.add_service(AlertManagerServer::new(grpc::AlertService::new(
        engine, keys,
    )));
    tracing::info!(addr = ?listener.local_addr().ok(), collector = %config.collector, tls = !tls.is_plaintext(), "alert-manager listening");
    serving.spawn(
        shared::tls::server_builder(&tls, Callers::MustPresentCertificate)?
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(shared::grpc::incoming(listener), stop.wait()),
    );
    serving.ready(&[]).await;
    let served = serving.run_until(shutdown).await;
    // Evaluation stops, then the last writes and notifications go out, then the lead goes.
    let _ = evaluation.await;
    let _ = writer.await;
    let _ = delivery.await;
    release.trigger();
    let _ = election.await;
    served?;
    tracing::info!("alert-manager stopped");
    Ok(())
}

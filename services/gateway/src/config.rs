//! Command-line and environment configuration of the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

use shared::telemetry::TelemetryArgs;
use shared::tls::TlsArgs;

use crate::cache::{DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES};
use crate::records::DEFAULT_RECORD_BUFFER_BYTES;

/// The front door of the mesh: the `ecommerce.gateway.v1` task API and the Open Inference
/// Protocol, with API-key auth, per-key rate limits, routing over inference replicas, canary
/// splits between model versions and payload logging with personal data masked.
///
/// Every flag can also be set through the environment variable named in its help.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about, long_about)]
pub struct GatewayConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Inference replicas, comma-separated `host:port`. A name that resolves to several
    /// addresses (e.g. a headless Kubernetes Service) gives one replica per address.
    #[arg(
        long,
        env = "GATEWAY_INFERENCE",
        value_delimiter = ',',
        default_value = "127.0.0.1:50052"
    )]
    pub inference: Vec<String>,

    /// The admin key the inference replicas know (their `--api-keys`), sent with the model
    /// loads and unloads the gateway passes on to every replica.
    #[arg(long, env = "GATEWAY_INFERENCE_API_KEY", hide_env_values = true)]
    pub inference_api_key: Option<String>,

    /// API keys file (TOML): `[[key]]` tables with `sha256` (hex digest of the key), `tenant`
    /// and `role` (`client` or `admin`). Keys are never stored in clear.
    #[arg(long, env = "GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// API keys given directly, comma-separated `key:tenant:role`; hashed at start-up and never
    /// logged.
    #[arg(
        long,
        env = "GATEWAY_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Admit calls that carry no `authorization` metadata as this tenant, role client, with
    /// their own rate limit: for tools that cannot send gRPC metadata (perf_analyzer 2.51 drops
    /// `-H` on gRPC). Off by default; a wrong key is refused either way.
    #[arg(long, env = "GATEWAY_ANONYMOUS_TENANT")]
    pub anonymous_tenant: Option<String>,

    /// Requests per second allowed per API key (token bucket refill rate).
    #[arg(long, env = "GATEWAY_RATE_LIMIT", default_value_t = 500)]
    pub rate_limit: u32,

    /// Burst allowed per API key (token bucket size).
    #[arg(long, env = "GATEWAY_RATE_BURST", default_value_t = 1000)]
    pub rate_burst: u32,

    /// Calls handled at once across all keys; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_CONCURRENCY", default_value_t = 1024)]
    pub max_concurrency: usize,

    /// Streams one HTTP/2 connection may have open at once (announced to the client, which
    /// queues the rest).
    #[arg(
        long,
        env = "GATEWAY_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_streams_per_connection: u32,

    /// The share of those calls one tenant may run at once, in percent (at least one call), so
    /// that one tenant's flood leaves the others room.
    #[arg(long, env = "GATEWAY_TENANT_SHARE_PERCENT", default_value_t = 50)]
    pub tenant_share_percent: u32,

    /// A call whose first message does not follow its headers within this many milliseconds
    /// is ended (CANCELLED), freeing its slot: header-only streams cannot hold the gateway.
    #[arg(long, env = "GATEWAY_IDLE_STREAM_MS", default_value_t = 1000)]
    pub idle_stream_ms: u64,

    /// Interval between health checks of each inference replica, in milliseconds.
    #[arg(long, env = "GATEWAY_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,

    /// Seconds between two resolutions of the inference endpoints' names (a Kubernetes
    /// headless Service gives one address per ready pod): new replicas join after their first
    /// health check, gone ones leave. 0: resolve once, at start.
    #[arg(long, env = "GATEWAY_RESOLVE_INTERVAL_SECS", default_value_t = 10)]
    pub resolve_interval_secs: u64,

    /// Retries allowed per request, on average (a retry budget: each request earns this
    /// fraction of a retry; a burst of 10 is kept in hand).
    #[arg(long, env = "GATEWAY_RETRY_RATIO", default_value_t = 0.2)]
    pub retry_ratio: f64,

    /// Embeddings kept in the cache (keyed by model, version and text); 0 switches it off.
    #[arg(long, env = "GATEWAY_CACHE_ENTRIES", default_value_t = DEFAULT_CACHE_ENTRIES)]
    pub cache_entries: usize,

    /// Bytes the embedding cache may hold, each entry weighed by its text and its vector: long
    /// texts leave room for fewer entries. 0 switches the cache off.
    #[arg(long, env = "GATEWAY_CACHE_BYTES", default_value_t = DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,

    /// Fraction of calls whose payload summary is logged (0 = off), personal data masked.
    #[arg(long, env = "GATEWAY_PAYLOAD_LOG_SAMPLE", default_value_t = 0.0)]
    pub payload_log_sample: f64,

    /// Prediction and feedback records kept for the metrics collector; the oldest are dropped
    /// (and counted) beyond this.
    #[arg(long, env = "GATEWAY_RECORD_BUFFER", default_value_t = 10_000)]
    pub record_buffer: usize,

    /// Bytes the buffered prediction and feedback records may hold (estimated per record);
    /// the oldest are dropped (and counted) beyond this, so large Rank records cannot run the
    /// gateway out of memory while the collector is down or slow.
    #[arg(long, env = "GATEWAY_RECORD_BUFFER_BYTES", default_value_t = DEFAULT_RECORD_BUFFER_BYTES)]
    pub record_buffer_bytes: usize,

    /// PostgreSQL holding what is deployed (canary splits), shared by every gateway replica,
    /// e.g. `postgres://gateway@db/mesh`: a change through any replica is applied by all
    /// within a second and survives restarts. Unset: splits live in this process only (right
    /// for one replica). While the database is unreachable the gateway serves the splits it
    /// holds and refuses changes with UNAVAILABLE.
    #[arg(long, env = "GATEWAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The metrics collector that receives prediction and feedback records for its
    /// prediction–feedback join (e.g. `http://127.0.0.1:4317`); unset keeps them in the buffer
    /// only (and drops the oldest).
    #[arg(long, env = "GATEWAY_RECORDS_ENDPOINT")]
    pub records_endpoint: Option<String>,

    /// The sender key the collector knows (its `--api-keys`), sent with the record pushes.
    #[arg(long, env = "GATEWAY_RECORDS_API_KEY", hide_env_values = true)]
    pub records_api_key: Option<String>,

    /// Model that serves Embed and Rank.
    #[arg(long, env = "GATEWAY_EMBED_MODEL", default_value = "minilm-l6")]
    pub embed_model: String,

    /// Model that serves Classify.
    #[arg(
        long,
        env = "GATEWAY_CLASSIFY_MODEL",
        default_value = "purchase-intent"
    )]
    pub classify_model: String,

    /// Threads of the gateway's async runtime; 0 = half the cores, at least one. The gateway's
    /// own work per call is small, and on a machine it shares with inference replicas fewer
    /// threads mean fewer cross-thread wake-ups (measured: about 0.15 ms less added latency per
    /// call on 2 cores, see BENCHMARKS.md).
    #[arg(long, env = "GATEWAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// TLS: the gateway asks its callers for a certificate but does not require one (they
    /// authenticate with API keys), and calls the replicas and the collector over TLS.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Telemetry.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

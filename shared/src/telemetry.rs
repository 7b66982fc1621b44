//! Logging, tracing and metrics set-up shared by every service.
//!
//! Logs go to stderr as pretty text or JSON lines (`--log-format`). When an OTLP endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`), spans and metrics are exported over OTLP/gRPC
//! too; without one, the OpenTelemetry API stays a no-op and costs next to nothing.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::tls::{MeshTls, TlsArgs};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when stderr is a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Telemetry flags, flattened into every service's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax, e.g. `info` or `inference=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info,ort=warn")]
    pub log_filter: String,

    /// OTLP/gRPC endpoint for traces and metrics, e.g. `http://127.0.0.1:4317`.
    /// Unset: nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Interval between two metric exports, in milliseconds.
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL", default_value_t = 1000)]
    pub metric_export_interval_ms: u64,

    /// Service name reported in traces and metrics (`service.name`); defaults to the binary's name.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// This process's name among the replicas of its service (`service.instance.id`, the
    /// collector's `instance` label), so that replicas' metrics never fold into one: in
    /// Kubernetes the pod's name (downward API). Defaults to `<host name>-<process id>`.
    #[arg(long, env = "SERVICE_INSTANCE_ID")]
    pub service_instance_id: Option<String>,
}

/// The process's instance id, set by [`init`] (or first asked for): the one it exports as
/// `service.instance.id` and the one its records of operator changes name.
static INSTANCE_ID: OnceLock<String> = OnceLock::new();

/// This process's `service.instance.id`: the one given to [`init`], else
/// `<host name>-<process id>`.
pub fn instance_id() -> &'static str {
    INSTANCE_ID.get_or_init(default_instance_id)
}

/// `<host name>-<process id>`: unique among the processes of one machine, and in Kubernetes
/// (where the host name is the pod's name) among pods.
fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Telemetry could not be set up; the text says what and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TelemetryError(String);

/// Keeps the exporters alive; dropping it flushes what is still buffered.
#[must_use = "dropping the guard stops telemetry export"]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take()
            && let Err(err) = tracer.shutdown()
        {
            eprintln!("trace export shutdown failed: {err}");
        }
        if let Some(meter) = self.meter.take()
            && let Err(err) = meter.shutdown()
        {
            eprintln!("metric export shutdown failed: {err}");
        }
    }
}

/// The tracer of the service's exported spans, set once [`init`] has installed the OTLP span
/// exporter.
static EXPORTING_TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer whose spans leave the process, when an OTLP endpoint is configured. Without one
/// a span's only use is the context of the log lines written inside it, so a hot path may skip
/// it (see [`crate::trace_context::CallSpan`]).
pub fn exporting_tracer() -> Option<&'static SdkTracer> {
    EXPORTING_TRACER.get()
}

/// Installs the global `tracing` subscriber and, when an endpoint is set, the OTLP exporters.
///
/// Must be called from within a Tokio runtime (the exporters run on it).
pub fn init(
    default_service_name: &str,
    args: &TelemetryArgs,
    tls: &TlsArgs,
) -> Result<TelemetryGuard, TelemetryError> {
    let service_name = args
        .service_name
        .clone()
        .unwrap_or_else(|| default_service_name.to_owned());
    if let Some(id) = args.service_instance_id.as_deref().map(str::trim)
        && !id.is_empty()
    {
        // Set once per process; a later init (tests start several services in one process)
        // keeps the first.
        let _ = INSTANCE_ID.set(id.to_owned());
    }
    let instance = instance_id();
    global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_new(&args.log_filter).map_err(|err| {
        TelemetryError(format!("invalid log filter {:?}: {err}", args.log_filter))
    })?;
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match args.log_format {
        // Colours only on a terminal: a log file or collector gets plain text (and the
        // fields of every span are formatted without escape codes).
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };

    let mut guard = TelemetryGuard {
        tracer: None,
        meter: None,
    };
    // An empty endpoint (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT=`) means no export, like an unset one.
    let endpoint = args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty());
    let otel_layer = match endpoint {
        Some(endpoint) => {
            let tls = MeshTls::load(tls).map_err(|err| TelemetryError(err.to_string()))?;
            tls.check_scheme(endpoint, "the OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)")
                .map_err(|err| TelemetryError(err.to_string()))?;
            let resource = Resource::builder()
                .with_service_name(service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    instance.to_owned(),
                ))
                .build();
            let mut spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint);
            if let Some(config) = tls.client(None) {
                spans = spans.with_tls_config(config);
            }
            let spans = spans.build().map_err(|err| {
                TelemetryError(format!("OTLP span exporter for {endpoint}: {err}"))
            })?;
            let tracer_provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(spans)
                .build();
            let mut metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint);
            if let Some(config) = tls.client(None) {
                metrics = metrics.with_tls_config(config);
            }
            let metrics = metrics.build().map_err(|err| {
                TelemetryError(format!("OTLP metric exporter for {endpoint}: {err}"))
            })?;
            let reader = PeriodicReader::builder(metrics)
                .with_interval(Duration::from_millis(
                    args.metric_export_interval_ms.max(100),
                ))
                .build();
            let meter_provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(reader)
                .build();
            global::set_meter_provider(meter_provider.clone());
            observe_memory();
            let tracer = tracer_provider.tracer(service_name.clone());
            global::set_tracer_provider(tracer_provider.clone());
            guard.tracer = Some(tracer_provider);
            guard.meter = Some(meter_provider);
            // The subscriber below can be installed once per process, and so can this.
            let _ = EXPORTING_TRACER.set(tracer.clone());
            // No thread attributes (a task moves between threads; the name costs an allocation
            // per span) and no busy/idle timing of each poll: both cost every span on the hot
            // path for figures nobody reads.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .boxed(),
            )
        }
        None => None,
    };

    tracing_subscriber::registry()
        .with(fmt)
        .with(otel_layer)
        .with(filter)
        .try_init()
        .map_err(|err| TelemetryError(format!("a global subscriber is already set: {err}")))?;
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, service = %service_name, %instance, "exporting traces and metrics over OTLP");
    }
    Ok(guard)
}

/// Reports the process's resident memory at every export as `process.memory.usage` (bytes; the
/// name of OpenTelemetry's semantic conventions), where the system tells it.
fn observe_memory() {
    let _registered = global::meter("process")
        .u64_observable_gauge("process.memory.usage")
        .with_unit("By")
        .with_description("Resident memory of the process")
        .with_callback(|observer| {
            if let Some(bytes) = resident_bytes() {
                observer.observe(bytes, &[]);
            }
        })
        .build();
}

/// Resident set size of this process, from `/proc/self/status` (Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod memory_tests {
    #[test]
    fn resident_memory_is_read_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t  2000 kB\nVmRSS:\t  1234 kB\nThreads:\t3\n";
        assert_eq!(super::parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(super::parse_vm_rss("Name:\tx\n"), None);
        // This process has some resident memory.
        assert!(super::resident_bytes().is_some_and(|b| b > 0));
    }
}

//! Breach-to-notification latency of the collector and the alert manager, at one-second data
//! resolution: a sender exports a gauge every second (as the mesh's services do); at a random
//! moment within a second the gauge breaches its rule's threshold; the time until a webhook
//! receiver gets the firing notification is measured, and split into the wait for the sender's
//! next export and what the mesh adds after the export.
//!
//! With `--compare`, Prometheus 2.42 and Alertmanager 0.25 (Debian's `prometheus` and
//! `prometheus-alertmanager`) watch the same gauge in the same run: Prometheus scrapes the
//! collector's `/metrics` every second and evaluates `bench_queue_depth > 100` every second,
//! Alertmanager groups with `group_wait: 0s` and calls the same receiver. With
//! `--prometheus-setting common` they run as commonly configured instead: 15 s scrape and
//! evaluation, `group_wait: 30s`.
//!
//! Needs PostgreSQL (`DATABASE_ADMIN_URL`, default postgres://postgres@127.0.0.1:5432): a
//! throwaway database is created and dropped. Prints one JSON object.
//!
//!     alert_latency --trials 20 --compare

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};

/// Measures breach-to-notification latency.
#[derive(Debug, Parser)]
struct Args {
    /// Breaches to measure.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// The PostgreSQL server to create a throwaway database on.
    #[arg(
        long,
        env = "DATABASE_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    database: String,
    /// Also measure Prometheus + Alertmanager watching the same gauge.
    #[arg(long)]
    compare: bool,
    /// Their settings with --compare: `tuned` (1 s scrape and evaluation, group_wait 0s) or
    /// `common` (15 s scrape and evaluation, group_wait 30s: the usual configuration).
    #[arg(long, value_enum, default_value_t = Setting::Tuned)]
    prometheus_setting: Setting,
}

/// Prometheus and Alertmanager settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Setting {
    /// 1 s scrape and evaluation, group_wait 0s.
    Tuned,
    /// 15 s scrape and evaluation, group_wait 30s.
    Common,
}

impl Setting {
    /// Scrape and evaluation interval, and Alertmanager's group_wait.
    fn intervals(self) -> (&'static str, &'static str) {
        match self {
            Setting::Tuned => ("1s", "0s"),
            Setting::Common => ("15s", "30s"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Setting::Tuned => "1 s scrape, 1 s evaluation, group_wait 0s",
            Setting::Common => "15 s scrape, 15 s evaluation, group_wait 30s",
        }
    }
}

/// Starts Prometheus and Alertmanager in `dir`, scraping `metrics` and calling `hook`; returns
/// the two processes.
fn start_prometheus(
    dir: &std::path::Path,
    metrics: std::net::SocketAddr,
    hook: std::net::SocketAddr,
    setting: Setting,
) -> anyhow::Result<(tokio::process::Child, tokio::process::Child)> {
    let (interval, group_wait) = setting.intervals();
    let free = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (prom_port, am_port) = (free()?, free()?);
    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: bench\n  group_by: [alertname, model]\n  group_wait: {group_wait}\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: bench\n    webhook_configs:\n      - url: http://{hook}/prom\n        send_resolved: false\n"
        ),
    )?;
    std::fs::write(
        dir.join("rules.yml"),
        format!(
            "groups:\n  - name: bench\n    interval: {interval}\n    rules:\n      - alert: DeepQueue\n        expr: bench_queue_depth > 100\n        labels: {{severity: critical}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nrule_files: [{rules}]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\nscrape_configs:\n  - job_name: collector\n    honor_labels: true\n    static_configs:\n      - targets: ['{metrics}']\n",
            rules = dir.join("rules.yml").display()
        ),
    )?;
    let quiet = || std::process::Stdio::null();
    let alertmanager = tokio::process::Command::new("prometheus-alertmanager")
        .arg(format!(
            "--config.file={}",
            dir.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", dir.join("am").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(quiet())
        .stderr(quiet())
        .kill_on_drop(true)
        .spawn()?;
    let prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(quiet())
        .stderr(quiet())
        .kill_on_drop(true)
        .spawn()?;
    Ok((prometheus, alertmanager))
}

const RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 0s}
receivers:
  - {name: bench, url: "http://RECEIVER/hook"}
rules:
  - name: DeepQueue
    kind: threshold
    query: {metric: bench.queue.depth, function: last, window: 5s}
    group_by: [model]
    op: ">"
    threshold: 100
    labels: {severity: critical}
"#;

fn gauge(model: &str, value: f64) -> ExportMetricsServiceRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "bench.queue.depth".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            attributes: vec![KeyValue {
                                key: "model".into(),
                                value: Some(AnyValue {
                                    value: Some(any_value::Value::StringValue(model.into())),
                                }),
                                ..Default::default()
                            }],
                            time_unix_nano: now,
                            value: Some(number_data_point::Value::AsDouble(value)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use clap::Parser as _;
    let args = Args::parse();
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", args.database)).await?;
    let db = format!("alert_latency_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await?;

    let (grpc, collector_addr) = shared::testing::ephemeral_listener().await?;
    let (http, metrics_addr) = shared::testing::ephemeral_listener().await?;
    let collector = metrics_collector::Config::parse_from(["metrics-collector", "--plaintext"]);
    tokio::spawn(metrics_collector::serve(
        grpc,
        http,
        collector,
        std::future::pending(),
    ));

    // The receiver notes when each firing notification arrives, by model: ours on /hook,
    // Alertmanager's on /prom.
    type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;
    let arrivals: Arrivals = Arc::default();
    let prom_arrivals: Arrivals = Arc::default();
    let route = |store: Arrivals| {
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                    && v["status"] == "firing"
                    && let Some(model) = v["groupLabels"]["model"].as_str()
                {
                    store.lock().unwrap().push((model.to_owned(), at));
                }
                "ok"
            }
        })
    };
    let app = axum::Router::new()
        .route("/hook", route(arrivals.clone()))
        .route("/prom", route(prom_arrivals.clone()));
    let (hook, hook_addr) = shared::testing::ephemeral_listener().await?;
    tokio::spawn(async move { axum::serve(hook, app).await });

    let dir = std::env::temp_dir().join(format!("alert-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("rules.yaml"),
        RULES.replace("RECEIVER", &hook_addr.to_string()),
    )?;
    let (listener, _) = shared::testing::ephemeral_listener().await?;
    let url = format!("{}/{db}", args.database);
    let config = alert_manager::Config::parse_from([
        "alert-manager",
        "--collector",
        &format!("http://{collector_addr}"),
        "--rules",
        dir.to_str().unwrap_or_default(),
        "--database-url",
        &url,
        "--plaintext",
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(alert_manager::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    let _prometheus = if args.compare {
        // Their files in a folder of their own: the alert manager reads every YAML file of its
        // rules folder.
        let prom_dir = dir.join("prometheus");
        std::fs::create_dir_all(&prom_dir)?;
        let processes =
            start_prometheus(&prom_dir, metrics_addr, hook_addr, args.prometheus_setting)?;
        // Prometheus loads its rules and has scraped at least once before the first breach.
        let settle = match args.prometheus_setting {
            Setting::Tuned => 5,
            Setting::Common => 20,
        };
        tokio::time::sleep(Duration::from_secs(settle)).await;
        Some(processes)
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await;
        None
    };

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{collector_addr}"))?
        .connect()
        .await?;
    let mut otlp = MetricsServiceClient::new(channel);
    let mut total = Vec::new();
    let mut after_export = Vec::new();
    let mut prom_total = Vec::new();
    // With the common setting their notification takes most of a minute: the trials do not wait
    // for it (each breach stays on, a group of its own), and it is collected at the end.
    let wait_for_theirs = args.compare && args.prometheus_setting == Setting::Tuned;
    let mut breaches = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut rng_state = 0x9e37_79b9_u32;
    for trial in 0..args.trials {
        let model = format!("model-{trial:03}");
        // Quiet exports first, then a breach at a pseudo-random moment within a second.
        for _ in 0..2 {
            ticker.tick().await;
            otlp.export(gauge(&model, 1.0)).await?;
        }
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        let offset = Duration::from_millis(u64::from(rng_state % 1000));
        tokio::time::sleep(offset.min(Duration::from_millis(990))).await;
        let breach = Instant::now();
        ticker.tick().await;
        let exported = Instant::now();
        otlp.export(gauge(&model, 500.0)).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let find = |store: &Arrivals| {
            store
                .lock()
                .unwrap()
                .iter()
                .find(|(m, _)| *m == model)
                .map(|(_, at)| *at)
        };
        // The sender keeps exporting every second (Prometheus scrapes the latest value).
        let (arrived, prom_arrived) = loop {
            let ours = find(&arrivals);
            let theirs = find(&prom_arrivals);
            if ours.is_some() && (!wait_for_theirs || theirs.is_some()) {
                break (ours.unwrap_or(breach), theirs);
            }
            anyhow::ensure!(Instant::now() < deadline, "no notification for {model}");
            tokio::select! {
                _ = ticker.tick() => { otlp.export(gauge(&model, 500.0)).await?; }
                () = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        };
        total.push(arrived.duration_since(breach).as_secs_f64() * 1000.0);
        after_export.push(arrived.duration_since(exported).as_secs_f64() * 1000.0);
        if let Some(at) = prom_arrived.filter(|_| wait_for_theirs) {
            prom_total.push(at.duration_since(breach).as_secs_f64() * 1000.0);
        }
        breaches.push((model.clone(), breach));
        if wait_for_theirs || !args.compare {
            ticker.tick().await;
            otlp.export(gauge(&model, 1.0)).await?;
        }
    }
    if args.compare && !wait_for_theirs {
        // The breaching gauges stay as they are (the collector serves their last values).
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let got = prom_arrivals.lock().unwrap().clone();
            if breaches
                .iter()
                .all(|(m, _)| got.iter().any(|(g, _)| g == m))
            {
                for (model, breach) in &breaches {
                    if let Some((_, at)) = got.iter().find(|(g, _)| g == model) {
                        prom_total.push(at.duration_since(*breach).as_secs_f64() * 1000.0);
                    }
                }
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "Prometheus + Alertmanager notified {} of {} breaches within 3 minutes",
                got.len(),
                breaches.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = stop.send(());
    let _ = manager.await;
    let _ = std::fs::remove_dir_all(&dir);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    let report = serde_json::json!({
        "trials": args.trials,
        "export_interval_ms": 1000,
        "breach_to_notification_ms": {"p50": quantile(total.clone(), 0.5), "p99": quantile(total.clone(), 0.99), "max": quantile(total, 1.0)},
        "export_to_notification_ms": {"p50": quantile(after_export.clone(), 0.5), "p99": quantile(after_export.clone(), 0.99), "max": quantile(after_export, 1.0)},
        "prometheus_alertmanager_breach_to_notification_ms": if prom_total.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({"p50": quantile(prom_total.clone(), 0.5), "p99": quantile(prom_total.clone(), 0.99), "max": quantile(prom_total, 1.0), "settings": args.prometheus_setting.describe()})
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

//! The alert manager against a real metrics collector and a real PostgreSQL: a breach opens an
//! incident within 3 s, the incident resolves when the alert does, a group that fires again
//! opens a linked incident, operators act through the API with an admin key, and bad rules are
//! refused without losing the rules in force.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use proto::monitoring::alerts::v1 as pb;
use proto::monitoring::alerts::v1::alert_manager_client::AlertManagerClient;
use tonic::transport::Channel;

const RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 1s}
receivers:
  - {name: ops, url: "http://RECEIVER/hook"}
rules:
  - name: CheckoutErrors
    kind: threshold
    query: {metric: shop.errors, function: rate, window: 2s}
    group_by: [model]
    op: ">"
    threshold: 5
    labels: {severity: critical}
    annotations: {summary: "{{ $labels.model }} fails {{ $value }} times a second"}
"#;

fn errors(model: &str, n: f64) -> ExportMetricsServiceRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", "checkout")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "shop.errors".into(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![NumberDataPoint {
                            attributes: vec![kv("model", model)],
                            start_time_unix_nano: now,
                            time_unix_nano: now,
                            value: Some(number_data_point::Value::AsDouble(n)),
                            ..Default::default()
                        }],
                        aggregation_temporality: AggregationTemporality::Delta as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A database of its own on the PostgreSQL at 127.0.0.1:5432 (or `TEST_POSTGRES_URL`), dropped
/// at the end.
struct TestDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create() -> TestDatabase {
        let server = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {server} (set TEST_POSTGRES_URL to another): {e}")
            });
        let name = format!(
            "alerts_test_{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        // A database name cannot be a bound parameter; this one is built here from digits.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        TestDatabase {
            url: format!("{server}/{name}"),
            admin,
            name,
        }
    }

    async fn drop(self) {
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await;
    }
}

/// A webhook receiver that keeps every JSON body POSTed to `/hook`.
async fn start_receiver() -> (
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

struct RunningAlertManager {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), alert_manager::ServeError>>,
}

async fn start_alert_manager(
    collector: &str,
    rules: &std::path::Path,
    db: &str,
) -> RunningAlertManager {
    use clap::Parser as _;
    let (listener, addr) = shared::testing::ephemeral_listener().await.unwrap();
    let config = alert_manager::Config::parse_from([
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
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(alert_manager::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    wait_until_serving(addr).await.unwrap();
    RunningAlertManager { addr, stop, task }
}

fn admin<T>(message: T) -> tonic::Request<T> {
    with_key(message, "admin-key", None)
}

async fn incidents(client: &mut AlertManagerClient<Channel>) -> Vec<pb::Incident> {
    client
        .list_incidents(pb::ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_opens_an_incident_that_resolves_with_its_alert() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let (receiver, received) = start_receiver().await;
    std::fs::write(&rules, RULES.replace("RECEIVER", &receiver.to_string())).unwrap();
    let manager = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let mut client = AlertManagerClient::new(connect(manager.addr).await);
    let mut otlp = MetricsServiceClient::new(connect(collector.grpc).await);

    // 10 errors every 100 ms: 100 a second, far above the threshold of 5.
    let breach = Instant::now();
    let opened = loop {
        otlp.export(errors("minilm", 10.0)).await.unwrap();
        let found = incidents(&mut client).await;
        if let Some(first) = found.into_iter().next() {
            break first;
        }
        assert!(breach.elapsed() < Duration::from_secs(10), "no incident");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let detected = breach.elapsed();
    assert!(
        detected <= Duration::from_secs(3),
        "incident after {detected:?}"
    );
    assert_eq!(opened.state, pb::IncidentState::Open as i32);
    assert_eq!(opened.severity, "critical");
    assert_eq!(opened.labels["model"], "minilm");
    assert!(opened.title.starts_with("minilm fails"), "{}", opened.title);
    let alerts = client
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(alerts[0].state, pb::AlertState::Firing as i32);

    // Writes need an admin key.
    let note = pb::IncidentActionRequest {
        id: opened.id,
        note: "looking at the checkout replicas".into(),
    };
    let err = client.annotate_incident(note.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = client
        .annotate_incident(with_key(note.clone(), "client-key", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    client.annotate_incident(admin(note)).await.unwrap();
    let acked = client
        .acknowledge_incident(admin(pb::IncidentActionRequest {
            id: opened.id,
            note: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.state, pb::IncidentState::Acknowledged as i32);

    // The errors stop: within the 2 s window and an evaluation, the alert and the incident resolve.
    let resolved = eventually("the incident resolves", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let i = client
                .get_incident(pb::GetIncidentRequest { id: opened.id })
                .await
                .ok()?
                .into_inner();
            (i.state == pb::IncidentState::Resolved as i32).then_some(i)
        }
    })
    .await;
    let kinds: Vec<&str> = resolved
        .timeline
        .iter()
        .map(|e| e.kind.as_str())
        // Notifications and the diagnosis happen in the background: their places vary.
        .filter(|k| *k != "notified" && *k != "diagnosed")
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "fired",
            "note",
            "acknowledged",
            "alert_resolved",
            "resolved"
        ]
    );
    assert_eq!(resolved.timeline[0].actor, "alert-manager");
    assert!(
        resolved
            .timeline
            .iter()
            .any(|e| e.kind == "note" && e.actor == "ops")
    );
    // The receiver got exactly one firing payload (Alertmanager v4) and then one resolved.
    let payloads = eventually("the resolved notification", Duration::from_secs(10), || {
        let received = received.clone();
        async move {
            let got = received.lock().unwrap().clone();
            (got.len() >= 2).then_some(got)
        }
    })
    .await;
    assert_eq!(payloads.len(), 2, "{payloads:#?}");
    assert_eq!(payloads[0]["version"], "4");
    assert_eq!(payloads[0]["status"], "firing");
    assert_eq!(payloads[0]["groupLabels"]["model"], "minilm");
    assert_eq!(
        payloads[0]["alerts"][0]["labels"]["alertname"],
        "CheckoutErrors"
    );
    assert_eq!(payloads[1]["status"], "resolved");
    assert_eq!(payloads[1]["alerts"][0]["status"], "resolved");
    let notified = eventually("two notified events", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            let n = client
                .get_incident(pb::GetIncidentRequest { id: opened.id })
                .await
                .ok()?
                .into_inner()
                .timeline
                .iter()
                .filter(|e| e.kind == "notified")
                .count();
            (n >= 2).then_some(n)
        }
    })
    .await;
    assert_eq!(notified, 2);
    // The diagnosis report (written when it opened) and the resolution summary.
    let full = client
        .get_incident(pb::GetIncidentRequest { id: opened.id })
        .await
        .unwrap()
        .into_inner();
    assert!(
        full.report.contains("CheckoutErrors fired"),
        "{}",
        full.report
    );
    assert!(full.report.contains("Suspected causes"), "{}", full.report);
    assert!(full.timeline.iter().any(|e| e.kind == "diagnosed"));
    assert!(
        full.summary.contains("Time to acknowledge"),
        "{}",
        full.summary
    );
    assert!(
        full.summary.contains("looking at the checkout replicas"),
        "{}",
        full.summary
    );
    let stats = client
        .get_stats(pb::GetStatsRequest { since_seconds: 0 })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let checkout = stats
        .iter()
        .find(|s| s.service == "CheckoutErrors" && s.severity == "critical")
        .unwrap_or_else(|| panic!("{stats:?}"));
    assert_eq!(checkout.incidents, 1);
    assert!(
        checkout.mttr_seconds > 0.0 && checkout.mtta_seconds > 0.0,
        "{checkout:?}"
    );

    // A silence mutes the notifications of its alerts; the incident is still recorded.
    let silence = client
        .create_silence(admin(pb::CreateSilenceRequest {
            matchers: [("model".to_owned(), "=~bert.*".to_owned())].into(),
            duration_seconds: 600,
            comment: "load test of bert".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(silence.author, "ops");
    let muted = loop {
        otlp.export(errors("bert-base", 10.0)).await.unwrap();
        let found = incidents(&mut client).await;
        if let Some(i) = found
            .into_iter()
            .find(|i| i.labels.get("model").map(String::as_str) == Some("bert-base"))
        {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(muted.state, pb::IncidentState::Open as i32);

    // It fires again: a new incident, linked to the first.
    let again = loop {
        otlp.export(errors("minilm", 10.0)).await.unwrap();
        let found = incidents(&mut client).await;
        if found.len() == 3 {
            break found[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let again = incidents(&mut client)
        .await
        .into_iter()
        .find(|i| i.id != opened.id && i.labels["model"] == "minilm")
        .unwrap_or(again);
    assert_eq!(again.previous_incident_id, opened.id);
    assert_eq!(again.state, pb::IncidentState::Open as i32);
    // Nothing reached the receiver about bert-base, while minilm's new incident was notified.
    let bodies = received.lock().unwrap().clone();
    assert!(
        bodies
            .iter()
            .all(|b| b["groupLabels"]["model"] != "bert-base"),
        "{bodies:#?}"
    );

    // Bad input and bad rules.
    let err = client
        .get_incident(pb::GetIncidentRequest { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .acknowledge_incident(admin(pb::IncidentActionRequest {
            id: opened.id,
            note: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    std::fs::write(&rules, "rules: [{name: Broken, kind: threshold, op: '>'}]").unwrap();
    let err = client
        .reload_rules(admin(pb::ReloadRulesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("Broken"), "{err:?}");
    let listed = client
        .list_rules(pb::ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.rules.len(), 1);
    assert_eq!(listed.rules[0].name, "CheckoutErrors");
    assert!(
        listed.last_error.contains("needs 'threshold'"),
        "{}",
        listed.last_error
    );

    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

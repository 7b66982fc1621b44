//! The alert manager against a real metrics collector and a real PostgreSQL: a breach opens an
//! incident within 3 s, the incident resolves when the alert does, a group that fires again
//! opens a linked incident, operators act through the API with an admin key, and bad rules are
//! refused without losing the rules in force.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::postgres::ThrowawayPostgres;
use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
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
    errors_of(&[vec![("model", model.to_owned())]], n)
}

/// Delta error counts for several label sets at once.
fn errors_of(label_sets: &[Vec<(&str, String)>], n: f64) -> ExportMetricsServiceRequest {
    counts("shop.errors", label_sets, n)
}

/// Delta counts of `metric` for several label sets at once.
fn counts(metric: &str, label_sets: &[Vec<(&str, String)>], n: f64) -> ExportMetricsServiceRequest {
    integration_tests::otlp_build::delta_counts("checkout", metric, label_sets, n)
}

/// Keeps exporting what `request` makes (fresh timestamps each time) every 100 ms until the
/// returned flag is cleared.
fn keep_exporting(
    otlp: &MetricsServiceClient<Channel>,
    request: impl Fn() -> ExportMetricsServiceRequest + Send + 'static,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = on.clone();
    let mut otlp = otlp.clone();
    let task = tokio::spawn(async move {
        while flag.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = otlp.export(request()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (on, task)
}

/// Keeps exporting 10 errors of `model` every 100 ms until the returned flag is cleared.
fn keep_failing(
    otlp: &MetricsServiceClient<Channel>,
    model: &'static str,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    keep_exporting(otlp, move || errors(model, 10.0))
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

    // Writes need an admin key. The errors go on meanwhile, so that the incident stays open.
    let (failing_flag, failing) = keep_failing(&otlp, "minilm");
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

    failing_flag.store(false, std::sync::atomic::Ordering::Relaxed);
    failing.await.unwrap();
    // The errors stop: within the 2 s window and an evaluation, the alert and the incident resolve.
    let resolved = incident_when(
        &client,
        opened.id,
        "the incident resolves",
        Duration::from_secs(15),
        |i| i.state == pb::IncidentState::Resolved as i32,
    )
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

    // Operators use grpcurl: note, acknowledge and resolve the new incident. The errors go on
    // meanwhile, so that the incident does not resolve on its own first.
    let (failing_flag, failing) = keep_failing(&otlp, "minilm");
    let grpcurl = venv_bin("grpcurl");
    let addr = manager.addr.to_string();
    for (method, body) in [
        (
            "AnnotateIncident",
            format!(r#"{{"id": {}, "note": "paged the search team"}}"#, again.id),
        ),
        ("AcknowledgeIncident", format!(r#"{{"id": {}}}"#, again.id)),
        (
            "ResolveIncident",
            format!(r#"{{"id": {}, "note": "fixed by hand"}}"#, again.id),
        ),
    ] {
        let out = run_command(
            &grpcurl,
            &[
                "-plaintext",
                "-H",
                "authorization: Bearer admin-key",
                "-d",
                &body,
                &addr,
                &format!("monitoring.alerts.v1.AlertManager/{method}"),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("grpcurl {method}: {e}"));
        assert!(out.contains(&format!(r#""id": "{}""#, again.id)), "{out}");
    }
    let by_hand = client
        .get_incident(pb::GetIncidentRequest { id: again.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_hand.state, pb::IncidentState::Resolved as i32);
    let last = by_hand
        .timeline
        .iter()
        .rev()
        .find(|e| e.kind == "resolved")
        .unwrap();
    assert_eq!(
        (last.actor.as_str(), last.message.as_str()),
        ("ops", "fixed by hand")
    );
    failing_flag.store(false, std::sync::atomic::Ordering::Relaxed);
    failing.await.unwrap();

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

const STORM_RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 1s}
receivers:
  - {name: ops, url: "http://RECEIVER/hook"}
rules:
  - name: Errors
    kind: threshold
    query: {metric: shop.errors, function: rate, window: 2s}
    group_by: [model, replica]
    op: ">"
    threshold: 5
    labels: {severity: critical}
"#;

fn models(range: std::ops::Range<usize>, replicas: usize) -> Vec<Vec<(&'static str, String)>> {
    range
        .flat_map(|m| {
            (0..replicas).map(move |r| {
                vec![
                    ("model", format!("model-{m:03}")),
                    ("replica", format!("r{r:03}")),
                ]
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_alerts_make_ten_incidents_and_ten_notifications() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        STORM_RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    let manager = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let client = AlertManagerClient::new(connect(manager.addr).await);
    let mut otlp = MetricsServiceClient::new(connect(collector.grpc).await);
    // 10 models × 100 replicas = 1,000 alerts, grouped by model: 10 incidents.
    let series = models(0..10, 100);
    let firing = eventually("1,000 firing alerts", Duration::from_secs(20), || {
        let mut client = client.clone();
        let mut otlp = otlp.clone();
        let series = series.clone();
        async move {
            otlp.export(errors_of(&series, 10.0)).await.ok()?;
            let alerts = client
                .list_alerts(pb::ListAlertsRequest::default())
                .await
                .ok()?
                .into_inner()
                .alerts;
            let firing = alerts
                .iter()
                .filter(|a| a.state == pb::AlertState::Firing as i32)
                .count();
            (firing == 1000).then_some(firing)
        }
    })
    .await;
    assert_eq!(firing, 1000);
    let notified = eventually("10 notifications", Duration::from_secs(10), || {
        let received = received.clone();
        async move {
            let got = received.lock().unwrap().clone();
            let alerts: usize = got
                .iter()
                .map(|b| b["alerts"].as_array().map_or(0, Vec::len))
                .sum();
            (alerts >= 1000).then_some(got)
        }
    })
    .await;
    // Exactly one notification per group, each naming each of its alerts once.
    assert_eq!(notified.len(), 10, "{} payloads", notified.len());
    for body in &notified {
        let alerts = body["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 100);
        let mut fps: Vec<&str> = alerts
            .iter()
            .map(|a| a["fingerprint"].as_str().unwrap())
            .collect();
        fps.sort();
        fps.dedup();
        assert_eq!(fps.len(), 100);
    }
    let incidents = all_incidents(&client).await;
    assert_eq!(incidents.len(), 10);
    let _ = otlp.export(errors_of(&series, 0.0)).await;
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_postgres_loses_nothing_and_writes_nothing_twice() {
    let pg = ThrowawayPostgres::start();
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        STORM_RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    let manager = start_alert_manager(&collector.endpoint(), dir.path(), &pg.url()).await;
    let mut client = AlertManagerClient::new(connect(manager.addr).await);
    let mut otlp = MetricsServiceClient::new(connect(collector.grpc).await);

    // A storm: 20 models fire while the database is up…
    let first = models(0..20, 1);
    eventually("20 incidents", Duration::from_secs(20), || {
        let client = client.clone();
        let mut otlp = otlp.clone();
        let first = first.clone();
        async move {
            otlp.export(errors_of(&first, 10.0)).await.ok()?;
            (all_incidents(&client).await.len() == 20).then_some(())
        }
    })
    .await;
    // …then it goes down; 20 more models fire, and the first 20 stop (and resolve) meanwhile.
    pg.down();
    let second = models(20..40, 1);
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(4) {
        otlp.export(errors_of(&second, 10.0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let firing_now = client
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alerts
        .iter()
        .filter(|a| a.state == pb::AlertState::Firing as i32)
        .count();
    assert_eq!(
        firing_now, 20,
        "evaluation goes on while the database is down"
    );
    pg.up();
    // Everything arrives: 40 incidents, the first 20 resolved; the second 20 resolve too once
    // their errors stop.
    let done = eventually("40 resolved incidents", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let all = all_incidents(&client).await;
            let resolved = all
                .iter()
                .filter(|i| i.state == pb::IncidentState::Resolved as i32)
                .count();
            (all.len() == 40 && resolved == 40).then_some(all)
        }
    })
    .await;
    let mut models_seen: Vec<&str> = done.iter().map(|i| i.labels["model"].as_str()).collect();
    models_seen.sort();
    models_seen.dedup();
    assert_eq!(models_seen.len(), 40, "one incident per model, none twice");
    for incident in &done {
        let full = client
            .get_incident(pb::GetIncidentRequest { id: incident.id })
            .await
            .unwrap()
            .into_inner();
        let count = |kind: &str| full.timeline.iter().filter(|e| e.kind == kind).count();
        assert_eq!(
            (
                count("opened"),
                count("fired"),
                count("alert_resolved"),
                count("resolved")
            ),
            (1, 1, 1, 1),
            "incident {}: {:?}",
            incident.id,
            full.timeline
        );
    }
    // Each group was notified firing and resolved. Delivery is at least once: a POST that
    // succeeded just as the database went down (before it was marked delivered) is sent again.
    // Waits for distinct notifications, not for bodies: a repeated one must not stand in for
    // one still on its way.
    let distinct = eventually("80 distinct notifications", Duration::from_secs(20), || {
        let received = received.clone();
        async move {
            let mut distinct: Vec<(String, String)> = received
                .lock()
                .unwrap()
                .iter()
                .map(|b| (b["groupKey"].to_string(), b["status"].to_string()))
                .collect();
            distinct.sort();
            distinct.dedup();
            (distinct.len() >= 80).then_some(distinct)
        }
    })
    .await;
    assert_eq!(
        distinct.len(),
        80,
        "a firing and a resolved notification per group"
    );
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
}

/// The `Errors` rule of model-000, waiting 3 s (`for`) before it fires.
const PATIENT_RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 1s}
receivers:
  - {name: ops, url: "http://RECEIVER/hook"}
rules:
  - name: Errors
    kind: threshold
    query: {metric: shop.errors, function: rate, window: 2s}
    group_by: [model, replica]
    op: ">"
    threshold: 5
    for: 3s
    labels: {severity: critical}
"#;

/// Incident `id` as soon as `ready` holds for it (at most `limit`).
async fn incident_when(
    client: &AlertManagerClient<Channel>,
    id: i64,
    what: &str,
    limit: Duration,
    ready: impl Fn(&pb::Incident) -> bool,
) -> pb::Incident {
    let ready = &ready;
    eventually(what, limit, || {
        let mut client = client.clone();
        async move {
            let i = client
                .get_incident(pb::GetIncidentRequest { id })
                .await
                .ok()?
                .into_inner();
            ready(&i).then_some(i)
        }
    })
    .await
}

/// Keeps exporting 10 errors of model-000 every 100 ms until the returned flag is cleared.
fn keep_storming(
    otlp: &MetricsServiceClient<Channel>,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let one = models(0..1, 1);
    keep_exporting(otlp, move || errors_of(&one, 10.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_pending_timers_and_continues_the_incident() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        PATIENT_RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    let otlp = MetricsServiceClient::new(connect(collector.grpc).await);
    let (storming, storm) = keep_storming(&otlp);

    // The alert is pending; the manager restarts 1.5 s into its 3 s `for`.
    let manager = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let pending = eventually("a pending alert", Duration::from_secs(20), || async {
        list_alerts(manager.addr)
            .await
            .into_iter()
            .find(|a| a.state == pb::AlertState::Pending as i32)
    })
    .await;
    let since = pending.active_since_unix_ms;
    // Time passing is what is tested here: the timer must have run half its course.
    let half = since + 1500 - now_unix_ms();
    tokio::time::sleep(Duration::from_millis(half.max(0) as u64)).await;
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    let manager = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let fired = eventually("the alert fires", Duration::from_secs(20), || async {
        list_alerts(manager.addr)
            .await
            .into_iter()
            .find(|a| a.state == pb::AlertState::Firing as i32)
    })
    .await;
    // The `for` went on counting from before the restart, not from the restart.
    assert_eq!(fired.active_since_unix_ms, since, "the timer was restarted");
    let waited = fired.fired_at_unix_ms - since;
    assert!(
        (3000..4400).contains(&waited),
        "fired {waited} ms after the condition started to hold"
    );
    let client = AlertManagerClient::new(connect(manager.addr).await);
    eventually(
        "one firing notification",
        Duration::from_secs(10),
        || async { (received_with(&received, "firing") == 1).then_some(()) },
    )
    .await;

    // Restarted mid-incident: the alert stays firing and the incident continues.
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    let manager = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let client2 = AlertManagerClient::new(connect(manager.addr).await);
    let restored = eventually(
        "the firing alert restored",
        Duration::from_secs(10),
        || async {
            list_alerts(manager.addr)
                .await
                .into_iter()
                .find(|a| a.state == pb::AlertState::Firing as i32)
        },
    )
    .await;
    assert_eq!(restored.fired_at_unix_ms, fired.fired_at_unix_ms);
    drop(client);

    // The errors stop: that incident resolves, and the receiver hears of it once.
    storming.store(false, std::sync::atomic::Ordering::Relaxed);
    storm.await.unwrap();
    let all = all_incidents(&client2).await;
    assert_eq!(all.len(), 1, "no duplicate incident");
    let id = all[0].id;
    let done = incident_when(
        &client2,
        id,
        "the incident resolves",
        Duration::from_secs(20),
        |i| i.state == pb::IncidentState::Resolved as i32,
    )
    .await;
    let fired_events = done.timeline.iter().filter(|e| e.kind == "fired").count();
    assert_eq!(fired_events, 1, "{:?}", done.timeline);
    eventually(
        "one resolved notification",
        Duration::from_secs(10),
        || async { (received_with(&received, "resolved") == 1).then_some(()) },
    )
    .await;
    assert_eq!(received_with(&received, "firing"), 1, "notified twice");
    assert_eq!(all_incidents(&client2).await.len(), 1);
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_notify_once_and_the_second_takes_over() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        STORM_RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    let first = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    // The first one leads before the second starts: its alerts are listed.
    let otlp = MetricsServiceClient::new(connect(collector.grpc).await);
    let (storming, storm) = keep_storming(&otlp);
    eventually(
        "the first replica fires",
        Duration::from_secs(20),
        || async { (!list_alerts(first.addr).await.is_empty()).then_some(()) },
    )
    .await;
    let second = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let client = AlertManagerClient::new(connect(second.addr).await);
    eventually(
        "one firing notification",
        Duration::from_secs(10),
        || async { (received_with(&received, "firing") >= 1).then_some(()) },
    )
    .await;
    // Both serve the incidents (the database's) and the alerts (the follower from the leader's
    // saved state).
    assert_eq!(all_incidents(&client).await.len(), 1);
    let fired_at = list_alerts(first.addr).await[0].fired_at_unix_ms;
    let seen = eventually(
        "the follower lists the alert",
        Duration::from_secs(10),
        || async { list_alerts(second.addr).await.into_iter().next() },
    )
    .await;
    assert_eq!(seen.fired_at_unix_ms, fired_at);

    // The leader goes: the second takes over the firing alert, without firing it again, and
    // resolves the incident when the errors stop (only a leader evaluates).
    let _ = first.stop.send(());
    first.task.await.unwrap().unwrap();
    storming.store(false, std::sync::atomic::Ordering::Relaxed);
    storm.await.unwrap();
    let id = all_incidents(&client).await[0].id;
    let done = incident_when(
        &client,
        id,
        "the incident resolves",
        Duration::from_secs(20),
        |i| i.state == pb::IncidentState::Resolved as i32,
    )
    .await;
    eventually(
        "one resolved notification",
        Duration::from_secs(10),
        || async { (received_with(&received, "resolved") == 1).then_some(()) },
    )
    .await;
    assert_eq!(received_with(&received, "firing"), 1, "notified twice");
    let fired_events = done.timeline.iter().filter(|e| e.kind == "fired").count();
    assert_eq!(fired_events, 1, "{:?}", done.timeline);
    assert_eq!(all_incidents(&client).await.len(), 1);
    let _ = second.stop.send(());
    second.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

/// A leader that notified, and stopped before it could save its evaluation state (killed, or
/// the database refused the save): the next leader does not notify the group again. The save
/// is refused here by a trigger on the state's table, which stands for the instant between the
/// two writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_gone_before_saving_its_state_is_not_followed_by_a_second_notification() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        STORM_RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    // The schema first, then a trigger that refuses every save of the evaluation state.
    alert_manager::incidents::IncidentStore::connect(&db.url)
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    for statement in [
        "CREATE FUNCTION refuse_save() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'the evaluation state cannot be saved'; END $$",
        "CREATE TRIGGER refuse_save BEFORE INSERT OR UPDATE ON engine_state \
         FOR EACH ROW EXECUTE FUNCTION refuse_save()",
    ] {
        sqlx::query(statement).execute(&admin).await.unwrap();
    }
    let first = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let otlp = MetricsServiceClient::new(connect(collector.grpc).await);
    let (storming, storm) = keep_storming(&otlp);
    eventually(
        "one firing notification",
        Duration::from_secs(20),
        || async { (received_with(&received, "firing") >= 1).then_some(()) },
    )
    .await;
    let _ = first.stop.send(());
    first.task.await.unwrap().unwrap();
    let saved: i64 = sqlx::query_scalar("SELECT count(*) FROM engine_state")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(saved, 0, "the first leader's state was not saved");
    sqlx::query("DROP TRIGGER refuse_save ON engine_state")
        .execute(&admin)
        .await
        .unwrap();

    // The second leads, finds the alert firing again, and then sees it resolve.
    let second = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    eventually(
        "the second replica leads and fires",
        Duration::from_secs(20),
        || async {
            list_alerts(second.addr)
                .await
                .into_iter()
                .find(|a| a.state == pb::AlertState::Firing as i32)
        },
    )
    .await;
    storming.store(false, std::sync::atomic::Ordering::Relaxed);
    storm.await.unwrap();
    eventually(
        "one resolved notification",
        Duration::from_secs(20),
        || async { (received_with(&received, "resolved") == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        received_with(&received, "firing"),
        1,
        "the group was notified firing again: {:?}",
        received.lock().unwrap()
    );
    let _ = second.stop.send(());
    second.task.await.unwrap().unwrap();
    admin.close().await;
    collector.stop().await.unwrap();
    db.drop().await;
}

/// `STORM_RULES` with a webhook action at `ACTION`.
fn acting_rules() -> String {
    format!("{STORM_RULES}    actions:\n      - {{kind: webhook, url: \"http://ACTION/act\"}}\n")
}

/// An action's target that holds its first call (never answered) and answers the others;
/// each call is told on the returned channel.
async fn first_call_held() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let (told, calls) = tokio::sync::mpsc::unbounded_channel();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/act",
        axum::routing::post(move || {
            let (told, count) = (told.clone(), count.clone());
            async move {
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let _ = told.send(n);
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                "ok"
            }
        }),
    );
    let (listener, addr) = shared::testing::ephemeral_listener().await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

/// The leader is killed while its incident's actions run: the next leader says so on the
/// timeline and runs them (they were in the database, not only in the killed process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_a_killed_leader_was_running_are_run_by_the_next() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (receiver, _received) = start_receiver().await;
    let (action, mut calls) = first_call_held().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        acting_rules()
            .replace("RECEIVER", &receiver.to_string())
            .replace("ACTION", &action.to_string()),
    )
    .unwrap();
    let endpoint = collector.endpoint();
    let first = ServiceProcess::start(
        "alert-manager",
        &[
            "--listen",
            "127.0.0.1:0",
            "--collector",
            &endpoint,
            "--rules",
            dir.path().to_str().unwrap(),
            "--database-url",
            &db.url,
            "--evaluation-interval-ms",
            "200",
            "--api-keys",
            TEST_KEYS,
        ],
    )
    .await
    .unwrap();
    let otlp = MetricsServiceClient::new(connect(collector.grpc).await);
    let (storming, storm) = keep_storming(&otlp);
    assert_eq!(
        calls.recv().await,
        Some(1),
        "the first leader runs the action"
    );
    first.kill().await;

    let second = start_alert_manager(&endpoint, dir.path(), &db.url).await;
    let client = AlertManagerClient::new(connect(second.addr).await);
    let rerun = tokio::time::timeout(Duration::from_secs(20), calls.recv()).await;
    assert_eq!(
        rerun.ok().flatten(),
        Some(2),
        "the next leader did not run the action"
    );
    let id = all_incidents(&client).await[0].id;
    let done = incident_when(
        &client,
        id,
        "the action's outcome on the timeline",
        Duration::from_secs(20),
        |i| i.timeline.iter().any(|e| e.kind == "action_finished"),
    )
    .await;
    let kinds: Vec<&str> = done.timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "actions_interrupted")
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(all_incidents(&client).await.len(), 1, "one incident");
    storming.store(false, std::sync::atomic::Ordering::Relaxed);
    storm.await.unwrap();
    let _ = second.stop.send(());
    second.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const LATENCY_RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 1s}
receivers:
  - {name: ops, url: "http://RECEIVER/hook"}
rules:
  - name: InferenceLatency
    kind: threshold
    query: {metric: inference.request.duration, function: quantile, quantile: 0.99, window: 2s}
    group_by: [model]
    op: ">"
    threshold: 0.05
    labels: {severity: critical}
    annotations: {summary: "{{ $labels.model }} p99 latency {{ $value }} s"}
    actions:
      - {kind: reload_model, model: "{{ $labels.model }}"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_real_mesh_is_detected_diagnosed_remediated_and_resolved() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let endpoint = collector.endpoint();
    let envs = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ];
    let inference = InferenceProcess::start(&models_dir(), &["minilm-l6"], &envs)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        LATENCY_RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    let inference_url = format!("http://{}", inference.addr);
    let manager = start_alert_manager_with(
        &endpoint,
        dir.path(),
        &db.url,
        &[
            "--inference",
            &inference_url,
            "--inference-api-key",
            "admin-key",
        ],
    )
    .await;
    let mut client = AlertManagerClient::new(connect(manager.addr).await);

    // The fault: a flood of 32 concurrent callers, each sending 8 texts at a time.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut callers = Vec::new();
    for _ in 0..32 {
        let mut tasks = task_client(inference.addr).await;
        let flooding = flooding.clone();
        callers.push(tokio::spawn(async move {
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tasks
                    .embed(proto::serving::inference::v1::EmbedRequest {
                        model: None,
                        texts: vec!["wireless noise cancelling headphones for travel".into(); 8],
                    })
                    .await;
            }
        }));
    }
    let breach = Instant::now();
    let opened = eventually("an incident", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move { incidents(&mut client).await.into_iter().next() }
    })
    .await;
    let detected = breach.elapsed();
    assert!(
        detected <= Duration::from_secs(3),
        "incident after {detected:?}"
    );
    assert_eq!(opened.labels["model"], "minilm-l6");
    // The report and the remediation land on the timeline.
    let with_action = incident_when(
        &client,
        opened.id,
        "the remediation",
        Duration::from_secs(20),
        |i| i.timeline.iter().any(|e| e.kind == "action_finished"),
    )
    .await;
    let action = with_action
        .timeline
        .iter()
        .find(|e| e.kind == "action_finished")
        .unwrap();
    assert!(action.message.contains("minilm-l6 reloaded"), "{action:?}");
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    // The flood is over: the alert clears and the incident resolves with its summary.
    let resolved = incident_when(
        &client,
        opened.id,
        "the incident resolves",
        Duration::from_secs(20),
        |i| i.state == pb::IncidentState::Resolved as i32,
    )
    .await;
    assert!(
        resolved.report.contains("latency_p99_s"),
        "{}",
        resolved.report
    );
    assert!(
        resolved.summary.contains("time to resolve"),
        "{}",
        resolved.summary
    );
    // The report holds the inference replicas' memory, as they export it.
    assert!(
        resolved.report.contains("inference_memory_bytes: ")
            && !resolved.report.contains("inference_memory_bytes: missing"),
        "{}",
        resolved.report
    );
    // What the reload changed is measured and makes it into the summary.
    let summary = incident_when(
        &client,
        opened.id,
        "the action's effect in the summary",
        Duration::from_secs(20),
        |i| i.summary.contains("after the actions:"),
    )
    .await
    .summary;
    assert!(
        summary.contains("Actions and what changed after them"),
        "{summary}"
    );
    let payloads = eventually(
        "firing and resolved notifications",
        Duration::from_secs(10),
        || {
            let received = received.clone();
            async move {
                let got = received.lock().unwrap().clone();
                (got.len() >= 2).then_some(got)
            }
        },
    )
    .await;
    let firing: Vec<_> = payloads
        .iter()
        .filter(|p| p["status"] == "firing")
        .collect();
    assert_eq!(firing.len(), 1, "{payloads:#?}");
    assert_eq!(firing[0]["version"], "4");
    assert_eq!(incidents(&mut client).await.len(), 1);

    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    inference.terminate().await;
    collector.stop().await.unwrap();
    db.drop().await;
}

const BURN_RULES: &str = r#"
rules:
  - name: CheckoutAvailability
    kind: burn_rate
    objective: 0.99
    good: {metric: shop.calls, matchers: {status: OK}}
    total: {metric: shop.calls}
    group_by: [model]
    # Shrunk windows: a 1% budget burnt 10 times too fast over both 4 s and 2 s.
    windows:
      - {long: 4s, short: 2s, factor: 10, severity: critical}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burn_rate_rule_fires_when_both_windows_burn_and_clears() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), BURN_RULES).unwrap();
    let manager = start_alert_manager(&collector.endpoint(), dir.path(), &db.url).await;
    let client = AlertManagerClient::new(connect(manager.addr).await);
    let otlp = MetricsServiceClient::new(connect(collector.grpc).await);
    let calls = |status: &str| {
        vec![vec![
            ("model", "ranker".to_owned()),
            ("status", status.to_owned()),
        ]]
    };
    // Half the calls fail: an error ratio of 0.5 burns a 1% budget 50 times too fast.
    let alert = eventually("the burn-rate alert", Duration::from_secs(20), || {
        let mut client = client.clone();
        let mut otlp = otlp.clone();
        let (ok, failed) = (calls("OK"), calls("UNAVAILABLE"));
        async move {
            otlp.export(counts("shop.calls", &ok, 10.0)).await.ok()?;
            otlp.export(counts("shop.calls", &failed, 10.0))
                .await
                .ok()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            client
                .list_alerts(pb::ListAlertsRequest::default())
                .await
                .ok()?
                .into_inner()
                .alerts
                .into_iter()
                .find(|a| a.state == pb::AlertState::Firing as i32)
        }
    })
    .await;
    assert_eq!(alert.labels["burn_window"], "4s/2s");
    assert_eq!(alert.severity, "critical");
    assert!(
        (alert.value - 50.0).abs() < 10.0,
        "burn rate {}",
        alert.value
    );
    // All calls succeed again: the short window clears first, and the alert with it.
    eventually("the alert clears", Duration::from_secs(20), || {
        let mut client = client.clone();
        let mut otlp = otlp.clone();
        let ok = calls("OK");
        async move {
            otlp.export(counts("shop.calls", &ok, 20.0)).await.ok()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let alerts = client
                .list_alerts(pb::ListAlertsRequest::default())
                .await
                .ok()?
                .into_inner()
                .alerts;
            alerts.is_empty().then_some(())
        }
    })
    .await;
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

/// A proxy in front of PostgreSQL whose first connection is accepted and never answered (a
/// database too busy to answer); later connections go through. Says when the first one came.
async fn late_database(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (silent, _) = listener.accept().await.unwrap();
        let _ = first_tx.send(());
        let _held = silent;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, first_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_manager_waits_for_a_database_that_answers_late_and_gives_up_on_a_missing_one() {
    use sqlx::ConnectOptions as _;
    let db = TestDatabase::create().await;
    let options: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let target = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let (proxy, first) = late_database(target).await;
    let through_proxy = options
        .clone()
        .host("127.0.0.1")
        .port(proxy.port())
        .to_url_lossy();
    let collector = RunningCollector::start(&[]).await.unwrap();
    let rules = tempfile::tempdir().unwrap();

    // Its first connection gets no answer; the manager tries again and serves.
    let manager =
        start_alert_manager(&collector.endpoint(), rules.path(), through_proxy.as_str()).await;
    first
        .await
        .expect("the manager's first connection reached the database");
    let mut client = AlertManagerClient::new(connect(manager.addr).await);
    assert!(
        incidents(&mut client).await.is_empty(),
        "an empty incident store"
    );
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();

    // Nothing listens at all, and it may not wait: it stops with an error that says so. The
    // port is held by a socket that is bound but does not listen, so no other test can take it
    // and every connection to it is refused.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let nowhere = options
        .clone()
        .host("127.0.0.1")
        .port(held.local_addr().unwrap().port())
        .to_url_lossy();
    let (listener, _) = shared::testing::ephemeral_listener().await.unwrap();
    let config = <alert_manager::Config as clap::Parser>::parse_from([
        "alert-manager",
        "--rules",
        rules.path().to_str().unwrap(),
        "--database-url",
        nowhere.as_str(),
        "--database-wait-secs",
        "0",
        "--plaintext",
    ]);
    let err = alert_manager::serve(listener, config, std::future::pending())
        .await
        .expect_err("no database");
    let port = nowhere.port().unwrap();
    assert!(
        err.to_string().contains(&format!(
            "PostgreSQL at 127.0.0.1:{port} could not be reached within 0 s"
        )),
        "the error names the database: {err}"
    );
    db.drop().await;
}

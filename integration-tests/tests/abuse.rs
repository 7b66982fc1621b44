//! The abuse suite: what a buggy client, a hostile neighbour pod or a slow receiver sends, one
//! test per case. Each asserts the status code and message the sender gets, and that the
//! service still answers a well-formed request correctly afterwards.

use integration_tests::otlp_build::{attribute, counter, export, now_ns};
use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use proto::monitoring::metrics::v1 as pb;
use tonic::Code;

async fn otlp(collector: &RunningCollector) -> MetricsServiceClient<tonic::transport::Channel> {
    MetricsServiceClient::new(connect(collector.grpc).await)
}

/// The value of `metric`'s rate over 60 s, summed over its series.
async fn rate(collector: &RunningCollector, metric: &str) -> f64 {
    collector
        .query_client()
        .await
        .query(metric_query(metric, pb::Function::Increase, 60, &[]))
        .await
        .unwrap()
        .into_inner()
        .samples
        .iter()
        .map(|s| s.value)
        .sum()
}

/// The names of the metrics the collector lists.
async fn listed(collector: &RunningCollector) -> Vec<pb::MetricInfo> {
    collector
        .query_client()
        .await
        .list_metrics(pb::ListMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_a_label_is_refused_by_name_and_the_rest_is_kept() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let mut client = otlp(&collector).await;
    let start = now_ns();
    // A NUL byte in a label value (once stored, PostgreSQL refuses the incident it would name),
    // a newline in a label name, beside a clean point of the same metric.
    let reply = client
        .export(export(
            "shop",
            vec![counter(
                "shop.errors",
                start,
                vec![
                    (vec![attribute("page", "check\0out")], 5.0),
                    (vec![attribute("pa\nge", "home")], 5.0),
                    (vec![attribute("page", "cart")], 0.0),
                ],
            )],
        ))
        .await
        .unwrap()
        .into_inner();
    let partial = reply.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_data_points, 2, "{partial:?}");
    assert!(
        partial.error_message.contains("U+0000")
            && partial.error_message.contains("'page'")
            && partial.error_message.contains("control character"),
        "the message names the label and the character: {}",
        partial.error_message
    );
    // The clean series is kept and counts.
    client
        .export(export(
            "shop",
            vec![counter(
                "shop.errors",
                start,
                vec![(vec![attribute("page", "cart")], 3.0)],
            )],
        ))
        .await
        .unwrap();
    assert_eq!(rate(&collector, "shop.errors").await, 3.0);
    let errors = listed(&collector).await;
    let errors = errors.iter().find(|m| m.name == "shop.errors").unwrap();
    assert_eq!((errors.series, errors.refused_points), (1, 2));
    // A control character in the sender's service.name refuses its points too.
    let reply = client
        .export(export(
            "sh\0p",
            vec![counter("shop.other", start, vec![(vec![], 1.0)])],
        ))
        .await
        .unwrap()
        .into_inner();
    let partial = reply.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("service.name"),
        "{partial:?}"
    );
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_cannot_fill_the_collector_with_metric_names() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    // A watcher is open, as the alert manager's always is: every export lists what it touched.
    let mut watch = collector
        .query_client()
        .await
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut client = otlp(&collector).await;
    let start = now_ns();
    let names = 100_000;
    let flood = (0..names)
        .map(|i| counter(&format!("made.up.{i}"), start, vec![(vec![], 1.0)]))
        .collect();
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        client.export(export("intruder", flood)),
    )
    .await
    .expect("a 100,000-name export is answered within a minute")
    .unwrap()
    .into_inner();
    let partial = reply.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_data_points, names - 1000, "{partial:?}");
    assert!(
        partial
            .error_message
            .contains("sender 'intruder' already sent its maximum of 1000 metrics"),
        "{}",
        partial.error_message
    );
    let update = watch.message().await.unwrap().expect("an update");
    assert!(update.metrics.len() <= names as usize);

    // A 10 kB metric name is cut, not kept whole.
    let long = format!("shop.{}", "n".repeat(10_000));
    client
        .export(export(
            "shop",
            vec![counter(&long, start, vec![(vec![], 1.0)])],
        ))
        .await
        .unwrap();
    // Another sender still has room, and its numbers are right.
    client
        .export(export(
            "shop",
            vec![counter("shop.orders", start, vec![(vec![], 7.0)])],
        ))
        .await
        .unwrap();
    let metrics = listed(&collector).await;
    assert_eq!(
        metrics
            .iter()
            .filter(|m| m.name.starts_with("made.up."))
            .count(),
        1000
    );
    let cut = metrics
        .iter()
        .find(|m| m.name.starts_with("shop.nnn"))
        .expect("the long name is kept, cut");
    assert_eq!(cut.name.len(), 256);
    assert_eq!(rate(&collector, "shop.orders").await, 7.0);
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_matcher_is_refused_and_never_cached() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let mut client = otlp(&collector).await;
    let start = now_ns();
    client
        .export(export(
            "shop",
            vec![counter(
                "shop.clicks",
                start,
                vec![(vec![attribute("page", "home")], 4.0)],
            )],
        ))
        .await
        .unwrap();
    let mut query = metric_query("shop.clicks", pb::Function::Increase, 60, &[]);
    query.selector.as_mut().unwrap().matchers = vec![pb::LabelMatcher {
        name: "page".into(),
        value: "x".repeat(1 << 20),
        op: pb::MatchOp::Equal as i32,
    }];
    let err = collector
        .query_client()
        .await
        .query(query)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("1048576 bytes") && err.message().contains("at most 256"),
        "{}",
        err.message()
    );
    assert_eq!(rate(&collector, "shop.clicks").await, 4.0);
    collector.stop().await.unwrap();
}

/// A rule whose incident title PostgreSQL refuses (a NUL byte), and a clean one.
const POISONED_RULES: &str = r#"
group_by: [alertname]
route: {group_wait: 0s, group_interval: 1s}
rules:
  - name: Poisoned
    kind: threshold
    query: {metric: shop.poison, function: rate, window: 2s}
    op: ">"
    threshold: 5
    annotations: {summary: "a title the database refuses: \0"}
  - name: Clean
    kind: threshold
    query: {metric: shop.errors, function: rate, window: 2s}
    op: ">"
    threshold: 5
"#;

/// A delta of 10 for `metric` from the service `checkout`.
fn ten(
    metric: &str,
    labels: &[(&str, &str)],
) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
    let labels: Vec<(&str, String)> = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    integration_tests::otlp_build::delta_counts("checkout", metric, &[labels], 10.0)
}

/// The alerts the manager at `addr` lists as firing, by rule and `model` label.
async fn firing(addr: std::net::SocketAddr) -> Vec<(String, String)> {
    use proto::monitoring::alerts::v1 as am;
    list_alerts(addr)
        .await
        .into_iter()
        .filter(|a| a.state == am::AlertState::Firing as i32)
        .map(|a| (a.rule, a.labels.get("model").cloned().unwrap_or_default()))
        .collect()
}

/// Every incident the manager at `addr` lists.
async fn incidents_of(addr: std::net::SocketAddr) -> Vec<proto::monitoring::alerts::v1::Incident> {
    use proto::monitoring::alerts::v1 as am;
    am::alert_manager_client::AlertManagerClient::new(connect(addr).await)
        .list_incidents(am::ListIncidentsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().incidents)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_database_refuses_is_quarantined_and_the_next_incident_is_written() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("rules.yaml"), POISONED_RULES).unwrap();
    let spill = tempfile::tempdir().unwrap();
    let manager = start_alert_manager_with(
        &collector.endpoint(),
        rules.path(),
        &db.url,
        &["--spill-dir", spill.path().to_str().unwrap()],
    )
    .await;
    let mut otlp = otlp(&collector).await;
    // The poisoned alert fires first: its incident write is the head of the queue…
    eventually(
        "Poisoned firing",
        std::time::Duration::from_secs(20),
        || {
            let mut otlp = otlp.clone();
            async move {
                otlp.export(ten("shop.poison", &[])).await.ok()?;
                let firing = firing(manager.addr).await;
                firing
                    .iter()
                    .any(|(rule, _)| rule == "Poisoned")
                    .then_some(())
            }
        },
    )
    .await;
    // …and a clean breach after it still gets its incident.
    let written = eventually(
        "the Clean incident",
        std::time::Duration::from_secs(20),
        || {
            let mut otlp = otlp.clone();
            async move {
                otlp.export(ten("shop.errors", &[])).await.ok()?;
                let all = incidents_of(manager.addr).await;
                all.iter()
                    .any(|i| i.labels.get("alertname").map(String::as_str) == Some("Clean"))
                    .then_some(all)
            }
        },
    )
    .await;
    assert!(
        written
            .iter()
            .all(|i| i.labels.get("alertname").map(String::as_str) != Some("Poisoned")),
        "{written:?}"
    );
    // The refused write is kept aside, with the database's reason.
    let quarantined =
        std::fs::read_to_string(spill.path().join("quarantine.jsonl")).expect("a quarantine file");
    let first: serde_json::Value =
        serde_json::from_str(quarantined.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["write"]["Fired"]["alert"]["rule"], "Poisoned",
        "{first}"
    );
    assert!(
        first["error"].as_str().unwrap().contains("0x00"),
        "the database's reason is kept: {first}"
    );
    otlp.export(ten("shop.errors", &[])).await.unwrap();
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

/// Errors of each model, grouped by model.
const MODEL_RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 1s}
rules:
  - name: Errors
    kind: threshold
    query: {metric: shop.errors, function: rate, window: 2s}
    group_by: [model]
    op: ">"
    threshold: 5
"#;

/// Starts an alert manager process on the given collector, database and spill folder.
async fn alert_manager_process(
    collector: &str,
    rules: &std::path::Path,
    db: &str,
    spill: &std::path::Path,
) -> ServiceProcess {
    ServiceProcess::start(
        "alert-manager",
        &[
            "--listen",
            "127.0.0.1:0",
            "--collector",
            collector,
            "--rules",
            rules.to_str().unwrap(),
            "--database-url",
            db,
            "--evaluation-interval-ms",
            "200",
            "--spill-dir",
            spill.to_str().unwrap(),
        ],
    )
    .await
    .unwrap()
}

/// With the database down, `models` fire and then resolve in the manager at `addr`.
async fn fire_and_resolve(
    addr: std::net::SocketAddr,
    otlp: &MetricsServiceClient<tonic::transport::Channel>,
    models: &[&str],
) {
    let want = models.len();
    eventually(
        "the models firing",
        std::time::Duration::from_secs(20),
        || {
            let mut otlp = otlp.clone();
            async move {
                for model in models {
                    otlp.export(ten("shop.errors", &[("model", model)]))
                        .await
                        .ok()?;
                }
                (firing(addr).await.len() == want).then_some(())
            }
        },
    )
    .await;
    eventually(
        "the models resolved",
        std::time::Duration::from_secs(20),
        || async move { firing(addr).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_writes_waiting_for_the_database_survive_a_kill_and_a_stop() {
    let pg = integration_tests::postgres::ThrowawayPostgres::start();
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("rules.yaml"), MODEL_RULES).unwrap();
    let spill = tempfile::tempdir().unwrap();
    let otlp = otlp(&collector).await;
    let (endpoint, url) = (collector.endpoint(), pg.url());
    let start = || alert_manager_process(&endpoint, rules.path(), &url, spill.path());

    // It leads (a warm-up alert is evaluated and written), then the database goes down and
    // three models fire and resolve: their writes wait. Then the process is killed.
    let manager = start().await;
    fire_and_resolve(manager.addr, &otlp, &["warm-up"]).await;
    let warm = eventually(
        "the warm-up incident",
        std::time::Duration::from_secs(20),
        || async {
            let all = incidents_of(manager.addr).await;
            (all.len() == 1).then_some(())
        },
    );
    warm.await;
    pg.down();
    fire_and_resolve(manager.addr, &otlp, &["a", "b", "c"]).await;
    manager.kill().await;

    // Back up: a new process writes what the killed one left, then the same with a SIGTERM.
    pg.up();
    let manager = start().await;
    eventually(
        "the killed run's incidents",
        std::time::Duration::from_secs(20),
        || async {
            let all = incidents_of(manager.addr).await;
            let resolved = all
                .iter()
                .filter(|i| {
                    i.state == proto::monitoring::alerts::v1::IncidentState::Resolved as i32
                })
                .count();
            (all.len() == 4 && resolved == 4).then_some(())
        },
    )
    .await;
    pg.down();
    fire_and_resolve(manager.addr, &otlp, &["d", "e"]).await;
    assert!(
        manager.terminate().await,
        "a clean exit while the database is down"
    );
    pg.up();
    let manager = start().await;
    let all = eventually(
        "every incident",
        std::time::Duration::from_secs(20),
        || async {
            let all = incidents_of(manager.addr).await;
            let resolved = all
                .iter()
                .filter(|i| {
                    i.state == proto::monitoring::alerts::v1::IncidentState::Resolved as i32
                })
                .count();
            (all.len() == 6 && resolved == 6).then_some(all)
        },
    )
    .await;
    let mut client = proto::monitoring::alerts::v1::alert_manager_client::AlertManagerClient::new(
        connect(manager.addr).await,
    );
    for incident in &all {
        let timeline = client
            .get_incident(proto::monitoring::alerts::v1::GetIncidentRequest { id: incident.id })
            .await
            .unwrap()
            .into_inner()
            .timeline;
        let count = |kind: &str| timeline.iter().filter(|e| e.kind == kind).count();
        assert_eq!(
            (
                count("opened"),
                count("fired"),
                count("alert_resolved"),
                count("resolved")
            ),
            (1, 1, 1, 1),
            "incident {} ({:?}): each write once, in order: {timeline:?}",
            incident.id,
            incident.labels.get("model")
        );
    }
    assert!(manager.terminate().await);
    collector.stop().await.unwrap();
}

/// One rule over a metric with 10,000 series of long label values.
const WIDE_RULES: &str = r#"
group_by: [alertname, user]
route: {group_wait: 0s, group_interval: 1s}
rules:
  - name: Hot
    kind: threshold
    query: {metric: shop.views, function: rate, window: 2s}
    group_by: [user, page]
    op: ">"
    threshold: 5
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_answer_over_four_mebibytes_still_reaches_the_rules() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("rules.yaml"), WIDE_RULES).unwrap();
    let manager = start_alert_manager(&collector.endpoint(), rules.path(), &db.url).await;
    let otlp = otlp(&collector).await;
    // 10,000 series whose labels take ~500 bytes each: the answer to the rule's query is over
    // tonic's default 4 MiB decoding limit. One of them is hot.
    let page = "p".repeat(250);
    let quiet: Vec<Vec<(&str, String)>> = (0..9_999)
        .map(|i| vec![("user", format!("{i:0>250}")), ("page", page.clone())])
        .collect();
    let hot = vec![vec![("user", "hot".to_owned()), ("page", page.clone())]];
    eventually(
        "the hot series firing",
        std::time::Duration::from_secs(30),
        || {
            let mut otlp = otlp.clone();
            let (quiet, hot) = (quiet.clone(), hot.clone());
            async move {
                let delta = integration_tests::otlp_build::delta_counts;
                otlp.export(delta("shop", "shop.views", &quiet, 0.0))
                    .await
                    .ok()?;
                otlp.export(delta("shop", "shop.views", &hot, 10.0))
                    .await
                    .ok()?;
                let firing = list_alerts(manager.addr).await;
                firing
                    .iter()
                    .any(|a| a.labels.get("user").map(String::as_str) == Some("hot"))
                    .then_some(())
            }
        },
    )
    .await;
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_delays_no_other_receiver() {
    let db = TestDatabase::create().await;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    // A receiver that accepts connections and never answers.
    let (silent, silent_addr) = shared::testing::ephemeral_listener().await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    // A receiver that answers at once and keeps what it got.
    let (ops_addr, received) = start_receiver().await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        format!(
            "{MODEL_RULES}receivers:\n  - {{name: silent, url: \"http://{silent_addr}/hook\"}}\n  - {{name: ops, url: \"http://{ops_addr}/hook\"}}\n"
        ),
    )
    .unwrap();
    let manager = start_alert_manager(&collector.endpoint(), rules.path(), &db.url).await;
    let otlp = otlp(&collector).await;
    let models = ["m1", "m2", "m3", "m4", "m5"];
    let began = std::time::Instant::now();
    // Five groups fire; each notification goes to the silent receiver first, then to ops. The
    // silent one costs a 5 s timeout per request: served one after the other, ops would wait
    // about 25 s for its fifth.
    eventually(
        "five notifications at ops",
        std::time::Duration::from_secs(10),
        || {
            let mut otlp = otlp.clone();
            let received = received.clone();
            async move {
                for model in models {
                    otlp.export(ten("shop.errors", &[("model", model)]))
                        .await
                        .ok()?;
                }
                let got = received.lock().unwrap().len();
                (got >= models.len()).then_some(())
            }
        },
    )
    .await;
    assert!(began.elapsed() < std::time::Duration::from_secs(10));
    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

/// The peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_row_count_is_refused_before_its_rows_are_copied() {
    let process = InferenceProcess::start(&models_dir(), &["minilm-l6"], &[])
        .await
        .unwrap();
    let pid = process.pid();
    let mut client = oip_client(process.addr).await;
    // Warm: one ordinary request, so that the peak below is the bad request's own.
    client
        .model_infer(text_request("minilm-l6", &["organic green tea"]))
        .await
        .unwrap();
    let before = peak_rss(pid);
    // 15 MiB of empty elements: 7.8 million rows, under the 16 MiB message limit.
    let rows = 15 * 1024 * 1024 / 2;
    let mut request = text_request("minilm-l6", &[]);
    request.inputs[0].shape = vec![rows as i64, 1];
    request.inputs[0].contents.as_mut().unwrap().bytes_contents = vec![bytes::Bytes::new(); rows];
    let err = client
        .clone()
        .max_encoding_message_size(32 << 20)
        .model_infer(request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&format!(
            "a batch of {rows} texts; model 'minilm-l6' takes at most 64"
        )),
        "{}",
        err.message()
    );
    // Decoding the message itself takes ~32 bytes a row (prost's Vec<Bytes>, ~250 MB); copying
    // the rows and making each a String before the batch check took twice that again.
    let grew = peak_rss(pid).saturating_sub(before);
    assert!(
        grew < 400 << 20,
        "the refused request raised the peak memory by {} MiB",
        grew >> 20
    );
    let reply = client
        .model_infer(text_request("minilm-l6", &["organic green tea"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outputs.len(), 1);
    process.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_loads_and_unloads_need_an_admin_key() {
    use proto::inference::{RepositoryModelLoadRequest, RepositoryModelUnloadRequest};
    let addr = shared_inference();
    let mut client = oip_client(addr).await;
    let unload = || RepositoryModelUnloadRequest {
        model_name: "minilm-l6".into(),
        ..Default::default()
    };
    // A neighbour pod that reaches the port, with no key or a client's key, cannot take the
    // model away.
    let err = client.repository_model_unload(unload()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("model loads and unloads: missing `authorization: Bearer <api key>`"),
        "{}",
        err.message()
    );
    let err = client
        .repository_model_unload(with_key(unload(), "client-key", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("Admin role"), "{}", err.message());
    let err = client
        .repository_model_load(with_key(
            RepositoryModelLoadRequest {
                model_name: "minilm-l6".into(),
                ..Default::default()
            },
            "not-a-key",
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("unknown API key"),
        "{}",
        err.message()
    );
    // An admin key passes (the model does not exist: NOT_FOUND, not a refusal).
    let err = client
        .repository_model_load(with_key(
            RepositoryModelLoadRequest {
                model_name: "no-such-model".into(),
                ..Default::default()
            },
            "admin-key",
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // And the model still serves.
    let reply = client
        .model_infer(text_request("minilm-l6", &["organic green tea"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outputs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_keyed_senders_write_into_the_collector() {
    let mut collector = RunningCollector::start(&["--api-keys", "sender-key:mesh:client"])
        .await
        .unwrap();
    let mut client = otlp(&collector).await;
    let forged = || {
        export(
            "gateway",
            vec![counter("gateway.errors", now_ns(), vec![(vec![], 1e6)])],
        )
    };
    // A neighbour forging error counters (to fire a rule whose action moves traffic) is refused.
    let err = client.export(forged()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("OTLP metric exports: missing `authorization: Bearer <api key>`"),
        "{}",
        err.message()
    );
    let err = client
        .export(with_key(forged(), "guessed", None))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("unknown API key"),
        "{}",
        err.message()
    );
    // So are forged records and baseline pins.
    let err = proto::monitoring::metrics::v1::record_ingest_client::RecordIngestClient::new(
        connect(collector.grpc).await,
    )
    .push(pb::PushRecordsRequest::default())
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("record pushes"), "{}", err.message());
    let err = collector
        .query_client()
        .await
        .pin_baseline(pb::PinBaselineRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("baseline pins"), "{}", err.message());
    assert!(
        listed(&collector).await.is_empty(),
        "nothing forged was stored"
    );
    // A service that sends its key the standard way (OTEL_EXPORTER_OTLP_HEADERS) gets in.
    let mut inference = InferenceProcess::start(
        &models_dir(),
        &["minilm-l6"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20sender-key",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    )
    .await
    .unwrap();
    eventually(
        "the inference service's metrics",
        std::time::Duration::from_secs(30),
        || async {
            let names = listed(&collector).await;
            names
                .iter()
                .any(|m| m.name.starts_with("inference."))
                .then_some(())
        },
    )
    .await;
    inference.kill().await;
    collector.stop().await.unwrap();
}

/// Opens an Embed call on the gateway at `addr` with `key` whose request message never comes
/// (HTTP/2 headers only), and returns how it ended.
async fn header_only_embed(addr: std::net::SocketAddr, key: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(connect(addr).await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::pending::<Vec<u8>>());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    grpc.client_streaming(
        request,
        http::uri::PathAndQuery::from_static("/ecommerce.gateway.v1.Gateway/Embed"),
        integration_tests::raw::RawCodec,
    )
    .await
    .unwrap_err()
}

async fn embed_with(
    addr: std::net::SocketAddr,
    key: &str,
) -> Result<proto::ecommerce::gateway::v1::EmbedResponse, tonic::Status> {
    gateway_client(addr)
        .await
        .embed(with_key(
            proto::ecommerce::gateway::v1::EmbedRequest {
                texts: vec!["organic green tea".into()],
            },
            key,
            None,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_streams_and_one_tenant_cannot_take_every_slot() {
    let mut gateway = RunningGateway::start(gateway_config(
        &[shared_inference()],
        &["--max-concurrency", "4", "--idle-stream-ms", "3000"],
    ))
    .await
    .unwrap();
    let addr = gateway.addr;
    // Tenant `shop` opens three calls and never sends their message: two get its share (2 of
    // 4 slots), the third is refused at once, whatever the order they arrive in.
    let mut calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(header_only_embed(addr, "client-key")))
        .collect();
    let (refused, index, rest) = futures::future::select_all(calls.drain(..)).await;
    let refused = refused.unwrap();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "call {index}: {refused:?}"
    );
    assert!(
        refused.message().contains(
            "tenant 'shop' is running its share of 2 concurrent calls (of the gateway's 4)"
        ),
        "{}",
        refused.message()
    );
    // While shop holds its share, another tenant still gets in.
    embed_with(addr, "admin-key")
        .await
        .expect("tenant ops is served");
    // The idle calls are ended (after 3 s here), and their slots come back.
    for call in rest {
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .expect("a header-only call is ended")
            .unwrap();
        assert_eq!(ended.code(), Code::Cancelled, "{ended:?}");
        assert!(
            ended
                .message()
                .contains("no request message arrived within 3s"),
            "{}",
            ended.message()
        );
    }
    embed_with(addr, "client-key")
        .await
        .expect("shop is served again");
    gateway.stop().await.unwrap();
}

/// One connection cannot hold more than `--max-streams-per-connection` calls at once: the
/// gateway says so in its HTTP/2 SETTINGS, a client's next stream waits for a slot, and a
/// second connection is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_open_more_streams_than_its_limit() {
    let mut gateway = RunningGateway::start(gateway_config(
        &[shared_inference()],
        &[
            "--max-streams-per-connection",
            "2",
            "--idle-stream-ms",
            "5000",
        ],
    ))
    .await
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // Two header-only Embed calls take the connection's two slots.
    let addr = gateway.addr;
    let request = move || {
        http::Request::post(format!("http://{addr}/ecommerce.gateway.v1.Gateway/Embed"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", "Bearer client-key")
            .body(())
            .unwrap()
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut ready = send.clone().ready().await.unwrap();
        open.push(ready.send_request(request(), false).unwrap());
    }
    // The connection is driven until the gateway's SETTINGS have arrived.
    let settled = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        std::future::poll_fn(|cx| {
            use std::future::Future as _;
            let ended = std::pin::Pin::new(&mut connection).poll(cx).is_ready();
            if ended || connection.max_concurrent_send_streams() == 2 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }),
    )
    .await;
    assert!(
        settled.is_ok(),
        "the gateway advertises 2 streams per connection, not {}",
        connection.max_concurrent_send_streams()
    );
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // A third call on the same connection (with no message: the gateway would answer it at
    // once) is held by the client until a slot is free: no answer comes...
    let third = tokio::spawn(async move {
        let mut ready = send.clone().ready().await.unwrap();
        let (response, _) = ready.send_request(request(), true).unwrap();
        response.await.is_ok()
    });
    // ...while another connection is served at once.
    embed_with(gateway.addr, "client-key")
        .await
        .expect("a second connection is served");
    assert!(
        !third.is_finished(),
        "a third call was answered on a connection limited to two"
    );
    // Once the idle calls are ended (5 s), their slots come back and the third is answered.
    let sent = tokio::time::timeout(std::time::Duration::from_secs(15), third)
        .await
        .expect("the third call is answered once a slot is free")
        .unwrap();
    assert!(sent, "the third call got no answer");
    drop(open);
    gateway.stop().await.unwrap();
}

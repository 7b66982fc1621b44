//! The mesh at two replicas of each service, each a real process, on one PostgreSQL: counts
//! add up across gateways (through a kill and a restart), a canary split and its rollback hold
//! on both gateways, a model action reaches both inference replicas, and the alert managers
//! hand an open incident over without losing or repeating anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration_tests::*;
use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_client::GatewayAdminClient;
use proto::monitoring::alerts::v1 as am;
use proto::monitoring::alerts::v1::alert_manager_client::AlertManagerClient;
use proto::monitoring::metrics::v1::Function;

const MODEL: &str = "minilm-l6";

const RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 1s}
receivers:
  - {name: ops, url: "http://RECEIVER/hook"}
rules:
  - name: CanaryVersionErrors
    kind: threshold
    ratio:
      numerator: {metric: gateway.requests, function: rate, window: 3s, matchers: {status: "!=OK"}}
      denominator: {metric: gateway.requests, function: rate, window: 3s}
    group_by: [model, model_version]
    op: ">"
    threshold: 0.1
    for: 1s
    labels: {severity: critical}
    actions:
      - {kind: set_canary_weight, model: "{{ $labels.model }}", version: "{{ $labels.model_version }}", weight: 0}
      - {kind: reload_model, model: "{{ $labels.model }}"}
"#;

/// Calls sent through one gateway, and how many failed.
#[derive(Default)]
struct Sent {
    calls: AtomicU64,
    failed: AtomicU64,
}

/// Embeds through `addr` until `running` turns false, a call every 20 ms per worker, counting
/// each call sent (a call that never reached the gateway is not counted). Every text is new, so
/// that each call reaches a model (none comes from the gateway's cache).
fn keep_calling(addr: std::net::SocketAddr, running: Arc<AtomicBool>, sent: Arc<Sent>) {
    for worker in 0..2 {
        let (running, sent) = (running.clone(), sent.clone());
        tokio::spawn(async move {
            let mut client = gateway_client(addr).await;
            let mut i = 0_u64;
            while running.load(Ordering::Relaxed) {
                i += 1;
                let shopper = format!("shopper-{worker}-{}", i % 50);
                let request = with_key(
                    pb::EmbedRequest {
                        texts: vec![format!("running shoes {worker} {i}")],
                    },
                    "client-key",
                    Some(&shopper),
                );
                match client.embed(request).await {
                    Ok(_) => {
                        sent.calls.fetch_add(1, Ordering::Relaxed);
                    }
                    // The gateway is gone: the call was not counted by anyone.
                    Err(status)
                        if status.code() == tonic::Code::Unavailable
                            && status.message().contains("transport") => {}
                    Err(_) => {
                        sent.calls.fetch_add(1, Ordering::Relaxed);
                        sent.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
}

fn split(weights: &[(i64, u32)]) -> tonic::Request<pb::SetCanaryRequest> {
    with_key(canary_split(MODEL, weights), "admin-key", None)
}

async fn weights_on(addr: std::net::SocketAddr) -> Vec<(i64, u32)> {
    canary_weights(addr, MODEL).await.unwrap_or_default()
}

/// `gateway.requests` counted by the collector over the last `window` seconds, all replicas.
async fn counted(collector: std::net::SocketAddr, window: u32) -> f64 {
    let mut client = proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient::new(
        connect(collector).await,
    );
    client
        .query(metric_query(
            "gateway.requests",
            Function::Increase,
            window,
            &[],
        ))
        .await
        .unwrap()
        .into_inner()
        .samples
        .iter()
        .map(|s| s.value)
        .sum()
}

/// Waits until the collector counts what was sent (exports run every 200 ms), then checks it
/// within 5%.
async fn counts_match(collector: std::net::SocketAddr, sent: u64, when: &str) {
    let got = eventually(
        &format!("the collector counts {sent} calls ({when})"),
        Duration::from_secs(10),
        || async move {
            let got = counted(collector, 300).await;
            (got >= 0.95 * sent as f64).then_some(got)
        },
    )
    .await;
    let error = (got - sent as f64).abs() / sent as f64;
    assert!(
        error <= 0.05,
        "{when}: the collector counts {got} calls, the clients sent {sent}"
    );
}

/// A metrics collector on ephemeral ports (its `/metrics` on 127.0.0.2).
async fn start_collector() -> ServiceProcess {
    ServiceProcess::start(
        "metrics-collector",
        &["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.2:0"],
    )
    .await
    .unwrap()
}

/// A process's telemetry: to `collector`, every 200 ms, under the instance name `instance`.
fn otlp(collector: &ServiceProcess, instance: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.addr),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
        ("SERVICE_INSTANCE_ID", instance.to_owned()),
    ]
}

async fn gateway(inference: &str, db: &str, envs: &[(&'static str, String)]) -> ServiceProcess {
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--inference",
        inference,
        "--api-keys",
        TEST_KEYS,
        "--inference-api-key",
        "admin-key",
        "--database-url",
        db,
        "--health-interval-ms",
        "200",
        "--rate-limit",
        "100000",
    ];
    ServiceProcess::start_with_env("gateway", &args, &envs)
        .await
        .unwrap()
}

async fn alert_manager(
    collector: &str,
    rules: &std::path::Path,
    db: &str,
    gateway: &str,
    inference: &str,
) -> ServiceProcess {
    let args = [
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
        "--api-keys",
        TEST_KEYS,
        "--gateway",
        gateway,
        "--gateway-api-key",
        "admin-key",
        "--inference",
        inference,
        "--inference-api-key",
        "admin-key",
    ];
    ServiceProcess::start("alert-manager", &args).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_each_service_behave_as_one() {
    let db = TestDatabase::create().await;
    let collector = start_collector().await;
    let endpoint = format!("http://{}", collector.addr);
    let otlp = |instance: &str| otlp(&collector, instance);
    let repository = two_version_repository();
    let mut inference = Vec::new();
    for name in ["inference-1", "inference-2"] {
        let e = otlp(name);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        inference.push(
            InferenceProcess::start(repository.path(), &[MODEL], &e)
                .await
                .unwrap(),
        );
    }
    let replicas = format!("{},{}", inference[0].addr, inference[1].addr);
    let (env_a, env_b) = (otlp("gateway-a"), otlp("gateway-b"));
    let a = gateway(&replicas, &db.url, &env_a).await;
    let mut b = Some(gateway(&replicas, &db.url, &env_b).await);
    let b_addr = b.as_ref().unwrap().addr;

    // A split set through A holds on B within a second.
    GatewayAdminClient::new(connect(a.addr).await)
        .set_canary(split(&[(1, 50), (2, 50)]))
        .await
        .unwrap();
    let set_at = Instant::now();
    eventually("B applies the split", Duration::from_secs(5), || async {
        (weights_on(b_addr).await == [(1, 50), (2, 50)]).then_some(())
    })
    .await;
    assert!(
        set_at.elapsed() <= Duration::from_secs(1),
        "{:?}",
        set_at.elapsed()
    );

    // Traffic over both gateways: the collector's count equals what the clients sent.
    let running = Arc::new(AtomicBool::new(true));
    let (sent_a, sent_b) = (Arc::new(Sent::default()), Arc::new(Sent::default()));
    keep_calling(a.addr, running.clone(), sent_a.clone());
    let running_b = Arc::new(AtomicBool::new(true));
    keep_calling(b_addr, running_b.clone(), sent_b.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = || sent_a.calls.load(Ordering::Relaxed) + sent_b.calls.load(Ordering::Relaxed);
    counts_match(collector.addr, total(), "both gateways serving").await;

    // B is killed: what it counted before goes on counting, A's calls go on adding up.
    b.take().unwrap().kill().await;
    running_b.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    counts_match(collector.addr, total(), "after gateway B was killed").await;

    // B restarts under its name (a pod's container restart): its counter starts at 0 again.
    let b = gateway(&replicas, &db.url, &env_b).await;
    assert_eq!(
        weights_on(b.addr).await,
        [(1, 50), (2, 50)],
        "restart reads the split"
    );
    let running_b = Arc::new(AtomicBool::new(true));
    keep_calling(b.addr, running_b.clone(), sent_b.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    counts_match(collector.addr, total(), "after gateway B restarted").await;

    // The alert managers: the first leads.
    let dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        dir.path().join("rules.yaml"),
        RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    let inference_urls = format!("http://{},http://{}", inference[0].addr, inference[1].addr);
    let gateway_url = format!("http://{}", a.addr);
    let leader = alert_manager(
        &endpoint,
        dir.path(),
        &db.url,
        &gateway_url,
        &inference_urls,
    )
    .await;
    let follower = alert_manager(
        &endpoint,
        dir.path(),
        &db.url,
        &gateway_url,
        &inference_urls,
    )
    .await;
    let client = AlertManagerClient::new(connect(follower.addr).await);

    // The fault: version 2 leaves both inference replicas; half the shoppers' calls fail, on
    // both gateways.
    for replica in &inference {
        serve_versions(replica.addr, MODEL, &[1]).await;
    }
    let all_incidents = |client: AlertManagerClient<tonic::transport::Channel>| async move {
        let mut client = client;
        client
            .list_incidents(am::ListIncidentsRequest {
                page_size: 50,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().incidents)
            .unwrap_or_default()
    };
    let opened = eventually("an incident", Duration::from_secs(30), || {
        let client = client.clone();
        async move { all_incidents(client).await.into_iter().next() }
    })
    .await;
    assert_eq!(opened.labels["model"], MODEL, "{opened:?}");
    // The rollback (through A) and the reload (on both inference replicas) are recorded.
    let incident = |client: AlertManagerClient<tonic::transport::Channel>, id: i64| async move {
        let mut client = client;
        client
            .get_incident(am::GetIncidentRequest { id })
            .await
            .map(|r| r.into_inner())
            .ok()
    };
    let acted = eventually(
        "both actions on the timeline",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let i = incident(client, opened.id).await?;
                let finished = i
                    .timeline
                    .iter()
                    .filter(|e| e.kind == "action_finished")
                    .count();
                (finished >= 2).then_some(i)
            }
        },
    )
    .await;
    for replica in &inference {
        assert!(
            acted
                .timeline
                .iter()
                .any(|e| e.kind == "action_replica_finished"
                    && e.message.contains(&replica.addr.to_string())),
            "no reload event for replica {}: {:#?}",
            replica.addr,
            acted.timeline
        );
    }
    // The rollback holds on both gateways: no call fails any more on either.
    for addr in [a.addr, b.addr] {
        eventually(
            "the rollback on both gateways",
            Duration::from_secs(2),
            || async move { (weights_on(addr).await == [(1, 50), (2, 0)]).then_some(()) },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed_before =
        sent_a.failed.load(Ordering::Relaxed) + sent_b.failed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed_after =
        sent_a.failed.load(Ordering::Relaxed) + sent_b.failed.load(Ordering::Relaxed);
    assert_eq!(
        failed_after, failed_before,
        "calls still fail after the rollback"
    );

    // The leader dies mid-incident: the follower takes over and resolves it, once.
    leader.kill().await;
    let resolved = eventually("the incident resolves", Duration::from_secs(40), || {
        let client = client.clone();
        async move {
            let i = incident(client, opened.id).await?;
            (i.state == am::IncidentState::Resolved as i32).then_some(i)
        }
    })
    .await;
    let fired = resolved
        .timeline
        .iter()
        .filter(|e| e.kind == "fired")
        .count();
    assert_eq!(fired, 1, "{:#?}", resolved.timeline);
    eventually("the resolved notification", Duration::from_secs(10), || {
        let received = received.clone();
        async move {
            let got = received.lock().unwrap();
            got.iter().any(|p| p["status"] == "resolved").then_some(())
        }
    })
    .await;
    let notes = received.lock().unwrap().clone();
    let firing = notes.iter().filter(|p| p["status"] == "firing").count();
    let resolved_notes = notes.iter().filter(|p| p["status"] == "resolved").count();
    assert_eq!((firing, resolved_notes), (1, 1), "{notes:#?}");
    assert_eq!(all_incidents(client.clone()).await.len(), 1);

    running.store(false, Ordering::Relaxed);
    running_b.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    counts_match(collector.addr, total(), "at the end").await;
    follower.terminate().await;
    a.terminate().await;
    b.terminate().await;
    for replica in inference {
        replica.terminate().await;
    }
    collector.terminate().await;
    db.drop().await;
}

/// A gateway that starts into failing calls (the stored split sends them all to a version the
/// replicas no longer serve, as after a restart of the mesh) counts them under the model's
/// name: the rules group by model, and the rollback they trigger names the model it acts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_starts_into_failing_calls_counts_them_under_the_model() {
    let db = TestDatabase::create().await;
    let collector = start_collector().await;
    let envs = otlp(&collector, "gateway");
    let repository = two_version_repository();
    let mut inference = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    let replica = inference.addr.to_string();
    let first = gateway(&replica, &db.url, &envs).await;
    GatewayAdminClient::new(connect(first.addr).await)
        .set_canary(split(&[(1, 0), (2, 100)]))
        .await
        .unwrap();
    first.kill().await;
    // The replica comes back with its configured version only; a new gateway reads the split.
    serve_versions(inference.addr, MODEL, &[1]).await;
    let gateway = gateway(&replica, &db.url, &envs).await;
    let mut client = gateway_client(gateway.addr).await;
    for i in 0..5 {
        let request = with_key(
            pb::EmbedRequest {
                texts: vec![format!("kettle {i}")],
            },
            "client-key",
            None,
        );
        let failed = client.embed(request).await.unwrap_err();
        assert!(failed.message().contains("version 2"), "{failed:?}");
    }
    let query = proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient::new(
        connect(collector.addr).await,
    );
    let labels = eventually(
        "the failed calls in the collector",
        Duration::from_secs(10),
        || {
            let mut query = query.clone();
            async move {
                let samples = query
                    .query(metric_query(
                        "gateway.requests",
                        Function::Increase,
                        60,
                        &["model", "model_version", "status"],
                    ))
                    .await
                    .ok()?
                    .into_inner()
                    .samples;
                samples
                    .into_iter()
                    .map(|s| s.labels)
                    .find(|l| l.get("status").map(String::as_str) == Some("UNAVAILABLE"))
            }
        },
    )
    .await;
    assert_eq!(labels["model"], MODEL, "{labels:?}");
    assert_eq!(labels["model_version"], "2", "{labels:?}");
    gateway.terminate().await;
    inference.stop().await.unwrap();
    collector.terminate().await;
    db.drop().await;
}

//! The alert manager across a restart of the metrics collector, as real processes: an incident
//! open when the collector is killed (SIGKILL) stays one incident while the collector is away
//! and after it comes back on its data directory (after an outage longer than the rule's
//! window), with no resolved-then-fired pair; it resolves once, when the breach ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::otlp_build::{attribute, export_from, export_once, gauge};
use integration_tests::*;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use proto::monitoring::alerts::v1 as am;
use proto::monitoring::alerts::v1::alert_manager_client::AlertManagerClient;
use tonic::transport::Channel;

const MODEL: &str = "minilm-l6";

/// One rule on a gauge the test sends itself: a queue that has not drained below 10 within the
/// last 2 s, for a second. The outage (about 3 s) outlasts the window: the alert manager's first
/// evaluations after the restart, before the replica exports again, find the series held (the
/// collector came back with its data) but none of its points within the window. That is no
/// resolution: for one window after its data returns, a rule resolves none of the alerts it
/// kept through the gap. `min`: the alert resolves at the first healthy point after that.
const RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s, group_interval: 1s}
receivers:
  - {name: ops, url: "http://RECEIVER/hook"}
rules:
  - name: QueueBacklog
    kind: threshold
    query: {metric: inference.queue.depth, function: min, window: 2s}
    group_by: [model]
    op: ">"
    threshold: 10
    for: 1s
    labels: {severity: warning}
"#;

/// A queue depth far above the threshold, and one well below it.
const BREACHING: f64 = 25.0;
const HEALTHY: f64 = 2.0;

/// An inference replica's `inference.queue.depth` gauge for the model.
fn queue_depth(value: f64) -> Metric {
    gauge(
        "inference.queue.depth",
        vec![attribute("model", MODEL)],
        value,
    )
}

/// An inference replica reporting its queue depth to the collector at `target` every 200 ms,
/// as its SDK would: each export on a fresh connection, so that it reaches a collector
/// restarted at the same address as soon as that one listens; an export that fails is dropped.
struct QueueReporter {
    /// The depth it reports.
    depth: Arc<Mutex<f64>>,
    /// Exports the collector acknowledged.
    acked: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueReporter {
    fn start(target: SocketAddr, depth: f64) -> QueueReporter {
        let depth = Arc::new(Mutex::new(depth));
        let acked = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let (depth, acked, running) = (depth.clone(), acked.clone(), running.clone());
            async move {
                while running.load(Ordering::Relaxed) {
                    let request = export_from(
                        "inference",
                        Some("inference-0"),
                        vec![queue_depth(*depth.lock().unwrap())],
                    );
                    if export_once(target, request, Duration::from_millis(500)).await {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        QueueReporter {
            depth,
            acked,
            running,
            task,
        }
    }

    fn report(&self, depth: f64) {
        *self.depth.lock().unwrap() = depth;
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

async fn incident(client: &AlertManagerClient<Channel>, id: i64) -> Option<am::Incident> {
    client
        .clone()
        .get_incident(am::GetIncidentRequest { id })
        .await
        .map(|r| r.into_inner())
        .ok()
}

/// The rule's alert, as the alert manager lists it.
async fn backlog_alert(manager: SocketAddr) -> Option<am::Alert> {
    list_alerts(manager)
        .await
        .into_iter()
        .find(|a| a.rule == "QueueBacklog")
}

/// Asserts that the one incident is open, has fired once and has resolved nothing, and that
/// the receiver heard of one firing and no resolution.
async fn still_one_open_incident(
    client: &AlertManagerClient<Channel>,
    received: &Mutex<Vec<serde_json::Value>>,
    opened: i64,
    when: &str,
) {
    let incidents = all_incidents(client).await;
    assert_eq!(
        incidents.iter().map(|i| i.id).collect::<Vec<_>>(),
        [opened],
        "{when}: one incident, the first: {incidents:#?}"
    );
    assert_eq!(
        incidents[0].state,
        am::IncidentState::Open as i32,
        "{when}: {incidents:#?}"
    );
    let timeline = incident(client, opened).await.unwrap().timeline;
    let kinds: Vec<&str> = timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "fired").count(),
        1,
        "{when}: {kinds:?}"
    );
    assert!(
        !kinds.iter().any(|k| k.contains("resolved")),
        "{when}: {kinds:?}"
    );
    let notes = received.lock().unwrap().clone();
    assert_eq!(
        (
            received_with(received, "firing"),
            received_with(received, "resolved")
        ),
        (1, 0),
        "{when}: one firing notification and no resolution: {notes:#?}"
    );
}

/// A breach that lasts through a collector's SIGKILL and restart on its data directory is one
/// alert, one incident and one firing notification: while the collector is away the alert
/// keeps firing and says since when it has had no data; back, it is not resolved on the
/// window that still reads the gap, and goes on firing on fresh data; and when the breach ends
/// it resolves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_open_across_a_collector_restart_stays_one_incident() {
    let db = TestDatabase::create().await;
    let data_dir = tempfile::tempdir().unwrap();
    let first = collector_process("127.0.0.1:0", data_dir.path()).await;
    let collector_addr = first.addr;

    let rules_dir = tempfile::tempdir().unwrap();
    let (receiver, received) = start_receiver().await;
    std::fs::write(
        rules_dir.path().join("rules.yaml"),
        RULES.replace("RECEIVER", &receiver.to_string()),
    )
    .unwrap();
    let collector_url = format!("http://{collector_addr}");
    let manager = ServiceProcess::start(
        "alert-manager",
        &[
            "--listen",
            "127.0.0.1:0",
            "--collector",
            &collector_url,
            "--rules",
            rules_dir.path().to_str().unwrap(),
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
    let client = AlertManagerClient::new(connect(manager.addr).await);

    // The queue backs up: the alert fires, one incident opens, the receiver hears of it.
    let reporter = QueueReporter::start(collector_addr, BREACHING);
    let opened = eventually("an open incident", Duration::from_secs(30), || async {
        all_incidents(&client)
            .await
            .into_iter()
            .find(|i| i.state == am::IncidentState::Open as i32)
    })
    .await;
    assert_eq!(opened.labels["model"], MODEL, "{opened:?}");
    eventually(
        "the firing notification",
        Duration::from_secs(10),
        || async { (received_with(&received, "firing") >= 1).then_some(()) },
    )
    .await;
    let firing = backlog_alert(manager.addr).await.expect("the alert");
    assert_eq!(firing.state, am::AlertState::Firing as i32, "{firing:?}");
    assert_eq!(firing.no_data_since_unix_ms, 0, "{firing:?}");
    still_one_open_incident(&client, &received, opened.id, "before the kill").await;

    // The collector is killed; the replica's exports fail. The alert goes on firing and says
    // since when it has had no data.
    first.kill().await;
    let killed = Instant::now();
    let away = eventually(
        "the alert says it has no data",
        Duration::from_secs(10),
        || async {
            backlog_alert(manager.addr)
                .await
                .filter(|a| a.no_data_since_unix_ms > 0)
        },
    )
    .await;
    assert_eq!(away.state, am::AlertState::Firing as i32, "{away:?}");
    assert!(away.state_text.contains("no data since"), "{away:?}");
    // Time passes with the collector away: many evaluations (every 200 ms), each without data.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed())).await;
    let away = backlog_alert(manager.addr).await.expect("the alert");
    assert_eq!(away.state, am::AlertState::Firing as i32, "{away:?}");
    assert!(
        away.no_data_since_unix_ms > 0 && away.state_text.contains("no data since"),
        "{away:?}"
    );
    assert_eq!(
        away.fired_at_unix_ms, firing.fired_at_unix_ms,
        "the same firing"
    );
    still_one_open_incident(&client, &received, opened.id, "while the collector is away").await;

    // The collector comes back at the same address on its data directory, with the replica's
    // points, all older than the rule's window. The alert has data again, and for a window it
    // is not resolved on the empty answers the alert manager gets before the replica exports.
    let second = collector_process(&collector_addr.to_string(), data_dir.path()).await;
    assert_eq!(second.addr, collector_addr);
    let back = eventually(
        "the alert has data again",
        Duration::from_secs(10),
        || async {
            backlog_alert(manager.addr)
                .await
                .filter(|a| a.no_data_since_unix_ms == 0)
        },
    )
    .await;
    assert_eq!(back.state, am::AlertState::Firing as i32, "{back:?}");
    assert_eq!(back.fired_at_unix_ms, firing.fired_at_unix_ms, "{back:?}");
    assert!(
        back.state_text.starts_with("firing; data back since ")
            && back
                .state_text
                .contains(", resolving waits for a full window until "),
        "{back:?}"
    );
    // The replica's exports reach the collector again; once the window has passed, the alert
    // fires on fresh data alone: still the same firing alert and the same incident.
    let acked = reporter.acked();
    eventually(
        "an export reaches the restarted collector",
        Duration::from_secs(10),
        || async { (reporter.acked() > acked).then_some(()) },
    )
    .await;
    let back = eventually(
        "the alert firing on fresh data after the grace",
        Duration::from_secs(20),
        || async {
            backlog_alert(manager.addr)
                .await
                .filter(|a| a.state_text != back.state_text)
        },
    )
    .await;
    assert_eq!(
        (back.state, back.state_text.as_str()),
        (am::AlertState::Firing as i32, "firing"),
        "{back:?}"
    );
    assert_eq!(back.no_data_since_unix_ms, 0, "{back:?}");
    assert_eq!(back.fired_at_unix_ms, firing.fired_at_unix_ms, "{back:?}");
    still_one_open_incident(&client, &received, opened.id, "after the restart").await;

    // The queue drains: the alert resolves, and with it the incident, once.
    reporter.report(HEALTHY);
    let resolved = eventually("the incident resolves", Duration::from_secs(30), || async {
        incident(&client, opened.id)
            .await
            .filter(|i| i.state == am::IncidentState::Resolved as i32)
    })
    .await;
    let kinds: Vec<&str> = resolved.timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        (
            kinds.iter().filter(|k| **k == "fired").count(),
            kinds.iter().filter(|k| **k == "alert_resolved").count()
        ),
        (1, 1),
        "{kinds:?}"
    );
    eventually(
        "the resolved notification",
        Duration::from_secs(10),
        || async { (received_with(&received, "resolved") >= 1).then_some(()) },
    )
    .await;
    // Late duplicates would arrive within a group interval (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let notes = received.lock().unwrap().clone();
    assert_eq!(
        (
            received_with(&received, "firing"),
            received_with(&received, "resolved")
        ),
        (1, 1),
        "{notes:#?}"
    );
    assert_eq!(
        all_incidents(&client)
            .await
            .iter()
            .map(|i| i.id)
            .collect::<Vec<_>>(),
        [opened.id],
        "one incident in all"
    );

    reporter.stop().await;
    manager.terminate().await;
    second.terminate().await;
    db.drop().await;
}

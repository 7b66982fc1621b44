//! The alert manager through a restart of the metrics collector: against a collector that
//! answers from the series it holds (a fake, served on an ephemeral port), an empty answer is
//! "no data" only while the collector holds none of the series a rule reads, and an
//! unreachable collector is "no data" too; neither resolves nor fires an alert.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alert_manager::evaluator::{Alerts, Reading, State, Transition, read_all};
use alert_manager::rules::{Function, Op, QuerySpec, Rule, RuleKind, Span};
use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
use proto::monitoring::metrics::v1::metrics_query_server::{MetricsQuery, MetricsQueryServer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// One series the fake collector holds: a gauge's labels, value, and how many seconds ago it
/// was last updated.
#[derive(Clone)]
struct Held {
    metric: String,
    labels: BTreeMap<String, String>,
    value: f64,
    age_s: u32,
}

/// A collector that answers `Batch` queries as the real one answers `last`: with the series
/// of the metric updated within the window. It counts the items it was asked.
#[derive(Clone, Default)]
struct FakeCollector {
    held: Arc<Mutex<Vec<Held>>>,
    items: Arc<AtomicUsize>,
}

impl FakeCollector {
    fn hold(&self, series: Vec<Held>) {
        *self.held.lock().unwrap() = series;
    }

    fn answer(&self, query: &pb::QueryRequest) -> pb::QueryResponse {
        let metric = query.selector.as_ref().map_or("", |s| s.metric.as_str());
        let samples = self
            .held
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.metric == metric && h.age_s < query.window_seconds)
            .map(|h| pb::Sample {
                labels: h.labels.clone().into_iter().collect(),
                value: h.value,
                series: 1,
            })
            .collect();
        pb::QueryResponse {
            samples,
            at_unix_seconds: 0,
            resolution_seconds: 1,
        }
    }
}

fn not_here() -> Status {
    Status::unimplemented("not in this fake")
}

#[tonic::async_trait]
impl MetricsQuery for FakeCollector {
    type WatchStream = futures::stream::Pending<Result<pb::MetricsUpdated, Status>>;

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let items = request.into_inner().items;
        self.items.fetch_add(items.len(), Ordering::SeqCst);
        let results = items
            .iter()
            .map(|item| pb::BatchResult {
                result: Some(match &item.item {
                    Some(pb::batch_item::Item::Query(q)) => {
                        pb::batch_result::Result::Samples(self.answer(q))
                    }
                    _ => pb::batch_result::Result::Error("only queries here".into()),
                }),
            })
            .collect();
        Ok(Response::new(pb::BatchResponse { results }))
    }

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(futures::stream::pending()))
    }

    async fn query(
        &self,
        _: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        Err(not_here())
    }

    async fn ratio(
        &self,
        _: Request<pb::RatioRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        Err(not_here())
    }

    async fn drift(
        &self,
        _: Request<pb::DriftRequest>,
    ) -> Result<Response<pb::DriftResponse>, Status> {
        Err(not_here())
    }

    async fn pin_baseline(
        &self,
        _: Request<pb::PinBaselineRequest>,
    ) -> Result<Response<pb::PinBaselineResponse>, Status> {
        Err(not_here())
    }

    async fn list_metrics(
        &self,
        _: Request<pb::ListMetricsRequest>,
    ) -> Result<Response<pb::ListMetricsResponse>, Status> {
        Err(not_here())
    }

    async fn model_quality(
        &self,
        _: Request<pb::ModelQualityRequest>,
    ) -> Result<Response<pb::ModelQualityResponse>, Status> {
        Err(not_here())
    }

    async fn labelled_examples(
        &self,
        _: Request<pb::LabelledExamplesRequest>,
    ) -> Result<Response<pb::LabelledExamplesResponse>, Status> {
        Err(not_here())
    }

    async fn exemplars(
        &self,
        _: Request<pb::ExemplarsRequest>,
    ) -> Result<Response<pb::ExemplarsResponse>, Status> {
        Err(not_here())
    }
}

/// Serves `fake` on 127.0.0.1:0 and returns a client of it.
async fn serve(fake: FakeCollector) -> MetricsQueryClient<Channel> {
    let (listener, addr) = shared::testing::ephemeral_listener().await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsQueryServer::new(fake))
            .serve_with_incoming(shared::grpc::incoming(listener)),
    );
    client_of(&format!("http://{addr}"))
}

fn client_of(url: &str) -> MetricsQueryClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    MetricsQueryClient::new(channel)
}

/// Fires when a model's queue is deeper than 100, as the latest value within a minute.
fn deep_queue() -> Rule {
    Rule {
        name: "DeepQueue".into(),
        kind: RuleKind::Threshold {
            query: Some(QuerySpec {
                metric: "inference.queue.depth".into(),
                matchers: BTreeMap::new(),
                function: Function::Last,
                window: Span(Duration::from_secs(60)),
                quantile: None,
            }),
            ratio: None,
            op: Op::Above,
            threshold: 100.0,
        },
        group_by: vec!["model".into()],
        for_: None,
        keep_firing_for: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        actions: vec![],
        file: "rules.yaml".into(),
    }
}

fn queue(depth: f64, age_s: u32) -> Held {
    Held {
        metric: "inference.queue.depth".into(),
        labels: [("model".to_owned(), "minilm".to_owned())].into(),
        value: depth,
        age_s,
    }
}

/// One evaluation of `rule`, as the engine does it: read, then take.
async fn evaluate(
    client: &mut MetricsQueryClient<Channel>,
    alerts: &mut Alerts,
    rule: &Rule,
    now_ms: i64,
) -> (Reading, Vec<Transition>) {
    let rules = std::slice::from_ref(rule);
    let reading = read_all(client, rules, &alerts.active_rules(), 0)
        .await
        .pop()
        .unwrap();
    let transitions = alerts.take(rule, reading.clone(), now_ms);
    (reading, transitions)
}

#[tokio::test]
async fn a_collector_restarted_without_its_series_is_no_data_not_a_resolution() {
    let fake = FakeCollector::default();
    let mut client = serve(fake.clone()).await;
    let (rule, mut alerts) = (deep_queue(), Alerts::default());
    fake.hold(vec![queue(250.0, 1)]);
    let (_, fired) = evaluate(&mut client, &mut alerts, &rule, 1_000).await;
    assert!(
        matches!(fired.as_slice(), [Transition::Fired(_)]),
        "{fired:?}"
    );

    // The collector restarts and holds nothing yet: its answer is empty.
    fake.hold(vec![]);
    for now_ms in [2_000, 3_000] {
        let (reading, changed) = evaluate(&mut client, &mut alerts, &rule, now_ms).await;
        assert!(
            changed.is_empty(),
            "an empty answer from a collector that holds none of the rule's series changed \
             the alert: {changed:?} (reading {reading:?})"
        );
        assert!(matches!(reading, Reading::NoData(_)), "{reading:?}");
    }
    let [alert] = alerts.list(false).try_into().expect("one alert");
    assert_eq!(
        (alert.state, alert.no_data_since_ms),
        (State::Firing, 2_000)
    );
    assert!(
        alert
            .state_text()
            .starts_with("firing; no data since 1970-01-01T00:00:02.000Z (the collector holds no series of inference.queue.depth"),
        "{}",
        alert.state_text()
    );

    // The senders export again and the queue is still deep: the same alert, not a new one.
    fake.hold(vec![queue(240.0, 0)]);
    let (_, changed) = evaluate(&mut client, &mut alerts, &rule, 4_000).await;
    assert!(changed.is_empty(), "{changed:?}");
    let [alert] = alerts.list(false).try_into().expect("one alert");
    assert_eq!((alert.state, alert.fired_at_ms), (State::Firing, 1_000));
    assert_eq!(alert.no_data_since_ms, 0);
}

#[tokio::test]
async fn an_empty_answer_from_a_collector_that_holds_the_series_resolves_as_before() {
    let fake = FakeCollector::default();
    let mut client = serve(fake.clone()).await;
    let (rule, mut alerts) = (deep_queue(), Alerts::default());
    fake.hold(vec![queue(250.0, 1)]);
    evaluate(&mut client, &mut alerts, &rule, 1_000).await;
    // The replica went away: its series is older than the rule's minute, and the collector
    // still holds it. The data says the group is gone; the alert resolves.
    fake.hold(vec![queue(250.0, 90)]);
    let (reading, resolved) = evaluate(&mut client, &mut alerts, &rule, 2_000).await;
    assert_eq!(reading, Reading::Observed(vec![]));
    assert!(
        matches!(resolved.as_slice(), [Transition::Resolved(_)]),
        "{resolved:?}"
    );
}

#[tokio::test]
async fn a_rule_without_alerts_takes_an_empty_answer_as_it_is() {
    let fake = FakeCollector::default();
    let mut client = serve(fake.clone()).await;
    let (rule, mut alerts) = (deep_queue(), Alerts::default());
    // Nothing held at all (an error counter that never counted): nothing to keep, so the
    // answer is taken as it is, and the collector is asked nothing more.
    let (reading, changed) = evaluate(&mut client, &mut alerts, &rule, 1_000).await;
    assert_eq!(reading, Reading::Observed(vec![]));
    assert!(changed.is_empty());
    assert_eq!(
        fake.items.load(Ordering::SeqCst),
        1,
        "one item: the rule's query"
    );
}

#[tokio::test]
async fn an_unreachable_collector_is_no_data() {
    // A port that nothing listens on any more.
    let (listener, addr) = shared::testing::ephemeral_listener().await.unwrap();
    drop(listener);
    let mut client = client_of(&format!("http://{addr}"));
    let (rule, mut alerts) = (deep_queue(), Alerts::default());
    let active: HashSet<String> = HashSet::new();
    let readings = read_all(&mut client, std::slice::from_ref(&rule), &active, 0).await;
    let [Reading::NoData(why)] = readings.as_slice() else {
        panic!("{readings:?}")
    };
    assert!(why.starts_with("Unavailable"), "{why}");
    assert!(alerts.take(&rule, readings[0].clone(), 1_000).is_empty());
}

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

//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the service exports one trace per request over
//! OTLP/gRPC, continuing the caller's W3C `traceparent`, with child spans for tokenization,
//! queue wait and compute; and its request, batch and queue metrics. A minimal OTLP receiver
//! stands in for the collector.

use integration_tests::otlp::OtlpReceiver;
use integration_tests::*;
use proto::serving::inference::v1::EmbedRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_and_feeds_the_metrics() {
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let telemetry = integration_tests::otlp::export_telemetry_to("inference", endpoint, 1000);

    let mut server = RunningInference::start(inference_config(&models_dir(), &["minilm-l6"]))
        .await
        .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let request = in_trace(
        tonic::Request::new(EmbedRequest {
            model: None,
            texts: vec!["organic green tea".into()],
        }),
        trace_id,
        parent_id,
    );
    task_client(server.addr).await.embed(request).await.unwrap();
    server.stop().await.unwrap();
    // Shutting the exporters down flushes every finished span and the last metrics.
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();

    let spans = receiver.spans();
    let in_trace: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
    for name in ["task", "tokenize", "queue_wait", "compute"] {
        assert!(
            names.contains(&name),
            "span {name} missing from the caller's trace: {names:?} (all: {spans:?})"
        );
    }
    let root = in_trace.iter().find(|s| s.name == "task").unwrap();
    assert_eq!(
        root.parent, parent_id,
        "the request span continues the caller's span"
    );
    for child in in_trace.iter().filter(|s| s.name != "task") {
        assert_eq!(
            child.parent, root.span_id,
            "{} is a child of the request span",
            child.name
        );
    }
    let metrics: Vec<String> = receiver.metrics().into_iter().map(|m| m.name).collect();
    for name in [
        "inference.requests",
        "inference.request.duration",
        "inference.queue.wait",
        "inference.batch.size",
        "inference.queue.depth",
        "inference.model.loads",
    ] {
        assert!(
            metrics.iter().any(|m| m == name),
            "metric {name} not exported: {metrics:?}"
        );
    }
}

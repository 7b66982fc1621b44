//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the service exports one trace per request over
//! OTLP/gRPC, continuing the caller's W3C `traceparent`, with child spans for tokenization,
//! queue wait and compute; and its request, batch and queue metrics. A minimal OTLP receiver
//! stands in for the collector.

use std::sync::{Arc, Mutex};

use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use proto::serving::inference::v1::EmbedRequest;

/// A received span: name, trace id, span id, parent span id.
type SpanRecord = (String, Vec<u8>, Vec<u8>, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<SpanRecord>>>);

#[derive(Clone, Default)]
struct MetricNames(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl MetricsService for MetricNames {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.0.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((span.name, span.trace_id, span.span_id, span.parent_span_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_and_feeds_the_metrics() {
    let receiver = Receiver::default();
    let metrics = MetricNames::default();
    let (listener, collector) = shared::testing::ephemeral_listener().await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(metrics.clone()))
            .serve_with_incoming(shared::grpc::incoming(listener)),
    );
    let telemetry = shared::telemetry::init(
        "inference",
        &shared::telemetry::TelemetryArgs {
            log_format: shared::telemetry::LogFormat::Pretty,
            log_filter: "info,ort=warn".into(),
            otlp_endpoint: Some(format!("http://{collector}")),
            metric_export_interval_ms: 1000,
            service_name: None,
        },
    )
    .unwrap();

    let mut server = RunningInference::start(inference_config(&models_dir(), &["minilm-l6"]))
        .await
        .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(EmbedRequest {
        model: None,
        texts: vec!["organic green tea".into()],
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    task_client(server.addr).await.embed(request).await.unwrap();
    server.stop().await.unwrap();
    // Shutting the exporters down flushes every finished span.
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();

    let spans = receiver.0.lock().unwrap().clone();
    let in_trace: Vec<&SpanRecord> = spans.iter().filter(|s| hex(&s.1) == trace_id).collect();
    let names: Vec<&str> = in_trace.iter().map(|s| s.0.as_str()).collect();
    for name in ["task", "tokenize", "queue_wait", "compute"] {
        assert!(
            names.contains(&name),
            "span {name} missing from the caller's trace: {names:?} (all: {spans:?})"
        );
    }
    let root = in_trace.iter().find(|s| s.0 == "task").unwrap();
    assert_eq!(
        hex(&root.3),
        parent_id,
        "the request span continues the caller's span"
    );
    for child in in_trace.iter().filter(|s| s.0 != "task") {
        assert_eq!(
            child.3, root.2,
            "{} is a child of the request span",
            child.0
        );
    }

    let metrics = metrics.0.lock().unwrap().clone();
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

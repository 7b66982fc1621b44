//! One trace spans the caller, the gateway and the inference service: the gateway continues the
//! caller's `traceparent` and passes its own span on, and the inference service (a separate
//! process, exporting on its own) continues that. Sampled payloads reach span attributes masked.

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
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use proto::ecommerce::gateway::v1 as pb;

/// A received span.
#[derive(Debug, Clone)]
struct SpanRecord {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<SpanRecord>>>);

/// Names of the metrics received, with the attribute keys of their data points.
#[derive(Clone, Default)]
struct MetricNames(Arc<Mutex<Vec<MetricRecord>>>);

/// A metric's name and the attribute keys of its data points.
type MetricRecord = (String, Vec<String>);

#[tonic::async_trait]
impl MetricsService for MetricNames {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let mut names = self.0.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    let keys = match &metric.data {
                        Some(Data::Sum(sum)) => sum
                            .data_points
                            .iter()
                            .flat_map(|p| p.attributes.iter().map(|a| a.key.clone()))
                            .collect(),
                        Some(Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .flat_map(|p| p.attributes.iter().map(|a| a.key.clone()))
                            .collect(),
                        _ => Vec::new(),
                    };
                    names.push((metric.name, keys));
                }
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
        let text = |value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>| match value
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(s)) => s.clone(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(SpanRecord {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent: span.parent_span_id,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(a.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A text with one of each kind of personal data the gateway masks.
const PERSONAL: &str = "ship to jane.doe@example.com, call +1 (415) 555-2671, card 4111 1111 1111 1111, id 11010519491231002X";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_gateway_and_the_inference_spans() {
    let receiver = Receiver::default();
    let metrics = MetricNames::default();
    let (listener, collector) = shared::testing::ephemeral_listener().await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(metrics.clone()))
            .serve_with_incoming(shared::grpc::incoming(listener)),
    );
    let endpoint = format!("http://{collector}");
    let telemetry = shared::telemetry::init(
        "gateway",
        &shared::telemetry::TelemetryArgs {
            log_format: shared::telemetry::LogFormat::Pretty,
            log_filter: "info,ort=warn".into(),
            otlp_endpoint: Some(endpoint.clone()),
            metric_export_interval_ms: 60_000,
            service_name: None,
        },
    )
    .unwrap();
    let inference = InferenceProcess::start(
        &models_dir(),
        &["minilm-l6"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    )
    .await
    .unwrap();
    let mut gateway = RunningGateway::start(gateway_config(
        &[inference.addr],
        &["--payload-log-sample", "1"],
    ))
    .await
    .unwrap();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let mut request = with_key(
        pb::EmbedRequest {
            texts: vec![PERSONAL.into()],
        },
        "client-key",
        None,
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    gateway_client(gateway.addr)
        .await
        .embed(request)
        .await
        .unwrap();

    gateway.stop().await.unwrap();
    inference.terminate().await; // flushes its spans on shutdown
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();

    let spans = receiver.0.lock().unwrap().clone();
    let in_trace: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let gateway_span = in_trace
        .iter()
        .find(|s| s.service == "gateway" && s.name == "gateway")
        .unwrap_or_else(|| panic!("no gateway span in the caller's trace: {in_trace:#?}"));
    assert_eq!(
        hex(&gateway_span.parent),
        caller_span,
        "the gateway continues the caller's span"
    );
    let inference_span = in_trace
        .iter()
        .find(|s| s.service == "inference" && s.name == "task")
        .unwrap_or_else(|| panic!("no inference span in the caller's trace: {in_trace:#?}"));
    assert_eq!(
        inference_span.parent, gateway_span.span_id,
        "the inference span is a child of the gateway span"
    );
    for name in ["tokenize", "queue_wait", "compute"] {
        assert!(
            in_trace
                .iter()
                .any(|s| s.service == "inference" && s.name == name),
            "{name} missing"
        );
    }
    let payload = gateway_span
        .attributes
        .iter()
        .find(|(k, _)| k == "payload.request")
        .map(|(_, v)| v.clone())
        .expect("payload.request attribute");
    assert_eq!(
        payload,
        "ship to [email], call [phone], card [card], id [cn-id]"
    );
    for secret in [
        "jane.doe@example.com",
        "555-2671",
        "4111 1111 1111 1111",
        "11010519491231002X",
    ] {
        assert!(!format!("{spans:?}").contains(secret), "{secret} in spans");
    }
    assert!(
        !format!("{spans:?}").contains("client-key"),
        "the API key in spans"
    );
    // The gateway's metrics carry rpc, model, version, tenant and status.
    let metrics = metrics.0.lock().unwrap().clone();
    let requests = metrics
        .iter()
        .find(|(name, _)| name == "gateway.requests")
        .unwrap_or_else(|| panic!("gateway.requests not exported: {metrics:?}"));
    for key in ["rpc", "model", "model_version", "tenant", "status"] {
        assert!(
            requests.1.iter().any(|k| k == key),
            "gateway.requests lacks {key}: {:?}",
            requests.1
        );
    }
    for name in ["gateway.request.duration", "gateway.cache.lookups"] {
        assert!(
            metrics.iter().any(|(n, _)| n == name),
            "{name} not exported: {metrics:?}"
        );
    }
}

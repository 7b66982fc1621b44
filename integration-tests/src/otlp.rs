//! A minimal OTLP/gRPC receiver for tests: it keeps every span and metric it is sent, so that
//! a test can assert on what the services exported.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

/// A received span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// `service.name` of the sender.
    pub service: String,
    /// Span name.
    pub name: String,
    /// Trace id, lower-case hex.
    pub trace_id: String,
    /// Span id, lower-case hex.
    pub span_id: String,
    /// Parent span id, lower-case hex (empty for a root).
    pub parent: String,
    /// Attributes, values rendered as text (numbers and booleans as the collector renders
    /// them).
    pub attributes: Vec<(String, String)>,
    /// The status message of a span marked failed; `None` for one that is not.
    pub failure: Option<String>,
}

impl SpanRecord {
    /// The value of attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A received metric: its name and the attribute keys of its data points.
#[derive(Debug, Clone)]
pub struct MetricRecord {
    /// Metric name.
    pub name: String,
    /// Attribute keys seen on its data points.
    pub attribute_keys: Vec<String>,
    /// Each data point's attributes, values as text.
    pub points: Vec<Vec<(String, String)>>,
}

/// What the receiver got so far.
#[derive(Clone, Default)]
pub struct OtlpReceiver {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    metrics: Arc<Mutex<Vec<MetricRecord>>>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn keys(attributes: &[KeyValue]) -> impl Iterator<Item = String> + '_ {
    attributes.iter().map(|a| a.key.clone())
}

fn pairs(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|a| (a.key.clone(), text(a.value.as_ref())))
        .collect()
}

impl OtlpReceiver {
    /// Starts a receiver on an ephemeral loopback port; returns it and its endpoint URL.
    pub async fn start() -> (OtlpReceiver, String) {
        let receiver = OtlpReceiver::default();
        let (listener, addr): (_, SocketAddr) =
            shared::testing::ephemeral_listener().await.expect("bind");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .add_service(MetricsServiceServer::new(receiver.clone()))
                .serve_with_incoming(shared::grpc::incoming(listener)),
        );
        (receiver, format!("http://{addr}"))
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap().clone()
    }

    /// Every metric received so far.
    pub fn metrics(&self) -> Vec<MetricRecord> {
        self.metrics.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(SpanRecord {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref())))
                        .collect(),
                    failure: span
                        .status
                        .filter(|s| s.code == StatusCode::Error as i32)
                        .map(|s| s.message),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let points: Vec<&[KeyValue]> = match &metric.data {
                    Some(Data::Sum(sum)) => {
                        sum.data_points.iter().map(|p| &p.attributes[..]).collect()
                    }
                    Some(Data::Histogram(h)) => {
                        h.data_points.iter().map(|p| &p.attributes[..]).collect()
                    }
                    Some(Data::Gauge(g)) => {
                        g.data_points.iter().map(|p| &p.attributes[..]).collect()
                    }
                    _ => Vec::new(),
                };
                metrics.push(MetricRecord {
                    name: metric.name,
                    attribute_keys: points.iter().flat_map(|a| keys(a)).collect(),
                    points: points.iter().map(|a| pairs(a)).collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Sends this process's telemetry (as service `service`, plaintext, pretty logs at `info`) to
/// `endpoint`, metrics every `metric_export_interval_ms`; kept while the guard lives.
pub fn export_telemetry_to(
    service: &str,
    endpoint: String,
    metric_export_interval_ms: u64,
) -> shared::telemetry::TelemetryGuard {
    shared::telemetry::init(
        service,
        &shared::telemetry::TelemetryArgs {
            log_format: shared::telemetry::LogFormat::Pretty,
            log_filter: "info,ort=warn".into(),
            otlp_endpoint: Some(endpoint),
            metric_export_interval_ms,
            service_name: None,
            service_instance_id: None,
        },
        &shared::tls::TlsArgs {
            plaintext: true,
            ..Default::default()
        },
    )
    .expect("telemetry starts")
}

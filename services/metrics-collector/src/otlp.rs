//! The OTLP/gRPC receiver: metrics go into the [`MetricStore`]; of traces, the slow and failed
//! spans are kept as exemplars ([`ExemplarRings`]) and the rest are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, metric::Data, number_data_point,
};
use tonic::{Request, Response, Status};

use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};

use crate::exemplars::{Exemplar, ExemplarRings};
use crate::store::{Kind, Labels, MetricStore, Point, Value};

/// Longest attribute value kept; longer ones are cut (a label is not a payload).
const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Receives OTLP metrics and traces.
#[derive(Clone)]
pub struct OtlpReceiver {
    store: Arc<MetricStore>,
    exemplars: Arc<ExemplarRings>,
    spans: Arc<AtomicU64>,
    updates: tokio::sync::broadcast::Sender<Arc<Vec<String>>>,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl OtlpReceiver {
    /// A receiver writing metrics into `store` and exemplars into `exemplars`.
    pub fn new(store: Arc<MetricStore>, exemplars: Arc<ExemplarRings>) -> Self {
        OtlpReceiver {
            store,
            exemplars,
            spans: Arc::new(AtomicU64::new(0)),
            updates: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// A receiver of the names of the metrics each export touched.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<String>>> {
        self.updates.subscribe()
    }

    /// Spans received so far.
    pub fn spans_received(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

fn text(value: &Option<AnyValue>) -> String {
    let text = match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    if text.len() <= MAX_LABEL_VALUE_BYTES {
        return text;
    }
    let mut end = MAX_LABEL_VALUE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .map(|kv| text(&kv.value))
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OtlpReceiver {
    /// The exemplar of a span, if it is slow or failed.
    fn exemplar(&self, service: &str, span: &Span) -> Option<Exemplar> {
        let duration_ms = span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano) as f64
            / 1e6;
        let status = span.status.as_ref();
        let error = status.is_some_and(|s| s.code == StatusCode::Error as i32);
        if !self.exemplars.wanted(duration_ms, error) {
            return None;
        }
        let attribute = |name: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == name)
                .map(|kv| text(&kv.value))
                .unwrap_or_default()
        };
        Some(Exemplar {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            service: service.to_owned(),
            span_name: span.name.chars().take(MAX_LABEL_VALUE_BYTES).collect(),
            model: attribute("model"),
            version: attribute("model_version").parse().unwrap_or(0),
            error,
            status_message: status
                .map(|s| s.message.chars().take(1024).collect())
                .unwrap_or_default(),
            duration_ms,
            end_unix_ms: (span.end_time_unix_nano / 1_000_000) as i64,
        })
    }
}

/// An attribute value as a label value, taking the string when it is one.
fn owned_text(value: Option<AnyValue>) -> String {
    match value.and_then(|v| v.value) {
        Some(any_value::Value::StringValue(mut s)) => {
            if s.len() > MAX_LABEL_VALUE_BYTES {
                let mut end = MAX_LABEL_VALUE_BYTES;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
            s
        }
        other => text(&other.map(|v| AnyValue { value: Some(v) })),
    }
}

/// Labels of a point: its attributes plus the sender's `service.name` as `job`.
fn labels(job: &str, attributes: Vec<KeyValue>) -> Labels {
    let mut labels: Labels = Vec::with_capacity(attributes.len() + 1);
    labels.extend(
        attributes
            .into_iter()
            .map(|kv| (kv.key, owned_text(kv.value))),
    );
    if !job.is_empty() {
        labels.push(("job".to_owned(), job.to_owned()));
    }
    labels.sort();
    labels.dedup_by(|a, b| a.0 == b.0);
    labels
}

/// Decodes one metric into its kind and points, or says why it cannot be stored.
fn decode(job: &str, name: &str, metric: Metric) -> Result<(Kind, Vec<Point>), String> {
    let delta = |temporality: i32| temporality == AggregationTemporality::Delta as i32;
    let number = |value: &Option<number_data_point::Value>| match value {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => f64::NAN,
    };
    match metric.data {
        Some(Data::Sum(sum)) => {
            let kind = if sum.is_monotonic {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            let delta = delta(sum.aggregation_temporality);
            let points = sum
                .data_points
                .into_iter()
                .map(|p| Point {
                    start_time_ns: p.start_time_unix_nano,
                    delta,
                    value: Value::Scalar(number(&p.value)),
                    labels: labels(job, p.attributes),
                })
                .collect();
            Ok((kind, points))
        }
        Some(Data::Gauge(gauge)) => Ok((
            Kind::Gauge,
            gauge
                .data_points
                .into_iter()
                .map(|p| Point {
                    start_time_ns: p.start_time_unix_nano,
                    delta: false,
                    value: Value::Scalar(number(&p.value)),
                    labels: labels(job, p.attributes),
                })
                .collect(),
        )),
        Some(Data::Histogram(histogram)) => {
            let delta = delta(histogram.aggregation_temporality);
            let points = histogram
                .data_points
                .into_iter()
                .map(|p| Point {
                    start_time_ns: p.start_time_unix_nano,
                    delta,
                    value: Value::Histogram {
                        sum: p.sum.unwrap_or(0.0),
                        count: p.count,
                        bounds: p.explicit_bounds,
                        counts: p.bucket_counts,
                    },
                    labels: labels(job, p.attributes),
                })
                .collect();
            Ok((Kind::Histogram, points))
        }
        Some(Data::ExponentialHistogram(_)) => Err(format!(
            "metric '{name}' is an exponential histogram, which this collector does not store yet; export explicit-bucket histograms"
        )),
        Some(Data::Summary(_)) => Err(format!(
            "metric '{name}' is a summary, which this collector does not store"
        )),
        None => Err(format!("metric '{name}' has no data")),
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let now = unix_now();
        let mut rejected = 0_i64;
        let mut touched: Vec<String> = Vec::new();
        let mut first_error: Option<String> = None;
        for resource in request.into_inner().resource_metrics {
            let job = service_name(resource.resource.as_ref());
            for mut metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let name = std::mem::take(&mut metric.name);
                if self.updates.receiver_count() > 0 && !touched.contains(&name) {
                    touched.push(name.clone());
                }
                let description = std::mem::take(&mut metric.description);
                let unit = std::mem::take(&mut metric.unit);
                let refusal = match decode(&job, &name, metric) {
                    Err(err) => Some((1, err)),
                    Ok((kind, points)) => self
                        .store
                        .record(now, &name, kind, &description, &unit, points)
                        .err()
                        .map(|(n, err)| (n, err.to_string())),
                };
                if let Some((n, err)) = refusal {
                    rejected += n as i64;
                    first_error.get_or_insert(err);
                }
            }
        }
        if !touched.is_empty() {
            // Nobody listening is not an error.
            let _ = self.updates.send(Arc::new(touched));
        }
        let partial_success = first_error.map(|error_message| ExportMetricsPartialSuccess {
            rejected_data_points: rejected,
            error_message,
        });
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = 0;
        for resource in request.into_inner().resource_spans {
            let service = service_name(resource.resource.as_ref());
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                spans += 1;
                if let Some(exemplar) = self.exemplar(&service, span) {
                    self.exemplars.offer(exemplar);
                }
            }
        }
        self.spans.fetch_add(spans, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

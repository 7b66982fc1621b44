//! The OTLP/gRPC receiver: metrics go into the [`MetricStore`]; of traces, the slow and failed
//! spans are kept as exemplars ([`ExemplarRings`]) and the rest are counted.

use std::collections::HashSet;
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
use crate::prometheus;
use crate::sanitize::{self, MAX_LABEL_VALUE_BYTES};
use crate::store::{Kind, Labels, MetricStore, Point, Value};

/// Receives OTLP metrics and traces.
#[derive(Clone)]
pub struct OtlpReceiver {
    store: Arc<MetricStore>,
    exemplars: Arc<ExemplarRings>,
    spans: Arc<AtomicU64>,
    updates: tokio::sync::broadcast::Sender<Arc<Vec<String>>>,
    senders: crate::senders::Senders,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl OtlpReceiver {
    /// A receiver writing metrics into `store` and exemplars into `exemplars`.
    pub fn new(
        store: Arc<MetricStore>,
        exemplars: Arc<ExemplarRings>,
        senders: crate::senders::Senders,
    ) -> Self {
        OtlpReceiver {
            store,
            exemplars,
            spans: Arc::new(AtomicU64::new(0)),
            updates: tokio::sync::broadcast::channel(1024).0,
            senders,
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
    sanitize::cut(text, MAX_LABEL_VALUE_BYTES)
}

/// A resource attribute as text ("" when absent).
fn resource_attribute(
    resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
    key: &str,
) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
        .map(|kv| text(&kv.value))
        .unwrap_or_default()
}

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource_attribute(resource, "service.name")
}

/// Who sent a resource's points: its `service.name` (the `job` label) and its
/// `service.instance.id` (the `instance` label: one process of the service).
#[derive(Debug, Clone, Default)]
struct Sender {
    job: String,
    instance: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a trace id in OTLP.
const TRACE_ID_BYTES: usize = 16;

/// Bytes of a span id in OTLP.
const SPAN_ID_BYTES: usize = 8;

/// `id` in hex, when it is a valid OTLP id of `len` bytes: OTLP holds an id of another length,
/// or of zeroes only, invalid, and no tracing backend would find a trace by it.
fn valid_id(id: &[u8], len: usize) -> Option<String> {
    (id.len() == len && id.iter().any(|b| *b != 0)).then(|| hex(id))
}

impl OtlpReceiver {
    /// The exemplar of a span, if it is slow or failed and its trace and span ids are valid.
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
        let (Some(trace_id), Some(span_id)) = (
            valid_id(&span.trace_id, TRACE_ID_BYTES),
            valid_id(&span.span_id, SPAN_ID_BYTES),
        ) else {
            tracing::debug!(
                service,
                trace_id_bytes = span.trace_id.len(),
                span_id_bytes = span.span_id.len(),
                "a slow or failed span without a valid trace or span id is kept as no exemplar"
            );
            return None;
        };
        let attribute = |name: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == name)
                .map(|kv| text(&kv.value))
                .unwrap_or_default()
        };
        Some(Exemplar {
            trace_id,
            span_id,
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
        Some(any_value::Value::StringValue(s)) => sanitize::cut(s, MAX_LABEL_VALUE_BYTES),
        other => text(&other.map(|v| AnyValue { value: Some(v) })),
    }
}

/// Labels of a point of metric `name`, of kind `kind`: its attributes plus the sender's
/// `service.name` as `job` and its `service.instance.id` as `instance` (these two, when the
/// sender gives them, replace attributes of the same names), with distinct Prometheus label
/// names (see [`prometheus::distinct_label_names`]). Refused when a label name or value holds a
/// control character (see [`sanitize`]), or when a histogram has an attribute `le`, the label
/// Prometheus gives its bucket bounds.
fn labels(
    sender: &Sender,
    name: &str,
    kind: Kind,
    attributes: Vec<KeyValue>,
) -> Result<Labels, String> {
    let mut labels: Labels = Vec::with_capacity(attributes.len() + 2);
    for (key, value) in [("job", &sender.job), ("instance", &sender.instance)] {
        if !value.is_empty() {
            labels.push((key.to_owned(), value.clone()));
        }
    }
    for kv in attributes {
        sanitize::label_name(name, &kv.key)?;
        if kind == Kind::Histogram && kv.key == "le" {
            return Err(format!(
                "metric '{}': a histogram may not have an attribute 'le', the label of its bucket bounds in Prometheus; rename the attribute",
                sanitize::printable(name)
            ));
        }
        let value = owned_text(kv.value);
        sanitize::label_value(name, &kv.key, &value)?;
        labels.push((kv.key, value));
    }
    // Stable: of two labels of one name, the first (the sender's identity) stays.
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.dedup_by(|a, b| a.0 == b.0);
    Ok(prometheus::distinct_label_names(labels))
}

/// One metric's points as decoded: those that can be stored, and how many could not (with the
/// first reason).
struct Decoded {
    kind: Kind,
    points: Vec<Point>,
    refused: usize,
    first_error: Option<String>,
}

impl Decoded {
    fn new(kind: Kind, capacity: usize) -> Decoded {
        Decoded {
            kind,
            points: Vec::with_capacity(capacity),
            refused: 0,
            first_error: None,
        }
    }

    /// Keeps the point when its labels are acceptable, else counts it refused.
    fn push(&mut self, labels: Result<Labels, String>, point: impl FnOnce(Labels) -> Point) {
        match labels {
            Ok(labels) => self.points.push(point(labels)),
            Err(err) => {
                self.refused += 1;
                self.first_error.get_or_insert(err);
            }
        }
    }
}

/// Decodes one metric into its kind and points, or says why none of it can be stored.
fn decode(sender: &Sender, name: &str, metric: Metric) -> Result<Decoded, String> {
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
            let mut decoded = Decoded::new(kind, sum.data_points.len());
            for p in sum.data_points {
                decoded.push(labels(sender, name, kind, p.attributes), |labels| Point {
                    start_time_ns: p.start_time_unix_nano,
                    delta,
                    value: Value::Scalar(number(&p.value)),
                    labels,
                });
            }
            Ok(decoded)
        }
        Some(Data::Gauge(gauge)) => {
            let mut decoded = Decoded::new(Kind::Gauge, gauge.data_points.len());
            for p in gauge.data_points {
                decoded.push(labels(sender, name, Kind::Gauge, p.attributes), |labels| {
                    Point {
                        start_time_ns: p.start_time_unix_nano,
                        delta: false,
                        value: Value::Scalar(number(&p.value)),
                        labels,
                    }
                });
            }
            Ok(decoded)
        }
        Some(Data::Histogram(histogram)) => {
            let delta = delta(histogram.aggregation_temporality);
            let mut decoded = Decoded::new(Kind::Histogram, histogram.data_points.len());
            for p in histogram.data_points {
                decoded.push(
                    labels(sender, name, Kind::Histogram, p.attributes),
                    |labels| Point {
                        start_time_ns: p.start_time_unix_nano,
                        delta,
                        value: Value::Histogram {
                            sum: p.sum.unwrap_or(0.0),
                            count: p.count,
                            bounds: p.explicit_bounds,
                            counts: p.bucket_counts,
                        },
                        labels,
                    },
                );
            }
            Ok(decoded)
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

/// Data points of a metric, for counting what a refused metric held.
fn points_in(metric: &Metric) -> usize {
    match &metric.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
    .max(1)
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        // The metric quota counts against the key presented; with writes open, against each
        // resource's service.name.
        let writer = self.senders.writer(&request, "OTLP metric exports")?;
        let now = unix_now();
        let mut rejected = 0_i64;
        let watched = self.updates.receiver_count() > 0;
        let mut touched: HashSet<String> = HashSet::new();
        let mut first_error: Option<String> = None;
        let mut refuse = |n: usize, err: String| {
            rejected += n as i64;
            first_error.get_or_insert(err);
        };
        for resource in request.into_inner().resource_metrics {
            let sender = Sender {
                job: service_name(resource.resource.as_ref()),
                instance: resource_attribute(resource.resource.as_ref(), "service.instance.id"),
            };
            let job = &sender.job;
            let metrics = resource.scope_metrics.into_iter().flat_map(|s| s.metrics);
            let refusal = sanitize::refusal("*", "the sender's service.name", job).or_else(|| {
                sanitize::refusal("*", "the sender's service.instance.id", &sender.instance)
            });
            if let Some(err) = refusal {
                for metric in metrics {
                    self.store.count_refused(&metric.name, points_in(&metric));
                    refuse(points_in(&metric), err.clone());
                }
                continue;
            }
            for mut metric in metrics {
                let name = match sanitize::metric_name(std::mem::take(&mut metric.name)) {
                    Ok(name) => name,
                    Err(err) => {
                        self.store.count_refused("", points_in(&metric));
                        refuse(points_in(&metric), err);
                        continue;
                    }
                };
                if watched && !touched.contains(&name) {
                    touched.insert(name.clone());
                }
                let description = sanitize::free_text(
                    std::mem::take(&mut metric.description),
                    sanitize::MAX_DESCRIPTION_BYTES,
                );
                let unit =
                    sanitize::free_text(std::mem::take(&mut metric.unit), sanitize::MAX_UNIT_BYTES);
                let points = points_in(&metric);
                let decoded = match decode(&sender, &name, metric) {
                    Ok(decoded) => decoded,
                    Err(err) => {
                        self.store.count_refused(&name, points);
                        refuse(points, err);
                        continue;
                    }
                };
                if !decoded.points.is_empty()
                    && let Err((n, err)) = self.store.record_sent(
                        now,
                        writer.as_deref().unwrap_or(job),
                        &name,
                        decoded.kind,
                        &description,
                        &unit,
                        decoded.points,
                    )
                {
                    refuse(n, err.to_string());
                }
                // Counted after the clean points made the metric, so that it counts there too.
                if let Some(err) = decoded.first_error {
                    self.store.count_refused(&name, decoded.refused);
                    refuse(decoded.refused, err);
                }
            }
        }
        if !touched.is_empty() {
            // Nobody listening is not an error.
            let _ = self.updates.send(Arc::new(touched.into_iter().collect()));
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
        self.senders.check(&request, "OTLP span exports")?;
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

#[cfg(test)]
mod properties {
    //! What a sender may put in a point's attributes: whatever the strings, decoding answers,
    //! keeps exactly the clean labels, and bounds what it keeps.

    use super::*;
    use proptest::prelude::*;

    fn kv(key: String, value: String) -> KeyValue {
        KeyValue {
            key,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }),
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn labels_are_refused_exactly_when_they_hold_a_control_character(
            pairs in proptest::collection::vec(("\\PC{0,8}|.{0,8}", "\\PC{0,300}|.{0,12}"), 0..8),
        ) {
            let attributes: Vec<KeyValue> = pairs.iter().cloned().map(|(k, v)| kv(k, v)).collect();
            let bad = pairs.iter().any(|(k, v)| {
                k.is_empty() || k.len() > sanitize::MAX_LABEL_NAME_BYTES
                    || k.chars().any(char::is_control)
                    || sanitize::cut(v.clone(), MAX_LABEL_VALUE_BYTES).chars().any(char::is_control)
            });
            let sender = Sender { job: "svc".into(), instance: String::new() };
            match labels(&sender, "m", Kind::Gauge, attributes) {
                Ok(labels) => {
                    prop_assert!(!bad);
                    prop_assert!(labels.windows(2).all(|w| w[0].0 < w[1].0), "sorted, one per name");
                    let mut exposed: Vec<String> =
                        labels.iter().map(|(k, _)| prometheus::sanitize(k, false)).collect();
                    exposed.sort();
                    prop_assert!(exposed.windows(2).all(|w| w[0] < w[1]), "one per Prometheus name: {:?}", labels);
                    prop_assert!(!exposed.iter().any(|n| n.starts_with("__")), "{:?}", labels);
                    prop_assert!(labels.iter().all(|(_, v)| v.len() <= MAX_LABEL_VALUE_BYTES));
                    prop_assert!(labels.iter().any(|(k, v)| k == "job" && v == "svc") || pairs.iter().any(|(k, _)| k == "job"));
                }
                Err(err) => {
                    prop_assert!(bad);
                    prop_assert!(err.contains("metric 'm'"), "{}", err);
                }
            }
        }

        #[test]
        fn metric_names_are_kept_cut_or_refused_never_broken(name in ".{0,400}") {
            match sanitize::metric_name(name.clone()) {
                Ok(kept) => {
                    prop_assert!(!kept.is_empty() && kept.len() <= sanitize::MAX_METRIC_NAME_BYTES);
                    prop_assert!(name.starts_with(&kept));
                    prop_assert!(!kept.chars().any(char::is_control));
                }
                Err(_) => prop_assert!(name.is_empty() || sanitize::cut(name, sanitize::MAX_METRIC_NAME_BYTES).chars().any(char::is_control)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! What a sender sees of its exports: on `/metrics`, and in the answer to the export.

    use super::*;
    use crate::store::tests::limits;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn receiver() -> (OtlpReceiver, Arc<MetricStore>) {
        let store = Arc::new(MetricStore::new(limits(100)));
        let exemplars = Arc::new(ExemplarRings::new(10, 4, 100.0));
        let receiver = OtlpReceiver::new(store.clone(), exemplars, Default::default());
        (receiver, store)
    }

    fn gauge(name: &str, attributes: Vec<KeyValue>) -> Metric {
        Metric {
            name: name.to_owned(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    attributes,
                    value: Some(number_data_point::Value::AsDouble(1.0)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        }
    }

    fn histogram(name: &str, attributes: Vec<KeyValue>) -> Metric {
        Metric {
            name: name.to_owned(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes,
                    count: 3,
                    sum: Some(2.0),
                    bucket_counts: vec![2, 1],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        }
    }

    async fn export(receiver: &OtlpReceiver, metrics: Vec<Metric>) -> ExportMetricsServiceResponse {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![string("service.name", "shop")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        MetricsService::export(receiver, Request::new(request))
            .await
            .unwrap()
            .into_inner()
    }

    #[tokio::test]
    async fn a_sum_that_would_become_infinite_is_refused_in_the_answer() {
        let (receiver, store) = receiver();
        let counter = |value: f64| Metric {
            name: "shop.bytes".to_owned(),
            data: Some(Data::Sum(opentelemetry_proto::tonic::metrics::v1::Sum {
                data_points: vec![NumberDataPoint {
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let first = export(&receiver, vec![counter(1e308)]).await;
        assert_eq!(first.partial_success, None);
        let second = export(&receiver, vec![counter(1e308)]).await;
        let refused = second.partial_success.unwrap_or_default();
        assert_eq!(refused.rejected_data_points, 1, "{refused:?}");
        assert!(refused.error_message.contains("shop.bytes"), "{refused:?}");
        let text = crate::prometheus::render(&store.snapshot(i64::MIN), store.refused(), None);
        assert!(
            text.contains("shop_bytes_total{job=\"shop\"} 100000000"),
            "{text}"
        );
        assert!(text.contains("collector_refused_points_total 1"), "{text}");
    }

    /// An export of `names` metrics under each of `services` (one resource each), presenting
    /// `key` when given.
    fn export_request(
        services: &[&str],
        names: usize,
        key: Option<&str>,
    ) -> Request<ExportMetricsServiceRequest> {
        let resource_metrics = services
            .iter()
            .map(|service| ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![string("service.name", service)],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: (0..names)
                        .map(|i| gauge(&format!("{service}.m{i}"), vec![]))
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let mut request = Request::new(ExportMetricsServiceRequest { resource_metrics });
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("authorization", shared::auth::bearer(key).unwrap());
        }
        request
    }

    #[tokio::test]
    async fn one_key_cannot_pass_its_metric_quota_by_changing_service_name() {
        let store = Arc::new(MetricStore::new(crate::store::Limits {
            max_families_per_sender: 5,
            ..limits(100)
        }));
        let keys = shared::auth::ApiKeys::load(
            None,
            &[
                "key-one:shop:client".to_owned(),
                "key-two:ads:client".to_owned(),
            ],
        )
        .unwrap();
        let receiver = OtlpReceiver::new(
            store.clone(),
            Arc::new(ExemplarRings::new(10, 4, 100.0)),
            crate::senders::Senders::new(keys),
        );
        // One key, three made-up service names, three metrics each: 9 names, 5 allowed.
        let request = export_request(&["s1", "s2", "s3"], 3, Some("key-one"));
        let answer = MetricsService::export(&receiver, request)
            .await
            .unwrap()
            .into_inner();
        let refused = answer.partial_success.unwrap_or_default();
        assert_eq!(refused.rejected_data_points, 4, "{refused:?}");
        assert!(
            refused.error_message.contains("maximum of 5 metrics"),
            "{refused:?}"
        );
        assert_eq!(store.families().len(), 5);
        // Another key has a quota of its own.
        let request = export_request(&["s4"], 5, Some("key-two"));
        let answer = MetricsService::export(&receiver, request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.partial_success, None);

        // Without keys (writes open) the sender is its service.name, as before.
        let store = Arc::new(MetricStore::new(crate::store::Limits {
            max_families_per_sender: 5,
            ..limits(100)
        }));
        let open = OtlpReceiver::new(
            store.clone(),
            Arc::new(ExemplarRings::new(10, 4, 100.0)),
            Default::default(),
        );
        let answer = MetricsService::export(&open, export_request(&["s1", "s2"], 5, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.partial_success, None);
        assert_eq!(store.families().len(), 10);
    }

    #[tokio::test]
    async fn spans_with_ids_of_the_wrong_length_leave_no_exemplar() {
        use opentelemetry_proto::tonic::trace::v1::{
            ResourceSpans, ScopeSpans, Status as SpanStatus,
        };
        let store = Arc::new(MetricStore::new(limits(100)));
        let exemplars = Arc::new(ExemplarRings::new(10, 4, 100.0));
        let receiver = OtlpReceiver::new(store, exemplars.clone(), Default::default());
        let failed = |trace_id: Vec<u8>, span_id: Vec<u8>| Span {
            trace_id,
            span_id,
            name: "checkout".to_owned(),
            status: Some(SpanStatus {
                code: StatusCode::Error as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let spans = vec![
            failed(vec![7; 16], vec![9; 8]),
            failed(vec![1; 3], vec![9; 8]),
            failed(vec![7; 16], vec![9; 100]),
            failed(vec![0; 16], vec![9; 8]),
            failed(vec![7; 16], vec![0; 8]),
        ];
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", "shop")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        TraceService::export(&receiver, Request::new(request))
            .await
            .unwrap();
        assert_eq!(receiver.spans_received(), 5, "every span is still counted");
        let kept = exemplars.find(&crate::exemplars::Filter {
            limit: 10,
            ..Default::default()
        });
        let ids: Vec<(&str, &str)> = kept
            .iter()
            .map(|e| (e.trace_id.as_str(), e.span_id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [("07".repeat(16).as_str(), "09".repeat(8).as_str())],
            "only the span with valid ids is an exemplar"
        );
    }

    /// The label names of one exposition line, in order.
    fn label_names(line: &str) -> Vec<String> {
        let Some(open) = line.find('{') else {
            return Vec::new();
        };
        let mut names = Vec::new();
        let mut rest = &line[open + 1..];
        while let Some(eq) = rest.find("=\"") {
            names.push(rest[..eq].to_owned());
            // Skip the quoted value (escaped quotes included) and the comma after it.
            let value = &rest[eq + 2..];
            let mut end = 0;
            let mut escaped = false;
            for (i, c) in value.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            rest = value[end + 1..].trim_start_matches(',');
            if rest.starts_with('}') {
                break;
            }
        }
        names
    }

    #[tokio::test]
    async fn no_exposition_line_repeats_a_label_name() {
        let (receiver, store) = receiver();
        let answer = export(
            &receiver,
            vec![
                // `a.b` and `a_b` are both the Prometheus label `a_b`.
                gauge(
                    "shop.cart",
                    vec![
                        string("a_b", "2"),
                        string("a.b", "1"),
                        string("page", "home"),
                    ],
                ),
                // `__name__` is Prometheus's own; `le` is the bucket label of a histogram.
                gauge("shop.visits", vec![string("__name__", "x")]),
                histogram("shop.latency", vec![string("le", "0.5")]),
            ],
        )
        .await;
        let text = crate::prometheus::render(&store.snapshot(i64::MIN), store.refused(), None);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let names = label_names(line);
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(names.len(), unique.len(), "a label name repeats in: {line}");
            assert!(
                !names.iter().any(|n| n.starts_with("__")),
                "a reserved label name in: {line}"
            );
        }
        assert!(
            text.contains("shop_cart{a_b=\"1;2\",job=\"shop\",page=\"home\"} 1"),
            "the values of colliding attributes are joined in the order of their keys:\n{text}"
        );
        assert!(
            text.contains("shop_visits{_name__=\"x\",job=\"shop\"} 1"),
            "a reserved name loses its second underscore:\n{text}"
        );
        let refused = answer.partial_success.unwrap_or_default();
        assert_eq!(refused.rejected_data_points, 1, "{refused:?}");
        assert!(refused.error_message.contains("'le'"), "{refused:?}");
    }
}

//! OTLP messages built by hand, as a sender (honest or not) would send them.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A string attribute.
pub fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// An export of `metrics` from the service `service` (its `service.name`).
pub fn export(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    export_from(service, None, metrics)
}

/// An export of `metrics` from one process (`service.instance.id` = `instance`, when given) of
/// the service `service`.
pub fn export_from(
    service: &str,
    instance: Option<&str>,
    metrics: Vec<Metric>,
) -> ExportMetricsServiceRequest {
    let mut attributes = vec![attribute("service.name", service)];
    attributes.extend(instance.map(|i| attribute("service.instance.id", i)));
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A cumulative monotonic sum started at `start_ns`, one point per (attributes, value).
pub fn counter(name: &str, start_ns: u64, points: Vec<(Vec<KeyValue>, f64)>) -> Metric {
    Metric {
        name: name.to_owned(),
        data: Some(Data::Sum(Sum {
            data_points: points
                .into_iter()
                .map(|(attributes, v)| NumberDataPoint {
                    attributes,
                    start_time_unix_nano: start_ns,
                    time_unix_nano: now_ns(),
                    value: Some(number_data_point::Value::AsDouble(v)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// Delta counts of `metric` from the service `service`: `n` for each label set, stamped now.
pub fn delta_counts(
    service: &str,
    metric: &str,
    label_sets: &[Vec<(&str, String)>],
    n: f64,
) -> ExportMetricsServiceRequest {
    let now = now_ns();
    export(
        service,
        vec![Metric {
            name: metric.into(),
            data: Some(Data::Sum(Sum {
                data_points: label_sets
                    .iter()
                    .map(|labels| NumberDataPoint {
                        attributes: labels.iter().map(|(k, v)| attribute(k, v)).collect(),
                        start_time_unix_nano: now,
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsDouble(n)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }],
    )
}

/// A gauge with one point of `value`, stamped now.
pub fn gauge(name: &str, attributes: Vec<KeyValue>, value: f64) -> Metric {
    Metric {
        name: name.to_owned(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes,
                time_unix_nano: now_ns(),
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

/// A span named `gateway` of `millis` ending at `end_ns`, its trace and span ids `id` repeated,
/// failed ("replica unavailable") or not.
pub fn span(id: u8, end_ns: u64, millis: u64, error: bool, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: "gateway".into(),
        start_time_unix_nano: end_ns - millis * 1_000_000,
        end_time_unix_nano: end_ns,
        attributes,
        status: Some(Status {
            code: if error { 2 } else { 1 },
            message: if error {
                "replica unavailable".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

/// Exports `request` to the collector at `addr` on a connection of its own, as an SDK does
/// after a failure (so a collector restarted at that address is reached as soon as it
/// listens); whether it was acknowledged within `limit`.
pub async fn export_once(
    addr: std::net::SocketAddr,
    request: ExportMetricsServiceRequest,
    limit: std::time::Duration,
) -> bool {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let answer = tokio::time::timeout(limit, async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await?;
        MetricsServiceClient::new(channel)
            .export(request)
            .await
            .map_err(anyhow::Error::from)
    })
    .await;
    matches!(answer, Ok(Ok(_)))
}

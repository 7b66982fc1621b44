//! W3C trace-context (`traceparent`, `tracestate`) propagation through tonic metadata, so
//! that one trace spans the gateway, the inference service and their internal stages.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Makes `span` a child of the remote span named in the request's `traceparent`, if any.
pub fn set_remote_parent(span: &tracing::Span, metadata: &MetadataMap) {
    // A span that already has a parent, or no OpenTelemetry layer installed, is fine as is.
    let _ = span.set_parent(remote_parent(metadata));
}

/// The context of the remote span named in the request's `traceparent` (empty without one).
fn remote_parent(metadata: &MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// The span of one call on a hot path, made with the OpenTelemetry API directly rather than
/// through `tracing`: a span of the server kind, child of the caller's span. Without an
/// exporter there is none, and nothing is spent on it.
///
/// A `tracing` span costs more per call: the registry, the formatting of its fields for the
/// log and the bridge to OpenTelemetry all run whether or not anything reads them. What a
/// `CallSpan` gives up is being the context of log lines written during the call.
pub struct CallSpan(Option<opentelemetry::Context>);

impl CallSpan {
    /// Starts span `name` with `attributes`, continuing the caller's `traceparent` in
    /// `incoming`, when spans are exported ([`crate::telemetry::exporting_tracer`]).
    pub fn start(
        name: &'static str,
        attributes: impl FnOnce() -> Vec<opentelemetry::KeyValue>,
        incoming: &MetadataMap,
    ) -> CallSpan {
        let Some(tracer) = crate::telemetry::exporting_tracer() else {
            return CallSpan(None);
        };
        let parent = remote_parent(incoming);
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes())
            .start_with_context(tracer, &parent);
        CallSpan(Some(parent.with_span(span)))
    }

    /// The trace-context headers of the call this one makes on the caller's behalf: this
    /// span's context, or, without a span, the caller's `traceparent` and `tracestate` as they
    /// came, so that the next service still continues the caller's trace.
    pub fn onward(&self, incoming: &MetadataMap) -> http::HeaderMap {
        let mut outgoing = MetadataMap::new();
        match &self.0 {
            Some(context) => TraceContextPropagator::new()
                .inject_context(context, &mut MetadataInjector(&mut outgoing)),
            None => {
                for key in ["traceparent", "tracestate"] {
                    if let Some(value) = incoming.get(key) {
                        outgoing.insert(key, value.clone());
                    }
                }
            }
        }
        outgoing.into_headers()
    }

    /// Ends the span with the `attributes` learnt during the call. A `failure` that is the
    /// server's ([`crate::error::is_server_failure`]) marks it failed, with the status message,
    /// as [`record_failure`] does for a `tracing` span.
    pub fn end(
        self,
        attributes: impl FnOnce() -> Vec<opentelemetry::KeyValue>,
        failure: Option<&tonic::Status>,
    ) {
        if let Some(context) = self.0 {
            let span = context.span();
            span.set_attributes(attributes());
            if let Some(status) = failure.filter(|s| crate::error::is_server_failure(s.code())) {
                span.set_status(opentelemetry::trace::Status::error(
                    status.message().to_owned(),
                ));
            }
            span.end();
        }
    }
}

/// Marks `span` failed, with the status message, when `status` is the server's failure
/// ([`crate::error::is_server_failure`]). The span declares the fields `otel.status_code` and
/// `otel.status_description`.
pub fn record_failure(span: &tracing::Span, status: &tonic::Status) {
    if crate::error::is_server_failure(status.code()) {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", status.message());
    }
}

/// Writes the context of `span` into outgoing request metadata as `traceparent`.
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut MetadataInjector(metadata));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_span_only_the_caller_s_trace_context_goes_on() {
        let mut incoming = MetadataMap::new();
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        incoming.insert("traceparent", traceparent.parse().unwrap());
        incoming.insert("tracestate", "shop=1".parse().unwrap());
        incoming.insert("authorization", "Bearer secret".parse().unwrap());
        incoming.insert("x-shopper-id", "42".parse().unwrap());
        let outgoing = CallSpan(None).onward(&incoming);
        assert_eq!(outgoing.len(), 2, "{outgoing:?}");
        assert_eq!(outgoing["traceparent"], traceparent);
        assert_eq!(outgoing["tracestate"], "shop=1");
        assert!(CallSpan(None).onward(&MetadataMap::new()).is_empty());
    }
}

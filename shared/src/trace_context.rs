//! W3C trace-context (`traceparent`, `tracestate`) propagation through tonic metadata, so
//! that one trace spans the gateway, the inference service and their internal stages.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
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
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    // A span that already has a parent, or no OpenTelemetry layer installed, is fine as is.
    let _ = span.set_parent(parent);
}

/// The trace-context headers of a call made on behalf of the caller whose request carried
/// `incoming`: the context of `span` (made a child of the caller's span), or, when `span` is
/// disabled (a hot path that keeps no span of its own), the caller's `traceparent` and
/// `tracestate` as they came, so the next service still continues the caller's trace.
pub fn onward(span: &tracing::Span, incoming: &MetadataMap) -> http::HeaderMap {
    let mut outgoing = MetadataMap::new();
    if span.is_disabled() {
        for key in ["traceparent", "tracestate"] {
            if let Some(value) = incoming.get(key) {
                outgoing.insert(key, value.clone());
            }
        }
    } else {
        set_remote_parent(span, incoming);
        inject(span, &mut outgoing);
    }
    outgoing.into_headers()
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
        let outgoing = onward(&tracing::Span::none(), &incoming);
        assert_eq!(outgoing.len(), 2, "{outgoing:?}");
        assert_eq!(outgoing["traceparent"], traceparent);
        assert_eq!(outgoing["tracestate"], "shop=1");
        assert!(onward(&tracing::Span::none(), &MetadataMap::new()).is_empty());
    }
}

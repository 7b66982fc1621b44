//! OpenTelemetry instruments of the gateway.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

/// The gateway's instruments.
pub struct Instruments {
    /// Finished calls by rpc, model, version, tenant and status.
    pub requests: Counter<u64>,
    /// Call duration in seconds by rpc, model and version.
    pub duration: Histogram<f64>,
    /// Embedding cache lookups by result (`hit`, `miss`).
    pub cache: Counter<u64>,
}

/// The instruments (created on first use, after telemetry set-up).
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("gateway");
        Instruments {
            requests: meter
                .u64_counter("gateway.requests")
                .with_description("Finished gateway calls")
                .build(),
            duration: meter
                .f64_histogram("gateway.request.duration")
                .with_unit("s")
                .with_description("Call duration from arrival to reply")
                .with_boundaries(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                ])
                .build(),
            cache: meter
                .u64_counter("gateway.cache.lookups")
                .with_description("Embedding cache lookups")
                .build(),
        }
    })
}

/// Records `hits` cache hits out of `lookups`.
pub fn cache_lookups(hits: usize, lookups: usize) {
    let cache = &instruments().cache;
    cache.add(hits as u64, &[KeyValue::new("result", "hit")]);
    cache.add(
        lookups.saturating_sub(hits) as u64,
        &[KeyValue::new("result", "miss")],
    );
}

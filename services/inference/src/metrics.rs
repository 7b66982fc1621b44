//! OpenTelemetry instruments of the inference service (exported over OTLP when configured).

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

/// The service's instruments, created once from the global meter provider.
pub struct Instruments {
    /// Finished requests, by model, version and status code.
    pub requests: Counter<u64>,
    /// End-to-end request duration in seconds, by model and version.
    pub duration: Histogram<f64>,
    /// Time in the queue, in seconds.
    pub queue_wait: Histogram<f64>,
    /// Rows per model execution.
    pub batch_size: Histogram<u64>,
    /// Requests waiting in a model version's queue.
    pub queue_depth: UpDownCounter<i64>,
    /// Model versions loaded, by execution provider (the CPU fallback shows here).
    pub loads: Counter<u64>,
}

/// The instruments (created on first use, after telemetry set-up).
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("inference");
        Instruments {
            requests: meter
                .u64_counter("inference.requests")
                .with_description("Finished inference requests")
                .build(),
            duration: meter
                .f64_histogram("inference.request.duration")
                .with_unit("s")
                .with_description("Request duration from arrival to reply")
                .with_boundaries(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                ])
                .build(),
            queue_wait: meter
                .f64_histogram("inference.queue.wait")
                .with_unit("s")
                .with_description("Time a request waited for its batch")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                ])
                .build(),
            batch_size: meter
                .u64_histogram("inference.batch.size")
                .with_description("Rows per model execution")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
                .build(),
            queue_depth: meter
                .i64_up_down_counter("inference.queue.depth")
                .with_description("Requests waiting in a model version's queue")
                .build(),
            loads: meter
                .u64_counter("inference.model.loads")
                .with_description("Model versions loaded, by execution provider")
                .build(),
        }
    })
}

/// Attributes naming a model version.
pub fn model_attributes(model: &str, version: i64) -> [KeyValue; 2] {
    [
        KeyValue::new("model", model.to_owned()),
        KeyValue::new("model_version", version.to_string()),
    ]
}

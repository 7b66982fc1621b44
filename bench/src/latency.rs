//! Latency recording with an HDR histogram: exact enough percentiles at any load, in constant
//! memory, and mergeable across the load generator's workers.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Longest latency recorded exactly, in microseconds (60 s); longer ones are clamped to it.
const MAX_MICROS: u64 = 60_000_000;

/// Latencies in microseconds, from 1 µs to 60 s, to three significant digits.
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> LatencyRecorder {
        LatencyRecorder {
            histogram: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("1 µs..60 s at 3 significant digits is a valid histogram"),
        }
    }
}

impl LatencyRecorder {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.histogram
            .saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        self.histogram
            .add(&other.histogram)
            .expect("recorders share the same bounds");
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Mean latency.
    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.histogram.mean() / 1e6)
    }

    /// Count, mean, p50, p90, p99 and max, in milliseconds, as a JSON object.
    pub fn summary(&self) -> serde_json::Value {
        let ms = |micros: u64| micros as f64 / 1000.0;
        json!({
            "count": self.count(),
            "mean_ms": self.histogram.mean() / 1000.0,
            "p50_ms": ms(self.histogram.value_at_quantile(0.50)),
            "p90_ms": ms(self.histogram.value_at_quantile(0.90)),
            "p99_ms": ms(self.histogram.value_at_quantile(0.99)),
            "max_ms": ms(self.histogram.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_merge_reflect_what_was_recorded() {
        let mut fast = LatencyRecorder::default();
        for _ in 0..99 {
            fast.record(Duration::from_millis(2));
        }
        let mut slow = LatencyRecorder::default();
        slow.record(Duration::from_millis(500));
        fast.merge(&slow);

        let summary = fast.summary();
        assert_eq!(summary["count"], 100);
        let p50 = summary["p50_ms"].as_f64().unwrap();
        let max = summary["max_ms"].as_f64().unwrap();
        assert!((p50 - 2.0).abs() < 0.01, "p50 {p50}");
        assert!((max - 500.0).abs() < 0.5, "max {max}");
        assert!(fast.mean() > Duration::from_millis(6));
    }
}

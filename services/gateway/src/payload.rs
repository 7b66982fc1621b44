//! Payload logging: sampled summaries of requests and responses, with personal data masked,
//! written to the log and to the call's span alike.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pii;

/// Texts quoted per summary, and characters per text.
const MAX_TEXTS: usize = 8;
const MAX_CHARS: usize = 120;

/// Decides which calls are logged and writes their summaries.
pub struct PayloadLogger {
    /// Calls logged out of every 2^32 (0: off).
    threshold: u64,
    counter: AtomicU64,
}

impl PayloadLogger {
    /// Logs a fraction `sample` (0 to 1) of calls.
    pub fn new(sample: f64) -> PayloadLogger {
        let threshold = (sample.clamp(0.0, 1.0) * (1_u64 << 32) as f64) as u64;
        PayloadLogger {
            threshold,
            counter: AtomicU64::new(0),
        }
    }

    /// Whether this call is sampled (spread evenly by a Weyl sequence, no lock, no RNG).
    pub fn sampled(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        (n.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF) < self.threshold
    }

    /// Masked summary of texts: at most 8, each cut to 120 characters.
    pub fn summarize<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
        let mut summary = Vec::new();
        let mut count: usize = 0;
        for text in texts {
            count += 1;
            if summary.len() < MAX_TEXTS {
                let masked = pii::mask(text);
                let cut: String = masked.chars().take(MAX_CHARS).collect();
                summary.push(cut);
            }
        }
        let more = count.saturating_sub(MAX_TEXTS);
        let mut joined = summary.join(" | ");
        if more > 0 {
            joined.push_str(&format!(" | … {more} more"));
        }
        joined
    }

    /// Writes a sampled call's summaries to the log and to `span`'s `payload.request` and
    /// `payload.response` fields.
    pub fn write(&self, span: &tracing::Span, request_id: &str, request: &str, response: &str) {
        span.record("payload.request", request);
        span.record("payload.response", response);
        tracing::info!(target: "payload", request_id, request, response, "payload");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_fraction() {
        let half = PayloadLogger::new(0.5);
        let logged = (0..10_000).filter(|_| half.sampled()).count();
        assert!((4_500..=5_500).contains(&logged), "{logged}");
        assert!(!(0..100).any(|_| PayloadLogger::new(0.0).sampled()));
        assert!((0..100).all(|_| PayloadLogger::new(1.0).sampled()));
    }

    #[test]
    fn summaries_are_masked_and_bounded() {
        let texts = ["mail me at jane@example.com", "x"];
        let summary = PayloadLogger::summarize(texts);
        assert!(!summary.contains("jane@example.com"), "{summary}");
        let many: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let summary = PayloadLogger::summarize(many.iter().map(String::as_str));
        assert!(summary.ends_with("… 12 more"), "{summary}");
    }
}

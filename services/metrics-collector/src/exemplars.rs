//! Exemplar traces: a bounded ring per service of recent slow and failed spans, so that incident
//! reports can name trace ids ("traces of model X, version Y, status error, last 5 min").

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

pub mod log;

/// A slow or failed span.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Trace id (16 bytes, never all zeroes), hex.
    pub trace_id: String,
    /// Span id (8 bytes, never all zeroes), hex.
    pub span_id: String,
    /// The sender's `service.name`.
    pub service: String,
    /// Span name.
    pub span_name: String,
    /// The span's `model` attribute, or empty.
    pub model: String,
    /// The span's `model_version` attribute, or 0.
    pub version: i64,
    /// Whether the span failed.
    pub error: bool,
    /// Status message of a failure.
    pub status_message: String,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// End time, Unix milliseconds.
    pub end_unix_ms: i64,
}

/// Which exemplars to find.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Service, or empty for all.
    pub service: String,
    /// Model, or empty for any.
    pub model: String,
    /// Version, or 0 for any.
    pub version: i64,
    /// `Some(true)`: failed only; `Some(false)`: slow (not failed) only; `None`: both.
    pub error: Option<bool>,
    /// Ended at or after this Unix millisecond.
    pub since_unix_ms: i64,
    /// At most this many.
    pub limit: usize,
}

/// The rings.
pub struct ExemplarRings {
    rings: Mutex<HashMap<String, VecDeque<Exemplar>>>,
    per_service: usize,
    max_services: usize,
    slow_ms: f64,
    /// Where every kept exemplar is logged, when the collector keeps its state on disk.
    wal: std::sync::OnceLock<std::sync::Arc<crate::durable::wal::Wal>>,
}

impl ExemplarRings {
    /// Rings of `per_service` exemplars for at most `max_services` services; spans of at least
    /// `slow_ms` are slow.
    pub fn new(per_service: usize, max_services: usize, slow_ms: f64) -> ExemplarRings {
        ExemplarRings {
            rings: Mutex::new(HashMap::new()),
            per_service: per_service.max(1),
            max_services,
            slow_ms,
            wal: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Exemplar>>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a span of this duration and status is kept.
    pub fn wanted(&self, duration_ms: f64, error: bool) -> bool {
        error || duration_ms >= self.slow_ms
    }

    /// Keeps `exemplar` (the oldest of its service goes when the ring is full). False when the
    /// service is new and the service limit is reached.
    pub fn offer(&self, exemplar: Exemplar) -> bool {
        let mut rings = self.lock();
        if !rings.contains_key(&exemplar.service) && rings.len() >= self.max_services {
            return false;
        }
        self.log(&exemplar);
        Self::push(&mut rings, exemplar, self.per_service);
        true
    }

    /// Keeps a restored exemplar, within the limits, without logging it.
    fn keep(&self, exemplar: Exemplar) {
        let mut rings = self.lock();
        if rings.contains_key(&exemplar.service) || rings.len() < self.max_services {
            Self::push(&mut rings, exemplar, self.per_service);
        }
    }

    fn push(
        rings: &mut HashMap<String, VecDeque<Exemplar>>,
        exemplar: Exemplar,
        per_service: usize,
    ) {
        let ring = rings.entry(exemplar.service.clone()).or_default();
        while ring.len() >= per_service {
            ring.pop_front();
        }
        ring.push_back(exemplar);
    }

    /// Exemplars matching `filter`, newest first.
    pub fn find(&self, filter: &Filter) -> Vec<Exemplar> {
        let rings = self.lock();
        let mut found: Vec<Exemplar> = rings
            .iter()
            .filter(|(service, _)| filter.service.is_empty() || **service == filter.service)
            .flat_map(|(_, ring)| ring.iter())
            .filter(|e| {
                (filter.model.is_empty() || e.model == filter.model)
                    && (filter.version == 0 || e.version == filter.version)
                    && filter.error.is_none_or(|err| e.error == err)
                    && e.end_unix_ms >= filter.since_unix_ms
            })
            .cloned()
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse(e.end_unix_ms));
        found.truncate(filter.limit);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exemplar(service: &str, version: i64, error: bool, end: i64) -> Exemplar {
        Exemplar {
            trace_id: format!("{end:032x}"),
            span_id: "00".repeat(8),
            service: service.to_owned(),
            span_name: "s".to_owned(),
            model: "m".to_owned(),
            version,
            error,
            status_message: String::new(),
            duration_ms: 1.0,
            end_unix_ms: end,
        }
    }

    #[test]
    fn rings_are_bounded_and_filtered_newest_first() {
        let rings = ExemplarRings::new(3, 1, 100.0);
        for end in 0..5 {
            assert!(rings.offer(exemplar("gw", 1 + end % 2, end % 2 == 0, end)));
        }
        assert!(!rings.offer(exemplar("other", 1, true, 9)));
        let all = rings.find(&Filter {
            limit: 10,
            ..Filter::default()
        });
        let ends: Vec<i64> = all.iter().map(|e| e.end_unix_ms).collect();
        assert_eq!(ends, [4, 3, 2]);
        let errors = rings.find(&Filter {
            version: 1,
            error: Some(true),
            since_unix_ms: 3,
            limit: 10,
            ..Filter::default()
        });
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].end_unix_ms, 4);
        assert!(
            rings.wanted(100.0, false) && rings.wanted(1.0, true) && !rings.wanted(99.0, false)
        );
    }
}

//! Prometheus text exposition of the store, with names and labels converted by the
//! OpenTelemetry-to-Prometheus compatibility rules: invalid characters become `_`, the unit
//! becomes a suffix (`s` → `_seconds`), monotonic sums get `_total`, histograms become
//! `_bucket{le=…}`, `_sum` and `_count`, and the sender's `service.name` is the `job` label.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::sanitize::{MAX_LABEL_VALUE_BYTES, cut};
use crate::store::{FamilyValues, Kind, Labels, Value};

/// A metric or label name with every character outside `[a-zA-Z0-9_:]` replaced by `_`
/// (and a leading digit prefixed by `_`).
pub fn sanitize(name: &str, allow_colon: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// Whether `key` is a Prometheus label name as it is: only `[a-zA-Z0-9_]`, no leading digit, and
/// not the reserved `__` prefix.
fn is_label_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && !key.starts_with("__")
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The Prometheus label name of an attribute key: [`sanitize`]d, with a leading `__` (reserved
/// for Prometheus's own labels, such as `__name__`) cut to one `_`, as the Prometheus Java
/// client does (OpenTelemetry's compatibility rules say nothing of reserved names).
pub fn label_name(key: &str) -> String {
    let name = sanitize(key, false);
    if name.starts_with("__") {
        format!("_{}", name.trim_start_matches('_'))
    } else {
        name
    }
}

/// `labels` (sorted by key, one per key) with distinct Prometheus label names, sorted by key.
///
/// Keys that become the same label name (`a.b` and `a_b` are both `a_b`) would repeat a label
/// name in one exposition line, and Prometheus refuses the whole scrape for it. As
/// OpenTelemetry's Prometheus compatibility rules say, such labels become one, named by the
/// label name, whose value is theirs joined with `;` in the order of their keys (cut to
/// [`MAX_LABEL_VALUE_BYTES`]). A key that must be renamed (a reserved name) takes its label
/// name; every other label is kept as it is, so that queries still find it by its key.
pub fn distinct_label_names(labels: Labels) -> Labels {
    if labels.iter().all(|(key, _)| is_label_name(key)) {
        return labels;
    }
    let mut groups: BTreeMap<String, Labels> = BTreeMap::new();
    for (key, value) in labels {
        groups
            .entry(label_name(&key))
            .or_default()
            .push((key, value));
    }
    let mut out: Labels = groups
        .into_iter()
        .map(|(name, mut group)| {
            if group.len() == 1 && sanitize(&group[0].0, false) == name {
                return group.swap_remove(0);
            }
            group.sort_by(|a, b| a.0.cmp(&b.0));
            let values: Vec<String> = group.into_iter().map(|(_, value)| value).collect();
            (name, cut(values.join(";"), MAX_LABEL_VALUE_BYTES))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The unit suffix of a UCUM unit, if it has a Prometheus spelling.
fn unit_suffix(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "1" => "ratio",
        _ => return None,
    })
}

/// The Prometheus name of an OpenTelemetry metric.
pub fn metric_name(name: &str, kind: Kind, unit: &str) -> String {
    let mut out = sanitize(name, true);
    if let Some(suffix) = unit_suffix(unit)
        && !out.ends_with(suffix)
    {
        out.push('_');
        out.push_str(suffix);
    }
    if kind == Kind::Counter && !out.ends_with("_total") {
        out.push_str("_total");
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_set(labels: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", sanitize(k, false), escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        }
    } else {
        format!("{v}")
    }
}

/// Renders every family, plus the collector's own counter of refused points and, when it keeps
/// its state on disk, the bytes that takes.
pub fn render<'a>(
    families: impl IntoIterator<Item = (&'a String, &'a FamilyValues)>,
    refused: u64,
    disk_bytes: Option<u64>,
) -> String {
    let mut out = String::new();
    for (name, family) in families {
        let prom = metric_name(name, family.kind, &family.unit);
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        // Text format 0.0.4: HELP and TYPE carry the exposed name (with `_total`); every family
        // has a HELP line (`promtool check metrics` insists), the OpenTelemetry name when the
        // sender gave no description.
        let help = if family.description.is_empty() {
            name.as_str()
        } else {
            family.description.as_str()
        };
        let _ = writeln!(
            out,
            "# HELP {prom} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(out, "# TYPE {prom} {kind}");
        for (labels, value) in &family.series {
            match value {
                Value::Scalar(v) => {
                    let _ = writeln!(out, "{prom}{} {}", label_set(labels, None), number(*v));
                }
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                } => {
                    // Saturating: the store keeps bucket counts adding up to the count, but a
                    // state written by an older collector may not.
                    let mut cumulative = 0_u64;
                    for (i, c) in counts.iter().enumerate() {
                        cumulative = cumulative.saturating_add(*c);
                        let le = bounds
                            .get(i)
                            .map_or_else(|| "+Inf".to_owned(), |b| number(*b));
                        let _ = writeln!(
                            out,
                            "{prom}_bucket{} {cumulative}",
                            label_set(labels, Some(("le", &le)))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{prom}_sum{} {}",
                        label_set(labels, None),
                        number(*sum)
                    );
                    let _ = writeln!(out, "{prom}_count{} {count}", label_set(labels, None));
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP collector_refused_points_total Data points refused (cardinality limit, kind change, malformed)."
    );
    let _ = writeln!(out, "# TYPE collector_refused_points_total counter");
    let _ = writeln!(out, "collector_refused_points_total {refused}");
    if let Some(bytes) = disk_bytes {
        let _ = writeln!(
            out,
            "# HELP collector_disk_bytes Bytes of the collector's state on disk (snapshot and write-ahead log)."
        );
        let _ = writeln!(out, "# TYPE collector_disk_bytes gauge");
        let _ = writeln!(out, "collector_disk_bytes {bytes}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::limits;
    use crate::store::{MetricStore, Point};

    #[test]
    fn a_histogram_whose_count_nears_the_limit_renders_without_overflow() {
        let store = MetricStore::new(limits(10));
        let most = u64::MAX - 1;
        let point = Point {
            labels: vec![],
            start_time_ns: 0,
            delta: true,
            value: Value::Histogram {
                bounds: vec![1.0],
                counts: vec![most, 0],
                sum: 1.0,
                count: most,
            },
        };
        store
            .record(1, "h", Kind::Histogram, "", "", vec![point])
            .unwrap();
        let text = render(&store.snapshot(i64::MIN), 0, None);
        assert!(
            text.contains(&format!("h_bucket{{le=\"+Inf\"}} {most}")),
            "{text}"
        );
        assert!(text.contains(&format!("h_count {most}")), "{text}");
    }

    #[test]
    fn names_labels_and_histograms_follow_the_compatibility_rules() {
        let store = MetricStore::new(limits(10));
        let labels = vec![
            ("job".to_owned(), "inference".to_owned()),
            ("model.name".to_owned(), "mini\"lm".to_owned()),
        ];
        store
            .record(
                0,
                "inference.requests",
                Kind::Counter,
                "Finished requests",
                "",
                vec![Point {
                    labels: labels.clone(),
                    start_time_ns: 1,
                    delta: false,
                    value: Value::Scalar(3.0),
                }],
            )
            .unwrap();
        store
            .record(
                0,
                "inference.request.duration",
                Kind::Histogram,
                "Duration",
                "s",
                vec![Point {
                    labels,
                    start_time_ns: 1,
                    delta: false,
                    value: Value::Histogram {
                        bounds: vec![0.1, 1.0],
                        counts: vec![2, 1, 1],
                        sum: 2.5,
                        count: 4,
                    },
                }],
            )
            .unwrap();
        let text = render(&store.snapshot(i64::MIN), 7, None);
        assert!(
            text.contains("# TYPE inference_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP inference_requests_total Finished requests"),
            "{text}"
        );
        assert!(
            text.contains(
                "inference_requests_total{job=\"inference\",model_name=\"mini\\\"lm\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE inference_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("inference_request_duration_seconds_bucket{job=\"inference\",model_name=\"mini\\\"lm\",le=\"0.1\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 4"), "{text}");
        assert!(text.contains("inference_request_duration_seconds_count{job=\"inference\",model_name=\"mini\\\"lm\"} 4"), "{text}");
        assert!(text.contains("collector_refused_points_total 7"), "{text}");
    }

    #[test]
    fn invalid_characters_are_replaced() {
        assert_eq!(
            sanitize("gateway.cache-lookups", true),
            "gateway_cache_lookups"
        );
        assert_eq!(sanitize("9lives", false), "_9lives");
        assert_eq!(sanitize("a:b", false), "a_b");
    }
}

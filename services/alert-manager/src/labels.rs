//! Label sets and the two things done with them everywhere: matching them against matchers
//! (silences, inhibitions, routes, rules) and filling them into templates (annotations,
//! actions). A leaf: it imports no other module of the crate.

use std::collections::BTreeMap;

/// Labels of an alert or a group, sorted.
pub type LabelSet = BTreeMap<String, String>;

/// Whether `labels` satisfy every matcher (`value`, `!=value`, `=~regex`, `!~regex`; a missing
/// label reads as ""). A matcher with a bad regex never matches (files are checked on load).
pub fn matches(matchers: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|(name, spec)| {
        let value = labels.get(name).map_or("", String::as_str);
        let full =
            |re: &str| regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(value));
        if let Some(v) = spec.strip_prefix("!=") {
            value != v
        } else if let Some(re) = spec.strip_prefix("=~") {
            full(re)
        } else if let Some(re) = spec.strip_prefix("!~") {
            !full(re)
        } else {
            value == spec
        }
    })
}

/// Fills `{{ $labels.name }}` and `{{ $value }}` in `template`.
pub fn render(template: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = rest[open + 2..open + close].trim();
        if inner == "$value" {
            out.push_str(&format_value(value));
        } else if let Some(name) = inner.strip_prefix("$labels.") {
            out.push_str(labels.get(name.trim()).map_or("", String::as_str));
        } else {
            out.push_str(&rest[open..open + close + 2]);
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_labels_and_the_value() {
        let labels = BTreeMap::from([("model".to_owned(), "minilm".to_owned())]);
        assert_eq!(
            render(
                "{{ $labels.model }} at {{ $value }} ({{ $labels.none }}) {{ other }}",
                &labels,
                0.12345
            ),
            "minilm at 0.1235 () {{ other }}"
        );
        assert_eq!(render("{{ $value }} {{", &labels, 3.0), "3 {{");
    }
}

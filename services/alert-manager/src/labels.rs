//! Label sets and the two things done with them everywhere: matching them against matchers
//! (silences, inhibitions, routes, rules) and filling them into templates (annotations,
//! actions). A leaf: it imports no other module of the crate.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

/// Labels of an alert or a group, sorted.
pub type LabelSet = BTreeMap<String, String>;

/// Whether `labels` satisfy every matcher (`value`, `!=value`, `=~regex`, `!~regex`; a missing
/// label reads as ""). A regular expression must match the whole value: it is used as
/// `^(?:regex)$` (see [`whole_value_regex`]). A matcher whose regular expression does not
/// compile in that form matches nothing, whichever its polarity, so that a broken `!~` never
/// holds for every alert (a silence is checked in this form when it is created; this is the
/// last line for any matcher that was not).
pub fn matches(matchers: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|(name, spec)| {
        let value = labels.get(name).map_or("", String::as_str);
        if let Some(v) = spec.strip_prefix("!=") {
            value != v
        } else if let Some(re) = spec.strip_prefix("=~") {
            compiled(re).is_some_and(|r| r.is_match(value))
        } else if let Some(re) = spec.strip_prefix("!~") {
            compiled(re).is_some_and(|r| !r.is_match(value))
        } else {
            value == spec
        }
    })
}

/// `pattern` compiled as matchers use it, anchored to the whole value: `^(?:pattern)$`. Check
/// a matcher with this, not with `pattern` alone: some patterns compile alone but not wrapped
/// (in `(?x)a#` the comment swallows the closing parenthesis).
pub fn whole_value_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// Most patterns kept compiled; past it the memo starts again empty.
const MAX_COMPILED: usize = 1024;

/// [`whole_value_regex`] of `pattern`, compiled once: matchers are checked for every alert
/// against every silence and inhibition at each evaluation, and compiling costs far more than
/// matching (the memo hands out one shared copy: a clone of a `Regex` would start its match
/// caches afresh). `None` when it does not compile.
fn compiled(pattern: &str) -> Option<Arc<regex::Regex>> {
    static MEMO: LazyLock<Mutex<HashMap<String, Option<Arc<regex::Regex>>>>> =
        LazyLock::new(Default::default);
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = memo.get(pattern) {
        return found.clone();
    }
    if memo.len() >= MAX_COMPILED {
        memo.clear();
    }
    let made = whole_value_regex(pattern).ok().map(Arc::new);
    memo.insert(pattern.to_owned(), made.clone());
    made
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

    #[test]
    fn a_matcher_whose_regex_does_not_compile_matches_nothing() {
        // `(?x)a#` compiles alone but not wrapped as `^(?:(?x)a#)$`: the comment swallows
        // the closing parenthesis. Neither polarity may then match, or a negative matcher
        // would hold for every value (a silence of everything).
        for spec in ["!~(?x)a#", "=~(?x)a#"] {
            let matchers = BTreeMap::from([("model".to_owned(), spec.to_owned())]);
            for value in ["a", "minilm", ""] {
                let labels = BTreeMap::from([("model".to_owned(), value.to_owned())]);
                assert!(!matches(&matchers, &labels), "{spec} matched {value:?}");
            }
        }
    }
}

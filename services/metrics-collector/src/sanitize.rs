//! What a sender may put in a metric's name, labels, description and unit: the checks the OTLP
//! receiver applies before anything reaches the store.
//!
//! Protobuf already refuses strings that are not valid UTF-8 (the whole export is answered
//! `INTERNAL`, "failed to decode"). What is left to check is text that decodes but cannot be
//! stored or shown: control characters (a NUL byte is refused by PostgreSQL when an alert's
//! labels are written into an incident; a newline breaks the Prometheus exposition), and sizes
//! (a label is not a payload). As Prometheus does for label values, a point with such a label is
//! refused and the reason names the label and the character; long values and names are cut.

/// Longest label value kept; longer ones are cut at a character boundary.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Longest label name accepted.
pub const MAX_LABEL_NAME_BYTES: usize = 128;

/// Longest metric name kept; longer ones are cut at a character boundary.
pub const MAX_METRIC_NAME_BYTES: usize = 256;

/// Longest description kept.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

/// Longest unit kept.
pub const MAX_UNIT_BYTES: usize = 64;

/// `text` cut to at most `max` bytes at a character boundary.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The first control character of `text` and its byte offset, if any.
pub fn control_character(text: &str) -> Option<(usize, char)> {
    text.char_indices().find(|(_, c)| c.is_control())
}

/// Why `text`, the `what` of metric `metric`, cannot be stored; `None` when it can.
pub fn refusal(metric: &str, what: &str, text: &str) -> Option<String> {
    let (at, c) = control_character(text)?;
    Some(format!(
        "metric '{}': {what} holds the control character U+{:04X} at byte {at}; \
         label names and values may not contain control characters",
        printable(metric),
        c as u32
    ))
}

/// `text` with control characters escaped, for messages and logs.
pub fn printable(text: &str) -> String {
    let cut_at = text.len().min(MAX_LABEL_VALUE_BYTES);
    let mut end = cut_at;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].escape_debug().to_string()
}

/// Checks a label name: 1 to [`MAX_LABEL_NAME_BYTES`] bytes, no control character.
pub fn label_name(metric: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LABEL_NAME_BYTES {
        return Err(format!(
            "metric '{}': a label name must be 1 to {MAX_LABEL_NAME_BYTES} bytes, got {}",
            printable(metric),
            name.len()
        ));
    }
    match refusal(metric, &format!("label name '{}'", printable(name)), name) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Checks a label value (already cut): no control character.
pub fn label_value(metric: &str, name: &str, value: &str) -> Result<(), String> {
    match refusal(
        metric,
        &format!("the value of label '{}'", printable(name)),
        value,
    ) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// A metric name as kept: cut to [`MAX_METRIC_NAME_BYTES`]; refused when empty or when it holds
/// a control character.
pub fn metric_name(name: String) -> Result<String, String> {
    if name.is_empty() {
        return Err("a metric has no name".to_owned());
    }
    let name = cut(name, MAX_METRIC_NAME_BYTES);
    if let Some((at, c)) = control_character(&name) {
        return Err(format!(
            "metric name '{}' holds the control character U+{:04X} at byte {at}",
            printable(&name),
            c as u32
        ));
    }
    Ok(name)
}

/// A description or unit as kept: cut, with control characters replaced by spaces (they are
/// shown, never matched).
pub fn free_text(text: String, max: usize) -> String {
    let text = cut(text, max);
    if control_character(&text).is_none() {
        return text;
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_in_a_label_value_is_named_with_its_position() {
        let err = label_value("shop.errors", "page", "a\0b").unwrap_err();
        assert!(err.contains("U+0000") && err.contains("byte 1"), "{err}");
        assert!(
            err.contains("'page'") && err.contains("shop.errors"),
            "{err}"
        );
        assert!(label_value("shop.errors", "page", "ünïcödé ok").is_ok());
    }

    #[test]
    fn label_names_are_bounded_and_clean() {
        assert!(label_name("m", "").is_err());
        assert!(label_name("m", &"n".repeat(129)).is_err());
        let err = label_name("m", "bad\nname").unwrap_err();
        assert!(
            err.contains("U+000A") && err.contains("bad\\nname"),
            "{err}"
        );
        assert!(label_name("m", "http.method").is_ok());
    }

    #[test]
    fn metric_names_are_cut_at_a_character_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let kept = metric_name(long).unwrap();
        assert!(kept.len() <= MAX_METRIC_NAME_BYTES && kept.chars().all(|c| c == 'é'));
        assert!(metric_name(String::new()).is_err());
        assert!(
            metric_name("a\u{7f}b".into())
                .unwrap_err()
                .contains("U+007F")
        );
    }

    #[test]
    fn free_text_loses_its_control_characters() {
        assert_eq!(free_text("a\tb\0c".into(), 64), "a b c");
        assert_eq!(free_text("x".repeat(100), 10).len(), 10);
    }
}

//! Labelled examples: JSON lines of `{"text": "...", "label": 0 or 1}`, checked line by line.

use std::path::Path;

/// One labelled text.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// The text.
    pub text: String,
    /// 1: purchase intent; 0: none.
    pub label: u32,
}

/// Why a data set cannot be trained on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        reason: String,
    },
    /// Lines that are not examples (at most the first 10 are listed).
    #[error("{path}: {count} malformed line(s):\n{lines}")]
    Malformed {
        /// The file.
        path: String,
        /// How many lines were malformed.
        count: usize,
        /// `line N: why`, one per line.
        lines: String,
    },
    /// No example at all.
    #[error("{0}: no examples (the file is empty or has only blank lines)")]
    Empty(String),
    /// Every example has the same label.
    #[error("{path}: all {count} examples have label {label}: training needs both classes")]
    OneClass {
        /// The file.
        path: String,
        /// How many examples.
        count: usize,
        /// Their label.
        label: u32,
    },
}

/// Parses one line; `Err` says what is wrong with it.
fn parse_line(line: &str) -> Result<Labelled, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let text = value
        .get("text")
        .and_then(|t| t.as_str())
        .ok_or("no string field \"text\"")?;
    if text.trim().is_empty() {
        return Err("\"text\" is empty".into());
    }
    let label = match value.get("label") {
        Some(l) if l.as_u64() == Some(0) || l.as_u64() == Some(1) => l.as_u64().unwrap_or(0) as u32,
        Some(l) => return Err(format!("\"label\" is {l}; expected 0 or 1")),
        None => return Err("no field \"label\"".into()),
    };
    Ok(Labelled {
        text: text.to_owned(),
        label,
    })
}

/// Parses JSON lines (blank lines are skipped); every malformed line is reported with its
/// number, and a set that is empty or of one class is refused.
pub fn parse(name: &str, content: &str) -> Result<Vec<Labelled>, DataError> {
    let mut examples = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(example) => examples.push(example),
            Err(why) => bad.push(format!("  line {}: {why}", i + 1)),
        }
    }
    if !bad.is_empty() {
        let count = bad.len();
        bad.truncate(10);
        if count > 10 {
            bad.push(format!("  … and {} more", count - 10));
        }
        return Err(DataError::Malformed {
            path: name.to_owned(),
            count,
            lines: bad.join("\n"),
        });
    }
    check(name, &examples)?;
    Ok(examples)
}

/// Refuses a set that is empty or of one class.
pub fn check(name: &str, examples: &[Labelled]) -> Result<(), DataError> {
    let Some(first) = examples.first() else {
        return Err(DataError::Empty(name.to_owned()));
    };
    if examples.iter().all(|e| e.label == first.label) {
        return Err(DataError::OneClass {
            path: name.to_owned(),
            count: examples.len(),
            label: first.label,
        });
    }
    Ok(())
}

/// Reads and parses a JSON-lines file.
pub fn read(path: &Path) -> Result<Vec<Labelled>, DataError> {
    let name = path.display().to_string();
    let content = std::fs::read_to_string(path).map_err(|e| DataError::Read {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    parse(&name, &content)
}

/// `n` demonstration examples labelled by the traffic generator's hidden purchase rule.
pub fn demonstration(n: usize, seed: u64) -> Vec<Labelled> {
    let mut rng = traffic::catalog::Rng::new(seed);
    (0..n)
        .map(|_| {
            let (text, label) = traffic::catalog::message(&mut rng);
            Labelled { text, label }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_are_reported_with_their_numbers() {
        let content = "{\"text\": \"buy shoes\", \"label\": 1}\n\nnot json\n{\"text\": \"hi\", \"label\": 2}\n{\"label\": 0}\n";
        let err = parse("d.jsonl", content).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("3 malformed line(s)"), "{text}");
        assert!(text.contains("line 3: not JSON"), "{text}");
        assert!(text.contains("line 4: \"label\" is 2"), "{text}");
        assert!(text.contains("line 5: no string field \"text\""), "{text}");
    }

    #[test]
    fn empty_and_one_class_sets_are_refused() {
        assert_eq!(parse("d", "\n  \n"), Err(DataError::Empty("d".into())));
        let one = "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 1}\n";
        assert!(matches!(
            parse("d", one),
            Err(DataError::OneClass {
                count: 2,
                label: 1,
                ..
            })
        ));
    }

    #[test]
    fn demonstration_data_has_both_classes() {
        let data = demonstration(200, 3);
        assert!(check("demo", &data).is_ok());
        assert_eq!(data, demonstration(200, 3));
    }
}

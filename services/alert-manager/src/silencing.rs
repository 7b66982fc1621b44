//! Creating a silence: what a new one must satisfy (1 to 32 matchers, names and values of at
//! most 256 bytes, regular expressions that compile as they are matched, anchored to the whole
//! value, a comment of at most 4,096 bytes, no control characters but line breaks and tabs
//! (and none at all in names and plain values), an end in the future) and how it takes effect
//! (stored, then the evaluation's copy refreshed).

use std::collections::BTreeMap;

use crate::alert::Silence;
use crate::api_error::{ApiError, printable};
use crate::engine::Engine;
use crate::labels::whole_value_regex;

/// Most matchers in a silence.
pub const MAX_MATCHERS: usize = 32;

/// Longest comment kept.
pub const MAX_COMMENT_BYTES: usize = 4096;

/// Longest matcher name, and longest value a matcher compares with (after its `!=`, `=~` or
/// `!~`): the metrics collector's limit on a label value, so no longer one can ever match.
pub const MAX_MATCHER_BYTES: usize = 256;

/// A silence as an operator asks for it.
pub struct SilenceRequest {
    /// Label matchers (`value`, `!=value`, `=~regex`, `!~regex`).
    pub matchers: BTreeMap<String, String>,
    /// Start, Unix ms; 0 for now.
    pub starts_at_ms: i64,
    /// End, Unix ms; 0 to count `duration_seconds` from the start.
    pub ends_at_ms: i64,
    /// Length, when no end is given.
    pub duration_seconds: u32,
    /// Who asks (the admin key's tenant).
    pub author: String,
    /// Why.
    pub comment: String,
}

impl Engine {
    /// Checks `request`, stores the silence and applies it from the next evaluation on.
    pub async fn create_silence(
        &self,
        request: SilenceRequest,
        now_ms: i64,
    ) -> Result<Silence, ApiError> {
        if request.matchers.is_empty() || request.matchers.len() > MAX_MATCHERS {
            return Err(ApiError::Invalid(format!(
                "give 1 to {MAX_MATCHERS} matchers (a silence of everything is not allowed)"
            )));
        }
        for (name, value) in &request.matchers {
            if name.len() > MAX_MATCHER_BYTES {
                return Err(ApiError::Invalid(format!(
                    "a matcher name is {} bytes; at most {MAX_MATCHER_BYTES}",
                    name.len()
                )));
            }
            printable("a matcher name", name, false)?;
            let operand = ["!=", "=~", "!~"]
                .iter()
                .find_map(|op| value.strip_prefix(op))
                .unwrap_or(value);
            if operand.len() > MAX_MATCHER_BYTES {
                return Err(ApiError::Invalid(format!(
                    "matcher '{name}': the value is {} bytes; at most {MAX_MATCHER_BYTES} \
                     (after !=, =~ or !~)",
                    operand.len()
                )));
            }
            // A regular expression may be laid out over lines (`(?x)`); a value may not.
            let regex = value.starts_with("=~") || value.starts_with("!~");
            printable(&format!("matcher '{name}': the value"), operand, regex)?;
            if let Some(re) = value
                .strip_prefix("=~")
                .or_else(|| value.strip_prefix("!~"))
            {
                // Checked in the form it is matched in: some patterns compile alone but not
                // anchored, and a `!~` that never compiles would otherwise mute everything.
                whole_value_regex(re).map_err(|e| {
                    ApiError::Invalid(format!(
                        "matcher '{name}': bad regular expression (it is matched against the \
                         whole value, as ^(?:{re})$): {e}"
                    ))
                })?;
            }
        }
        if request.comment.trim().is_empty() {
            return Err(ApiError::Invalid(
                "comment is empty: say why alerts are silenced".to_owned(),
            ));
        }
        if request.comment.len() > MAX_COMMENT_BYTES {
            return Err(ApiError::Invalid(format!(
                "comment is {} bytes; at most {MAX_COMMENT_BYTES}",
                request.comment.len()
            )));
        }
        printable("comment", &request.comment, true)?;
        let starts = if request.starts_at_ms > 0 {
            request.starts_at_ms
        } else {
            now_ms
        };
        let ends = if request.ends_at_ms > 0 {
            request.ends_at_ms
        } else {
            starts + i64::from(request.duration_seconds) * 1000
        };
        if ends <= starts || ends <= now_ms {
            return Err(ApiError::Invalid(
                "the silence ends before it starts or in the past: give ends_at_unix_ms or duration_seconds".to_owned(),
            ));
        }
        let mut created = Silence {
            id: 0,
            matchers: request.matchers,
            starts_at_ms: starts,
            ends_at_ms: ends,
            author: request.author,
            comment: request.comment,
        };
        created.id = self.incidents().create_silence(&created, now_ms).await?;
        self.refresh_silences().await;
        Ok(created)
    }
}

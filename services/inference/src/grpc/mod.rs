//! Protocol layer: gRPC handlers that convert wire types and call the [`crate::core`].
//! They hold no inference logic of their own.

pub mod oip;
pub mod tasks;

use shared::ServiceError;

use crate::error::InferError;

pub use shared::grpc::deadline;

/// Parses a protocol version string ([`shared::grpc::parse_version`]): empty means "newest".
pub fn parse_version(model: &str, version: &str) -> Result<Option<i64>, InferError> {
    shared::grpc::parse_version(model, version).map_err(InferError::Invalid)
}

/// Records how a call ended on its `span`, which declares the fields `model_version`,
/// `otel.status_code` and `otel.status_description`: the version that answered, else the one that
/// failed or was `requested`; a failure of the server marks the span failed, so that the
/// collector keeps it as an exemplar of that version.
pub(crate) fn record_outcome(
    span: &tracing::Span,
    outcome: Result<i64, &InferError>,
    requested: Option<i64>,
) {
    let version = match outcome {
        Ok(version) => Some(version),
        Err(InferError::Runtime { version, .. }) => Some(*version),
        Err(_) => requested,
    };
    if let Some(version) = version.filter(|v| *v > 0) {
        span.record("model_version", version);
    }
    if let Err(err) = outcome {
        shared::trace_context::record_failure(span, &err.to_status());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_must_be_positive_integers() {
        assert_eq!(parse_version("m", "").unwrap(), None);
        assert_eq!(parse_version("m", "3").unwrap(), Some(3));
        assert!(parse_version("m", "0").is_err());
        assert!(
            parse_version("m", "latest")
                .unwrap_err()
                .to_string()
                .contains("'latest'")
        );
    }
}

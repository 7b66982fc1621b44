//! Protocol layer: gRPC handlers that convert wire types and call the [`crate::core`].
//! They hold no inference logic of their own.

pub mod oip;
pub mod tasks;

use crate::error::InferError;

pub use shared::grpc::deadline;

/// Parses a protocol version string: empty means "newest".
pub fn parse_version(model: &str, version: &str) -> Result<Option<i64>, InferError> {
    if version.is_empty() {
        return Ok(None);
    }
    match version.parse::<i64>() {
        Ok(v) if v > 0 => Ok(Some(v)),
        _ => Err(InferError::Invalid(format!(
            "model '{model}': version '{version}' is not a positive integer"
        ))),
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

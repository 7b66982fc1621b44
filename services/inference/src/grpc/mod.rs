//! Protocol layer: gRPC handlers that convert wire types and call the [`crate::core`].
//! They hold no inference logic of their own.

pub mod oip;
pub mod tasks;

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use crate::error::InferError;

/// The caller's deadline, from the `grpc-timeout` header, as an instant.
pub fn deadline(metadata: &MetadataMap, arrived: Instant) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    arrived.checked_add(timeout)
}

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
    fn grpc_timeout_units_are_understood() {
        let now = Instant::now();
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(deadline(&md, now), Some(now + Duration::from_millis(250)));
        md.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(deadline(&md, now), Some(now + Duration::from_secs(3)));
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline(&md, now), None);
    }

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

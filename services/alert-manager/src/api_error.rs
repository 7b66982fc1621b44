//! Why the alert manager's API refuses or fails a call. Each reason knows its gRPC code
//! through [`ServiceError`]; the handlers return these, and `shared::error` alone turns them
//! into a status.

use std::sync::Arc;

use shared::error::{ErrorKind, ServiceError};

use crate::incidents::IncidentError;

/// A call the API refuses or cannot complete; its `Display` text is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A write without a valid key.
    #[error("{0}: writes need an admin API key (authorization: Bearer …)")]
    NoKey(&'static str),
    /// A write with a valid key that is not an admin's.
    #[error("key {key_id} of tenant {tenant} is not an admin key")]
    NotAdmin {
        /// The key's short id (safe to show).
        key_id: Arc<str>,
        /// The key's tenant.
        tenant: Arc<str>,
    },
    /// The request is malformed: the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// No silence has this id.
    #[error("no silence {0}")]
    NoSilence(i64),
    /// A follower could not read the leader's saved alerts.
    #[error("the leader's saved alerts: {0}")]
    LeaderState(IncidentError),
    /// New rules were refused; the previous ones stay in force.
    #[error("rules refused, the previous rules stay in force: {0}")]
    RulesRefused(String),
    /// The incident database could not be reached or failed the call.
    #[error("the incident database is unavailable: {0}")]
    DatabaseDown(sqlx::Error),
    /// The incident database refused what the request would store (a NUL byte in a text, a
    /// value too large, a broken constraint): sent again as it is, it fails again.
    #[error("the incident database refused what the request would store: {0}")]
    Refused(sqlx::Error),
    /// Any other failure of the incident store.
    #[error(transparent)]
    Incident(IncidentError),
}

impl From<IncidentError> for ApiError {
    fn from(err: IncidentError) -> ApiError {
        let refusal = err.is_refusal();
        match err {
            // The request's content, not the database's health: the client must change it.
            IncidentError::Database(e @ (sqlx::Error::Database(_) | sqlx::Error::Encode(_)))
                if refusal =>
            {
                ApiError::Refused(e)
            }
            IncidentError::Database(e) => ApiError::DatabaseDown(e),
            other => ApiError::Incident(other),
        }
    }
}

/// Refuses `text`, the `what` of a request (named so in the message), when it holds a control
/// character; with `line_breaks`, line feeds, carriage returns and tabs are allowed. PostgreSQL
/// cannot store a NUL byte at all, the others garble timelines and notifications, and no label
/// holds one (the collector refuses them), so a matcher with one could never match.
pub fn printable(what: &str, text: &str, line_breaks: bool) -> Result<(), ApiError> {
    let layout = |c: char| line_breaks && matches!(c, '\n' | '\r' | '\t');
    match text
        .char_indices()
        .find(|&(_, c)| c.is_control() && !layout(c))
    {
        None => Ok(()),
        Some((at, c)) => Err(ApiError::Invalid(format!(
            "{what} holds the control character U+{:04X} at byte {at}; {}",
            c as u32,
            if line_breaks {
                "only line breaks and tabs are allowed"
            } else {
                "control characters are not allowed"
            }
        ))),
    }
}

impl ServiceError for ApiError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApiError::NoKey(_) => ErrorKind::Unauthenticated,
            ApiError::NotAdmin { .. } => ErrorKind::PermissionDenied,
            ApiError::Invalid(_) | ApiError::Refused(_) => ErrorKind::InvalidArgument,
            ApiError::NoSilence(_) => ErrorKind::NotFound,
            ApiError::LeaderState(_) | ApiError::DatabaseDown(_) => ErrorKind::Unavailable,
            ApiError::RulesRefused(_) => ErrorKind::FailedPrecondition,
            ApiError::Incident(err) => err.kind(),
        }
    }
}

impl ServiceError for IncidentError {
    fn kind(&self) -> ErrorKind {
        match self {
            IncidentError::Database(_) | IncidentError::Unreachable { .. } => {
                ErrorKind::Unavailable
            }
            IncidentError::Migrate(_) => ErrorKind::Internal,
            IncidentError::NotFound(_) => ErrorKind::NotFound,
            IncidentError::State(_) => ErrorKind::FailedPrecondition,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> tonic::Status {
        err.to_status()
    }
}

impl From<IncidentError> for tonic::Status {
    fn from(err: IncidentError) -> tonic::Status {
        ApiError::from(err).to_status()
    }
}

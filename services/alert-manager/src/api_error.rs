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
    /// The incident database refused or could not be reached.
    #[error("the incident database is unavailable: {0}")]
    DatabaseDown(sqlx::Error),
    /// Any other failure of the incident store.
    #[error(transparent)]
    Incident(IncidentError),
}

impl From<IncidentError> for ApiError {
    fn from(err: IncidentError) -> ApiError {
        match err {
            IncidentError::Database(e) => ApiError::DatabaseDown(e),
            other => ApiError::Incident(other),
        }
    }
}

impl ServiceError for ApiError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApiError::NoKey(_) => ErrorKind::Unauthenticated,
            ApiError::NotAdmin { .. } => ErrorKind::PermissionDenied,
            ApiError::Invalid(_) => ErrorKind::InvalidArgument,
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

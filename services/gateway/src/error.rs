//! Why the gateway refuses or fails a call, each reason with its gRPC code through
//! [`ServiceError`]. Admission, the task API, the canary admin API and the replica clients
//! return these; `shared::error` alone turns them into a status. A replica's own answer (a
//! status it sent) is relayed as it came and is not one of these, but for a `ModelInfer` the
//! replica could not decode: that message came from the caller, a [`GatewayError::Invalid`]
//! (see `model_infer`).

use std::net::SocketAddr;
use std::sync::Arc;

use shared::auth::Role;
use shared::error::{ErrorKind, ServiceError};

/// A call the gateway refuses or cannot complete; its `Display` text is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No valid API key.
    #[error("{0}")]
    NoKey(&'static str),
    /// The key is valid but its role is below the method's.
    #[error("the key of tenant '{tenant}' has role {role:?}; {path} needs {needs:?}")]
    RoleTooLow {
        /// The key's tenant.
        tenant: Arc<str>,
        /// The key's role.
        role: Role,
        /// The method called.
        path: String,
        /// The role the method needs.
        needs: Role,
    },
    /// The key's rate limit is spent for now.
    #[error("rate limit of key {key_id} (tenant '{tenant}') exceeded; retry in {retry_ms} ms")]
    RateLimited {
        /// The key's short id.
        key_id: Arc<str>,
        /// The key's tenant.
        tenant: Arc<str>,
        /// When a call would be admitted again.
        retry_ms: u128,
    },
    /// Every concurrency slot of the gateway is taken.
    #[error("the gateway is handling its maximum of {0} calls; retry later")]
    Overloaded(usize),
    /// One tenant holds its share of the concurrency slots.
    #[error(
        "tenant '{tenant}' is running its share of {share} concurrent calls (of the gateway's {total}); retry later"
    )]
    TenantOverloaded {
        /// The tenant.
        tenant: Arc<str>,
        /// The most calls one tenant may run at once.
        share: usize,
        /// The gateway's slots in all.
        total: usize,
    },
    /// The call's first message did not arrive in time after its headers.
    #[error("no request message arrived within {0:?} of the call's headers; the call is ended")]
    IdleStream(std::time::Duration),
    /// The request is malformed: the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The request message is over the gateway's size limit.
    #[error("the request message is larger than the gateway's limit of {0} bytes")]
    RequestTooLarge(usize),
    /// The request body could not be read to its end (the caller went away).
    #[error("the request could not be read: {0}")]
    RequestUnread(String),
    /// A canary names a version that the replicas do not serve.
    #[error("version {version} of model '{model}' is not ready {not_ready}; load it first")]
    VersionNotReady {
        /// The model.
        model: String,
        /// The version not ready.
        version: String,
        /// Where, in words (`on inference replica 10.0.0.7:50052 (1 of 2)`).
        not_ready: String,
    },
    /// Whether a model version is ready cannot be told: replicas did not answer.
    #[error("could not tell whether {what} is ready: {why}")]
    ReadinessUnknown {
        /// The version asked about, in words (`version 2 of model 'minilm-l6'`).
        what: String,
        /// Which replicas did not answer, and why.
        why: String,
    },
    /// A change made over another revision of the split than the one in force.
    #[error(
        "the canary split of model '{model}' is at revision {current}, not {expected} as the change \
         expected: someone changed it since it was read; nothing changed: read it again \
         (GetCanary) and decide anew"
    )]
    StaleSplit {
        /// The model.
        model: String,
        /// The revision the change expected.
        expected: i64,
        /// The revision in force.
        current: i64,
    },
    /// The shared deployed state (PostgreSQL) could not store a change.
    #[error("{0}")]
    StateUnavailable(#[from] crate::deployed::Unavailable),
    /// The gateway runs without a shared database, so it keeps no deployment timeline.
    #[error(
        "this gateway keeps no deployment timeline: it runs without a shared database (--database-url)"
    )]
    NoTimeline,
    /// The gateway has no replica to send the call to.
    #[error("no inference replica configured")]
    NoReplica,
    /// The replica could not be reached, or the connection broke.
    #[error("inference replica {addr}: {what}")]
    ReplicaUnreachable {
        /// The replica.
        addr: SocketAddr,
        /// What failed.
        what: String,
    },
    /// The caller's deadline passed while the replica worked.
    #[error("no answer from inference replica {0} within the caller's deadline")]
    ReplicaTimedOut(SocketAddr),
    /// The caller's deadline passed before the call's work was done (waiting for a replica,
    /// or for several).
    #[error("the caller's deadline passed before the gateway had an answer")]
    DeadlinePassed,
    /// The replica cancelled the call.
    #[error("inference replica {0} cancelled the call")]
    ReplicaCancelled(SocketAddr),
    /// The replica answered with an HTTP error instead of a gRPC status.
    #[error("inference replica {addr} answered HTTP {status}")]
    ReplicaHttp {
        /// The replica.
        addr: SocketAddr,
        /// Its HTTP status.
        status: http::StatusCode,
    },
    /// The replica's answer is over the size the gateway accepts.
    #[error("the answer of inference replica {addr} is over {max} bytes")]
    AnswerTooLarge {
        /// The replica.
        addr: SocketAddr,
        /// The limit.
        max: usize,
    },
    /// The replica's answer breaks the protocol (no status, a bad frame, a reset, an answer
    /// that does not match the request).
    #[error("{0}")]
    BadAnswer(String),
}

impl ServiceError for GatewayError {
    fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::NoKey(_) => ErrorKind::Unauthenticated,
            GatewayError::RoleTooLow { .. } => ErrorKind::PermissionDenied,
            GatewayError::RateLimited { .. }
            | GatewayError::Overloaded(_)
            | GatewayError::TenantOverloaded { .. }
            | GatewayError::RequestTooLarge(_)
            | GatewayError::AnswerTooLarge { .. } => ErrorKind::ResourceExhausted,
            GatewayError::Invalid(_) => ErrorKind::InvalidArgument,
            GatewayError::RequestUnread(_)
            | GatewayError::ReplicaCancelled(_)
            | GatewayError::IdleStream(_) => ErrorKind::Cancelled,
            GatewayError::VersionNotReady { .. } | GatewayError::NoTimeline => {
                ErrorKind::FailedPrecondition
            }
            GatewayError::StaleSplit { .. } => ErrorKind::Aborted,
            GatewayError::NoReplica
            | GatewayError::ReadinessUnknown { .. }
            | GatewayError::ReplicaUnreachable { .. }
            | GatewayError::StateUnavailable(_) => ErrorKind::Unavailable,
            GatewayError::ReplicaTimedOut(_) | GatewayError::DeadlinePassed => {
                ErrorKind::DeadlineExceeded
            }
            GatewayError::ReplicaHttp { .. } => ErrorKind::Unknown,
            GatewayError::BadAnswer(_) => ErrorKind::Internal,
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(err: GatewayError) -> tonic::Status {
        err.to_status()
    }
}

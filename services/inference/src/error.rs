//! Errors of the inference core, each mapped to its gRPC code through [`shared::ErrorKind`].

use shared::{ErrorKind, ServiceError};

/// Why an inference request (or a repository operation) failed.
///
/// The text of each variant is what the client reads in the status message, so it names the
/// model, the tensor and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The request is malformed (datatype, shape, size, encoding, batch limits).
    #[error("{0}")]
    Invalid(String),
    /// No such model in the repository, or no such version of it.
    #[error("{0}")]
    NotFound(String),
    /// The model exists but is not ready (not loaded, loading, unloaded, or shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The model's queue is full: the request was refused at once.
    #[error("{0}")]
    Overloaded(String),
    /// The request's deadline passed before it could be answered.
    #[error("deadline exceeded after {waited_ms} ms waiting for model '{model}'")]
    DeadlineExceeded {
        /// Model whose queue the request waited in.
        model: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The model could not be loaded (bad file, bad config, runtime failure).
    #[error("{0}")]
    Load(String),
    /// The runtime failed while running a batch.
    #[error("model '{model}' version {version} failed to run: {reason}")]
    Runtime {
        /// Model that failed.
        model: String,
        /// Version that failed.
        version: i64,
        /// The runtime's own message.
        reason: String,
    },
}

impl ServiceError for InferError {
    fn kind(&self) -> ErrorKind {
        match self {
            InferError::Invalid(_) => ErrorKind::InvalidArgument,
            InferError::NotFound(_) => ErrorKind::NotFound,
            InferError::Unavailable(_) => ErrorKind::Unavailable,
            InferError::Overloaded(_) => ErrorKind::ResourceExhausted,
            InferError::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            InferError::Load(_) => ErrorKind::FailedPrecondition,
            InferError::Runtime { .. } => ErrorKind::Internal,
        }
    }
}

impl From<InferError> for tonic::Status {
    fn from(err: InferError) -> Self {
        err.to_status()
    }
}

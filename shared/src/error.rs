//! One vocabulary of error kinds for the whole mesh, each knowing its gRPC status code.
//!
//! Every service's error type implements [`ServiceError`]; the conversion to
//! [`tonic::Status`] happens here and nowhere else, so the same failure gets the same code
//! whichever service reports it.

use tonic::{Code, Status};

/// What kind of failure an error is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (shape, type, size, encoding): do not retry it as is.
    InvalidArgument,
    /// The named thing (model, version, incident) does not exist.
    NotFound,
    /// The thing exists but cannot serve now (loading, unloaded, shutting down): retry later or elsewhere.
    Unavailable,
    /// A bounded queue or limit is full: back off and retry.
    ResourceExhausted,
    /// The caller's deadline passed before the work could be done.
    DeadlineExceeded,
    /// The caller went away before the work was done.
    Cancelled,
    /// The request conflicts with the current state (e.g. loading an already loading model).
    FailedPrecondition,
    /// A value is outside the range the server accepts (a window longer than kept, a page past
    /// the end): unlike `InvalidArgument`, the same request may succeed later or elsewhere.
    OutOfRange,
    /// The thing to create already exists (a silence or rule with the same identity).
    AlreadyExists,
    /// The caller sent no credential, or one that is not valid.
    Unauthenticated,
    /// The caller is known but its role does not allow this call.
    PermissionDenied,
    /// The operation lost a race with another writer (leadership, a concurrent change): retry
    /// at a higher level.
    Aborted,
    /// The method or feature is not served here.
    Unimplemented,
    /// A bug or a runtime failure on our side.
    Internal,
    /// A peer answered something that is not a gRPC status at all (an HTTP error page).
    Unknown,
}

impl ErrorKind {
    /// The status code's canonical name (`INVALID_ARGUMENT`, …), for metric labels and logs.
    pub fn code_name(self) -> &'static str {
        code_name(self.code())
    }

    /// The gRPC status code of this kind.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::Cancelled => Code::Cancelled,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unknown => Code::Unknown,
        }
    }
}

/// The canonical name of a gRPC status code (`OK`, `INVALID_ARGUMENT`, …): every service of
/// the mesh labels its metrics' `status` this way.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a status is the server's failure rather than the caller's mistake (OpenTelemetry's
/// convention for gRPC servers). Spans of such calls are marked failed, so that the collector
/// keeps them as exemplars; a malformed request or an unknown model is not.
pub fn is_server_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The longest status message sent, in bytes. A message travels as the `grpc-message`
/// header, percent-encoded (up to three times longer), and clients refuse header blocks past
/// 8 to 16 KiB: a message that quotes a caller's 100 KB field would break the exchange
/// instead of telling the caller what was wrong.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 2048;

/// `message`, cut at a character boundary so that it fits [`MAX_STATUS_MESSAGE_BYTES`] with a
/// note of how much was cut (`… (98000 more bytes)`).
pub fn bounded_message(mut message: String) -> String {
    /// Room for the note: `… (` and ` more bytes)` around up to 20 digits.
    const NOTE_BYTES: usize = 40;
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let kept = message.floor_char_boundary(MAX_STATUS_MESSAGE_BYTES - NOTE_BYTES);
    let cut = message.len() - kept;
    message.truncate(kept);
    message.push_str(&format!("… ({cut} more bytes)"));
    message
}

/// An error that knows its [`ErrorKind`]; its `Display` text becomes the status message.
pub trait ServiceError: std::error::Error {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;

    /// Converts the error into the gRPC status that a client receives, its message bounded
    /// ([`bounded_message`]).
    fn to_status(&self) -> Status {
        Status::new(self.kind().code(), bounded_message(self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_the_names_of_the_grpc_specification() {
        // doc/statuscodes.md of grpc/grpc, in the order of their numbers.
        let spec = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        for (number, name) in spec.into_iter().enumerate() {
            assert_eq!(code_name(Code::from_i32(number as i32)), name);
        }
        assert_eq!(ErrorKind::Unavailable.code_name(), "UNAVAILABLE");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_with_what_was_cut() {
        let short = "model 'm': version 'x' is not a positive integer".to_owned();
        assert_eq!(bounded_message(short.clone()), short);
        let exact = "é".repeat(MAX_STATUS_MESSAGE_BYTES / 2);
        assert_eq!(bounded_message(exact.clone()), exact);

        let long = format!("version '{}'", "é".repeat(50_000));
        let cut = bounded_message(long.clone());
        assert!(cut.len() <= MAX_STATUS_MESSAGE_BYTES, "{} bytes", cut.len());
        let (kept, note) = cut.split_once('…').unwrap();
        assert!(long.starts_with(kept));
        assert_eq!(note, format!(" ({} more bytes)", long.len() - kept.len()));
    }

    #[test]
    fn only_the_server_s_own_failures_mark_a_span_failed() {
        for kind in [
            ErrorKind::Unavailable,
            ErrorKind::Internal,
            ErrorKind::DeadlineExceeded,
        ] {
            assert!(is_server_failure(kind.code()), "{kind:?}");
        }
        for kind in [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::ResourceExhausted,
            ErrorKind::Cancelled,
            ErrorKind::FailedPrecondition,
        ] {
            assert!(!is_server_failure(kind.code()), "{kind:?}");
        }
        assert!(!is_server_failure(Code::Ok));
        assert!(!is_server_failure(Code::Unauthenticated));
    }
}

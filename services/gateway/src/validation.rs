//! What the task API accepts: the limits of a request and the checks that refuse the rest,
//! each with a message that says what to change.

use tonic::Status;

use crate::core::MAX_TEXTS_PER_CALL;
use crate::error::GatewayError;

/// The status of a malformed request: the message says what to change.
pub fn invalid(message: impl Into<String>) -> Status {
    GatewayError::Invalid(message.into()).into()
}

/// Longest accepted id (request ids, item ids, candidate ids): ids are kept in records.
pub const MAX_ID_BYTES: usize = 256;

/// Refuses an id longer than [`MAX_ID_BYTES`]; `what` names it in the message.
pub fn check_id(what: &str, id: &str) -> Result<(), Status> {
    if id.len() > MAX_ID_BYTES {
        return Err(invalid(format!(
            "{what} is {} bytes; at most {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// Refuses an empty list of texts, or one longer than [`MAX_TEXTS_PER_CALL`].
pub fn check_texts(texts: &[String]) -> Result<(), Status> {
    if texts.is_empty() {
        return Err(invalid("texts is empty: send at least one text"));
    }
    if texts.len() > MAX_TEXTS_PER_CALL {
        return Err(invalid(format!(
            "texts has {} entries; at most {MAX_TEXTS_PER_CALL} per call",
            texts.len()
        )));
    }
    Ok(())
}

//! Protocol layer of the gateway: converts wire types and calls the [`crate::core`].

pub mod admin;
pub mod oip;
pub mod passthrough;
pub mod tasks;

use std::time::Instant;

use tonic::Request;
use tonic::metadata::MetadataMap;

use crate::auth::Principal;
use crate::core::CallContext;

/// Metadata key of the sticky routing key (a shopper or session id).
pub const ROUTING_KEY: &str = "x-routing-key";

/// The call's context: a new request id, the caller (set by admission), its routing key and
/// deadline.
pub fn call_context<T>(request: &Request<T>) -> CallContext {
    call_context_of(request.metadata(), request.extensions().get::<Principal>())
}

/// The context of a call with `metadata`, made by `principal` (`None`: anonymous).
pub fn call_context_of(metadata: &MetadataMap, principal: Option<&Principal>) -> CallContext {
    let arrived = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let tenant = principal.map_or_else(|| "anonymous".to_owned(), |p| p.tenant.to_string());
    let routing_key = metadata
        .get(ROUTING_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map_or_else(|| request_id.clone(), str::to_owned);
    CallContext {
        deadline: shared::grpc::deadline(metadata, arrived),
        request_id,
        tenant,
        routing_key,
        arrived,
        routed_version: Default::default(),
    }
}

/// Whether a status is the server's failure (OpenTelemetry's gRPC server convention): the span is
/// marked as an error, so that the collector keeps it as an exemplar. A caller's mistake is not.
pub(crate) fn server_failure(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

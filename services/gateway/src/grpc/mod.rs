//! Protocol layer of the gateway: converts wire types and calls the [`crate::core`].

pub mod admin;
pub mod oip;
pub mod passthrough;
pub mod tasks;

use std::time::{Duration, Instant};

use tonic::Request;
use tonic::metadata::MetadataMap;

use crate::admission::Arrival;
use crate::auth::Principal;
use crate::call::CallContext;

/// Metadata key of the sticky routing key (a shopper or session id).
pub const ROUTING_KEY: &str = "x-routing-key";

/// How much sooner than the caller's deadline the gateway gives up on a call. Its own answer,
/// DEADLINE_EXCEEDED and counted in the metrics, then comes before the server's generic timeout
/// fires (tonic's, on the same `grpc-timeout`, with timers of one millisecond), which would
/// answer CANCELLED and drop the call unrecorded.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1);

/// The call's context: a new request id, the caller (set by admission), its routing key and
/// deadline.
pub fn call_context<T>(request: &Request<T>) -> CallContext {
    call_context_of(request.metadata(), request.extensions())
}

/// The context of a call with `metadata` and the `extensions` admission set: its principal
/// (none: anonymous) and [`Arrival`].
pub fn call_context_of(metadata: &MetadataMap, extensions: &http::Extensions) -> CallContext {
    let arrived = extensions
        .get::<Arrival>()
        .map_or_else(Instant::now, |arrival| arrival.0);
    let principal = extensions.get::<Principal>();
    let request_id = uuid::Uuid::new_v4().to_string();
    let tenant = principal.map_or_else(|| "anonymous".to_owned(), |p| p.tenant.to_string());
    let routing_key = metadata
        .get(ROUTING_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map_or_else(|| request_id.clone(), str::to_owned);
    CallContext {
        deadline: shared::grpc::deadline(metadata, arrived)
            .map(|deadline| deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline)),
        request_id,
        tenant,
        routing_key,
        arrived,
        routed_version: Default::default(),
    }
}

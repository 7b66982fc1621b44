//! What the gateway knows of one call while it serves it: who called, its deadline, and the
//! version it was routed to. The handlers make it; the core, the metrics and the spans read it.

use std::sync::atomic::Ordering;
use std::time::Instant;

/// Everything a call needs to know about its caller and its limits.
pub struct CallContext {
    /// Id given to the call, returned to the caller.
    pub request_id: String,
    /// The caller's tenant.
    pub tenant: String,
    /// Sticky routing key (shopper or session), or the request id.
    pub routing_key: String,
    /// The caller's deadline.
    pub deadline: Option<Instant>,
    /// When the call arrived.
    pub arrived: Instant,
    /// The model version the call was routed to (the one it named, else the canary's choice,
    /// else the newest known; 0 before routing): failed calls are counted against it when
    /// the gateway knows it is deployed ([`crate::metrics::call_labels`]).
    pub routed_version: std::sync::atomic::AtomicI64,
}

impl CallContext {
    /// The version a call with `outcome` counts against, in its metrics and its span: the
    /// version that answered, or, for a failed call, the one it was routed to (0: unknown),
    /// which may be one a caller made up: the metrics and the spans of `ModelInfer` name it
    /// only when the gateway knows it is deployed.
    pub fn version_of<E>(&self, outcome: &Result<i64, E>) -> i64 {
        match outcome {
            Ok(version) => *version,
            Err(_) => self.routed_version.load(Ordering::Relaxed),
        }
    }
}

//! Who may write into the collector: OTLP exports, record pushes and baseline pins carry a
//! sender's key (`authorization: Bearer <key>`; OpenTelemetry SDKs send it from
//! `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<key>`). Without any key configured the
//! collector takes writes from whoever reaches its port, and says so at start.

use std::sync::Arc;

use shared::auth::{ApiKeys, Role};
use shared::error::ServiceError as _;
use tonic::{Request, Status};

/// The keys of the senders.
#[derive(Clone, Default)]
pub struct Senders {
    keys: Arc<ApiKeys>,
}

impl Senders {
    /// Senders holding one of `keys` (any role); none: writes are open.
    pub fn new(keys: ApiKeys) -> Senders {
        if keys.is_empty() {
            tracing::warn!(
                "no sender key configured (--api-keys): anyone who reaches the collector may send metrics, spans, records and baseline pins"
            );
        }
        Senders {
            keys: Arc::new(keys),
        }
    }

    /// Whether the call may write; `what` names the write in the refusal.
    pub fn check<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        if self.keys.is_empty() {
            return Ok(());
        }
        self.keys
            .require(request.metadata(), Role::Client, what)
            .map(drop)
            .map_err(|err| err.to_status())
    }
}

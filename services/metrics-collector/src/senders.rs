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
        self.writer(request, what).map(drop)
    }

    /// Whether the call may write, and who writes: the key presented, named by its id and
    /// tenant (`key 1a2b3c4d of tenant shop`, never the key itself), or `None` when writes are
    /// open. Quotas count against this name, which a sender cannot choose, rather than
    /// against the `service.name` it sends.
    pub fn writer<T>(&self, request: &Request<T>, what: &str) -> Result<Option<String>, Status> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        self.keys
            .require(request.metadata(), Role::Client, what)
            .map(|p| Some(format!("key {} of tenant {}", p.key_id, p.tenant)))
            .map_err(|err| err.to_status())
    }
}

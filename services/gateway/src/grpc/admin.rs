//! `ecommerce.gateway.v1.GatewayAdmin`: canary splits, changed at run time.

use std::sync::Arc;

use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_server::GatewayAdmin;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::canary::VersionWeight;
use crate::core::GatewayCore;
use crate::deployed::MAX_REASON_CHARS;
use crate::error::GatewayError;

/// Handlers of the admin API (role `admin`, enforced by admission).
#[derive(Clone)]
pub struct AdminService {
    core: Arc<GatewayCore>,
}

impl AdminService {
    /// Serves `core`.
    pub fn new(core: Arc<GatewayCore>) -> Self {
        AdminService { core }
    }

    fn state(&self, model: &str) -> pb::CanaryState {
        let split = self.core.canary.split(model);
        pb::CanaryState {
            model: model.to_owned(),
            weights: wire_weights(&split.weights),
            revision: split.revision,
            changed_by: split.changed_by,
            changed_at_unix_ms: split.changed_at_ms,
        }
    }
}

fn wire_weights(weights: &[VersionWeight]) -> Vec<pb::VersionWeight> {
    weights
        .iter()
        .map(|w| pb::VersionWeight {
            version: w.version,
            weight: w.weight,
        })
        .collect()
}

#[tonic::async_trait]
impl GatewayAdmin for AdminService {
    async fn set_canary(
        &self,
        request: Request<pb::SetCanaryRequest>,
    ) -> Result<Response<pb::CanaryState>, Status> {
        let changed_by = request.extensions().get::<Principal>().map_or_else(
            || "anonymous".to_owned(),
            |p| format!("{} (key {})", p.tenant, p.key_id),
        );
        let reason: String = request
            .metadata()
            .get("x-change-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(MAX_REASON_CHARS)
            .collect();
        let deadline = super::call_context(&request).deadline;
        let request = request.into_inner();
        let weights = request
            .weights
            .iter()
            .map(|w| VersionWeight {
                version: w.version,
                weight: w.weight,
            })
            .collect();
        let expected = request.expected_revision;
        if let Some(negative) = expected.filter(|revision| *revision < 0) {
            return Err(GatewayError::Invalid(format!(
                "expected_revision {negative} is negative: give a revision GetCanary returned, or leave it out"
            ))
            .into());
        }
        self.core
            .set_canary(
                &request.model,
                weights,
                expected,
                &changed_by,
                &reason,
                deadline,
            )
            .await?;
        Ok(Response::new(self.state(&request.model)))
    }

    async fn list_canary_changes(
        &self,
        request: Request<pb::ListCanaryChangesRequest>,
    ) -> Result<Response<pb::ListCanaryChangesResponse>, Status> {
        let request = request.into_inner();
        let Some(deployed) = &self.core.deployed else {
            return Err(GatewayError::NoTimeline.into());
        };
        let limit = match request.limit {
            0 => 50,
            n => i64::from(n.min(1000)),
        };
        let changes = deployed
            .changes(&request.model, limit)
            .await
            .map_err(GatewayError::from)?;
        Ok(Response::new(pb::ListCanaryChangesResponse {
            changes: changes
                .into_iter()
                .map(|c| pb::CanaryChange {
                    weights: wire_weights(&c.weights),
                    model: c.model,
                    revision: c.revision,
                    changed_by: c.changed_by,
                    gateway: c.gateway,
                    reason: c.reason,
                    changed_at_unix_ms: c.changed_at_ms,
                })
                .collect(),
        }))
    }

    async fn get_canary(
        &self,
        request: Request<pb::GetCanaryRequest>,
    ) -> Result<Response<pb::CanaryState>, Status> {
        Ok(Response::new(self.state(&request.into_inner().model)))
    }
}

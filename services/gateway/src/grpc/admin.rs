//! `ecommerce.gateway.v1.GatewayAdmin`: canary splits, changed at run time.

use std::sync::Arc;

use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_server::GatewayAdmin;
use tonic::{Request, Response, Status};

use crate::canary::VersionWeight;
use crate::core::GatewayCore;

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
        pb::CanaryState {
            model: model.to_owned(),
            weights: self
                .core
                .canary
                .get(model)
                .into_iter()
                .map(|w| pb::VersionWeight {
                    version: w.version,
                    weight: w.weight,
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl GatewayAdmin for AdminService {
    async fn set_canary(
        &self,
        request: Request<pb::SetCanaryRequest>,
    ) -> Result<Response<pb::CanaryState>, Status> {
        let request = request.into_inner();
        let weights = request
            .weights
            .iter()
            .map(|w| VersionWeight {
                version: w.version,
                weight: w.weight,
            })
            .collect();
        self.core.set_canary(&request.model, weights).await?;
        Ok(Response::new(self.state(&request.model)))
    }

    async fn get_canary(
        &self,
        request: Request<pb::GetCanaryRequest>,
    ) -> Result<Response<pb::CanaryState>, Status> {
        Ok(Response::new(self.state(&request.into_inner().model)))
    }
}

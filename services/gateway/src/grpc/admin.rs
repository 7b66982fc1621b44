//! `ecommerce.gateway.v1.GatewayAdmin`: canary splits, changed at run time.

use crate::error::GatewayError;
use std::sync::Arc;

use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_server::GatewayAdmin;
use tonic::{Request, Response, Status};

use crate::canary::VersionWeight;
use crate::core::{GatewayCore, outgoing};
use proto::inference as pb_inference;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

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
        // Refuse a split that would send shoppers to a version no replica serves.
        for w in request
            .weights
            .iter()
            .filter(|w| w.weight > 0 && w.version > 0)
        {
            let ready = pb_inference::ModelReadyRequest {
                name: request.model.clone(),
                version: w.version.to_string(),
            };
            // Every replica must serve it, or part of the canary traffic would fail.
            let ready = self
                .core
                .pool
                .broadcast(|channel| {
                    let request = outgoing(ready.clone(), None);
                    async move {
                        GrpcInferenceServiceClient::new(channel)
                            .model_ready(request)
                            .await
                    }
                })
                .await
                .map(|answers| answers.iter().all(|r| r.get_ref().ready))
                .unwrap_or(false);
            if !ready {
                return Err(GatewayError::VersionNotReady {
                    model: request.model.clone(),
                    version: w.version,
                }
                .into());
            }
        }
        let weights = request
            .weights
            .iter()
            .map(|w| VersionWeight {
                version: w.version,
                weight: w.weight,
            })
            .collect();
        self.core
            .canary
            .set(&request.model, weights)
            .map_err(|err| {
                GatewayError::Invalid(format!("canary of model '{}': {err}", request.model))
            })?;
        tracing::info!(model = %request.model, weights = ?request.weights, "canary split changed");
        Ok(Response::new(self.state(&request.model)))
    }

    async fn get_canary(
        &self,
        request: Request<pb::GetCanaryRequest>,
    ) -> Result<Response<pb::CanaryState>, Status> {
        Ok(Response::new(self.state(&request.into_inner().model)))
    }
}

//! Remediation actions, declared per rule and run when the rule's alert opens an incident: take a
//! model version out of traffic (the gateway's canary weight to 0), reload or unload a model
//! (the inference service's repository RPCs), or call a webhook (e.g. an autoscaler). Each run is
//! recorded on the incident's timeline with its outcome; runs are rate-limited per rule, action
//! and target, and a dry-run mode records what would run without doing it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proto::ecommerce::gateway::v1 as gw;
use proto::ecommerce::gateway::v1::gateway_admin_client::GatewayAdminClient;
use proto::inference as oip;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

pub use crate::alert::ActionSpec;
use crate::labels::LabelSet;

/// Where actions go, and how often they may run.
#[derive(Debug, Clone)]
pub struct ActionConfig {
    /// TLS towards the gateway and the inference service.
    pub tls: shared::tls::MeshTls,
    /// The gateway's admin API (`http://…`), for canary changes.
    pub gateway: Option<String>,
    /// Admin API key of the gateway.
    pub gateway_api_key: Option<String>,
    /// The inference service (`http://…`), for model loads.
    pub inference: Option<String>,
    /// Admin API key of the inference service (model loads and unloads need one).
    pub inference_api_key: Option<String>,
    /// Least time between two runs of one action on one target.
    pub min_interval: Duration,
    /// Record what would run without running it.
    pub dry_run: bool,
}

/// Runs actions, remembering when each last ran.
pub struct ActionRunner {
    config: ActionConfig,
    last_run: Mutex<HashMap<String, tokio::time::Instant>>,
    http: reqwest::Client,
}

/// What became of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and succeeded, with what it did.
    Done(String),
    /// It ran and failed, with why.
    Failed(String),
    /// Not run: the same action ran on the same target too recently.
    RateLimited,
    /// Not run: dry-run mode.
    DryRun,
}

fn channel(tls: &shared::tls::MeshTls, url: &str) -> Result<tonic::transport::Channel, String> {
    Ok(tls
        .endpoint(url, "the action's address")
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// `message` with `authorization: Bearer <key>` when there is a key.
fn keyed<T>(key: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = key.and_then(shared::auth::bearer) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

impl ActionRunner {
    /// A runner with `config`.
    pub fn new(config: ActionConfig) -> ActionRunner {
        ActionRunner {
            config,
            last_run: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Runs `action` of `rule` for an alert with `labels`.
    pub async fn run(&self, rule: &str, action: &ActionSpec, labels: &LabelSet) -> Outcome {
        let key = format!("{rule}/{}", action.describe(labels));
        {
            let mut last = self.last_run.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            if last
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < self.config.min_interval)
            {
                return Outcome::RateLimited;
            }
            last.insert(key, now);
        }
        if self.config.dry_run {
            return Outcome::DryRun;
        }
        match self.execute(action, labels).await {
            Ok(done) => Outcome::Done(done),
            Err(why) => Outcome::Failed(why),
        }
    }

    async fn execute(&self, action: &ActionSpec, labels: &LabelSet) -> Result<String, String> {
        let r = |t: &str| crate::labels::render(t, labels, 0.0);
        match action {
            ActionSpec::SetCanaryWeight { .. } | ActionSpec::PromoteCanary { .. } => {
                let (model, version, weight) = match action {
                    ActionSpec::SetCanaryWeight {
                        model,
                        version,
                        weight,
                    } => (model, version, Some(*weight)),
                    ActionSpec::PromoteCanary { model, version } => (model, version, None),
                    _ => unreachable!("matched above"),
                };
                let url = self
                    .config
                    .gateway
                    .as_deref()
                    .ok_or("no --gateway to send canary changes to")?;
                let (model, version) = (r(model), r(version));
                let version: i64 = version
                    .parse()
                    .map_err(|_| format!("version '{version}' is not a number"))?;
                let mut client = GatewayAdminClient::new(channel(&self.config.tls, url)?);
                let key = self.config.gateway_api_key.as_deref();
                let current = client
                    .get_canary(keyed(
                        key,
                        gw::GetCanaryRequest {
                            model: model.clone(),
                        },
                    ))
                    .await
                    .map_err(|s| format!("GetCanary: {}", s.message()))?
                    .into_inner();
                if !current.weights.iter().any(|w| w.version == version) {
                    return Err(format!(
                        "{model} has no canary split with version {version}"
                    ));
                }
                let weights = current
                    .weights
                    .into_iter()
                    .map(|w| gw::VersionWeight {
                        weight: match (weight, w.version == version) {
                            (Some(weight), true) => weight,
                            (Some(_), false) => w.weight,
                            // Promotion: the version takes all the traffic.
                            (None, true) => 100,
                            (None, false) => 0,
                        },
                        version: w.version,
                    })
                    .collect();
                let after = client
                    .set_canary(keyed(
                        key,
                        gw::SetCanaryRequest {
                            model: model.clone(),
                            weights,
                        },
                    ))
                    .await
                    .map_err(|s| format!("SetCanary: {}", s.message()))?
                    .into_inner();
                let split: Vec<String> = after
                    .weights
                    .iter()
                    .map(|w| format!("v{}={}", w.version, w.weight))
                    .collect();
                Ok(format!("{model} split now {}", split.join(", ")))
            }
            ActionSpec::ReloadModel { model } | ActionSpec::UnloadModel { model } => {
                let url = self
                    .config
                    .inference
                    .as_deref()
                    .ok_or("no --inference to send model loads to")?;
                let model = r(model);
                let key = self.config.inference_api_key.as_deref();
                let mut client = GrpcInferenceServiceClient::new(channel(&self.config.tls, url)?);
                if matches!(action, ActionSpec::ReloadModel { .. }) {
                    client
                        .repository_model_load(keyed(
                            key,
                            oip::RepositoryModelLoadRequest {
                                repository_name: String::new(),
                                model_name: model.clone(),
                                parameters: Default::default(),
                            },
                        ))
                        .await
                        .map_err(|s| format!("RepositoryModelLoad: {}", s.message()))?;
                    Ok(format!("{model} reloaded"))
                } else {
                    client
                        .repository_model_unload(keyed(
                            key,
                            oip::RepositoryModelUnloadRequest {
                                repository_name: String::new(),
                                model_name: model.clone(),
                                parameters: Default::default(),
                            },
                        ))
                        .await
                        .map_err(|s| format!("RepositoryModelUnload: {}", s.message()))?;
                    Ok(format!("{model} unloaded"))
                }
            }
            ActionSpec::Webhook { url } => {
                let response = self
                    .http
                    .post(url)
                    .json(&serde_json::json!({ "labels": labels }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(format!("{url} answered {}", response.status()))
                } else {
                    Err(format!("{url} answered {}", response.status()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_are_rate_limited_per_target_and_dry_run_does_nothing() {
        let runner = ActionRunner::new(ActionConfig {
            tls: shared::tls::MeshTls::plaintext(),
            gateway: None,
            gateway_api_key: None,
            inference_api_key: None,
            inference: None,
            min_interval: Duration::from_secs(60),
            dry_run: true,
        });
        let action = ActionSpec::ReloadModel {
            model: "{{ $labels.model }}".into(),
        };
        let a = LabelSet::from([("model".to_owned(), "a".to_owned())]);
        let b = LabelSet::from([("model".to_owned(), "b".to_owned())]);
        assert_eq!(runner.run("r", &action, &a).await, Outcome::DryRun);
        assert_eq!(runner.run("r", &action, &a).await, Outcome::RateLimited);
        assert_eq!(runner.run("r", &action, &b).await, Outcome::DryRun);
        assert_eq!(action.describe(&a), "reload model a");
    }

    #[tokio::test]
    async fn a_missing_target_fails_with_a_reason() {
        let runner = ActionRunner::new(ActionConfig {
            tls: shared::tls::MeshTls::plaintext(),
            gateway: None,
            gateway_api_key: None,
            inference_api_key: None,
            inference: None,
            min_interval: Duration::ZERO,
            dry_run: false,
        });
        let action = ActionSpec::SetCanaryWeight {
            model: "m".into(),
            version: "2".into(),
            weight: 0,
        };
        let outcome = runner.run("r", &action, &LabelSet::new()).await;
        assert!(
            matches!(outcome, Outcome::Failed(ref why) if why.contains("--gateway")),
            "{outcome:?}"
        );
    }
}

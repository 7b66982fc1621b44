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
    /// It ran on every replica of the service (each address its name resolves to): the
    /// outcome on each, by address. It succeeded when it succeeded on all.
    Replicas {
        /// What it did, in one line (e.g. "minilm-l6 reloaded on 2 of 2 replicas").
        summary: String,
        /// Each replica's address and outcome.
        replicas: Vec<(String, Result<String, String>)>,
    },
    /// Not run: the same action ran on the same target too recently.
    RateLimited,
    /// Not run: dry-run mode.
    DryRun,
}

fn channel(tls: &shared::tls::MeshTls, url: &str) -> Result<tonic::transport::Channel, String> {
    channel_checking(tls, url, None)
}

/// A channel to `url`, checking the server's certificate for `domain` (the service's name
/// when `url` holds one of its addresses).
fn channel_checking(
    tls: &shared::tls::MeshTls,
    url: &str,
    domain: Option<&str>,
) -> Result<tonic::transport::Channel, String> {
    Ok(tls
        .endpoint_checking(url, "the action's address", domain)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// One replica behind a service's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its address, `ip:port`.
    pub addr: String,
    /// The URL of that address (same scheme).
    pub url: String,
    /// The service's host name, which its certificate names.
    pub host: String,
}

/// Every replica behind `url` (`http[s]://name:port`), or several URLs comma-separated: each
/// address the names resolve to, once, in order.
pub async fn replicas(url: &str) -> Result<Vec<Replica>, String> {
    let mut found: Vec<Replica> = Vec::new();
    for url in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("--inference {url:?} has no scheme (http:// or https://)"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => authority,
        };
        let addrs = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| format!("--inference {url}: {authority} does not resolve: {e}"))?;
        for addr in addrs {
            let addr = addr.to_string();
            if found.iter().all(|r| r.addr != addr) {
                found.push(Replica {
                    url: format!("{scheme}://{addr}"),
                    addr,
                    host: host.to_owned(),
                });
            }
        }
    }
    if found.is_empty() {
        return Err(format!("--inference {url} resolves to no address"));
    }
    Ok(found)
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
        if let ActionSpec::ReloadModel { model } | ActionSpec::UnloadModel { model } = action {
            let model = crate::labels::render(model, labels, 0.0);
            let reload = matches!(action, ActionSpec::ReloadModel { .. });
            return self.on_every_replica(&model, reload).await;
        }
        match self.execute(rule, action, labels).await {
            Ok(done) => Outcome::Done(done),
            Err(why) => Outcome::Failed(why),
        }
    }

    /// Reloads (or unloads) `model` on every inference replica: each address `--inference`
    /// resolves to (a headless Service's name gives every pod), called at once.
    async fn on_every_replica(&self, model: &str, reload: bool) -> Outcome {
        let Some(url) = self.config.inference.as_deref() else {
            return Outcome::Failed("no --inference to send model loads to".into());
        };
        let replicas = match replicas(url).await {
            Ok(replicas) => replicas,
            Err(why) => return Outcome::Failed(why),
        };
        let key = self.config.inference_api_key.as_deref();
        let calls = replicas.iter().map(|replica| async move {
            let channel = channel_checking(&self.config.tls, &replica.url, Some(&replica.host))?;
            let mut client = GrpcInferenceServiceClient::new(channel);
            if reload {
                let request = oip::RepositoryModelLoadRequest {
                    repository_name: String::new(),
                    model_name: model.to_owned(),
                    parameters: Default::default(),
                };
                client
                    .repository_model_load(keyed(key, request))
                    .await
                    .map_err(|s| format!("RepositoryModelLoad: {}", s.message()))?;
                Ok(format!("{model} reloaded"))
            } else {
                let request = oip::RepositoryModelUnloadRequest {
                    repository_name: String::new(),
                    model_name: model.to_owned(),
                    parameters: Default::default(),
                };
                client
                    .repository_model_unload(keyed(key, request))
                    .await
                    .map_err(|s| format!("RepositoryModelUnload: {}", s.message()))?;
                Ok(format!("{model} unloaded"))
            }
        });
        let outcomes: Vec<Result<String, String>> = futures::future::join_all(calls).await;
        let ok = outcomes.iter().filter(|o| o.is_ok()).count();
        let verb = if reload { "reloaded" } else { "unloaded" };
        let mut summary = format!("{model} {verb} on {ok} of {} replicas", outcomes.len());
        let failed: Vec<&str> = replicas
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_err())
            .map(|(r, _)| r.addr.as_str())
            .collect();
        if !failed.is_empty() {
            summary.push_str(&format!("; failed on {}", failed.join(", ")));
        }
        Outcome::Replicas {
            summary,
            replicas: replicas.into_iter().map(|r| r.addr).zip(outcomes).collect(),
        }
    }

    async fn execute(
        &self,
        rule: &str,
        action: &ActionSpec,
        labels: &LabelSet,
    ) -> Result<String, String> {
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
                let channel = channel(&self.config.tls, url)?;
                let mut client = GatewayAdminClient::new(channel.clone());
                let reason = format!("alert-manager: rule {rule}, {}", action.describe(labels));
                let mut attempt = 1;
                loop {
                    match self
                        .change_split(&channel, &mut client, &model, version, weight, &reason)
                        .await
                    {
                        Err(SplitError::Stale(_)) if attempt < SPLIT_ATTEMPTS => {
                            // Changed since it was read (or read from a gateway a moment
                            // behind the others): read it again.
                            tokio::time::sleep(STALE_RETRY * attempt).await;
                            attempt += 1;
                        }
                        Err(SplitError::Stale(why)) => {
                            return Err(format!("{why} ({attempt} tries)"));
                        }
                        Err(SplitError::Failed(why)) => return Err(why),
                        Ok(outcome) => return Ok(outcome),
                    }
                }
            }
            ActionSpec::ReloadModel { .. } | ActionSpec::UnloadModel { .. } => {
                unreachable!("run sends model actions to every replica")
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

    /// Reads `model`'s split, computes the change (`weight`, or `None`: promote `version`;
    /// a version that held all the traffic rolled back as [`roll_back`] says) and sends it
    /// over the revision read, so that a change made meanwhile aborts it instead of being
    /// overwritten. Returns the outcome's line.
    async fn change_split(
        &self,
        channel: &tonic::transport::Channel,
        client: &mut GatewayAdminClient<tonic::transport::Channel>,
        model: &str,
        version: i64,
        weight: Option<u32>,
        reason: &str,
    ) -> Result<String, SplitError> {
        let failed = |rpc: &str, s: tonic::Status| {
            let why = format!("{rpc}: {}", s.message());
            if s.code() == tonic::Code::Aborted {
                SplitError::Stale(why)
            } else {
                SplitError::Failed(why)
            }
        };
        let key = self.config.gateway_api_key.as_deref();
        let current = client
            .get_canary(keyed(
                key,
                gw::GetCanaryRequest {
                    model: model.to_owned(),
                },
            ))
            .await
            .map_err(|s| failed("GetCanary", s))?
            .into_inner();
        if !current.weights.iter().any(|w| w.version == version) {
            return Err(SplitError::Failed(format!(
                "{model} has no canary split with version {version}"
            )));
        }
        let mut weights = next_split(current.weights, version, weight);
        let mut rolled_back = String::new();
        if weights.iter().all(|w| w.weight == 0) {
            let history = match client
                .list_canary_changes(keyed(
                    key,
                    gw::ListCanaryChangesRequest {
                        model: model.to_owned(),
                        limit: HISTORY_LIMIT,
                    },
                ))
                .await
            {
                Ok(response) => Some(response.into_inner().changes),
                // A gateway that keeps no timeline (no database).
                Err(status) if status.code() == tonic::Code::FailedPrecondition => None,
                Err(status) => return Err(failed("ListCanaryChanges", status)),
            };
            let candidates = rollback_candidates(&weights, version, history.as_deref());
            let served = self
                .served_versions(channel, model, candidates)
                .await
                .map_err(SplitError::Failed)?;
            let (split, how) = roll_back(weights, version, history.as_deref(), |v| {
                served.get(&v).copied().unwrap_or(true)
            });
            weights = split;
            rolled_back = format!(" (v{version} held all the traffic: {how})");
        }
        let mut request = keyed(
            key,
            gw::SetCanaryRequest {
                model: model.to_owned(),
                weights,
                expected_revision: Some(current.revision),
            },
        );
        // The gateways' deployment timeline says why.
        if let Ok(value) = reason.chars().take(256).collect::<String>().parse() {
            request.metadata_mut().insert("x-change-reason", value);
        }
        let after = client
            .set_canary(request)
            .await
            .map_err(|s| failed("SetCanary", s))?
            .into_inner();
        let split: Vec<String> = after
            .weights
            .iter()
            .map(|w| format!("v{}={}", w.version, w.weight))
            .collect();
        Ok(format!(
            "{model} split now {}{rolled_back}",
            split.join(", ")
        ))
    }

    /// Whether each of `versions` of `model` is served now, as the gateway answers
    /// `ModelReady`: ready on every inference replica, the same check by which it refuses a
    /// split that gives traffic to a version its replicas do not all serve. A rollback gives
    /// traffic only to served versions. A version the replicas do not know (NOT_FOUND,
    /// INVALID_ARGUMENT) is not served; any other failure fails the rollback, which cannot
    /// tell.
    async fn served_versions(
        &self,
        channel: &tonic::transport::Channel,
        model: &str,
        versions: Vec<i64>,
    ) -> Result<std::collections::BTreeMap<i64, bool>, String> {
        let key = self.config.gateway_api_key.as_deref();
        let mut served = std::collections::BTreeMap::new();
        for version in versions {
            let request = keyed(
                key,
                oip::ModelReadyRequest {
                    name: model.to_owned(),
                    version: version.to_string(),
                },
            );
            let ready = match GrpcInferenceServiceClient::new(channel.clone())
                .model_ready(request)
                .await
            {
                Ok(answer) => answer.into_inner().ready,
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::NotFound | tonic::Code::InvalidArgument
                    ) =>
                {
                    false
                }
                Err(status) => {
                    return Err(format!(
                        "ModelReady of {model} v{version}: {}",
                        status.message()
                    ));
                }
            };
            served.insert(version, ready);
        }
        Ok(served)
    }
}

/// Why a canary change was not made.
enum SplitError {
    /// The split changed after it was read: worth reading it again.
    Stale(String),
    /// Anything else.
    Failed(String),
}

/// How many times a canary change is computed and sent when the split changed meanwhile.
const SPLIT_ATTEMPTS: u32 = 3;

/// Wait before reading a split that changed meanwhile again (times the attempt).
const STALE_RETRY: Duration = Duration::from_millis(400);

/// How many changes of the deployment timeline a rollback looks back over (the most
/// `ListCanaryChanges` returns; a split set again unchanged adds none).
const HISTORY_LIMIT: u32 = 1000;

/// The most versions a rollback asks the gateway about (the newest); older ones count as
/// served, and the gateway's own check on the split stands for them.
const READINESS_CHECKS: usize = 16;

/// The versions other than `version` that a rollback might give traffic to, newest first:
/// those of `split` and those with traffic in `history`, at most [`READINESS_CHECKS`].
fn rollback_candidates(
    split: &[gw::VersionWeight],
    version: i64,
    history: Option<&[gw::CanaryChange]>,
) -> Vec<i64> {
    let named = split.iter().map(|w| w.version).chain(
        history
            .unwrap_or_default()
            .iter()
            .flat_map(|change| change.weights.iter())
            .filter(|w| w.weight > 0)
            .map(|w| w.version),
    );
    let distinct: std::collections::BTreeSet<i64> =
        named.filter(|&v| v != version && v > 0).collect();
    distinct.into_iter().rev().take(READINESS_CHECKS).collect()
}

/// The split after setting `version`'s weight to `weight`, or promoting it (`None`: it takes
/// all the traffic). Taking the last version with traffic out of it leaves every weight 0,
/// which the gateway refuses: see [`roll_back`].
fn next_split(
    current: Vec<gw::VersionWeight>,
    version: i64,
    weight: Option<u32>,
) -> Vec<gw::VersionWeight> {
    current
        .into_iter()
        .map(|w| gw::VersionWeight {
            weight: match (weight, w.version == version) {
                (Some(weight), true) => weight,
                (Some(_), false) => w.weight,
                (None, true) => 100,
                (None, false) => 0,
            },
            version: w.version,
        })
        .collect()
}

/// Where the traffic goes when `version`, the only version of `split` with any, is taken out
/// of it (a promoted version that fails): back to the split that served before it took it
/// all, with a line saying which. That is the latest split on the deployment timeline
/// (`history`, newest first; `None`: a gateway that keeps none) in which another version
/// had traffic; its weights come back, `version` at 0, and the versions it did not name stay
/// at 0 (a version rolled back before that split stays out; one whose rollback left `version`
/// alone comes back, being what served before). Only versions that are `served` now take
/// traffic: a split whose other versions are not served any more is passed over, and in
/// the one restored such a version is set to 0; the line names every version so left out.
/// Without such a split the newest of the split's other served versions takes all the
/// traffic; with none the split is removed, so the newest loaded version answers.
fn roll_back(
    split: Vec<gw::VersionWeight>,
    version: i64,
    history: Option<&[gw::CanaryChange]>,
    served: impl Fn(i64) -> bool,
) -> (Vec<gw::VersionWeight>, String) {
    let takes_traffic = |w: &gw::VersionWeight| w.version != version && w.weight > 0;
    // Versions that had traffic in a split the rollback looked at but are not served now.
    let mut left_out = std::collections::BTreeSet::new();
    let mut earlier = None;
    let mut another_had_traffic = false;
    for change in history.unwrap_or_default() {
        let others: Vec<i64> = change
            .weights
            .iter()
            .filter(|w| takes_traffic(w))
            .map(|w| w.version)
            .collect();
        another_had_traffic |= !others.is_empty();
        left_out.extend(others.iter().copied().filter(|&v| !served(v)));
        if others.iter().any(|&v| served(v)) {
            earlier = Some(change);
            break;
        }
    }
    if let Some(earlier) = earlier {
        let mut weights: std::collections::BTreeMap<i64, u32> =
            split.iter().map(|w| (w.version, 0)).collect();
        for w in &earlier.weights {
            let weight = if takes_traffic(w) && served(w.version) {
                w.weight
            } else {
                0
            };
            weights.insert(w.version, weight);
        }
        let weights = weights
            .into_iter()
            .map(|(version, weight)| gw::VersionWeight { version, weight })
            .collect();
        return (
            weights,
            format!(
                "back to the split of revision {}{}",
                earlier.revision,
                not_served(&left_out)
            ),
        );
    }
    let others = || split.iter().map(|w| w.version).filter(|&v| v != version);
    left_out.extend(others().filter(|&v| !served(v)));
    let newest_other = others().filter(|&v| served(v)).max();
    let with_a_served = if another_had_traffic {
        " with a served version"
    } else {
        ""
    };
    let why = match history {
        None => "this gateway keeps no timeline".to_owned(),
        Some(history) if history.len() >= HISTORY_LIMIT as usize => {
            format!(
                "no earlier split{with_a_served} in the timeline's last {} changes",
                history.len()
            )
        }
        Some(_) => format!("no earlier split{with_a_served} on the timeline"),
    };
    match newest_other {
        Some(back_to) => {
            let weights = split
                .into_iter()
                .map(|w| gw::VersionWeight {
                    weight: if w.version == back_to { 100 } else { 0 },
                    version: w.version,
                })
                .collect();
            (
                weights,
                format!(
                    "{why}, so the newest other version, v{back_to}{}",
                    not_served(&left_out)
                ),
            )
        }
        None => (
            Vec::new(),
            format!(
                "split removed, so the newest loaded version answers{}",
                not_served(&left_out)
            ),
        ),
    }
}

/// The clause naming the versions a rollback left out because they are not served now.
fn not_served(versions: &std::collections::BTreeSet<i64>) -> String {
    if versions.is_empty() {
        return String::new();
    }
    let named: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
    format!(", {} left out as not served now", named.join(" and "))
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
    async fn replicas_are_every_address_of_every_name_once() {
        let found =
            replicas("https://127.0.0.1:50052, https://127.0.0.1:50053,https://127.0.0.1:50052")
                .await
                .unwrap();
        let addrs: Vec<&str> = found.iter().map(|r| r.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:50052", "127.0.0.1:50053"]);
        assert_eq!(found[1].url, "https://127.0.0.1:50053");
        assert_eq!(found[1].host, "127.0.0.1");
        let localhost = replicas("http://localhost:50052").await.unwrap();
        assert!(
            localhost.iter().all(|r| r.host == "localhost"),
            "{localhost:?}"
        );
        let err = replicas("inference:50052").await.unwrap_err();
        assert!(err.contains("no scheme"), "{err}");
        let err = replicas("http://no-such-host.invalid:1").await.unwrap_err();
        assert!(err.contains("does not resolve"), "{err}");
    }

    fn split(w: &[(i64, u32)]) -> Vec<gw::VersionWeight> {
        w.iter()
            .map(|&(version, weight)| gw::VersionWeight { version, weight })
            .collect()
    }

    fn change(revision: i64, w: &[(i64, u32)]) -> gw::CanaryChange {
        gw::CanaryChange {
            model: "m".into(),
            weights: split(w),
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn a_canary_is_rolled_back_or_promoted_as_asked() {
        assert_eq!(
            next_split(split(&[(1, 90), (2, 10)]), 2, Some(0)),
            split(&[(1, 90), (2, 0)])
        );
        assert_eq!(
            next_split(split(&[(1, 90), (2, 10)]), 2, None),
            split(&[(1, 0), (2, 100)])
        );
    }

    #[test]
    fn a_promoted_version_that_fails_hands_the_traffic_back_to_the_split_before_it() {
        // v2 failed as a canary and was rolled back; v3 was promoted, then failed.
        let history = [
            change(5, &[(1, 0), (2, 0), (3, 100)]),
            change(4, &[(1, 90), (2, 0), (3, 10)]),
            change(3, &[(1, 90), (2, 0)]),
            change(2, &[(1, 90), (2, 10)]),
        ];
        let (weights, how) = roll_back(split(&[(1, 0), (2, 0), (3, 0)]), 3, Some(&history), |_| {
            true
        });
        assert_eq!(weights, split(&[(1, 90), (2, 0), (3, 0)]));
        assert_eq!(how, "back to the split of revision 4");
        // A version of that split no longer in the current one comes back too.
        let (weights, _) = roll_back(split(&[(2, 0), (3, 0)]), 3, Some(&history), |_| true);
        assert_eq!(weights, split(&[(1, 90), (2, 0), (3, 0)]));
        // v1 was rolled back, leaving v2 (a canary) alone; when v2 fails too, what served
        // before it took all the traffic comes back.
        let history = [
            change(7, &[(1, 0), (2, 10)]),
            change(6, &[(1, 90), (2, 10)]),
        ];
        let (weights, how) = roll_back(split(&[(1, 0), (2, 0)]), 2, Some(&history), |_| true);
        assert_eq!(weights, split(&[(1, 90), (2, 0)]));
        assert_eq!(how, "back to the split of revision 6");
    }

    #[test]
    fn a_rollback_gives_traffic_only_to_versions_a_replica_serves_now() {
        // v2 was promoted over v1, v3 over v2; then v2 was retired, and v3 fails.
        let history = [
            change(4, &[(1, 0), (2, 0), (3, 100)]),
            change(3, &[(1, 0), (2, 90), (3, 10)]),
            change(2, &[(1, 0), (2, 100)]),
            change(1, &[(1, 90), (2, 10)]),
        ];
        let served = |v| v != 2;
        let (weights, how) = roll_back(split(&[(1, 0), (2, 0), (3, 0)]), 3, Some(&history), served);
        assert_eq!(weights, split(&[(1, 90), (2, 0), (3, 0)]));
        assert_eq!(
            how,
            "back to the split of revision 1, v2 left out as not served now"
        );
        // Without a timeline, the newest other version that is served.
        let (weights, how) = roll_back(split(&[(1, 0), (2, 0), (3, 0)]), 3, None, served);
        assert_eq!(weights, split(&[(1, 100), (2, 0), (3, 0)]));
        assert_eq!(
            how,
            "this gateway keeps no timeline, so the newest other version, v1, v2 left out as not \
             served now"
        );
        // With no other version served, the split goes, as with no other version.
        let (weights, how) = roll_back(split(&[(2, 0), (3, 0)]), 3, None, served);
        assert_eq!(weights, split(&[]));
        assert_eq!(
            how,
            "split removed, so the newest loaded version answers, v2 left out as not served now"
        );
        // A split skipped on the way back is named too.
        let skipped = [
            change(3, &[(3, 100)]),
            change(2, &[(2, 100)]),
            change(1, &[(1, 100)]),
        ];
        let (weights, how) = roll_back(split(&[(3, 0)]), 3, Some(&skipped), served);
        assert_eq!(weights, split(&[(1, 100), (3, 0)]));
        assert_eq!(
            how,
            "back to the split of revision 1, v2 left out as not served now"
        );
        // A timeline whose earlier splits name only versions not served says so.
        let (weights, how) = roll_back(split(&[(1, 0), (3, 0)]), 3, Some(&skipped[..2]), served);
        assert_eq!(weights, split(&[(1, 100), (3, 0)]));
        assert_eq!(
            how,
            "no earlier split with a served version on the timeline, so the newest other \
             version, v1, v2 left out as not served now"
        );
        // The versions asked about: the split's and those with traffic on the timeline.
        assert_eq!(
            rollback_candidates(&split(&[(2, 0), (3, 0)]), 3, Some(&history)),
            [2, 1]
        );
    }

    #[test]
    fn without_a_timeline_the_newest_other_version_takes_the_traffic() {
        let (weights, how) = roll_back(split(&[(1, 0), (2, 0)]), 2, None, |_| true);
        assert_eq!(weights, split(&[(1, 100), (2, 0)]));
        assert_eq!(
            how,
            "this gateway keeps no timeline, so the newest other version, v1"
        );
        // A timeline on which the failing version always had all the traffic says nothing.
        let only = [change(1, &[(3, 100)])];
        let (weights, how) = roll_back(split(&[(1, 0), (2, 0), (3, 0)]), 3, Some(&only), |_| true);
        assert_eq!(weights, split(&[(1, 0), (2, 100), (3, 0)]));
        assert_eq!(
            how,
            "no earlier split on the timeline, so the newest other version, v2"
        );
        // Nor does one whose every change the rollback read gave it all the traffic.
        let full: Vec<_> = (1..=i64::from(HISTORY_LIMIT))
            .rev()
            .map(|revision| change(revision, &[(1, 0), (2, 100)]))
            .collect();
        let (_, how) = roll_back(split(&[(1, 0), (2, 0)]), 2, Some(&full), |_| true);
        assert!(
            how.starts_with("no earlier split in the timeline's last 1000 changes"),
            "{how}"
        );
        // A split of one version: removed, so the newest loaded version answers.
        assert_eq!(roll_back(split(&[(2, 0)]), 2, None, |_| true).0, split(&[]));
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

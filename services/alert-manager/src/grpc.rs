//! gRPC handlers of `monitoring.alerts.v1.AlertManager`: type conversions and the admin-key
//! check on writes. The work is in [`crate::engine`] and [`crate::incidents`]; refusals are
//! [`ApiError`]s.

use std::sync::Arc;

use proto::monitoring::alerts::v1 as pb;
use shared::auth::{ApiKeys, Role};
use tonic::{Request, Response, Status};

use crate::alert::Silence;
use crate::alert::{Alert, State};
use crate::api_error::{ApiError, printable};
use crate::engine::{Engine, now_ms};
use crate::incidents::{Action, Filter, Incident, IncidentState};
use crate::silencing::SilenceRequest;

/// Longest note kept on a timeline.
const MAX_NOTE_BYTES: usize = 4096;

/// Serves the API.
pub struct AlertService {
    engine: Arc<Engine>,
    keys: Arc<ApiKeys>,
}

impl AlertService {
    /// Serves `engine`; writes need an admin key of `keys`.
    pub fn new(engine: Arc<Engine>, keys: Arc<ApiKeys>) -> AlertService {
        AlertService { engine, keys }
    }

    /// The tenant of the admin key the request carries.
    fn admin<T>(&self, request: &Request<T>) -> Result<String, ApiError> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let principal = self.keys.authenticate(header).map_err(ApiError::NoKey)?;
        if principal.role != Role::Admin {
            return Err(ApiError::NotAdmin {
                key_id: principal.key_id.clone(),
                tenant: principal.tenant.clone(),
            });
        }
        Ok(principal.tenant.to_string())
    }
}

fn state_of(state: IncidentState) -> pb::IncidentState {
    match state {
        IncidentState::Open => pb::IncidentState::Open,
        IncidentState::Acknowledged => pb::IncidentState::Acknowledged,
        IncidentState::Resolved => pb::IncidentState::Resolved,
    }
}

fn incident(i: Incident) -> pb::Incident {
    pb::Incident {
        id: i.id,
        group_key: i.group_key,
        title: i.title,
        state: state_of(i.state) as i32,
        severity: i.severity,
        labels: i.labels.into_iter().collect(),
        opened_at_unix_ms: i.opened_at_ms,
        acknowledged_at_unix_ms: i.acknowledged_at_ms.unwrap_or(0),
        resolved_at_unix_ms: i.resolved_at_ms.unwrap_or(0),
        previous_incident_id: i.previous_incident_id.unwrap_or(0),
        timeline: i
            .timeline
            .into_iter()
            .map(|e| pb::TimelineEvent {
                kind: e.kind,
                actor: e.actor,
                message: e.message,
                at_unix_ms: e.at_ms,
            })
            .collect(),
        report: String::new(),
        summary: String::new(),
    }
}

fn alert(a: Alert) -> pb::Alert {
    pb::Alert {
        severity: a.severity().to_owned(),
        state_text: a.state_text(),
        no_data_since_unix_ms: a.no_data_since_ms,
        rule: a.rule,
        labels: a.labels.into_iter().collect(),
        annotations: a.annotations.into_iter().collect(),
        state: match a.state {
            State::Pending => pb::AlertState::Pending,
            State::Firing => pb::AlertState::Firing,
            State::Resolved => pb::AlertState::Resolved,
        } as i32,
        value: a.value,
        active_since_unix_ms: a.active_since_ms,
        fired_at_unix_ms: a.fired_at_ms,
        resolved_at_unix_ms: a.resolved_at_ms,
        fingerprint: a.fingerprint,
    }
}

fn note(text: &str, required: bool) -> Result<String, ApiError> {
    if required && text.trim().is_empty() {
        return Err(ApiError::Invalid(
            "note is empty: say what to add to the timeline".to_owned(),
        ));
    }
    if text.len() > MAX_NOTE_BYTES {
        return Err(ApiError::Invalid(format!(
            "note is {} bytes; at most {MAX_NOTE_BYTES}",
            text.len()
        )));
    }
    printable("note", text, true)?;
    Ok(text.to_owned())
}

impl AlertService {
    async fn act(
        &self,
        request: Request<pb::IncidentActionRequest>,
        action: Action,
    ) -> Result<Response<pb::Incident>, Status> {
        let actor = self.admin(&request)?;
        let request = request.into_inner();
        let note = note(&request.note, action == Action::Note)?;
        let done = self
            .engine
            .incidents()
            .act(request.id, action, &actor, &note, now_ms())
            .await?;
        Ok(Response::new(incident(done)))
    }
}

fn silence(s: Silence) -> pb::Silence {
    pb::Silence {
        id: s.id,
        matchers: s.matchers.into_iter().collect(),
        starts_at_unix_ms: s.starts_at_ms,
        ends_at_unix_ms: s.ends_at_ms,
        author: s.author,
        comment: s.comment,
    }
}

#[tonic::async_trait]
impl pb::alert_manager_server::AlertManager for AlertService {
    async fn create_silence(
        &self,
        request: Request<pb::CreateSilenceRequest>,
    ) -> Result<Response<pb::Silence>, Status> {
        let author = self.admin(&request)?;
        let r = request.into_inner();
        let created = self
            .engine
            .create_silence(
                SilenceRequest {
                    matchers: r.matchers.into_iter().collect(),
                    starts_at_ms: r.starts_at_unix_ms,
                    ends_at_ms: r.ends_at_unix_ms,
                    duration_seconds: r.duration_seconds,
                    author,
                    comment: r.comment,
                },
                now_ms(),
            )
            .await?;
        Ok(Response::new(silence(created)))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let since = match request.into_inner().since_seconds {
            0 => 0,
            s => now_ms() - i64::from(s) * 1000,
        };
        let stats = self.engine.incidents().stats(since).await?;
        Ok(Response::new(pb::GetStatsResponse {
            stats: stats
                .into_iter()
                .map(|s| pb::IncidentStats {
                    service: s.service,
                    severity: s.severity,
                    incidents: s.incidents,
                    active: s.active,
                    mtta_seconds: s.mtta_ms.unwrap_or(0.0) / 1000.0,
                    mttr_seconds: s.mttr_ms.unwrap_or(0.0) / 1000.0,
                })
                .collect(),
        }))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 50,
            n if n > 500 => {
                return Err(ApiError::Invalid(format!("limit {n}; at most 500")).into());
            }
            n => i64::from(n),
        };
        let events = self
            .engine
            .incidents()
            .deployments(&request.model, limit)
            .await?;
        Ok(Response::new(pb::ListDeploymentsResponse {
            events: events
                .into_iter()
                .map(|e| pb::DeploymentEvent {
                    model: e.model,
                    version: e.version,
                    kind: e.kind,
                    message: e.message,
                    incident_id: e.incident_id.unwrap_or(0),
                    rule: e.rule,
                    at_unix_ms: e.at_ms,
                })
                .collect(),
        }))
    }

    async fn list_silences(
        &self,
        request: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesResponse>, Status> {
        let all = request.into_inner().include_expired;
        let found = self.engine.incidents().silences(now_ms(), all).await?;
        Ok(Response::new(pb::ListSilencesResponse {
            silences: found.into_iter().map(silence).collect(),
        }))
    }

    async fn expire_silence(
        &self,
        request: Request<pb::ExpireSilenceRequest>,
    ) -> Result<Response<pb::Silence>, Status> {
        self.admin(&request)?;
        let id = request.into_inner().id;
        self.engine.incidents().expire_silence(id, now_ms()).await?;
        self.engine.refresh_silences().await;
        let found = self
            .engine
            .incidents()
            .silences(now_ms(), true)
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or(ApiError::NoSilence(id))?;
        Ok(Response::new(silence(found)))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let include_resolved = request.into_inner().include_resolved;
        let alerts = self
            .engine
            .current_alerts(include_resolved)
            .await
            .map_err(ApiError::LeaderState)?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.into_iter().map(alert).collect(),
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => 50,
            n if n > 500 => {
                return Err(ApiError::Invalid(format!("page_size {n}; at most 500")).into());
            }
            n => i64::from(n),
        };
        let before_id = if request.page_token.is_empty() {
            None
        } else {
            Some(request.page_token.parse::<i64>().map_err(|_| {
                ApiError::Invalid("page_token is not one this service returned".to_owned())
            })?)
        };
        let state = match pb::IncidentState::try_from(request.state) {
            Ok(pb::IncidentState::Unspecified) => None,
            Ok(pb::IncidentState::Open) => Some(IncidentState::Open),
            Ok(pb::IncidentState::Acknowledged) => Some(IncidentState::Acknowledged),
            Ok(pb::IncidentState::Resolved) => Some(IncidentState::Resolved),
            Err(_) => {
                return Err(ApiError::Invalid(format!("unknown state {}", request.state)).into());
            }
        };
        let found = self
            .engine
            .incidents()
            .list(&Filter {
                state,
                labels: request.labels.into_iter().collect(),
                before_id,
                limit,
            })
            .await?;
        let next_page_token = if found.len() as i64 == limit {
            found.last().map(|i| i.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: found.into_iter().map(incident).collect(),
            next_page_token,
        }))
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let id = request.into_inner().id;
        let found = self.engine.incidents().get(id).await?;
        let (report, summary) = self.engine.incidents().texts(id).await?;
        Ok(Response::new(pb::Incident {
            report,
            summary,
            ..incident(found)
        }))
    }

    async fn acknowledge_incident(
        &self,
        request: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        self.act(request, Action::Acknowledge).await
    }

    async fn resolve_incident(
        &self,
        request: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        self.act(request, Action::Resolve).await
    }

    async fn annotate_incident(
        &self,
        request: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        self.act(request, Action::Note).await
    }

    async fn reload_rules(
        &self,
        request: Request<pb::ReloadRulesRequest>,
    ) -> Result<Response<pb::ReloadRulesResponse>, Status> {
        self.admin(&request)?;
        let rules = self.engine.reload().map_err(ApiError::RulesRefused)?;
        Ok(Response::new(pb::ReloadRulesResponse {
            rules: rules as u32,
        }))
    }

    async fn list_rules(
        &self,
        _request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let loaded = self.engine.loaded_rules();
        Ok(Response::new(pb::ListRulesResponse {
            rules: loaded
                .set
                .rules
                .iter()
                .map(|r| pb::RuleInfo {
                    name: r.name.clone(),
                    kind: r.kind_name().to_owned(),
                    file: r.file.display().to_string(),
                    labels: r.labels.clone().into_iter().collect(),
                })
                .collect(),
            last_error: loaded.last_error.unwrap_or_default(),
            loaded_at_unix_ms: loaded.loaded_at_ms,
        }))
    }
}

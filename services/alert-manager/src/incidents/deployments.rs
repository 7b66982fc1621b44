//! The deployment timeline: what was rolled out, shifted or rolled back, by which rule or
//! operator, and under which incident.

use super::*;

/// One step of a model's deployment, made by a remediation action.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentEvent {
    /// The model.
    pub model: String,
    /// The version concerned.
    pub version: i64,
    /// `rolled_back`, `promoted` or `weight_changed`.
    pub kind: String,
    /// What was done.
    pub message: String,
    /// The incident whose rule acted.
    pub incident_id: Option<i64>,
    /// The rule.
    pub rule: String,
    /// When, Unix ms.
    pub at_ms: i64,
}

impl IncidentStore {
    /// Adds a step to the deployment timeline.
    pub async fn record_deployment(&self, event: &DeploymentEvent) -> Result<(), IncidentError> {
        sqlx::query(
            "INSERT INTO deployment_events (model, version, kind, message, incident_id, rule, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&event.model)
        .bind(event.version)
        .bind(&event.kind)
        .bind(&event.message)
        .bind(event.incident_id)
        .bind(&event.rule)
        .bind(event.at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The deployment timeline of `model` (every model when empty), newest first.
    pub async fn deployments(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<DeploymentEvent>, IncidentError> {
        let rows = sqlx::query(
            "SELECT model, version, kind, message, incident_id, rule, at_ms FROM deployment_events \
             WHERE $1 = '' OR model = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeploymentEvent {
                    model: r.try_get("model")?,
                    version: r.try_get("version")?,
                    kind: r.try_get("kind")?,
                    message: r.try_get("message")?,
                    incident_id: r.try_get("incident_id")?,
                    rule: r.try_get("rule")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IncidentError::from)
    }
}

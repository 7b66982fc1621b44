//! Incidents and their timelines: an alert that fires opens (or joins) its group's incident,
//! every event is appended to its timeline, and an incident is acknowledged, resolved and
//! summarised here.

use super::*;

/// State of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentState {
    /// Firing, nobody on it.
    Open,
    /// Someone is on it.
    Acknowledged,
    /// Over.
    Resolved,
}

impl IncidentState {
    fn parse(text: &str) -> IncidentState {
        match text {
            "acknowledged" => IncidentState::Acknowledged,
            "resolved" => IncidentState::Resolved,
            _ => IncidentState::Open,
        }
    }

    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Acknowledged => "acknowledged",
            IncidentState::Resolved => "resolved",
        }
    }
}

/// One timeline event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Kind (`opened`, `fired`, `alert_resolved`, `acknowledged`, `note`, `resolved`, …).
    pub kind: String,
    /// Who.
    pub actor: String,
    /// What.
    pub message: String,
    /// When, Unix ms.
    pub at_ms: i64,
}

/// An incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// Id.
    pub id: i64,
    /// Its alert group.
    pub group_key: String,
    /// Title.
    pub title: String,
    /// State.
    pub state: IncidentState,
    /// Highest severity seen.
    pub severity: String,
    /// The group's labels.
    pub labels: LabelSet,
    /// Opened, acknowledged, resolved (Unix ms).
    pub opened_at_ms: i64,
    /// Acknowledged.
    pub acknowledged_at_ms: Option<i64>,
    /// Resolved.
    pub resolved_at_ms: Option<i64>,
    /// The group's previous incident.
    pub previous_incident_id: Option<i64>,
    /// Events, oldest first (filled by [`IncidentStore::get`]).
    pub timeline: Vec<Event>,
}

/// Filter of [`IncidentStore::list`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this state.
    pub state: Option<IncidentState>,
    /// Only incidents whose labels include these.
    pub labels: BTreeMap<String, String>,
    /// Only ids below this (pagination).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

fn rank(severity: &str) -> u8 {
    match severity {
        "critical" | "page" => 3,
        "error" | "high" => 2,
        "warning" | "ticket" => 1,
        _ => 0,
    }
}

fn incident_of(row: &sqlx::postgres::PgRow) -> Result<Incident, sqlx::Error> {
    let labels: serde_json::Value = row.try_get("labels")?;
    Ok(Incident {
        id: row.try_get("id")?,
        group_key: row.try_get("group_key")?,
        title: row.try_get("title")?,
        state: IncidentState::parse(row.try_get::<&str, _>("state")?),
        severity: row.try_get("severity")?,
        labels: serde_json::from_value(labels).unwrap_or_default(),
        opened_at_ms: row.try_get("opened_at_ms")?,
        acknowledged_at_ms: row.try_get("acknowledged_at_ms")?,
        resolved_at_ms: row.try_get("resolved_at_ms")?,
        previous_incident_id: row.try_get("previous_incident_id")?,
        timeline: Vec::new(),
    })
}

const COLUMNS: &str = "id, group_key, title, state, severity, labels, opened_at_ms, \
                       acknowledged_at_ms, resolved_at_ms, previous_incident_id";

/// Writes the resolution summary of incident `id` (inside the resolving transaction): the
/// timeline, time to detect, acknowledge and resolve, actions and notes.
async fn summarize(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let row =
        sqlx::query("SELECT title, opened_at_ms, acknowledged_at_ms FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    let title: String = row.try_get("title")?;
    let opened: i64 = row.try_get("opened_at_ms")?;
    let acked: Option<i64> = row.try_get("acknowledged_at_ms")?;
    let events = sqlx::query(
        "SELECT kind, actor, message, at_ms FROM incident_events WHERE incident_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let mut timeline = Vec::new();
    let mut text = format!("Incident {id}: {title}\n");
    for e in &events {
        let kind: String = e.try_get("kind")?;
        let actor: String = e.try_get("actor")?;
        let message: String = e.try_get("message")?;
        let at: i64 = e.try_get("at_ms")?;
        text.push_str(&format!(
            "  +{:>8.1}s  {kind:<15} {actor:<14} {message}\n",
            (at - opened) as f64 / 1000.0
        ));
        timeline.push(
            serde_json::json!({"kind": kind, "actor": actor, "message": message, "at_unix_ms": at}),
        );
    }
    let notes: Vec<&serde_json::Value> = timeline.iter().filter(|e| e["kind"] == "note").collect();
    let actions: Vec<&serde_json::Value> = timeline
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("action")))
        .collect();
    let to_ack = acked.map(|a| (a - opened) as f64 / 1000.0);
    let resolved_at: Option<i64> =
        sqlx::query_scalar("SELECT resolved_at_ms FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    let to_resolve = (resolved_at.unwrap_or(now_ms) - opened) as f64 / 1000.0;
    if !actions.is_empty() {
        text.push_str("Actions and what changed after them:\n");
        for a in actions.iter().filter(|a| a["kind"] != "action_started") {
            text.push_str(&format!("  - {}\n", a["message"].as_str().unwrap_or("")));
        }
    }
    text.push_str(&format!(
        "Time to acknowledge: {}; time to resolve: {to_resolve:.1} s; {} action(s), {} note(s).\n",
        to_ack.map_or("never acknowledged".to_owned(), |s| format!("{s:.1} s")),
        actions.len(),
        notes.len()
    ));
    let summary = serde_json::json!({
        "time_to_acknowledge_s": to_ack,
        "time_to_resolve_s": to_resolve,
        "actions": actions,
        "notes": notes,
        "timeline": timeline,
    });
    sqlx::query("UPDATE incidents SET summary = $2, summary_text = $3 WHERE id = $1")
        .bind(id)
        .bind(summary)
        .bind(text)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The active (open or acknowledged) incident of `group_key`, locked for this transaction.
async fn active_incident(
    tx: &mut Transaction<'_, Postgres>,
    group_key: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM incidents WHERE group_key = $1 AND state <> 'resolved' FOR UPDATE",
    )
    .bind(group_key)
    .fetch_optional(&mut **tx)
    .await
}

/// Resolves incident `id` on behalf of `actor`: the state, the `resolved` event and the
/// resolution summary, in one transaction.
async fn resolve(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    actor: &str,
    message: &str,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE incidents SET state = 'resolved', resolved_at_ms = $2 WHERE id = $1")
        .bind(id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    add_event(tx, id, "resolved", actor, message, now_ms).await?;
    summarize(tx, id, now_ms).await
}

pub(super) async fn add_event(
    tx: &mut Transaction<'_, Postgres>,
    incident: i64,
    kind: &str,
    actor: &str,
    message: &str,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_events (incident_id, kind, actor, message, at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(incident)
    .bind(kind)
    .bind(actor)
    .bind(message)
    .bind(at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn describe(alert: &Alert) -> String {
    let labels: Vec<String> = alert
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} value {} [{}]",
        alert.rule,
        alert.value,
        labels.join(", ")
    )
}

/// Incident statistics of one service and severity.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// Service (the `job` label, else the alert's name).
    pub service: String,
    /// Severity.
    pub severity: String,
    /// Incidents opened.
    pub incidents: i64,
    /// Of which still active.
    pub active: i64,
    /// Mean time to acknowledge, ms (acknowledged ones).
    pub mtta_ms: Option<f64>,
    /// Mean time to resolve, ms (resolved ones).
    pub mttr_ms: Option<f64>,
}

/// What an operator does to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take it.
    Acknowledge,
    /// Close it.
    Resolve,
    /// Add a note.
    Note,
}

/// A remediation the leader is to run: the actions of `rule` for the incident `incident`.
#[derive(Debug)]
pub struct Remediation {
    /// The incident.
    pub incident: i64,
    /// The rule whose actions run.
    pub rule: String,
    /// The alert that opened the incident (JSON of [`Alert`]).
    pub alert: serde_json::Value,
    /// Whether a leader that stopped had started running them.
    pub interrupted: bool,
}

impl IncidentStore {
    /// Records that `alert` fired: opens its group's incident (linked to the group's previous
    /// one) unless one is active, and adds the event. Returns the incident's id and whether this
    /// opened it.
    ///
    /// With `remediate` (the leadership term that decided it, when the alert's rule has
    /// actions), the incident's remediation is written in the same transaction, unless it has
    /// one, and only while that term is current: the leader runs it (see
    /// [`IncidentStore::claim_remediations`]), so it is neither lost with a replica that stops
    /// nor run by one that no longer leads.
    ///
    /// Two replicas recording the same group's first alert at once (one that no longer leads
    /// writing what it queued, say) both find no active incident; the second's insert then
    /// meets the first's incident, and is recorded again on it.
    pub async fn alert_fired(
        &self,
        group_key: &str,
        group_labels: &LabelSet,
        alert: &Alert,
        remediate: Option<i64>,
        now_ms: i64,
    ) -> Result<(i64, bool), IncidentError> {
        match self
            .try_alert_fired(group_key, group_labels, alert, remediate, now_ms)
            .await
        {
            Err(IncidentError::Database(sqlx::Error::Database(db)))
                if db.constraint() == Some("incidents_one_active_per_group") =>
            {
                self.try_alert_fired(group_key, group_labels, alert, remediate, now_ms)
                    .await
            }
            outcome => outcome,
        }
    }

    async fn try_alert_fired(
        &self,
        group_key: &str,
        group_labels: &LabelSet,
        alert: &Alert,
        remediate: Option<i64>,
        now_ms: i64,
    ) -> Result<(i64, bool), IncidentError> {
        let mut tx = self.pool.begin().await?;
        let remediate = match remediate {
            Some(term) => holds_term(&mut tx, term).await?,
            None => false,
        };
        let active = sqlx::query(
            "SELECT id, severity FROM incidents WHERE group_key = $1 AND state <> 'resolved' FOR UPDATE",
        )
        .bind(group_key)
        .fetch_optional(&mut *tx)
        .await?;
        let id = match active {
            Some(row) => {
                let id: i64 = row.try_get("id")?;
                let severity: String = row.try_get("severity")?;
                if rank(alert.severity()) > rank(&severity) {
                    sqlx::query("UPDATE incidents SET severity = $2 WHERE id = $1")
                        .bind(id)
                        .bind(alert.severity())
                        .execute(&mut *tx)
                        .await?;
                }
                add_event(&mut tx, id, "fired", SELF_ACTOR, &describe(alert), now_ms).await?;
                (id, false)
            }
            None => {
                let previous: Option<i64> =
                    sqlx::query_scalar("SELECT max(id) FROM incidents WHERE group_key = $1")
                        .bind(group_key)
                        .fetch_one(&mut *tx)
                        .await?;
                let title = alert
                    .annotations
                    .get("summary")
                    .cloned()
                    .unwrap_or_else(|| format!("{} ({group_key})", alert.rule));
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO incidents (group_key, title, state, severity, labels, opened_at_ms, previous_incident_id) \
                     VALUES ($1, $2, 'open', $3, $4, $5, $6) RETURNING id",
                )
                .bind(group_key)
                .bind(&title)
                .bind(alert.severity())
                .bind(serde_json::to_value(group_labels).unwrap_or_default())
                .bind(now_ms)
                .bind(previous)
                .fetch_one(&mut *tx)
                .await?;
                let opened = match previous {
                    Some(p) => format!("{title} (fired again after incident {p})"),
                    None => title.clone(),
                };
                add_event(&mut tx, id, "opened", SELF_ACTOR, &opened, now_ms).await?;
                add_event(&mut tx, id, "fired", SELF_ACTOR, &describe(alert), now_ms).await?;
                (id, true)
            }
        };
        if remediate {
            sqlx::query(
                "INSERT INTO remediations (incident_id, rule, alert, state, created_ms) \
                 VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT (incident_id) DO NOTHING",
            )
            .bind(id.0)
            .bind(&alert.rule)
            .bind(serde_json::to_value(alert).unwrap_or_default())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Takes the remediations waiting to run for the leader of `term`: those pending, and
    /// those a leader of an earlier term was running when it stopped (`interrupted`; an event
    /// on their incident says so). Nothing while `term` is not the current one.
    pub async fn claim_remediations(
        &self,
        term: i64,
        now_ms: i64,
    ) -> Result<Vec<Remediation>, IncidentError> {
        let mut tx = self.pool.begin().await?;
        if !holds_term(&mut tx, term).await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT incident_id, rule, alert, state FROM remediations \
             WHERE state = 'pending' OR (state = 'running' AND term < $1) \
             ORDER BY incident_id LIMIT 100 FOR UPDATE",
        )
        .bind(term)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let incident: i64 = row.try_get("incident_id")?;
            let interrupted = row.try_get::<String, _>("state")? == "running";
            if interrupted {
                add_event(
                    &mut tx,
                    incident,
                    "actions_interrupted",
                    SELF_ACTOR,
                    "the replica running the actions stopped before they finished; the leader runs them again",
                    now_ms,
                )
                .await?;
            }
            sqlx::query(
                "UPDATE remediations SET state = 'running', term = $2 WHERE incident_id = $1",
            )
            .bind(incident)
            .bind(term)
            .execute(&mut *tx)
            .await?;
            claimed.push(Remediation {
                incident,
                rule: row.try_get("rule")?,
                alert: row.try_get("alert")?,
                interrupted,
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Marks the remediation of `incident` done (by the leader of `term`, which ran it).
    pub async fn finish_remediation(&self, incident: i64, term: i64) -> Result<(), IncidentError> {
        sqlx::query("UPDATE remediations SET state = 'done' WHERE incident_id = $1 AND term = $2")
            .bind(incident)
            .bind(term)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Group keys of the open and acknowledged incidents (restored after a restart).
    pub async fn active_groups(&self) -> Result<Vec<String>, IncidentError> {
        Ok(
            sqlx::query_scalar("SELECT group_key FROM incidents WHERE state <> 'resolved'")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Resolves the active incident of `group_key` whose alerts no longer fire (found after a
    /// restart), if auto-resolution is on; otherwise only notes it.
    pub async fn resolve_quiet_group(
        &self,
        group_key: &str,
        auto_resolve: bool,
        now_ms: i64,
    ) -> Result<(), IncidentError> {
        let mut tx = self.pool.begin().await?;
        let id = active_incident(&mut tx, group_key).await?;
        let Some(id) = id else {
            return Ok(());
        };
        let message = "no alert of the group fires any more (checked after a restart)";
        add_event(&mut tx, id, "alert_resolved", SELF_ACTOR, message, now_ms).await?;
        if auto_resolve {
            resolve(&mut tx, id, SELF_ACTOR, message, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds an event to incident `id`'s timeline.
    pub async fn record_event(
        &self,
        id: i64,
        kind: &str,
        actor: &str,
        message: &str,
        at_ms: i64,
    ) -> Result<(), IncidentError> {
        let mut tx = self.pool.begin().await?;
        add_event(&mut tx, id, kind, actor, message, at_ms).await?;
        // What an action changed may be measured after the incident resolved: its summary is
        // written again to include it.
        if kind == "action_effect" {
            let state: String = sqlx::query_scalar("SELECT state FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if state == "resolved" {
                summarize(&mut tx, id, at_ms).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores the diagnosis report of incident `id` and notes it on the timeline.
    pub async fn set_report(
        &self,
        id: i64,
        report: &crate::diagnosis::Report,
        now_ms: i64,
    ) -> Result<(), IncidentError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE incidents SET report = $2, report_text = $3 WHERE id = $1")
            .bind(id)
            .bind(&report.json)
            .bind(&report.text)
            .execute(&mut *tx)
            .await?;
        let first = report.json["suspected_causes"][0]["cause"]
            .as_str()
            .unwrap_or("no suspected cause");
        add_event(&mut tx, id, "diagnosed", SELF_ACTOR, first, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The diagnosis report and resolution summary of incident `id`, as text.
    pub async fn texts(&self, id: i64) -> Result<(String, String), IncidentError> {
        let row = sqlx::query("SELECT report_text, summary_text FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(IncidentError::NotFound(id))?;
        let report: Option<String> = row.try_get("report_text")?;
        let summary: Option<String> = row.try_get("summary_text")?;
        Ok((report.unwrap_or_default(), summary.unwrap_or_default()))
    }

    /// Mean time to acknowledge and to resolve, by service (the `job` label, else the
    /// alert's name) and severity, over incidents opened since `since_ms`.
    pub async fn stats(&self, since_ms: i64) -> Result<Vec<Stat>, IncidentError> {
        let rows = sqlx::query(
            "SELECT coalesce(labels->>'job', labels->>'alertname', '') AS service, severity, \
                    count(*) AS incidents, \
                    avg(acknowledged_at_ms - opened_at_ms)::float8 AS mtta_ms, \
                    avg(resolved_at_ms - opened_at_ms)::float8 AS mttr_ms, \
                    count(*) FILTER (WHERE state <> 'resolved') AS active \
             FROM incidents WHERE opened_at_ms >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Stat {
                    service: r.try_get("service")?,
                    severity: r.try_get("severity")?,
                    incidents: r.try_get("incidents")?,
                    active: r.try_get("active")?,
                    mtta_ms: r.try_get("mtta_ms")?,
                    mttr_ms: r.try_get("mttr_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IncidentError::from)
    }

    /// Open and acknowledged incidents per severity.
    pub async fn open_by_severity(&self) -> Result<Vec<(String, i64)>, IncidentError> {
        Ok(sqlx::query_as(
            "SELECT severity, count(*) FROM incidents WHERE state <> 'resolved' GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records that `alert` stopped firing; resolves the group's incident when nothing of the
    /// group fires any more and `auto_resolve` is on.
    pub async fn alert_resolved(
        &self,
        group_key: &str,
        alert: &Alert,
        group_still_firing: bool,
        auto_resolve: bool,
        now_ms: i64,
    ) -> Result<Option<i64>, IncidentError> {
        let mut tx = self.pool.begin().await?;
        let id = active_incident(&mut tx, group_key).await?;
        let Some(id) = id else {
            return Ok(None);
        };
        add_event(
            &mut tx,
            id,
            "alert_resolved",
            SELF_ACTOR,
            &describe(alert),
            now_ms,
        )
        .await?;
        if !group_still_firing && auto_resolve {
            resolve(
                &mut tx,
                id,
                SELF_ACTOR,
                "every alert of the group resolved",
                now_ms,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Acknowledges, resolves or annotates incident `id` on behalf of `actor`.
    pub async fn act(
        &self,
        id: i64,
        action: Action,
        actor: &str,
        note: &str,
        now_ms: i64,
    ) -> Result<Incident, IncidentError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM incidents WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let state = IncidentState::parse(&state.ok_or(IncidentError::NotFound(id))?);
        match action {
            Action::Acknowledge => {
                if state != IncidentState::Open {
                    return Err(IncidentError::State(format!(
                        "incident {id} is {}, not open",
                        state.as_str()
                    )));
                }
                sqlx::query(
                    "UPDATE incidents SET state = 'acknowledged', acknowledged_at_ms = $2 WHERE id = $1",
                )
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                add_event(&mut tx, id, "acknowledged", actor, note, now_ms).await?;
            }
            Action::Resolve => {
                if state == IncidentState::Resolved {
                    return Err(IncidentError::State(format!(
                        "incident {id} is already resolved"
                    )));
                }
                resolve(&mut tx, id, actor, note, now_ms).await?;
            }
            Action::Note => add_event(&mut tx, id, "note", actor, note, now_ms).await?,
        }
        tx.commit().await?;
        self.get(id).await
    }

    /// Incident `id` with its timeline.
    pub async fn get(&self, id: i64) -> Result<Incident, IncidentError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM incidents WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(IncidentError::NotFound(id))?;
        let mut incident = incident_of(&row)?;
        let rows = sqlx::query(
            "SELECT kind, actor, message, at_ms FROM incident_events WHERE incident_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        incident.timeline = rows
            .iter()
            .map(|r| {
                Ok(Event {
                    kind: r.try_get("kind")?,
                    actor: r.try_get("actor")?,
                    message: r.try_get("message")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(incident)
    }

    /// Incidents matching `filter`, newest first, without timelines.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Incident>, IncidentError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM incidents \
             WHERE ($1::text IS NULL OR state = $1) AND labels @> $2 AND ($3::bigint IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(filter.state.map(IncidentState::as_str))
        .bind(serde_json::to_value(&filter.labels).unwrap_or_default())
        .bind(filter.before_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(incident_of)
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

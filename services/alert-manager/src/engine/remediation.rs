//! Remediation: the diagnosis report and the actions of an incident's rule, and the
//! measurement of what changed after them.

use super::*;

/// The deployment-timeline step of a canary action that ran, if it is one.
fn deployment_step(
    action: &crate::actions::ActionSpec,
    labels: &crate::labels::LabelSet,
    done: &str,
    rule: &str,
    incident: i64,
) -> Option<crate::incidents::DeploymentEvent> {
    use crate::actions::ActionSpec;
    let r = |t: &str| crate::labels::render(t, labels, 0.0);
    let (model, version, kind) = match action {
        ActionSpec::SetCanaryWeight {
            model,
            version,
            weight,
        } => (
            r(model),
            r(version),
            if *weight == 0 {
                "rolled_back"
            } else {
                "weight_changed"
            },
        ),
        ActionSpec::PromoteCanary { model, version } => (r(model), r(version), "promoted"),
        _ => return None,
    };
    Some(crate::incidents::DeploymentEvent {
        model,
        version: version.parse().ok()?,
        kind: kind.to_owned(),
        message: format!("{}: {done}", action.describe(labels)),
        incident_id: Some(incident),
        rule: rule.to_owned(),
        at_ms: now_ms(),
    })
}

/// How long after its actions an alert's value is watched for their effect (rules' windows
/// must empty of the bad data before their value moves).
const EFFECT_WINDOW: Duration = Duration::from_secs(30);

/// What the actions changed: the alert's value when they started against its value once the
/// condition cleared (watched every second), or after [`EFFECT_WINDOW`] if it still holds.
async fn measure_effect(
    client: &mut MetricsQueryClient<Channel>,
    rule: &rules::Rule,
    alert: &evaluator::Alert,
) -> String {
    let started = tokio::time::Instant::now();
    let before = alert.value;
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let observed = evaluator::observe_at(client, rule, 0).await.map(|obs| {
            obs.into_iter()
                .find(|o| o.is_group_of(alert))
                .map(|o| (o.value, o.holds))
        });
        let elapsed = started.elapsed().as_secs_f64();
        match observed {
            // The group no longer answers (e.g. no more errors at all): the condition cleared.
            Ok(None) => {
                return format!(
                    "after the actions: {} was {before:.4}; {elapsed:.1} s later the condition had cleared (no data for the group)",
                    rule.name
                );
            }
            Ok(Some((value, false))) => {
                return format!(
                    "after the actions: {} went from {before:.4} to {value:.4} ({}); the condition cleared {elapsed:.1} s after they finished",
                    rule.name,
                    change(before, value)
                );
            }
            Ok(Some((value, true))) => last = Some(value),
            // The collector did not answer: try again.
            Err(_) => {}
        }
        if started.elapsed() >= EFFECT_WINDOW {
            return match last {
                Some(value) => format!(
                    "after the actions: {} went from {before:.4} to {value:.4} ({}) in {elapsed:.0} s; the condition still holds",
                    rule.name,
                    change(before, value)
                ),
                None => format!(
                    "after the actions: {} could not be read from the collector in {elapsed:.0} s",
                    rule.name
                ),
            };
        }
    }
}

/// `−94%`, `+12%`, or `unchanged`.
fn change(before: f64, after: f64) -> String {
    if before == 0.0 || !before.is_finite() || !after.is_finite() {
        return if after == before {
            "unchanged".into()
        } else {
            "changed".into()
        };
    }
    let pct = (after - before) / before.abs() * 100.0;
    if pct.abs() < 0.5 {
        "unchanged".into()
    } else {
        format!("{pct:+.0}%")
    }
}

impl Engine {
    /// Writes the diagnosis report of a new incident in the background (it queries the
    /// collector for a few dozen signals; the incident is already recorded).
    pub(super) fn spawn_diagnosis(&self, set: &RuleSet, id: i64, alert: evaluator::Alert) {
        let Some(rule) = set.rules.iter().find(|r| r.name == alert.rule).cloned() else {
            return;
        };
        let Some(mut client) = self.collector_client() else {
            return;
        };
        let incidents = self.incidents.clone();
        tokio::spawn(async move {
            let report =
                crate::diagnosis::diagnose(&mut client, &rule, &alert, now_ms() / 1000).await;
            if let Err(err) = incidents.set_report(id, &report, now_ms()).await {
                tracing::error!(incident = id, error = %err, "diagnosis report not stored");
            }
        });
    }

    /// Runs the remediations waiting for this leader (see
    /// [`crate::incidents::IncidentStore::claim_remediations`]), each in the background.
    pub(super) async fn start_remediations(&self) {
        let term = self.term();
        match self.incidents.claim_remediations(term, now_ms()).await {
            Ok(claimed) => {
                let set = self.rule_set();
                for remediation in claimed {
                    self.spawn_remediation(&set, remediation, term);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "remediations not read; trying again");
                self.remediations_due
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// Runs the rule's remediation actions for an incident, in order, each recorded on the
    /// timeline with its outcome, then marks the remediation done.
    fn spawn_remediation(
        &self,
        set: &RuleSet,
        remediation: crate::incidents::Remediation,
        term: i64,
    ) {
        let id = remediation.incident;
        let incidents = self.incidents.clone();
        let rule = set
            .rules
            .iter()
            .find(|r| r.name == remediation.rule)
            .cloned();
        let alert = serde_json::from_value::<evaluator::Alert>(remediation.alert);
        let (rule, alert) = match (rule, alert) {
            (Some(rule), Ok(alert)) if !rule.actions.is_empty() => (rule, alert),
            (rule, alert) => {
                let why = match (rule, alert) {
                    (_, Err(err)) => format!("the alert recorded with them is unreadable ({err})"),
                    _ => format!("rule {} has no actions any more", remediation.rule),
                };
                tokio::spawn(async move {
                    let message = format!("actions not run: {why}");
                    if let Err(err) = incidents
                        .record_event(id, "action_skipped", SELF, &message, now_ms())
                        .await
                    {
                        tracing::error!(incident = id, error = %err, "action outcome not recorded");
                    }
                    let _ = incidents.finish_remediation(id, term).await;
                });
                return;
            }
        };
        let runner = self.actions.clone();
        let incidents = self.incidents.clone();
        let collector = self.collector_client();
        tokio::spawn(async move {
            let mut any_done = false;
            for action in &rule.actions {
                let what = action.describe(&alert.labels);
                let _ = incidents
                    .record_event(id, "action_started", SELF, &what, now_ms())
                    .await;
                let (kind, message) = match runner.run(&rule.name, action, &alert.labels).await {
                    Outcome::Done(done) => {
                        any_done = true;
                        if let Some(step) =
                            deployment_step(action, &alert.labels, &done, &rule.name, id)
                            && let Err(err) = incidents.record_deployment(&step).await
                        {
                            tracing::error!(incident = id, error = %err, "deployment step not recorded");
                        }
                        ("action_finished", format!("{what}: done, {done}"))
                    }
                    Outcome::Failed(why) => ("action_failed", format!("{what}: failed, {why}")),
                    Outcome::Replicas { summary, replicas } => {
                        // One event per replica, naming it, then the summary.
                        for (replica, outcome) in &replicas {
                            let (kind, message) = match outcome {
                                Ok(done) => (
                                    "action_replica_finished",
                                    format!("{what} on replica {replica}: done, {done}"),
                                ),
                                Err(why) => (
                                    "action_replica_failed",
                                    format!("{what} on replica {replica}: failed, {why}"),
                                ),
                            };
                            if let Err(err) = incidents
                                .record_event(id, kind, SELF, &message, now_ms())
                                .await
                            {
                                tracing::error!(incident = id, error = %err, "replica outcome not recorded");
                            }
                        }
                        if replicas.iter().all(|(_, o)| o.is_ok()) {
                            any_done = true;
                            ("action_finished", format!("{what}: done, {summary}"))
                        } else {
                            ("action_failed", format!("{what}: failed, {summary}"))
                        }
                    }
                    Outcome::RateLimited => (
                        "action_skipped",
                        format!("{what}: skipped, it ran on this target too recently"),
                    ),
                    Outcome::DryRun => ("action_skipped", format!("{what}: dry run, not executed")),
                };
                tracing::info!(incident = id, %message, "remediation");
                if let Err(err) = incidents
                    .record_event(id, kind, SELF, &message, now_ms())
                    .await
                {
                    tracing::error!(incident = id, error = %err, "action outcome not recorded");
                }
            }
            if let Err(err) = incidents.finish_remediation(id, term).await {
                tracing::error!(incident = id, error = %err, "remediation not marked done; a next leader runs it again");
            }
            if let (true, Some(mut collector)) = (any_done, collector) {
                let message = measure_effect(&mut collector, &rule, &alert).await;
                if let Err(err) = incidents
                    .record_event(id, "action_effect", SELF, &message, now_ms())
                    .await
                {
                    tracing::error!(incident = id, error = %err, "action effect not recorded");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::change;

    #[test]
    fn changes_are_told_in_percent_of_the_value_before() {
        assert_eq!(change(0.5, 0.03), "-94%");
        assert_eq!(change(2.0, 2.5), "+25%");
        assert_eq!(change(2.0, 2.001), "unchanged");
        assert_eq!(change(0.0, 0.0), "unchanged");
        assert_eq!(change(0.0, 1.0), "changed");
    }
}

//! One evaluation: every rule against the collector, the alerts' transitions recorded as
//! incident writes, notifications grouped, and the drift gauge exported.

use super::*;

/// Exports the PSI each group of a drift rule showed, as the gauge `alert_manager.drift.score`
/// (attributes: the rule, the group's labels, `method`), for dashboards.
fn record_drift(rule: &str, observations: &[evaluator::Observation]) {
    let gauge = opentelemetry::global::meter("alert-manager")
        .f64_gauge("alert_manager.drift.score")
        .with_description("Drift of each drift rule's groups against their baseline (PSI)")
        .build();
    for obs in observations {
        let mut attributes = vec![
            opentelemetry::KeyValue::new("rule", rule.to_owned()),
            opentelemetry::KeyValue::new("method", "psi"),
        ];
        attributes.extend(
            obs.labels
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "rule" | "method"))
                .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
        );
        gauge.record(obs.value, &attributes);
    }
}

impl Engine {
    /// One evaluation cycle (only the leader evaluates).
    pub async fn cycle(&self, client: &mut MetricsQueryClient<Channel>) {
        if !self.is_leader() {
            return;
        }
        self.reload_if_changed();
        let set = self.rule_set();
        let mut transitions = Vec::new();
        let mut all_evaluated = true;
        let active = self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active_rules();
        let readings = evaluator::read_all(client, &set.rules, &active, 0).await;
        let now = now_ms();
        {
            let mut alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            for (rule, reading) in set.rules.iter().zip(readings) {
                match &reading {
                    evaluator::Reading::Observed(observations) => {
                        if matches!(rule.kind, rules::RuleKind::Drift { .. }) {
                            record_drift(&rule.name, observations);
                        }
                    }
                    // Missing data is not a resolution: the rule's alerts keep their state
                    // (and say since when they have no data).
                    evaluator::Reading::NoData(why) => {
                        all_evaluated = false;
                        tracing::warn!(rule = %rule.name, reason = %why, "rule not evaluated: no data");
                    }
                }
                transitions.extend(alerts.take(rule, reading, now));
            }
        }
        let names: HashSet<String> = set.rules.iter().map(|r| r.name.clone()).collect();
        transitions.extend(
            self.alerts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain_rules(&names, now_ms()),
        );
        for transition in transitions {
            self.record(&set, transition);
        }
        if all_evaluated {
            self.settle_restored(&set);
        }
        self.notify(&set);
        // The writer task writes them: evaluation never waits for the database.
        self.writes_ready.notify_one();
        let meter = opentelemetry::global::meter("alert-manager");
        let firing = self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list(false)
            .iter()
            .filter(|a| a.state == evaluator::State::Firing)
            .count();
        meter
            .u64_gauge("alert_manager.alerts.firing")
            .with_description("Alerts firing")
            .build()
            .record(firing as u64, &[]);
        meter
            .u64_gauge("alert_manager.writes.pending")
            .with_description("Incident writes waiting for the database")
            .build()
            .record(self.pending_writes() as u64, &[]);
    }

    /// Queues the notifications that are due.
    fn notify(&self, set: &RuleSet) {
        if set.receivers.is_empty() {
            return;
        }
        let alerts = self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list(true);
        let silences = self
            .silences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Each notification with its group's timing once it is sent (written with it).
        let due: Vec<_> = {
            let mut notifier = self.notifier.lock().unwrap_or_else(|p| p.into_inner());
            let due = notifier.due(set, &alerts, &silences, now_ms());
            due.into_iter()
                .map(|n| {
                    let group = notifier.group(&n.group_key);
                    (n, group)
                })
                .collect()
        };
        let term = self.term();
        for (n, group) in due {
            let outgoing: Vec<Outgoing> = set
                .receivers
                .iter()
                .map(|r| Outgoing {
                    receiver: r.name.clone(),
                    url: r.url.clone(),
                    payload: notify::payload(r, &n),
                })
                .collect();
            self.queue(Write::Notify {
                key: n.group_key,
                outgoing,
                group,
                term,
                at_ms: now_ms(),
            });
        }
    }

    /// Turns a transition into a database write, queued in order.
    fn record(&self, set: &RuleSet, transition: Transition) {
        let now = now_ms();
        let write = match transition {
            Transition::Fired(alert) => {
                let (key, labels) = evaluator::group_key_of(&set.group_by, &alert.labels);
                tracing::warn!(alert = %alert.rule, group = %key, value = alert.value, "alert firing");
                Write::Fired {
                    key,
                    labels,
                    alert,
                    term: self.term(),
                    at_ms: now,
                }
            }
            Transition::Resolved(alert) => {
                let (key, _) = evaluator::group_key_of(&set.group_by, &alert.labels);
                tracing::info!(alert = %alert.rule, group = %key, "alert resolved");
                let still_firing = self
                    .alerts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .group_firing(&set.group_by, &key);
                Write::Resolved {
                    key,
                    alert,
                    still_firing,
                    at_ms: now,
                }
            }
        };
        self.queue(write);
    }

    /// After the first complete evaluation since start: incidents left active by the previous
    /// run whose groups have no pending or firing alert now are resolved.
    fn settle_restored(&self, set: &RuleSet) {
        let Some(restored) = self
            .restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let quiet: Vec<String> = {
            let alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            restored
                .into_iter()
                .filter(|key| !alerts.group_active(&set.group_by, key))
                .collect()
        };
        for key in quiet {
            tracing::info!(group = %key, "an incident of the previous run has no firing alert: resolving it");
            self.queue(Write::Quiet {
                key,
                at_ms: now_ms(),
            });
        }
    }

    /// Reads the silences that have not ended from the database.
    pub async fn refresh_silences(&self) {
        match self.incidents.silences(now_ms(), false).await {
            Ok(silences) => *self.silences.lock().unwrap_or_else(|p| p.into_inner()) = silences,
            Err(err) => tracing::warn!(error = %err, "silences not refreshed"),
        }
    }
}

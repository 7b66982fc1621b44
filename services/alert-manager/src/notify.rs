//! Notifications: which alert groups to notify and when (group wait, group interval, repeat
//! interval; silenced and inhibited alerts left out; an alert counted once per group by its
//! fingerprint), and the payloads receivers get: Alertmanager's webhook JSON version 4, or a
//! PagerDuty Events v2 event.
//!
//! What [`Notifier::due`] decides is written to the outbox table and delivered by
//! [`crate::incidents::IncidentStore::deliver_to_receiver`], at least once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use crate::alert::{Alert, Silence, State, rfc3339};
use crate::evaluator;
use crate::labels::LabelSet;
use crate::rules::{Format, Receiver, RuleSet};

/// Whether `alert` is muted by a firing alert through an inhibit rule.
fn inhibited(set: &RuleSet, alert: &Alert, firing: &[&Alert]) -> bool {
    set.inhibit_rules.iter().any(|rule| {
        crate::labels::matches(&rule.target_matchers, &alert.labels)
            && firing.iter().any(|source| {
                source.fingerprint != alert.fingerprint
                    && crate::labels::matches(&rule.source_matchers, &source.labels)
                    && rule
                        .equal
                        .iter()
                        .all(|l| source.labels.get(l) == alert.labels.get(l))
            })
    })
}

/// A notification to send for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupNotification {
    /// The group's key.
    pub group_key: String,
    /// The group's labels.
    pub group_labels: LabelSet,
    /// `firing` while any alert fires, else `resolved`.
    pub status: &'static str,
    /// The alerts it reports (firing, and those resolved since the last notification).
    pub alerts: Vec<Alert>,
}

/// Notification timing of one group: what a snapshot keeps so that a restart neither waits a
/// group's `group_wait` again nor notifies again what was notified.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupState {
    first_seen_ms: i64,
    last_sent_ms: Option<i64>,
    /// Fingerprints of the firing alerts last notified, sorted.
    last_sent: Vec<String>,
}

/// Notification timing per group.
#[derive(Debug, Default)]
pub struct Notifier {
    groups: HashMap<String, GroupState>,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Notifier {
    /// The timing of every group, for a snapshot of the state.
    pub fn snapshot(&self) -> BTreeMap<String, GroupState> {
        self.groups
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Takes the timing of a snapshot in place of this one.
    pub fn restore(&mut self, groups: BTreeMap<String, GroupState>) {
        self.groups = groups.into_iter().collect();
    }

    /// The timing of one group (`None`: the group has none, as after its resolution was
    /// notified).
    pub fn group(&self, key: &str) -> Option<GroupState> {
        self.groups.get(key).cloned()
    }

    /// The notifications due at `now_ms` for the given alerts (firing and recently resolved).
    pub fn due(
        &mut self,
        set: &RuleSet,
        alerts: &[Alert],
        silences: &[Silence],
        now_ms: i64,
    ) -> Vec<GroupNotification> {
        let firing: Vec<&Alert> = alerts.iter().filter(|a| a.state == State::Firing).collect();
        let mut groups: BTreeMap<String, (LabelSet, Vec<&Alert>)> = BTreeMap::new();
        for alert in alerts {
            let (key, labels) = evaluator::group_key_of(&set.group_by, &alert.labels);
            groups
                .entry(key)
                .or_insert_with(|| (labels, Vec::new()))
                .1
                .push(alert);
        }
        let mut out = Vec::new();
        for (key, (labels, members)) in &groups {
            let active: Vec<&Alert> = members
                .iter()
                .copied()
                .filter(|a| a.state == State::Firing)
                .filter(|a| !silences.iter().any(|s| s.mutes(&a.labels, now_ms)))
                .filter(|a| !inhibited(set, a, &firing))
                .collect();
            let mut fingerprints: Vec<String> =
                active.iter().map(|a| a.fingerprint.clone()).collect();
            fingerprints.sort();
            let state = self.groups.get(key).cloned();
            if active.is_empty() {
                // Everything resolved (or muted): tell the receivers once if they heard of it.
                if let Some(state) = state {
                    if state.last_sent_ms.is_some() && !state.last_sent.is_empty() {
                        let resolved = members
                            .iter()
                            .filter(|a| state.last_sent.contains(&a.fingerprint))
                            .map(|a| (*a).clone())
                            .collect();
                        out.push(GroupNotification {
                            group_key: key.clone(),
                            group_labels: labels.clone(),
                            status: "resolved",
                            alerts: resolved,
                        });
                    }
                    self.groups.remove(key);
                }
                continue;
            }
            let state = state.unwrap_or(GroupState {
                first_seen_ms: now_ms,
                last_sent_ms: None,
                last_sent: Vec::new(),
            });
            let send = match state.last_sent_ms {
                None => now_ms - state.first_seen_ms >= ms(set.route.group_wait.0),
                Some(last) if fingerprints != state.last_sent => {
                    now_ms - last >= ms(set.route.group_interval.0)
                }
                Some(last) => now_ms - last >= ms(set.route.repeat_interval.0),
            };
            let mut state = state;
            if send {
                let mut reported: Vec<Alert> = active.iter().map(|a| (*a).clone()).collect();
                reported.extend(
                    members
                        .iter()
                        .filter(|a| {
                            a.state == State::Resolved && state.last_sent.contains(&a.fingerprint)
                        })
                        .map(|a| (*a).clone()),
                );
                out.push(GroupNotification {
                    group_key: key.clone(),
                    group_labels: labels.clone(),
                    status: "firing",
                    alerts: reported,
                });
                state.last_sent_ms = Some(now_ms);
                state.last_sent = fingerprints;
            }
            self.groups.insert(key.clone(), state);
        }
        // Groups whose alerts are all gone (forgotten after resolution) without a notification.
        self.groups.retain(|key, _| groups.contains_key(key));
        out
    }
}

fn common(maps: &[&LabelSet]) -> LabelSet {
    let Some(first) = maps.first() else {
        return LabelSet::new();
    };
    first
        .iter()
        .filter(|(k, v)| maps.iter().all(|m| m.get(*k) == Some(v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Alertmanager's webhook payload, version 4.
pub fn alertmanager_v4(receiver: &str, n: &GroupNotification) -> Value {
    let labels: Vec<&LabelSet> = n.alerts.iter().map(|a| &a.labels).collect();
    let annotations: Vec<&LabelSet> = n.alerts.iter().map(|a| &a.annotations).collect();
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": receiver,
        "groupLabels": n.group_labels,
        "commonLabels": common(&labels),
        "commonAnnotations": common(&annotations),
        "externalURL": "",
        "alerts": n.alerts.iter().map(|a| json!({
            "status": if a.state == State::Resolved { "resolved" } else { "firing" },
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.fired_at_ms.max(a.active_since_ms)),
            "endsAt": rfc3339(a.resolved_at_ms),
            "generatorURL": "",
            "fingerprint": a.fingerprint,
        })).collect::<Vec<_>>(),
    })
}

/// A PagerDuty Events v2 event (trigger or resolve), deduplicated by the group key.
pub fn pagerduty_v2(routing_key: &str, n: &GroupNotification) -> Value {
    let first = n.alerts.first();
    let severity = match first.map_or("", |a| a.severity()) {
        "critical" | "page" => "critical",
        "error" | "high" => "error",
        "warning" | "ticket" => "warning",
        _ => "info",
    };
    let summary = first
        .and_then(|a| a.annotations.get("summary").cloned())
        .unwrap_or_else(|| n.group_key.clone());
    json!({
        "routing_key": routing_key,
        "event_action": if n.status == "firing" { "trigger" } else { "resolve" },
        "dedup_key": n.group_key,
        "payload": {
            "summary": summary,
            "source": "alert-manager",
            "severity": severity,
            "timestamp": rfc3339(first.map_or(0, |a| a.fired_at_ms)),
            "custom_details": {
                "group_labels": n.group_labels,
                "alerts": n.alerts.iter().map(|a| json!({
                    "labels": a.labels,
                    "value": a.value,
                    "fingerprint": a.fingerprint,
                })).collect::<Vec<_>>(),
            },
        },
    })
}

/// The payload of `n` for `receiver`.
pub fn payload(receiver: &Receiver, n: &GroupNotification) -> Value {
    match receiver.format {
        Format::Alertmanager => alertmanager_v4(&receiver.name, n),
        Format::Pagerduty => pagerduty_v2(receiver.routing_key.as_deref().unwrap_or(""), n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::InhibitRule;

    fn alert(name: &str, model: &str, severity: &str, state: State) -> Alert {
        let labels = LabelSet::from([
            ("alertname".to_owned(), name.to_owned()),
            ("model".to_owned(), model.to_owned()),
            ("severity".to_owned(), severity.to_owned()),
        ]);
        Alert {
            rule: name.into(),
            fingerprint: crate::alert::fingerprint(&labels),
            labels,
            annotations: LabelSet::from([("summary".to_owned(), format!("{name} {model}"))]),
            state,
            value: 1.0,
            active_since_ms: 1,
            fired_at_ms: 1,
            resolved_at_ms: 0,
            last_held_ms: 1,
            no_data_since_ms: 0,
            no_data_reason: String::new(),
            data_back_at_ms: 0,
            data_back_grace_until_ms: 0,
        }
    }

    fn set() -> RuleSet {
        RuleSet {
            group_by: vec!["alertname".into(), "model".into()],
            ..RuleSet::default()
        }
    }

    #[test]
    fn one_notification_per_group_then_repeat_then_resolved() {
        let mut set = set();
        set.route.group_wait = crate::rules::Span(Duration::from_secs(1));
        let mut notifier = Notifier::default();
        let a = alert("Errors", "m1", "critical", State::Firing);
        assert!(
            notifier
                .due(&set, std::slice::from_ref(&a), &[], 0)
                .is_empty()
        );
        let sent = notifier.due(&set, std::slice::from_ref(&a), &[], 1000);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, "firing");
        // Unchanged: nothing until the repeat interval (4 h).
        assert!(
            notifier
                .due(&set, std::slice::from_ref(&a), &[], 2000)
                .is_empty()
        );
        assert_eq!(
            notifier
                .due(&set, std::slice::from_ref(&a), &[], 4 * 3_600_000 + 1000)
                .len(),
            1
        );
        // Resolved: one resolved notification, then nothing.
        let mut r = a.clone();
        r.state = State::Resolved;
        r.resolved_at_ms = 5;
        let sent = notifier.due(&set, std::slice::from_ref(&r), &[], 4 * 3_600_000 + 2000);
        assert_eq!(sent[0].status, "resolved");
        assert!(
            notifier
                .due(&set, &[r], &[], 4 * 3_600_000 + 3000)
                .is_empty()
        );
    }

    #[test]
    fn silences_and_inhibitions_mute() {
        let mut set = set();
        set.inhibit_rules = vec![InhibitRule {
            source_matchers: BTreeMap::from([("severity".to_owned(), "critical".to_owned())]),
            target_matchers: BTreeMap::from([("severity".to_owned(), "warning".to_owned())]),
            equal: vec!["model".into()],
        }];
        let critical = alert("Down", "m1", "critical", State::Firing);
        let warning_same = alert("Slow", "m1", "warning", State::Firing);
        let warning_other = alert("Slow", "m2", "warning", State::Firing);
        let silence = Silence {
            id: 1,
            matchers: BTreeMap::from([("alertname".to_owned(), "Down".to_owned())]),
            starts_at_ms: 0,
            ends_at_ms: 10_000,
            author: "ops".into(),
            comment: "maintenance".into(),
        };
        let mut notifier = Notifier::default();
        let sent = notifier.due(
            &set,
            &[critical, warning_same, warning_other],
            &[silence],
            100,
        );
        // Down is silenced, Slow/m1 inhibited by Down (still firing), Slow/m2 notified.
        let keys: Vec<&str> = sent.iter().map(|n| n.group_key.as_str()).collect();
        assert_eq!(keys, ["alertname=Slow,model=m2"]);
    }

    #[test]
    fn payloads_have_the_receivers_shapes() {
        let n = GroupNotification {
            group_key: "alertname=Errors,model=m1".into(),
            group_labels: LabelSet::from([("model".to_owned(), "m1".to_owned())]),
            status: "firing",
            alerts: vec![alert("Errors", "m1", "critical", State::Firing)],
        };
        let v4 = alertmanager_v4("ops", &n);
        assert_eq!(v4["version"], "4");
        assert_eq!(v4["alerts"][0]["status"], "firing");
        assert_eq!(v4["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(v4["commonLabels"]["model"], "m1");
        let pd = pagerduty_v2("key", &n);
        assert_eq!(pd["event_action"], "trigger");
        assert_eq!(pd["payload"]["severity"], "critical");
        assert_eq!(pd["dedup_key"], "alertname=Errors,model=m1");
    }
}

//! What the alert manager's modules share about an alert: the alert itself, its state and
//! the transitions recorded as incident events, its identity, the remediation actions a rule
//! attaches to it, and the silences that mute it. It imports nothing of the crate but the label sets ([`crate::labels`],
//! a leaf too), so every module can use these types without depending on the evaluator, the
//! rules or the action runner.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::labels::LabelSet;

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// Holding, for less than `for`.
    Pending,
    /// Fired.
    Firing,
    /// Fired, then stopped.
    Resolved,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    /// The rule's name.
    pub rule: String,
    /// Labels: the group's, the rule's, and `alertname`.
    pub labels: LabelSet,
    /// Annotations, rendered.
    pub annotations: LabelSet,
    /// State.
    pub state: State,
    /// Last value.
    pub value: f64,
    /// When the condition started to hold, Unix ms; while pending, moved later by any time
    /// its rule had no data, so that `for` counts only time with data.
    pub active_since_ms: i64,
    /// When it fired, Unix ms (0 if not).
    pub fired_at_ms: i64,
    /// When it resolved, Unix ms (0 if not).
    pub resolved_at_ms: i64,
    /// When the condition last held, Unix ms; while firing, moved later by any time its rule
    /// had no data, so that `keep_firing_for` counts only time with data.
    pub last_held_ms: i64,
    /// Identity: a digest of the labels.
    pub fingerprint: String,
    /// Since when its rule has had no data, Unix ms (0 while data comes): the collector did not
    /// answer, or answered nothing while holding none of the series the rule reads (it
    /// restarted without them). The alert keeps its state meanwhile (see
    /// [`crate::evaluator::Alerts::take`]).
    #[serde(default)]
    pub no_data_since_ms: i64,
    /// Why its rule has no data, as last told (empty while data comes).
    #[serde(default)]
    pub no_data_reason: String,
    /// When its rule had data again after a spell without, Unix ms (0 outside the grace that
    /// follows): for one window of the rule after that, the first answers may still read the
    /// gap (an empty window before the senders export again, a rate over a window that
    /// covers it), so the alert is neither resolved nor forgotten on them (see
    /// [`crate::evaluator::Alerts::take`]). Saved with the state, like `no_data_since_ms`.
    #[serde(default)]
    pub data_back_at_ms: i64,
    /// Until when that grace lasts, Unix ms (0 outside it): `data_back_at_ms` plus the rule's
    /// longest window ([`crate::evaluator::data_back_grace`]).
    #[serde(default)]
    pub data_back_grace_until_ms: i64,
}

impl Alert {
    /// The `severity` label, or empty.
    pub fn severity(&self) -> &str {
        self.labels.get("severity").map_or("", String::as_str)
    }

    /// The state in words, for people: `firing`, `pending`, `resolved`; while its rule has no
    /// data `firing; no data since 2025-06-01T12:00:00.000Z (UNAVAILABLE: …)`; and for a
    /// window after data returns `firing; data back since 2025-06-01T12:05:00.000Z, resolving
    /// waits for a full window until 2025-06-01T12:10:00.000Z`.
    pub fn state_text(&self) -> String {
        let state = match self.state {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        };
        if self.no_data_since_ms <= 0 {
            if self.data_back_grace_until_ms > 0 && self.state != State::Resolved {
                return format!(
                    "{state}; data back since {}, resolving waits for a full window until {}",
                    rfc3339(self.data_back_at_ms),
                    rfc3339(self.data_back_grace_until_ms)
                );
            }
            return state.to_owned();
        }
        let since = rfc3339(self.no_data_since_ms);
        if self.no_data_reason.is_empty() {
            format!("{state}; no data since {since}")
        } else {
            format!("{state}; no data since {since} ({})", self.no_data_reason)
        }
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`0001-01-01T00:00:00Z` for 0, the
/// zero time of Alertmanager's payloads).
pub fn rfc3339(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "0001-01-01T00:00:00Z".to_owned();
    }
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms as u64),
    )
    .to_string()
}

/// A change that incidents record.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The alert started firing.
    Fired(Alert),
    /// The alert stopped firing.
    Resolved(Alert),
}

/// A digest of a label set: the identity of an alert.
pub fn fingerprint(labels: &LabelSet) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in labels {
        hasher.update(k.as_bytes());
        hasher.update([0xff]);
        hasher.update(v.as_bytes());
        hasher.update([0xfe]);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One action of a rule (its fields are templated with the alert's labels).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    /// Sets a model version's weight in the gateway's canary split (0 takes it out; taking out
    /// the last version with traffic brings back the split that served before it, from the
    /// gateways' deployment timeline).
    SetCanaryWeight {
        /// Model, e.g. `"{{ $labels.model }}"`.
        model: String,
        /// Version, e.g. `"{{ $labels.model_version }}"`.
        version: String,
        /// The new weight.
        #[serde(default)]
        weight: u32,
    },
    /// Gives a version of a canary split all the traffic (every other version weight 0).
    PromoteCanary {
        /// Model, e.g. `"{{ $labels.model }}"`.
        model: String,
        /// Version, e.g. `"{{ $labels.model_version }}"`.
        version: String,
    },
    /// Loads (or reloads) a model on the inference service.
    ReloadModel {
        /// Model.
        model: String,
    },
    /// Unloads a model from the inference service.
    UnloadModel {
        /// Model.
        model: String,
    },
    /// POSTs the alert's labels as JSON to a URL.
    Webhook {
        /// `http://…`
        url: String,
    },
}

impl ActionSpec {
    /// A short description with the labels filled in.
    pub fn describe(&self, labels: &LabelSet) -> String {
        let r = |t: &str| crate::labels::render(t, labels, 0.0);
        match self {
            ActionSpec::SetCanaryWeight {
                model,
                version,
                weight,
            } => format!(
                "set canary weight of {} v{} to {weight}",
                r(model),
                r(version)
            ),
            ActionSpec::PromoteCanary { model, version } => {
                format!("promote {} v{} to all traffic", r(model), r(version))
            }
            ActionSpec::ReloadModel { model } => format!("reload model {}", r(model)),
            ActionSpec::UnloadModel { model } => format!("unload model {}", r(model)),
            ActionSpec::Webhook { url } => format!("call webhook {url}"),
        }
    }
}

/// A silence: matching alerts are not notified between its start and end.
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    /// Id.
    pub id: i64,
    /// Matchers (`value`, `!=value`, `=~regex`, `!~regex`).
    pub matchers: BTreeMap<String, String>,
    /// Start, Unix ms.
    pub starts_at_ms: i64,
    /// End, Unix ms.
    pub ends_at_ms: i64,
    /// Who made it.
    pub author: String,
    /// Why.
    pub comment: String,
}

impl Silence {
    /// Whether it mutes `labels` at `now_ms`.
    pub fn mutes(&self, labels: &LabelSet, now_ms: i64) -> bool {
        self.starts_at_ms <= now_ms
            && now_ms < self.ends_at_ms
            && crate::labels::matches(&self.matchers, labels)
    }
}

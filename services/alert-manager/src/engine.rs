//! The evaluation loop: every interval, re-reads the rules files if they changed, evaluates every
//! rule against the collector, applies the observations to the alerts, and records what fired and
//! resolved as incident events.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
use tonic::transport::Channel;

use crate::actions::{ActionRunner, Outcome};
use crate::evaluator::{self, Alerts, Transition};
use crate::incidents::{IncidentStore, Outgoing, SELF_ACTOR as SELF};
use crate::notify::{self, Notifier, Silence};
use crate::rules::{self, RuleSet};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The rules in force and how they were loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadedRules {
    /// The rules.
    pub set: RuleSet,
    /// When they were loaded, Unix ms.
    pub loaded_at_ms: i64,
    /// Why the files on disk were refused at the last attempt (the rules above stay in force).
    pub last_error: Option<String>,
    /// Modification times of the files when last read.
    stamp: Vec<(PathBuf, Option<SystemTime>)>,
}

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

/// How often the open incidents are counted for the `alert_manager.incidents.open` gauge.
const COUNT_OPEN_EVERY: Duration = Duration::from_secs(5);

/// Least time between two evaluations triggered by new data.
const PUSH_DEBOUNCE: Duration = Duration::from_millis(20);

/// Follows the collector's stream of updated metrics and wakes the evaluation loop on each
/// (reconnecting after a second when the stream breaks), until `stop`.
async fn watch(
    mut client: MetricsQueryClient<Channel>,
    arrived: Arc<tokio::sync::Notify>,
    stop: shared::shutdown::Shutdown,
) {
    let mut stopped = std::pin::pin!(stop.wait());
    loop {
        let stream = tokio::select! {
            stream = client.watch(proto::monitoring::metrics::v1::WatchRequest {}) => stream,
            () = &mut stopped => return,
        };
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            loop {
                tokio::select! {
                    update = stream.message() => match update {
                        Ok(Some(_)) => arrived.notify_one(),
                        _ => break,
                    },
                    () = &mut stopped => return,
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut stopped => return,
        }
    }
}

/// Most database writes waiting while the database is unreachable (an alert storm of an hour
/// fits); beyond, the oldest are dropped and counted.
const MAX_PENDING_WRITES: usize = 100_000;

/// A change waiting to be written to the database, with the time it happened.
#[derive(Debug, Clone)]
pub enum Write {
    /// An alert fired.
    Fired {
        /// Its group.
        key: String,
        /// The group's labels.
        labels: crate::labels::LabelSet,
        /// The alert.
        alert: evaluator::Alert,
        /// When.
        at_ms: i64,
    },
    /// An alert resolved.
    Resolved {
        /// Its group.
        key: String,
        /// The alert.
        alert: evaluator::Alert,
        /// Whether another alert of the group still fired then.
        still_firing: bool,
        /// When.
        at_ms: i64,
    },
    /// An incident active before a restart whose alerts no longer fire.
    Quiet {
        /// Its group.
        key: String,
        /// When.
        at_ms: i64,
    },
    /// Notifications to put in the outbox.
    Notify {
        /// The group.
        key: String,
        /// One per receiver.
        outgoing: Vec<Outgoing>,
        /// When.
        at_ms: i64,
    },
}

/// What is saved of the evaluation state: every alert with its timers, and each group's
/// notification timing.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EngineState {
    /// Every alert.
    pub alerts: Vec<evaluator::Alert>,
    /// Notification timing per group key.
    pub groups: std::collections::BTreeMap<String, notify::GroupState>,
}

/// When the evaluation state was last saved, and a digest of what was saved.
#[derive(Debug, Default)]
pub struct Saved {
    digest: u64,
    at: Option<tokio::time::Instant>,
}

/// How often the state is saved while alerts are active even when no timer changed (their
/// `keep_firing_for` clocks and values move on).
const SAVE_ACTIVE_EVERY: Duration = Duration::from_secs(10);

/// Shared state of the engine and the API.
pub struct Engine {
    /// Rules files or folders.
    pub paths: Vec<PathBuf>,
    /// The rules in force.
    pub rules: Mutex<LoadedRules>,
    /// Every alert.
    pub alerts: Mutex<Alerts>,
    /// Incidents.
    pub incidents: IncidentStore,
    /// Resolve incidents when their alerts resolve.
    pub auto_resolve: bool,
    /// Rule loads refused so far.
    pub reload_failures: std::sync::atomic::AtomicU64,
    /// Notification timing per group.
    pub notifier: Mutex<Notifier>,
    /// Silences not yet ended, as last read from the database.
    pub silences: Mutex<Vec<Silence>>,
    /// Wakes the delivery worker when notifications were queued.
    pub outbox_ready: tokio::sync::Notify,
    /// The collector client (set by [`Engine::run`]), for diagnosis reports.
    pub collector: Mutex<Option<MetricsQueryClient<Channel>>>,
    /// Database writes waiting, oldest first.
    pub pending: Mutex<std::collections::VecDeque<Write>>,
    /// Writes dropped because the queue was full.
    pub dropped_writes: std::sync::atomic::AtomicU64,
    /// Whether the last write failed for want of the database.
    pub database_down: std::sync::atomic::AtomicBool,
    /// Group keys of the incidents active at start, until the first complete evaluation.
    pub restored: Mutex<Option<HashSet<String>>>,
    /// Runs remediation actions.
    pub actions: Arc<ActionRunner>,
    /// Wakes the writer task when writes were queued.
    pub writes_ready: tokio::sync::Notify,
    /// Whether this replica leads: evaluates, records and notifies (see [`crate::leader`]).
    pub leader: std::sync::atomic::AtomicBool,
    /// The last save of the evaluation state.
    pub saved: Mutex<Saved>,
    /// A saved state older than this is not restored (its `for` timers would be stale).
    pub state_max_age_ms: i64,
}

fn stamp(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    rules::files(paths)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, modified)
        })
        .collect()
}

impl Engine {
    /// Loads the rules now. On error the rules in force stay, and the error is kept (and
    /// returned).
    pub fn reload(&self) -> Result<usize, String> {
        let stamp = stamp(&self.paths);
        let mut loaded = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        loaded.stamp = stamp;
        match rules::load(&self.paths) {
            Ok(set) => {
                let n = set.rules.len();
                tracing::info!(rules = n, "rules loaded");
                loaded.set = set;
                loaded.loaded_at_ms = now_ms();
                loaded.last_error = None;
                Ok(n)
            }
            Err(err) => {
                self.reload_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                opentelemetry::global::meter("alert-manager")
                    .u64_counter("alert_manager.rules.load_failures")
                    .with_description("Rules files refused (the previous rules stayed in force)")
                    .build()
                    .add(1, &[]);
                tracing::error!(error = %err, "rules refused; the previous rules stay in force");
                loaded.last_error = Some(err.0.clone());
                Err(err.0)
            }
        }
    }

    /// Reloads when a rules file changed, appeared or disappeared since the last load.
    fn reload_if_changed(&self) {
        let changed = {
            let loaded = self.rules.lock().unwrap_or_else(|p| p.into_inner());
            loaded.stamp != stamp(&self.paths)
        };
        if changed {
            let _ = self.reload();
        }
    }

    /// The rules in force.
    fn rule_set(&self) -> RuleSet {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .clone()
    }

    /// The collector client, once the evaluation loop has set it.
    fn collector_client(&self) -> Option<MetricsQueryClient<Channel>> {
        self.collector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Becomes the leader: restores the alerts, their timers and the notification timing saved
    /// by the previous leader (or the previous run), and the incidents it left active.
    ///
    /// A leader that only lost its lock's connection for a while (the database restarted, say)
    /// and got the lock back keeps what it has in memory: it is newer than what was saved.
    pub async fn take_lead(&self) -> Result<(), crate::incidents::IncidentError> {
        if self.is_leader() {
            tracing::info!("the lead's lock is held again; leading on");
            return Ok(());
        }
        let active = self.incidents.active_groups().await?;
        let saved = self.incidents.load_state().await?;
        let now = now_ms();
        let mut state = EngineState::default();
        match saved {
            Some((value, saved_at)) if now - saved_at <= self.state_max_age_ms => {
                match serde_json::from_value::<EngineState>(value) {
                    Ok(read) => state = read,
                    Err(err) => {
                        tracing::warn!(error = %err, "the saved evaluation state is unreadable; starting afresh")
                    }
                }
            }
            Some((_, saved_at)) => tracing::info!(
                age_s = (now - saved_at) / 1000,
                "the saved evaluation state is too old to restore; starting afresh"
            ),
            None => {}
        }
        tracing::info!(
            alerts = state.alerts.len(),
            groups = state.groups.len(),
            active_incidents = active.len(),
            "leading: evaluation state restored"
        );
        {
            let mut alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            alerts.restore(state.alerts);
            let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            saved.digest = self.state_digest(&alerts);
            saved.at = Some(tokio::time::Instant::now());
        }
        self.notifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(state.groups);
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(active.into_iter().collect());
        self.leader
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The alerts as this replica knows them: its own when it leads (it evaluates), else the
    /// leader's last saved state (a follower does not evaluate).
    pub async fn current_alerts(
        &self,
        include_resolved: bool,
    ) -> Result<Vec<evaluator::Alert>, crate::incidents::IncidentError> {
        if self.is_leader() {
            return Ok(self
                .alerts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .list(include_resolved));
        }
        Ok(self.saved_alerts().await?.list(include_resolved))
    }

    /// The alerts of the state the leader saved last (for a follower's API).
    pub async fn saved_alerts(&self) -> Result<Alerts, crate::incidents::IncidentError> {
        let mut alerts = Alerts::default();
        if let Some((value, _)) = self.incidents.load_state().await?
            && let Ok(state) = serde_json::from_value::<EngineState>(value)
        {
            alerts.restore(state.alerts);
        }
        Ok(alerts)
    }

    /// Another replica leads: stops evaluating, and leaves it the queued writes (it records
    /// what it sees itself).
    pub fn step_down(&self) {
        if !self.leader.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let dropped = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let n = pending.len();
            pending.clear();
            n
        };
        *self.alerts.lock().unwrap_or_else(|p| p.into_inner()) = Alerts::default();
        *self.notifier.lock().unwrap_or_else(|p| p.into_inner()) = Notifier::default();
        tracing::warn!(
            queued_writes = dropped,
            "another replica took the lead: stepping down"
        );
    }

    fn state_digest(&self, alerts: &Alerts) -> u64 {
        use std::hash::{Hash, Hasher};
        let groups = self
            .notifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        alerts.timers_digest().hash(&mut hasher);
        serde_json::to_string(&groups)
            .unwrap_or_default()
            .hash(&mut hasher);
        hasher.finish()
    }

    /// Saves the evaluation state when a timer changed since the last save (or every
    /// [`SAVE_ACTIVE_EVERY`] while alerts are active, or when `force`d), once the queued writes
    /// are in: the saved state never runs ahead of the incidents.
    pub async fn save_state(&self, force: bool) {
        if !self.is_leader() || self.pending_writes() > 0 {
            return;
        }
        let (digest, state) = {
            let alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            let digest = self.state_digest(&alerts);
            let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            let active = alerts.any_active();
            let stale = saved.at.is_none_or(|at| at.elapsed() >= SAVE_ACTIVE_EVERY);
            if !force && digest == saved.digest && !(active && stale) {
                return;
            }
            let state = EngineState {
                alerts: alerts.snapshot(),
                groups: self
                    .notifier
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .snapshot(),
            };
            (digest, state)
        };
        let value = serde_json::to_value(&state).unwrap_or_default();
        match self.incidents.save_state(&value, now_ms()).await {
            Ok(()) => {
                let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
                saved.digest = digest;
                saved.at = Some(tokio::time::Instant::now());
            }
            Err(err) => tracing::debug!(error = %err, "evaluation state not saved; trying again"),
        }
    }

    /// One evaluation cycle (only the leader evaluates).
    pub async fn cycle(&self, client: &mut MetricsQueryClient<Channel>) {
        if !self.is_leader() {
            return;
        }
        self.reload_if_changed();
        let set = self.rule_set();
        let mut transitions = Vec::new();
        let mut all_evaluated = true;
        let observed = evaluator::observe_all(client, &set.rules, 0).await;
        let now = now_ms();
        {
            let mut alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            for (rule, result) in set.rules.iter().zip(observed) {
                match result {
                    Ok(observations) => {
                        if matches!(rule.kind, rules::RuleKind::Drift { .. }) {
                            record_drift(&rule.name, &observations);
                        }
                        transitions.extend(alerts.apply(rule, observations, now));
                    }
                    // Unknown data is not a resolution: the rule's alerts stay as they are.
                    Err(why) => {
                        all_evaluated = false;
                        tracing::warn!(rule = %rule.name, reason = %why, "rule not evaluated");
                    }
                }
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

    /// Writes the diagnosis report of a new incident in the background (it queries the
    /// collector for a few dozen signals; the incident is already recorded).
    fn spawn_diagnosis(&self, set: &RuleSet, id: i64, alert: evaluator::Alert) {
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

    /// Runs the rule's remediation actions for a new incident, in order, each recorded on the
    /// timeline with its outcome.
    fn spawn_actions(&self, set: &RuleSet, id: i64, alert: evaluator::Alert) {
        let Some(rule) = set.rules.iter().find(|r| r.name == alert.rule).cloned() else {
            return;
        };
        if rule.actions.is_empty() {
            return;
        }
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

    /// Reads the silences that have not ended from the database.
    pub async fn refresh_silences(&self) {
        match self.incidents.silences(now_ms(), false).await {
            Ok(silences) => *self.silences.lock().unwrap_or_else(|p| p.into_inner()) = silences,
            Err(err) => tracing::warn!(error = %err, "silences not refreshed"),
        }
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
        let due = self.notifier.lock().unwrap_or_else(|p| p.into_inner()).due(
            set,
            &alerts,
            &silences,
            now_ms(),
        );
        for n in due {
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
                at_ms: now_ms(),
            });
        }
    }

    /// Writes queued changes until `stop`: at once when some are queued, and every 500 ms while
    /// the database is unreachable. A last flush runs at shutdown.
    pub async fn write(self: Arc<Self>, stop: shared::shutdown::Shutdown) {
        let mut stopped = std::pin::pin!(stop.wait());
        let mut counted = tokio::time::Instant::now();
        let mut severities = std::collections::BTreeSet::new();
        loop {
            self.flush().await;
            self.save_state(false).await;
            if counted.elapsed() >= COUNT_OPEN_EVERY && self.is_leader() {
                counted = tokio::time::Instant::now();
                self.export_open_incidents(&mut severities).await;
            }
            tokio::select! {
                () = self.writes_ready.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = &mut stopped => break,
            }
        }
        self.flush().await;
        self.save_state(true).await;
    }

    /// Exports the open incidents per severity as the gauge `alert_manager.incidents.open`
    /// (severities seen before and now without incidents read 0).
    async fn export_open_incidents(&self, severities: &mut std::collections::BTreeSet<String>) {
        let Ok(open) = self.incidents.open_by_severity().await else {
            return;
        };
        let gauge = opentelemetry::global::meter("alert-manager")
            .u64_gauge("alert_manager.incidents.open")
            .with_description("Incidents open or acknowledged, per severity")
            .build();
        let now: std::collections::BTreeMap<String, i64> = open.into_iter().collect();
        // Bounded: severities are the rules' labels.
        severities.extend(now.keys().cloned());
        for severity in severities.iter() {
            let n = now.get(severity).copied().unwrap_or(0).max(0) as u64;
            gauge.record(
                n,
                &[opentelemetry::KeyValue::new("severity", severity.clone())],
            );
        }
    }

    /// Delivers queued notifications until `stop`: at once when some are queued, and every
    /// 250 ms for retries.
    pub async fn deliver(self: Arc<Self>, stop: shared::shutdown::Shutdown) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let mut stopped = std::pin::pin!(stop.wait());
        let mut silences_read = tokio::time::Instant::now();
        loop {
            // Only the leader delivers: two replicas never send one notification twice.
            if self.is_leader()
                && let Err(err) = self.incidents.deliver_pending(&http, now_ms()).await
            {
                tracing::warn!(error = %err, "outbox not read");
            }
            if silences_read.elapsed() > Duration::from_secs(10) {
                self.refresh_silences().await;
                silences_read = tokio::time::Instant::now();
            }
            tokio::select! {
                () = self.outbox_ready.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = &mut stopped => return,
            }
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

    /// Queues a write; when the queue is full the oldest write is dropped and counted.
    fn queue(&self, write: Write) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING_WRITES {
            pending.pop_front();
            self.dropped_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("the queue of incident writes is full: the oldest was dropped");
        }
        pending.push_back(write);
    }

    /// Writes queued changes to the database in order; stops at the first failure (the
    /// database is unreachable) and keeps the rest for the next cycle.
    pub async fn flush(&self) {
        let set = self.rule_set();
        let set = &set;
        loop {
            let Some(write) = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned()
            else {
                if self
                    .database_down
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!("incident database reachable again; queued writes flushed");
                }
                return;
            };
            let result = match &write {
                Write::Fired {
                    key,
                    labels,
                    alert,
                    at_ms,
                } => match self.incidents.alert_fired(key, labels, alert, *at_ms).await {
                    Ok((id, true)) => {
                        self.spawn_diagnosis(set, id, alert.clone());
                        self.spawn_actions(set, id, alert.clone());
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(err) => Err(err),
                },
                Write::Resolved {
                    key,
                    alert,
                    still_firing,
                    at_ms,
                } => self
                    .incidents
                    .alert_resolved(key, alert, *still_firing, self.auto_resolve, *at_ms)
                    .await
                    .map(|_| ()),
                Write::Quiet { key, at_ms } => {
                    self.incidents
                        .resolve_quiet_group(key, self.auto_resolve, *at_ms)
                        .await
                }
                Write::Notify {
                    key,
                    outgoing,
                    at_ms,
                } => self
                    .incidents
                    .enqueue(key, outgoing, *at_ms)
                    .await
                    .map(|()| {
                        self.outbox_ready.notify_one();
                    }),
            };
            match result {
                Ok(()) => {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                }
                Err(crate::incidents::IncidentError::Database(err)) => {
                    if !self
                        .database_down
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::error!(error = %err, "incident database unreachable: writes wait in order until it returns");
                    }
                    return;
                }
                Err(err) => {
                    // Not the database's availability: this write can never succeed.
                    tracing::error!(error = %err, "incident write refused; dropped");
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                }
            }
        }
    }

    /// Writes waiting for the database.
    pub fn pending_writes(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Evaluates every `interval` until `stop`.
    pub async fn run(
        self: Arc<Self>,
        mut client: MetricsQueryClient<Channel>,
        interval: Duration,
        stop: shared::shutdown::Shutdown,
    ) {
        *self.collector.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        let arrived = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch(client.clone(), arrived.clone(), stop.clone()));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopped = std::pin::pin!(stop.wait());
        loop {
            tokio::select! {
                _ = ticker.tick() => self.cycle(&mut client).await,
                // New data: evaluate now rather than at the next tick.
                () = arrived.notified() => {
                    self.cycle(&mut client).await;
                    // At most one extra cycle per PUSH_DEBOUNCE, however many senders export.
                    tokio::time::sleep(PUSH_DEBOUNCE).await;
                }
                () = &mut stopped => break,
            }
        }
        let _ = watcher.await;
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

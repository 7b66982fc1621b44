//! The alert manager's engine: the rules in force and the state every part of it shares.
//! Each concern has its module: [`evaluation`] (the loop's work: rules against the collector,
//! transitions, notifications), [`watch`] (the collector's stream of new data, which wakes the
//! loop), [`writes`] (the database write queue), [`outbox`] (delivery of notifications),
//! [`leadership`] (one replica leads; the saved state) and [`remediation`] (diagnosis, actions
//! and their effect). This module holds the loop itself and rule reloads.

mod evaluation;
mod leadership;
mod outbox;
mod remediation;
mod watch;
mod writes;

pub use leadership::{EngineState, Saved};
use watch::{PUSH_DEBOUNCE, watch};
pub use writes::Write;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
use tonic::transport::Channel;

use crate::actions::{ActionRunner, Outcome};
use crate::alert::Silence;
use crate::evaluator::{self, Alerts, Transition};
use crate::incidents::{IncidentStore, Outgoing, SELF_ACTOR as SELF};
use crate::notify::{self, Notifier};
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

/// Shared state of the engine and the API.
pub struct Engine {
    /// Rules files or folders.
    paths: Vec<PathBuf>,
    /// The rules in force.
    rules: Mutex<LoadedRules>,
    /// Every alert.
    alerts: Mutex<Alerts>,
    /// Incidents.
    incidents: IncidentStore,
    /// Resolve incidents when their alerts resolve.
    auto_resolve: bool,
    /// Rule loads refused so far.
    reload_failures: std::sync::atomic::AtomicU64,
    /// Notification timing per group.
    notifier: Mutex<Notifier>,
    /// Silences not yet ended, as last read from the database.
    silences: Mutex<Vec<Silence>>,
    /// Wakes the delivery worker when notifications were queued.
    outbox_ready: tokio::sync::Notify,
    /// The collector client (set by [`Engine::run`]), for diagnosis reports.
    collector: Mutex<Option<MetricsQueryClient<Channel>>>,
    /// Database writes waiting, oldest first.
    pending: Mutex<writes::Queue>,
    /// Writes refused because the queue was full.
    refused_writes: std::sync::atomic::AtomicU64,
    /// Writes the database refused for their content, set aside.
    quarantined_writes: std::sync::atomic::AtomicU64,
    /// Whether the last write failed for want of the database.
    database_down: std::sync::atomic::AtomicBool,
    /// Group keys of the incidents active at start, until the first complete evaluation.
    restored: Mutex<Option<HashSet<String>>>,
    /// Runs remediation actions.
    actions: Arc<ActionRunner>,
    /// Wakes the writer task when writes were queued.
    writes_ready: tokio::sync::Notify,
    /// Whether this replica leads: evaluates, records and notifies (see [`crate::leader`]).
    leader: std::sync::atomic::AtomicBool,
    /// Whether a remediation was written since the leader last looked for some to run.
    remediations_due: std::sync::atomic::AtomicBool,
    /// The leadership term this replica took when it last took the lead (0: never): what it
    /// decided is written only while the term is the current one.
    term: std::sync::atomic::AtomicI64,
    /// The last save of the evaluation state.
    saved: Mutex<Saved>,
    /// A saved state older than this is not restored (its `for` timers would be stale).
    state_max_age_ms: i64,
}

/// What an [`Engine`] is made of, besides its database and its action runner.
pub struct EngineConfig {
    /// Rules files or folders.
    pub paths: Vec<PathBuf>,
    /// Resolve incidents when their alerts resolve.
    pub auto_resolve: bool,
    /// A saved state older than this, in ms, is not restored (its `for` timers would be stale).
    pub state_max_age_ms: i64,
}

impl Engine {
    /// An engine with no rules loaded yet (see [`Engine::reload`]), following no leader yet.
    pub fn new(config: EngineConfig, incidents: IncidentStore, actions: ActionRunner) -> Engine {
        Engine {
            paths: config.paths,
            rules: Mutex::new(LoadedRules::default()),
            alerts: Mutex::new(Alerts::default()),
            incidents,
            auto_resolve: config.auto_resolve,
            reload_failures: Default::default(),
            notifier: Mutex::new(Notifier::default()),
            silences: Mutex::new(Vec::new()),
            outbox_ready: tokio::sync::Notify::new(),
            collector: Mutex::new(None),
            pending: Mutex::new(Default::default()),
            refused_writes: Default::default(),
            quarantined_writes: Default::default(),
            database_down: Default::default(),
            restored: Mutex::new(None),
            actions: Arc::new(actions),
            writes_ready: tokio::sync::Notify::new(),
            leader: Default::default(),
            term: Default::default(),
            remediations_due: Default::default(),
            saved: Mutex::new(Default::default()),
            state_max_age_ms: config.state_max_age_ms,
        }
    }

    /// The incident store.
    pub fn incidents(&self) -> &IncidentStore {
        &self.incidents
    }

    /// The rules in force, and how they were loaded.
    pub fn loaded_rules(&self) -> LoadedRules {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
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

//! The database write queue: what the evaluation decided is queued in order and written by
//! one task, which waits and retries while the database cannot be reached. With a spill folder
//! the queue is also kept in a local log ([`crate::spill`]), so that it survives a SIGTERM, a
//! crash or a lost lead during an outage. A write the database refuses for what it holds (a
//! NUL byte in a text, a broken constraint) can never succeed: it is quarantined (logged,
//! counted, kept in `quarantine.jsonl` beside the log) and the queue moves on.

use super::*;
use crate::spill::Spill;

/// Writes of newly firing alerts waiting while the database is unreachable (an alert storm of
/// an hour fits); beyond, new alerts' writes are refused and counted (older ones are never
/// dropped).
const MAX_PENDING_WRITES: usize = 100_000;

/// Hard bound of the queue: the writes that follow alerts already queued (their resolution,
/// their notifications) are accepted up to here.
const MAX_QUEUED: usize = 2 * MAX_PENDING_WRITES;

/// How often the leader looks for remediations it has not been told of (written by a replica
/// that no longer leads, or left unfinished by one that stopped).
const READ_REMEDIATIONS_EVERY: Duration = Duration::from_secs(5);

/// How often the open incidents are counted for the `alert_manager.incidents.open` gauge.
const COUNT_OPEN_EVERY: Duration = Duration::from_secs(5);

/// A change waiting to be written to the database, with the time it happened.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Write {
    /// An alert fired.
    Fired {
        /// Its group.
        key: String,
        /// The group's labels.
        labels: crate::labels::LabelSet,
        /// The alert.
        alert: evaluator::Alert,
        /// The leadership term of the replica that decided it (0 in a log written before terms
        /// existed): its incident's remediation is written only while the term is current.
        #[serde(default)]
        term: i64,
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
        /// The group's notification timing once they are sent (`None`: they notify its
        /// resolution, after which it has none).
        #[serde(default)]
        group: Option<notify::GroupState>,
        /// The leadership term of the replica that decided them (0 in a log written before
        /// terms existed: never written, the leader decides again).
        #[serde(default)]
        term: i64,
        /// When.
        at_ms: i64,
    },
}

/// The writes waiting, oldest first, and the log that keeps them on disk.
#[derive(Default)]
pub struct Queue {
    writes: std::collections::VecDeque<Write>,
    spill: Option<Spill>,
    /// Where quarantined writes are kept (beside the log).
    quarantine: Option<PathBuf>,
    /// Whether the last write offered was refused for want of room (logged once per episode).
    full: bool,
}

impl Queue {
    /// Takes the oldest write off (it reached the database, or was quarantined).
    fn pop(&mut self) {
        if self.writes.pop_front().is_some()
            && let Some(spill) = &mut self.spill
            && let Err(err) = spill.acknowledge()
        {
            tracing::error!(error = %err, "the spill log could not be updated; a restart would write that write again");
        }
    }
}

fn counter(name: &'static str, description: &'static str) -> opentelemetry::metrics::Counter<u64> {
    opentelemetry::global::meter("alert-manager")
        .u64_counter(name)
        .with_description(description)
        .build()
}

impl Engine {
    /// Keeps the queue in `spill` from now on, after the writes it held (queued first, in their
    /// order).
    pub fn attach_spill(&self, spill: Spill, replayed: Vec<Write>, dir: &std::path::Path) {
        let mut queue = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = std::mem::take(&mut queue.writes);
        queue.writes = replayed.into();
        queue.spill = Some(spill);
        queue.quarantine = Some(dir.join("quarantine.jsonl"));
        // Writes queued before the log was attached (none in practice) follow, logged too.
        for write in held.drain(..) {
            Self::push(&mut queue, write);
        }
        if !queue.writes.is_empty() {
            tracing::info!(
                writes = queue.writes.len(),
                "incident writes left by the previous run will be written first"
            );
            self.writes_ready.notify_one();
        }
    }

    fn push(queue: &mut Queue, write: Write) {
        if let Some(spill) = &mut queue.spill
            && let Err(err) = spill.append(&write)
        {
            tracing::error!(error = %err, "the spill log could not be written; this write is kept in memory only");
        }
        queue.writes.push_back(write);
    }

    /// Queues a write. When the queue is full, a newly firing alert's write is refused (counted,
    /// logged), and so is any write once the hard bound is reached: older writes are never
    /// dropped.
    pub(super) fn queue(&self, write: Write) {
        let mut queue = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let limit = match write {
            Write::Fired { .. } => MAX_PENDING_WRITES,
            _ => MAX_QUEUED,
        };
        if queue.writes.len() >= limit {
            self.refused_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counter(
                "alert_manager.writes.refused",
                "Incident writes refused because the queue waiting for the database was full",
            )
            .add(1, &[]);
            if !queue.full {
                queue.full = true;
                tracing::error!(
                    queued = queue.writes.len(),
                    "the queue of incident writes is full while the database is unreachable: \
                     writes of newly firing alerts are refused (counted as alert_manager.writes.refused) until it drains"
                );
            }
            return;
        }
        queue.full = false;
        Self::push(&mut queue, write);
    }

    /// Sets a write the database refused aside: logged, counted, and appended to the
    /// quarantine file when there is a spill folder.
    fn quarantine(&self, write: &Write, err: &crate::incidents::IncidentError) {
        self.quarantined_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counter(
            "alert_manager.writes.quarantined",
            "Incident writes the database refused for their content, set aside",
        )
        .add(1, &[]);
        let file = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quarantine
            .clone();
        let record =
            serde_json::json!({"at_ms": now_ms(), "error": err.to_string(), "write": write});
        let kept = file.as_ref().and_then(|path| {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()?;
            writeln!(f, "{record}").ok()?;
            Some(path.display().to_string())
        });
        tracing::error!(
            error = %err,
            write = %format!("{write:?}").escape_debug(),
            kept_in = kept.as_deref().unwrap_or("nowhere (no spill folder)"),
            "the database refused an incident write for what it holds; it is quarantined and the queue moves on"
        );
    }

    /// Writes queued changes to the database in order. Stops at the first write that failed for
    /// want of the database, and keeps it and the rest for the next cycle; a write refused for
    /// what it holds is quarantined and the next one follows.
    pub async fn flush(&self) {
        let set = self.rule_set();
        let set = &set;
        loop {
            let Some(write) = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .writes
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
                    term,
                    at_ms,
                } => {
                    let remediate = set
                        .rules
                        .iter()
                        .any(|r| r.name == alert.rule && !r.actions.is_empty())
                        .then_some(*term);
                    match self
                        .incidents
                        .alert_fired(key, labels, alert, remediate, *at_ms)
                        .await
                    {
                        Ok((id, opened)) => {
                            if opened {
                                self.spawn_diagnosis(set, id, alert.clone());
                            }
                            if remediate.is_some() {
                                self.remediations_due
                                    .store(true, std::sync::atomic::Ordering::Release);
                            }
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                }
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
                    group,
                    term,
                    at_ms,
                } => {
                    let group = group.as_ref().and_then(|g| serde_json::to_value(g).ok());
                    self.incidents
                        .enqueue(key, outgoing, group.as_ref(), *term, *at_ms)
                        .await
                        .map(|written| {
                            if written {
                                self.outbox_ready.notify_one();
                            } else {
                                tracing::warn!(
                                    group = %key,
                                    term,
                                    "a notification decided while this replica led is not sent: another replica \
                                     has taken the lead since, and decides the group's notifications from what was written"
                                );
                            }
                        })
                }
            };
            match result {
                Ok(()) => self.pending.lock().unwrap_or_else(|p| p.into_inner()).pop(),
                Err(err) if err.is_refusal() => {
                    self.quarantine(&write, &err);
                    self.pending.lock().unwrap_or_else(|p| p.into_inner()).pop();
                }
                Err(err) => {
                    if !self
                        .database_down
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::error!(error = %err, "incident database unreachable: writes wait in order until it returns");
                    }
                    return;
                }
            }
        }
    }

    /// Flushes the spill log to the disk.
    fn sync_spill(&self) {
        let mut queue = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(spill) = &mut queue.spill
            && let Err(err) = spill.sync()
        {
            tracing::error!(error = %err, "the spill log could not be flushed to disk");
        }
    }

    /// Writes queued changes until `stop`: at once when some are queued, and every 500 ms while
    /// the database is unreachable. A last flush runs at shutdown.
    pub async fn write(self: Arc<Self>, stop: shared::shutdown::Shutdown) {
        let mut stopped = std::pin::pin!(stop.wait());
        let mut counted = tokio::time::Instant::now();
        let mut severities = std::collections::BTreeSet::new();
        let mut remediations_read = tokio::time::Instant::now();
        loop {
            self.sync_spill();
            self.flush().await;
            if self.is_leader()
                && (self
                    .remediations_due
                    .swap(false, std::sync::atomic::Ordering::AcqRel)
                    || remediations_read.elapsed() >= READ_REMEDIATIONS_EVERY)
            {
                remediations_read = tokio::time::Instant::now();
                self.start_remediations().await;
            }
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
        self.sync_spill();
    }

    /// Writes waiting for the database.
    pub fn pending_writes(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writes
            .len()
    }

    /// Writes the database refused for what they hold, set aside so far.
    pub fn quarantined_writes(&self) -> u64 {
        self.quarantined_writes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes refused because the queue was full, so far.
    pub fn refused_writes(&self) -> u64 {
        self.refused_writes
            .load(std::sync::atomic::Ordering::Relaxed)
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
}

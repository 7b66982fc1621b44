//! The database write queue: what the evaluation decided is queued in memory, in order,
//! and written by one task, which waits and retries while the database cannot be reached.

use super::*;

/// Most database writes waiting while the database is unreachable (an alert storm of an hour
/// fits); beyond, the oldest are dropped and counted.
const MAX_PENDING_WRITES: usize = 100_000;

/// How often the open incidents are counted for the `alert_manager.incidents.open` gauge.
const COUNT_OPEN_EVERY: Duration = Duration::from_secs(5);

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

impl Engine {
    /// Queues a write; when the queue is full the oldest write is dropped and counted.
    pub(super) fn queue(&self, write: Write) {
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

    /// Writes waiting for the database.
    pub fn pending_writes(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
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

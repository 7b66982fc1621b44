//! Leadership and the saved state: one replica leads (evaluates, records, notifies); it
//! saves the evaluation state so that a new leader, or the same one after a restart, goes on
//! where it stopped.

use super::*;

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

impl Engine {
    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Becomes the leader: starts a new leadership term (what a replica that led before
    /// decided is no longer written, see [`crate::incidents::IncidentStore::take_term`]), then
    /// restores the alerts, their timers and the notification timing saved by the previous
    /// leader (or the previous run), with the notifications written since that save, and the
    /// incidents it left active.
    ///
    /// A leader that only lost its lock's connection for a while (the database restarted, say)
    /// and got the lock back keeps what it has in memory, as long as no other replica led
    /// meanwhile: it is newer than what was saved.
    pub async fn take_lead(&self) -> Result<(), crate::incidents::IncidentError> {
        if self.is_leader() {
            if self.incidents.current_term().await? == Some(self.term()) {
                tracing::info!("the lead's lock is held again; leading on");
                return Ok(());
            }
            tracing::warn!(
                "the lead's lock is held again, but another replica led meanwhile: restoring what it saved"
            );
        }
        let now = now_ms();
        let term = self.incidents.take_term(now).await?;
        let active = self.incidents.active_groups().await?;
        let saved = self.incidents.load_state().await?;
        let notified = self.incidents.notified_since_saved().await?;
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
        // Notifications written after that save: their groups are not notified again.
        let mut applied = 0;
        for (key, group, at_ms) in notified {
            if now - at_ms > self.state_max_age_ms {
                continue;
            }
            match group.map(serde_json::from_value::<notify::GroupState>) {
                Some(Ok(group)) => {
                    state.groups.insert(key, group);
                }
                None => {
                    state.groups.remove(&key);
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, group = %key, "a group's notification timing is unreadable; left out");
                    continue;
                }
            }
            applied += 1;
        }
        tracing::info!(
            term,
            alerts = state.alerts.len(),
            groups = state.groups.len(),
            notified_since_saved = applied,
            active_incidents = active.len(),
            "leading: evaluation state restored"
        );
        {
            let mut alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            alerts.restore(state.alerts);
            self.notifier
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore(state.groups);
            let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            saved.digest = self.state_digest(&alerts);
            saved.at = Some(tokio::time::Instant::now());
        }
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(active.into_iter().collect());
        self.term.store(term, std::sync::atomic::Ordering::Release);
        // Remediations left waiting or unfinished are looked for at once.
        self.remediations_due
            .store(true, std::sync::atomic::Ordering::Release);
        self.leader
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The leadership term this replica took when it last took the lead (0: never).
    pub fn term(&self) -> i64 {
        self.term.load(std::sync::atomic::Ordering::Acquire)
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

    /// Another replica leads: stops evaluating. The writes already queued are history this
    /// replica saw while it led: they are still written, in order, when the database answers.
    pub fn step_down(&self) {
        if !self.leader.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let queued = self.pending_writes();
        *self.alerts.lock().unwrap_or_else(|p| p.into_inner()) = Alerts::default();
        *self.notifier.lock().unwrap_or_else(|p| p.into_inner()) = Notifier::default();
        tracing::warn!(
            queued_writes = queued,
            "another replica took the lead: stepping down (queued writes are still written)"
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
        match self
            .incidents
            .save_state(&value, self.term(), now_ms())
            .await
        {
            Ok(false) => tracing::warn!(
                "evaluation state not saved: another replica has taken the lead since this one did"
            ),
            Ok(true) => {
                let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
                saved.digest = digest;
                saved.at = Some(tokio::time::Instant::now());
            }
            Err(err) => tracing::debug!(error = %err, "evaluation state not saved; trying again"),
        }
    }
}

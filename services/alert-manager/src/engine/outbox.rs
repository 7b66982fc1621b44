//! Outbox delivery: notifications written to the outbox are sent to their receivers, at
//! least once, by one task.

use super::*;

/// How much longer than a request's timeout a notification being sent stays claimed.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

impl Engine {
    /// Delivers queued notifications until `stop`: at once when some are queued, and every
    /// 250 ms for retries. Each receiver is served by a task of its own, so a receiver that
    /// accepts and never answers delays only its own notifications (each request gives up after
    /// `timeout`); while its task runs, its notifications are not read again. A notification
    /// is claimed in the database while it is sent, so a replica that takes the lead meanwhile
    /// does not send it too.
    pub async fn deliver(self: Arc<Self>, stop: shared::shutdown::Shutdown, timeout: Duration) {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        let mut stopped = std::pin::pin!(stop.wait());
        let mut silences_read = tokio::time::Instant::now();
        let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        // A notification being sent is claimed for longer than its request may take.
        let claim = timeout + CLAIM_MARGIN;
        loop {
            // Only the leader delivers: two replicas never send one notification twice.
            if self.is_leader() {
                let skip: Vec<String> = busy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                match self.incidents.due_notifications(now_ms(), &skip).await {
                    Ok(due) => {
                        for (receiver, notifications) in due {
                            busy.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(receiver.clone());
                            let (engine, http, busy) = (self.clone(), http.clone(), busy.clone());
                            tasks.spawn(async move {
                                if let Err(err) = engine
                                    .incidents
                                    .deliver_to_receiver(&http, notifications, claim)
                                    .await
                                {
                                    tracing::warn!(error = %err, %receiver, "outbox not updated");
                                }
                                busy.lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .remove(&receiver);
                            });
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "outbox not read"),
                }
            }
            while tasks.try_join_next().is_some() {}
            if silences_read.elapsed() > Duration::from_secs(10) {
                self.refresh_silences().await;
                silences_read = tokio::time::Instant::now();
            }
            tokio::select! {
                () = self.outbox_ready.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = &mut stopped => break,
            }
        }
        // Deliveries under way finish (each within its timeout).
        while tasks.join_next().await.is_some() {}
    }
}

//! Outbox delivery: notifications written to the outbox are sent to their receivers, at
//! least once, by one task.

use super::*;

impl Engine {
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
}

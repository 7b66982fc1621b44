//! The outbox: notifications stored with the incident event that caused them, then sent to
//! their receivers at least once, retried with a growing back-off.

use super::*;

/// A notification written to the outbox.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outgoing {
    /// The receiver's name.
    pub receiver: String,
    /// Where to POST.
    pub url: String,
    /// The JSON body.
    pub payload: serde_json::Value,
}

/// Back-off before the next attempt after `attempts` failures: 0.5 s doubling, at most 60 s.
fn backoff_ms(attempts: i32) -> i64 {
    (500_i64 << attempts.clamp(0, 7)).min(60_000)
}

impl IncidentStore {
    /// Writes notifications of the group `group_key` to the outbox (with the group's active
    /// incident, if any).
    pub async fn enqueue(
        &self,
        group_key: &str,
        outgoing: &[Outgoing],
        now_ms: i64,
    ) -> Result<(), IncidentError> {
        let mut tx = self.pool.begin().await?;
        let incident: Option<i64> =
            sqlx::query_scalar("SELECT max(id) FROM incidents WHERE group_key = $1")
                .bind(group_key)
                .fetch_one(&mut *tx)
                .await?;
        for n in outgoing {
            sqlx::query(
                "INSERT INTO notifications (incident_id, receiver, url, payload, next_attempt_ms, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(incident)
            .bind(&n.receiver)
            .bind(&n.url)
            .bind(&n.payload)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Delivers the notifications that are due, oldest first; a receiver that does not answer
    /// 2xx is tried again later with back-off. Returns how many were delivered.
    pub async fn deliver_pending(
        &self,
        http: &reqwest::Client,
        now_ms: i64,
    ) -> Result<usize, IncidentError> {
        let rows = sqlx::query(
            "SELECT id, incident_id, receiver, url, payload, attempts FROM notifications \
             WHERE delivered_ms IS NULL AND next_attempt_ms <= $1 ORDER BY id LIMIT 50",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut delivered = 0;
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let incident: Option<i64> = row.try_get("incident_id")?;
            let receiver: String = row.try_get("receiver")?;
            let url: String = row.try_get("url")?;
            let payload: serde_json::Value = row.try_get("payload")?;
            let attempts: i32 = row.try_get("attempts")?;
            let outcome = http
                .post(&url)
                .json(&payload)
                .send()
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP {}", r.status()))
                    }
                });
            let mut tx = self.pool.begin().await?;
            match outcome {
                Ok(()) => {
                    delivered += 1;
                    sqlx::query("UPDATE notifications SET delivered_ms = $2, attempts = attempts + 1 WHERE id = $1")
                        .bind(id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    if let Some(incident) = incident {
                        let status = payload
                            .get("status")
                            .or_else(|| payload.get("event_action"))
                            .and_then(|s| s.as_str())
                            .unwrap_or("");
                        add_event(
                            &mut tx,
                            incident,
                            "notified",
                            SELF_ACTOR,
                            &format!("{receiver}: {status} (attempt {})", attempts + 1),
                            now_ms,
                        )
                        .await?;
                    }
                }
                Err(err) => {
                    tracing::warn!(%receiver, %url, attempt = attempts + 1, error = %err, "notification not delivered; retrying");
                    sqlx::query(
                        "UPDATE notifications SET attempts = attempts + 1, last_error = $2, next_attempt_ms = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&err)
                    .bind(now_ms + backoff_ms(attempts))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(delivered)
    }
}

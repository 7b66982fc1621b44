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
    /// incident, if any), and the group's notification timing once they are sent (`group`;
    /// `None` after its resolution), in one transaction: a leader that takes over never decides
    /// them again. Only while `term` is the current leadership term: returns `false`, writing
    /// nothing, when another replica has taken the lead since they were decided.
    pub async fn enqueue(
        &self,
        group_key: &str,
        outgoing: &[Outgoing],
        group: Option<&serde_json::Value>,
        term: i64,
        now_ms: i64,
    ) -> Result<bool, IncidentError> {
        let mut tx = self.pool.begin().await?;
        if !holds_term(&mut tx, term).await? {
            return Ok(false);
        }
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
        sqlx::query(
            "INSERT INTO notification_groups (group_key, state, at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (group_key) DO UPDATE SET state = EXCLUDED.state, at_ms = EXCLUDED.at_ms",
        )
        .bind(group_key)
        .bind(group)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The notifications that are due, oldest first (at most 50), grouped by receiver, leaving
    /// out the receivers in `busy` (a delivery to them is still running) and the notifications
    /// another replica is sending (claimed, see [`IncidentStore::deliver_to_receiver`]).
    pub async fn due_notifications(
        &self,
        now_ms: i64,
        busy: &[String],
    ) -> Result<std::collections::BTreeMap<String, Vec<Due>>, IncidentError> {
        let rows = sqlx::query(
            "SELECT id, incident_id, receiver, url, payload, attempts FROM notifications \
             WHERE delivered_ms IS NULL AND next_attempt_ms <= $1 AND NOT (receiver = ANY($2)) \
             AND (claimed_until_ms IS NULL OR claimed_until_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
             ORDER BY id LIMIT 50",
        )
        .bind(now_ms)
        .bind(busy)
        .fetch_all(&self.pool)
        .await?;
        let mut due: std::collections::BTreeMap<String, Vec<Due>> = Default::default();
        for row in rows {
            let receiver: String = row.try_get("receiver")?;
            due.entry(receiver.clone()).or_default().push(Due {
                id: row.try_get("id")?,
                incident: row.try_get("incident_id")?,
                receiver,
                url: row.try_get("url")?,
                payload: row.try_get("payload")?,
                attempts: row.try_get("attempts")?,
            });
        }
        Ok(due)
    }

    /// Delivers one receiver's due notifications in order; a receiver that does not answer 2xx
    /// (or not within the client's timeout) is tried again later with back-off, and its other
    /// notifications wait with it, so a dead receiver costs one timeout per back-off step.
    /// Returns how many were delivered.
    ///
    /// Each notification is claimed for `claim` (longer than the client's timeout) before it
    /// is sent: a replica that took the lead meanwhile does not send it too. One that another
    /// replica claimed or delivered since it was read ends the run (the rest keep their order).
    pub async fn deliver_to_receiver(
        &self,
        http: &reqwest::Client,
        due: Vec<Due>,
        claim: std::time::Duration,
    ) -> Result<usize, IncidentError> {
        let mut delivered = 0;
        let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
        for (i, n) in due.into_iter().enumerate() {
            let claimed = sqlx::query(
                "UPDATE notifications SET claimed_until_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2 \
                 WHERE id = $1 AND delivered_ms IS NULL \
                 AND (claimed_until_ms IS NULL OR claimed_until_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            )
            .bind(n.id)
            .bind(i64::try_from(claim.as_millis()).unwrap_or(i64::MAX / 2))
            .execute(&self.pool)
            .await?
            .rows_affected();
            if claimed == 0 {
                break;
            }
            let outcome = http
                .post(&n.url)
                .json(&n.payload)
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
            let now_ms = crate::engine::now_ms();
            let mut tx = self.pool.begin().await?;
            match outcome {
                Ok(()) => {
                    delivered += 1;
                    sqlx::query("UPDATE notifications SET delivered_ms = $2, attempts = attempts + 1, claimed_until_ms = NULL WHERE id = $1")
                        .bind(n.id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    if let Some(incident) = n.incident {
                        let status = n
                            .payload
                            .get("status")
                            .or_else(|| n.payload.get("event_action"))
                            .and_then(|s| s.as_str())
                            .unwrap_or("");
                        add_event(
                            &mut tx,
                            incident,
                            "notified",
                            SELF_ACTOR,
                            &format!("{}: {status} (attempt {})", n.receiver, n.attempts + 1),
                            now_ms,
                        )
                        .await?;
                    }
                    tx.commit().await?;
                }
                Err(err) => {
                    tracing::warn!(receiver = %n.receiver, url = %n.url, attempt = n.attempts + 1, error = %err, "notification not delivered; retrying");
                    let next = now_ms + backoff_ms(n.attempts);
                    sqlx::query(
                        "UPDATE notifications SET attempts = attempts + 1, last_error = $2, next_attempt_ms = $3, claimed_until_ms = NULL WHERE id = $1",
                    )
                    .bind(n.id)
                    .bind(&err)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
                    // The receiver's later notifications wait as long (not counted as attempts).
                    sqlx::query(
                        "UPDATE notifications SET next_attempt_ms = greatest(next_attempt_ms, $2) WHERE id = ANY($1)",
                    )
                    .bind(&ids[i + 1..])
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    break;
                }
            }
        }
        Ok(delivered)
    }
}

/// A notification due for delivery.
#[derive(Debug)]
pub struct Due {
    id: i64,
    incident: Option<i64>,
    receiver: String,
    url: String,
    payload: serde_json::Value,
    attempts: i32,
}

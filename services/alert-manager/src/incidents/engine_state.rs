//! The evaluation state that the leading replica saves, and a new leader restores; the
//! leadership terms that fence a replica which lost the lead.

use super::*;

/// Whether `term` is the current leadership term, read under a share lock held until the end
/// of `tx`: a replica taking the lead meanwhile waits for `tx`, and what `tx` wrote is what it
/// restores.
pub(super) async fn holds_term(
    tx: &mut Transaction<'_, Postgres>,
    term: i64,
) -> Result<bool, IncidentError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT term FROM leadership WHERE id = 1 FOR SHARE")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(current == Some(term))
}

impl IncidentStore {
    /// Starts a new leadership term (the replica calling it has just taken the lead) and
    /// returns it. The writes of earlier terms that are fenced (notifications, the saved state)
    /// are refused from now on.
    pub async fn take_term(&self, now_ms: i64) -> Result<i64, IncidentError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO leadership (id, term, taken_at_ms) VALUES (1, 1, $1) \
             ON CONFLICT (id) DO UPDATE SET term = leadership.term + 1, taken_at_ms = EXCLUDED.taken_at_ms \
             RETURNING term",
        )
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The current leadership term, if any replica has led.
    pub async fn current_term(&self) -> Result<Option<i64>, IncidentError> {
        Ok(
            sqlx::query_scalar("SELECT term FROM leadership WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Saves the evaluation state (a JSON document, see [`crate::engine::EngineState`]) in
    /// place of the last one and of the notification timing written since (which it holds),
    /// while `term` is the current term. Returns `false`, saving nothing, once another replica
    /// has taken the lead.
    pub async fn save_state(
        &self,
        state: &serde_json::Value,
        term: i64,
        now_ms: i64,
    ) -> Result<bool, IncidentError> {
        let mut tx = self.pool.begin().await?;
        if !holds_term(&mut tx, term).await? {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO engine_state (id, state, saved_at_ms) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, saved_at_ms = EXCLUDED.saved_at_ms",
        )
        .bind(state)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM notification_groups")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The groups notified since the evaluation state was last saved, with their timing then
    /// (`None`: the group's resolution was notified) and when (Unix ms).
    pub async fn notified_since_saved(
        &self,
    ) -> Result<Vec<(String, Option<serde_json::Value>, i64)>, IncidentError> {
        let rows = sqlx::query("SELECT group_key, state, at_ms FROM notification_groups")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    row.try_get("group_key")?,
                    row.try_get("state")?,
                    row.try_get("at_ms")?,
                ))
            })
            .collect()
    }

    /// The evaluation state last saved, with when it was saved (Unix ms), if any.
    pub async fn load_state(&self) -> Result<Option<(serde_json::Value, i64)>, IncidentError> {
        let row = sqlx::query("SELECT state, saved_at_ms FROM engine_state WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get("state")?, row.try_get("saved_at_ms")?)),
            None => None,
        })
    }
}

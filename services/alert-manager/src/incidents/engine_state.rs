//! The evaluation state that the leading replica saves, and a new leader restores.

use super::*;

impl IncidentStore {
    /// Saves the evaluation state (a JSON document, see [`crate::engine::EngineState`]).
    pub async fn save_state(
        &self,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), IncidentError> {
        sqlx::query(
            "INSERT INTO engine_state (id, state, saved_at_ms) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, saved_at_ms = EXCLUDED.saved_at_ms",
        )
        .bind(state)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
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

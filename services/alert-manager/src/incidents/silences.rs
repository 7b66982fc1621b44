//! Silences: stored, expired and listed.

use super::*;

impl IncidentStore {
    /// Creates a silence and returns its id.
    pub async fn create_silence(
        &self,
        silence: &Silence,
        now_ms: i64,
    ) -> Result<i64, IncidentError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO silences (matchers, starts_at_ms, ends_at_ms, author, comment, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(serde_json::to_value(&silence.matchers).unwrap_or_default())
        .bind(silence.starts_at_ms)
        .bind(silence.ends_at_ms)
        .bind(&silence.author)
        .bind(&silence.comment)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Ends silence `id` now.
    pub async fn expire_silence(&self, id: i64, now_ms: i64) -> Result<(), IncidentError> {
        let done =
            sqlx::query("UPDATE silences SET ends_at_ms = LEAST(ends_at_ms, $2) WHERE id = $1")
                .bind(id)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(IncidentError::NotFound(id));
        }
        Ok(())
    }

    /// Silences that have not ended by `now_ms` (and, with `all`, the ended ones too).
    pub async fn silences(&self, now_ms: i64, all: bool) -> Result<Vec<Silence>, IncidentError> {
        let rows = sqlx::query(
            "SELECT id, matchers, starts_at_ms, ends_at_ms, author, comment FROM silences \
             WHERE $2 OR ends_at_ms > $1 ORDER BY id",
        )
        .bind(now_ms)
        .bind(all)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let matchers: serde_json::Value = r.try_get("matchers")?;
                Ok(Silence {
                    id: r.try_get("id")?,
                    matchers: serde_json::from_value(matchers).unwrap_or_default(),
                    starts_at_ms: r.try_get("starts_at_ms")?,
                    ends_at_ms: r.try_get("ends_at_ms")?,
                    author: r.try_get("author")?,
                    comment: r.try_get("comment")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IncidentError::from)
    }
}

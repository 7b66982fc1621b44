//! What is deployed, one truth for every gateway replica: canary splits live in PostgreSQL.
//!
//! A change (`SetCanary`, from an operator or an alert-manager action) is written in one
//! transaction, under an advisory lock of the model's (changes of one model, through any
//! replica, are made one at a time, its first one included): the model's row in
//! `gateway_canary_splits` at the next revision, a row of `gateway_canary_changes` (the
//! deployment timeline: who, through which gateway, why) and a `NOTIFY` on [`CHANNEL`];
//! setting the split in force again changes nothing (as `kubectl apply` of an unchanged
//! object), so a reconciler re-applying it every few minutes does not bury the timeline's real
//! changes. Every replica listens and re-reads the table on each notification,
//! and once a second in case one was missed; a split is applied only over an older revision
//! (see [`CanaryTable::apply`]), so replicas converge on the last committed change whatever
//! order the news arrives in. Calls read the in-memory table only, never the database.
//!
//! While the database cannot be reached, replicas keep serving with the splits they hold (a
//! gateway that starts without it serves with none: the newest version takes all traffic),
//! report it in `gateway.deployed_state.connected` and the log, and refuse changes with
//! `UNAVAILABLE`; they pick the state up when it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::canary::{CanaryTable, Split, VersionWeight};

/// The channel a change is announced on (its payload: the model).
pub const CHANNEL: &str = "gateway_canary_splits";

/// The tables, created when missing (under an advisory lock, so that replicas starting
/// together do not race).
const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS gateway_canary_splits (
    model       TEXT PRIMARY KEY,
    weights     JSONB NOT NULL,
    revision    BIGINT NOT NULL,
    changed_by  TEXT NOT NULL,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gateway_canary_changes (
    id          BIGSERIAL PRIMARY KEY,
    model       TEXT NOT NULL,
    weights     JSONB NOT NULL,
    revision    BIGINT NOT NULL,
    changed_by  TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gateway_canary_changes_model ON gateway_canary_changes (model, id);
";

/// Advisory lock key that serialises schema creation ("gwcanary" in ASCII).
const SCHEMA_LOCK: i64 = 0x6777_6361_6e61_7279;

/// The class of the advisory locks that serialise the changes of one model's split ("gwsp"
/// in ASCII). Their two-key form keeps them apart from every one-key lock (the schema's here,
/// the alert manager's leader lock).
const SPLIT_LOCK_CLASS: i32 = 0x6777_7370;

/// Takes the lock of one model's split (`$1`: [`SPLIT_LOCK_CLASS`], `$2`: the model) until the
/// transaction ends. Two models whose names hash alike only wait for each other.
const LOCK_SPLIT: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

/// The longest reason kept on the timeline, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// Why the shared state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// A change could not be stored.
    #[error(
        "the canary split could not be stored in PostgreSQL ({0}); nothing changed on any \
         gateway, which keep serving the split in force: retry when the database is back"
    )]
    NotStored(String),
    /// The timeline could not be read.
    #[error(
        "the deployment timeline could not be read from PostgreSQL ({0}); the gateways keep \
         serving the split in force: retry when the database is back"
    )]
    NotRead(String),
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Stored at the next revision, on the timeline, announced.
    Changed(Split),
    /// The split in force, set again: nothing stored.
    Unchanged(Split),
    /// Nothing stored: the change expected another revision than the one in force, which
    /// comes back (revision 0: never set), so that a replica behind catches up.
    Stale(Split),
}

/// One entry of the deployment timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The model.
    pub model: String,
    /// The split set (empty: removed).
    pub weights: Vec<VersionWeight>,
    /// Its revision.
    pub revision: i64,
    /// Who (tenant and key id).
    pub changed_by: String,
    /// Through which gateway replica (its instance id).
    pub gateway: String,
    /// Why, as the caller said (`x-change-reason`).
    pub reason: String,
    /// When, in Unix milliseconds.
    pub changed_at_ms: i64,
}

/// The shared store of canary splits.
pub struct DeployedState {
    pool: PgPool,
    connected: AtomicBool,
}

impl DeployedState {
    /// A store over the database at `url`; nothing is connected until first used.
    pub fn new(url: &str) -> Result<DeployedState, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)?;
        Ok(DeployedState {
            pool,
            connected: AtomicBool::new(false),
        })
    }

    /// Whether the last contact with the database succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set_connected(&self, now: bool) {
        let was = self.connected.swap(now, Ordering::Relaxed);
        if was != now {
            if now {
                tracing::info!("deployed state: PostgreSQL reached; canary splits are shared");
            }
            crate::metrics::deployed_state_connected(now);
        }
    }

    // Boxed as `Send` futures: the transaction's executor borrows would otherwise keep the
    // spawned task from proving it is `Send`.
    fn ensure_schema(&self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SCHEMA_LOCK)
                .execute(&mut *tx)
                .await?;
            // A query without arguments goes as one simple query: several statements at once.
            sqlx::Executor::execute(&mut *tx, SCHEMA).await?;
            tx.commit().await
        })
    }

    /// Stores `weights` as `model`'s split (empty: removed) and announces it; when `expected`
    /// is given, only over that revision (compare and set). Either all of it is committed or
    /// nothing is. The split in force set again is no change: it keeps its revision and adds
    /// nothing to the timeline.
    pub async fn write(
        &self,
        model: &str,
        weights: &[VersionWeight],
        expected: Option<i64>,
        changed_by: &str,
        reason: &str,
    ) -> Result<Written, Unavailable> {
        let result = self
            .try_write(model, weights, expected, changed_by, reason)
            .await;
        match &result {
            Ok(_) => self.set_connected(true),
            Err(err) if is_connection_error(err) => self.set_connected(false),
            Err(_) => {}
        }
        result.map_err(|err| Unavailable::NotStored(err.to_string()))
    }

    fn try_write<'a>(
        &'a self,
        model: &'a str,
        weights: &'a [VersionWeight],
        expected: Option<i64>,
        changed_by: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Written, sqlx::Error>> {
        Box::pin(self.write_transaction(model, weights, expected, changed_by, reason))
    }

    async fn write_transaction(
        &self,
        model: &str,
        weights: &[VersionWeight],
        expected: Option<i64>,
        changed_by: &str,
        reason: &str,
    ) -> Result<Written, sqlx::Error> {
        let json = serde_json::to_value(weights).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let mut tx = self.pool.begin().await?;
        // Changes of one model are made one at a time: the model's lock is taken first, so
        // that the split read next is the one any change before this committed. Locking the
        // row alone would not do for a model's first change: there is no row yet to lock, and
        // two first changes would both pass the compare, the second overwriting the first.
        sqlx::query(LOCK_SPLIT)
            .bind(SPLIT_LOCK_CLASS)
            .bind(model)
            .execute(&mut *tx)
            .await?;
        // The row is locked too, against a writer that does not take the model's lock.
        let in_force = sqlx::query(
            "SELECT weights = $2 AS same, weights, revision, changed_by,
                    (extract(epoch from changed_at) * 1000)::BIGINT AS at_ms
             FROM gateway_canary_splits WHERE model = $1 FOR UPDATE",
        )
        .bind(model)
        .bind(&json)
        .fetch_optional(&mut *tx)
        .await?;
        // The split in force (revision 0: never set), and whether it is the one being set.
        let (same, in_force) = in_force.map_or((false, Split::default()), |row| {
            let split = Split {
                weights: serde_json::from_value(row.get("weights")).unwrap_or_default(),
                revision: row.get("revision"),
                changed_by: row.get("changed_by"),
                changed_at_ms: row.get("at_ms"),
            };
            (row.get::<bool, _>("same"), split)
        });
        if expected.is_some_and(|expected| expected != in_force.revision) {
            tx.rollback().await?;
            return Ok(Written::Stale(in_force));
        }
        // The split in force, set again (a reconciler re-applying it): no change to record.
        if same {
            tx.commit().await?;
            return Ok(Written::Unchanged(in_force));
        }
        let row = sqlx::query(
            "INSERT INTO gateway_canary_splits (model, weights, revision, changed_by)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (model) DO UPDATE
               SET weights = EXCLUDED.weights,
                   revision = gateway_canary_splits.revision + 1,
                   changed_by = EXCLUDED.changed_by,
                   changed_at = now()
             RETURNING revision, (extract(epoch from changed_at) * 1000)::BIGINT AS at_ms",
        )
        .bind(model)
        .bind(&json)
        .bind(changed_by)
        .fetch_one(&mut *tx)
        .await?;
        let revision: i64 = row.get("revision");
        let at_ms: i64 = row.get("at_ms");
        sqlx::query(
            "INSERT INTO gateway_canary_changes (model, weights, revision, changed_by, gateway, reason)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(model)
        .bind(&json)
        .bind(revision)
        .bind(changed_by)
        .bind(shared::telemetry::instance_id())
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(model)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let split = Split {
            weights: weights.to_vec(),
            revision,
            changed_by: changed_by.to_owned(),
            changed_at_ms: at_ms,
        };
        Ok(Written::Changed(split))
    }

    /// Every stored split.
    async fn load(&self) -> Result<Vec<(String, Split)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT model, weights, revision, changed_by,
                    (extract(epoch from changed_at) * 1000)::BIGINT AS at_ms
             FROM gateway_canary_splits",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut splits = Vec::with_capacity(rows.len());
        for row in rows {
            let model: String = row.get("model");
            let json: serde_json::Value = row.get("weights");
            let weights: Vec<VersionWeight> = match serde_json::from_value(json) {
                Ok(weights) => weights,
                Err(err) => {
                    tracing::error!(%model, %err, "a stored canary split is not readable; skipped");
                    continue;
                }
            };
            let split = Split {
                weights,
                revision: row.get("revision"),
                changed_by: row.get("changed_by"),
                changed_at_ms: row.get("at_ms"),
            };
            splits.push((model, split));
        }
        Ok(splits)
    }

    /// Reads every split and applies those newer than the table's.
    async fn refresh(&self, table: &CanaryTable) -> Result<(), sqlx::Error> {
        for (model, split) in self.load().await? {
            let weights = split.weights.clone();
            let revision = split.revision;
            if table.apply(&model, split) {
                crate::metrics::name_versions(&model, weights.iter().map(|w| w.version));
                tracing::info!(%model, ?weights, revision, "canary split applied from the shared state");
            }
        }
        Ok(())
    }

    /// The last `limit` changes of `model` (all models when empty), newest first.
    pub async fn changes(&self, model: &str, limit: i64) -> Result<Vec<Change>, Unavailable> {
        let rows = sqlx::query(
            "SELECT model, weights, revision, changed_by, gateway, reason,
                    (extract(epoch from changed_at) * 1000)::BIGINT AS at_ms
             FROM gateway_canary_changes
             WHERE $1 = '' OR model = $1
             ORDER BY id DESC LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| Unavailable::NotRead(err.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|row| Change {
                model: row.get("model"),
                weights: serde_json::from_value(row.get("weights")).unwrap_or_default(),
                revision: row.get("revision"),
                changed_by: row.get("changed_by"),
                gateway: row.get("gateway"),
                reason: row.get("reason"),
                changed_at_ms: row.get("at_ms"),
            })
            .collect())
    }

    /// Keeps `table` in step with the database until `stop`: creates the schema, listens for
    /// changes, re-reads on each and every `poll`; while the database is unreachable, retries
    /// every `poll` and leaves the table as it is. `first` is notified once the first attempt
    /// ended, read or not, so that the gateway can start serving from the stored state.
    pub async fn follow(
        self: Arc<Self>,
        table: Arc<CanaryTable>,
        poll: Duration,
        first: Arc<tokio::sync::Notify>,
        stop: shared::shutdown::Shutdown,
    ) {
        crate::metrics::deployed_state_connected(false);
        let mut warned = false;
        loop {
            let session = async {
                self.ensure_schema().await?;
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(CHANNEL).await?;
                self.refresh(&table).await?;
                self.set_connected(true);
                first.notify_one();
                warned = false;
                let mut tick = tokio::time::interval(poll);
                loop {
                    tokio::select! {
                        notification = listener.try_recv() => match notification? {
                            Some(_) => self.refresh(&table).await?,
                            // The connection dropped (and reconnects on the next call):
                            // what was announced meanwhile is read now.
                            None => self.refresh(&table).await?,
                        },
                        _ = tick.tick() => self.refresh(&table).await?,
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                result = session => {
                    if let Err(err) = result {
                        first.notify_one();
                        self.set_connected(false);
                        if !warned {
                            tracing::warn!(%err, "deployed state: PostgreSQL unreachable; serving with the canary splits held ({} models); changes are refused until it returns", table.models());
                            warned = true;
                        }
                    }
                }
                _ = stop.clone().wait() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.clone().wait() => return,
            }
        }
    }
}

/// Whether an error means the database could not be reached (rather than refusing a query).
fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    )
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    /// A database of its own on the PostgreSQL at 127.0.0.1:5432 (or `TEST_POSTGRES_URL`),
    /// dropped at the end. Its name starts as the integration tests' ones do, so that a run
    /// killed before dropping it is swept by the next of those.
    async fn on_a_database_of_its_own<F, Fut>(test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let server = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let admin = PgPool::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {server} (set TEST_POSTGRES_URL to another): {e}")
            });
        // Unique in this process too: tests starting at once may read the same clock.
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "alerts_test_{}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
            CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // Copying template1 is refused while another session is connected to it (another
        // test's CREATE DATABASE, for an instant): tried again.
        let mut tries = 0;
        while let Err(err) = sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
        {
            tries += 1;
            assert!(
                tries < 20 && err.to_string().contains("is being accessed by other users"),
                "CREATE DATABASE {name} on {server}: {err}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Run as a task, so that the database is dropped even when the test fails.
        let outcome = tokio::spawn(test(format!("{server}/{name}"))).await;
        let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
        if let Err(err) = outcome {
            std::panic::resume_unwind(err.into_panic());
        }
    }

    const MODEL: &str = "minilm-l6";

    fn weights(split: &[(i64, u32)]) -> Vec<VersionWeight> {
        split
            .iter()
            .map(|&(version, weight)| VersionWeight { version, weight })
            .collect()
    }

    /// Until a session of this database waits for a lock another holds.
    async fn until_a_session_waits(pool: &PgPool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                 WHERE NOT l.granted AND a.datname = current_database()",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the write never waited for the change in flight"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `write` of `split` with `expected`, started while another gateway's first change of the
    /// model (`first`, revision 1, on no timeline) is in flight: the other change commits once
    /// the write waits for it. What the write answered, and the timeline's length then.
    async fn write_behind_a_first_change(
        url: &str,
        first: &[(i64, u32)],
        split: &[(i64, u32)],
        expected: Option<i64>,
    ) -> (Written, i64) {
        let state = Arc::new(DeployedState::new(url).unwrap());
        state.ensure_schema().await.unwrap();
        let raw = PgPool::connect(url).await.unwrap();
        // Another gateway's first change, as it writes one: under the model's lock.
        let mut other = raw.begin().await.unwrap();
        sqlx::query(LOCK_SPLIT)
            .bind(SPLIT_LOCK_CLASS)
            .bind(MODEL)
            .execute(&mut *other)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO gateway_canary_splits (model, weights, revision, changed_by)
             VALUES ($1, $2, 1, 'tenant-b/key-2')",
        )
        .bind(MODEL)
        .bind(serde_json::to_value(weights(first)).unwrap())
        .execute(&mut *other)
        .await
        .unwrap();
        let writer = state.clone();
        let split = weights(split);
        let write = tokio::spawn(async move {
            writer
                .write(MODEL, &split, expected, "tenant-a/key-1", "canary")
                .await
        });
        until_a_session_waits(&raw).await;
        other.commit().await.unwrap();
        let written = write.await.unwrap().unwrap();
        let timeline: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway_canary_changes")
            .fetch_one(&raw)
            .await
            .unwrap();
        (written, timeline)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_second_of_two_first_changes_expecting_none_is_stale() {
        on_a_database_of_its_own(|url| async move {
            let (written, timeline) = write_behind_a_first_change(
                &url,
                &[(1, 90), (2, 10)],
                &[(1, 50), (2, 50)],
                Some(0),
            )
            .await;
            let Written::Stale(in_force) = written else {
                panic!("expected revision 0 while revision 1 was committed, got {written:?}");
            };
            assert_eq!(in_force.revision, 1);
            assert_eq!(in_force.weights, weights(&[(1, 90), (2, 10)]));
            assert_eq!(timeline, 0, "the stale change is on the timeline");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_split_another_gateway_just_set_set_again_is_no_change() {
        on_a_database_of_its_own(|url| async move {
            let split = [(1, 90), (2, 10)];
            let (written, timeline) = write_behind_a_first_change(&url, &split, &split, None).await;
            let Written::Unchanged(in_force) = written else {
                panic!("the split in force set again, got {written:?}");
            };
            assert_eq!(in_force.revision, 1);
            assert_eq!(timeline, 0, "the split set again is on the timeline");
        })
        .await;
    }
}

//! Leader election between replicas: the replica that holds a PostgreSQL advisory lock
//! evaluates the rules, records incidents, runs actions and delivers notifications; the others
//! serve the API (incidents, silences, stats: all in the database) and wait to take over. Two
//! replicas therefore never notify twice.
//!
//! The lock is session-level, on a connection of its own: it goes when that session ends
//! (a crash, a network partition), and the next replica to ask takes it. A leader that loses
//! its connection goes on evaluating (its writes wait in the queue, as in any outage of the
//! database) until it reconnects: it leads on if the lock is still free, and steps down,
//! leaving its queued writes to the new leader, if another replica took it meanwhile.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;

/// The advisory lock's key ("alertmgr" in ASCII). Advisory locks are per database, so meshes
/// with databases of their own never contend.
pub const LOCK_KEY: i64 = 0x616c_6572_746d_6772;

/// How often the lock is asked for, and the lock's connection checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for one statement on the lock's connection.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Competes for the lead until `stop`.
pub async fn compete(engine: Arc<Engine>, stop: shared::shutdown::Shutdown) {
    let mut stopped = std::pin::pin!(stop.wait());
    let mut reported_down = false;
    loop {
        let connection = tokio::select! {
            c = engine.incidents().dedicated_connection() => c,
            () = &mut stopped => return,
        };
        match connection {
            Ok(mut connection) => {
                reported_down = false;
                // Whether this session holds the lock (asked for once, then only checked: the
                // lock is re-entrant and each grant would have to be released).
                let mut holds = false;
                loop {
                    let asked = if holds {
                        sqlx::query_scalar::<_, bool>("SELECT true")
                    } else {
                        sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                            .bind(LOCK_KEY)
                    };
                    let answer =
                        tokio::time::timeout(STATEMENT_TIMEOUT, asked.fetch_one(&mut connection))
                            .await;
                    match answer {
                        Ok(Ok(true)) => {
                            if !holds {
                                match engine.take_lead().await {
                                    Ok(()) => holds = true,
                                    Err(err) => {
                                        tracing::warn!(error = %err, "state not restored; will ask for the lead again");
                                        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                                            .bind(LOCK_KEY)
                                            .execute(&mut connection)
                                            .await;
                                    }
                                }
                            }
                        }
                        Ok(Ok(false)) => engine.step_down(),
                        // The session is gone, and the lock with it: reconnect and ask again.
                        _ => break,
                    }
                    tokio::select! {
                        () = tokio::time::sleep(CHECK_EVERY) => {}
                        () = &mut stopped => return,
                    }
                }
            }
            Err(err) => {
                if !reported_down {
                    tracing::warn!(error = %err, "the leader lock's database is unreachable; trying again every second");
                    reported_down = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = &mut stopped => return,
        }
    }
}

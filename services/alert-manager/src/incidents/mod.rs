//! Incidents in PostgreSQL (through `sqlx`, bound parameters only, migrations applied at
//! start-up): one incident per alert group while it is active, states open → acknowledged →
//! resolved, and a timeline of every event with its actor and time.
//!
//! One store over the database, one module per aggregate: [`timeline`] (incidents and their
//! events), [`outbox`] (notifications to deliver), [`silences`], [`engine_state`] (the leader's
//! saved evaluation state) and [`deployments`] (the deployment timeline). This module holds the
//! connection and the errors.

mod deployments;
mod engine_state;
mod outbox;
mod silences;
mod timeline;

pub use deployments::DeploymentEvent;
use engine_state::holds_term;
pub use outbox::{Due, Outgoing};
use timeline::*;
pub use timeline::{Action, Event, Filter, Incident, IncidentState, Remediation, Stat};

use std::collections::BTreeMap;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use crate::alert::Alert;
use crate::alert::Silence;
use crate::labels::LabelSet;

/// The actor of the events the service itself records.
pub const SELF_ACTOR: &str = "alert-manager";

/// Why an incident operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    /// The database refused or could not be reached.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// The database could not be reached within the time allowed at start.
    #[error("PostgreSQL at {address} could not be reached within {waited_secs} s: {source}")]
    Unreachable {
        /// Host and port (never the password).
        address: String,
        /// How long it was tried.
        waited_secs: u64,
        /// The last attempt's error.
        source: sqlx::Error,
    },
    /// Migrations could not be applied.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No incident has this id.
    #[error("no incident {0}")]
    NotFound(i64),
    /// The operation does not apply to the incident's state.
    #[error("{0}")]
    State(String),
}

impl IncidentError {
    /// Whether the database refused this write for what it holds (invalid data such as a NUL
    /// byte in a text, a broken constraint, a value too large): it will never succeed, so the
    /// write must be set aside rather than retried. Anything else (the database unreachable,
    /// restarting, out of connections, a serialization conflict) may succeed later.
    pub fn is_refusal(&self) -> bool {
        match self {
            IncidentError::Database(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                // SQLSTATE classes: 22 data exception, 23 integrity constraint violation,
                // 54 program limit exceeded.
                ["22", "23", "54"]
                    .iter()
                    .any(|class| code.starts_with(class))
            }),
            IncidentError::Database(
                sqlx::Error::Encode(_)
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::TypeNotFound { .. },
            ) => true,
            IncidentError::Database(_)
            | IncidentError::Unreachable { .. }
            | IncidentError::Migrate(_) => false,
            IncidentError::NotFound(_) | IncidentError::State(_) => true,
        }
    }
}

/// The store.
#[derive(Clone)]
pub struct IncidentStore {
    pool: PgPool,
}

/// The host and port of a database URL, for messages (the URL itself may hold a password).
fn address_of(url: &str) -> String {
    match url.parse::<sqlx::postgres::PgConnectOptions>() {
        Ok(options) => format!("{}:{}", options.get_host(), options.get_port()),
        Err(_) => "the configured URL".to_owned(),
    }
}

/// Whether `err` says the database could not be reached yet (as opposed to refusing the request).
fn unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // 57P03: "the database system is starting up".
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

impl IncidentStore {
    /// Connects to `url` and applies the migrations.
    pub async fn connect(url: &str) -> Result<IncidentStore, IncidentError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(IncidentStore { pool })
    }

    /// As [`IncidentStore::connect`], trying again while the database cannot be reached (it is
    /// down, still starting, or too slow to answer) until `wait` has passed. Any other error
    /// (a malformed URL, a refused login, a failed migration) is returned at once.
    pub async fn connect_within(
        url: &str,
        wait: std::time::Duration,
    ) -> Result<IncidentStore, IncidentError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            match IncidentStore::connect(url).await {
                Err(IncidentError::Database(err)) if unreachable(&err) => {
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(IncidentError::Unreachable {
                            address: address_of(url),
                            waited_secs: wait.as_secs(),
                            source: err,
                        });
                    }
                    tracing::warn!(error = %err, retry_in = ?pause, "incident database not reachable yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                outcome => return outcome,
            }
        }
    }

    /// A connection of its own, outside the pool (a session-level advisory lock lives as long
    /// as it does).
    pub async fn dedicated_connection(&self) -> Result<sqlx::PgConnection, IncidentError> {
        Ok(self.pool.acquire().await?.detach())
    }
}

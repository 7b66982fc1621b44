//! What the API takes from an operator and what it refuses, through the gRPC handlers over a
//! real PostgreSQL (127.0.0.1:5432, or `TEST_POSTGRES_URL`), each test on a database of its
//! own: silences whose matchers cannot work as written, oversized silence fields, and texts
//! the database cannot store. A refusal is `INVALID_ARGUMENT` whose message says what to
//! change; nothing refused is stored, and the database stays up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alert_manager::actions::{ActionConfig, ActionRunner};
use alert_manager::engine::{Engine, EngineConfig, now_ms};
use alert_manager::grpc::AlertService;
use alert_manager::incidents::IncidentStore;
use proto::monitoring::alerts::v1 as pb;
use proto::monitoring::alerts::v1::alert_manager_server::AlertManager;
use shared::auth::ApiKeys;
use tonic::{Code, Request, Status};

/// The admin key the tests' requests carry.
const ADMIN_KEY: &str = "test-admin-key";

/// A database of its own, dropped at the end. Its name starts as the integration tests'
/// ones do, so that a run killed before dropping it is swept by the next of those.
struct TestDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create() -> TestDatabase {
        let server = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
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
        TestDatabase {
            url: format!("{server}/{name}"),
            admin,
            name,
        }
    }

    async fn drop(self) {
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await;
    }
}

/// The API over an engine with no rules, on a fresh database.
struct Api {
    service: AlertService,
    engine: Arc<Engine>,
    db: TestDatabase,
}

impl Api {
    async fn start() -> Api {
        let db = TestDatabase::create().await;
        let store = IncidentStore::connect(&db.url).await.unwrap();
        let actions = ActionRunner::new(ActionConfig {
            tls: shared::tls::MeshTls::plaintext(),
            gateway: None,
            gateway_api_key: None,
            inference: None,
            inference_api_key: None,
            min_interval: Duration::from_secs(60),
            dry_run: true,
        });
        let engine = Arc::new(Engine::new(
            EngineConfig {
                paths: Vec::new(),
                auto_resolve: false,
                state_max_age_ms: 60_000,
            },
            store,
            actions,
        ));
        let keys = ApiKeys::load(None, &[format!("{ADMIN_KEY}:ops:admin")]).unwrap();
        Api {
            service: AlertService::new(engine.clone(), Arc::new(keys)),
            engine,
            db,
        }
    }

    async fn stop(self) {
        drop(self.service);
        drop(self.engine);
        self.db.drop().await;
    }

    /// CreateSilence for an hour with `matchers` and `comment`, as an admin.
    async fn silence(
        &self,
        matchers: &[(&str, &str)],
        comment: &str,
    ) -> Result<pb::Silence, Status> {
        let request = pb::CreateSilenceRequest {
            matchers: matchers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            starts_at_unix_ms: 0,
            ends_at_unix_ms: 0,
            duration_seconds: 3600,
            comment: comment.to_owned(),
        };
        self.service
            .create_silence(admin(request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The silences not yet ended.
    async fn silences(&self) -> Vec<pb::Silence> {
        self.service
            .list_silences(Request::new(pb::ListSilencesRequest {
                include_expired: false,
            }))
            .await
            .unwrap()
            .into_inner()
            .silences
    }

    /// Opens an incident, as a firing alert of the group `group` does, and returns its id.
    async fn incident(&self, group: &str) -> i64 {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "HighLatency".to_owned()),
            ("severity".to_owned(), "page".to_owned()),
            ("model".to_owned(), group.to_owned()),
        ]);
        let alert: alert_manager::alert::Alert = serde_json::from_value(serde_json::json!({
            "rule": "HighLatency",
            "labels": labels,
            "annotations": {"summary": format!("{group} is slow")},
            "state": "Firing",
            "value": 2.5,
            "active_since_ms": now_ms() - 60_000,
            "fired_at_ms": now_ms(),
            "resolved_at_ms": 0,
            "last_held_ms": now_ms(),
            "fingerprint": format!("fp-{group}"),
        }))
        .unwrap();
        let (id, opened) = self
            .engine
            .incidents()
            .alert_fired(group, &labels, &alert, None, now_ms())
            .await
            .unwrap();
        assert!(opened);
        id
    }
}

/// `message` with the admin key.
fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", shared::auth::bearer(ADMIN_KEY).unwrap());
    request
}

/// Asserts that `outcome` is `INVALID_ARGUMENT` whose message holds every one of `words`.
fn assert_refused<T: std::fmt::Debug>(outcome: Result<T, Status>, words: &[&str]) {
    let status = outcome.expect_err("refused");
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "code of {:?}",
        status.message()
    );
    for word in words {
        assert!(
            status.message().contains(word),
            "message {:?} does not say {word:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn a_silence_whose_regex_does_not_compile_as_used_is_refused() {
    let api = Api::start().await;
    // `(?x)` makes `#` start a comment: the regex compiles alone, but not inside `^(?:…)$`,
    // the form it would be matched in (the comment swallows the closing parenthesis).
    for spec in ["!~(?x)a#", "=~(?x)a#"] {
        assert_refused(
            api.silence(&[("model", spec)], "maintenance").await,
            &["matcher 'model'", "regular expression"],
        );
    }
    assert!(
        api.silences().await.is_empty(),
        "a refused silence was stored"
    );
    // One that compiles either way is still taken, matching whole values.
    let kept = api
        .silence(&[("model", "!~(?x) mini # any minilm\n lm")], "maintenance")
        .await
        .unwrap();
    assert_eq!(api.silences().await, vec![kept]);
    api.stop().await;
}

#[tokio::test]
async fn silence_matcher_names_and_values_and_the_comment_are_bounded() {
    let api = Api::start().await;
    let long = "n".repeat(257);
    assert_refused(
        api.silence(&[(&long, "x")], "maintenance").await,
        &["matcher name", "257 bytes", "256"],
    );
    let long_value = "v".repeat(257);
    for spec in [
        long_value.clone(),
        format!("!={long_value}"),
        format!("=~{long_value}"),
    ] {
        assert_refused(
            api.silence(&[("model", &spec)], "maintenance").await,
            &["matcher 'model'", "value", "257 bytes", "256"],
        );
    }
    let comment = "c".repeat(4097);
    let refused = api.silence(&[("model", "minilm")], &comment).await;
    assert!(
        !refused
            .as_ref()
            .is_err_and(|s| s.message().contains("empty")),
        "a long comment is not an empty one: {refused:?}"
    );
    assert_refused(refused, &["comment", "4097 bytes", "4096"]);
    assert!(
        api.silences().await.is_empty(),
        "a refused silence was stored"
    );
    // At the limits, all is taken.
    let name = "n".repeat(256);
    let value = format!("!={}", "v".repeat(256));
    let kept = api
        .silence(&[(&name, &value)], &"c".repeat(4096))
        .await
        .unwrap();
    assert_eq!(api.silences().await, vec![kept]);
    api.stop().await;
}

#[tokio::test]
async fn a_note_or_silence_holding_a_nul_byte_is_refused_as_invalid() {
    let api = Api::start().await;
    let id = api.incident("minilm").await;
    let act = |note: &str| {
        admin(pb::IncidentActionRequest {
            id,
            note: note.to_owned(),
        })
    };
    assert_refused(
        api.service.annotate_incident(act("a\0b")).await,
        &["note", "U+0000"],
    );
    assert_refused(
        api.service.acknowledge_incident(act("a\0b")).await,
        &["note", "U+0000"],
    );
    assert_refused(
        api.silence(&[("model", "minilm")], "a\0b").await,
        &["comment", "U+0000"],
    );
    assert_refused(
        api.silence(&[("model", "=~a\0b")], "maintenance").await,
        &["matcher 'model'", "U+0000"],
    );
    assert_refused(
        api.silence(&[("a\0b", "minilm")], "maintenance").await,
        &["matcher name", "U+0000"],
    );
    // Nothing was recorded, and the database still takes what it can store.
    assert!(
        api.silences().await.is_empty(),
        "a refused silence was stored"
    );
    let done = api
        .service
        .acknowledge_incident(act("on it\n\tlooking at p99"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, pb::IncidentState::Acknowledged as i32);
    let notes: Vec<_> = done.timeline.iter().map(|e| e.message.as_str()).collect();
    assert!(!notes.iter().any(|m| m.contains('\0')), "{notes:?}");
    api.stop().await;
}

#[tokio::test]
async fn content_the_database_refuses_is_invalid_argument_not_unavailable() {
    let api = Api::start().await;
    let id = api.incident("minilm").await;
    let store = api.engine.incidents();
    // Past the API's own checks, PostgreSQL refuses a NUL byte in a text (SQLSTATE 22021) and
    // in a jsonb string (22P05): the request, not the database, is at fault.
    let refused = store
        .act(
            id,
            alert_manager::incidents::Action::Note,
            "ops",
            "a\0b",
            now_ms(),
        )
        .await
        .expect_err("PostgreSQL refuses a NUL byte in a text");
    let status = Status::from(refused);
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("refused"),
        "{:?} does not say it was refused",
        status.message()
    );
    let silence = alert_manager::alert::Silence {
        id: 0,
        matchers: BTreeMap::from([("model".to_owned(), "a\0b".to_owned())]),
        starts_at_ms: now_ms(),
        ends_at_ms: now_ms() + 60_000,
        author: "ops".to_owned(),
        comment: "maintenance".to_owned(),
    };
    let refused = store
        .create_silence(&silence, now_ms())
        .await
        .expect_err("PostgreSQL refuses a NUL byte in a jsonb string");
    let status = Status::from(refused);
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    api.stop().await;
}

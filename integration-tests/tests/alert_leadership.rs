//! Two alert managers over one database, at the level of what they write: a replica that lost
//! the lead writes no notification and no evaluation state, and a notification being sent by
//! one replica is not sent by another.

use std::time::Duration;

use alert_manager::incidents::{IncidentStore, Outgoing};
use integration_tests::*;

/// A notification of group `key` to the receiver at `url`.
fn outgoing(url: &str, key: &str) -> Vec<Outgoing> {
    vec![Outgoing {
        receiver: "ops".to_owned(),
        url: url.to_owned(),
        payload: serde_json::json!({"status": "firing", "groupKey": key}),
    }]
}

async fn outbox_rows(db: &TestDatabase) -> i64 {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn a_replica_that_lost_the_lead_writes_no_notification_and_no_state() {
    let db = TestDatabase::create().await;
    let first = IncidentStore::connect(&db.url).await.unwrap();
    let second = IncidentStore::connect(&db.url).await.unwrap();
    let now = alert_manager::engine::now_ms();
    let old = first.take_term(now).await.unwrap();
    let new = second.take_term(now).await.unwrap();
    assert!(new > old, "each lead starts a later term: {old} then {new}");
    let group = serde_json::json!({"first_seen_ms": now, "last_sent_ms": now, "last_sent": ["f"]});

    // What the first decided while it still believed it led is not written…
    let written = first
        .enqueue(
            "g",
            &outgoing("http://127.0.0.1:9/hook", "g"),
            Some(&group),
            old,
            now,
        )
        .await
        .unwrap();
    assert!(!written, "a superseded term's notification was written");
    assert_eq!(outbox_rows(&db).await, 0);
    let saved = first
        .save_state(&serde_json::json!({"alerts": [], "groups": {}}), old, now)
        .await
        .unwrap();
    assert!(!saved, "a superseded term's state was saved");
    assert!(first.load_state().await.unwrap().is_none());

    // …while the leader's is, with the group's timing, until its state is saved.
    let written = second
        .enqueue(
            "g",
            &outgoing("http://127.0.0.1:9/hook", "g"),
            Some(&group),
            new,
            now,
        )
        .await
        .unwrap();
    assert!(written);
    assert_eq!(outbox_rows(&db).await, 1);
    let notified = second.notified_since_saved().await.unwrap();
    assert_eq!(notified, vec![("g".to_owned(), Some(group), now)]);
    let saved = second
        .save_state(&serde_json::json!({"alerts": [], "groups": {}}), new, now)
        .await
        .unwrap();
    assert!(saved);
    assert!(
        second.notified_since_saved().await.unwrap().is_empty(),
        "the saved state holds the notification timing written before it"
    );
    db.drop().await;
}

/// A receiver that holds each request until told to answer, and counts what arrived.
async fn holding_receiver() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    std::sync::Arc<tokio::sync::Notify>,
) {
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let answer = release.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let (arrived, answer) = (arrived.clone(), answer.clone());
            async move {
                let _ = arrived.send(());
                answer.notified().await;
                "ok"
            }
        }),
    );
    let (listener, addr) = shared::testing::ephemeral_listener().await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, arrivals, release)
}

#[tokio::test]
async fn a_notification_one_replica_is_sending_is_not_sent_by_another() {
    let db = TestDatabase::create().await;
    let leader = IncidentStore::connect(&db.url).await.unwrap();
    let next = IncidentStore::connect(&db.url).await.unwrap();
    let (addr, mut arrivals, release) = holding_receiver().await;
    let now = alert_manager::engine::now_ms();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO notifications (receiver, url, payload, next_attempt_ms, created_ms) \
         VALUES ('ops', $1, '{\"status\": \"firing\"}', $2, $2)",
    )
    .bind(format!("http://{addr}/hook"))
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // The leader sends it; the receiver holds the request.
    let due = leader
        .due_notifications(now, &[])
        .await
        .unwrap()
        .remove("ops")
        .expect("the notification is due");
    let sending = tokio::spawn({
        let leader = leader.clone();
        async move {
            let http = reqwest::Client::new();
            leader
                .deliver_to_receiver(&http, due, Duration::from_secs(30))
                .await
        }
    });
    arrivals.recv().await.expect("the notification arrives");

    // Another replica, leading now, finds nothing to send meanwhile.
    let due = next.due_notifications(now, &[]).await.unwrap();
    assert!(
        due.is_empty(),
        "a notification being sent was handed to a second sender"
    );
    release.notify_one();
    assert_eq!(sending.await.unwrap().unwrap(), 1, "delivered once");
    assert!(next.due_notifications(now, &[]).await.unwrap().is_empty());
    assert!(
        arrivals.try_recv().is_err(),
        "the receiver got the notification twice"
    );
    db.drop().await;
}

/// A firing alert of group `group`, as the evaluator records it.
fn firing(group: &str) -> (alert_manager::labels::LabelSet, alert_manager::alert::Alert) {
    let now = alert_manager::engine::now_ms();
    let labels: alert_manager::labels::LabelSet = [
        ("alertname".to_owned(), "Errors".to_owned()),
        ("model".to_owned(), group.to_owned()),
    ]
    .into_iter()
    .collect();
    let alert = serde_json::from_value(serde_json::json!({
        "rule": "Errors",
        "labels": labels,
        "annotations": {},
        "state": "Firing",
        "value": 12.0,
        "active_since_ms": now,
        "fired_at_ms": now,
        "resolved_at_ms": 0,
        "last_held_ms": now,
        "fingerprint": format!("fp-{group}"),
    }))
    .unwrap();
    (labels, alert)
}

#[tokio::test]
async fn two_replicas_recording_a_group_s_first_alert_at_once_make_one_incident_and_lose_no_event()
{
    let db = TestDatabase::create().await;
    let store = IncidentStore::connect(&db.url).await.unwrap();
    let (labels, alert) = firing("m");
    let now = alert_manager::engine::now_ms();
    // The other replica's transaction has opened the group's incident and not committed yet.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut other = pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO incidents (group_key, title, state, labels, opened_at_ms) \
         VALUES ('m', 'Errors (m)', 'open', '{}', $1) RETURNING id",
    )
    .bind(now)
    .fetch_one(&mut *other)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO incident_events (incident_id, kind, actor, message, at_ms) \
         VALUES ($1, 'fired', 'alert-manager', 'the other replica', $2)",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *other)
    .await
    .unwrap();
    let recording = tokio::spawn({
        let store = store.clone();
        async move { store.alert_fired("m", &labels, &alert, None, now).await }
    });
    // This one's insert waits on the other's incident; then the other commits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second record never waited for the first"
        );
        tokio::task::yield_now().await;
    }
    other.commit().await.unwrap();
    let recorded = recording.await.unwrap();
    assert!(
        matches!(recorded, Ok((i, false)) if i == id),
        "recorded on the other replica's incident: {recorded:?}"
    );
    let fired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM incident_events WHERE incident_id = $1 AND kind = 'fired'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(fired, 2, "both replicas' records are on the timeline");
    pool.close().await;
    db.drop().await;
}

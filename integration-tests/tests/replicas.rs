//! Several gateway replicas over one PostgreSQL agree on what is deployed: a canary split set
//! through one is applied by the others within a second and survives a restart; while the
//! database is down they serve what they hold and refuse changes.

use std::time::{Duration, Instant};

use integration_tests::postgres::ThrowawayPostgres;
use integration_tests::*;
use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_client::GatewayAdminClient;
use tonic::Code;

const MODEL: &str = "minilm-l6";

fn split(weights: &[(i64, u32)], reason: &str) -> tonic::Request<pb::SetCanaryRequest> {
    let mut request = with_key(canary_split(MODEL, weights), "admin-key", None);
    if !reason.is_empty() {
        request
            .metadata_mut()
            .insert("x-change-reason", reason.parse().unwrap());
    }
    request
}

async fn weights_on(gateway: &RunningGateway) -> (Vec<(i64, u32)>, i64) {
    let state = GatewayAdminClient::new(connect(gateway.addr).await)
        .get_canary(with_key(
            pb::GetCanaryRequest {
                model: MODEL.into(),
            },
            "admin-key",
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let weights = state
        .weights
        .iter()
        .map(|w| (w.version, w.weight))
        .collect();
    (weights, state.revision)
}

/// Sets `weights` through `gateway` only over revision `expected` (compare and set).
async fn set_over(
    gateway: &RunningGateway,
    weights: &[(i64, u32)],
    expected: i64,
) -> Result<pb::CanaryState, tonic::Status> {
    let mut request = split(weights, &format!("computed from revision {expected}"));
    request.get_mut().expected_revision = Some(expected);
    GatewayAdminClient::new(connect(gateway.addr).await)
        .set_canary(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The deployment timeline of the model, newest first, read through `gateway`.
async fn timeline(gateway: &RunningGateway) -> Vec<pb::CanaryChange> {
    GatewayAdminClient::new(connect(gateway.addr).await)
        .list_canary_changes(with_key(
            pb::ListCanaryChangesRequest {
                model: MODEL.into(),
                limit: 100,
            },
            "admin-key",
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .changes
}

/// The version that served an Embed for `shopper` through `gateway`.
async fn served_version(gateway: &RunningGateway, shopper: &str) -> i64 {
    gateway_client(gateway.addr)
        .await
        .embed(with_key(
            pb::EmbedRequest {
                texts: vec!["trail running shoes".into()],
            },
            "client-key",
            Some(shopper),
        ))
        .await
        .unwrap()
        .into_inner()
        .served_by
        .unwrap()
        .version
}

/// A gateway's configuration over `replicas`, keeping its deployed state in `database`.
fn shared_state_config(
    replicas: &[std::net::SocketAddr],
    database: &str,
) -> gateway::GatewayConfig {
    gateway_config(
        replicas,
        &["--database-url", database, "--rate-limit", "100000"],
    )
}

async fn gateway_on(inference: &RunningInference, database: &str) -> RunningGateway {
    RunningGateway::start(shared_state_config(&[inference.addr], database))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_set_through_one_gateway_is_applied_by_every_replica_and_survives_a_restart() {
    let db = TestDatabase::create().await;
    let repository = two_version_repository();
    let mut inference = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    let mut a = gateway_on(&inference, &db.url).await;
    let b = gateway_on(&inference, &db.url).await;

    // Set through A: B applies it within a second, and serves by it.
    let set_at = Instant::now();
    GatewayAdminClient::new(connect(a.addr).await)
        .set_canary(split(&[(1, 0), (2, 100)], "canary of the new fine-tune"))
        .await
        .unwrap();
    let on_b = eventually("B applies A's split", Duration::from_secs(5), || async {
        let (weights, _) = weights_on(&b).await;
        (weights == [(1, 0), (2, 100)]).then(|| set_at.elapsed())
    })
    .await;
    assert!(
        on_b <= Duration::from_secs(1),
        "B applied it after {on_b:?}"
    );
    for shopper in ["s-1", "s-2", "s-3"] {
        assert_eq!(served_version(&b, shopper).await, 2);
    }

    // A version no replica serves is refused, and nothing changes anywhere.
    let refused = GatewayAdminClient::new(connect(b.addr).await)
        .set_canary(split(&[(1, 50), (9, 50)], ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(weights_on(&a).await.0, [(1, 0), (2, 100)]);

    // A restarted gateway starts from the stored split, before its first call.
    a.stop().await.unwrap();
    let a2 = gateway_on(&inference, &db.url).await;
    assert_eq!(weights_on(&a2).await.0, [(1, 0), (2, 100)]);
    assert_eq!(served_version(&a2, "s-4").await, 2);

    // The split in force set again (a reconciler re-applying it) is no change: same revision,
    // nothing added to the timeline.
    let revision = weights_on(&a2).await.1;
    let again = GatewayAdminClient::new(connect(a2.addr).await)
        .set_canary(split(&[(1, 0), (2, 100)], "reconciler: re-applied"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revision, revision);
    assert_eq!(timeline(&b).await.len(), 1, "only the first change");

    // Compare and set: a change computed from the revision in force is made; one computed
    // from a split read before that change is aborted, through any replica, and nothing
    // changes.
    let made = set_over(&b, &[(1, 10), (2, 90)], revision).await.unwrap();
    assert_eq!(made.revision, revision + 1);
    // Computed before the first split (revision 0).
    let aborted = set_over(&b, &[(1, 100), (2, 0)], 0).await.unwrap_err();
    assert_eq!(aborted.code(), Code::Aborted, "{aborted:?}");
    let refused = set_over(&b, &[(1, 100), (2, 0)], -1).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let aborted = set_over(&a2, &[(1, 100), (2, 0)], revision)
        .await
        .unwrap_err();
    assert_eq!(aborted.code(), Code::Aborted, "{aborted:?}");
    assert!(
        aborted
            .message()
            .contains(&format!("at revision {}, not {revision}", revision + 1)),
        "{}",
        aborted.message()
    );
    assert_eq!(
        weights_on(&b).await,
        ([(1, 10), (2, 90)].into(), revision + 1)
    );

    // Two operators changing the split at once, through either gateway: every replica ends
    // with one of their states, the last one committed, never a mix.
    let mut writers = Vec::new();
    for (i, gateway) in [&a2, &b].into_iter().cycle().take(20).enumerate() {
        let addr = gateway.addr;
        let weights = if i % 2 == 0 {
            vec![(1, 100), (2, 0)]
        } else {
            vec![(1, 30), (2, 70)]
        };
        writers.push(tokio::spawn(async move {
            GatewayAdminClient::new(connect(addr).await)
                .set_canary(split(&weights, &format!("operator {}", i % 2)))
                .await
                .unwrap()
                .into_inner()
                .revision
        }));
    }
    let mut last = 0;
    for writer in writers {
        last = last.max(writer.await.unwrap());
    }
    let agreed = eventually(
        "both replicas at the last revision",
        Duration::from_secs(3),
        || async {
            let (on_a, rev_a) = weights_on(&a2).await;
            let (on_b, rev_b) = weights_on(&b).await;
            (rev_a == last && rev_b == last).then_some((on_a, on_b))
        },
    )
    .await;
    assert_eq!(agreed.0, agreed.1);
    assert!(
        agreed.0 == [(1, 100), (2, 0)] || agreed.0 == [(1, 30), (2, 70)],
        "{agreed:?}"
    );

    // The timeline says who changed what, through which gateway, and why: one entry per
    // SetCanary that changed the split in force.
    let changes = timeline(&b).await;
    assert!((3..=22).contains(&changes.len()), "{changes:?}");
    for pair in changes.windows(2) {
        assert_ne!(pair[0].weights, pair[1].weights, "{changes:?}");
        assert_eq!(pair[0].revision, pair[1].revision + 1, "{changes:?}");
    }
    let first = changes.last().unwrap();
    assert_eq!(first.reason, "canary of the new fine-tune");
    assert!(first.changed_by.starts_with("ops (key "), "{first:?}");
    assert!(!first.gateway.is_empty());
    assert_eq!(changes[0].revision, last);

    let (mut a2, mut b) = (a2, b);
    a2.stop().await.unwrap();
    b.stop().await.unwrap();
    inference.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_gateways_serve_what_they_hold_refuse_changes_and_catch_up() {
    let pg = ThrowawayPostgres::start();
    let repository = two_version_repository();
    let mut inference = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    let mut a = gateway_on(&inference, &pg.url()).await;
    GatewayAdminClient::new(connect(a.addr).await)
        .set_canary(split(&[(1, 100), (2, 0)], ""))
        .await
        .unwrap();

    pg.down();
    let refused = GatewayAdminClient::new(connect(a.addr).await)
        .set_canary(split(&[(1, 0), (2, 100)], ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("PostgreSQL") && refused.message().contains("nothing changed"),
        "{}",
        refused.message()
    );
    // A keeps serving the split it holds.
    assert_eq!(weights_on(&a).await.0, [(1, 100), (2, 0)]);
    assert_eq!(served_version(&a, "s-1").await, 1);

    // B starts while the database is down: it serves, with no split (the newest version).
    let mut b = gateway_on(&inference, &pg.url()).await;
    assert_eq!(weights_on(&b).await.0, []);
    assert_eq!(served_version(&b, "s-1").await, 2);

    // The database returns: B picks the stored split up.
    pg.up();
    eventually(
        "B reads the split once PostgreSQL is back",
        Duration::from_secs(10),
        || async { (weights_on(&b).await.0 == [(1, 100), (2, 0)]).then_some(()) },
    )
    .await;
    assert_eq!(served_version(&b, "s-1").await, 1);

    a.stop().await.unwrap();
    b.stop().await.unwrap();
    inference.stop().await.unwrap();
}

/// Through `gateway`: v2 is canaried over v1 and promoted, then v3 over v2 and promoted.
/// Returns the revision of v2's canary.
async fn promote_v2_then_v3(gateway: &RunningGateway) -> i64 {
    let mut admin = GatewayAdminClient::new(connect(gateway.addr).await);
    admin
        .set_canary(split(&[(1, 90), (2, 10)], "canary of v2"))
        .await
        .unwrap();
    let v2_canary = weights_on(gateway).await.1;
    for (weights, reason) in [
        (&[(1, 0), (2, 100)][..], "v2 promoted"),
        (&[(1, 0), (2, 90), (3, 10)][..], "canary of v3"),
        (&[(1, 0), (2, 0), (3, 100)][..], "v3 promoted"),
    ] {
        admin.set_canary(split(weights, reason)).await.unwrap();
    }
    v2_canary
}

/// Runs the alert manager's rollback of v3 (which holds all the traffic) through `gateway`
/// and checks that it went back to v2's canary (revision `v2_canary`) with v2 left out as not
/// served.
async fn rolls_v3_back_to_v2s_canary_without_v2(gateway: &RunningGateway, v2_canary: i64) {
    let outcome = canary_action_runner(gateway.addr)
        .run("CanaryVersionErrors", &roll_back("3"), &Default::default())
        .await;
    assert_eq!(
        outcome,
        alert_manager::actions::Outcome::Done(format!(
            "{MODEL} split now v1=90, v2=0, v3=0 (v3 held all the traffic: back to the split \
             of revision {v2_canary}, v2 left out as not served now)"
        ))
    );
    assert_eq!(weights_on(gateway).await.0, [(1, 90), (2, 0), (3, 0)]);
}

/// The alert manager's action that takes `version` of the model out of traffic.
fn roll_back(version: &str) -> alert_manager::alert::ActionSpec {
    alert_manager::alert::ActionSpec::SetCanaryWeight {
        model: MODEL.into(),
        version: version.into(),
        weight: 0,
    }
}

/// A version rolled back once stays out when a later canary, promoted to all the traffic,
/// fails in turn: the alert manager's rollback reads the deployment timeline and returns the
/// traffic to the split that served before the promotion, not to the newest other version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_a_promoted_canary_returns_to_the_split_before_it_not_to_an_older_failure() {
    use alert_manager::actions::Outcome;

    let db = TestDatabase::create().await;
    let repository = repository_serving(MODEL, &[(1, 1), (2, 1), (3, 1)]);
    let mut inference = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    let mut gateway = gateway_on(&inference, &db.url).await;
    let mut admin = GatewayAdminClient::new(connect(gateway.addr).await);
    let runner = canary_action_runner(gateway.addr);

    // Version 2's canary fails and is rolled back.
    admin
        .set_canary(split(&[(1, 90), (2, 10)], "canary of v2"))
        .await
        .unwrap();
    let outcome = runner
        .run("CanaryVersionErrors", &roll_back("2"), &Default::default())
        .await;
    assert_eq!(
        outcome,
        Outcome::Done(format!("{MODEL} split now v1=90, v2=0"))
    );

    // Version 3's canary does well and is promoted; then it fails.
    admin
        .set_canary(split(&[(1, 90), (2, 0), (3, 10)], "canary of v3"))
        .await
        .unwrap();
    let before_promotion = weights_on(&gateway).await.1;
    admin
        .set_canary(split(&[(1, 0), (2, 0), (3, 100)], "v3 promoted"))
        .await
        .unwrap();
    let outcome = runner
        .run("CanaryVersionErrors", &roll_back("3"), &Default::default())
        .await;
    assert_eq!(
        outcome,
        Outcome::Done(format!(
            "{MODEL} split now v1=90, v2=0, v3=0 (v3 held all the traffic: back to the split \
             of revision {before_promotion})"
        ))
    );
    assert_eq!(weights_on(&gateway).await.0, [(1, 90), (2, 0), (3, 0)]);
    for shopper in ["s-1", "s-2", "s-3", "s-4"] {
        assert_eq!(served_version(&gateway, shopper).await, 1, "{shopper}");
    }

    gateway.stop().await.unwrap();
    inference.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_rollback_passes_over_an_earlier_split_whose_version_no_replica_serves_now() {
    let db = TestDatabase::create().await;
    let repository = repository_serving(MODEL, &[(1, 1), (2, 1), (3, 1)]);
    let mut inference = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    let mut gateway = gateway_on(&inference, &db.url).await;

    // v2 is canaried over v1 and promoted; then v3 is canaried over v2 and promoted.
    let v2_canary = promote_v2_then_v3(&gateway).await;
    // The operator retires v2 (a defect found in it later); v1 stays loaded.
    serve_versions(inference.addr, MODEL, &[1, 3]).await;

    // v3 fails. The split before its promotion gave v2 the traffic, which is not served
    // now: the gateway would refuse it, and v3 would keep all the traffic. The rollback goes
    // back to the latest split whose traffic a served version can take: v2's canary, without v2.
    rolls_v3_back_to_v2s_canary_without_v2(&gateway, v2_canary).await;
    for shopper in ["s-1", "s-2", "s-3", "s-4"] {
        assert_eq!(served_version(&gateway, shopper).await, 1, "{shopper}");
    }

    gateway.stop().await.unwrap();
    inference.stop().await.unwrap();
    db.drop().await;
}

/// Two inference replicas serving versions 1, 2 and 3 of the model from one repository
/// (kept while the replicas run).
async fn two_replicas_of_three_versions() -> (tempfile::TempDir, RunningInference, RunningInference)
{
    let repository = repository_serving(MODEL, &[(1, 1), (2, 1), (3, 1)]);
    let a = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    let b = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    (repository, a, b)
}

/// Whether `version` of the model is ready, as the gateway answers `ModelReady`.
async fn ready_through(gateway: &RunningGateway, version: i64) -> bool {
    ask_ready_through(gateway, version).await.unwrap()
}

/// The gateway's `ModelReady` answer about `version` of the model, or its status.
async fn ask_ready_through(gateway: &RunningGateway, version: i64) -> Result<bool, tonic::Status> {
    ask_ready_about(gateway, &version.to_string()).await
}

/// The gateway's `ModelReady` answer about `version` (as sent, well-formed or not).
async fn ask_ready_about(gateway: &RunningGateway, version: &str) -> Result<bool, tonic::Status> {
    oip_client(gateway.addr)
        .await
        .model_ready(with_key(
            proto::inference::ModelReadyRequest {
                name: MODEL.into(),
                version: version.into(),
            },
            "client-key",
            None,
        ))
        .await
        .map(|answer| answer.into_inner().ready)
}

/// A version one replica of two lacks (a pod restarted with its configured versions) is not
/// ready through the gateway, whichever replica a call would reach: `ModelReady` and
/// `SetCanary` agree, and the rollback passes the version over. A replica that is gone does
/// not count once the health checks have ejected it: a split can still be set while it is
/// down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_through_the_gateway_means_ready_on_every_replica_that_can_answer() {
    let db = TestDatabase::create().await;
    let (_repository, mut a, mut b) = two_replicas_of_three_versions().await;
    let mut gateway = RunningGateway::start(shared_state_config(&[a.addr, b.addr], &db.url))
        .await
        .unwrap();
    let mut admin = GatewayAdminClient::new(connect(gateway.addr).await);
    let v2_canary = promote_v2_then_v3(&gateway).await;
    // Replica B comes back serving v1 and v3 only; A still serves v2.
    serve_versions(b.addr, MODEL, &[1, 3]).await;

    // Whichever replica a call would reach (the gateway's pick goes round them), every answer
    // is "not ready", as a call pinned to v2 could fail.
    for call in 1..=4 {
        assert!(
            !ready_through(&gateway, 2).await,
            "ModelReady of v2, call {call}"
        );
        assert!(
            ready_through(&gateway, 1).await,
            "ModelReady of v1, call {call}"
        );
    }
    let refused = admin
        .set_canary(split(&[(1, 0), (2, 50), (3, 50)], "v2 back"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "version 2 of model '{MODEL}' is not ready on inference replica {} (1 of 2)",
            b.addr
        )),
        "{refused:?}"
    );

    // v3 fails: the split before its promotion gave v2 the traffic, which B cannot take.
    rolls_v3_back_to_v2s_canary_without_v2(&gateway, v2_canary).await;

    // B goes away (a pod gone for good). Until the health checks eject it, the gateway cannot
    // tell (UNAVAILABLE); once they have, B stands in no split's way: A serves v2, and the
    // traffic may go back to it.
    b.stop().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ask_ready_through(&gateway, 2).await {
            Ok(true) => break,
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            Ok(false) => panic!("v2 not ready through the gateway once replica B stopped"),
        }
        assert!(
            Instant::now() < deadline,
            "v2 still not ready through the gateway 10 s after replica B stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin
        .set_canary(split(
            &[(1, 50), (2, 50), (3, 0)],
            "v2 back while B is down",
        ))
        .await
        .unwrap();
    assert_eq!(weights_on(&gateway).await.0, [(1, 50), (2, 50), (3, 0)]);

    gateway.stop().await.unwrap();
    a.stop().await.unwrap();
    db.drop().await;
}

/// A replica that still takes traffic but does not answer (here: stopped, and not yet found
/// out by a health check) leaves the gateway unable to tell whether a version is ready:
/// `ModelReady` and `SetCanary` answer UNAVAILABLE naming it, and a rollback fails with that
/// reason, the split unchanged, instead of acting on a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_taking_traffic_that_cannot_answer_stops_a_change_instead_of_a_guess() {
    use alert_manager::actions::Outcome;

    let db = TestDatabase::create().await;
    let (_repository, mut a, mut b) = two_replicas_of_three_versions().await;
    let mut config = shared_state_config(&[a.addr, b.addr], &db.url);
    // One health round at the start, the next a minute later: B counts as taking traffic
    // for the whole test.
    config.health_interval_ms = 60_000;
    let mut gateway = RunningGateway::start(config).await.unwrap();
    promote_v2_then_v3(&gateway).await;
    let before = weights_on(&gateway).await;

    b.stop().await.unwrap();
    let status = ask_ready_through(&gateway, 1).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with(&format!(
            "could not tell whether version 1 of model '{MODEL}' is ready: inference replica {}: ",
            b.addr
        )),
        "{status:?}"
    );
    let refused = GatewayAdminClient::new(connect(gateway.addr).await)
        .set_canary(split(&[(1, 100), (2, 0), (3, 0)], "v1 back"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&b.addr.to_string()),
        "{refused:?}"
    );

    let outcome = canary_action_runner(gateway.addr)
        .run("CanaryVersionErrors", &roll_back("3"), &Default::default())
        .await;
    let Outcome::Failed(why) = &outcome else {
        panic!("the rollback did not fail: {outcome:?}");
    };
    assert!(
        why.starts_with(&format!("ModelReady of {MODEL} v2: could not tell whether")),
        "{why}"
    );
    assert_eq!(weights_on(&gateway).await, before);

    gateway.stop().await.unwrap();
    a.stop().await.unwrap();
    db.drop().await;
}

/// A malformed version is the caller's mistake, and the gateway says so itself
/// (INVALID_ARGUMENT), even when no inference replica is there to say it: not UNAVAILABLE, which
/// would send a client into retries that cannot succeed.
#[tokio::test]
async fn a_malformed_version_is_invalid_even_with_no_replica_to_say_so() {
    let repository = repository_serving(MODEL, &[(1, 1)]);
    let mut inference = RunningInference::start(inference_config(repository.path(), &[MODEL]))
        .await
        .unwrap();
    let mut gateway = RunningGateway::start(gateway_config(&[inference.addr], &[]))
        .await
        .unwrap();
    inference.stop().await.unwrap();

    for version in ["latest", "0", "-2", "1.5"] {
        let status = ask_ready_about(&gateway, version).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{version}: {status:?}"
        );
        assert_eq!(
            status.message(),
            format!("model '{MODEL}': version '{version}' is not a positive integer")
        );
    }
    // A stranger's 100 KB version: the same answer, its message cut to the bound (a status
    // message travels as a header), not a broken HTTP/2 exchange.
    let status = ask_ready_about(&gateway, &"x".repeat(100_000))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{:.200}",
        status.message()
    );
    assert!(
        status.message().len() <= shared::error::MAX_STATUS_MESSAGE_BYTES,
        "a message of {} bytes",
        status.message().len()
    );
    assert!(
        status
            .message()
            .starts_with(&format!("model '{MODEL}': version 'xxxxxxxx")),
        "{:.200}",
        status.message()
    );
    assert!(status.message().ends_with(" more bytes)"), "{status:?}");
    // A well-formed version: with no replica answering, the gateway cannot tell.
    let status = ask_ready_through(&gateway, 1).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    gateway.stop().await.unwrap();
}

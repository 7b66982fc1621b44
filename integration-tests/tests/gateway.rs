//! The gateway in front of real inference replicas: the auth matrix through grpcurl, rate
//! limits, a replica killed under traffic, canary splits, ranking against the reference
//! embeddings, and payload logs with personal data masked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use integration_tests::*;
use proto::ecommerce::gateway::v1 as pb;
use proto::ecommerce::gateway::v1::gateway_admin_client::GatewayAdminClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_sees_the_auth_matrix() {
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    let addr = gateway.addr.to_string();
    let grpcurl = venv_bin("grpcurl");
    let embed = r#"{"texts": ["wireless headphones"]}"#;
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            let output = tokio::process::Command::new(&grpcurl)
                .args(&args)
                .output()
                .await
                .unwrap();
            (
                output.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            )
        }
    };
    let call = |key: Option<&str>, data: &str, method: &str| {
        let mut args = vec!["-plaintext".to_owned()];
        if let Some(key) = key {
            args.push("-H".to_owned());
            args.push(format!("authorization: Bearer {key}"));
        }
        args.extend([
            "-d".to_owned(),
            data.to_owned(),
            addr.clone(),
            method.to_owned(),
        ]);
        args
    };
    let (ok, out) = run(call(None, embed, "ecommerce.gateway.v1.Gateway/Embed")).await;
    assert!(!ok && out.contains("Unauthenticated"), "no key: {out}");
    let (ok, out) = run(call(
        Some("wrong-key"),
        embed,
        "ecommerce.gateway.v1.Gateway/Embed",
    ))
    .await;
    assert!(
        !ok && out.contains("Unauthenticated") && out.contains("unknown API key"),
        "wrong key: {out}"
    );
    let (ok, out) = run(call(
        Some("client-key"),
        embed,
        "ecommerce.gateway.v1.Gateway/Embed",
    ))
    .await;
    assert!(
        ok && out.contains("requestId") && out.contains("servedBy"),
        "client key: {out}"
    );
    let canary = r#"{"model": "minilm-l6", "weights": [{"version": 1, "weight": 100}]}"#;
    let (ok, out) = run(call(
        Some("client-key"),
        canary,
        "ecommerce.gateway.v1.GatewayAdmin/SetCanary",
    ))
    .await;
    assert!(
        !ok && out.contains("PermissionDenied"),
        "client key on an admin RPC: {out}"
    );
    let (ok, out) = run(call(
        Some("admin-key"),
        canary,
        "ecommerce.gateway.v1.GatewayAdmin/SetCanary",
    ))
    .await;
    assert!(ok && out.contains("\"weight\": 100"), "admin key: {out}");
    let (ok, out) = run(call(None, "{}", "grpc.health.v1.Health/Check")).await;
    assert!(ok && out.contains("SERVING"), "health stays open: {out}");
    let (ok, out) = run(vec!["-plaintext".into(), addr.clone(), "list".into()]).await;
    assert!(
        ok && out.contains("ecommerce.gateway.v1.Gateway"),
        "reflection stays open: {out}"
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_limit_is_refused_and_the_key_recovers() {
    let config = gateway_config(
        &[shared_inference()],
        &["--rate-limit", "2", "--rate-burst", "3"],
    );
    let mut gateway = RunningGateway::start(config).await.unwrap();
    let mut client = gateway_client(gateway.addr).await;
    let request = || {
        with_key(
            pb::EmbedRequest {
                texts: vec!["tea".into()],
            },
            "client-key",
            None,
        )
    };
    for _ in 0..3 {
        client.embed(request()).await.unwrap();
    }
    let status = client.embed(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("rate limit"),
        "{}",
        status.message()
    );
    // The bucket refills at 2 per second: one token after 500 ms.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    client.embed(request()).await.unwrap();
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_traffic_fails_no_request() {
    let repository = models_dir();
    let mut first = InferenceProcess::start(&repository, &["minilm-l6"], &[])
        .await
        .unwrap();
    let second = InferenceProcess::start(&repository, &["minilm-l6"], &[])
        .await
        .unwrap();
    let mut gateway = RunningGateway::start(gateway_config(
        &[first.addr, second.addr],
        &[
            "--cache-entries",
            "1",
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
        ],
    ))
    .await
    .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let total = 2000;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (done, failed) = (done.clone(), failed.clone());
            let addr = gateway.addr;
            tokio::spawn(async move {
                // Half the workers call the task API, half the Open Inference Protocol (whose
                // ModelInfer takes the gateway's own HTTP/2 path to the replicas).
                let mut client = gateway_client(addr).await;
                let mut oip = oip_client(addr).await;
                for i in (w..total).step_by(8) {
                    let text = format!("product title number {i}");
                    let result = if w % 2 == 0 {
                        let request = pb::EmbedRequest { texts: vec![text] };
                        client
                            .embed(with_key(request, "client-key", None))
                            .await
                            .map(drop)
                    } else {
                        let request = text_request("minilm-l6", &[&text]);
                        oip.model_infer(with_key(request, "client-key", None))
                            .await
                            .map(drop)
                    };
                    if let Err(status) = result {
                        eprintln!("request {i} failed: {status:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < total / 4 {
        tokio::task::yield_now().await;
    }
    first.kill().await;
    let killed_at = done.load(Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        killed_at < total,
        "the replica was killed mid-traffic ({killed_at} of {total} done)"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed after a replica was killed"
    );
    gateway.stop().await.unwrap();
    second.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_split_holds_its_weights_sticks_per_shopper_and_changes_at_run_time() {
    let repository = two_version_repository();
    let (mut inference, mut gateway, mut admin) = canary_mesh(repository.path()).await;
    let split =
        |weights: &[(i64, u32)]| with_key(canary_split("minilm-l6", weights), "admin-key", None);
    admin.set_canary(split(&[(1, 90), (2, 10)])).await.unwrap();
    assert_eq!(
        canary_weights(gateway.addr, "minilm-l6")
            .await
            .unwrap()
            .len(),
        2
    );

    // 2,000 shoppers; a few dozen distinct titles, so most answers come from the cache, which
    // is keyed by version and so reports the version the split chose.
    let counts = Arc::new(std::sync::Mutex::new([0_usize; 3]));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let counts = counts.clone();
            let addr = gateway.addr;
            tokio::spawn(async move {
                let mut client = gateway_client(addr).await;
                for i in (w..2000).step_by(8) {
                    let shopper = format!("shopper-{i}");
                    let request = with_key(
                        pb::EmbedRequest {
                            texts: vec![format!("title {}", i % 40)],
                        },
                        "client-key",
                        Some(&shopper),
                    );
                    let version = client
                        .embed(request)
                        .await
                        .unwrap()
                        .into_inner()
                        .served_by
                        .unwrap()
                        .version;
                    counts.lock().unwrap()[version as usize] += 1;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let counts = *counts.lock().unwrap();
    let canary_share = counts[2] as f64 / 2000.0;
    assert!(
        (0.07..=0.13).contains(&canary_share),
        "canary share {canary_share} (counts {counts:?})"
    );

    let mut client = gateway_client(gateway.addr).await;
    let version_of = |shopper: &'static str| {
        let request = with_key(
            pb::EmbedRequest {
                texts: vec!["tea".into()],
            },
            "client-key",
            Some(shopper),
        );
        let mut client = client.clone();
        async move {
            client
                .embed(request)
                .await
                .unwrap()
                .into_inner()
                .served_by
                .unwrap()
                .version
        }
    };
    let first = version_of("shopper-sticky").await;
    for _ in 0..20 {
        assert_eq!(
            version_of("shopper-sticky").await,
            first,
            "one shopper, one version"
        );
    }
    // The Open Inference Protocol follows the same split: ModelInfer without a version is
    // pinned for the shopper (unpinned, the replica would answer with its newest, 2); one
    // that names its version keeps it.
    let on_stable = {
        let mut found = None;
        for shopper in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
            if version_of(shopper).await == 1 {
                found = Some(shopper);
                break;
            }
        }
        found.expect("at 90/10, one of ten shoppers is on version 1")
    };
    let mut oip = oip_client(gateway.addr).await;
    let infer_version = |version: &str| {
        let mut request = text_request("minilm-l6", &["tea"]);
        request.model_version = version.to_owned();
        with_key(request, "client-key", Some(on_stable))
    };
    for (asked, served) in [("", "1"), ("2", "2")] {
        let answer = oip
            .model_infer(infer_version(asked))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.model_version, served,
            "ModelInfer asking for version {asked:?} of shopper {on_stable}"
        );
        assert!(
            !answer.outputs.is_empty() && answer.outputs.len() == answer.raw_output_contents.len(),
            "the replica's tensors pass through: {} outputs, {} raw contents",
            answer.outputs.len(),
            answer.raw_output_contents.len()
        );
    }

    // Shift all traffic to the canary by RPC: no restart.
    admin.set_canary(split(&[(1, 0), (2, 100)])).await.unwrap();
    for shopper in ["a", "b", "c", "d", "e"] {
        let request = with_key(
            pb::EmbedRequest {
                texts: vec!["tea".into()],
            },
            "client-key",
            Some(shopper),
        );
        assert_eq!(
            client
                .embed(request)
                .await
                .unwrap()
                .into_inner()
                .served_by
                .unwrap()
                .version,
            2
        );
    }
    gateway.stop().await.unwrap();
    inference.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_equals_a_brute_force_cosine_ranking_of_the_reference_embeddings() {
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    let mut client = gateway_client(gateway.addr).await;
    let cases = reference_cases();
    let (query, candidates) = cases.split_first().unwrap();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut expected: Vec<(String, f32)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("item-{i}"), dot(&query.embedding, &c.embedding)))
        .collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1));

    let request = pb::RankRequest {
        query: query.text.clone(),
        candidates: candidates
            .iter()
            .enumerate()
            .map(|(i, c)| pb::Candidate {
                id: format!("item-{i}"),
                text: c.text.clone(),
            })
            .collect(),
        top_k: 5,
    };
    let first = client
        .rank(with_key(request.clone(), "client-key", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.ranked.len(), 5);
    for (got, want) in first.ranked.iter().zip(&expected) {
        assert_eq!(
            got.id, want.0,
            "ranking order: got {:?}, want {expected:?}",
            first.ranked
        );
        assert!(
            (got.score - want.1).abs() < 1e-4,
            "{} scored {} vs {}",
            got.id,
            got.score,
            want.1
        );
    }
    // The same candidates again: every embedding comes from the cache.
    let second = client
        .rank(with_key(request, "client-key", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.cache_hits as usize,
        cases.len(),
        "query and candidates cached"
    );
    assert_eq!(second.ranked, first.ranked);
    assert_ne!(second.request_id, first.request_id);
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_invalid_argument() {
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    let mut client = gateway_client(gateway.addr).await;
    let status = client
        .embed(with_key(
            pb::EmbedRequest { texts: vec![] },
            "client-key",
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let rank = pb::RankRequest {
        query: "tea".into(),
        candidates: vec![],
        top_k: 0,
    };
    let status = client
        .rank(with_key(rank, "client-key", None))
        .await
        .unwrap_err();
    assert!(
        status.code() == Code::InvalidArgument && status.message().contains("candidates"),
        "{status:?}"
    );
    let feedback = pb::FeedbackRequest {
        request_id: "r".into(),
        item_id: "i".into(),
        event: 0,
        label: 0,
    };
    let status = client
        .feedback(with_key(feedback, "client-key", None))
        .await
        .unwrap_err();
    assert!(
        status.code() == Code::InvalidArgument && status.message().contains("CLICK"),
        "{status:?}"
    );
    let too_long = pb::FeedbackRequest {
        request_id: "r".into(),
        item_id: "i".repeat(300),
        event: pb::FeedbackEvent::Click as i32,
        label: 0,
    };
    let status = client
        .feedback(with_key(too_long, "client-key", None))
        .await
        .unwrap_err();
    assert!(
        status.code() == Code::InvalidArgument && status.message().contains("item_id"),
        "{status:?}"
    );
    // ModelInfer's message is forwarded as bytes: one that is not a ModelInferRequest is
    // refused with the reason, not sent on to a replica.
    let raw = gateway::unary::UnaryClient::new(gateway.addr, 1 << 20);
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer client-key".parse().unwrap());
    let status = raw
        .call(
            "/inference.GRPCInferenceService/ModelInfer",
            bytes::Bytes::from_static(&[0x0a, 0xff]),
            headers,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        status.code() == Code::InvalidArgument
            && status
                .message()
                .contains("ModelInferRequest cannot be decoded"),
        "{status:?}"
    );
    let feedback = pb::FeedbackRequest {
        request_id: "r".into(),
        item_id: "i".into(),
        event: pb::FeedbackEvent::Click as i32,
        label: 0,
    };
    assert!(
        client
            .feedback(with_key(feedback, "client-key", None))
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_logs_mask_personal_data_and_never_show_keys() {
    let inference = shared_inference();
    let mut gateway = tokio::process::Command::new(service_binary("gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--inference",
            &inference.to_string(),
        ])
        .args([
            "--api-keys",
            "secret-client-key:shop:client",
            "--payload-log-sample",
            "1",
            "--log-format",
            "json",
            "--plaintext",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = listening_addr(gateway.id().unwrap(), std::time::Duration::from_secs(30))
        .await
        .unwrap();
    wait_until_serving(addr).await.unwrap();
    let pii = [
        ("jane.doe@example.com", "[email]"),
        ("+1 (415) 555-2671", "[phone]"),
        ("4111 1111 1111 1111", "[card]"),
        ("11010519491231002X", "[cn-id]"),
    ];
    let mut client = gateway_client(addr).await;
    for (secret, _) in pii {
        let text = format!("order for {secret} please");
        client
            .embed(with_key(
                pb::EmbedRequest { texts: vec![text] },
                "secret-client-key",
                None,
            ))
            .await
            .unwrap();
    }
    gateway.kill().await.unwrap();
    let output = gateway.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    let payload_lines: Vec<&str> = logs.lines().filter(|l| l.contains("\"payload\"")).collect();
    assert_eq!(
        payload_lines.len(),
        pii.len(),
        "one payload line per call:\n{logs}"
    );
    for (secret, tag) in pii {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
        assert!(
            logs.contains(&format!("order for {tag} please")),
            "{tag} missing:\n{logs}"
        );
    }
    assert!(
        !logs.contains("secret-client-key"),
        "the API key leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_works_through_the_gateway_with_a_key_and_is_refused_without() {
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    let addr = gateway.addr.to_string();
    let script = repo_root().join("integration-tests/clients/triton_client.py");
    let fixture = repo_root().join("integration-tests/fixtures/minilm_l6_embeddings.json");
    let (script, fixture) = (script.to_str().unwrap(), fixture.to_str().unwrap());
    let out = run_command(&venv_bin("python"), &[script, &addr, fixture, "client-key"])
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["shape"], serde_json::json!([8, 384]));
    assert!(
        report["max_abs_diff"].as_f64().unwrap() <= 1e-5,
        "{}",
        report["max_abs_diff"]
    );
    assert_eq!(report["config"]["max_batch_size"], 64);
    let refused = run_command(&venv_bin("python"), &[script, &addr, fixture])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("UNAUTHENTICATED") || refused.contains("Unauthenticated"),
        "{refused}"
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_naming_an_unserved_version_is_refused() {
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    let mut admin = GatewayAdminClient::new(connect(gateway.addr).await);
    let request = pb::SetCanaryRequest {
        model: "minilm-l6".into(),
        weights: vec![
            pb::VersionWeight {
                version: 1,
                weight: 90,
            },
            pb::VersionWeight {
                version: 9,
                weight: 10,
            },
        ],
        expected_revision: None,
    };
    let status = admin
        .set_canary(with_key(request, "admin-key", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("version 9"),
        "{}",
        status.message()
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_comes_back_is_readmitted() {
    use proto::inference::ModelStatisticsRequest;
    let repository = models_dir();
    let mut first = InferenceProcess::start(&repository, &["minilm-l6"], &[])
        .await
        .unwrap();
    let second = InferenceProcess::start(&repository, &["minilm-l6"], &[])
        .await
        .unwrap();
    let first_addr = first.addr;
    let config = gateway_config(
        &[first.addr, second.addr],
        &[
            "--cache-entries",
            "1",
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
        ],
    );
    let mut gateway = RunningGateway::start(config).await.unwrap();
    let client = gateway_client(gateway.addr).await;
    let call = |i: usize| {
        let request = with_key(
            pb::EmbedRequest {
                texts: vec![format!("replica check {i}")],
            },
            "client-key",
            None,
        );
        let mut client = client.clone();
        async move { client.embed(request).await.map(drop) }
    };
    first.kill().await;
    for i in 0..20 {
        call(i)
            .await
            .expect("the other replica serves while one is down");
    }
    // The same address comes back; health checks (every 200 ms here) re-admit it.
    let back = InferenceProcess::start_on(first_addr, &repository, &["minilm-l6"], &[])
        .await
        .unwrap();
    let served_by_back = || async {
        let mut stats = oip_client(first_addr).await;
        let request = ModelStatisticsRequest {
            name: "minilm-l6".into(),
            version: String::new(),
        };
        stats
            .model_statistics(request)
            .await
            .unwrap()
            .into_inner()
            .model_stats[0]
            .inference_count
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut i = 100;
    while served_by_back().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted replica never got traffic back"
        );
        call(i).await.unwrap();
        i += 1;
    }
    gateway.stop().await.unwrap();
    back.terminate().await;
    second.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_tenant_admits_keyless_inference_only_when_configured() {
    let mut gateway = RunningGateway::start(gateway_config(
        &[shared_inference()],
        &["--anonymous-tenant", "perf"],
    ))
    .await
    .unwrap();
    // No metadata at all, as perf_analyzer sends it: admitted as a client.
    let mut oip = oip_client(gateway.addr).await;
    let response = oip
        .model_infer(text_request("minilm-l6", &["organic green tea"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs[0].shape, vec![1, 384]);
    // Never as an admin, and a wrong key is still refused.
    let mut admin = GatewayAdminClient::new(connect(gateway.addr).await);
    let status = admin
        .get_canary(pb::GetCanaryRequest {
            model: "minilm-l6".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = oip
        .model_infer(with_key(
            text_request("minilm-l6", &["tea"]),
            "wrong-key",
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    gateway.stop().await.unwrap();
}

/// A caller's deadline (`grpc-timeout`) too short for the work is honoured on both paths: the
/// call ends with DEADLINE_EXCEEDED instead of waiting for the replica, and the gateway goes
/// on serving. The calls go through a plain HTTP/2 client that sends the deadline but leaves
/// it to the server (a gRPC client would also end the call itself, at the same moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_too_short_for_the_work_ends_the_call() {
    use prost::Message as _;
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    // 64 long texts, none of them in the cache: far more than 20 ms of work.
    let texts: Vec<String> = (0..64)
        .map(|i| {
            format!(
                "deadline test {i}: {}",
                "wireless noise cancelling headphones ".repeat(12)
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let client = gateway::unary::UnaryClient::new(gateway.addr, 64 << 20);
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer client-key".parse().unwrap());
    headers.insert("grpc-timeout", "20m".parse().unwrap());
    let calls = [
        (
            "/ecommerce.gateway.v1.Gateway/Embed",
            pb::EmbedRequest {
                texts: texts.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "/inference.GRPCInferenceService/ModelInfer",
            text_request("minilm-l6", &refs).encode_to_vec(),
        ),
    ];
    for (path, message) in calls {
        let status = client
            .call(path, message.into(), headers.clone(), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{path}: {status:?}");
        assert!(status.message().contains("deadline"), "{path}: {status:?}");
    }
    // The same call with time enough succeeds.
    let answer = gateway_client(gateway.addr)
        .await
        .embed(with_key(pb::EmbedRequest { texts }, "client-key", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.embeddings.len(), 64);
    gateway.stop().await.unwrap();
}

/// A gateway that exports no spans keeps none on its `ModelInfer` path; the caller's trace
/// context then reaches the replica as it came, so the replica's span (exported on its own)
/// is still a child of the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_span_export_the_caller_s_trace_context_reaches_the_replica() {
    let (receiver, endpoint) = integration_tests::otlp::OtlpReceiver::start().await;
    let inference = InferenceProcess::exporting_to(&endpoint).await.unwrap();
    let mut gateway = RunningGateway::start(gateway_config(&[inference.addr], &[]))
        .await
        .unwrap();
    let (trace_id, caller_span) = ("5c3e2a1f0b9d8c7e6f5a4b3c2d1e0f9a", "00f067aa0ba902b7");
    let request = in_trace(
        with_key(
            text_request("minilm-l6", &["usb-c charger"]),
            "client-key",
            None,
        ),
        trace_id,
        caller_span,
    );
    oip_client(gateway.addr)
        .await
        .model_infer(request)
        .await
        .unwrap();
    gateway.stop().await.unwrap();
    inference.terminate().await; // flushes its spans on shutdown

    let spans = receiver.spans();
    let replica_span = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.service == "inference" && s.name == "ModelInfer")
        .unwrap_or_else(|| panic!("no replica span in the caller's trace: {spans:#?}"));
    assert_eq!(
        replica_span.parent, caller_span,
        "the replica continues the caller's span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_pinned_before_a_load_keeps_every_shopper_on_the_serving_version() {
    // Version 2 is on disk but not loaded: the model serves version 1 alone.
    let repository = repository_serving("minilm-l6", &[(1, 1), (2, 1)]);
    let config = repository.path().join("minilm-l6/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("specific = [1, 2]", "specific = [1]")).unwrap();
    let (mut inference, mut gateway, mut admin) = canary_mesh(repository.path()).await;
    let mut client = gateway_client(gateway.addr).await;
    let mut oip = oip_client(gateway.addr).await;
    // The versions that ten shoppers' unversioned Embed and ModelInfer calls are served by.
    let mut served_versions = async |round: &str| {
        let mut versions = std::collections::BTreeSet::new();
        for shopper in 0..10 {
            let shopper = format!("shopper-{shopper}");
            let texts = vec![format!("{round} kettle {shopper}")];
            let embed = with_key(pb::EmbedRequest { texts }, "client-key", Some(&shopper));
            let answer = client.embed(embed).await.unwrap().into_inner();
            versions.insert(answer.served_by.unwrap().version);
            let infer = with_key(
                text_request("minilm-l6", &["kettle"]),
                "client-key",
                Some(&shopper),
            );
            let answer = oip.model_infer(infer).await.unwrap().into_inner();
            versions.insert(answer.model_version.parse::<i64>().unwrap());
        }
        versions.into_iter().collect::<Vec<_>>()
    };
    assert_eq!(served_versions("before").await, [1]);

    // The operator pins version 1, then loads version 2 next to it: no shopper moves.
    admin
        .set_canary(with_key(
            canary_split("minilm-l6", &[(1, 100)]),
            "admin-key",
            None,
        ))
        .await
        .unwrap();
    serve_versions(inference.addr, "minilm-l6", &[1, 2]).await;
    assert_eq!(
        served_versions("pinned").await,
        [1],
        "the load of version 2 moved shoppers off the pinned version"
    );

    // Unpinned (the empty split), the newest loaded version takes the unversioned calls: what
    // the pin kept them from.
    admin
        .set_canary(with_key(canary_split("minilm-l6", &[]), "admin-key", None))
        .await
        .unwrap();
    assert_eq!(served_versions("unpinned").await, [2]);
    gateway.stop().await.unwrap();
    inference.stop().await.unwrap();
}

/// `CanaryVersionErrors` takes a failing version out of traffic with `set_canary_weight` to 0.
/// When that version held all of it (a promoted version that fails, or one that a restarted
/// replica no longer serves), every weight would be 0, which the gateway refuses: the
/// rollback hands the traffic back to the split's other version instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_a_version_that_holds_all_traffic_hands_it_back() {
    use alert_manager::actions::Outcome;
    use alert_manager::alert::ActionSpec;

    let repository = two_version_repository();
    let (mut inference, mut gateway, mut admin) = canary_mesh(repository.path()).await;
    admin
        .set_canary(with_key(
            canary_split("minilm-l6", &[(1, 0), (2, 100)]),
            "admin-key",
            None,
        ))
        .await
        .unwrap();
    let runner = canary_action_runner(gateway.addr);
    let rollback = ActionSpec::SetCanaryWeight {
        model: "minilm-l6".into(),
        version: "2".into(),
        weight: 0,
    };
    let outcome = runner
        .run("CanaryVersionErrors", &rollback, &Default::default())
        .await;
    assert_eq!(
        outcome,
        Outcome::Done(
            "minilm-l6 split now v1=100, v2=0 (v2 held all the traffic: this gateway keeps no \
             timeline, so the newest other version, v1)"
                .into()
        )
    );
    assert_eq!(
        canary_weights(gateway.addr, "minilm-l6").await.unwrap(),
        [(1, 100), (2, 0)]
    );
    let answer = gateway_client(gateway.addr)
        .await
        .embed(with_key(
            pb::EmbedRequest {
                texts: vec!["kettle".into()],
            },
            "client-key",
            Some("shopper-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.served_by.unwrap().version, 1);
    gateway.stop().await.unwrap();
    inference.stop().await.unwrap();
}

/// An inference service serving minilm-l6 from `repository`, a gateway in front of it with a
/// rate limit no test reaches, and the gateway's admin client.
async fn canary_mesh(
    repository: &std::path::Path,
) -> (
    RunningInference,
    RunningGateway,
    GatewayAdminClient<tonic::transport::Channel>,
) {
    let inference = RunningInference::start(inference_config(repository, &["minilm-l6"]))
        .await
        .unwrap();
    let gateway = RunningGateway::start(gateway_config(
        &[inference.addr],
        &["--rate-limit", "100000", "--rate-burst", "100000"],
    ))
    .await
    .unwrap();
    let admin = GatewayAdminClient::new(connect(gateway.addr).await);
    (inference, gateway, admin)
}

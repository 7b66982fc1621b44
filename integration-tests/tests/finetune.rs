//! The `finetune` binary against a real inference service and the real model: training on the
//! demonstration shop's data reaches a validation AUC of 0.9 where the parent's seeded head
//! scores about 0.5, early stopping halts before the epoch limit, the exported version serves
//! the trainer's own probabilities, and bad input is refused with clear messages.

use std::path::{Path, PathBuf};

use integration_tests::*;
use proto::serving::inference::v1 as tasks;
use proto::serving::inference::v1::inference_tasks_client::InferenceTasksClient;

/// A model repository of its own: links to the project's models, so that an export writes
/// only into the temporary folder.
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for model in ["minilm-l6", "purchase-intent"] {
        let from = models_dir().join(model);
        std::fs::create_dir_all(dir.path().join(model).join("1")).unwrap();
        for file in ["config.toml", "tokenizer.json"] {
            std::os::unix::fs::symlink(from.join(file), dir.path().join(model).join(file)).unwrap();
        }
        std::os::unix::fs::symlink(
            from.join("1").join("model.onnx"),
            dir.path().join(model).join("1").join("model.onnx"),
        )
        .unwrap();
    }
    dir
}

/// Runs finetune; returns its exit success, stdout and stderr.
fn finetune(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(service_binary("finetune"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs finetune off the runtime's threads (the in-process services it calls run on them).
async fn finetune_async(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        finetune(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trains_on_the_fp32_version_is_gated_and_its_int8_form_follows() {
    let repo = repository();
    // The int8 form of version 1 as `make model` builds it: never a parent by default.
    let int8 = repo.path().join("purchase-intent/2");
    std::fs::create_dir_all(&int8).unwrap();
    for file in ["model.onnx", "card.json"] {
        std::os::unix::fs::symlink(
            models_dir().join("purchase-intent/2").join(file),
            int8.join(file),
        )
        .unwrap();
    }
    let mut inference = RunningInference::start(inference_config(
        repo.path(),
        &["minilm-l6", "purchase-intent"],
    ))
    .await
    .unwrap();
    let endpoint = format!("http://{}", inference.addr);
    let python = venv_bin("python");
    let scripts = repo_root().join("scripts");
    let run = |extra: &'static [&'static str]| {
        let mut args = vec![
            "--demo-examples".to_owned(),
            "1200".into(),
            "--inference".into(),
            endpoint.clone(),
            "--repository".into(),
            repo.path().display().to_string(),
            "--report-dir".into(),
            repo.path().join("report").display().to_string(),
            "--python".into(),
            python.display().to_string(),
            "--scripts".into(),
            scripts.display().to_string(),
            "--gate".into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        async move { finetune_async(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };

    let (ok, stdout, stderr) = run(&["--int8"]).await;
    assert!(ok, "finetune failed:\n{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["3", "4"],
        "the new version and its int8 form are printed"
    );
    let card =
        std::fs::read_to_string(repo.path().join("purchase-intent/3/MODEL_CARD.md")).unwrap();
    assert!(card.contains("parent version 1"), "trained on fp32: {card}");
    assert!(
        card.contains("## Offline gate") && card.contains("**Accepted.**"),
        "{card}"
    );
    let int8_card = read_json(&repo.path().join("purchase-intent/4/card.json"));
    assert_eq!(int8_card["precision"], "int8");
    assert_eq!(int8_card["parent_version"], 3);

    // Both serve, and agree on the held-out rule's examples.
    serve_versions(inference.addr, "purchase-intent", &[1, 3, 4]).await;
    let report = read_json(&repo.path().join("report/report.json"));
    let texts: Vec<String> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_owned())
        .collect();
    let channel = inference.channel().await;
    let classify = |version| {
        let mut client = InferenceTasksClient::new(channel.clone());
        let request = tasks::ClassifyRequest {
            model: Some(tasks::ModelRef {
                name: "purchase-intent".into(),
                version,
            }),
            texts: texts.clone(),
        };
        async move { client.classify(request).await.unwrap().into_inner() }
    };
    let fp32 = classify(3).await;
    let quantized = classify(4).await;
    for ((text, a), b) in texts
        .iter()
        .zip(&fp32.classifications)
        .zip(&quantized.classifications)
    {
        assert!(
            (a.probabilities[1] - b.probabilities[1]).abs() < 0.1,
            "{text}: fp32 {} int8 {}",
            a.probabilities[1],
            b.probabilities[1]
        );
    }

    // A head trained on flipped labels is refused by the gate, and not kept.
    let (ok, _, stderr) = run(&["--flip-labels"]).await;
    assert!(!ok, "a flipped head passed the gate");
    assert!(
        stderr.contains("AUC") && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(!repo.path().join("purchase-intent/5").exists());
    inference.stop().await.unwrap();
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_learns_the_rule_stops_early_and_the_export_serves_its_probabilities() {
    let repo = repository();
    let mut inference = RunningInference::start(inference_config(
        repo.path(),
        &["minilm-l6", "purchase-intent"],
    ))
    .await
    .unwrap();
    let report_dir = repo.path().join("report");
    let endpoint = format!("http://{}", inference.addr);
    let (ok, stdout, stderr) = finetune_async(&[
        "--demo-examples",
        "1500",
        "--inference",
        &endpoint,
        "--repository",
        repo.path().to_str().unwrap(),
        "--report-dir",
        report_dir.to_str().unwrap(),
        "--epochs",
        "300",
    ])
    .await;
    assert!(ok, "finetune failed:\n{stderr}");
    assert_eq!(stdout.trim(), "2", "the new version is printed");

    let report = read_json(&report_dir.join("report.json"));
    let auc = report["validation"]["auc"].as_f64().unwrap();
    let parent_auc = report["parent_validation"]["auc"].as_f64().unwrap();
    assert!(auc >= 0.9, "validation AUC {auc}");
    assert!(
        (0.3..0.7).contains(&parent_auc),
        "the seeded head is no better than chance: {parent_auc}"
    );
    // Early stopping: far fewer epochs than allowed, and the kept epoch has the lowest
    // validation loss of all.
    let epochs = report["epochs"].as_array().unwrap();
    assert_eq!(report["stopped_early"], true);
    assert!(epochs.len() < 300, "{} epochs", epochs.len());
    let best = report["best_epoch"].as_u64().unwrap() as usize;
    let best_loss = epochs[best - 1]["validation_loss"].as_f64().unwrap();
    assert!(
        epochs
            .iter()
            .all(|e| e["validation_loss"].as_f64().unwrap() >= best_loss)
    );
    assert!(
        std::fs::metadata(report_dir.join("report.png"))
            .unwrap()
            .len()
            > 10_000,
        "a plot"
    );
    let card =
        std::fs::read_to_string(repo.path().join("purchase-intent/2/MODEL_CARD.md")).unwrap();
    assert!(card.contains("parent version 1"), "{card}");

    // The export serves: loaded next to version 1, it gives the trainer's probabilities.
    serve_versions(inference.addr, "purchase-intent", &[1, 2]).await;
    let samples = report["samples"].as_array().unwrap();
    let texts: Vec<String> = samples
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_owned())
        .collect();
    let served = InferenceTasksClient::new(inference.channel().await)
        .classify(tasks::ClassifyRequest {
            model: Some(tasks::ModelRef {
                name: "purchase-intent".into(),
                version: 2,
            }),
            texts,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.version, 2);
    for (sample, got) in samples.iter().zip(&served.classifications) {
        let expected = sample["probability"].as_f64().unwrap() as f32;
        assert!(
            (got.probabilities[1] - expected).abs() <= 1e-5,
            "{}: served {} trained {expected}",
            sample["text"],
            got.probabilities[1]
        );
    }
    inference.stop().await.unwrap();
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn bad_input_is_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing answers on port 9: bad input must be refused before anything is embedded.
    let common = ["--inference", "http://127.0.0.1:9", "--no-export"];
    let run = |data: &Path, extra: &[&str]| {
        let mut args = vec!["--data", data.to_str().unwrap()];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        let (ok, _, stderr) = finetune(&args);
        assert!(!ok, "accepted {}: {stderr}", data.display());
        stderr
    };

    let empty = write(dir.path(), "empty.jsonl", "\n\n");
    assert!(run(&empty, &[]).contains("no examples"));

    let one = write(
        dir.path(),
        "one.jsonl",
        "{\"text\": \"buy shoes\", \"label\": 1}\n{\"text\": \"order a lamp\", \"label\": 1}\n",
    );
    let err = run(&one, &[]);
    assert!(err.contains("all 2 examples have label 1"), "{err}");

    let malformed = write(
        dir.path(),
        "bad.jsonl",
        "{\"text\": \"buy shoes\", \"label\": 1}\n{\"text\": \"hi\", \"label\": \"yes\"}\n{oops\n",
    );
    let err = run(&malformed, &[]);
    assert!(err.contains("line 2") && err.contains("line 3"), "{err}");

    let fine = write(
        dir.path(),
        "fine.jsonl",
        "{\"text\": \"buy shoes\", \"label\": 1}\n{\"text\": \"hello\", \"label\": 0}\n",
    );
    let err = run(&fine, &["--learning-rate", "NaN"]);
    assert!(
        err.contains("--learning-rate must be a positive number"),
        "{err}"
    );

    let missing = dir.path().join("missing.jsonl");
    let err = run(&missing, &[]);
    assert!(err.contains("missing.jsonl"), "{err}");
}

const CANARY_RULES: &str = r#"
group_by: [alertname, model]
route: {group_wait: 0s}
rules:
  - name: CanaryWorse
    kind: canary_quality
    model: purchase-intent
    measure: auc
    min_samples: 60
    window: 10m
    op: "<"
    threshold: -0.1
    labels: {severity: critical}
    actions:
      - {kind: set_canary_weight, model: "{{ $labels.model }}", version: "{{ $labels.model_version }}", weight: 0}
  - name: CanaryBetter
    kind: canary_quality
    model: purchase-intent
    measure: auc
    min_samples: 60
    window: 10m
    op: ">"
    threshold: 0.1
    labels: {severity: info}
    actions:
      - {kind: promote_canary, model: "{{ $labels.model }}", version: "{{ $labels.model_version }}"}
"#;

fn admin<T>(message: T) -> tonic::Request<T> {
    with_key(message, "admin-key", None)
}

/// Shoppers classify messages through the gateway and report what they did (the hidden
/// rule's label) until `done` says the split changed; returns the feedback events sent.
async fn shop_until(
    gateway: std::net::SocketAddr,
    seed: u64,
    limit: usize,
    mut done: impl FnMut(&proto::ecommerce::gateway::v1::CanaryState) -> bool,
) -> usize {
    use proto::ecommerce::gateway::v1 as gw;
    let mut client = gateway_client(gateway).await;
    let mut admin_client =
        gw::gateway_admin_client::GatewayAdminClient::new(connect(gateway).await);
    let mut rng = traffic_rng(seed);
    for sent in 0..limit {
        let (text, label) = traffic::catalog::message(&mut rng);
        let shopper = format!("shopper-{}", rng.below(500));
        classify_and_label(&mut client, text, label, Some(&shopper)).await;
        if sent % 20 == 19 {
            let split = admin_client
                .get_canary(admin(gw::GetCanaryRequest {
                    model: "purchase-intent".into(),
                }))
                .await
                .unwrap()
                .into_inner();
            if done(&split) {
                return sent + 1;
            }
        }
    }
    panic!("the split did not change within {limit} feedback events");
}

/// Classifies `text` through the gateway (as `shopper`, if given) and sends the shopper's
/// `label` for it as feedback, the way the demonstration shop does.
async fn classify_and_label(
    client: &mut proto::ecommerce::gateway::v1::gateway_client::GatewayClient<
        tonic::transport::Channel,
    >,
    text: String,
    label: u32,
    shopper: Option<&str>,
) {
    use proto::ecommerce::gateway::v1 as gw;
    let classified = client
        .classify(with_key(
            gw::ClassifyRequest { texts: vec![text] },
            "client-key",
            shopper,
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .feedback(with_key(
            gw::FeedbackRequest {
                request_id: classified.request_id,
                item_id: "0".into(),
                event: gw::FeedbackEvent::Label as i32,
                label,
            },
            "client-key",
            shopper,
        ))
        .await
        .unwrap();
}

fn traffic_rng(seed: u64) -> traffic::catalog::Rng {
    traffic::catalog::Rng::new(seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worse_canary_is_rolled_back_and_a_better_one_promoted() {
    use proto::ecommerce::gateway::v1 as gw;
    use proto::monitoring::alerts::v1 as am;
    let repo = repository();
    let mut inference = RunningInference::start(inference_config(
        repo.path(),
        &["minilm-l6", "purchase-intent"],
    ))
    .await
    .unwrap();
    let endpoint = format!("http://{}", inference.addr);
    // A good version (2) and a deliberately bad one (3, trained on flipped labels).
    for flip in [false, true] {
        let mut args = vec![
            "--demo-examples".to_owned(),
            "800".into(),
            "--inference".into(),
            endpoint.clone(),
            "--repository".into(),
            repo.path().display().to_string(),
            "--report-dir".into(),
            repo.path()
                .join(format!("report-{flip}"))
                .display()
                .to_string(),
        ];
        if flip {
            args.push("--flip-labels".into());
        }
        let (ok, _, stderr) =
            finetune_async(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert!(ok, "{stderr}");
    }
    serve_versions(inference.addr, "purchase-intent", &[1, 2, 3]).await;

    let mesh = ClosedLoop::start(inference.addr, CANARY_RULES, &[]).await;
    let gateway = &mesh.gateway;
    let mut admin_client =
        gw::gateway_admin_client::GatewayAdminClient::new(connect(gateway.addr).await);
    let split = |weights: &[(i64, u32)]| canary_split("purchase-intent", weights);

    // The bad version on a fifth of the shoppers: rolled back.
    admin_client
        .set_canary(admin(split(&[(1, 80), (3, 20)])))
        .await
        .unwrap();
    let sent = shop_until(gateway.addr, 1, 3000, |s| {
        s.weights.iter().any(|w| w.version == 3 && w.weight == 0)
    })
    .await;
    eprintln!("bad canary rolled back after {sent} feedback events");

    // The good version on a fifth: promoted to all traffic.
    admin_client
        .set_canary(admin(split(&[(1, 80), (2, 20)])))
        .await
        .unwrap();
    let sent = shop_until(gateway.addr, 2, 3000, |s| {
        s.weights.iter().any(|w| w.version == 2 && w.weight == 100)
            && s.weights.iter().all(|w| w.version == 2 || w.weight == 0)
    })
    .await;
    eprintln!("good canary promoted after {sent} feedback events");

    // Both steps are on the deployment timeline, with the incidents behind them.
    let mut alerts =
        am::alert_manager_client::AlertManagerClient::new(connect(mesh.manager.addr).await);
    let timeline = alerts
        .list_deployments(am::ListDeploymentsRequest {
            model: "purchase-intent".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let steps: Vec<(String, i64)> = timeline
        .iter()
        .map(|e| (e.kind.clone(), e.version))
        .collect();
    assert_eq!(
        steps,
        [("promoted".to_owned(), 2), ("rolled_back".to_owned(), 3)],
        "{timeline:#?}"
    );
    assert!(timeline.iter().all(|e| e.incident_id > 0));

    mesh.stop().await;
    inference.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_that_shoppers_labelled_become_training_data_with_personal_data_masked() {
    use proto::monitoring::metrics::v1 as mq;
    let repo = repository();
    let mut inference = RunningInference::start(inference_config(
        repo.path(),
        &["minilm-l6", "purchase-intent"],
    ))
    .await
    .unwrap();
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    // Payload logging keeps every call here (sample 1.0); by default it keeps none.
    let mut gateway = RunningGateway::start(gateway_config(
        &[inference.addr],
        &[
            "--records-endpoint",
            &collector.endpoint(),
            "--payload-log-sample",
            "1.0",
        ],
    ))
    .await
    .unwrap();
    let mut client = gateway_client(gateway.addr).await;
    let mut rng = traffic_rng(7);
    let mut sent = Vec::new();
    for i in 0..40 {
        let (text, label) = traffic::catalog::message(&mut rng);
        // Shoppers write their e-mail addresses in messages; they must not reach training data.
        let text = format!("{text} (reach me at shopper{i}@example.com)");
        classify_and_label(&mut client, text, label, None).await;
        sent.push(label);
    }
    let mut query = collector.query_client().await;
    let examples = eventually(
        "the labelled texts",
        std::time::Duration::from_secs(15),
        || {
            let mut query = query.clone();
            async move {
                let found = query
                    .labelled_examples(mq::LabelledExamplesRequest {
                        model: "purchase-intent".into(),
                        limit: 0,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .examples;
                (found.len() == 40).then_some(found)
            }
        },
    )
    .await;
    assert!(
        examples.iter().all(|e| !e.text.contains("@example.com")),
        "{examples:?}"
    );
    assert!(examples.iter().all(|e| e.version == 1));
    let positives = examples.iter().filter(|e| e.label == 1).count();
    assert_eq!(positives, sent.iter().filter(|l| **l == 1).count());
    let err = query
        .labelled_examples(mq::LabelledExamplesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // finetune takes them with the demonstration data.
    let report_dir = repo.path().join("report");
    let (ok, _, stderr) = finetune_async(&[
        "--gathered",
        &collector.endpoint(),
        "--demo-examples",
        "300",
        "--inference",
        &format!("http://{}", inference.addr),
        "--repository",
        repo.path().to_str().unwrap(),
        "--report-dir",
        report_dir.to_str().unwrap(),
        "--no-export",
    ])
    .await;
    assert!(ok, "{stderr}");
    let report = read_json(&report_dir.join("report.json"));
    assert_eq!(report["data"]["gathered_examples"], 40);
    assert_eq!(
        report["data"]["training"].as_u64().unwrap()
            + report["data"]["validation"].as_u64().unwrap(),
        340
    );
    gateway.stop().await.unwrap();
    collector.stop().await.unwrap();
    inference.stop().await.unwrap();
}

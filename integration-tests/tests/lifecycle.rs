//! Model lifecycle and serving behaviour: version switching under traffic with no failed
//! request, unload/load, dynamic batching, draining on shutdown, refusing a bad start.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use integration_tests::*;
use proto::inference::{
    ModelRepositoryParameter, ModelStatisticsRequest, RepositoryIndexRequest,
    RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
    model_repository_parameter::ParameterChoice,
};
use proto::serving::inference::v1::{EmbedRequest, ModelRef};
use tonic::Code;

/// A model repository in a temporary folder whose `minilm-l6` versions are links to the built
/// model, so that versions can be added without copying 90 MB.
fn temp_repository(versions: &[i64]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = models_dir().join("minilm-l6");
    let model = dir.path().join("minilm-l6");
    std::fs::create_dir(&model).unwrap();
    // The built config serves version 1 only (its version 2 is the int8 form, a canary); these
    // tests follow Triton's default policy instead: the newest version on disk.
    let config = std::fs::read_to_string(source.join("config.toml")).unwrap();
    assert!(config.contains("specific = [1]"), "{config}");
    std::fs::write(
        model.join("config.toml"),
        config.replace("specific = [1]", "latest = 1"),
    )
    .unwrap();
    std::os::unix::fs::symlink(source.join("tokenizer.json"), model.join("tokenizer.json"))
        .unwrap();
    for version in versions {
        add_version(dir.path(), *version);
    }
    dir
}

fn add_version(repository: &Path, version: i64) {
    let folder = repository.join("minilm-l6").join(version.to_string());
    std::fs::create_dir(&folder).unwrap();
    std::os::unix::fs::symlink(
        models_dir().join("minilm-l6/1/model.onnx"),
        folder.join("model.onnx"),
    )
    .unwrap();
}

/// A load request of minilm-l6, with the admin key that model loads need.
fn load_request(config: Option<&str>) -> tonic::Request<RepositoryModelLoadRequest> {
    let mut request = RepositoryModelLoadRequest {
        model_name: "minilm-l6".into(),
        ..Default::default()
    };
    if let Some(config) = config {
        request.parameters.insert(
            "config".into(),
            ModelRepositoryParameter {
                parameter_choice: Some(ParameterChoice::StringParam(config.into())),
            },
        );
    }
    with_key(request, "admin-key", None)
}

async fn embed_version(addr: std::net::SocketAddr, version: i64) -> Result<i64, tonic::Status> {
    let mut client = task_client(addr).await;
    let request = EmbedRequest {
        model: Some(ModelRef {
            name: "minilm-l6".into(),
            version,
        }),
        texts: vec!["kids waterproof winter boots".into()],
    };
    Ok(client.embed(request).await?.into_inner().version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_switch_under_traffic_without_a_failed_request() {
    let repository = temp_repository(&[1]);
    let mut server = RunningInference::start(inference_config(repository.path(), &["minilm-l6"]))
        .await
        .unwrap();
    let addr = server.addr;

    // Steady traffic, newest version, from four clients.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        i64,
        usize,
    >::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            let mut client = task_client(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let request = EmbedRequest {
                    model: None,
                    texts: vec!["stainless steel water bottle".into()],
                };
                match client.embed(request).await {
                    Ok(response) => {
                        *served
                            .lock()
                            .unwrap()
                            .entry(response.into_inner().version)
                            .or_default() += 1
                    }
                    Err(status) => {
                        eprintln!("failed during switching: {status:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut admin = oip_client(addr).await;
    // Version 2 appears on disk and is loaded: the default policy (latest 1) moves to it.
    add_version(repository.path(), 2);
    admin
        .repository_model_load(load_request(None))
        .await
        .unwrap();
    assert_eq!(embed_version(addr, 0).await.unwrap(), 2);
    let status = embed_version(addr, 1).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "retired version: {}",
        status.message()
    );

    // Roll back to version 1 with a specific-version policy, as tritonclient's load_model(config=…) sends it.
    admin
        .repository_model_load(load_request(Some(
            r#"{"version_policy":{"specific":{"versions":[1]}}}"#,
        )))
        .await
        .unwrap();
    assert_eq!(embed_version(addr, 0).await.unwrap(), 1);

    // Serve both at once.
    admin
        .repository_model_load(load_request(Some(
            r#"{"version_policy":{"latest":{"num_versions":2}}}"#,
        )))
        .await
        .unwrap();
    assert_eq!(embed_version(addr, 1).await.unwrap(), 1);
    assert_eq!(embed_version(addr, 2).await.unwrap(), 2);

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed while versions switched"
    );
    let served = served.lock().unwrap().clone();
    assert!(served.contains_key(&2), "traffic saw version 2: {served:?}");

    // Unload: the model stops serving, the index says so, and a load brings it back.
    admin
        .repository_model_unload(with_key(
            RepositoryModelUnloadRequest {
                model_name: "minilm-l6".into(),
                ..Default::default()
            },
            "admin-key",
            None,
        ))
        .await
        .unwrap();
    let status = embed_version(addr, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    let index = admin
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        index.models.iter().all(|m| m.state == "UNAVAILABLE"),
        "{:?}",
        index.models
    );
    admin
        .repository_model_load(load_request(None))
        .await
        .unwrap();
    assert_eq!(embed_version(addr, 0).await.unwrap(), 2);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_text_requests_are_batched() {
    let repository = temp_repository(&[1]);
    let mut server = RunningInference::start(inference_config(repository.path(), &["minilm-l6"]))
        .await
        .unwrap();
    let addr = server.addr;
    let mut client = oip_client(addr).await;
    let stats = |client: &mut proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<_>| {
        let mut client = client.clone();
        async move {
            let response = client
                .model_statistics(ModelStatisticsRequest { name: "minilm-l6".into(), version: String::new() })
                .await
                .unwrap()
                .into_inner();
            let s = &response.model_stats[0];
            (s.inference_count, s.execution_count)
        }
    };
    let (inferences_before, executions_before) = stats(&mut client).await;

    let channel = server.channel().await;
    let requests = (0..64).map(|i| {
        let mut client =
            proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
                channel.clone(),
            );
        async move {
            let text = format!("wireless noise cancelling headphones model {i}");
            client
                .model_infer(text_request("minilm-l6", &[&text]))
                .await
        }
    });
    let results = futures::future::join_all(requests).await;
    assert!(results.iter().all(Result::is_ok), "every request succeeds");

    let (inferences_after, executions_after) = stats(&mut client).await;
    let inferences = inferences_after - inferences_before;
    let executions = executions_after - executions_before;
    eprintln!("64 requests ran in {executions} executions");
    assert_eq!(inferences, 64);
    assert!(
        executions < 64,
        "64 concurrent requests took {executions} executions: no batching"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let repository = temp_repository(&[1]);
    let mut server = RunningInference::start(inference_config(repository.path(), &["minilm-l6"]))
        .await
        .unwrap();
    let channel = server.channel().await;
    let (first_done, first) = tokio::sync::mpsc::channel::<()>(32);
    let (sending, mut sent) = tokio::sync::mpsc::channel::<()>(32);
    let requests: Vec<_> = (0..32)
        .map(|i| {
            let mut client =
                proto::serving::inference::v1::inference_tasks_client::InferenceTasksClient::new(
                    channel.clone(),
                );
            let (first_done, sending) = (first_done.clone(), sending.clone());
            tokio::spawn(async move {
                let request = EmbedRequest {
                    model: None,
                    texts: vec![format!("4K HDR smart TV {i} inch")],
                };
                let _ = sending.try_send(());
                let result = client.embed(request).await;
                let _ = first_done.try_send(());
                result
            })
        })
        .collect();
    // Every task has started its call (on a busy machine a spawned task may not have run by
    // the time the first answer comes back, and a call the client has not sent yet is
    // refused by the server's GOAWAY, not drained).
    for _ in 0..32 {
        sent.recv().await.unwrap();
    }
    // Once one request has finished, the others are in the server's queue: stop it now.
    let mut first = first;
    first.recv().await.unwrap();
    server.trigger_shutdown();
    for request in requests {
        let result = request.await.unwrap();
        assert!(
            result.is_ok(),
            "an in-flight request was dropped at shutdown: {result:?}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_broken_model_refuses_the_start_and_says_why() {
    let repository = temp_repository(&[1]);
    std::fs::write(
        repository.path().join("minilm-l6/config.toml"),
        "name = \"minilm-l6\"\nmax_batch_size = \"many\"\n",
    )
    .unwrap();
    let (listener, _) = shared::testing::ephemeral_listener().await.unwrap();
    let err = inference::serve(
        listener,
        inference_config(repository.path(), &["minilm-l6"]),
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("minilm-l6") && err.contains("config.toml") && err.contains("max_batch_size"),
        "{err}"
    );
}

#[tokio::test]
async fn demanding_cuda_without_it_refuses_the_start() {
    let repository = temp_repository(&[1]);
    let mut config = inference_config(repository.path(), &["minilm-l6"]);
    config.runtime.device = Some(inference::runtime::Device::Cuda);
    let (listener, _) = shared::testing::ephemeral_listener().await.unwrap();
    // These tests build the service without the `cuda` feature, so CUDA is never usable here.
    let err = inference::serve(listener, config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--device cuda") && err.contains("CUDA execution provider"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_finish_by_its_deadline_gets_deadline_exceeded() {
    let repository = temp_repository(&[1]);
    let mut server = RunningInference::start(inference_config(repository.path(), &["minilm-l6"]))
        .await
        .unwrap();
    let mut client = task_client(server.addr).await;
    // 64 texts of 256 tokens take far longer than 200 ms on this model.
    let long = "stainless steel insulated water bottle keeps drinks cold ".repeat(30);
    let mut request = tonic::Request::new(EmbedRequest {
        model: None,
        texts: vec![long; 64],
    });
    request.set_timeout(std::time::Duration::from_millis(200));
    let status = client.embed(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("minilm-l6"),
        "{}",
        status.message()
    );
    // The service goes on serving.
    assert_eq!(embed_version(server.addr, 0).await.unwrap(), 1);
    server.stop().await.unwrap();
}

/// What a health Watch of the overall status (`""`) on `addr` says first, and the stream to
/// read what it says next.
async fn watch_health(
    addr: std::net::SocketAddr,
) -> (i32, tonic::Streaming<tonic_health::pb::HealthCheckResponse>) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(addr).await)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = health.message().await.unwrap().expect("a first status");
    (first.status, health)
}

/// The next status a health Watch reports, within 10 s (None: the stream ended without one).
async fn next_status(
    health: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> Option<i32> {
    tokio::time::timeout(std::time::Duration::from_secs(10), health.message())
        .await
        .expect("a health update within 10 s")
        .ok()
        .flatten()
        .map(|m| m.status)
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_says_not_serving_and_ends_open_watches_when_it_stops() {
    use proto::monitoring::metrics::v1::WatchRequest;
    use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let (first, mut health) = watch_health(collector.grpc).await;
    assert_eq!(first, SERVING);
    // A client that watches for new metrics (as the alert manager does) and never hangs up.
    let mut watch = MetricsQueryClient::new(connect(collector.grpc).await)
        .watch(WatchRequest::default())
        .await
        .unwrap()
        .into_inner();

    let began = std::time::Instant::now();
    let stopping = tokio::spawn(async move { collector.stop().await });
    assert_eq!(
        next_status(&mut health).await,
        Some(NOT_SERVING),
        "health turns NOT_SERVING before the collector goes"
    );
    drop(health);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the open Watch ended when the collector stopped"
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .expect("the collector stopped within 10 s (its grace period is 30 s)")
        .unwrap()
        .unwrap();
    assert!(began.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_manager_says_not_serving_when_it_stops() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let db = TestDatabase::create().await;
    let rules = tempfile::tempdir().unwrap();
    let manager = start_alert_manager(&collector.endpoint(), rules.path(), &db.url).await;
    let (first, mut health) = watch_health(manager.addr).await;
    assert_eq!(first, SERVING);

    let _ = manager.stop.send(());
    assert_eq!(
        next_status(&mut health).await,
        Some(NOT_SERVING),
        "health turns NOT_SERVING before the alert manager goes"
    );
    drop(health);
    tokio::time::timeout(std::time::Duration::from_secs(10), manager.task)
        .await
        .expect("the alert manager stopped within 10 s")
        .unwrap()
        .unwrap();
    collector.stop().await.unwrap();
    db.drop().await;
}

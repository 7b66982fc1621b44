//! The metrics collector receives OTLP from the real services and exposes their metrics in
//! Prometheus text format.

use integration_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_metrics_reach_the_prometheus_endpoint() {
    use clap::Parser as _;
    let (grpc, otlp) = shared::testing::ephemeral_listener().await.unwrap();
    let (http, http_addr) = shared::testing::ephemeral_listener().await.unwrap();
    let config = metrics_collector::Config::parse_from(["metrics-collector", "--plaintext"]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(metrics_collector::serve(grpc, http, config, async move {
        let _ = stopped.await;
    }));
    wait_until_serving(otlp).await.unwrap();

    let endpoint = format!("http://{otlp}");
    let envs = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("SERVICE_INSTANCE_ID", "inference-7f9c"),
    ];
    let inference = InferenceProcess::start(&models_dir(), &["minilm-l6"], &envs)
        .await
        .unwrap();
    let mut client = task_client(inference.addr).await;
    for text in [
        "organic green tea",
        "wireless headphones",
        "kids winter boots",
    ] {
        client
            .embed(proto::serving::inference::v1::EmbedRequest {
                model: None,
                texts: vec![text.into()],
            })
            .await
            .unwrap();
    }

    // Metrics arrive with the next export (every 200 ms here): wait for the count to show. The
    // process's `service.instance.id` is its `instance`.
    let wanted = "inference_requests_total{instance=\"inference-7f9c\",job=\"inference\",model=\"minilm-l6\",model_version=\"1\",status=\"OK\"} 3";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let body = loop {
        let (status, body) = http_get(http_addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        if body.contains(wanted) {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wanted} never appeared:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("# TYPE inference_request_duration_seconds histogram"),
        "{body}"
    );
    assert!(body.contains("inference_request_duration_seconds_count{instance=\"inference-7f9c\",job=\"inference\",model=\"minilm-l6\",model_version=\"1\"} 3"), "{body}");
    assert!(body.contains("inference_batch_size_bucket{"), "{body}");
    assert!(body.contains("collector_refused_points_total 0"), "{body}");
    // The query API returns what the service sent: exact counts, a quantile within its bucket.
    let mut queries = proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient::new(
        connect(otlp).await,
    );
    use proto::monitoring::metrics::v1::Function;
    let requests = queries
        .query(metric_query(
            "inference.requests",
            Function::Increase,
            300,
            &["job", "status"],
        ))
        .await
        .unwrap()
        .into_inner()
        .samples;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].labels["job"], "inference");
    assert_eq!(requests[0].value, 3.0);
    let mut p50 = metric_query("inference.request.duration", Function::Quantile, 300, &[]);
    p50.quantile = 0.5;
    let p50 = queries.query(p50).await.unwrap().into_inner().samples;
    assert!(p50[0].value > 0.0 && p50[0].value < 1.0, "{p50:?}");
    // Prometheus' own linter accepts the exposition.
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `make deps` installs it)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = promtool.stdin.take().unwrap();
        stdin.write_all(body.as_bytes()).await.unwrap();
    }
    let lint = promtool.wait_with_output().await.unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    inference.terminate().await;
    let _ = stop.send(());
    collector.await.unwrap().unwrap();
}

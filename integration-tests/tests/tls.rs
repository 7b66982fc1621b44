//! The mesh over TLS, as `make run` and Kubernetes run it: every service presents a certificate
//! of the mesh's CA; the internal ones (inference, collector, alert manager) refuse callers
//! without one; the gateway takes recommender services that only trust the CA. And strangers
//! (plaintext, no certificate, another CA's certificate) are refused, while the mesh goes on
//! answering its own.

use integration_tests::otlp_build::delta_counts;
use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use proto::monitoring::alerts::v1 as am;
use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;
use shared::tls::MeshTls;

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

const RULES: &str = r#"
group_by: [alertname]
route: {group_wait: 0s, group_interval: 1s}
rules:
  - name: ViewsHigh
    kind: threshold
    query: {metric: shop.views, function: rate, window: 2s}
    op: ">"
    threshold: 5
"#;

/// The metrics the collector at `addr` lists, asked over `tls`.
async fn listed(addr: std::net::SocketAddr, tls: &MeshTls) -> Result<Vec<String>, tonic::Status> {
    let channel = connect_over(addr, tls)
        .await
        .map_err(|err| tonic::Status::unavailable(format!("cannot connect: {err:#}")))?;
    Ok(MetricsQueryClient::new(channel)
        .list_metrics(pb::ListMetricsRequest {})
        .await?
        .into_inner()
        .metrics
        .into_iter()
        .map(|m| m.name)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_runs_over_mutual_tls_end_to_end() {
    let pki = TestPki::new();
    let db = TestDatabase::create().await;
    let operator = pki.client("operator");
    let mut collector = RunningCollector::start(&strs(&pki.args("metrics-collector")))
        .await
        .unwrap();
    let collector_url = format!("https://{}", collector.grpc);

    // The inference service serves over TLS and exports its telemetry to the collector over
    // TLS, with the certificate cert-manager would mount (given here as environment).
    let folder = pki.folder("inference");
    let file = |name: &str| folder.join(name).display().to_string();
    let (cert, key, ca) = (file("tls.crt"), file("tls.key"), file("ca.crt"));
    let inference = InferenceProcess::start(
        &models_dir(),
        &["minilm-l6"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
            ("TLS_CERT_FILE", cert.as_str()),
            ("TLS_KEY_FILE", key.as_str()),
            ("TLS_CA_FILE", ca.as_str()),
        ],
    )
    .await
    .unwrap();

    // The gateway calls the replica over TLS (checking its certificate) and is called over TLS.
    let mut args = pki.args("gateway");
    args.extend(["--records-endpoint".to_owned(), collector_url.clone()]);
    let mut gateway = RunningGateway::start(gateway_config(&[inference.addr], &strs(&args)))
        .await
        .unwrap();

    // A recommender service with grpcurl trusts the mesh's CA and presents no certificate.
    let ca_file = pki.folder("operator").join("ca.crt").display().to_string();
    let out = run_command(
        &venv_bin("grpcurl"),
        &[
            "-cacert",
            &ca_file,
            "-H",
            "authorization: Bearer client-key",
            "-d",
            r#"{"texts": ["wireless headphones"]}"#,
            &gateway.addr.to_string(),
            "ecommerce.gateway.v1.Gateway/Embed",
        ],
    )
    .await
    .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["embeddings"][0]["values"].as_array().map(Vec::len),
        Some(384),
        "{out}"
    );

    // The inference service's own metrics crossed TLS into the collector.
    eventually(
        "the inference service's metrics in the collector",
        std::time::Duration::from_secs(20),
        || async {
            let names = listed(collector.grpc, &operator).await.ok()?;
            names
                .iter()
                .any(|n| n == "inference.requests")
                .then_some(())
        },
    )
    .await;

    // The alert manager reads the collector over TLS and fires on what an operator sent.
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("rules.yaml"), RULES).unwrap();
    let manager_args = pki.args("alert-manager");
    let manager =
        start_alert_manager_with(&collector_url, rules.path(), &db.url, &strs(&manager_args)).await;
    let sender = MetricsServiceClient::new(connect_over(collector.grpc, &operator).await.unwrap());
    eventually(
        "ViewsHigh firing",
        std::time::Duration::from_secs(30),
        || {
            let mut sender = sender.clone();
            let operator = operator.clone();
            async move {
                let views = vec![vec![("page", "home".to_owned())]];
                sender
                    .export(delta_counts("shop", "shop.views", &views, 50.0))
                    .await
                    .ok()?;
                let channel = connect_over(manager.addr, &operator).await.ok()?;
                let alerts = am::alert_manager_client::AlertManagerClient::new(channel)
                    .list_alerts(am::ListAlertsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .alerts;
                alerts
                    .iter()
                    .any(|a| a.rule == "ViewsHigh" && a.state == am::AlertState::Firing as i32)
                    .then_some(())
            }
        },
    )
    .await;

    let _ = manager.stop.send(());
    manager.task.await.unwrap().unwrap();
    gateway.stop().await.unwrap();
    inference.terminate().await;
    collector.stop().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_mesh_certificate_are_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let operator = pki.client("operator");
    let mut collector = RunningCollector::start(&strs(&pki.args("metrics-collector")))
        .await
        .unwrap();

    // Plaintext to a TLS port: the server's answer is TLS, which is no HTTP/2 at all.
    let plain = listed(collector.grpc, &MeshTls::plaintext())
        .await
        .unwrap_err();
    assert_refused_at_transport(&plain);

    // TLS that trusts the CA but shows no certificate: the collector asks for one.
    let anonymous = tls_with_ca_only(&pki);
    // (Under TLS 1.3 the client learns it only as a broken connection: the server's alert
    // comes after the client's side of the handshake has finished.)
    let err = listed(collector.grpc, &anonymous).await.unwrap_err();
    assert_refused_at_transport(&err);

    // A certificate from another CA, shown by a caller that trusts the mesh's: refused.
    let err = listed(collector.grpc, &other.client_trusting("operator", &pki))
        .await
        .unwrap_err();
    assert_refused_at_transport(&err);
    // And a caller of another mesh refuses the collector's certificate by itself.
    let err = listed(collector.grpc, &other.client("operator"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("invalid peer certificate"),
        "{err:?}"
    );

    // The mesh's own callers are still answered.
    listed(collector.grpc, &operator).await.unwrap();
    collector.stop().await.unwrap();
}

/// The call failed below gRPC: the connection was refused or broken (the code then depends on
/// when the TLS layer gave up: UNAVAILABLE, UNKNOWN, INTERNAL or CANCELLED), and no service
/// answered it.
fn assert_refused_at_transport(status: &tonic::Status) {
    use std::error::Error as _;
    let mut transport = status.message().starts_with("cannot connect");
    let mut source = status.source();
    while let Some(err) = source {
        transport |= err.is::<tonic::transport::Error>();
        source = err.source();
    }
    assert!(
        transport
            && matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
        "not a transport refusal: {status:?}"
    );
}

/// A client that trusts `pki`'s CA and has no certificate of its own.
fn tls_with_ca_only(pki: &TestPki) -> MeshTls {
    MeshTls::load_client(&shared::tls::TlsArgs {
        tls_ca: Some(pki.folder("operator").join("ca.crt")),
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_takes_callers_without_a_certificate_but_not_plaintext() {
    let pki = TestPki::new();
    // The replica and the gateway speak TLS; a caller that only trusts the CA is served; plaintext is not.
    let folder = pki.folder("inference");
    let file = |name: &str| folder.join(name).display().to_string();
    let (cert, key, ca) = (file("tls.crt"), file("tls.key"), file("ca.crt"));
    let replica = InferenceProcess::start(
        &models_dir(),
        &["minilm-l6"],
        &[
            ("TLS_CERT_FILE", cert.as_str()),
            ("TLS_KEY_FILE", key.as_str()),
            ("TLS_CA_FILE", ca.as_str()),
        ],
    )
    .await
    .unwrap();
    // The kubelet's gRPC probe cannot speak TLS: health alone answers in plaintext on a port of
    // its own.
    let health_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut args = pki.args("gateway");
    args.extend([
        "--plaintext-health-listen".to_owned(),
        health_addr.to_string(),
    ]);
    let mut gateway = RunningGateway::start(gateway_config(&[replica.addr], &strs(&args)))
        .await
        .unwrap();
    wait_until_serving(health_addr).await.unwrap();
    let health_port_embed = proto::ecommerce::gateway::v1::gateway_client::GatewayClient::new(
        connect(health_addr).await,
    )
    .embed(with_key(
        proto::ecommerce::gateway::v1::EmbedRequest {
            texts: vec!["organic green tea".into()],
        },
        "client-key",
        None,
    ))
    .await
    .unwrap_err();
    assert_eq!(
        health_port_embed.code(),
        tonic::Code::Unimplemented,
        "the health port serves health only: {health_port_embed:?}"
    );
    let embed = |tls: MeshTls| async move {
        let channel = connect_over(gateway.addr, &tls)
            .await
            .map_err(|err| tonic::Status::unavailable(format!("cannot connect: {err:#}")))?;
        proto::ecommerce::gateway::v1::gateway_client::GatewayClient::new(channel)
            .embed(with_key(
                proto::ecommerce::gateway::v1::EmbedRequest {
                    texts: vec!["organic green tea".into()],
                },
                "client-key",
                None,
            ))
            .await
            .map(tonic::Response::into_inner)
    };
    let served = embed(tls_with_ca_only(&pki)).await.unwrap();
    assert_eq!(served.embeddings[0].values.len(), 384);
    let refused = embed(MeshTls::plaintext()).await.unwrap_err();
    assert_refused_at_transport(&refused);
    gateway.stop().await.unwrap();
    replica.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_no_certificate_and_no_plaintext_flag_refuses_to_start() {
    let out = tokio::process::Command::new(service_binary("metrics-collector"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env_remove("TLS_CERT_FILE")
        .env_remove("MESH_PLAINTEXT")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no TLS certificate") && stderr.contains("--plaintext"),
        "{stderr}"
    );

    // With TLS, an http:// address is refused at start with the flag that holds it.
    let pki = TestPki::new();
    let mut args = pki.args("alert-manager");
    args.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--collector",
            "http://127.0.0.1:4317",
            "--rules",
            "deploy/rules",
            "--database-url",
            "postgres://127.0.0.1:1/nowhere",
        ]
        .map(str::to_owned),
    );
    let out = tokio::process::Command::new(service_binary("alert-manager"))
        .args(&args)
        .current_dir(repo_root())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--collector is http://127.0.0.1:4317")
            && stderr.contains("write https://"),
        "{stderr}"
    );
}

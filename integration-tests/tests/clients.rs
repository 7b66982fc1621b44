//! Real third-party clients work against the service unchanged: grpcurl 1.8.6 (reflection
//! v1alpha), Triton's Python client, and a reflection v1 client.

use integration_tests::*;
use tokio_stream::StreamExt;

#[tokio::test]
async fn grpcurl_lists_services_by_reflection_and_describes_them() {
    let addr = shared_inference().to_string();
    let grpcurl = venv_bin("grpcurl");
    let list = run_command(&grpcurl, &["-plaintext", &addr, "list"])
        .await
        .unwrap();
    for service in [
        "inference.GRPCInferenceService",
        "serving.inference.v1.InferenceTasks",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l == service),
            "{service} missing from:\n{list}"
        );
    }
    let describe = run_command(
        &grpcurl,
        &[
            "-plaintext",
            &addr,
            "describe",
            "serving.inference.v1.InferenceTasks.Embed",
        ],
    )
    .await
    .unwrap();
    assert!(describe.contains("rpc Embed"), "{describe}");
    assert!(
        describe.contains("Embeds each text"),
        "comments are served: {describe}"
    );
}

#[tokio::test]
async fn grpcurl_calls_model_infer_and_health() {
    let addr = shared_inference().to_string();
    let grpcurl = venv_bin("grpcurl");
    // grpcurl's JSON form of bytes is base64: "d2lyZWxlc3MgaGVhZHBob25lcw==" is "wireless headphones".
    let request = r#"{"model_name":"minilm-l6","inputs":[{"name":"TEXT","datatype":"BYTES","shape":[1,1],"contents":{"bytes_contents":["d2lyZWxlc3MgaGVhZHBob25lcw=="]}}]}"#;
    let out = run_command(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            request,
            &addr,
            "inference.GRPCInferenceService/ModelInfer",
        ],
    )
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["modelName"], "minilm-l6");
    assert_eq!(json["outputs"][0]["name"], "sentence_embedding");
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!(["1", "384"]));
    let health = run_command(
        &grpcurl,
        &["-plaintext", &addr, "grpc.health.v1.Health/Check"],
    )
    .await
    .unwrap();
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn tritonclient_infers_and_reads_metadata_config_and_statistics() {
    let addr = shared_inference().to_string();
    let script = repo_root().join("integration-tests/clients/triton_client.py");
    let fixture = repo_root().join("integration-tests/fixtures/minilm_l6_embeddings.json");
    let out = run_command(
        &venv_bin("python"),
        &[script.to_str().unwrap(), &addr, fixture.to_str().unwrap()],
    )
    .await
    .unwrap();
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["live"], true);
    assert_eq!(report["ready"], true);
    assert_eq!(report["model_ready"], true);
    assert_eq!(report["response_id"], "triton-client-1");
    assert_eq!(report["shape"], serde_json::json!([8, 384]));
    assert!(
        report["max_abs_diff"].as_f64().unwrap() <= 1e-5,
        "{}",
        report["max_abs_diff"]
    );
    let metadata = &report["metadata"];
    assert_eq!(metadata["inputs"][0]["name"], "TEXT");
    assert_eq!(metadata["inputs"][0]["datatype"], "BYTES");
    assert_eq!(
        metadata["outputs"][0]["shape"],
        serde_json::json!(["-1", "384"])
    );
    let config = &report["config"];
    assert_eq!(config["max_batch_size"], 64);
    assert_eq!(config["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(config["output"][0]["data_type"], "TYPE_FP32");
    assert_eq!(
        config["parameters"]["execution_provider"]["string_value"],
        "CPUExecutionProvider"
    );
    assert!(config.get("dynamic_batching").is_some(), "{config}");
    let stats = &report["statistics"]["model_stats"][0];
    assert!(
        stats["inference_count"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 8,
        "{stats}"
    );
    let index = report["index"]["models"].as_array().unwrap();
    assert!(
        index
            .iter()
            .any(|m| m["name"] == "minilm-l6" && m["state"] == "READY"),
        "{index:?}"
    );
}

#[tokio::test]
async fn reflection_v1_is_served_too() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(connect(shared_inference()).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"inference.GRPCInferenceService".to_owned()),
        "{names:?}"
    );
}

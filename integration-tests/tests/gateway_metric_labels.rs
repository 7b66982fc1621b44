//! The gateway's `gateway.requests` names a model version only when the gateway knows it is
//! deployed: a version that a caller makes up is counted as `unknown`, so that no caller can
//! add label values (series) at will or have its failed calls counted against a version.

use std::collections::BTreeSet;

use integration_tests::otlp::OtlpReceiver;
use integration_tests::*;
use tonic::Code;

/// The value of `key` among a point's attributes (empty when it has none).
fn attribute(point: &[(String, String)], key: &str) -> String {
    point
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_a_caller_makes_up_are_counted_as_unknown() {
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let telemetry = integration_tests::otlp::export_telemetry_to("gateway", endpoint, 60_000);
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    let mut client = oip_client(gateway.addr).await;
    let infer = |request| with_key(request, "client-key", None);

    // The newest version answers: the gateway knows it is deployed.
    let served = client
        .model_infer(infer(text_request("minilm-l6", &["green tea"])))
        .await
        .unwrap()
        .into_inner()
        .model_version;
    // A caller's mistake about that version is counted against it (the rules do not count
    // mistakes as failures)…
    let mut request = text_request("minilm-l6", &["green tea"]);
    request.model_version = served.clone();
    request.inputs[0].datatype = "FP32".into();
    let status = client.model_infer(infer(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // …while versions no replica serves, well-formed or not, and versions of a model no
    // replica serves, are not.
    for i in 0..50 {
        for datatype in ["BYTES", "FP32"] {
            let mut request = text_request("minilm-l6", &["green tea"]);
            request.model_version = (918_273 + i).to_string();
            request.inputs[0].datatype = datatype.into();
            let status = client.model_infer(infer(request)).await.unwrap_err();
            assert!(
                matches!(status.code(), Code::NotFound | Code::InvalidArgument),
                "{status:?}"
            );
        }
    }
    let mut request = text_request("no-such-model", &["green tea"]);
    request.model_version = "7".into();
    let status = client.model_infer(infer(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    gateway.stop().await.unwrap();
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();
    let metrics = receiver.metrics();
    let points: Vec<&Vec<(String, String)>> = metrics
        .iter()
        .filter(|m| m.name == "gateway.requests")
        .flat_map(|m| &m.points)
        .filter(|p| attribute(p, "rpc") == "ModelInfer")
        .collect();
    let series: BTreeSet<(String, String, String)> = points
        .iter()
        .map(|p| {
            (
                attribute(p, "model"),
                attribute(p, "model_version"),
                attribute(p, "status"),
            )
        })
        .collect();
    let versions: BTreeSet<String> = series.iter().map(|(_, v, _)| v.clone()).collect();
    assert_eq!(
        versions,
        BTreeSet::from([served.clone(), "unknown".to_owned()]),
        "label values of model_version: {series:?}"
    );
    for expected in [
        ("minilm-l6", served.as_str(), "OK"),
        ("minilm-l6", served.as_str(), "INVALID_ARGUMENT"),
        ("minilm-l6", "unknown", "NOT_FOUND"),
        ("unknown", "unknown", "NOT_FOUND"),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(series.contains(&expected), "no {expected:?} in {series:?}");
    }
}

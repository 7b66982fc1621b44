//! A `ModelInfer` whose bytes do not decode (a string field that is not UTF-8), sent through a
//! real gateway to a real inference replica: the caller gets `INVALID_ARGUMENT` naming the
//! field, not `INTERNAL`, and the gateway counts it as the caller's mistake.

use integration_tests::otlp::OtlpReceiver;
use integration_tests::raw::RawCodec;
use integration_tests::*;
use prost::Message;
use tonic::Code;

/// Calls `ModelInfer` on `addr` with `message` as it is, with the client key.
async fn raw_infer(addr: std::net::SocketAddr, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(connect(addr).await);
    grpc.ready().await.unwrap();
    grpc.unary(
        with_key(message, "client-key", None),
        http::uri::PathAndQuery::from_static("/inference.GRPCInferenceService/ModelInfer"),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// `message` with its one occurrence of `from` replaced by `to` (of the same length).
fn replaced(message: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = message
        .windows(from.len())
        .position(|w| w == from)
        .expect("the field is in the message");
    let mut patched = message.to_vec();
    patched[at..at + to.len()].copy_from_slice(to);
    patched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_string_that_is_not_utf8_is_the_caller_s_mistake() {
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let telemetry = integration_tests::otlp::export_telemetry_to("gateway", endpoint, 60_000);
    let mut gateway = RunningGateway::start(gateway_config(&[shared_inference()], &[]))
        .await
        .unwrap();
    let mut request = text_request("minilm-l6", &["green tea"]);
    request.id = "call-42".into();
    let good = request.encode_to_vec();

    let cases = [
        ("id", replaced(&good, b"call-42", b"call\xff42")),
        ("name", replaced(&good, b"TEXT", b"TE\xfeT")),
        ("datatype", replaced(&good, b"BYTES", b"BY\xc3(S")),
    ];
    for (field, message) in cases {
        let status = raw_infer(gateway.addr, message).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{field}: {}",
            status.message()
        );
        for words in [field, "UTF-8"] {
            assert!(
                status.message().contains(words),
                "{field}: {:?} lacks {words:?}",
                status.message()
            );
        }
    }
    // The same call, well-formed, is served.
    let answer = raw_infer(gateway.addr, good).await.unwrap();
    let answer = proto::inference::ModelInferResponse::decode(&answer[..]).unwrap();
    assert_eq!(answer.id, "call-42");

    gateway.stop().await.unwrap();
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();
    // Counted as the caller's mistakes, not as the server's failures.
    let statuses: Vec<String> = receiver
        .metrics()
        .iter()
        .filter(|m| m.name == "gateway.requests")
        .flat_map(|m| &m.points)
        .filter(|p| p.iter().any(|(k, v)| k == "rpc" && v == "ModelInfer"))
        .flat_map(|p| {
            p.iter()
                .filter(|(k, _)| k == "status")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(
        statuses.iter().any(|s| s == "INVALID_ARGUMENT") && statuses.iter().any(|s| s == "OK"),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| s == "INVALID_ARGUMENT" || s == "OK"),
        "{statuses:?}"
    );
}

//! One trace spans the caller, the gateway and the inference service: the gateway continues the
//! caller's `traceparent` and passes its own span on, and the inference service (a separate
//! process, exporting on its own) continues that. Sampled payloads reach span attributes masked,
//! and the gateway's metrics carry their attributes, refusals at admission counted apart.

use integration_tests::otlp::OtlpReceiver;
use integration_tests::*;
use proto::ecommerce::gateway::v1 as pb;

/// A text with one of each kind of personal data the gateway masks.
const PERSONAL: &str = "ship to jane.doe@example.com, call +1 (415) 555-2671, card 4111 1111 1111 1111, id 11010519491231002X";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_gateway_and_the_inference_spans() {
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let telemetry =
        integration_tests::otlp::export_telemetry_to("gateway", endpoint.clone(), 60_000);
    let inference = InferenceProcess::exporting_to(&endpoint).await.unwrap();
    let mut gateway = RunningGateway::start(gateway_config(
        &[inference.addr],
        &["--payload-log-sample", "1"],
    ))
    .await
    .unwrap();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let request = in_trace(
        with_key(
            pb::EmbedRequest {
                texts: vec![PERSONAL.into()],
            },
            "client-key",
            None,
        ),
        trace_id,
        caller_span,
    );
    gateway_client(gateway.addr)
        .await
        .embed(request)
        .await
        .unwrap();
    // The Open Inference Protocol's ModelInfer, in a trace of its own.
    let oip_trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = in_trace(
        with_key(
            text_request("minilm-l6", &["usb-c charger"]),
            "client-key",
            None,
        ),
        oip_trace_id,
        caller_span,
    );
    let answer = oip_client(gateway.addr)
        .await
        .model_infer(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f32s(&answer.raw_output_contents[0]).len(), 384);
    // Two refusals at admission: a wrong key, and a client key on an admin method.
    let wrong_key = gateway_client(gateway.addr)
        .await
        .embed(with_key(
            pb::EmbedRequest {
                texts: vec!["usb-c charger".into()],
            },
            "no-such-key",
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong_key.code(), tonic::Code::Unauthenticated);
    let not_admin = pb::gateway_admin_client::GatewayAdminClient::new(connect(gateway.addr).await)
        .get_canary(with_key(
            pb::GetCanaryRequest {
                model: "minilm-l6".into(),
            },
            "client-key",
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_admin.code(), tonic::Code::PermissionDenied);
    // Version 1 stops being served (a botched deploy): both kinds of call fail, each in a
    // trace of its own.
    oip_client(inference.addr)
        .await
        .repository_model_unload(with_key(
            proto::inference::RepositoryModelUnloadRequest {
                model_name: "minilm-l6".into(),
                ..Default::default()
            },
            "admin-key",
            None,
        ))
        .await
        .unwrap();
    let failed_infer_trace = "5a1e2d3c4b5a69788796a5b4c3d2e1f0";
    let mut request = text_request("minilm-l6", &["usb-c cable"]);
    request.model_version = "1".into();
    let failed = oip_client(gateway.addr)
        .await
        .model_infer(in_trace(
            with_key(request, "client-key", None),
            failed_infer_trace,
            caller_span,
        ))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    let failed_embed_trace = "6b2f3e4d5c6b7a8998a7b6c5d4e3f201";
    let failed = gateway_client(gateway.addr)
        .await
        .embed(in_trace(
            with_key(
                pb::EmbedRequest {
                    texts: vec!["a text not in the cache".into()],
                },
                "client-key",
                None,
            ),
            failed_embed_trace,
            caller_span,
        ))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");

    gateway.stop().await.unwrap();
    inference.terminate().await; // flushes its spans on shutdown
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();

    let spans = receiver.spans();
    let in_trace: Vec<&integration_tests::otlp::SpanRecord> =
        spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let gateway_span = in_trace
        .iter()
        .find(|s| s.service == "gateway" && s.name == "gateway")
        .unwrap_or_else(|| panic!("no gateway span in the caller's trace: {in_trace:#?}"));
    assert_eq!(
        gateway_span.parent, caller_span,
        "the gateway continues the caller's span"
    );
    let inference_span = in_trace
        .iter()
        .find(|s| s.service == "inference" && s.name == "task")
        .unwrap_or_else(|| panic!("no inference span in the caller's trace: {in_trace:#?}"));
    assert_eq!(
        inference_span.parent, gateway_span.span_id,
        "the inference span is a child of the gateway span"
    );
    let oip_gateway = spans
        .iter()
        .find(|s| s.trace_id == oip_trace_id && s.service == "gateway" && s.name == "gateway")
        .unwrap_or_else(|| panic!("no gateway span in the ModelInfer trace: {spans:#?}"));
    assert_eq!(oip_gateway.parent, caller_span);
    let oip_inference = spans
        .iter()
        .find(|s| s.trace_id == oip_trace_id && s.service == "inference" && s.name == "ModelInfer")
        .unwrap_or_else(|| panic!("no inference span in the ModelInfer trace: {spans:#?}"));
    assert_eq!(
        oip_inference.parent, oip_gateway.span_id,
        "the inference's ModelInfer span is a child of the gateway span"
    );
    for name in ["tokenize", "queue_wait", "compute"] {
        assert!(
            in_trace
                .iter()
                .any(|s| s.service == "inference" && s.name == name),
            "{name} missing"
        );
    }
    let payload = gateway_span
        .attributes
        .iter()
        .find(|(k, _)| k == "payload.request")
        .map(|(_, v)| v.clone())
        .expect("payload.request attribute");
    assert_eq!(
        payload,
        "ship to [email], call [phone], card [card], id [cn-id]"
    );
    for secret in [
        "jane.doe@example.com",
        "555-2671",
        "4111 1111 1111 1111",
        "11010519491231002X",
    ] {
        assert!(!format!("{spans:?}").contains(secret), "{secret} in spans");
    }
    assert!(
        !format!("{spans:?}").contains("client-key"),
        "the API key in spans"
    );
    // The failed calls' spans are marked failed and carry the version the call was routed to,
    // which is what the collector's exemplars are found by (an incident's version).
    let failed_span = |trace: &str, service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == trace && s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {service} span {name} in trace {trace}: {spans:#?}"))
    };
    for span in [
        failed_span(failed_infer_trace, "gateway", "gateway"),
        failed_span(failed_infer_trace, "inference", "ModelInfer"),
        failed_span(failed_embed_trace, "gateway", "gateway"),
    ] {
        assert_eq!(span.attribute("model_version"), Some("1"), "{span:#?}");
        let failure = span.failure.as_deref().unwrap_or_default();
        assert!(failure.contains("not loaded"), "{span:#?}");
    }
    // So do successful ones, in both services.
    assert_eq!(oip_gateway.attribute("model_version"), Some("1"));
    assert_eq!(oip_inference.attribute("model_version"), Some("1"));
    assert_eq!(inference_span.attribute("model_version"), Some("1"));
    assert!(oip_gateway.failure.is_none() && inference_span.failure.is_none());
    // The gateway's metrics carry rpc, model, version, tenant and status.
    let metrics = receiver.metrics();
    let requests = metrics
        .iter()
        .find(|m| m.name == "gateway.requests")
        .unwrap_or_else(|| panic!("gateway.requests not exported: {metrics:?}"));
    for key in ["rpc", "model", "model_version", "tenant", "status"] {
        assert!(
            requests.attribute_keys.iter().any(|k| k == key),
            "gateway.requests lacks {key}: {:?}",
            requests.attribute_keys
        );
    }
    // The Open Inference Protocol's calls are counted too, with the version that served them.
    let attribute = |point: &Vec<(String, String)>, key: &str| {
        point
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(
        metrics
            .iter()
            .filter(|m| m.name == "gateway.requests")
            .flat_map(|m| &m.points)
            .any(|p| attribute(p, "rpc") == "ModelInfer"
                && attribute(p, "model") == "minilm-l6"
                && attribute(p, "model_version") == "1"
                && attribute(p, "tenant") == "shop"
                && attribute(p, "status") == "OK"),
        "no ModelInfer series in gateway.requests: {metrics:?}"
    );
    // Refusals are counted apart from finished calls, by rpc, tenant and reason.
    let refusals: Vec<_> = metrics
        .iter()
        .filter(|m| m.name == "gateway.refusals")
        .flat_map(|m| &m.points)
        .map(|p| {
            (
                attribute(p, "rpc"),
                attribute(p, "tenant"),
                attribute(p, "reason"),
            )
        })
        .collect();
    for expected in [
        ("Embed", "", "unauthenticated"),
        ("GetCanary", "shop", "permission_denied"),
    ] {
        assert!(
            refusals.iter().any(|(rpc, tenant, reason)| (
                rpc.as_str(),
                tenant.as_str(),
                reason.as_str()
            ) == expected),
            "no gateway.refusals point {expected:?}: {refusals:?}"
        );
    }
    assert!(
        !metrics
            .iter()
            .filter(|m| m.name == "gateway.requests")
            .flat_map(|m| &m.points)
            .any(|p| attribute(p, "status") == "UNAUTHENTICATED"),
        "a refused call is not a finished call"
    );
    for name in ["gateway.request.duration", "gateway.cache.lookups"] {
        assert!(
            metrics.iter().any(|m| m.name == name),
            "{name} not exported: {metrics:?}"
        );
    }
}

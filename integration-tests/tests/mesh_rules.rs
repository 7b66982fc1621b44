//! The example rules of `deploy/rules/mesh.yaml` against a real metrics collector: the error
//! ratios that page someone or take a canary out of traffic count the server's failures, never
//! a caller's mistakes (a client that sends malformed calls for a version must not roll it
//! back).

use std::time::Duration;

use alert_manager::evaluator::{Observation, observe_at};
use alert_manager::rules::Rule;
use integration_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;

/// Codes of calls that failed by the caller's doing.
const CALLER_MISTAKES: [&str; 8] = [
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "ALREADY_EXISTS",
    "CANCELLED",
];

/// Codes of calls that failed by the server's doing.
const SERVER_FAILURES: [&str; 6] = [
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
];

/// The rules that read the error ratio of `gateway.requests`.
const ERROR_RULES: [&str; 3] = [
    "GatewayErrorRate",
    "CanaryVersionErrors",
    "GatewayAvailability",
];

/// The labels of the gateway's `ModelInfer` calls to `version` of `model` ending in `status`.
fn calls(model: &str, version: &str, status: &str) -> Vec<(&'static str, String)> {
    vec![
        ("rpc", "ModelInfer".to_owned()),
        ("model", model.to_owned()),
        ("model_version", version.to_owned()),
        ("tenant", "shop".to_owned()),
        ("status", status.to_owned()),
    ]
}

/// Whether any of a rule's observations of `model` holds its condition.
fn holds_for(observations: &[Observation], model: &str) -> bool {
    observations
        .iter()
        .any(|o| o.holds && o.labels.get("model").map(String::as_str) == Some(model))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_server_failures_make_the_error_rules_fire() {
    let mut collector = RunningCollector::start(&[]).await.unwrap();
    let mut otlp = MetricsServiceClient::new(connect(collector.grpc).await);
    // One model per code: half its calls succeed, half fail with that code.
    let mut label_sets = Vec::new();
    for code in CALLER_MISTAKES.iter().chain(&SERVER_FAILURES) {
        let model = format!("model-{code}");
        label_sets.push(calls(&model, "2", "OK"));
        label_sets.push(calls(&model, "2", code));
    }
    // Calls to versions the gateway does not know deployed (callers made them up), failing.
    label_sets.push(calls("model-UNAVAILABLE", "unknown", "OK"));
    label_sets.push(calls("model-UNAVAILABLE", "unknown", "UNAVAILABLE"));
    otlp.export(integration_tests::otlp_build::delta_counts(
        "gateway",
        "gateway.requests",
        &label_sets,
        10.0,
    ))
    .await
    .unwrap();

    let root = repo_root().join("deploy/rules");
    let rules = alert_manager::rules::load(&[root]).unwrap().rules;
    let query = collector.query_client().await;
    for name in ERROR_RULES {
        let rule: &Rule = rules
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("deploy/rules has no rule {name}"));
        // Every server failure trips the rule (which also shows the counts have arrived)…
        let observations = eventually(
            &format!("{name} firing for every server failure"),
            Duration::from_secs(10),
            || {
                let mut query = query.clone();
                async move {
                    let observations = observe_at(&mut query, rule, 0).await.ok()?;
                    SERVER_FAILURES
                        .iter()
                        .all(|code| holds_for(&observations, &format!("model-{code}")))
                        .then_some(observations)
                }
            },
        )
        .await;
        // …and no caller's mistake does.
        for code in CALLER_MISTAKES {
            assert!(
                !holds_for(&observations, &format!("model-{code}")),
                "{name} counts {code} (a caller's mistake) as a failure: {observations:#?}"
            );
        }
        // A canary rule acts on a version: `unknown` is none.
        assert!(
            !observations
                .iter()
                .any(|o| o.holds
                    && o.labels.get("model_version").map(String::as_str) == Some("unknown")),
            "{name} would act on version 'unknown': {observations:#?}"
        );
    }
    collector.stop().await.unwrap();
}

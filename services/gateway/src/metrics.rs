//! OpenTelemetry instruments of the gateway.

use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock};

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::{KeyValue, Value};
use prost::Message;

/// The gateway's instruments.
pub struct Instruments {
    /// Finished calls by rpc, model, version, tenant and status.
    pub requests: Counter<u64>,
    /// Calls refused at admission by rpc, tenant and reason (never reached a handler, so not
    /// in `requests`).
    pub refusals: Counter<u64>,
    /// Call duration in seconds by rpc, model and version.
    pub duration: Histogram<f64>,
    /// Embedding cache lookups by result (`hit`, `miss`).
    pub cache: Counter<u64>,
    /// Scores returned (purchase-intent probability, ranking similarity) by model, version and
    /// rpc: the collector's drift statistics compare its distribution over time.
    pub score: Histogram<f64>,
    /// Length of input texts in characters by model: drift of what shoppers type.
    pub input_length: Histogram<u64>,
}

/// Bounds of the score histogram: 0.05 wide from -1 (cosine similarity) to 1.
fn score_bounds() -> Vec<f64> {
    (-19..=20).map(|i| f64::from(i) * 0.05).collect()
}

/// The instruments (created on first use, after telemetry set-up).
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("gateway");
        Instruments {
            requests: meter
                .u64_counter("gateway.requests")
                .with_description("Finished gateway calls")
                .build(),
            refusals: meter
                .u64_counter("gateway.refusals")
                .with_description(
                    "Calls refused at admission: unauthenticated, permission_denied, \
                     rate_limited (the key's limit) or overloaded (the gateway's concurrency limit)",
                )
                .build(),
            duration: meter
                .f64_histogram("gateway.request.duration")
                .with_unit("s")
                .with_description("Call duration from arrival to reply")
                .with_boundaries(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                ])
                .build(),
            cache: meter
                .u64_counter("gateway.cache.lookups")
                .with_description("Embedding cache lookups")
                .build(),
            score: meter
                .f64_histogram("gateway.prediction.score")
                .with_description("Scores returned: purchase-intent probability or similarity")
                .with_boundaries(score_bounds())
                .build(),
            input_length: meter
                .u64_histogram("gateway.input.length")
                .with_description("Length of input texts in characters")
                .with_boundaries(vec![
                    8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
                ])
                .build(),
        }
    })
}

/// Most model names kept as label values; a model that never answered (a name a client made
/// up) is counted as `unknown`, so that no caller can grow the metrics' label sets.
const MAX_MODEL_LABELS: usize = 256;

/// Most versions of one model kept as label values.
const MAX_VERSION_LABELS: usize = 32;

/// The label value of a model or a version the gateway does not know to be deployed.
const UNKNOWN: &str = "unknown";

/// Models labelled by name, each with the versions labelled by number: those a replica has
/// answered with, and those named by the configuration or a canary split (see
/// [`name_versions`]). A name or a version that only a caller sent is never added.
fn labelled() -> &'static RwLock<HashMap<Box<str>, Vec<i64>>> {
    static LABELLED: OnceLock<RwLock<HashMap<Box<str>, Vec<i64>>>> = OnceLock::new();
    LABELLED.get_or_init(Default::default)
}

/// Whether `model` is labelled by name, and `version` of it by number.
fn labelled_as(model: &str, version: i64) -> (bool, bool) {
    let labelled = labelled().read().unwrap_or_else(|p| p.into_inner());
    labelled.get(model).map_or((false, false), |versions| {
        (true, versions.contains(&version))
    })
}

/// The label values of `model` and `version` for a call that `answered` with `version`, or
/// failed after being routed to it. A model is named when it has answered at least once or
/// was named (at most [`MAX_MODEL_LABELS`] of them), a version when a replica has answered
/// with it or a canary split names it (at most [`MAX_VERSION_LABELS`] per model); anything
/// else is `unknown`. A version a caller asks for is a caller's choice: counted under its
/// number only once the gateway knows it is deployed, so that callers can neither add label
/// values at will nor have their calls counted against a version that never served them.
pub fn call_labels(model: &str, version: i64, answered: bool) -> (String, Value) {
    let (mut model_known, mut version_known) = labelled_as(model, version);
    // An answer names its model and, unless the replica left it out, its version.
    if answered && !(model_known && (version_known || version < 1)) {
        (model_known, version_known) = name_versions(model, [version]);
    }
    let version = if version_known {
        Value::from(version.to_string())
    } else {
        Value::from(UNKNOWN)
    };
    let model = if model_known { model } else { UNKNOWN };
    (model.to_owned(), version)
}

/// Whether failed calls of `version` of `model` are counted under that version (see
/// [`call_labels`]).
pub fn knows_version(model: &str, version: i64) -> bool {
    labelled_as(model, version).1
}

/// Labels `model` by its name from now on, before it has answered: a model that the gateway's
/// configuration or a stored canary split names (not a caller), so that calls failing from the
/// start (a split to a version the replicas no longer serve) count under the model the rules
/// and their actions act on. Returns whether the name is a label (false once
/// [`MAX_MODEL_LABELS`] names are).
pub fn name_model(model: &str) -> bool {
    name_versions(model, []).0
}

/// Labels `model` by its name, and each of `versions` (those of a canary split, or one a
/// replica answered with) by its number, from now on; versions below 1 are not versions.
/// Returns whether the name is a label, and whether every one of `versions` is.
pub fn name_versions(model: &str, versions: impl IntoIterator<Item = i64>) -> (bool, bool) {
    let mut labelled = labelled().write().unwrap_or_else(|p| p.into_inner());
    if labelled.len() >= MAX_MODEL_LABELS && !labelled.contains_key(model) {
        return (false, false);
    }
    let known = labelled.entry(Box::from(model)).or_default();
    let mut all = true;
    for version in versions {
        if known.contains(&version) {
            continue;
        }
        if version > 0 && known.len() < MAX_VERSION_LABELS {
            known.push(version);
        } else {
            all = false;
        }
    }
    (true, all)
}

/// Records one finished call: `gateway.requests` by rpc, model, version, tenant and status
/// (the gRPC code's canonical name, `OK`, `UNAVAILABLE`, … as in `inference.requests`), and
/// its duration by rpc, model and version. `outcome` is the version that answered, or the
/// failure's code: a failed call counts against the version it was routed to, when the
/// gateway knows that version is deployed, else against `unknown` ([`call_labels`]).
pub fn finished_call(
    rpc: &'static str,
    model: &str,
    call: &crate::call::CallContext,
    outcome: Result<i64, tonic::Code>,
    elapsed: std::time::Duration,
) {
    let (model, version) = call_labels(model, call.version_of(&outcome), outcome.is_ok());
    let status = outcome.map_or_else(shared::error::code_name, |_| "OK");
    let attributes = [
        KeyValue::new("rpc", rpc),
        KeyValue::new("model", model),
        KeyValue::new("model_version", version),
        KeyValue::new("tenant", call.tenant.clone()),
        KeyValue::new("status", status),
    ];
    let instruments = instruments();
    instruments.requests.add(1, &attributes);
    instruments
        .duration
        .record(elapsed.as_secs_f64(), &attributes[..3]);
}

/// A call's record in `gateway.requests`, made exactly once: by [`CallRecord::finish`] or, for a
/// call dropped before it finished (its caller cancelled it), when dropped, as
/// `DEADLINE_EXCEEDED` once its deadline has passed and `CANCELLED` before.
pub struct CallRecord<'a> {
    rpc: &'static str,
    model: &'a str,
    call: &'a crate::call::CallContext,
    started: std::time::Instant,
    open: bool,
}

impl<'a> CallRecord<'a> {
    /// The record of call `rpc` to `model`, timed from `started`.
    pub fn start(
        rpc: &'static str,
        model: &'a str,
        call: &'a crate::call::CallContext,
        started: std::time::Instant,
    ) -> CallRecord<'a> {
        CallRecord {
            rpc,
            model,
            call,
            started,
            open: true,
        }
    }

    /// Records the call's `outcome` ([`finished_call`]).
    pub fn finish(mut self, outcome: Result<i64, tonic::Code>) {
        self.open = false;
        finished_call(
            self.rpc,
            self.model,
            self.call,
            outcome,
            self.started.elapsed(),
        );
    }
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        if self.open {
            let now = std::time::Instant::now();
            let code = match self.call.deadline {
                Some(deadline) if now >= deadline => tonic::Code::DeadlineExceeded,
                _ => tonic::Code::Cancelled,
            };
            finished_call(
                self.rpc,
                self.model,
                self.call,
                Err(code),
                now - self.started,
            );
        }
    }
}

/// Records one call to `path` refused at admission: `gateway.refusals` by rpc ([`rpc_of`]),
/// tenant (empty when the caller is not authenticated) and `reason`. The rpc is looked up
/// here, so admitted calls never pay for it.
pub fn refused_call(path: &str, tenant: &str, reason: &'static str) {
    instruments().refusals.add(
        1,
        &[
            KeyValue::new("rpc", rpc_of(path).to_owned()),
            KeyValue::new("tenant", tenant.to_owned()),
            KeyValue::new("reason", reason),
        ],
    );
}

/// The method name of a gRPC `path` (`/package.Service/Method`) when it names a method of the
/// mesh's own services, else `"unknown"`: callers choose the paths they send, and a label's
/// values must stay bounded.
pub fn rpc_of(path: &str) -> &str {
    static METHODS: OnceLock<HashSet<String>> = OnceLock::new();
    let methods = METHODS.get_or_init(|| {
        let files = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
            .map(|set| set.file)
            .unwrap_or_default();
        files
            .iter()
            .flat_map(|file| {
                file.service.iter().flat_map(move |service| {
                    service.method.iter().map(move |method| {
                        format!("/{}.{}/{}", file.package(), service.name(), method.name())
                    })
                })
            })
            .collect()
    });
    match path.rsplit_once('/') {
        Some((_, method)) if methods.contains(path) => method,
        _ => "unknown",
    }
}

/// Records `hits` cache hits out of `lookups`.
pub fn cache_lookups(hits: usize, lookups: usize) {
    let cache = &instruments().cache;
    cache.add(hits as u64, &[KeyValue::new("result", "hit")]);
    cache.add(
        lookups.saturating_sub(hits) as u64,
        &[KeyValue::new("result", "miss")],
    );
}

/// Records the lengths of the texts a model is asked about.
pub fn input_lengths<'a>(model: &str, texts: impl Iterator<Item = &'a str>) {
    let attributes = [KeyValue::new("model", model.to_owned())];
    let histogram = &instruments().input_length;
    for text in texts {
        histogram.record(text.chars().count() as u64, &attributes);
    }
}

/// Records the scores a model version returned.
pub fn scores(rpc: &'static str, model: &str, version: i64, scores: &[f32]) {
    let attributes = [
        KeyValue::new("rpc", rpc),
        KeyValue::new("model", model.to_owned()),
        KeyValue::new("model_version", version.to_string()),
    ];
    let histogram = &instruments().score;
    for score in scores {
        histogram.record(f64::from(*score), &attributes);
    }
}

/// Reports whether the shared deployed state (PostgreSQL) is reachable, as
/// `gateway.deployed_state.connected` (1 or 0): at 0 the gateway serves the canary splits it
/// last read (none, if it started without the database) and refuses changes.
pub fn deployed_state_connected(connected: bool) {
    static GAUGE: OnceLock<opentelemetry::metrics::Gauge<u64>> = OnceLock::new();
    GAUGE
        .get_or_init(|| {
            opentelemetry::global::meter("gateway")
                .u64_gauge("gateway.deployed_state.connected")
                .with_description(
                    "1 while the shared deployed state (canary splits in PostgreSQL) is reachable, \
                     0 while the gateway serves the splits it last read and refuses changes",
                )
                .build()
        })
        .record(u64::from(connected), &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label values of a call, as text.
    fn labels(model: &str, version: i64, answered: bool) -> (String, String) {
        let (model, version) = call_labels(model, version, answered);
        (model, version.as_str().into_owned())
    }

    fn pair(model: &str, version: &str) -> (String, String) {
        (model.to_owned(), version.to_owned())
    }

    #[test]
    fn a_model_named_by_the_configuration_is_labelled_before_it_answers() {
        assert_eq!(
            labels("configured-model", 0, false),
            pair("unknown", "unknown")
        );
        name_model("configured-model");
        assert_eq!(
            labels("configured-model", 0, false),
            pair("configured-model", "unknown")
        );
    }

    #[test]
    fn made_up_model_names_never_become_label_values() {
        let made_up = "x".repeat(10_000);
        assert_eq!(labels(&made_up, 3, false), pair("unknown", "unknown"));
        assert_eq!(
            labels("answering-model", 1, true),
            pair("answering-model", "1")
        );
        // Once it has answered, a failure of the same model keeps its name.
        assert_eq!(
            labels("answering-model", 1, false),
            pair("answering-model", "1")
        );
        assert_eq!(labels(&made_up, 1, false), pair("unknown", "unknown"));
    }

    #[test]
    fn only_versions_that_served_or_that_a_split_names_become_label_values() {
        assert_eq!(labels("split-model", 2, true), pair("split-model", "2"));
        // A version a caller asked for that never served: its failures count as unknown.
        for version in [918_273, 3, -1, 0] {
            assert_eq!(
                labels("split-model", version, false),
                pair("split-model", "unknown")
            );
            assert!(!knows_version("split-model", version));
        }
        // A split names its versions before they serve; versions below 1 are not versions.
        assert_eq!(name_versions("split-model", [3, 4]), (true, true));
        assert_eq!(labels("split-model", 3, false), pair("split-model", "3"));
        assert_eq!(name_versions("split-model", [0]), (true, false));
        // The versions of one model kept as labels are bounded, whoever names them.
        let (_, all) = name_versions("split-model", 10..10 + MAX_VERSION_LABELS as i64);
        assert!(!all);
        assert_eq!(
            labels("split-model", 9 + MAX_VERSION_LABELS as i64, true),
            pair("split-model", "unknown")
        );
        assert_eq!(labels("split-model", 2, false), pair("split-model", "2"));
    }

    #[test]
    fn only_the_mesh_s_own_methods_name_an_rpc() {
        assert_eq!(rpc_of("/ecommerce.gateway.v1.Gateway/Embed"), "Embed");
        assert_eq!(
            rpc_of("/inference.GRPCInferenceService/ModelInfer"),
            "ModelInfer"
        );
        assert_eq!(
            rpc_of("/ecommerce.gateway.v1.GatewayAdmin/SetCanary"),
            "SetCanary"
        );
        assert_eq!(
            rpc_of("/inference.GRPCInferenceService/ModelStreamInfer"),
            "ModelStreamInfer"
        );
        for path in [
            "/ecommerce.gateway.v1.Gateway/Embed2",
            "/made.up.Service/Embed",
            "Embed",
            "",
        ] {
            assert_eq!(rpc_of(path), "unknown", "{path}");
        }
    }
}

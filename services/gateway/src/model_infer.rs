//! `ModelInfer` routed as bytes, the gateway's hot path: the routing fields are read without
//! decoding the tensors, the canary's version is appended to the encoded request when the call
//! names none, and the call goes to a replica over its HTTP/2 client.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tonic::Status;

use crate::call::CallContext;
use crate::core::GatewayCore;
use crate::error::GatewayError;

/// The path of `ModelInfer`.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The fields of a `ModelInferRequest` and of a `ModelInferResponse` that the gateway reads
/// (both messages number them 1 and 2); decoding skips the tensors without copying them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferHead {
    /// The model's name.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// The model's version; empty for the newest.
    #[prost(string, tag = "2")]
    pub model_version: String,
}

/// How a replica's status message starts when the request it was sent does not decode
/// (tonic's codec answers prost's `DecodeError` as `INTERNAL` with this text).
const UNDECODABLE: &str = "failed to decode Protobuf message: ";

/// The status of a replica's answer to a `ModelInfer`: as it came, unless the replica could
/// not decode the request. The gateway reads only the routing fields and passes the rest of
/// the caller's message on as it came (with at most a well-formed version appended), so a
/// message that does not decode (a string field that is not UTF-8, a cut nested message) is
/// the caller's mistake: `INVALID_ARGUMENT` saying what is wrong, not the replica's
/// `INTERNAL`, and not counted as the server's failure. Costs nothing on answered calls.
fn caller_s_mistake(status: Status) -> Status {
    match status.message().strip_prefix(UNDECODABLE) {
        Some(why) if status.code() == tonic::Code::Internal => {
            GatewayError::Invalid(format!("the ModelInferRequest cannot be decoded: {why}")).into()
        }
        _ => status,
    }
}

/// `message` (an encoded `ModelInferRequest`) with its `model_version` set to `version`.
fn with_version(message: Bytes, version: i64) -> Bytes {
    let version = version.to_string();
    let mut pinned = BytesMut::with_capacity(message.len() + version.len() + 2);
    pinned.extend_from_slice(&message);
    prost::encoding::string::encode(2, &version, &mut pinned);
    pinned.freeze()
}

impl GatewayCore {
    /// Sends one encoded `ModelInferRequest` to a replica, with the canary's pin when the
    /// call names no version, and `headers` (the trace context).
    pub async fn forward_infer(
        &self,
        head: &InferHead,
        mut message: Bytes,
        call: &CallContext,
        headers: http::HeaderMap,
    ) -> Result<Bytes, Status> {
        if head.model_version.is_empty() {
            if let Some(version) = self.pinned_version(&head.model_name, call) {
                message = with_version(message, version);
            }
        } else if let Ok(version) = head.model_version.parse() {
            call.routed_version.store(version, Ordering::Relaxed);
        }
        self.pool
            .call_replica(true, |replica| {
                let (message, headers) = (message.clone(), headers.clone());
                let timeout = call
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()));
                async move {
                    replica
                        .unary()
                        .call(MODEL_INFER, message, headers, timeout)
                        .await
                }
            })
            .await
            .map_err(caller_s_mistake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use prost::Message;
    use proto::inference as pb;
    use proto::inference::model_infer_request::InferInputTensor;

    fn request(version: &str) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "minilm-l6".into(),
            model_version: version.into(),
            id: "call-7".into(),
            inputs: vec![InferInputTensor {
                name: "TEXT".into(),
                datatype: "BYTES".into(),
                shape: vec![1, 1],
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from_static(b"\x03\0\0\0tea")],
            ..Default::default()
        }
    }

    /// A gateway whose one replica refuses every connection.
    async fn core_without_replicas() -> GatewayCore {
        let pool = crate::routing::ReplicaPool::resolve(
            &["127.0.0.1:1".to_owned()],
            0.1,
            shared::tls::MeshTls::plaintext(),
        )
        .await
        .unwrap();
        GatewayCore::new(
            Arc::new(pool),
            crate::cache::EmbeddingCache::new(16, 1024 * 1024),
            crate::records::RecordBuffer::new(16, 1024 * 1024),
            0.0,
            "minilm-l6",
            "distilbert-sst2",
        )
    }

    fn call() -> CallContext {
        CallContext {
            request_id: "call-7".into(),
            tenant: "shop".into(),
            routing_key: "shopper-1".into(),
            deadline: None,
            arrived: Instant::now(),
            routed_version: Default::default(),
        }
    }

    #[tokio::test]
    async fn model_names_callers_make_up_leave_nothing_behind() {
        let core = core_without_replicas().await;
        let before = core.models_tracked();
        for i in 0..10_000 {
            let mut message = request("");
            message.model_name = format!("made-up-{i}");
            let message = Bytes::from(message.encode_to_vec());
            let head = InferHead::decode(message.clone()).unwrap();
            let answer = core
                .forward_infer(&head, message, &call(), http::HeaderMap::new())
                .await;
            assert!(answer.is_err(), "no replica serves '{}'", head.model_name);
        }
        assert_eq!(
            core.models_tracked(),
            before,
            "the gateway keeps state for model names no replica served"
        );
    }

    #[test]
    fn a_request_the_replica_cannot_decode_is_the_caller_s_mistake() {
        let undecodable = tonic::Status::internal(
            "failed to decode Protobuf message: ModelInferRequest.id: invalid string value: \
             data is not UTF-8 encoded",
        );
        let status = caller_s_mistake(undecodable);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.message(),
            "the ModelInferRequest cannot be decoded: ModelInferRequest.id: invalid string \
             value: data is not UTF-8 encoded"
        );
        // The replica's own failures are relayed as they came.
        for status in [
            tonic::Status::internal("the model's session failed"),
            tonic::Status::unavailable("failed to decode Protobuf message: (not a decode)"),
        ] {
            let relayed = caller_s_mistake(status.clone());
            assert_eq!(
                (relayed.code(), relayed.message()),
                (status.code(), status.message())
            );
        }
    }

    #[test]
    fn the_head_of_an_encoded_request_names_its_model_and_version() {
        let head = InferHead::decode(Bytes::from(request("3").encode_to_vec())).unwrap();
        assert_eq!(head.model_name, "minilm-l6");
        assert_eq!(head.model_version, "3");
    }

    #[test]
    fn a_pinned_version_is_appended_and_the_rest_of_the_message_kept() {
        let unpinned = Bytes::from(request("").encode_to_vec());
        let pinned = pb::ModelInferRequest::decode(with_version(unpinned, 2)).unwrap();
        assert_eq!(pinned, request("2"));
    }
}

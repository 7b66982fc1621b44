//! `ModelInfer` routed as bytes, the gateway's hot path: the routing fields are read without
//! decoding the tensors, the canary's version is appended to the encoded request when the call
//! names none, and the call goes to a replica over its HTTP/2 client.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tonic::Status;

use crate::call::CallContext;
use crate::core::GatewayCore;

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
        GatewayCore::new(Arc::new(pool), 16, 16, 0.0, "minilm-l6", "distilbert-sst2")
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

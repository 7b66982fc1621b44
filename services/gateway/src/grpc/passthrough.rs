//! The hot path: `ModelInfer` forwarded as bytes.
//!
//! [`ModelInferLayer`] answers the Open Inference Protocol's unary `ModelInfer` before tonic's
//! router and codec see it. The request's message goes to a replica as it came, with only
//! the canary's pin appended ([`OipProxy::infer_encoded`]), and the replica's answer goes
//! back as it came. Admission (auth, rate limit, concurrency) has run already: this layer sits
//! inside it. Every other call, and a `ModelInfer` this path does not take (a compressed one),
//! goes on to tonic.
//!
//! Decoding and encoding each message twice, the router and the codec's buffers cost the
//! gateway about as much CPU per call as the HTTP/2 work itself; on a machine whose idle
//! cores sleep, that CPU time is paid at the cold speed of a just-woken core on every call.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost::Message;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::call_context_of;
use super::oip::OipProxy;
use crate::MAX_MESSAGE_BYTES;
use crate::error::GatewayError;
use crate::frame::{self, FrameError, PREFIX, frame};
use crate::layers::{BoxFuture, GrpcService, StateLayer, WithState, take_ready};
use crate::model_infer::{InferHead, MODEL_INFER};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The tower layer that answers `ModelInfer` through [`OipProxy`].
pub type ModelInferLayer = StateLayer<OipProxy>;

/// The service of [`ModelInferLayer`].
pub type ModelInferService<S> = WithState<OipProxy, S>;

impl<S, B> tower::Service<http::Request<B>> for ModelInferService<S>
where
    S: GrpcService<B>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != MODEL_INFER || !plain_grpc(request.headers()) {
            let mut inner = take_ready(&mut self.inner);
            return Box::pin(async move { inner.call(request).await });
        }
        let proxy = self.state.clone();
        Box::pin(async move {
            Ok(model_infer(&proxy, request)
                .await
                .unwrap_or_else(Status::into_http))
        })
    }
}

/// Whether a request is gRPC with uncompressed messages (tonic answers the rest: content
/// types it does not serve, encodings it does not accept).
fn plain_grpc(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes);
    let grpc = matches!(
        content_type,
        Some(b"application/grpc" | b"application/grpc+proto")
    );
    let encoding = headers.get("grpc-encoding").map(HeaderValue::as_bytes);
    grpc && matches!(encoding, None | Some(b"identity"))
}

/// Forwards one `ModelInfer` call and answers it.
async fn model_infer<B>(
    proxy: &OipProxy,
    request: http::Request<B>,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let metadata = MetadataMap::from_headers(parts.headers);
    let call = call_context_of(&metadata, &parts.extensions);
    let message = read_message(body).await?;
    let head = InferHead::decode(message.clone()).map_err(|err| {
        GatewayError::Invalid(format!("the ModelInferRequest cannot be decoded: {err}"))
    })?;
    let answer = proxy
        .infer_encoded("ModelInfer", head, message, &call, &metadata)
        .await?;
    Ok(grpc_response(answer))
}

/// The one message of a unary call's request body, without its prefix.
async fn read_message<B>(body: B) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let body = Limited::new(body, PREFIX + MAX_MESSAGE_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<LengthLimitError>() {
                GatewayError::RequestTooLarge(MAX_MESSAGE_BYTES)
            } else {
                GatewayError::RequestUnread(err.to_string())
            }
        })?
        .to_bytes();
    frame::unframe(body).map_err(|err| {
        GatewayError::Invalid(match err {
            FrameError::Short(0) => "the call carries no request message".to_owned(),
            FrameError::Short(len) => {
                format!("the request's gRPC message prefix is cut short ({len} bytes)")
            }
            FrameError::Compressed => {
                "the request message is marked compressed, but the call names no grpc-encoding"
                    .to_owned()
            }
            FrameError::Length { announced, carried } if carried < announced => {
                format!("the request message is cut short: {carried} of {announced} bytes")
            }
            FrameError::Length { .. } => {
                "a unary call carries exactly one request message; this one has more".to_owned()
            }
        })
        .into()
    })
}

/// A gRPC answer of one encoded `message` and status OK.
fn grpc_response(message: Bytes) -> http::Response<tonic::body::Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(frame(&message)).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn framed(flag: u8, length: u32, payload: &[u8]) -> Full<Bytes> {
        let mut body = vec![flag];
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(payload);
        Full::new(Bytes::from(body))
    }

    async fn refusal(body: Full<Bytes>) -> Status {
        read_message(body).await.unwrap_err()
    }

    #[tokio::test]
    async fn the_one_message_of_a_request_is_read_without_its_prefix() {
        let message = read_message(framed(0, 3, b"abc")).await.unwrap();
        assert_eq!(&message[..], b"abc");
        let empty = read_message(framed(0, 0, b"")).await.unwrap();
        assert!(
            empty.is_empty(),
            "an all-default message is empty, and valid"
        );
    }

    #[tokio::test]
    async fn malformed_requests_are_refused_with_the_reason() {
        let cases = [
            (Full::new(Bytes::new()), "no request message"),
            (
                Full::new(Bytes::from_static(&[0, 0, 0])),
                "prefix is cut short",
            ),
            (framed(1, 3, b"abc"), "marked compressed"),
            (framed(0, 10, b"abcd"), "cut short: 4 of 10 bytes"),
            (framed(0, 3, b"abcdef"), "exactly one request message"),
        ];
        for (body, reason) in cases {
            let status = refusal(body).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains(reason), "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_request_over_the_size_limit_is_refused_without_reading_it_whole() {
        let status = refusal(Full::new(Bytes::from(vec![
            0;
            MAX_MESSAGE_BYTES + PREFIX + 1
        ])))
        .await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("limit"), "{status:?}");
    }

    #[test]
    fn only_uncompressed_grpc_takes_the_byte_path() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            headers
        };
        assert!(plain_grpc(&headers(&[(
            "content-type",
            "application/grpc"
        )])));
        assert!(plain_grpc(&headers(&[
            ("content-type", "application/grpc+proto"),
            ("grpc-encoding", "identity"),
        ])));
        assert!(!plain_grpc(&headers(&[
            ("content-type", "application/grpc"),
            ("grpc-encoding", "gzip"),
        ])));
        assert!(!plain_grpc(&headers(&[(
            "content-type",
            "application/grpc-web"
        )])));
        assert!(!plain_grpc(&headers(&[])));
    }

    #[tokio::test]
    async fn an_answer_is_one_framed_message_then_status_ok() {
        let response = grpc_response(Bytes::from_static(b"answer"));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x06answer");
    }
}

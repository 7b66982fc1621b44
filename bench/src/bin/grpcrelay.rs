//! A relay on the gateway's gRPC server stack: tonic's server (hyper) in front, the gateway's
//! HTTP/2 client ([`gateway::unary::UnaryClient`]) behind, and nothing else (no auth, routing,
//! canary, metrics or traces). Between the bare relay (`h2relay`, HTTP/2 alone) and the
//! gateway, it splits what the gateway adds to a call into what its server libraries cost and
//! what its own work costs (`bench/history/2026-11-29-served-model.md`, "Where the gateway's
//! added latency goes").
//!
//! It relays the Open Inference Protocol's unary `ModelInfer` only; health and reflection are
//! served, every other method is UNIMPLEMENTED.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use gateway::unary::UnaryClient;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tonic::Status;

/// Relays `ModelInfer` from `--listen` to `--upstream`.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50058")]
    listen: SocketAddr,
    /// The inference service every call goes to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Threads of the async runtime (the gateway's default here: one).
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
}

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// Largest message relayed (the gateway's limit).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The layer that answers `ModelInfer` by relaying it.
#[derive(Clone)]
struct RelayLayer(Arc<UnaryClient>);

impl<S> tower::Layer<S> for RelayLayer {
    type Service = Relay<S>;

    fn layer(&self, inner: S) -> Relay<S> {
        Relay {
            client: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`RelayLayer`].
#[derive(Clone)]
struct Relay<S> {
    client: Arc<UnaryClient>,
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Relay<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != MODEL_INFER {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move { inner.call(request).await });
        }
        let client = self.client.clone();
        Box::pin(async move {
            Ok(relay(&client, request.into_body())
                .await
                .unwrap_or_else(Status::into_http))
        })
    }
}

/// Relays one call's message and answers with the upstream's.
async fn relay<B>(
    client: &UnaryClient,
    body: B,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = body
        .collect()
        .await
        .map_err(|err| Status::cancelled(format!("the request could not be read: {err}")))?
        .to_bytes();
    if body.len() < 5 || body.len() > MAX_MESSAGE_BYTES {
        return Err(Status::invalid_argument(
            "one uncompressed message expected",
        ));
    }
    body.advance(5);
    let answer = client
        .call(MODEL_INFER, body, HeaderMap::new(), None)
        .await?;
    let mut framed = BytesMut::with_capacity(answer.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(answer.len()).unwrap_or(u32::MAX));
    framed.extend_from_slice(&answer);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body =
        http_body_util::Full::new(framed.freeze()).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let client = Arc::new(UnaryClient::new(args.upstream, MAX_MESSAGE_BYTES));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let (routes, health, _) = shared::grpc::base_routes().await?;
    health
        .set_service_status("", shared::grpc::ServingStatus::Serving)
        .await;
    eprintln!(
        "relaying ModelInfer from {} to {}",
        args.listen, args.upstream
    );
    tonic::transport::Server::builder()
        // As in the gateway: every response in one write.
        .layer(shared::small_frames::SmallFramesLayer)
        .layer(RelayLayer(client))
        .add_routes(routes.routes())
        .serve_with_incoming(shared::grpc::incoming(listener))
        .await?;
    Ok(())
}

//! A bare HTTP/2 relay, the yardstick of the gateway's added latency: it forwards every call
//! to one address and back, with the HTTP/2 library the gateway uses and nothing else (no
//! auth, routing, retries, metrics or traces), on one thread. What it adds to a call is what
//! an HTTP/2 hop costs on the machine; the gateway's own work is what it adds beyond that.
//!
//! Unary calls only: it reads a whole request before forwarding it, so a streaming call whose
//! client waits for an answer before it closes its side would wait forever.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use h2::RecvStream;
use h2::client::SendRequest;
use h2::server::SendResponse;
use http::{HeaderMap, Request, Response};
use shared::small_frames::FRAME_BYTES;

/// Forwards gRPC calls from `--listen` to `--upstream` over one HTTP/2 connection.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50059")]
    listen: SocketAddr,
    /// The gRPC server every call goes to.
    #[arg(long)]
    upstream: SocketAddr,
}

/// Largest message relayed (the gateway's limit).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024 + 5;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let upstream = tokio::net::TcpStream::connect(args.upstream)
        .await
        .with_context(|| format!("cannot connect to {}", args.upstream))?;
    upstream.set_nodelay(true)?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(upstream)
        .await?;
    let upstream_closed = tokio::spawn(connection);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("relaying {} to {}", args.listen, args.upstream);
    let accept = async {
        loop {
            let (socket, _) = listener.accept().await?;
            socket.set_nodelay(true)?;
            tokio::spawn(serve_connection(socket, client.clone()));
        }
    };
    tokio::select! {
        result = accept => result,
        ended = upstream_closed => anyhow::bail!("the upstream connection ended: {ended:?}"),
    }
}

async fn serve_connection(socket: tokio::net::TcpStream, client: SendRequest<Bytes>) {
    let mut connection = match h2::server::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(socket)
        .await
    {
        Ok(connection) => connection,
        Err(err) => return eprintln!("HTTP/2 handshake failed: {err}"),
    };
    while let Some(Ok((request, respond))) = connection.accept().await {
        tokio::spawn(relay(request, respond, client.clone()));
    }
}

/// Relays one call; a failure resets the caller's stream.
async fn relay(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    client: SendRequest<Bytes>,
) {
    if let Err(err) = try_relay(request, &mut respond, client).await {
        eprintln!("call failed: {err}");
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
    }
}

async fn try_relay(
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    client: SendRequest<Bytes>,
) -> anyhow::Result<()> {
    let (parts, body) = request.into_parts();
    let (message, _) = read_body(body).await?;
    let mut forward = Request::new(());
    *forward.method_mut() = parts.method;
    *forward.uri_mut() = parts.uri;
    *forward.headers_mut() = parts.headers;
    let mut client = client.ready().await?;
    let (answer, mut stream) = client.send_request(forward, false)?;
    stream.send_data(message, true)?;
    let (parts, body) = answer.await?.into_parts();
    let (mut data, trailers) = read_body(body).await?;
    let mut stream = respond.send_response(Response::from_parts(parts, ()), false)?;
    while data.len() > FRAME_BYTES {
        stream.send_data(data.split_to(FRAME_BYTES), false)?;
    }
    stream.send_data(data, false)?;
    stream.send_trailers(trailers.unwrap_or_default())?;
    Ok(())
}

/// A whole body and its trailers.
async fn read_body(mut body: RecvStream) -> anyhow::Result<(Bytes, Option<HeaderMap>)> {
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        anyhow::ensure!(
            data.len() + chunk.len() <= MAX_BODY_BYTES,
            "a body over {MAX_BODY_BYTES} bytes"
        );
        data.extend_from_slice(&chunk);
    }
    Ok((data.freeze(), body.trailers().await?))
}

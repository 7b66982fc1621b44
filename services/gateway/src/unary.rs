//! Unary gRPC calls to a replica on a plain HTTP/2 connection, for the hot path (the Open
//! Inference Protocol's `ModelInfer`).
//!
//! The general client (tonic over hyper) sends a request's headers and its message in two
//! writes: hyper starts piping the body only once the stream is open, after the headers have
//! gone. The replica then wakes up for the headers, goes back to sleep, and wakes again for
//! the message; on a two-core machine the woken replica may even preempt the gateway between
//! the two writes. Here the message is queued together with the headers, so both leave in one
//! write and the replica wakes once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, HeaderValue, Method, Request};
use shared::error::ServiceError;
use shared::tls::{MeshTls, TlsError};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::either::Either;
use tonic::Status;

use crate::error::GatewayError;
use crate::frame::{self, FrameError, PREFIX, frame};

/// Flow-control windows of the connection and of each stream: large enough that a batch's
/// response never waits for a window update.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// How long connecting to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an open connection is checked with an HTTP/2 ping, and how long the answer may
/// take before the connection is closed (a replica on a partitioned node never closes it).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure of the connection itself (refused, reset, closed), as opposed to an answer the
/// replica gave: the routing layer ejects the replica and retries elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectionError(String);

/// The error of a call that could not reach the replica.
fn unavailable(addr: SocketAddr, what: impl std::fmt::Display) -> Status {
    let error = GatewayError::ReplicaUnreachable {
        addr,
        what: what.to_string(),
    };
    let mut status = error.to_status();
    status.set_source(Arc::new(ConnectionError(error.to_string())));
    status
}

/// Unary calls to one replica over one lazily opened HTTP/2 connection, opened again after it
/// breaks.
pub struct UnaryClient {
    addr: SocketAddr,
    authority: http::uri::Authority,
    max_message_bytes: usize,
    keep_alive: (Duration, Duration),
    /// TLS towards the replica, and the name its certificate must hold; `None` for plaintext.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The open connection and its generation (which connection a failed call used).
    connection: tokio::sync::Mutex<(u64, Option<SendRequest<Bytes>>)>,
}

impl UnaryClient {
    /// A client of the replica at `addr`; responses over `max_message_bytes` are refused.
    pub fn new(addr: SocketAddr, max_message_bytes: usize) -> UnaryClient {
        UnaryClient {
            addr,
            authority: addr
                .to_string()
                .parse()
                .expect("a socket address is a valid authority"),
            max_message_bytes,
            keep_alive: (KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT),
            tls: None,
            connection: tokio::sync::Mutex::new((0, None)),
        }
    }

    /// Speaks TLS to the replica when `tls` does, checking that its certificate names `host`.
    pub fn with_tls(mut self, tls: &MeshTls, host: &str) -> Result<UnaryClient, TlsError> {
        if let Some(config) = tls.rustls_client() {
            self.tls = Some((
                tokio_rustls::TlsConnector::from(config),
                shared::tls::server_name(host)?,
            ));
        }
        Ok(self)
    }

    /// Pings an open connection every `interval` and closes it when the answer takes longer
    /// than `timeout`: the calls on it fail over instead of waiting for the system's TCP
    /// timeout.
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> UnaryClient {
        self.keep_alive = (interval, timeout);
        self
    }

    /// The open connection, or a new one; with its generation, and whether it is new.
    async fn connection(&self) -> Result<(SendRequest<Bytes>, u64, bool), Status> {
        let mut connection = self.connection.lock().await;
        if let Some(open) = connection.1.as_ref() {
            return Ok((open.clone(), connection.0, false));
        }
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let io = match &self.tls {
                None => Either::Left(tcp),
                Some((connector, name)) => {
                    Either::Right(connector.connect(name.clone(), tcp).await?)
                }
            };
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake::<_, Bytes>(io)
                .await
                .map_err(std::io::Error::other)
        };
        let (send, driver) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unavailable(self.addr, "connect timed out"))?
            .map_err(|err| unavailable(self.addr, format!("cannot connect: {err}")))?;
        let (addr, (interval, timeout)) = (self.addr, self.keep_alive);
        let mut driver = driver;
        let pings = driver.ping_pong();
        tokio::spawn(async move {
            let unanswered = async {
                let Some(mut pings) = pings else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(interval).await;
                    match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
                        Ok(Ok(_)) => {}
                        // The connection is closing: its driver ends by itself.
                        Ok(Err(_)) => return std::future::pending().await,
                        Err(_) => return,
                    }
                }
            };
            tokio::select! {
                ended = driver => if let Err(err) = ended {
                    tracing::debug!(replica = %addr, error = %err, "connection to the replica ended");
                },
                () = unanswered => tracing::warn!(
                    replica = %addr,
                    timeout_ms = timeout.as_millis() as u64,
                    "the replica did not answer a keep-alive ping; closing the connection"
                ),
            }
        });
        connection.0 += 1;
        connection.1 = Some(send.clone());
        Ok((send, connection.0, true))
    }

    /// Forgets connection `generation` after it broke, so that the next call opens a new one
    /// (unless another call has done so already).
    async fn forget(&self, generation: u64) {
        let mut connection = self.connection.lock().await;
        if connection.0 == generation {
            connection.1 = None;
        }
    }

    /// Calls `path` (`/package.Service/Method`) with the encoded protobuf `message` and
    /// returns the encoded response. `metadata` goes out as request headers; `timeout` is
    /// sent as `grpc-timeout` and enforced here too.
    pub async fn call(
        &self,
        path: &'static str,
        message: Bytes,
        metadata: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Status> {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|err| GatewayError::BadAnswer(format!("bad path {path}: {err}")))?;
        let mut headers = metadata;
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        if let Some(timeout) = timeout {
            // At most 8 digits: microseconds cover 99 seconds; longer ones go in milliseconds.
            let micros = timeout.as_micros().max(1);
            let value = if micros < 100_000_000 {
                format!("{micros}u")
            } else {
                format!("{}m", timeout.as_millis().min(99_999_999))
            };
            headers.insert(
                "grpc-timeout",
                HeaderValue::from_str(&value).expect("digits and a unit"),
            );
        }
        let exchange = self.exchange(&uri, &headers, frame(&message));
        match timeout {
            Some(timeout) => tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| GatewayError::ReplicaTimedOut(self.addr).to_status())?,
            None => exchange.await,
        }
    }

    /// Sends one framed message to `uri` with `headers` and reads the one message of the
    /// answer.
    async fn exchange(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        framed: Bytes,
    ) -> Result<Bytes, Status> {
        let request = || {
            let mut request = Request::new(());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers.clone();
            request
        };
        let mut retried = false;
        let response = loop {
            let (connection, generation, new) = self.connection().await?;
            // Headers and message are queued before the connection task runs: one write.
            let sent = match connection.ready().await {
                Ok(mut sender) => {
                    sender
                        .send_request(request(), false)
                        .and_then(|(response, mut stream)| {
                            stream.send_data(framed.clone(), true)?;
                            Ok(response)
                        })
                }
                Err(err) => Err(err),
            };
            match sent {
                Ok(response) => break response,
                Err(err) => {
                    self.forget(generation).await;
                    // A connection kept from earlier calls may have died while idle (say, the
                    // replica restarted): one new connection before giving up.
                    if new || retried {
                        return Err(unavailable(self.addr, err));
                    }
                    retried = true;
                }
            }
        };
        let response = response.await.map_err(|err| self.stream_error(err))?;
        let (parts, mut body) = response.into_parts();
        // A trailers-only answer (an error) carries its status in the headers.
        if let Some(status) = Status::from_header_map(&parts.headers)
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        if parts.status != http::StatusCode::OK {
            return Err(GatewayError::ReplicaHttp {
                addr: self.addr,
                status: parts.status,
            }
            .into());
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|err| self.stream_error(err))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if data.len() + chunk.len() > self.max_message_bytes + PREFIX {
                return Err(GatewayError::AnswerTooLarge {
                    addr: self.addr,
                    max: self.max_message_bytes,
                }
                .into());
            }
            data.extend_from_slice(&chunk);
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|err| self.stream_error(err))?
            .unwrap_or_default();
        match Status::from_header_map(&trailers) {
            Some(status) if status.code() == tonic::Code::Ok => {}
            Some(status) => return Err(status),
            None => {
                return Err(GatewayError::BadAnswer(format!(
                    "inference replica {} ended the call without a grpc-status",
                    self.addr
                ))
                .into());
            }
        }
        unframe(data.freeze()).map_err(|why| {
            GatewayError::BadAnswer(format!("inference replica {}: {why}", self.addr)).into()
        })
    }

    /// The status of a failed stream: a reset by the replica is its answer; anything else
    /// broke the connection.
    fn stream_error(&self, err: h2::Error) -> Status {
        match err.reason() {
            Some(h2::Reason::REFUSED_STREAM) => unavailable(self.addr, "stream refused"),
            Some(h2::Reason::CANCEL) => GatewayError::ReplicaCancelled(self.addr).into(),
            _ if err.is_remote() && err.is_reset() => GatewayError::BadAnswer(format!(
                "inference replica {} reset the call: {err}",
                self.addr
            ))
            .into(),
            _ => unavailable(self.addr, err),
        }
    }
}

/// The one message of a unary response body, or why the answer is not one.
fn unframe(data: Bytes) -> Result<Bytes, String> {
    frame::unframe(data).map_err(|err| match err {
        FrameError::Short(len) => {
            format!("the answer is {len} bytes, shorter than a gRPC message prefix")
        }
        FrameError::Compressed => "the answer is compressed, which was not asked for".to_owned(),
        FrameError::Length { announced, carried } => {
            format!("the answer announces {announced} bytes but carries {carried}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn one_message_comes_out_of_its_frame() {
        let mut framed = BytesMut::new();
        framed.put_u8(0);
        framed.put_u32(3);
        framed.extend_from_slice(b"abc");
        assert_eq!(
            unframe(framed.freeze()).unwrap(),
            Bytes::from_static(b"abc")
        );
    }

    #[test]
    fn bad_frames_are_refused_with_the_reason() {
        assert!(
            unframe(Bytes::from_static(b"\0\0"))
                .unwrap_err()
                .contains("shorter")
        );
        assert!(
            unframe(Bytes::from_static(b"\x01\0\0\0\x01a"))
                .unwrap_err()
                .contains("compressed")
        );
        assert!(
            unframe(Bytes::from_static(b"\0\0\0\0\x05ab"))
                .unwrap_err()
                .contains("announces 5 bytes but carries 2")
        );
    }

    /// A gRPC server (tonic's health service) on `listener`, until the returned sender fires.
    async fn health_server(
        listener: tokio::net::TcpListener,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        (stop, server)
    }

    const CHECK: &str = "/grpc.health.v1.Health/Check";

    async fn check(client: &UnaryClient) -> Result<i32, Status> {
        use prost::Message;
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let answer = client
            .call(
                CHECK,
                Bytes::from(request.encode_to_vec()),
                HeaderMap::new(),
                Some(Duration::from_secs(5)),
            )
            .await?;
        Ok(tonic_health::pb::HealthCheckResponse::decode(answer)
            .unwrap()
            .status)
    }

    #[tokio::test]
    async fn calls_a_real_server_and_reconnects_after_it_restarts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, server) = health_server(listener).await;
        let client = UnaryClient::new(addr, 1024);
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        assert_eq!(check(&client).await.unwrap(), serving);

        // The server goes away and comes back on the same port: the kept connection is dead,
        // and the next call opens a new one instead of failing.
        stop.send(()).unwrap();
        server.await.unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (stop, server) = health_server(listener).await;
        assert_eq!(check(&client).await.unwrap(), serving);

        // An error answer (trailers only) comes back as the server's status.
        let status = client
            .call(
                "/grpc.health.v1.Health/NoSuchMethod",
                Bytes::new(),
                HeaderMap::new(),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_replica_that_stops_answering_is_given_up_by_the_keep_alive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            // Takes the call, then never looks at the connection again: no answer, no pong,
            // and the socket stays open (a hung or partitioned replica).
            let call = connection.accept().await;
            std::future::pending::<()>().await;
            drop((connection, call));
        });
        let client = UnaryClient::new(addr, 1024)
            .with_keep_alive(Duration::from_millis(100), Duration::from_millis(200));
        let started = std::time::Instant::now();
        let status = client
            .call("/a.B/C", Bytes::new(), HeaderMap::new(), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a call without a deadline waited {:?}",
            started.elapsed()
        );
        server.abort();
    }

    #[tokio::test]
    async fn the_caller_s_deadline_goes_to_the_replica_and_is_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, saw) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            // Takes the call and never answers it (a replica busy beyond the deadline), while
            // the connection itself stays alive.
            let (request, respond) = connection.accept().await.unwrap().unwrap();
            let _ = seen.send(request.headers().get("grpc-timeout").cloned());
            while connection.accept().await.is_some() {}
            drop(respond);
        });
        let client = UnaryClient::new(addr, 1024);
        let status = client
            .call(
                "/a.B/C",
                Bytes::new(),
                HeaderMap::new(),
                Some(Duration::from_millis(300)),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
        assert!(status.message().contains("deadline"), "{status}");
        let timeout = saw.await.unwrap().expect("a grpc-timeout header");
        let micros: u64 = timeout
            .to_str()
            .unwrap()
            .strip_suffix('u')
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("grpc-timeout {timeout:?}"));
        assert_eq!(
            micros, 300_000,
            "the replica is given the caller's deadline"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_replica_that_is_not_there_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = UnaryClient::new(addr, 1024);
        let status = client
            .call("/a.B/C", Bytes::new(), HeaderMap::new(), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains(&addr.to_string()), "{status}");
    }
}

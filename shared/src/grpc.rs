//! gRPC plumbing that every service serves the same way: health, reflection, and the
//! listener-to-incoming-stream adapter.

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::{Routes, RoutesBuilder};
pub use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Starts a route table with `grpc.health.v1` and server reflection (v1 and v1alpha: grpcurl
/// 1.8 speaks only v1alpha) over the mesh's own descriptors.
///
/// The overall health status (service name `""`) starts as NOT_SERVING: a service marks
/// itself serving through the returned reporter once it can answer requests. The third value
/// is the same health service alone, for a plaintext health port
/// ([`crate::serving::Serving::health_port`]).
pub async fn base_routes()
-> Result<(RoutesBuilder, HealthReporter, Routes), tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_only = Routes::new(health.clone());
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((routes, reporter, health_only))
}

/// Turns a bound listener into the incoming-connection stream tonic serves from, with
/// `TCP_NODELAY` set (small gRPC frames must not wait for Nagle's algorithm).
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// The version a protocol request names (`model_version` of the Open Inference Protocol):
/// `None` for empty ("the newest"), else a positive integer; otherwise the message that says
/// so, which every service answers as INVALID_ARGUMENT.
pub fn parse_version(model: &str, version: &str) -> Result<Option<i64>, String> {
    if version.is_empty() {
        return Ok(None);
    }
    match version.parse::<i64>() {
        Ok(v) if v > 0 => Ok(Some(v)),
        _ => Err(format!(
            "model '{model}': version '{version}' is not a positive integer"
        )),
    }
}

/// The caller's deadline from the `grpc-timeout` header, as an instant counted from `arrived`.
pub fn deadline(
    metadata: &tonic::metadata::MetadataMap,
    arrived: std::time::Instant,
) -> Option<std::time::Instant> {
    use std::time::Duration;
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    arrived.checked_add(timeout)
}

/// Answers a client stream of requests with `handle`: each request on its own task, at most
/// `in_flight` at once (the reader waits for a free slot, so a fast client cannot queue without
/// bound), replies in completion order. The stream ends when the client closes its side, or
/// when `stop` fires (the server is stopping): no request is read after that, and the stream
/// ends once the replies already under way are sent.
pub fn answer_stream<Req, Resp, F, Fut>(
    mut incoming: tonic::Streaming<Req>,
    in_flight: usize,
    stop: crate::shutdown::Shutdown,
    handle: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<Resp, tonic::Status>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    use tokio_stream::StreamExt;
    let (sender, receiver) = tokio::sync::mpsc::channel(in_flight.max(1));
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    tokio::spawn(async move {
        let stopping = stop.wait();
        tokio::pin!(stopping);
        loop {
            let message = tokio::select! {
                message = incoming.next() => message,
                () = &mut stopping => {
                    tracing::debug!("the server is stopping: the request stream is read no further");
                    break;
                }
            };
            let Some(message) = message else {
                break;
            };
            let request = match message {
                Ok(request) => request,
                Err(status) => {
                    tracing::debug!(%status, "request stream closed by the client");
                    break;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (handle, sender) = (handle.clone(), sender.clone());
            tokio::spawn(async move {
                let reply = handle(request).await;
                let _ = sender.send(Ok(reply)).await;
                drop(slot);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tonic::metadata::MetadataMap;

    use super::deadline;

    #[test]
    fn grpc_timeout_units_are_understood() {
        let now = Instant::now();
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(deadline(&md, now), Some(now + Duration::from_millis(250)));
        md.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(deadline(&md, now), Some(now + Duration::from_secs(3)));
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline(&md, now), None);
    }
}

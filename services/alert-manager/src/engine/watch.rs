//! The collector watch: the collector's stream of updated metrics wakes the evaluation loop
//! as soon as new data arrived, instead of at the next tick.

use super::*;

/// Least time between two evaluations triggered by new data.
pub(super) const PUSH_DEBOUNCE: Duration = Duration::from_millis(20);

/// Follows the collector's stream of updated metrics and wakes the evaluation loop on each
/// (reconnecting after a second when the stream breaks), until `stop`.
pub(super) async fn watch(
    mut client: MetricsQueryClient<Channel>,
    arrived: Arc<tokio::sync::Notify>,
    stop: shared::shutdown::Shutdown,
) {
    let mut stopped = std::pin::pin!(stop.wait());
    loop {
        let stream = tokio::select! {
            stream = client.watch(proto::monitoring::metrics::v1::WatchRequest {}) => stream,
            () = &mut stopped => return,
        };
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            loop {
                tokio::select! {
                    update = stream.message() => match update {
                        Ok(Some(_)) => arrived.notify_one(),
                        _ => break,
                    },
                    () = &mut stopped => return,
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut stopped => return,
        }
    }
}

//! Ships prediction and feedback records to the metrics collector's `RecordIngest`, once a
//! second, for the prediction–feedback join. A failed push puts the records back in the buffer
//! (the oldest are dropped, and counted, when it overflows) and is retried on the next tick; at
//! shutdown one last push empties the buffer.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::record_ingest_client::RecordIngestClient;
use tonic::transport::{Channel, Endpoint};

use crate::records::{Record, RecordBuffer, RecordKind, Task};

/// Records per push: bounds the message size (a ranking record holds up to a few KiB).
const BATCH: usize = 2000;

fn event(name: &str) -> pb::FeedbackEvent {
    match name {
        "impression" => pb::FeedbackEvent::Impression,
        "click" => pb::FeedbackEvent::Click,
        "add_to_cart" => pb::FeedbackEvent::AddToCart,
        "purchase" => pb::FeedbackEvent::Purchase,
        "label" => pb::FeedbackEvent::Label,
        _ => pb::FeedbackEvent::Unspecified,
    }
}

/// The protocol form of a record.
pub fn encode(record: &Record) -> pb::Record {
    let at_unix_ms = record
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let kind = match &record.kind {
        RecordKind::Prediction {
            task,
            model,
            version,
            items,
            scores,
            texts,
        } => pb::record::Kind::Prediction(pb::PredictionRecord {
            request_id: record.request_id.clone(),
            model: model.clone(),
            version: *version,
            task: match task {
                Task::Classify => pb::PredictionTask::Classify,
                Task::Rank => pb::PredictionTask::Rank,
            } as i32,
            items: items.clone(),
            scores: scores.clone(),
            at_unix_ms,
            tenant: record.tenant.clone(),
            texts: texts.clone(),
        }),
        RecordKind::Feedback {
            item_id,
            event: name,
            label,
        } => pb::record::Kind::Feedback(pb::FeedbackRecord {
            request_id: record.request_id.clone(),
            item_id: item_id.clone(),
            event: event(name) as i32,
            label: label.unwrap_or(0),
            at_unix_ms,
        }),
    };
    pb::Record { kind: Some(kind) }
}

/// Pushes records from `buffer` to the collector at `endpoint`.
pub struct RecordShipper {
    buffer: Arc<RecordBuffer>,
    client: RecordIngestClient<Channel>,
    reported_drops: u64,
    failing: bool,
}

impl RecordShipper {
    /// A shipper to `endpoint` (e.g. `http://127.0.0.1:4317`); connects lazily.
    pub fn new(
        buffer: Arc<RecordBuffer>,
        endpoint: &str,
    ) -> Result<RecordShipper, tonic::transport::Error> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(RecordShipper {
            buffer,
            client: RecordIngestClient::new(channel),
            reported_drops: 0,
            failing: false,
        })
    }

    /// Pushes everything buffered; on failure the records go back to the buffer.
    pub async fn flush(&mut self) {
        let buffer = &self.buffer;
        let mut records = buffer.drain();
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(BATCH));
            let dropped = buffer.dropped();
            let request = pb::PushRecordsRequest {
                records: records.iter().map(encode).collect(),
                dropped_by_sender: dropped - self.reported_drops,
            };
            match self.client.push(request).await {
                Ok(response) => {
                    self.reported_drops = dropped;
                    let response = response.into_inner();
                    if response.refused > 0 {
                        tracing::warn!(
                            refused = response.refused,
                            reason = %response.error_message,
                            "the collector refused records"
                        );
                    }
                    if self.failing {
                        tracing::info!("records reach the collector again");
                        self.failing = false;
                    }
                    records = rest;
                }
                Err(status) => {
                    if !self.failing {
                        tracing::warn!(code = ?status.code(), message = %status.message(), "cannot push records to the collector; keeping them and retrying");
                        self.failing = true;
                    }
                    records.extend(rest);
                    buffer.requeue(records);
                    return;
                }
            }
        }
    }

    /// Flushes every `interval` until `stop`, then once more.
    pub async fn run(mut self, interval: Duration, stop: shared::shutdown::Shutdown) {
        let mut stopped = std::pin::pin!(stop.wait());
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => self.flush().await,
                () = &mut stopped => break,
            }
        }
        self.flush().await;
    }
}

//! Ships prediction and feedback records to the metrics collector's `RecordIngest`, once a
//! second, for the prediction–feedback join. A failed push puts the records back in the buffer
//! (the oldest are dropped, and counted, when it overflows) and is retried on the next tick; at
//! shutdown one last push empties the buffer.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::record_ingest_client::RecordIngestClient;
use tonic::transport::Channel;

use crate::records::{Record, RecordBuffer, RecordKind, Task};

/// Records per push: bounds the message size (a ranking record holds up to ~28 KiB: its top
/// 100 ids of up to 256 bytes).
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

/// Largest push, in encoded bytes: well under the collector's 16 MiB message limit.
const MAX_PUSH_BYTES: usize = 4 * 1024 * 1024;

/// Splits `records` into pushes of at most [`BATCH`] records and [`MAX_PUSH_BYTES`] each; a
/// record that alone is larger can never be shipped and is left out. Returns the batches and
/// how many records were left out.
fn batches(records: Vec<Record>) -> (Vec<Vec<Record>>, u64) {
    use prost::Message as _;
    let mut out: Vec<Vec<Record>> = Vec::new();
    let (mut current, mut bytes, mut oversized) = (Vec::new(), 0, 0);
    for record in records {
        // A repeated field's element: its bytes, a tag and a length prefix.
        let size = encode(&record).encoded_len() + 6;
        if size > MAX_PUSH_BYTES {
            oversized += 1;
            continue;
        }
        if !current.is_empty() && (bytes + size > MAX_PUSH_BYTES || current.len() >= BATCH) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(record);
    }
    if !current.is_empty() {
        out.push(current);
    }
    (out, oversized)
}

/// Pushes records from `buffer` to the collector at `endpoint`.
pub struct RecordShipper {
    buffer: Arc<RecordBuffer>,
    client: RecordIngestClient<Channel>,
    key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    reported_drops: u64,
    failing: bool,
}

impl RecordShipper {
    /// A shipper to `endpoint` (e.g. `http://127.0.0.1:4317`), sending `key` as the sender's
    /// credential when given; connects lazily.
    pub fn new(
        buffer: Arc<RecordBuffer>,
        endpoint: &str,
        key: Option<&str>,
        tls: &shared::tls::MeshTls,
    ) -> Result<RecordShipper, String> {
        let channel = tls
            .endpoint(endpoint, "--records-endpoint")
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let key = key
            .map(|k| {
                shared::auth::bearer(k).ok_or_else(|| {
                    "the records API key holds characters a header cannot".to_owned()
                })
            })
            .transpose()?;
        Ok(RecordShipper {
            buffer,
            client: RecordIngestClient::new(channel),
            key,
            reported_drops: 0,
            failing: false,
        })
    }

    /// Pushes everything buffered, in pushes small enough for the collector (a record too
    /// large for any push is dropped and counted); on failure the records go back to the
    /// buffer.
    pub async fn flush(&mut self) {
        let buffer = self.buffer.clone();
        let (batches, oversized) = batches(buffer.drain());
        if oversized > 0 {
            buffer.count_dropped(oversized);
            tracing::warn!(
                records = oversized,
                limit_bytes = MAX_PUSH_BYTES,
                "records larger than a push can carry were dropped (counted as dropped_by_sender)"
            );
        }
        let mut batches = batches.into_iter();
        while let Some(records) = batches.next() {
            let dropped = buffer.dropped();
            let mut request = tonic::Request::new(pb::PushRecordsRequest {
                records: records.iter().map(encode).collect(),
                dropped_by_sender: dropped - self.reported_drops,
            });
            if let Some(key) = &self.key {
                request.metadata_mut().insert("authorization", key.clone());
            }
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
                }
                Err(status) => {
                    if !self.failing {
                        tracing::warn!(code = ?status.code(), message = %status.message(), "cannot push records to the collector; keeping them and retrying");
                        self.failing = true;
                    }
                    let mut rest = records;
                    rest.extend(batches.flatten());
                    buffer.requeue(rest);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::RecordKind;

    fn feedback(item: &str) -> Record {
        Record {
            request_id: "r".into(),
            tenant: "shop".into(),
            at: std::time::SystemTime::UNIX_EPOCH,
            kind: RecordKind::Feedback {
                item_id: item.into(),
                event: "click",
                label: None,
            },
        }
    }

    #[test]
    fn pushes_stay_under_the_size_limit_and_a_record_over_it_is_left_out() {
        let big = "x".repeat(MAX_PUSH_BYTES / 3);
        let mut records: Vec<Record> = (0..7).map(|_| feedback(&big)).collect();
        records.push(feedback(&"y".repeat(MAX_PUSH_BYTES + 1)));
        records.extend((0..5000).map(|i| feedback(&format!("item-{i}"))));
        let (batches, oversized) = batches(records);
        assert_eq!(oversized, 1);
        use prost::Message as _;
        for batch in &batches {
            let request = pb::PushRecordsRequest {
                records: batch.iter().map(encode).collect(),
                dropped_by_sender: 0,
            };
            assert!(
                request.encoded_len() <= MAX_PUSH_BYTES,
                "{}",
                request.encoded_len()
            );
            assert!(batch.len() <= BATCH);
        }
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 5007);
    }
}

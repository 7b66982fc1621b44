//! Embeddings from the frozen encoder, through the inference service's task API, in batches.

use std::time::Duration;

use proto::serving::inference::v1 as pb;
use proto::serving::inference::v1::inference_tasks_client::InferenceTasksClient;

/// Connects to `endpoint`, given by `flag`; errors name the flag, or `service` when it does not
/// answer.
pub async fn connect(
    endpoint: &str,
    flag: &str,
    service: &str,
    tls: &shared::tls::MeshTls,
) -> anyhow::Result<tonic::transport::Channel> {
    use anyhow::Context as _;
    tls.endpoint(endpoint, flag)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("{service} at {endpoint} does not answer"))
}

/// Texts per call (the encoder's batch limit is 64).
pub const BATCH: usize = 64;

/// Embeds `texts` with `model` on the inference service at `endpoint`; `on_batch` is told how
/// many texts each batch held.
pub async fn embed(
    endpoint: &str,
    model: &str,
    texts: &[String],
    tls: &shared::tls::MeshTls,
    mut on_batch: impl FnMut(usize),
) -> anyhow::Result<Vec<Vec<f32>>> {
    let channel = connect(endpoint, "--inference", "the inference service", tls).await?;
    let mut client = InferenceTasksClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut out = Vec::with_capacity(texts.len());
    for (i, batch) in texts.chunks(BATCH).enumerate() {
        let mut request = tonic::Request::new(pb::EmbedRequest {
            model: Some(pb::ModelRef {
                name: model.to_owned(),
                version: 0,
            }),
            texts: batch.to_vec(),
        });
        request.set_timeout(Duration::from_secs(60));
        let response = client.embed(request).await.map_err(|status| {
            anyhow::anyhow!(
                "embedding examples {}–{} with {model}: {} ({:?})",
                i * BATCH + 1,
                i * BATCH + batch.len(),
                status.message(),
                status.code()
            )
        })?;
        out.extend(
            response
                .into_inner()
                .embeddings
                .into_iter()
                .map(|e| e.values),
        );
        on_batch(batch.len());
    }
    Ok(out)
}

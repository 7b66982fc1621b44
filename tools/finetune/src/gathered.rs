//! The labelled examples the platform gathered itself: texts of classified calls that the
//! gateway's payload logging kept (personal data masked) and that shoppers labelled through
//! Feedback, read from the metrics collector's join.

use proto::monitoring::metrics::v1 as pb;
use proto::monitoring::metrics::v1::metrics_query_client::MetricsQueryClient;

use crate::data::Labelled;

/// The gathered examples of `model` at the collector `endpoint` (at most 100,000, newest first).
pub async fn fetch(
    endpoint: &str,
    model: &str,
    tls: &shared::tls::MeshTls,
) -> anyhow::Result<Vec<Labelled>> {
    let channel =
        crate::embed::connect(endpoint, "--gathered", "the metrics collector", tls).await?;
    let examples = MetricsQueryClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .labelled_examples(pb::LabelledExamplesRequest {
            model: model.to_owned(),
            limit: 100_000,
        })
        .await
        .map_err(|s| anyhow::anyhow!("LabelledExamples of {model}: {}", s.message()))?
        .into_inner()
        .examples;
    Ok(examples
        .into_iter()
        .filter(|e| e.label <= 1 && !e.text.trim().is_empty())
        .map(|e| Labelled {
            text: e.text,
            label: e.label,
        })
        .collect())
}

//! The served model equals sentence-transformers: token ids exactly, embeddings within 1e-5,
//! through the tokenizer alone, the Open Inference Protocol (both content forms) and the task API.

use integration_tests::*;
use proto::serving::inference::v1::{ClassifyRequest, EmbedRequest};

const TOLERANCE: f32 = 1e-5;

#[test]
fn token_ids_equal_sentence_transformers() {
    let encoder =
        inference::tokenize::TextEncoder::load(&models_dir().join("minilm-l6/tokenizer.json"), 256)
            .unwrap();
    for case in reference_cases() {
        let ids = encoder.encode(std::slice::from_ref(&case.text)).unwrap();
        assert_eq!(ids[0], case.input_ids, "token ids of {:?}", case.text);
    }
}

#[test]
fn long_texts_are_truncated_to_256_tokens() {
    let encoder =
        inference::tokenize::TextEncoder::load(&models_dir().join("minilm-l6/tokenizer.json"), 256)
            .unwrap();
    let long = "stainless steel water bottle ".repeat(200);
    let ids = encoder.encode(&[long]).unwrap();
    assert_eq!(ids[0].len(), 256);
    assert_eq!(
        ids[0].last(),
        Some(&102),
        "truncation keeps the final [SEP]"
    );
}

#[tokio::test]
async fn model_infer_matches_reference_with_contents_and_raw_forms() {
    let addr = shared_inference();
    let mut client = oip_client(addr).await;
    let cases = reference_cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();

    // One batch, `contents.bytes_contents`.
    let response = client
        .model_infer(text_request("minilm-l6", &texts))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_name, "minilm-l6");
    assert_eq!(response.model_version, "1");
    assert_eq!(response.outputs[0].name, "sentence_embedding");
    assert_eq!(response.outputs[0].datatype, "FP32");
    assert_eq!(response.outputs[0].shape, vec![cases.len() as i64, 384]);
    let values = f32s(&response.raw_output_contents[0]);
    for (case, row) in cases.iter().zip(values.chunks(384)) {
        let diff = max_abs_diff(row, &case.embedding);
        assert!(diff <= TOLERANCE, "{:?}: max |diff| {diff}", case.text);
    }

    // One text at a time, raw contents.
    for case in &cases {
        let mut request = text_request("minilm-l6", &[&case.text]);
        request.inputs[0].contents = None;
        request.raw_input_contents = vec![raw_bytes(&[&case.text])];
        let response = client.model_infer(request).await.unwrap().into_inner();
        let diff = max_abs_diff(&f32s(&response.raw_output_contents[0]), &case.embedding);
        assert!(
            diff <= TOLERANCE,
            "{:?} (raw): max |diff| {diff}",
            case.text
        );
    }
}

#[tokio::test]
async fn embed_task_matches_reference_and_reports_model_version_and_timings() {
    let addr = shared_inference();
    let mut client = task_client(addr).await;
    let cases = reference_cases();
    let response = client
        .embed(EmbedRequest {
            model: None,
            texts: cases.iter().map(|c| c.text.clone()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model, "minilm-l6");
    assert_eq!(response.version, 1);
    let timings = response.timings.expect("timings");
    assert!(timings.total_us >= timings.compute_us, "{timings:?}");
    assert!(timings.batch_size >= cases.len() as u32, "{timings:?}");
    for (case, embedding) in cases.iter().zip(&response.embeddings) {
        assert_eq!(
            embedding.token_count as usize,
            case.input_ids.len(),
            "{:?}",
            case.text
        );
        let diff = max_abs_diff(&embedding.values, &case.embedding);
        assert!(diff <= TOLERANCE, "{:?}: max |diff| {diff}", case.text);
    }
}

#[tokio::test]
async fn classify_returns_a_probability_distribution_per_text() {
    let addr = shared_inference();
    let mut client = task_client(addr).await;
    let texts = vec![
        "buy running shoes now".to_owned(),
        "how do I return a blender".to_owned(),
    ];
    let response = client
        .classify(ClassifyRequest {
            model: None,
            texts: texts.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model, "purchase-intent");
    assert_eq!(response.classifications.len(), texts.len());
    for c in &response.classifications {
        assert_eq!(c.probabilities.len(), 2);
        let sum: f32 = c.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {sum}");
        let best = if c.probabilities[1] > c.probabilities[0] {
            1
        } else {
            0
        };
        assert_eq!(c.label, best);
    }
}

#[tokio::test]
async fn a_subset_of_outputs_can_be_requested() {
    use proto::inference::model_infer_request::InferRequestedOutputTensor;
    let addr = shared_inference();
    let mut client = oip_client(addr).await;
    let mut request = text_request("purchase-intent", &["organic green tea"]);
    let all = client
        .model_infer(request.clone())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = all.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probabilities", "logits"]);
    request.outputs = vec![InferRequestedOutputTensor {
        name: "logits".to_owned(),
        ..Default::default()
    }];
    let subset = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(subset.outputs.len(), 1);
    assert_eq!(subset.outputs[0].name, "logits");
    assert_eq!(subset.outputs[0].shape, vec![1, 2]);
    assert_eq!(subset.raw_output_contents[0], all.raw_output_contents[1]);
}

#[tokio::test]
async fn model_stream_infer_answers_every_request_of_a_stream_by_id() {
    let mut client = oip_client(shared_inference()).await;
    let mut requests = Vec::new();
    for (i, case) in reference_cases().iter().take(3).enumerate() {
        let mut request = text_request("minilm-l6", &[&case.text]);
        request.id = format!("stream-{i}");
        requests.push(request);
    }
    let mut bad = text_request("minilm-l6", &["x"]);
    bad.id = "stream-bad".into();
    bad.inputs[0].datatype = "FP32".into();
    requests.push(bad);
    let mut replies = client
        .model_stream_infer(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let cases = reference_cases();
    let mut seen = std::collections::BTreeMap::new();
    while let Some(reply) = tokio_stream::StreamExt::next(&mut replies).await {
        let reply = reply.unwrap();
        let response = reply.infer_response.unwrap();
        seen.insert(response.id.clone(), (reply.error_message, response));
    }
    assert_eq!(seen.len(), 4, "{:?}", seen.keys());
    for i in 0..3 {
        let (error, response) = &seen[&format!("stream-{i}")];
        assert!(error.is_empty(), "{error}");
        let diff = max_abs_diff(&f32s(&response.raw_output_contents[0]), &cases[i].embedding);
        assert!(diff <= TOLERANCE, "stream reply {i}: max |diff| {diff}");
    }
    assert!(
        seen["stream-bad"].0.contains("BYTES"),
        "{}",
        seen["stream-bad"].0
    );
}

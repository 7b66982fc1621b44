//! Bad input gets INVALID_ARGUMENT or NOT_FOUND with a message that names what was wrong, and
//! the service keeps serving.

use integration_tests::*;
use proto::inference::ModelInferRequest;
use proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tonic::Code;

/// One malformed request, the code it must get, and words its message must contain.
struct Case {
    what: &'static str,
    request: ModelInferRequest,
    code: Code,
    message: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let good = || text_request("minilm-l6", &["organic green tea"]);
    let with = |f: &dyn Fn(&mut ModelInferRequest)| {
        let mut r = good();
        f(&mut r);
        r
    };
    vec![
        Case {
            what: "unknown model",
            request: text_request("no-such-model", &["x"]),
            code: Code::NotFound,
            message: &["no-such-model"],
        },
        Case {
            what: "unknown version",
            request: with(&|r| r.model_version = "7".into()),
            code: Code::NotFound,
            message: &["version 7"],
        },
        Case {
            what: "version not a number",
            request: with(&|r| r.model_version = "latest".into()),
            code: Code::InvalidArgument,
            message: &["'latest'"],
        },
        Case {
            what: "wrong datatype",
            request: with(&|r| r.inputs[0].datatype = "FP32".into()),
            code: Code::InvalidArgument,
            message: &["TEXT", "FP32", "BYTES"],
        },
        Case {
            what: "wrong shape",
            request: with(&|r| r.inputs[0].shape = vec![1]),
            code: Code::InvalidArgument,
            message: &["TEXT", "[batch, 1]"],
        },
        Case {
            what: "batch over the maximum",
            request: text_request("minilm-l6", &["t"; 65]),
            code: Code::InvalidArgument,
            message: &["TEXT", "65", "at most 64"],
        },
        Case {
            what: "empty batch",
            request: text_request("minilm-l6", &[]),
            code: Code::InvalidArgument,
            message: &["TEXT", "empty"],
        },
        Case {
            what: "shape and element count disagree",
            request: with(&|r| r.inputs[0].shape = vec![2, 1]),
            code: Code::InvalidArgument,
            message: &["TEXT", "[2, 1]", "1 elements"],
        },
        Case {
            what: "raw contents shorter than declared",
            request: with(&|r| {
                r.inputs[0].contents = None;
                let mut raw = raw_bytes(&["organic green tea"]).to_vec();
                raw.truncate(10);
                r.raw_input_contents = vec![raw.into()];
            }),
            code: Code::InvalidArgument,
            message: &["TEXT", "declares 17 bytes"],
        },
        Case {
            what: "raw contents with stray bytes",
            request: with(&|r| {
                r.inputs[0].contents = None;
                let mut raw = raw_bytes(&["tea"]).to_vec();
                raw.extend_from_slice(&[1, 2]);
                r.raw_input_contents = vec![raw.into()];
            }),
            code: Code::InvalidArgument,
            message: &["TEXT", "stray bytes"],
        },
        Case {
            what: "an absurd batch size in the shape",
            request: with(&|r| {
                r.inputs[0].contents = None;
                r.inputs[0].shape = vec![1 << 50, 1];
                r.raw_input_contents = vec![vec![0, 0, 0, 0].into()];
            }),
            code: Code::InvalidArgument,
            message: &["TEXT", "a batch of 1125899906842624 texts", "at most 64"],
        },
        Case {
            what: "invalid UTF-8",
            request: with(&|r| {
                r.inputs[0].contents.as_mut().unwrap().bytes_contents =
                    vec![vec![0xff, 0xfe, b'a'].into()]
            }),
            code: Code::InvalidArgument,
            message: &["TEXT", "element 0", "UTF-8"],
        },
        Case {
            what: "text over the size limit",
            request: text_request("minilm-l6", &[&"a".repeat(16 * 1024 + 1)]),
            code: Code::InvalidArgument,
            message: &["TEXT", "16385 bytes", "16384"],
        },
        Case {
            what: "too many inputs",
            request: with(&|r| {
                let extra = InferInputTensor {
                    name: "EXTRA".into(),
                    ..r.inputs[0].clone()
                };
                r.inputs.push(extra);
            }),
            code: Code::InvalidArgument,
            message: &["2 inputs", "exactly one"],
        },
        Case {
            what: "unknown input name",
            request: with(&|r| r.inputs[0].name = "QUERY".into()),
            code: Code::InvalidArgument,
            message: &["QUERY", "TEXT"],
        },
        Case {
            what: "unknown output",
            request: with(&|r| {
                r.outputs = vec![InferRequestedOutputTensor {
                    name: "logits".into(),
                    ..Default::default()
                }]
            }),
            code: Code::InvalidArgument,
            message: &["no output 'logits'", "sentence_embedding"],
        },
        Case {
            what: "raw and typed contents together",
            request: with(&|r| r.raw_input_contents = vec![raw_bytes(&["tea"])]),
            code: Code::InvalidArgument,
            message: &["TEXT", "both"],
        },
    ]
}

#[tokio::test]
async fn every_bad_request_gets_the_right_code_and_a_precise_message() {
    let addr = shared_inference();
    let mut client = oip_client(addr).await;
    for case in cases() {
        let status = client.model_infer(case.request).await.expect_err(case.what);
        assert_eq!(
            status.code(),
            case.code,
            "{}: {}",
            case.what,
            status.message()
        );
        for words in case.message {
            assert!(
                status.message().contains(words),
                "{}: {:?} lacks {words:?}",
                case.what,
                status.message()
            );
        }
    }
    // The service kept serving.
    let ok = client
        .model_infer(text_request("minilm-l6", &["still serving"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.outputs[0].shape, vec![1, 384]);
}

#[tokio::test]
async fn metadata_of_unknown_models_is_not_found() {
    let mut client = oip_client(shared_inference()).await;
    let status = client
        .model_metadata(proto::inference::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .model_config(proto::inference::ModelConfigRequest {
            name: "../minilm-l6".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
}

#[tokio::test]
async fn a_negative_task_version_is_refused() {
    use proto::serving::inference::v1::{EmbedRequest, ModelRef};
    let mut client = task_client(shared_inference()).await;
    let status = client
        .embed(EmbedRequest {
            model: Some(ModelRef {
                name: "minilm-l6".into(),
                version: -1,
            }),
            texts: vec!["x".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("-1"), "{}", status.message());
}

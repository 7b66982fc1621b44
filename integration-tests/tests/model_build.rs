//! The model build is deterministic: the ONNX files `make model` produces have pinned hashes.
//! Its int8 versions passed the offline gate, whose figures are in their model cards, and the
//! gate refuses a degraded candidate.

use integration_tests::{models_dir, repo_root, venv_bin};
use sha2::{Digest, Sha256};

fn sha256_hex(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|err| panic!("{}: {err} (run `make model`)", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn built_onnx_files_have_the_pinned_hashes() {
    let models = models_dir();
    for (file, pinned) in [
        (
            "minilm-l6/1/model.onnx",
            "5b3710fd1fc32ce1d484e020cd5afab0042b583fe141765e8619ad0e819bfd5f",
        ),
        (
            "minilm-l6/1/model.fp16.onnx",
            "d060e0380866b17cb9585463fc42ee3c6f285dc85a4fe46ba44d6f9fa60633d2",
        ),
        (
            "minilm-l6/2/model.onnx",
            "22046f7f25ab61959b16c2007a2909964ca402ed0753e3fb27e2d59eff69faaf",
        ),
        (
            "purchase-intent/1/model.onnx",
            "d4a97e0eee1080dd7b8c0fe3782ca6cd8ccacb48b29bbcc193de5ad29fbac42b",
        ),
        (
            "purchase-intent/1/model.fp16.onnx",
            "b763d1837d5871ff470a14c0a107b0f4b562840a108bb894e5557e0d3b0d76f5",
        ),
        (
            "purchase-intent/2/model.onnx",
            "8b0ef54ba94cf2c5ebfd17703f8a2d7e9367c4f7d38cb2e1768f35f60dbe9191",
        ),
    ] {
        assert_eq!(sha256_hex(&models.join(file)), pinned, "{file}");
    }
}

#[test]
fn the_int8_versions_carry_the_gate_s_figures_in_their_cards() {
    for (model, measures) in [
        ("minilm-l6", &["cosine", "ndcg_at_10"][..]),
        ("purchase-intent", &["accuracy", "auc"][..]),
    ] {
        let folder = models_dir().join(model).join("2");
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder.join("card.json")).unwrap()).unwrap();
        assert_eq!(card["precision"], "int8", "{model}: {card}");
        assert_eq!(card["parent_version"], 1, "{model}: {card}");
        assert_eq!(
            card["sha256"].as_str().unwrap(),
            sha256_hex(&folder.join("model.onnx"))
        );
        let figures = &card["gate"]["figures"];
        for measure in measures {
            assert!(
                figures[measure].is_object(),
                "{model}: no {measure} in {card}"
            );
        }
        if model == "minilm-l6" {
            let min = figures["cosine"]["min"].as_f64().unwrap();
            assert!(min >= card["gate"]["thresholds"]["min_cosine"].as_f64().unwrap());
        }
        let readable = std::fs::read_to_string(folder.join("MODEL_CARD.md")).unwrap();
        assert!(readable.contains("## Offline gate"), "{readable}");
        assert!(readable.contains("**Accepted.**"), "{readable}");
    }
}

#[test]
fn the_gate_accepts_a_model_against_itself_and_refuses_a_degraded_one() {
    let out = std::process::Command::new(venv_bin("python"))
        .arg(repo_root().join("scripts/model_gate.py"))
        .args(["--self-test", "--models"])
        .arg(models_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_refused_fp16_form_is_not_left_where_the_cuda_provider_would_serve_it() {
    // A gate that no candidate can pass (a cosine above 1), on a build into a folder of its own.
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(venv_bin("python"))
        .arg(repo_root().join("scripts/build_model.py"))
        .arg("--out")
        .arg(out_dir.path())
        .args(["--min-cosine", "1.01"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build passed a refused model");
    assert!(
        stderr.contains("fp16 candidate of version 1 is refused"),
        "{stderr}"
    );
    let version_1 = out_dir.path().join("minilm-l6/1");
    assert!(version_1.join("model.onnx").is_file(), "{stderr}");
    assert!(
        !version_1.join("model.fp16.onnx").exists(),
        "the refused fp16 form is still on disk, where the CUDA provider would load it"
    );
}

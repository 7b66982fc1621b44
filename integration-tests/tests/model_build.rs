//! The model build is deterministic: the ONNX files `make model` produces have pinned hashes.

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
    let models = integration_tests::models_dir();
    assert_eq!(
        sha256_hex(&models.join("minilm-l6/1/model.onnx")),
        "5b3710fd1fc32ce1d484e020cd5afab0042b583fe141765e8619ad0e819bfd5f"
    );
    assert_eq!(
        sha256_hex(&models.join("purchase-intent/1/model.onnx")),
        "d4a97e0eee1080dd7b8c0fe3782ca6cd8ccacb48b29bbcc193de5ad29fbac42b"
    );
}

//! The project's Python model tools, run for `--gate` and `--int8`: the offline gate
//! (`scripts/model_gate.py`) and the int8 quantizer (`scripts/quantize_model.py`), which
//! need ONNX Runtime's Python tools and Hugging Face's tokenizers.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use crate::Args;

/// Runs `script` with `args` on the project's Python; returns its standard output, or an
/// error holding what it said on failure (exit 1: the gate refused, with the figures).
fn run(args: &Args, script: &str, script_args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let path = args.scripts.join(script);
    anyhow::ensure!(
        path.is_file(),
        "{} not found (run finetune from the project's folder, or pass --scripts)",
        path.display()
    );
    let out = Command::new(&args.python)
        .arg(&path)
        .args(script_args)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (run `make deps`, or pass --python)",
                args.python.display()
            )
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("Warning") && !l.starts_with("WARNING") && !l.starts_with(' '))
        .collect();
    anyhow::ensure!(out.status.success(), "{script}: {}", said.join("\n"));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The offline gate: the new version in `version_dir` against `parent_file`; the figures go
/// into the version's MODEL_CARD.md.
pub fn gate(args: &Args, parent_file: &Path, version_dir: &Path) -> anyhow::Result<()> {
    let candidate = version_dir.join("model.onnx");
    let card = version_dir.join("MODEL_CARD.md");
    run(
        args,
        "model_gate.py",
        &[
            "--parent".as_ref(),
            parent_file.as_os_str(),
            "--candidate".as_ref(),
            candidate.as_os_str(),
            "--card".as_ref(),
            card.as_os_str(),
            "--quiet".as_ref(),
        ],
    )?;
    eprintln!("finetune: the offline gate accepts the new version (figures in its MODEL_CARD.md)");
    Ok(())
}

/// Writes the int8 form of `version` as the version after it, once the gate accepts it;
/// returns that version.
pub fn quantize(args: &Args, model_dir: &Path, version: i64) -> anyhow::Result<i64> {
    let int8 = version + 1;
    let out = run(
        args,
        "quantize_model.py",
        &[
            "--model-dir".as_ref(),
            model_dir.as_os_str(),
            "--parent".as_ref(),
            version.to_string().as_ref(),
            "--version".as_ref(),
            int8.to_string().as_ref(),
        ],
    )?;
    anyhow::ensure!(
        out.trim() == int8.to_string(),
        "quantize_model.py wrote version {} instead of {int8}",
        out.trim()
    );
    Ok(int8)
}

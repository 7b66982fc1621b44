//! `finetune`: trains the purchase-intent classification head on labelled examples and exports
//! it as the model's next version, with a report and a model card.
//!
//! The encoder stays frozen: examples are embedded once by the inference service (`minilm-l6`,
//! the encoder inside `purchase-intent`), then the 2-class softmax head `σ(W·φ(x) + b)` is
//! trained on the embeddings with AdamW, dropout, mini-batches and early stopping on a
//! validation split ([`train`]). The new version is the parent's ONNX file with the head's
//! weights rewritten in place ([`export`]): one graph, one ONNX Runtime session and one batch
//! queue per version, as before, and an encoder provably identical to the parent's.

mod data;
mod embed;
mod export;
mod gathered;
mod report;
mod tools;
mod train;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

use crate::train::{Example, Hyper};

/// Trains the purchase-intent head on labelled examples (JSON lines of {"text", "label"}; or
/// the demonstration shop's data) and exports it as the model's next version in the model
/// repository, with a training report (JSON and PNG) and a model card.
///
/// Examples are embedded by the inference service (it must be running: `make run`); the head
/// is trained here, in seconds. The new version serves once loaded (RepositoryModelLoad) and
/// can then be rolled out as a canary through the gateway (see the README).
#[derive(Debug, Parser)]
#[command(name = "finetune", version, about, long_about)]
struct Args {
    /// Labelled examples: a JSON-lines file of {"text": "...", "label": 0 or 1}. Malformed
    /// lines are reported with their numbers and nothing is trained.
    #[arg(long, required_unless_present_any = ["demo_examples", "gathered"])]
    data: Option<PathBuf>,

    /// Instead of --data (or with it), N examples of the demonstration shop, labelled by the
    /// traffic generator's hidden purchase rule.
    #[arg(long, value_name = "N")]
    demo_examples: Option<usize>,

    /// Also train on what the platform gathered: the texts of classified calls that the
    /// gateway's payload logging kept (personal data masked; --payload-log-sample) and that
    /// shoppers labelled through Feedback, from this metrics collector (e.g.
    /// http://127.0.0.1:4317).
    #[arg(long, value_name = "COLLECTOR")]
    gathered: Option<String>,

    /// The inference service that embeds the examples (`make run`'s, over TLS: give the
    /// operator's certificate with --tls-cert, --tls-key and --tls-ca, or TLS_CERT_FILE,
    /// TLS_KEY_FILE and TLS_CA_FILE; `http://` for a mesh run with MESH_PLAINTEXT).
    #[arg(
        long,
        env = "FINETUNE_INFERENCE",
        default_value = "https://127.0.0.1:50052"
    )]
    inference: String,

    /// The encoder model that embeds them (the encoder of the model being trained).
    #[arg(long, default_value = "minilm-l6")]
    encoder: String,

    /// The model repository.
    #[arg(long, env = "MODEL_REPOSITORY", default_value = "models")]
    repository: PathBuf,

    /// The classification model to train a new version of.
    #[arg(long, default_value = "purchase-intent")]
    model: String,

    /// The version to start from (its head is the starting point; its file the template of
    /// the export). Default: the newest.
    #[arg(long)]
    parent: Option<i64>,

    /// AdamW's learning rate.
    #[arg(long, default_value_t = 0.01)]
    learning_rate: f64,

    /// AdamW's decoupled weight decay (L2 regularisation of the weights).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,

    /// Share of embedding components dropped at each training step.
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,

    /// Examples per optimisation step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,

    /// Most passes over the training set.
    #[arg(long, default_value_t = 100)]
    epochs: usize,

    /// Stop after this many epochs without a lower validation loss (the best epoch is kept).
    #[arg(long, default_value_t = 5)]
    patience: usize,

    /// Share of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    validation_share: f64,

    /// Seed of the split, the shuffles and the dropout: the same seed and data give the same
    /// head.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Flip every label (a deliberately bad version, to see a canary rolled back).
    #[arg(long)]
    flip_labels: bool,

    /// Where the report goes (report.json, report.png). Default:
    /// data/finetune/<model>-v<version>.
    #[arg(long)]
    report_dir: Option<PathBuf>,

    /// Train and report only; write no new version.
    #[arg(long)]
    no_export: bool,

    /// Check the new version against its parent with the offline gate (scripts/model_gate.py:
    /// accuracy and AUC on the held-out messages of scripts/heldout) before it is kept; a
    /// version under the gate's thresholds is removed again and finetune fails with the
    /// figures. The figures go into the model card.
    #[arg(long)]
    gate: bool,

    /// Also write the int8 form of the new version as the version after it
    /// (scripts/quantize_model.py: ONNX Runtime's quantizer, the head kept fp32), kept only
    /// if the offline gate accepts it against the new version.
    #[arg(long)]
    int8: bool,

    /// The Python of the project's tools (`make deps` installs it), for --gate and --int8.
    #[arg(long, env = "FINETUNE_PYTHON", default_value = ".venv/bin/python")]
    python: PathBuf,

    /// The folder of scripts/model_gate.py and scripts/quantize_model.py.
    #[arg(long, default_value = "scripts")]
    scripts: PathBuf,

    /// TLS towards the inference service and the collector (`https://` addresses): the mesh's
    /// CA, and a certificate it signed (the collector asks for one).
    #[command(flatten)]
    tls: shared::tls::TlsArgs,
}

/// One validation example with the trainer's own probability, for checking the export.
#[derive(Debug, serde::Serialize)]
struct Sample {
    text: String,
    label: u32,
    probability: f32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(err) = run(Args::parse()).await {
        eprintln!("finetune: {err:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = shared::tls::MeshTls::load_client(&args.tls)?;
    let hyper = Hyper {
        learning_rate: args.learning_rate,
        weight_decay: args.weight_decay,
        dropout: args.dropout,
        batch_size: args.batch_size,
        epochs: args.epochs,
        patience: args.patience,
        seed: args.seed,
    };
    hyper.check().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.validation_share > 0.0 && args.validation_share < 1.0,
        "--validation-share must be between 0 and 1, not {}",
        args.validation_share
    );

    // The data first: bad input is refused before anything is embedded.
    let mut labelled = Vec::new();
    if let Some(path) = &args.data {
        labelled.extend(data::read(path)?);
    }
    if let Some(n) = args.demo_examples {
        labelled.extend(data::demonstration(n, args.seed));
    }
    let mut gathered_count = 0;
    if let Some(collector) = &args.gathered {
        let gathered = gathered::fetch(collector, &args.model, &tls).await?;
        gathered_count = gathered.len();
        eprintln!("finetune: {gathered_count} labelled examples gathered by the platform");
        labelled.extend(gathered);
    }
    if args.flip_labels {
        labelled.iter_mut().for_each(|l| l.label = 1 - l.label);
    }
    data::check("the data", &labelled)?;
    let positives = labelled.iter().filter(|l| l.label == 1).count();

    // The parent version: its head is the start, its file the template.
    let model_dir = args.repository.join(&args.model);
    let versions = export::versions(&model_dir)?;
    let parent = match args.parent {
        Some(v) => {
            anyhow::ensure!(
                versions.contains(&v),
                "{} has no version {v} (it has {versions:?})",
                model_dir.display()
            );
            v
        }
        // An int8 version is the quantized form of another: the newest full-precision one is
        // the parent, so that a head is never trained on top of a quantized encoder.
        None => *versions
            .iter()
            .rev()
            .find(|v| !export::is_int8(&model_dir.join(v.to_string())))
            .with_context(|| {
                format!(
                    "{} has no full-precision version with a model.onnx",
                    model_dir.display()
                )
            })?,
    };
    let parent_file = model_dir.join(parent.to_string()).join("model.onnx");
    let parent_bytes = std::fs::read(&parent_file)
        .with_context(|| format!("reading {}", parent_file.display()))?;
    let parent_head = export::read_head(&parent_bytes).with_context(|| {
        format!(
            "{} is not a {}-class head on a {}-dim encoder",
            parent_file.display(),
            train::CLASSES,
            train::DIM
        )
    })?;
    let version = versions.last().copied().unwrap_or(parent) + 1;

    eprintln!(
        "finetune: {} examples ({positives} with purchase intent); {} v{parent} → v{version}",
        labelled.len(),
        args.model
    );
    let started = Instant::now();
    let texts: Vec<String> = labelled.iter().map(|l| l.text.clone()).collect();
    let bar = indicatif::ProgressBar::new(texts.len() as u64).with_message("embedding");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let vectors = embed::embed(&args.inference, &args.encoder, &texts, &tls, |n| {
        bar.inc(n as u64)
    })
    .await?;
    bar.finish_and_clear();
    let embedding_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        vectors.iter().all(|v| v.len() == train::DIM),
        "{} returned embeddings of {} components; the head expects {}",
        args.encoder,
        vectors.first().map_or(0, Vec::len),
        train::DIM
    );
    let examples: Vec<Example> = labelled
        .into_iter()
        .zip(vectors)
        .map(|(l, x)| Example {
            text: l.text,
            x,
            y: l.label,
        })
        .collect();

    let started = Instant::now();
    let (training, validation) = train::split(examples, args.validation_share, args.seed);
    let before = train::evaluate(&parent_head, &validation);
    let bar = indicatif::ProgressBar::new(args.epochs as u64).with_message("training");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] epoch {pos}/{len} {prefix}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let trained = train::train(&training, &validation, parent_head.clone(), &hyper, |e| {
        bar.set_position(e.epoch as u64);
        bar.set_prefix(format!("validation loss {:.4}", e.validation_loss));
    });
    bar.finish_and_clear();
    let head_s = started.elapsed().as_secs_f64();
    let after = train::evaluate(&trained.head, &validation);
    eprintln!(
        "finetune: {} epochs (best {}{}); validation AUC {:.4} (parent {:.4}), accuracy {:.4}, F1 {:.4}",
        trained.epochs.len(),
        trained.best_epoch,
        if trained.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        after.auc,
        before.auc,
        after.accuracy,
        after.f1
    );

    let report_dir = args.report_dir.clone().unwrap_or_else(|| {
        PathBuf::from("data/finetune").join(format!("{}-v{version}", args.model))
    });
    std::fs::create_dir_all(&report_dir)
        .with_context(|| format!("creating {}", report_dir.display()))?;
    let samples: Vec<Sample> = validation
        .iter()
        .take(32)
        .map(|e| Sample {
            text: e.text.clone(),
            label: e.y,
            probability: trained.head.probabilities(&e.x)[1],
        })
        .collect();
    let report = serde_json::json!({
        "model": args.model,
        "parent_version": parent,
        "version": if args.no_export { serde_json::Value::Null } else { version.into() },
        "encoder": args.encoder,
        "hyperparameters": hyper,
        "validation_share": args.validation_share,
        "labels_flipped": args.flip_labels,
        "data": {
            "file": args.data.as_ref().map(|p| p.display().to_string()),
            "demonstration_examples": args.demo_examples,
            "gathered_examples": gathered_count,
            "training": training.len(),
            "validation": validation.len(),
            "positives": positives,
        },
        "epochs": trained.epochs,
        "best_epoch": trained.best_epoch,
        "stopped_early": trained.stopped_early,
        "validation": after,
        "parent_validation": before,
        "seconds": {"embedding": embedding_s, "head": head_s},
        "samples": samples,
    });
    let json_path = report_dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let png_path = report_dir.join("report.png");
    report::plot(&png_path, &trained.epochs, trained.best_epoch)
        .with_context(|| format!("drawing {}", png_path.display()))?;
    eprintln!("finetune: report in {}", report_dir.display());

    if args.no_export {
        return Ok(());
    }
    let version_dir = model_dir.join(version.to_string());
    std::fs::create_dir_all(&version_dir)
        .with_context(|| format!("creating {}", version_dir.display()))?;
    let card = serde_json::json!({
        "model": args.model,
        "version": version,
        "parent_version": parent,
        "kind": "The parent's encoder (frozen) with a retrained 2-class softmax head",
        "data": report["data"],
        "labels_flipped": args.flip_labels,
        "hyperparameters": report["hyperparameters"],
        "validation": report["validation"],
        "parent_validation": report["parent_validation"],
        "best_epoch": trained.best_epoch,
        "epochs_run": trained.epochs.len(),
    });
    export::write_atomically(
        &version_dir.join("card.json"),
        &serde_json::to_vec_pretty(&card)?,
    )?;
    export::write_atomically(
        &version_dir.join("MODEL_CARD.md"),
        model_card(&card).as_bytes(),
    )?;
    let bytes = export::write_head(&parent_bytes, &trained.head)?;
    export::write_atomically(&version_dir.join("model.onnx"), &bytes)?;
    if args.gate {
        let gated = tools::gate(&args, &parent_file, &version_dir);
        if let Err(err) = gated {
            std::fs::remove_dir_all(&version_dir)
                .with_context(|| format!("removing {}", version_dir.display()))?;
            return Err(err.context(format!("version {version} is not kept")));
        }
    }
    eprintln!(
        "finetune: wrote {} (load it with RepositoryModelLoad, then roll it out as a canary)",
        version_dir.join("model.onnx").display()
    );
    println!("{version}");
    if args.int8 {
        let int8 = tools::quantize(&args, &model_dir, version)?;
        eprintln!(
            "finetune: wrote {}, its int8 form (see its MODEL_CARD.md)",
            model_dir
                .join(int8.to_string())
                .join("model.onnx")
                .display()
        );
        println!("{int8}");
    }
    Ok(())
}

/// The model card, readable.
fn model_card(card: &serde_json::Value) -> String {
    let v = &card["validation"];
    let p = &card["parent_validation"];
    let h = &card["hyperparameters"];
    let d = &card["data"];
    format!(
        "# {model} version {version}\n\n\
         {kind}; parent version {parent}.\n\n\
         ## Data\n\n\
         {training} training and {validation} validation examples ({positives} with purchase \
         intent in all); file: {file}; demonstration examples: {demo}; gathered by the \
         platform: {gathered}; labels flipped: {flipped}.\n\n\
         ## Hyper-parameters\n\n\
         AdamW, learning rate {lr}, weight decay {wd}; dropout {dropout}; batch size {batch}; at \
         most {epochs} epochs, early stopping after {patience} without improvement (best epoch \
         {best} of {run}); seed {seed}.\n\n\
         ## Validation\n\n\
         | | AUC | accuracy | F1 | loss |\n|---|---|---|---|---|\n\
         | this version | {auc:.4} | {acc:.4} | {f1:.4} | {loss:.4} |\n\
         | parent | {pauc:.4} | {pacc:.4} | {pf1:.4} | {ploss:.4} |\n",
        model = card["model"].as_str().unwrap_or(""),
        version = card["version"],
        kind = card["kind"].as_str().unwrap_or(""),
        parent = card["parent_version"],
        training = d["training"],
        validation = d["validation"],
        positives = d["positives"],
        file = d["file"].as_str().unwrap_or("none"),
        demo = d["demonstration_examples"].as_u64().unwrap_or(0),
        gathered = d["gathered_examples"].as_u64().unwrap_or(0),
        flipped = card["labels_flipped"],
        lr = h["learning_rate"],
        wd = h["weight_decay"],
        dropout = h["dropout"],
        batch = h["batch_size"],
        epochs = h["epochs"],
        patience = h["patience"],
        best = card["best_epoch"],
        run = card["epochs_run"],
        seed = h["seed"],
        auc = v["auc"].as_f64().unwrap_or(f64::NAN),
        acc = v["accuracy"].as_f64().unwrap_or(f64::NAN),
        f1 = v["f1"].as_f64().unwrap_or(f64::NAN),
        loss = v["loss"].as_f64().unwrap_or(f64::NAN),
        pauc = p["auc"].as_f64().unwrap_or(f64::NAN),
        pacc = p["accuracy"].as_f64().unwrap_or(f64::NAN),
        pf1 = p["f1"].as_f64().unwrap_or(f64::NAN),
        ploss = p["loss"].as_f64().unwrap_or(f64::NAN),
    )
}

//! `inprocess`: what ONNX Runtime alone achieves on this machine with the served model, as
//! the ceiling the inference service is measured against.
//!
//! It loads the model the way the service does (`inference::runtime::OrtBackend`), feeds it
//! texts of exactly `--tokens` tokens, and prints one JSON object: throughput in sentences/s
//! for each batch size (and the best), and batch-1 latency percentiles.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::latency::LatencyRecorder;
use bench::texts::PRODUCT_SEARCHES;
use clap::Parser;
use inference::runtime::{Backend, Device, EncodedBatch, OrtBackend, RuntimeOptions};
use inference::tokenize::TextEncoder;
use serde_json::json;

/// Measures ONNX Runtime in-process on the CPU: sentences/s per batch size and batch-1
/// latency, for texts of a fixed token length. Prints one JSON object to stdout.
#[derive(Debug, Parser)]
#[command(name = "inprocess", version, about, long_about)]
struct Args {
    /// The ONNX model to run.
    #[arg(long, default_value = "models/minilm-l6/1/model.onnx")]
    model: PathBuf,

    /// The model's `tokenizer.json`, used to build realistic token ids.
    #[arg(long, default_value = "models/minilm-l6/tokenizer.json")]
    tokenizer: PathBuf,

    /// Graph output to compute (and pay for) on every run.
    #[arg(long, default_value = "sentence_embedding")]
    output: String,

    /// Text whose tokens fill every row; cut (or repeated) to exactly `--tokens` tokens,
    /// keeping [CLS] first and [SEP] last.
    #[arg(long, default_value_t = PRODUCT_SEARCHES[0].clone())]
    text: String,

    /// Tokens per row, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(3..=256))]
    tokens: u16,

    /// Batch sizes (rows per run) to measure throughput at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    batch_sizes: Vec<usize>,

    /// Seconds of back-to-back runs measured at each batch size.
    #[arg(long, default_value_t = 3.0)]
    secs_per_batch: f64,

    /// Unmeasured runs before each batch size's measurement (and before the latency runs).
    #[arg(long, default_value_t = 10)]
    warmup_runs: usize,

    /// Batch-1 runs timed one by one for the latency percentiles.
    #[arg(long, default_value_t = 1000)]
    latency_runs: usize,

    /// ONNX Runtime shared library to load.
    #[arg(
        long,
        env = "ORT_DYLIB_PATH",
        default_value = ".deps/onnxruntime/lib/libonnxruntime.so"
    )]
    ort_dylib_path: PathBuf,

    /// Threads ONNX Runtime uses inside one operator (the service's default is one per core).
    #[arg(long, default_value_t = 2)]
    intra_op_threads: usize,

    /// Graph optimisation level: 0 (off), 1 (basic), 2 (extended), 3 (all).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    optimization_level: u8,

    /// Let ONNX Runtime's worker threads spin between the operators of a run, as the
    /// service's `--spin` does (its default is not to).
    #[arg(long)]
    spin: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must all be at least 1");
    }
    let options = RuntimeOptions {
        dylib_path: args.ort_dylib_path.clone(),
        device: Some(Device::Cpu),
        intra_op_threads: args.intra_op_threads,
        optimization_level: args.optimization_level,
        fp16: false,
        spin: args.spin,
    };
    let (mut backend, provider) = OrtBackend::load(&args.model, Device::Cpu, &options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let row = fixed_length_ids(&args.tokenizer, &args.text, usize::from(args.tokens))?;
    let outputs = [args.output.clone()];

    let mut throughput = Vec::with_capacity(args.batch_sizes.len());
    let mut best = json!(null);
    let mut best_rate = 0.0;
    for &rows in &args.batch_sizes {
        let batch = repeat_row(&row, rows);
        for _ in 0..args.warmup_runs {
            run(&mut backend, &batch, &outputs)?;
        }
        let window = Duration::from_secs_f64(args.secs_per_batch);
        let started = Instant::now();
        let mut runs = 0_u64;
        while runs == 0 || started.elapsed() < window {
            run(&mut backend, &batch, &outputs)?;
            runs += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let sentences_per_sec = (runs * rows as u64) as f64 / elapsed;
        eprintln!("[inprocess] batch {rows:>3}: {sentences_per_sec:8.1} sentences/s");
        let point = json!({
            "batch": rows,
            "runs": runs,
            "sentences_per_sec": sentences_per_sec,
            "run_mean_ms": elapsed * 1000.0 / runs as f64,
        });
        if sentences_per_sec > best_rate {
            best_rate = sentences_per_sec;
            best = point.clone();
        }
        throughput.push(point);
    }

    let single = repeat_row(&row, 1);
    for _ in 0..args.warmup_runs {
        run(&mut backend, &single, &outputs)?;
    }
    let mut latency = LatencyRecorder::default();
    for _ in 0..args.latency_runs {
        let started = Instant::now();
        run(&mut backend, &single, &outputs)?;
        latency.record(started.elapsed());
    }
    let mean = latency.mean().as_secs_f64();
    eprintln!("[inprocess] batch 1 latency: {}", latency.summary());

    let report = json!({
        "model": args.model,
        "provider": provider.as_str(),
        "tokens_per_row": args.tokens,
        "intra_op_threads": args.intra_op_threads,
        "optimization_level": args.optimization_level,
        "spin": args.spin,
        "throughput": throughput,
        "best": best,
        "batch1_latency": latency.summary(),
        "one_at_a_time_ceiling_per_sec": if mean > 0.0 { 1.0 / mean } else { 0.0 },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Tokenizes `text` and fits it to exactly `tokens` ids: [CLS], the text's word pieces (cut,
/// or repeated when the text is too short), [SEP]. Every id is a real token, so the attention
/// mask is all ones, as for a batch of equally long texts.
fn fixed_length_ids(
    tokenizer: &std::path::Path,
    text: &str,
    tokens: usize,
) -> anyhow::Result<Vec<i64>> {
    let encoder = TextEncoder::load(tokenizer, 512)
        .with_context(|| format!("loading {}", tokenizer.display()))?;
    let ids = encoder
        .encode(&[text.to_owned()])?
        .pop()
        .context("the tokenizer returned no encoding")?;
    let [cls, pieces @ .., sep] = ids.as_slice() else {
        bail!("'{text}' tokenized to fewer than two tokens");
    };
    if pieces.is_empty() {
        bail!("'{text}' has no word pieces between [CLS] and [SEP]");
    }
    let mut row = Vec::with_capacity(tokens);
    row.push(i64::from(*cls));
    row.extend(
        pieces
            .iter()
            .cycle()
            .take(tokens - 2)
            .map(|&id| i64::from(id)),
    );
    row.push(i64::from(*sep));
    Ok(row)
}

/// A batch of `rows` copies of `row`, with an all-ones attention mask.
fn repeat_row(row: &[i64], rows: usize) -> EncodedBatch {
    EncodedBatch {
        rows,
        seq_len: row.len(),
        input_ids: row.repeat(rows),
        attention_mask: vec![1; row.len() * rows],
    }
}

fn run(backend: &mut OrtBackend, batch: &EncodedBatch, outputs: &[String]) -> anyhow::Result<()> {
    backend
        .run(batch, outputs)
        .map_err(|reason| anyhow::anyhow!("inference failed: {reason}"))?;
    Ok(())
}

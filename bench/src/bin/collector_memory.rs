//! Resident memory of the metrics collector's store when the windows of 10,000 active counter
//! series are full: an hour of 1 s steps and a day of 1 min steps, every series updated every
//! second. Time is simulated (the store takes the receive time as an argument), so a day of
//! windows fills in seconds. Prints one JSON object.
//!
//! With `--data-dir`, the store keeps its state there as the collector does: every point goes
//! to the write-ahead log and snapshots are taken as they fall due. Once the windows are full it
//! takes a snapshot, writes `--log-seconds` more seconds of points to the log alone (what a
//! SIGKILL leaves to replay at worst, with the default snapshot interval) and exits without a
//! last snapshot; the report gives the bytes on disk per series. `scripts/bench_collector.sh`
//! then times a collector process starting on that directory.
//!
//!     collector_memory --series 10000
//!     collector_memory --series 10000 --data-dir target/bench/collector-data

use clap::Parser;
use metrics_collector::store::{Kind, Limits, MetricStore, Point, Value};

/// Fills the windows of a store and reports its resident memory.
#[derive(Debug, Parser)]
struct Args {
    /// Active counter series.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Simulated seconds of 1 s steps (the tier keeps an hour).
    #[arg(long, default_value_t = 3660)]
    seconds: i64,
    /// Simulated minutes of 1 min steps beyond those (the tier keeps a day).
    #[arg(long, default_value_t = 1445)]
    minutes: i64,
    /// Keep the state in this data directory (emptied first), as `metrics-collector --data-dir`.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// With `--data-dir`: seconds of points written after the last snapshot, left in the log.
    #[arg(long, default_value_t = 60)]
    log_seconds: i64,
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let recovery = match &args.data_dir {
        Some(dir) => {
            let _ = std::fs::remove_dir_all(dir);
            Some(metrics_collector::durable::Recovery::begin(
                metrics_collector::durable::Options {
                    dir: dir.clone(),
                    snapshot_every: std::time::Duration::from_secs(60),
                    wal_max_bytes: 256 * 1024 * 1024,
                },
            )?)
        }
        None => None,
    };
    let store = std::sync::Arc::new(MetricStore::new(Limits {
        max_families: usize::MAX,
        max_families_per_sender: usize::MAX,
        max_series: args.series,
        max_window_bytes: u64::MAX,
        started_ns: 0,
        stale_after_seconds: 120,
    }));
    let join = std::sync::Arc::new(metrics_collector::join::FeedbackJoin::new(3_600_000, 1000));
    let durable = match recovery {
        Some(recovery) => {
            let exemplars = std::sync::Arc::new(metrics_collector::exemplars::ExemplarRings::new(
                1000, 64, 250.0,
            ));
            Some(recovery.finish(&store, &join, &exemplars)?)
        }
        None => None,
    };
    let labels: Vec<Vec<(String, String)>> = (0..args.series)
        .map(|u| {
            vec![
                ("job".to_owned(), "bench".to_owned()),
                ("model".to_owned(), format!("model-{}", u % 10)),
                ("user".to_owned(), format!("user-{u}")),
            ]
        })
        .collect();
    let before = resident_kib();
    let started = std::time::Instant::now();
    let write = |now: i64, value: f64| {
        let points = labels
            .iter()
            .map(|l| Point {
                labels: l.clone(),
                start_time_ns: 1,
                delta: false,
                value: Value::Scalar(value),
            })
            .collect();
        store
            .record(now, "bench.requests", Kind::Counter, "", "", points)
            .expect("within limits");
    };
    // A day of minutes first (one point per minute), then an hour of seconds.
    let start = 1_000_000_000;
    for m in 0..args.minutes {
        write(start + m * 60, m as f64);
    }
    let second_start = start + args.minutes * 60;
    for s in 0..args.seconds {
        write(second_start + s, (args.minutes + s) as f64);
    }
    let after = resident_kib();
    let points = (args.minutes + args.seconds) as usize * args.series;
    let write_seconds = started.elapsed().as_secs_f64();
    let disk = durable.map(|durable| {
        let began = std::time::Instant::now();
        durable.snapshot().expect("the snapshot is written");
        let snapshot_seconds = began.elapsed().as_secs_f64();
        let snapshot_bytes = durable.disk_bytes();
        let end = second_start + args.seconds;
        for s in 0..args.log_seconds {
            write(end + s, (args.minutes + args.seconds + s) as f64);
        }
        durable.sync_log();
        let disk_bytes = durable.disk_bytes();
        serde_json::json!({
            "snapshot_seconds": snapshot_seconds,
            "snapshot_bytes": snapshot_bytes,
            "snapshot_bytes_per_series": snapshot_bytes as f64 / args.series as f64,
            "log_seconds_after_snapshot": args.log_seconds,
            "log_points_after_snapshot": args.log_seconds as usize * args.series,
            "disk_bytes": disk_bytes,
            "disk_bytes_per_series": disk_bytes as f64 / args.series as f64,
        })
    });
    let report = serde_json::json!({
        "series": args.series,
        "simulated_seconds": args.seconds,
        "simulated_minutes": args.minutes,
        "points_written": points,
        "write_seconds": write_seconds,
        "resident_kib_before": before,
        "resident_kib_after": after,
        "resident_kib_added": after.saturating_sub(before),
        "bytes_per_series": (after.saturating_sub(before) * 1024) as f64 / args.series as f64,
        "window_bytes_reserved": store.window_bytes(),
        "persistence": disk,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    // As a SIGKILL after the log was written: no last snapshot.
    std::process::exit(0)
}

//! Resident memory of the metrics collector's store when the windows of 10,000 active counter
//! series are full: an hour of 1 s steps and a day of 1 min steps, every series updated every
//! second. Time is simulated (the store takes the receive time as an argument), so a day of
//! windows fills in seconds. Prints one JSON object.
//!
//!     collector_memory --series 10000

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
    let store = MetricStore::new(Limits {
        max_families: usize::MAX,
        max_families_per_sender: usize::MAX,
        max_series: args.series,
        max_window_bytes: u64::MAX,
        started_ns: 0,
        stale_after_seconds: 120,
    });
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
    let report = serde_json::json!({
        "series": args.series,
        "simulated_seconds": args.seconds,
        "simulated_minutes": args.minutes,
        "points_written": points,
        "write_seconds": started.elapsed().as_secs_f64(),
        "resident_kib_before": before,
        "resident_kib_after": after,
        "resident_kib_added": after.saturating_sub(before),
        "bytes_per_series": (after.saturating_sub(before) * 1024) as f64 / args.series as f64,
        "window_bytes_reserved": store.window_bytes(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

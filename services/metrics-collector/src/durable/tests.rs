//! Round trips through the data directory: a clean stop, a log replayed without a snapshot, a
//! torn tail, a snapshot of another version, two collectors on one directory.

use std::sync::Arc;
use std::time::Duration;

use super::codec::Writer;
use super::*;
use crate::exemplars::Exemplar;
use crate::join::{Event, Feedback, Prediction, Task};
use crate::store::tests::limits;
use crate::store::{Kind, Limits, Point, Value};

struct Running {
    store: Arc<MetricStore>,
    join: Arc<FeedbackJoin>,
    exemplars: Arc<ExemplarRings>,
    durable: Arc<Durable>,
}

fn options(dir: &Path) -> Options {
    Options {
        dir: dir.to_owned(),
        snapshot_every: Duration::from_secs(3600),
        wal_max_bytes: u64::MAX,
    }
}

fn open(dir: &Path) -> Running {
    open_with(dir, usize::MAX)
}

/// As [`open`], each sender creating at most `per_sender` metrics.
fn open_with(dir: &Path, per_sender: usize) -> Running {
    let recovery = Recovery::begin(options(dir)).unwrap();
    let store = Arc::new(MetricStore::new(Limits {
        started_ns: recovery.started_ns(),
        max_families_per_sender: per_sender,
        ..limits(1000)
    }));
    let join = Arc::new(FeedbackJoin::new(3_600_000, 1000));
    let exemplars = Arc::new(ExemplarRings::new(3, 4, 100.0));
    let durable = recovery.finish(&store, &join, &exemplars).unwrap();
    Running {
        store,
        join,
        exemplars,
        durable,
    }
}

fn counter(job: &str, value: f64) -> Point {
    Point {
        labels: vec![("job".into(), job.into())],
        start_time_ns: 5_000,
        delta: false,
        value: Value::Scalar(value),
    }
}

fn histogram(count: u64) -> Point {
    Point {
        labels: vec![("job".into(), "h".into())],
        start_time_ns: 5_000,
        delta: false,
        value: Value::Histogram {
            bounds: vec![0.1, 1.0],
            counts: vec![count, 1, 0],
            sum: count as f64 * 0.05 + 0.5,
            count: count + 1,
        },
    }
}

/// Sends a minute of points: two counters (one resets), a gauge and a histogram, with a
/// prediction and its feedback.
fn traffic(running: &Running, from: i64) {
    for t in from..from + 60 {
        let n = (t - from) as f64;
        let reset = if t - from >= 30 { n - 30.0 } else { n * 2.0 };
        let sent = vec![counter("a", n * 3.0), counter("b", reset)];
        running
            .store
            .record_sent(t, "svc", "requests", Kind::Counter, "d", "1", sent)
            .unwrap();
        running
            .store
            .record_sent(
                t,
                "svc",
                "queue",
                Kind::Gauge,
                "",
                "",
                vec![counter("a", n % 7.0)],
            )
            .unwrap();
        running
            .store
            .record_sent(
                t,
                "svc",
                "latency",
                Kind::Histogram,
                "",
                "s",
                vec![histogram(t as u64)],
            )
            .unwrap();
    }
    let id = format!("r{from}");
    running
        .join
        .predict(
            Prediction {
                request_id: id.clone(),
                model: "m".into(),
                version: 2,
                task: Task::Rank,
                items: vec!["x".into(), "y".into()],
                scores: vec![0.9, 0.1],
                texts: vec![],
                at_ms: from * 1000,
            },
            from * 1000,
        )
        .unwrap();
    running
        .join
        .feedback(Feedback {
            request_id: id,
            item_id: "y".into(),
            event: Event::Click,
        })
        .unwrap();
    // Five slow spans: the ring keeps the last three.
    for i in 0..5 {
        running.exemplars.offer(Exemplar {
            trace_id: format!("{from:016x}{i:016x}"),
            span_id: format!("{i:016x}"),
            service: "gateway".into(),
            span_name: "Embed".into(),
            model: "m".into(),
            version: 2,
            error: i % 2 == 0,
            status_message: String::new(),
            duration_ms: 300.0 + f64::from(i),
            end_unix_ms: from * 1000 + i64::from(i),
        });
    }
}

/// Everything the state holds, as bytes: equal bytes, equal answers to every query.
fn state(running: &Running) -> Vec<u8> {
    let mut w = Writer::new();
    for (name, family) in running.store.families() {
        w.str(&name);
        snapshot::encode_family(&mut w, &family.read().unwrap(), &mut |_| {});
    }
    w.bytes.extend(running.join.encode(|| 0).1);
    w.bytes.extend(running.exemplars.encode(|| 0).1);
    w.u64(running.store.refused());
    w.u64(running.store.window_bytes());
    w.bytes
}

#[test]
fn a_clean_stop_keeps_every_window_and_the_join() {
    let dir = tempdir("clean");
    let running = open(&dir);
    traffic(&running, 1_000);
    let before = state(&running);
    running.durable.close();
    drop(running);
    let again = open(&dir);
    assert_eq!(state(&again), before, "the state read back differs");
    // It goes on from there: a counter's next point adds only what is new.
    again
        .store
        .record_sent(
            1_100,
            "svc",
            "requests",
            Kind::Counter,
            "d",
            "1",
            vec![counter("a", 200.0)],
        )
        .unwrap();
    let values = again.store.snapshot(1_100);
    let a = &values["requests"].series[&vec![("job".to_owned(), "a".to_owned())]];
    assert_eq!(*a, Value::Scalar(200.0));
}

#[test]
fn the_log_alone_rebuilds_the_state_and_a_snapshot_taken_under_way_changes_nothing() {
    let dir = tempdir("replay");
    let running = open(&dir);
    traffic(&running, 1_000);
    running.durable.snapshot().unwrap();
    traffic(&running, 1_060);
    // Every series silent since 1_119 goes, its columns with it, and the log says so; the one
    // written at 1_200 stays.
    running
        .store
        .record_sent(
            1_200,
            "svc",
            "queue",
            Kind::Gauge,
            "",
            "",
            vec![counter("b", 1.0)],
        )
        .unwrap();
    assert_eq!(running.store.retire_silent(1_150), 4);
    traffic(&running, 1_300);
    let before = state(&running);
    // As a SIGKILL after the log was written: no last snapshot.
    running.durable.abandon();
    drop(running);
    let again = open(&dir);
    assert_eq!(
        state(&again),
        before,
        "replaying the log gives another state"
    );
}

#[test]
fn a_metric_freed_by_retiring_its_last_series_stays_free_after_a_restart() {
    let send = |running: &Running, now: i64, name: &str| {
        running.store.record_sent(
            now,
            "svc",
            name,
            Kind::Counter,
            "",
            "",
            vec![counter("a", 1.0)],
        )
    };
    for clean in [true, false] {
        let dir = tempdir(if clean { "freed-clean" } else { "freed-log" });
        let running = open_with(&dir, 2);
        send(&running, 1_000, "a").unwrap();
        send(&running, 1_100, "b").unwrap();
        assert_eq!(running.store.retire_silent(1_050), 1);
        send(&running, 1_100, "c").unwrap();
        let before = state(&running);
        if clean {
            running.durable.close();
        } else {
            running.durable.abandon();
        }
        drop(running);
        let again = open_with(&dir, 2);
        assert_eq!(state(&again), before);
        assert!(again.store.family("a").is_none());
        assert!(
            matches!(
                send(&again, 1_200, "d"),
                Err((1, crate::store::Refused::SenderFamilies(..)))
            ),
            "the sender holds b and c: a third is refused (clean stop: {clean})"
        );
        assert_eq!(again.store.retire_silent(1_150), 2);
        send(&again, 1_200, "d").unwrap();
    }
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_record() {
    let dir = tempdir("torn");
    let running = open(&dir);
    traffic(&running, 1_000);
    let before = state(&running);
    running.durable.abandon();
    drop(running);
    // A record half written when the collector died, then garbage.
    let (_, last) = wal::segments(&dir).unwrap().pop().unwrap();
    let mut f = File::options().append(true).open(&last).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    let torn_len = f.metadata().unwrap().len();
    drop(f);
    let again = open(&dir);
    assert_eq!(state(&again), before);
    assert!(
        std::fs::metadata(&last).unwrap().len() < torn_len,
        "the tail is cut"
    );
    // New points after the cut are kept across the next restart.
    traffic(&again, 2_000);
    let after = state(&again);
    again.durable.abandon();
    drop(again);
    assert_eq!(state(&open(&dir)), after);
}

#[test]
fn a_snapshot_of_another_version_is_set_aside_and_the_collector_starts_empty() {
    let dir = tempdir("version");
    let running = open(&dir);
    traffic(&running, 1_000);
    running.durable.close();
    drop(running);
    let path = dir.join(snapshot::FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let again = open(&dir);
    assert!(again.store.families().is_empty());
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("set-aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "one folder holds the old files");
    assert!(aside[0].path().join(snapshot::FILE).exists());
}

#[test]
fn two_collectors_cannot_share_a_directory() {
    let dir = tempdir("lock");
    let _running = open(&dir);
    let err = Recovery::begin(options(&dir)).err().expect("refused");
    assert!(matches!(err, DurableError::InUse(_)), "{err}");
    assert!(err.to_string().contains("--data-dir"), "{err}");
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "collector-durable-{name}-{}-{}",
        std::process::id(),
        crate::otlp::unix_now()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

//! Group-commit throughput of the SQLite store: `cargo bench -p kflow-store`.
//!
//! Each commit is what an instance step typically writes: one history event, one work row added
//! and one removed (about 300 bytes of JSON). Commits are applied in batches of 1, 10 and 100
//! (one transaction per batch), in both durability modes, on a temporary file.
//!
//! `KFLOW_BENCH_MS` sets the time per configuration (default 2000), `KFLOW_BENCH_DIR` where the
//! temporary database goes (default: the system temp dir; pick the disk you care about). Run without `--bench`
//! (e.g. by `cargo test --benches`) it only does a short smoke run.

use std::time::{Duration, Instant};

use kflow_store::sqlite::{Durability, SqliteStore};
use kflow_store::{Commit, HistoryEvent, Instance, InstanceStatus, Store, WorkItem};
use serde_json::json;

const INSTANCES: usize = 1000;

struct Workload {
    /// Next history seq (and effect id) per instance.
    next: Vec<i64>,
    cursor: usize,
    payload: String,
}

impl Workload {
    fn commit(&mut self, now_ms: i64) -> Commit {
        let i = self.cursor % INSTANCES;
        self.cursor += 1;
        let seq = self.next[i];
        self.next[i] += 1;
        let id = instance_id(i);
        Commit {
            instance_id: id.clone(),
            history: vec![HistoryEvent {
                seq,
                time_ms: now_ms,
                kind: "delivery".into(),
                data: json!({"effect": seq - 1, "delivery": {"result": {"status": 200, "body": self.payload}}}),
            }],
            add_work: vec![WorkItem {
                instance_id: id,
                effect_id: seq as u64,
                task: "/do/1/call".into(),
                kind: "http".into(),
                effect: json!({"http": {"method": "get", "endpoint": "http://localhost:8080/pets/1"}}),
                due_ms: now_ms,
                attempts: 0,
            }],
            remove_work: vec![seq as u64 - 1],
            status: None,
            create: None,
            now_ms,
            ..Default::default()
        }
    }
}

fn instance_id(i: usize) -> String {
    format!("0190f5a4-7c4e-7b1a-9d7e-{i:012}")
}

fn setup(store: &SqliteStore) -> Workload {
    let creates: Vec<Commit> = (0..INSTANCES)
        .map(|i| {
            let id = instance_id(i);
            Commit {
                instance_id: id.clone(),
                create: Some(Instance {
                    id: id.clone(),
                    namespace: "bench".into(),
                    name: "flow".into(),
                    version: "1.0.0".into(),
                    status: InstanceStatus::Running,
                    input: json!({"n": i}),
                    output: None,
                    error: None,
                    created_ms: i as i64,
                    updated_ms: i as i64,
                    attention: None,
                }),
                history: vec![HistoryEvent {
                    seq: 1,
                    time_ms: 0,
                    kind: "started".into(),
                    data: json!({"n": i}),
                }],
                add_work: vec![WorkItem {
                    instance_id: id,
                    effect_id: 1,
                    task: "/do/0/call".into(),
                    kind: "http".into(),
                    effect: json!({}),
                    due_ms: 0,
                    attempts: 0,
                }],
                now_ms: 0,
                ..Default::default()
            }
        })
        .collect();
    store.apply(&creates).expect("setup");
    Workload {
        next: vec![2; INSTANCES],
        cursor: 0,
        payload: "x".repeat(175),
    }
}

struct Outcome {
    commits: u64,
    elapsed: Duration,
    worst: Duration,
}

fn run(durability: Durability, batch: usize, budget: Duration) -> Outcome {
    let dir = match std::env::var_os("KFLOW_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("bench.db"), durability).expect("open");
    let mut load = setup(&store);
    // Warm-up: statement caches, page cache, WAL file growth.
    for _ in 0..(200 / batch).max(2) {
        let commits: Vec<Commit> = (0..batch).map(|_| load.commit(1)).collect();
        store.apply(&commits).expect("apply");
    }
    let mut commits_done = 0u64;
    let mut worst = Duration::ZERO;
    // Only the time inside apply counts (not building the commits).
    let mut elapsed = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < budget {
        let commits: Vec<Commit> = (0..batch).map(|_| load.commit(2)).collect();
        let t = Instant::now();
        store.apply(&commits).expect("apply");
        let took = t.elapsed();
        elapsed += took;
        worst = worst.max(took);
        commits_done += batch as u64;
    }
    // Sanity: every instance has exactly one work row and a gap-free history.
    let probe = instance_id(0);
    assert_eq!(store.work_of(&probe).expect("work").len(), 1);
    assert_eq!(store.last_seq(&probe).expect("seq"), load.next[0] - 1);
    Outcome {
        commits: commits_done,
        elapsed,
        worst,
    }
}

fn main() {
    let full_run = std::env::args().any(|a| a == "--bench");
    let budget = if full_run {
        let ms = std::env::var("KFLOW_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        Duration::from_millis(ms)
    } else {
        Duration::from_millis(50)
    };
    let sample = Workload {
        next: vec![2; INSTANCES],
        cursor: 0,
        payload: "x".repeat(175),
    }
    .commit(0);
    let bytes = serde_json::to_string(&sample.history[0].data)
        .unwrap()
        .len()
        + serde_json::to_string(&sample.add_work[0].effect)
            .unwrap()
            .len();
    println!(
        "store bench: {INSTANCES} instances; each commit = 1 event + 1 work add + 1 work remove, {bytes} bytes of JSON"
    );
    println!(
        "{:<10} {:>6} {:>14} {:>12} {:>14} {:>12}",
        "durability", "batch", "commits/s", "batches/s", "mean/batch", "worst"
    );
    for durability in [Durability::Process, Durability::Full] {
        for batch in [1usize, 10, 100] {
            let o = run(durability, batch, budget);
            let secs = o.elapsed.as_secs_f64();
            let batches = o.commits as f64 / batch as f64;
            println!(
                "{:<10} {:>6} {:>14.0} {:>12.0} {:>11.3} ms {:>9.3} ms",
                format!("{durability:?}"),
                batch,
                o.commits as f64 / secs,
                batches / secs,
                secs * 1000.0 / batches,
                o.worst.as_secs_f64() * 1000.0,
            );
        }
    }
}

//! In-memory engine benchmark: the core driven by a host that answers every effect at once.
//!
//! `cargo bench -p kflow-core --bench engine` prints, for each workflow, the median time per
//! run, per task, and the heap allocations per task (counted by a wrapping global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

use kflow_core::{Command, Delivery, Effect, Instance, InstanceConfig, Status};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// The only unsafe code in kflow: a pass-through allocator that counts allocations.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn header(name: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: bench\n  name: {name}\n  version: '1.0.0'\ndo:\n"
    )
}

/// 40 sequential `set` tasks, each reading the previous output.
fn seq40() -> String {
    let mut s = header("seq40");
    for i in 0..40 {
        s.push_str(&format!(
            "  - step{i}:\n      set:\n        n: ${{ .n + 1 }}\n        last: step{i}\n"
        ));
    }
    s
}

/// 40 sequential `call http` tasks (answered at once by the in-memory host).
fn calls40() -> String {
    let mut s = header("calls40");
    for i in 0..40 {
        s.push_str(&format!(
            "  - call{i}:\n      call: http\n      with:\n        method: get\n        endpoint: http://svc/item/{i}\n"
        ));
    }
    s
}

/// A fork of 100 branches, each one `set` task, joined.
fn fork100() -> String {
    let mut s = header("fork100");
    s.push_str("  - fan:\n      fork:\n        branches:\n");
    for i in 0..100 {
        s.push_str(&format!("          - b{i}:\n              set:\n                b: {i}\n                n: ${{ .n }}\n"));
    }
    s
}

/// A `dag` (kflow extension) of 1,000 `call http` subtasks in 20 layers of 50; each subtask
/// of a layer needs two of the previous layer (1,950 edges).
fn dag1000() -> String {
    let mut s = header("dag1000");
    s.push_str("  - build:\n      dag:\n        tasks:\n");
    for layer in 0..20 {
        for i in 0..50 {
            s.push_str(&format!("          - t{layer}_{i}:\n"));
            if layer > 0 {
                s.push_str(&format!(
                    "              needs: [t{}_{i}, t{}_{}]\n",
                    layer - 1,
                    layer - 1,
                    (i + 1) % 50
                ));
            }
            s.push_str(&format!(
                "              call: http\n              with:\n                method: get\n                endpoint: http://svc/t{layer}_{i}\n"
            ));
        }
    }
    s
}

/// Runs one instance to completion, answering effects immediately.
fn run_once(wf: &Arc<kflow_dsl::Workflow>) -> Value {
    let cfg = InstanceConfig {
        id: "bench".into(),
        secrets: Value::Null,
        runtime: Value::Null,
        limits: Default::default(),
    };
    let mut inst = Instance::new(wf.clone(), cfg);
    let mut queue = Vec::new();
    let mut step = inst.start(json!({"n": 0}), 0);
    loop {
        for c in step.commands.drain(..) {
            if let Command::Start {
                id,
                effect: Effect::Http(_) | Effect::Timer { .. } | Effect::Yield,
                ..
            } = c
            {
                queue.push(id);
            }
        }
        if step.finished.is_some() {
            break;
        }
        let Some(id) = queue.pop() else { break };
        step = inst.deliver(id, Delivery::Result(Ok(json!({"ok": true}))), 0);
    }
    match inst.status() {
        Status::Completed(v) => v.clone(),
        other => panic!("bench workflow did not complete: {other:?}"),
    }
}

fn bench(name: &str, doc: &str, tasks: u64, iters: u32) {
    let wf = Arc::new(kflow_dsl::load(doc.as_bytes()).expect("bench workflow is valid"));
    for _ in 0..iters / 10 + 1 {
        run_once(&wf);
    }
    let mut times = Vec::with_capacity(iters as usize);
    let mut allocs = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        let a0 = ALLOCS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        std::hint::black_box(run_once(&wf));
        times.push(t0.elapsed().as_nanos() as u64);
        allocs.push(ALLOCS.load(Ordering::Relaxed) - a0);
    }
    times.sort_unstable();
    allocs.sort_unstable();
    let med = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "{name:<8} tasks={tasks:<4} median={:>9.1} µs/run  p99={:>9.1} µs/run  {:>6.2} µs/task  {:>6.0} allocs/task",
        med as f64 / 1e3,
        p99 as f64 / 1e3,
        med as f64 / 1e3 / tasks as f64,
        allocs[allocs.len() / 2] as f64 / tasks as f64,
    );
}

fn main() {
    // `cargo test` runs benches in test mode with `--bench` absent: keep that fast.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iters = if quick { 5 } else { 500 };
    bench("seq40", &seq40(), 40, iters);
    bench("calls40", &calls40(), 40, iters);
    bench("fork100", &fork100(), 101, iters);
    bench("dag1000", &dag1000(), 1001, iters / 5);
}

//! Critical-path-first against FIFO dispatch on the real server, with a real `kflow worker`
//! process: three DAGs of the simulation suite (`kflow_server::adaptive::sim::suite`, the
//! first of each of the shapes where the order matters: chain+fanout, map-reduce, long-tails),
//! as `dag` workflows whose tasks are calls to a local endpoint that sleeps the task's drawn
//! duration. The same DAG runs on queue `fifo` and on queue `cp` (`dispatch: {cp:
//! critical-path}`) after two runs of each taught the server the run times; the real gain is
//! set beside the simulated gain of the same durations on the same slots.
//!
//! `cargo bench -p kflow --bench dispatch [-- --quick]`

mod common;

use std::time::{Duration, Instant};

use common::{Client, answer_server, spawn};
use kflow_server::adaptive::sim::{Case, Order, lower_bound, makespan, suite};
use serde_json::json;

const SHAPES: [&str; 3] = ["chain+fanout", "map-reduce", "long-tails"];

/// A `dag` workflow of `case` on `queue`: task `tI` calls `/sleep/MS` and needs its
/// predecessors in the case's DAG.
fn dag_doc(name: &str, case: &Case, ms: &[u64], queue: &str, port: u16) -> String {
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); case.dag.len()];
    for (a, succ) in case.dag.succ.iter().enumerate() {
        for &b in succ {
            preds[b].push(a);
        }
    }
    let mut s = format!(
        "document: {{dsl: '1.0.0', namespace: bench, name: {name}, version: '1.0.0'}}\ndo:\n  - graph:\n      dag:\n        tasks:\n"
    );
    for (t, p) in preds.iter().enumerate() {
        s.push_str(&format!("          - t{t}:\n"));
        if !p.is_empty() {
            let needs: Vec<String> = p.iter().map(|p| format!("t{p}")).collect();
            s.push_str(&format!("              needs: [{}]\n", needs.join(", ")));
        }
        s.push_str(&format!(
            "              call: http\n              with: {{method: get, endpoint: 'http://127.0.0.1:{port}/sleep/{}'}}\n              metadata: {{kflow: {{queue: {queue}}}}}\n",
            ms[t]
        ));
    }
    s
}

/// Runs `name` to its end; its makespan (s, start to completion as the client sees it).
async fn run(c: &Client, name: &str) -> f64 {
    let t0 = Instant::now();
    let v = c
        .post(
            "/api/v1/instances",
            json!({"namespace": "bench", "name": name, "wait": true, "wait_seconds": 600}),
        )
        .await;
    assert_eq!(v["status"], "completed", "{name}: {v}");
    t0.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (scale_ms, runs) = if quick { (40.0, 1) } else { (100.0, 3) };
    let sleeper = answer_server(0);
    let (_server, c, dir) =
        common::server("dispatch", Some("dispatch: {cp: critical-path}\n")).await;
    println!(
        "{runs} run(s) per order after 2 to learn from; a duration unit is {scale_ms} ms\n\n\
         | DAG | tasks | slots | real FIFO | real critical-path | real gain | simulated FIFO | simulated critical-path | simulated gain | difference | bound |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut diffs = Vec::new();
    for shape in SHAPES {
        let Some(case) = suite().into_iter().find(|c| c.name.starts_with(shape)) else {
            continue;
        };
        let ms: Vec<u64> = case
            .draw(0)
            .iter()
            .map(|d| (d * scale_ms).round() as u64)
            .collect();
        let base_name = case.name.replace('+', "-");
        for q in ["fifo", "cp"] {
            let doc = dag_doc(&format!("{base_name}-{q}"), &case, &ms, q, sleeper);
            assert!(c.register(doc).await, "{base_name}-{q} registered");
        }
        let _worker = spawn(&[
            "worker",
            "--server",
            &c.base,
            "--queue",
            "fifo",
            "--queue",
            "cp",
            "--capacity",
            &format!("tasks={}", case.capacity),
        ]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..2 {
            for q in ["fifo", "cp"] {
                run(&c, &format!("{base_name}-{q}")).await;
            }
        }
        // Learned run times reach the store every 2 s.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let (mut fifo, mut cp) = (0.0, 0.0);
        for _ in 0..runs {
            fifo += run(&c, &format!("{base_name}-fifo")).await;
            cp += run(&c, &format!("{base_name}-cp")).await;
        }
        let (fifo, cp) = (fifo / runs as f64, cp / runs as f64);
        let d: Vec<f64> = ms.iter().map(|&m| m as f64 / 1e3).collect();
        let sim_fifo = makespan(&case.dag, &d, &d, case.capacity, Order::Fifo);
        let sim_cp = makespan(&case.dag, &d, &d, case.capacity, Order::CriticalPath);
        let gain = (1.0 - cp / fifo) * 100.0;
        let sim_gain = (1.0 - sim_cp / sim_fifo) * 100.0;
        diffs.push(gain - sim_gain);
        println!(
            "| {} | {} | {} | {fifo:.2} s | {cp:.2} s | {gain:.1}% | {sim_fifo:.2} s | {sim_cp:.2} s | {sim_gain:.1}% | {:+.1} points | {:.2} s |",
            case.name,
            case.dag.len(),
            case.capacity,
            gain - sim_gain,
            lower_bound(&case.dag, &d, case.capacity),
        );
    }
    let worst = diffs.iter().map(|d| d.abs()).fold(0.0_f64, f64::max);
    println!("\nlargest difference between the real and the simulated gain: {worst:.1} points");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Remote-worker benchmarks with real processes on loopback.
//!
//! `cargo bench -p kflow --bench workers [-- --quick]`
//!
//! Starts `kflow server` (release build) and 1, 2 and 4 `kflow worker` processes serving queue
//! `remote`; each instance is one `call http` to a local endpoint that answers at once. Prints
//! throughput, the server-side dispatch latency (ready → leased to a worker: p50/p99), the time
//! to detect a killed worker and queue its task again, and a 1,000-task DAG's run time.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Proc, answer_server, spawn};
use serde_json::json;

fn doc(name: &str, endpoint: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: bench\n  name: {name}\n  version: '1.0.0'\ndo:\n  - call:\n      metadata:\n        kflow:\n          queue: remote\n      call: http\n      with:\n        method: get\n        endpoint: {endpoint}\n"
    )
}

fn dag_doc(n: usize) -> String {
    // 10 layers of n/10 `set` tasks; each task of layer k needs two tasks of layer k-1.
    let per = n / 10;
    let mut s = String::from(
        "document:\n  dsl: '1.0.3'\n  namespace: bench\n  name: dag1000\n  version: '1.0.0'\ndo:\n  - graph:\n      dag:\n        tasks:\n",
    );
    for layer in 0..10 {
        for i in 0..per {
            s.push_str(&format!("          - t{layer}x{i}:\n"));
            if layer > 0 {
                s.push_str(&format!(
                    "              needs: [t{}x{}, t{}x{}]\n",
                    layer - 1,
                    i,
                    layer - 1,
                    (i + 1) % per
                ));
            }
            s.push_str(&format!("              set:\n                v: {i}\n"));
        }
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 300 } else { 2_000 };
    let (_server, c, dir) = common::server("wbench", None).await;
    let base = c.base.clone();
    let fast = answer_server(0);
    let slow = answer_server(5_000);
    assert!(
        c.register(doc("one", &format!("http://127.0.0.1:{fast}/x")))
            .await
    );
    assert!(
        c.register(doc("hold", &format!("http://127.0.0.1:{slow}/x")))
            .await
    );

    for workers in [1usize, 2, 4] {
        let procs: Vec<Proc> = (0..workers)
            .map(|_| {
                spawn(&[
                    "worker",
                    "--server",
                    &base,
                    "--queue",
                    "remote",
                    "--capacity",
                    "tasks=32",
                ])
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.get("/api/v1/queues?reset_latency=true").await;
        let t0 = Instant::now();
        let mut starters = Vec::new();
        for w in 0..8 {
            let c2 = Client {
                http: c.http.clone(),
                base: base.clone(),
            };
            starters.push(tokio::spawn(async move {
                for _ in 0..n / 8 {
                    c2.post(
                        "/api/v1/instances",
                        json!({"namespace": "bench", "name": "one", "input": {"w": w}}),
                    )
                    .await;
                }
            }));
        }
        for s in starters {
            let _ = s.await;
        }
        while c.running().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t0.elapsed().as_secs_f64();
        let q = c.get("/api/v1/queues?reset_latency=true").await;
        let sat = &q["dispatch_latency"];
        // Paced load, below saturation: 200 starts per second for 2 s.
        let paced = if quick { 100 } else { 400 };
        let t1 = Instant::now();
        for i in 0..paced {
            let due = Duration::from_millis(5 * i as u64);
            if let Some(wait) = due.checked_sub(t1.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            c.post(
                "/api/v1/instances",
                json!({"namespace": "bench", "name": "one", "input": {"p": i}}),
            )
            .await;
        }
        while c.running().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let q = c.get("/api/v1/queues?reset_latency=true").await;
        let lat = &q["dispatch_latency"];
        println!(
            "workers={workers}  {} instances (1 remote call each) as fast as possible: {took:.2} s = {:.0} tasks/s (dispatch latency p50={:.2} ms p99={:.2} ms at saturation); paced at 200/s: dispatch latency ready->leased p50={:.2} ms p99={:.2} ms ({} dispatches)",
            n / 8 * 8,
            (n / 8 * 8) as f64 / took,
            sat["p50_us"].as_f64().unwrap_or(0.0) / 1e3,
            sat["p99_us"].as_f64().unwrap_or(0.0) / 1e3,
            lat["p50_us"].as_f64().unwrap_or(0.0) / 1e3,
            lat["p99_us"].as_f64().unwrap_or(0.0) / 1e3,
            lat["count"]
        );
        drop(procs);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A worker killed mid-task: how long until its task is queued again.
    let mut victim = spawn(&[
        "worker",
        "--server",
        &base,
        "--queue",
        "remote",
        "--capacity",
        "tasks=1",
    ]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inst = c
        .post(
            "/api/v1/instances",
            json!({"namespace": "bench", "name": "hold"}),
        )
        .await;
    let id = inst["id"].as_str().unwrap_or_default().to_string();
    loop {
        let e = c.get(&format!("/api/v1/instances/{id}/explain")).await;
        if e.to_string().contains("running on worker") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = victim.0.kill();
    let killed = Instant::now();
    loop {
        let e = c.get(&format!("/api/v1/instances/{id}/explain")).await;
        if e.to_string().contains("queued") {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "never re-queued: {e}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "kill      a worker killed with SIGKILL mid-task: its task was queued again {:.0} ms later",
        killed.elapsed().as_secs_f64() * 1e3
    );
    let _ = c
        .post(&format!("/api/v1/instances/{id}/cancel"), json!({}))
        .await;

    // A DAG of 1,000 `set` tasks in 10 layers, in the server (start to completion).
    if c.register(dag_doc(1_000)).await {
        let t0 = Instant::now();
        let v = c
            .post(
                "/api/v1/instances",
                json!({"namespace": "bench", "name": "dag1000", "wait": true}),
            )
            .await;
        println!(
            "dag1000   a 1,000-task DAG ran to {} in {:.1} ms (start to completion over HTTP)",
            v["status"],
            t0.elapsed().as_secs_f64() * 1e3
        );
    } else {
        println!("dag1000   skipped: this build does not accept the dag extension");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

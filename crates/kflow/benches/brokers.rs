//! Events into workflows: the same CloudEvents, each starting one instance (`schedule.on`),
//! posted over the API (`POST /api/v1/events`, 8 clients at once) and taken from NATS
//! JetStream (`brokers:`; published by one client, every ack awaited). Each event is recorded
//! (the broker's once by source and id) and its instance committed before the event counts
//! as taken; the broker's message is acknowledged after that. Needs NATS on 127.0.0.1:4222.
//!
//! `cargo bench -p kflow --bench brokers [-- --quick]`

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Instances of `bb/on` that completed, from `/metrics`.
async fn completed(c: &common::Client) -> usize {
    let text = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find(|l| {
            l.starts_with("kflow_instances_finished_total")
                && l.contains("namespace=\"bb\"")
                && l.contains("status=\"completed\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0) as usize
}

async fn wait_for(c: &common::Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while completed(c).await < n {
        assert!(Instant::now() < deadline, "the instances did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn event(u: &str, i: usize) -> Value {
    json!({"specversion": "1.0", "id": format!("e{i}"), "source": "urn:bench",
           "type": format!("bench.order.{u}"), "data": {"i": i}})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = if std::env::args().any(|a| a == "--quick") {
        300
    } else {
        3_000
    };
    let u = format!("{:x}", std::process::id());
    let nats = match async_nats::connect("127.0.0.1:4222").await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("NATS on 127.0.0.1:4222 does not answer ({e}): nothing to measure");
            return;
        }
    };
    let js = async_nats::jetstream::new(nats);
    let config = format!(
        "brokers:\n  bus:\n    url: 'nats://127.0.0.1:4222'\n    consume:\n      stream: BENCH_{u}\n      subjects: ['bench.{u}.>']\n"
    );
    let (_server, c, dir) = common::server("brokers-bench", Some(&config)).await;
    assert!(
        c.register(format!(
            "document:\n  dsl: '1.0.3'\n  namespace: bb\n  name: on\n  version: '1.0.0'\n\
             schedule:\n  on:\n    one:\n      with:\n        type: bench.order.{u}\n\
             do:\n  - take:\n      set:\n        i: ${{ .[0].i }}\n"
        ))
        .await
    );
    // The consumer has created its stream once this answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.get_stream(format!("BENCH_{u}")).await.is_err() {
        assert!(Instant::now() < deadline, "the consumer did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. Over the API, 8 clients at once.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = common::Client::new(c.base.clone());
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                c.post("/api/v1/events", event(&u, i)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("poster");
    }
    wait_for(&c, n).await;
    let api = n as f64 / t.elapsed().as_secs_f64();

    // 2. From NATS JetStream: published back to back, every ack awaited.
    let t = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let body = serde_json::to_vec(&event(&u, n + i)).unwrap_or_default();
        acks.push(
            js.publish(format!("bench.{u}.order"), body.into())
                .await
                .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("the stream's ack");
    }
    let published = t.elapsed();
    wait_for(&c, 2 * n).await;
    let broker = n as f64 / t.elapsed().as_secs_f64();
    println!("{n} events, each starting an instance that completes:");
    println!("  POST /api/v1/events, 8 clients: {api:.0} events/s");
    println!(
        "  NATS JetStream (published in {:.2} s): {broker:.0} events/s",
        published.as_secs_f64()
    );
    println!("  broker / API: {:.2}", broker / api);
    let _ = js.delete_stream(format!("BENCH_{u}")).await;
    let _ = std::fs::remove_dir_all(dir);
}

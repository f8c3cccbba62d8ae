//! Named services: what resolution, balancing and the circuit breaker add to a call, and how
//! fast a dead endpoint is left behind.
//!
//! `cargo bench -p kflow-tasks --bench services`
//!
//! 1. 200,000 calls through `begin` → pick → `finish` (resolution, balancing over three
//!    endpoints, circuit and retry-budget checks, the endpoint's accounting), no I/O: the
//!    cost per call, for each balancing rule.
//! 2. The executor calls `service://s/x` on a service of two endpoints, the first one dead (a
//!    closed port on loopback), the second a local server: the first call finds the dead one,
//!    goes on to the live one, and every later call skips it. Prints the first call's time, the
//!    median of the others, and how many calls the dead endpoint got.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kflow_effects::Effect;
use kflow_effects::effect::HttpRequest;
use kflow_tasks::services::{Registry, ServiceSpec};
use kflow_tasks::{EffectCtx, ExecConfig, Executor};

fn registry(spec: serde_json::Value) -> Registry {
    let specs: BTreeMap<String, ServiceSpec> = serde_json::from_value(spec).expect("spec");
    Registry::new(specs).expect("valid")
}

fn live_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                // Keep-alive: answer every request on the connection.
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                    );
                }
            });
        }
    });
    port
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = 200_000u32;
    for balance in ["round-robin", "least-outstanding", "peak-ewma"] {
        let r = registry(serde_json::json!({"s": {
            "endpoints": ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"],
            "balance": balance, "bulkhead": 1000}}));
        let target = kflow_tasks::services::parse_target("service://s/v1/charge?x=1").expect("url");
        let t0 = Instant::now();
        for i in 0..n {
            let mut c = r
                .begin_for_bench("s", "inst", if i % 2 == 0 { "a" } else { "b" })
                .await
                .expect("admitted");
            std::hint::black_box(c.next_url(&target).expect("an endpoint"));
            c.finish(false);
        }
        let per = t0.elapsed().as_secs_f64() / n as f64 * 1e9;
        println!(
            "overhead  {balance:<17} {per:.0} ns per call (resolution, balancing, circuit, retry budget, bulkhead, accounting)"
        );
    }

    let dead = closed_port();
    let live = live_server();
    let r = Arc::new(registry(serde_json::json!({"s": {
        "endpoints": [format!("http://127.0.0.1:{dead}"), format!("http://127.0.0.1:{live}")]}})));
    let exec = Executor::new(ExecConfig {
        services: r.clone(),
        ..ExecConfig::default()
    });
    let effect = Effect::Http(HttpRequest {
        method: "get".into(),
        uri: "service://s/x".into(),
        headers: Default::default(),
        query: Default::default(),
        body: None,
        output: Default::default(),
        redirect: false,
        auth: None,
    });
    // Warm the HTTP client (its pool and resolver) with a direct call to the live endpoint.
    let warm = Effect::Http(HttpRequest {
        uri: format!("http://127.0.0.1:{live}/warm"),
        ..match &effect {
            Effect::Http(h) => h.clone(),
            _ => unreachable!("an http effect"),
        }
    });
    let ctx = |i: u64| EffectCtx {
        instance_id: format!("i{i}"),
        effect_id: i,
        task: "/do/0/t".into(),
        attempt: 1,
        namespace: String::new(),
        limits: Default::default(),
        traceparent: None,
    };
    exec.perform(&ctx(999), &warm).await.expect("warm");
    let mut times = Vec::new();
    for i in 0..200u64 {
        let t0 = Instant::now();
        exec.perform(&ctx(i), &effect).await.expect("served");
        times.push(t0.elapsed());
    }
    let first = times[0];
    let mut rest: Vec<Duration> = times[1..].to_vec();
    rest.sort();
    let median = rest[rest.len() / 2];
    let v = &r.views()[0];
    let dead_calls = v.endpoints[0].calls;
    println!(
        "failover  first call after warm-up (found the dead endpoint, went on to the live one): {:.2} ms; the other 199: median {:.3} ms; the dead endpoint got {dead_calls} call(s), failovers {}; it was out of rotation at the failed connect itself (0 ms later)",
        first.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        v.totals.failovers
    );
}

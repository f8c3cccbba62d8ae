//! Goodput of the adaptive concurrency limit toward a host against fixed limits, on the real
//! server: a local service that serves `N = 4` calls at once well, and 400 instances of one
//! call each started together. Two kinds of service:
//!
//! - `thrashing`: every call takes 20 ms × (calls in flight ÷ 4)² once more than 4 are in
//!   flight (the service slows down for everyone, as one short of memory or locks does);
//! - `queueing`: 4 calls are served at once in 20 ms each, the others wait their turn, and
//!   a call that waited 100 ms is refused with 503 (a load-shedding service).
//!
//! Goodput is the calls that succeeded per second, from the first start to the last end. A
//! fixed limit is `adaptive_concurrency` with min = initial = max.
//!
//! `cargo bench -p kflow --bench adaptive [-- --quick]`

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const N: usize = 4;
const BASE_MS: f64 = 20.0;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Thrashing,
    Queueing,
}

/// The service of `kind`; its port.
fn service(kind: Kind) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let in_flight = Arc::new(AtomicUsize::new(0));
    // Queueing: free seats, and a condition to wait on.
    let seats = Arc::new((Mutex::new(N), Condvar::new()));
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (in_flight, seats) = (in_flight.clone(), seats.clone());
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let status = match kind {
                    Kind::Thrashing => {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        let over = (now as f64 / N as f64).max(1.0);
                        std::thread::sleep(Duration::from_secs_f64(BASE_MS * over * over / 1e3));
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        "200 OK"
                    }
                    Kind::Queueing => {
                        let (m, cv) = &*seats;
                        let free = m.lock().unwrap_or_else(|p| p.into_inner());
                        let (mut free, timeout) = cv
                            .wait_timeout_while(free, Duration::from_millis(100), |f| *f == 0)
                            .unwrap_or_else(|p| p.into_inner());
                        if timeout.timed_out() && *free == 0 {
                            "503 Service Unavailable"
                        } else {
                            *free -= 1;
                            drop(free);
                            std::thread::sleep(Duration::from_secs_f64(BASE_MS / 1e3));
                            *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                            cv.notify_one();
                            "200 OK"
                        }
                    }
                };
                let body = b"{\"ok\":true}";
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body);
            });
        }
    });
    port
}

/// Runs `calls` instances of one call each against `port` on a server with `limits`; (good
/// calls per second, failed calls, the limit at the end).
async fn goodput(port: u16, limits: &str, calls: usize) -> (f64, usize, f64) {
    let config = format!("adaptive_concurrency: {{hosts: ['*'], {limits}}}\n");
    let (_server, c, dir) = common::server("adaptive", Some(&config)).await;
    let doc = format!(
        "document: {{dsl: '1.0.0', namespace: bench, name: hit, version: '1.0.0'}}\ndo:\n  - call:\n      call: http\n      with: {{method: get, endpoint: 'http://127.0.0.1:{port}/x'}}\n"
    );
    assert!(c.register(doc).await, "registered");
    let c = Arc::new(c);
    let t0 = Instant::now();
    let mut starters = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        starters.push(tokio::spawn(async move {
            for i in 0..calls / 8 {
                c.post(
                    "/api/v1/instances",
                    json!({"namespace": "bench", "name": "hit", "input": {"w": w, "i": i}}),
                )
                .await;
            }
        }));
    }
    for s in starters {
        let _ = s.await;
    }
    while c.running().await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    let done = c.get("/api/v1/instances?status=completed&limit=1000").await;
    let good = done["items"].as_array().map(Vec::len).unwrap_or(0);
    let q = c.get("/api/v1/queues").await;
    let limit = q["hosts"][0]["limit"].as_f64().unwrap_or(f64::NAN);
    let _ = std::fs::remove_dir_all(&dir);
    (good as f64 / took, calls / 8 * 8 - good, limit)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 160 } else { 400 };
    let fixed: &[usize] = if quick {
        &[2, 4, 8]
    } else {
        &[1, 2, 3, 4, 5, 6, 8, 12, 16]
    };
    for (kind, name) in [(Kind::Thrashing, "thrashing"), (Kind::Queueing, "queueing")] {
        let port = service(kind);
        println!("\n{name} service (serves {N} at once well), {calls} calls\n");
        println!("| limit | good calls/s | failed | limit at the end |");
        println!("| --- | --- | --- | --- |");
        let mut best = (0.0_f64, 0);
        for &l in fixed {
            let (g, failed, _) =
                goodput(port, &format!("initial: {l}, min: {l}, max: {l}"), calls).await;
            println!("| fixed {l} | {g:.1} | {failed} | {l} |");
            if g > best.0 {
                best = (g, l);
            }
        }
        let (g, failed, limit) = goodput(port, "initial: 2, min: 1, max: 256", calls).await;
        println!("| adaptive | {g:.1} | {failed} | {limit:.2} |");
        println!(
            "\n{name}: adaptive goodput is {:.0}% of the best fixed limit ({}: {:.1} calls/s)",
            g / best.0 * 100.0,
            best.1,
            best.0
        );
    }
}

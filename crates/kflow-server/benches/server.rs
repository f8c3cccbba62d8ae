//! Server benchmarks over HTTP on loopback, SQLite store in a temporary directory.
//!
//! `cargo bench -p kflow-server --bench server [-- --durability full] [-- --quick] [-- --watchers]
//! [-- --traces] [-- --postgres] [-- --nodes N]` (`--traces`: every ended instance's spans exported
//! over OTLP to a local collector stand-in, the cost of tracing with export on; `--nodes N`: only
//! the load, on N active nodes sharing one PostgreSQL database)
//!
//! Starts the real API router and engine in-process on 127.0.0.1, plus a local endpoint that
//! answers at once, and measures what BENCHMARKS.md lists: seq40, set40, fanout100 (start to
//! completion, one instance at a time), 10,000 instances of a 5-call workflow started as fast
//! as possible (time to all done, durable steps per second, start latency p50/p99, peak RSS),
//! the same beside 2,000 idle live watchers (`--watchers`: only that and its baseline),
//! and 100,000 instances waiting on a one-hour timer (RSS, restart time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kflow_server::api::{ApiConfig, router};
use kflow_server::engine::{Engine, EngineConfig};
use kflow_store::sqlite::Durability;

/// A `/proc/self/status` figure in MiB (`VmRSS` now, `VmHWM` the peak).
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

fn doc(name: &str, body: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: bench\n  name: {name}\n  version: '1.0.0'\ndo:\n{body}"
    )
}

fn calls(n: usize, endpoint: &str) -> String {
    (0..n)
        .map(|i| format!("  - c{i}:\n      call: http\n      with:\n        method: get\n        endpoint: {endpoint}\n"))
        .collect()
}

fn sets(n: usize) -> String {
    (0..n)
        .map(|i| format!("  - s{i}:\n      set:\n        n: ${{ .n + 1 }}\n"))
        .collect()
}

fn fanout(n: usize, endpoint: &str) -> String {
    let mut s = String::from("  - fan:\n      fork:\n        branches:\n");
    for i in 0..n {
        s.push_str(&format!(
            "          - b{i}:\n              call: http\n              with:\n                method: get\n                endpoint: {endpoint}\n"
        ));
    }
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Bench {
    api: String,
    http: reqwest::Client,
}

impl Bench {
    async fn register(&self, text: String) {
        let r = self
            .http
            .post(format!("{}/api/v1/definitions", self.api))
            .body(text)
            .send()
            .await
            .expect("register");
        assert!(
            r.status().is_success(),
            "register failed: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Starts an instance and waits for it to finish; returns the final instance JSON.
    async fn run(&self, name: &str, input: Value) -> Value {
        let body = json!({"namespace": "bench", "name": name, "input": input, "wait": true});
        let r = self
            .http
            .post(format!("{}/api/v1/instances", self.api))
            .json(&body)
            .send()
            .await
            .expect("start");
        r.json().await.expect("json")
    }

    async fn start(&self, name: &str, input: Value) -> String {
        let body = json!({"namespace": "bench", "name": name, "input": input});
        let r = self
            .http
            .post(format!("{}/api/v1/instances", self.api))
            .json(&body)
            .send()
            .await
            .expect("start");
        let v: Value = r.json().await.expect("json");
        v["id"].as_str().unwrap_or_default().to_string()
    }

    async fn series(&self, label: &str, name: &str, runs: usize, tasks: usize) {
        self.run(name, json!({"n": 0})).await; // warm-up: compile, caches
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let v = self.run(name, json!({"n": 0})).await;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(v["status"], "completed", "{v}");
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{label:<10} tasks={tasks:<4} median={:>7.2} ms  p99={:>7.2} ms  ({runs} runs, start to completion over HTTP)",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99)
        );
    }
}

async fn answer_server() -> String {
    let hits = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/ok",
        axum::routing::get(move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({"ok": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/ok")
}

/// A collector stand-in for `--traces`: accepts OTLP/HTTP JSON batches, counts them.
async fn collector(batches: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let batches = batches.clone();
            async move {
                // Counts spans: one `spanId` per span.
                let n = body.windows(8).filter(|w| w == b"\"spanId\"").count();
                batches.fetch_add(n as u64, Ordering::Relaxed);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The databases of `--postgres` runs, dropped when the bench ends.
static BENCH_DBS: std::sync::Mutex<Vec<kflow_store_pg::testing::TestDb>> =
    std::sync::Mutex::new(Vec::new());

/// The token every request carries with `--auth`.
const BENCH_TOKEN: &str = "kflow-bench-admin-token-0123456789abcdef";

async fn start_server(
    dir: &std::path::Path,
    durability: Durability,
    auth: bool,
) -> (Engine, String) {
    let cfg = EngineConfig {
        data_dir: dir.to_path_buf(),
        durability,
        // `--encrypt`: workflow data sealed at rest.
        encrypt_data: std::env::args().any(|a| a == "--encrypt"),
        // The load generator is one client: let it open all its watchers.
        watch_limits: kflow_server::engine::live::WatchLimits {
            total: 10_000,
            per_client: 10_000,
        },
        // `--postgres`: a fresh PostgreSQL database (KFLOW_TEST_POSTGRES or the local
        // server), its lease taken, every commit fenced, as a `kflow server --db` node runs.
        database: std::env::args().any(|a| a == "--postgres").then(|| {
            let db = kflow_store_pg::testing::TestDb::create("server bench")
                .expect("--postgres: no PostgreSQL server");
            let store = kflow_store_pg::PgStore::open(&kflow_store_pg::PgOptions::new(&db.url))
                .expect("open the bench database");
            let fence = store
                .join("bench", "bench", None, 600_000)
                .expect("join the database as a node");
            store.set_fence(Some(fence));
            // Dropped (with the database) at the end of `main`.
            BENCH_DBS.lock().unwrap_or_else(|p| p.into_inner()).push(db);
            Arc::new(store)
        }),
        ..EngineConfig::default()
    };
    let engine = Engine::open(cfg).await.expect("engine");
    let api = if auth {
        let tokens =
            kflow_server::auth::Tokens::load(engine.store(), Some(BENCH_TOKEN)).expect("tokens");
        ApiConfig {
            auth: kflow_server::auth::AuthMode::Tokens(Arc::new(tokens)),
            ..ApiConfig::default()
        }
    } else {
        ApiConfig::default()
    };
    let app = router(engine.clone(), api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (engine, format!("http://{addr}"))
}

/// Starts `n` instances of the 5-call workflow from `clients` concurrent clients, waits for all.
async fn load(b: &Arc<Bench>, engine: &Engine, n: usize, clients: usize) {
    let t0 = Instant::now();
    let per = n / clients;
    let mut handles = Vec::new();
    for w in 0..clients {
        let b = b.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            let mut ids = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                ids.push(b.start("five", json!({"i": w * per + i})).await);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            (lat, ids)
        }));
    }
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    for h in handles {
        let (l, i) = h.await.expect("starter");
        lat.extend(l);
        ids.extend(i);
    }
    let started = t0.elapsed();
    for id in &ids {
        let v = engine
            .wait_finished(id, Duration::from_secs(600))
            .await
            .expect("wait");
        assert_eq!(v.instance.status.as_str(), "completed");
    }
    let done = t0.elapsed();
    lat.sort_by(|a, b| a.total_cmp(b));
    let steps = (ids.len() * 5) as f64;
    println!(
        "load      {} instances x 5 calls, {clients} clients: all started in {:.2} s, all done in {:.2} s, {:.0} durable steps/s, start latency p50={:.2} ms p99={:.2} ms, peak RSS {:.0} MiB",
        ids.len(),
        started.as_secs_f64(),
        done.as_secs_f64(),
        steps / done.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        peak_rss_mib()
    );
}

/// `--nodes N` (PostgreSQL): N nodes in this process, each with its own pool, lease, engine and
/// API on one fresh database, as N `kflow server --db` nodes; 8 clients start 10,000 five-call
/// instances, client `w` through node `w % N` (which drives what it starts).
async fn cluster_load(nodes: usize, endpoint: &str, n: usize) {
    let db = kflow_store_pg::testing::TestDb::create("server bench cluster")
        .expect("--nodes: no PostgreSQL server");
    let dir = std::env::temp_dir().join(format!("kflow-bench-nodes-{}", std::process::id()));
    let mut engines = Vec::new();
    let mut benches = Vec::new();
    for i in 0..nodes {
        let store = kflow_store_pg::PgStore::open(&kflow_store_pg::PgOptions::new(&db.url))
            .expect("open the bench database");
        let fence = store
            .join(&format!("bench-{i}"), "bench", None, 600_000)
            .expect("join the database as a node");
        store.set_fence(Some(fence));
        let engine = Engine::open(EngineConfig {
            // The master key file is shared: one directory for all.
            data_dir: dir.clone(),
            database: Some(Arc::new(store)),
            cluster: true,
            ..EngineConfig::default()
        })
        .await
        .expect("engine");
        let app = router(engine.clone(), ApiConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        engines.push(engine);
        benches.push(Arc::new(Bench {
            api: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }));
    }
    benches[0].register(doc("five", &calls(5, endpoint))).await;
    let clients = 8;
    let per = n / clients;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for w in 0..clients {
        let (b, engine) = (benches[w % nodes].clone(), engines[w % nodes].clone());
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per);
            for i in 0..per {
                ids.push(b.start("five", json!({"i": w * per + i})).await);
            }
            for id in &ids {
                let v = engine
                    .wait_finished(id, Duration::from_secs(600))
                    .await
                    .expect("wait");
                assert_eq!(v.instance.status.as_str(), "completed");
            }
            ids.len()
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await.expect("client");
    }
    let took = t0.elapsed().as_secs_f64();
    println!(
        "nodes={nodes} load {done} instances x 5 calls, 8 clients: all done in {took:.2} s, {:.0} durable steps/s, peak RSS {:.0} MiB (all nodes in this process)",
        (done * 5) as f64 / took,
        peak_rss_mib()
    );
    for e in &engines {
        e.shutdown(Duration::from_secs(5)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(db);
}

/// `n` idle live watchers (one SSE stream per waiting instance, never read), then the
/// 8-client load beside them; then the watchers close and their memory should go.
async fn watchers(b: &Arc<Bench>, engine: &Engine, n: usize, load_n: usize) {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(b.start("sleeper", json!({})).await);
    }
    let before = rss_mib();
    let mut streams = Vec::with_capacity(n);
    for id in &ids {
        let r = b
            .http
            .get(format!("{}/api/v1/instances/{id}/watch", b.api))
            .send()
            .await
            .expect("watch");
        assert!(r.status().is_success(), "watch: {}", r.status());
        streams.push(r);
    }
    let open = engine.watchers();
    let with = rss_mib();
    load(b, engine, load_n, 8).await;
    drop(streams);
    let t0 = Instant::now();
    while engine.watchers() > 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "watchers  {open} idle watchers open: RSS {before:.0} -> {with:.0} MiB; after closing them: {} left, RSS {:.0} MiB",
        engine.watchers(),
        rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test` builds benches; only `cargo bench` runs them
    }
    let durability = if args.iter().any(|a| a == "full") {
        Durability::Full
    } else {
        Durability::Process
    };
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("kflow-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let endpoint = answer_server().await;
        if let Some(i) = args.iter().position(|a| a == "--nodes") {
            let nodes: usize = args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .filter(|n| (1..=16).contains(n))
                .expect("--nodes N (1 to 16)");
            cluster_load(nodes, &endpoint, if quick { 1_000 } else { 10_000 }).await;
            return;
        }
        // `--auth`: every request carries a bearer token the server checks (audit is always on).
        let auth = args.iter().any(|a| a == "--auth");
        let (engine, api) = start_server(&dir, durability, auth).await;
        let traces = args.iter().any(|a| a == "--traces");
        let exported = Arc::new(AtomicU64::new(0));
        if traces {
            let url = collector(exported.clone()).await;
            kflow_server::traces::Exporter::new(
                engine.clone(),
                &kflow_server::traces::TracingConfig {
                    otlp_endpoint: Some(url),
                    service_name: None,
                },
            )
            .expect("exporter")
            .expect("configured")
            .spawn();
        }
        println!(
            "durability={durability:?} auth={auth} traces={traces} data={}",
            dir.display()
        );
        let mut headers = reqwest::header::HeaderMap::new();
        if auth {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {BENCH_TOKEN}").parse().expect("header"),
            );
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client");
        let b = Bench { api, http };
        b.register(doc("seq40", &calls(40, &endpoint))).await;
        b.register(doc("set40", &sets(40))).await;
        b.register(doc("fanout100", &fanout(100, &endpoint))).await;
        b.register(doc("five", &calls(5, &endpoint))).await;
        b.register(doc("sleeper", "  - nap:\n      wait: PT1H\n")).await;
        let runs = if quick { 5 } else { 50 };
        let only_watchers = args.iter().any(|a| a == "--watchers");
        // `--latency`: the three per-workflow series and one load run (8 clients), nothing else.
        let latency_only = args.iter().any(|a| a == "--latency");
        if !only_watchers {
            b.series("seq40", "seq40", runs, 40).await;
            b.series("set40", "set40", runs, 40).await;
            b.series("fanout100", "fanout100", runs, 101).await;
        }

        // 10,000 instances of a 5-call workflow, started as fast as possible by N clients.
        let n = if quick { 1_000 } else { 10_000 };
        let b = Arc::new(b);
        for clients in [8usize, 32] {
            if (only_watchers || latency_only) && clients != 8 {
                continue;
            }
            load(&b, &engine, n, clients).await;
        }
        if traces {
            tokio::time::sleep(Duration::from_secs(2)).await;
            println!(
                "traces: {} spans exported",
                exported.load(Ordering::Relaxed)
            );
        }
        if latency_only {
            engine.shutdown(Duration::from_secs(5)).await;
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        // The same beside 2,000 idle live watchers of other instances.
        watchers(&b, &engine, if quick { 200 } else { 2_000 }, n).await;
        if only_watchers {
            engine.shutdown(Duration::from_secs(5)).await;
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }

        // 100,000 instances waiting on a one-hour timer.
        let n = if quick { 5_000 } else { 100_000 };
        let before = rss_mib();
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..32 {
            let b = b.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..n / 32 {
                    b.start("sleeper", json!({})).await;
                }
            }));
        }
        for h in handles {
            h.await.expect("starter");
        }
        println!(
            "waiting   {} instances on a 1 h timer started in {:.1} s; RSS {:.0} MiB (was {:.0} MiB before)",
            n / 32 * 32,
            t0.elapsed().as_secs_f64(),
            rss_mib(),
            before
        );
        engine.shutdown(Duration::from_secs(5)).await;
        let t0 = Instant::now();
        let (engine2, _api2) = start_server(&dir, durability, auth).await;
        println!("restart   engine reopened with those instances in {:.0} ms; RSS {:.0} MiB", t0.elapsed().as_secs_f64() * 1e3, rss_mib());
        engine2.shutdown(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
    BENCH_DBS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

//! Named services on the real server (issue 12): `service://billing/work` over three real
//! endpoints on loopback. One is killed mid-load and one made slow: calls fail over and no call
//! is lost. Then the endpoints fail: the circuit opens (calls fail fast with a `Circuit Open`
//! error the workflow sees), and closes again once they recover. `kflow services` shows it.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{ServerProcess, TempDir, TestServer, get_json, post_json};

/// One endpoint of the service: answers `/work` in 20 ms (200 ms when slow, 500 when failing),
/// `/health` with 200; records when it served `/work`.
struct Endpoint {
    server: Option<TestServer>,
    slow: Arc<AtomicBool>,
    failing: Arc<AtomicBool>,
}

fn endpoint(name: &'static str, log: Arc<Mutex<Vec<(&'static str, Instant)>>>) -> Endpoint {
    let slow = Arc::new(AtomicBool::new(false));
    let failing = Arc::new(AtomicBool::new(false));
    let (s, f) = (slow.clone(), failing.clone());
    let server = TestServer::start_with(move |r| match r.path() {
        "/health" => Some((200, json!({"ok": true}))),
        "/work" => {
            let ms = if s.load(Ordering::SeqCst) { 200 } else { 20 };
            std::thread::sleep(Duration::from_millis(ms));
            log.lock().unwrap().push((name, Instant::now()));
            if f.load(Ordering::SeqCst) {
                Some((500, json!({"error": "down for maintenance"})))
            } else {
                Some((200, json!({"served_by": name})))
            }
        }
        _ => None,
    });
    Endpoint {
        server: Some(server),
        slow,
        failing,
    }
}

fn status_of(base: &str, id: &str) -> serde_json::Value {
    get_json(base, &format!("/api/v1/instances/{id}"))
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn wait_ended(base: &str, ids: &[String]) -> Vec<serde_json::Value> {
    ids.iter()
        .map(|id| {
            support::poll_until(Duration::from_secs(60), Duration::from_millis(20), || {
                let v = status_of(base, id);
                matches!(v["status"].as_str(), Some("completed" | "faulted")).then_some(v)
            })
            .unwrap_or_else(|| panic!("{id} ended"))
        })
        .collect()
}

fn start(base: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (code, v) = post_json(
                base,
                "/api/v1/instances",
                &json!({"namespace": "svc", "name": "bill"}),
            )
            .expect("start");
            assert!(code < 300, "{v}");
            v["id"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn calls_fail_over_and_the_circuit_opens_and_closes() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut a = endpoint("a", log.clone());
    let b = endpoint("b", log.clone());
    let c = endpoint("c", log.clone());
    let url = |e: &Endpoint| e.server.as_ref().map(|s| s.base()).unwrap_or_default();
    let dir = TempDir::new("services");
    let config = dir.write(
        "kflow.yaml",
        format!(
            "services:\n  billing:\n    endpoints: ['{}', '{}', '{}']\n    balance: peak-ewma\n    \
             health: {{path: /health, interval_ms: 100, timeout_ms: 200}}\n    \
             circuit: {{failure_rate: 0.5, min_calls: 6, window_seconds: 1, open_seconds: 1}}\n    \
             retry_budget: {{ratio: 1.0, min_per_second: 100}}\n",
            url(&a),
            url(&b),
            url(&c)
        ),
    );
    let config = config.to_string_lossy().into_owned();
    let server = ServerProcess::start(&dir.path().join("data"), &["--config", &config]);
    let base = server.base();
    support::register(
        &base,
        "document: {dsl: '1.0.0', namespace: svc, name: bill, version: '1.0.0'}\n\
         do:\n  - charge:\n      call: http\n      with: {method: get, endpoint: 'service://billing/work'}\n",
    );

    // A service the config does not name: refused at registration, with its place.
    let typo = "document: {dsl: '1.0.0', namespace: svc, name: typo, version: '1.0.0'}\n\
         do:\n  - charge:\n      call: http\n      with: {method: get, endpoint: 'service://biling/work'}\n";
    let r = support::http_request(
        "POST",
        &base,
        "/api/v1/definitions",
        Some(("application/yaml", typo.as_bytes())),
        Duration::from_secs(30),
    )
    .expect("register");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains(
            "5:38: service://biling is not a service of this server's config (services: billing)"
        ),
        "{}",
        r.text()
    );

    // Load; mid-way a is killed and b turns slow.
    let mut ids = start(&base, 30);
    std::thread::sleep(Duration::from_millis(150));
    a.server = None;
    b.slow.store(true, Ordering::SeqCst);
    let killed = Instant::now();
    // Paced: about 5 calls every 30 ms for 1.2 s.
    for _ in 0..40 {
        ids.extend(start(&base, 5));
        std::thread::sleep(Duration::from_millis(30));
    }
    let ended = wait_ended(&base, &ids);
    let done = ended.iter().filter(|v| v["status"] == "completed").count();
    assert_eq!(
        done,
        ids.len(),
        "no call lost: {:?}",
        ended.iter().find(|v| v["status"] != "completed")
    );
    let after: Vec<&str> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| *t > killed + Duration::from_millis(300))
        .map(|(n, _)| *n)
        .collect();
    let count = |n: &str| after.iter().filter(|x| **x == n).count();
    eprintln!(
        "after the kill: a {} b (slow) {} c {}",
        count("a"),
        count("b"),
        count("c")
    );
    assert_eq!(count("a"), 0, "the killed endpoint is out of rotation");
    assert!(
        count("c") > count("b"),
        "the slow endpoint gets less: {after:?}"
    );
    let (_, s) = get_json(&base, "/api/v1/services").expect("services");
    let svc = &s["items"][0];
    assert_eq!(svc["circuit"], "closed", "{s}");
    assert!(
        svc["endpoints"].as_array().is_some_and(|e| e
            .iter()
            .filter(|e| e["healthy"] == false)
            .count()
            == 1),
        "one endpoint down: {s}"
    );

    // Every endpoint fails: the circuit opens (once the successes have slid out of its
    // one-second window), and calls fail fast.
    std::thread::sleep(Duration::from_millis(1_100));
    b.failing.store(true, Ordering::SeqCst);
    c.failing.store(true, Ordering::SeqCst);
    let mut ended = wait_ended(&base, &start(&base, 8));
    ended.extend(wait_ended(&base, &start(&base, 12)));
    let titles: Vec<String> = ended
        .iter()
        .map(|v| v["error"]["title"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(ended.iter().all(|v| v["status"] == "faulted"), "{titles:?}");
    let fast = titles.iter().filter(|t| *t == "Circuit Open").count();
    assert!(
        fast >= 10,
        "most fail fast once the circuit is open: {titles:?}"
    );
    let (_, s) = get_json(&base, "/api/v1/services").expect("services");
    assert!(s["items"][0]["circuit_opened"].as_u64() >= Some(1), "{s}");
    assert!(s["items"][0]["rejected_open"].as_u64() >= Some(10), "{s}");
    let out = support::kflow(["services"])
        .env("KFLOW_SERVER", &base)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("billing") && out.stdout.contains("open"),
        "{}",
        out.stdout
    );
    // A workflow catches the open circuit by its title and falls back.
    support::register(
        &base,
        "document: {dsl: '1.0.0', namespace: svc, name: guarded, version: '1.0.0'}\n\
         do:\n  - charge:\n      try:\n        - call:\n            call: http\n            \
         with: {method: get, endpoint: 'service://billing/work'}\n      catch:\n        \
         errors:\n          with: {type: communication, status: 503, title: Circuit Open}\n        \
         do:\n          - fallback: {set: {queued_for_later: true}}\n",
    );
    let (_, v) = post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "svc", "name": "guarded", "wait": true}),
    )
    .expect("run");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["output"]["queued_for_later"], true, "{v}");

    let metrics = support::http_request("GET", &base, "/metrics", None, Duration::from_secs(10))
        .expect("metrics")
        .text();
    assert!(
        metrics.contains("service_circuit_state{service=\"billing\"} 1")
            && metrics
                .contains("service_calls_total{service=\"billing\",outcome=\"refused_open\"}"),
        "{metrics}"
    );

    // They recover: after open_seconds one probe goes through and closes the circuit.
    b.failing.store(false, Ordering::SeqCst);
    c.failing.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1_100));
    let ended = wait_ended(&base, &start(&base, 1));
    assert_eq!(ended[0]["status"], "completed", "{}", ended[0]);
    let ended = wait_ended(&base, &start(&base, 10));
    assert!(ended.iter().all(|v| v["status"] == "completed"));
    let (_, s) = get_json(&base, "/api/v1/services").expect("services");
    assert_eq!(s["items"][0]["circuit"], "closed", "{s}");
    eprintln!("failovers: {}", s["items"][0]["failovers"]);

    // An endpoint registers itself with a time to live, and is taken out.
    let d = endpoint("d", log.clone());
    let body = json!({"url": url(&d), "ttl_seconds": 30}).to_string();
    let call = |method: &str, body: &str| {
        support::http_request(
            method,
            &base,
            "/api/v1/services/billing/endpoints",
            Some(("application/json", body.as_bytes())),
            Duration::from_secs(10),
        )
        .expect("request")
    };
    assert_eq!(call("PUT", &body).status, 204);
    let out = support::kflow(["services"])
        .env("KFLOW_SERVER", &base)
        .run();
    assert!(
        out.stdout.contains(&url(&d)) && out.stdout.contains("registered"),
        "{}",
        out.stdout
    );
    let bad = call(
        "PUT",
        &json!({"url": "ftp://x", "ttl_seconds": 30}).to_string(),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let unknown = support::http_request(
        "PUT",
        &base,
        "/api/v1/services/nope/endpoints",
        Some(("application/json", body.as_bytes())),
        Duration::from_secs(10),
    )
    .expect("request");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(
        call("DELETE", &json!({"url": url(&d)}).to_string()).status,
        204
    );
    let (_, s) = get_json(&base, "/api/v1/services").expect("services");
    assert_eq!(
        s["items"][0]["endpoints"].as_array().map(Vec::len),
        Some(3),
        "{s}"
    );
}

/// A remote `kflow worker` resolves `service://` with the `services:` of its `--config`; without
/// one it says it has no services.
#[test]
fn a_remote_worker_resolves_services_from_its_config() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let e = endpoint("r", log.clone());
    let url = e.server.as_ref().map(|s| s.base()).unwrap_or_default();
    let dir = TempDir::new("services-worker");
    let services = format!("services:\n  billing:\n    endpoints: ['{url}']\n");
    let server_config = dir.write("server.yaml", &services);
    let worker_config = dir.write("worker.yaml", &services);
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", &server_config.to_string_lossy()],
    );
    let base = server.base();
    support::register(
        &base,
        "document: {dsl: '1.0.0', namespace: svc, name: far, version: '1.0.0'}\n\
         do:\n  - charge:\n      metadata: {kflow: {queue: remote}}\n      call: http\n      \
         with: {method: get, endpoint: 'service://billing/work'}\n",
    );
    let worker = |config: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(support::kflow_bin());
        cmd.args(["worker", "--server", &base, "--queue", "remote"])
            .env("KFLOW_TOKEN", support::TEST_TOKEN)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.spawn().expect("a worker")
    };
    let run = || {
        let (code, v) = post_json(
            &base,
            "/api/v1/instances",
            &json!({"namespace": "svc", "name": "far", "wait": true, "wait_seconds": 30}),
        )
        .expect("run");
        assert!(code < 300, "{v}");
        v
    };
    let mut w = worker(None);
    let v = run();
    let _ = w.kill();
    let _ = w.wait();
    assert_eq!(v["status"], "faulted", "{v}");
    assert!(
        v["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("service://billing: no services are configured here")),
        "{v}"
    );
    let mut w = worker(Some(&worker_config));
    let v = run();
    let _ = w.kill();
    let _ = w.wait();
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["output"]["served_by"], "r", "{v}");
}

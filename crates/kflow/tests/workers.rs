//! Remote workers, end to end: a real server, real `kflow worker` processes, a local endpoint
//! that records how many calls of each kind run at once.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::{ServerProcess, TempDir, TestServer, get_json, kflow_bin, post_json};

/// In-flight and peak concurrent calls per zone.
#[derive(Default)]
struct Load {
    now: HashMap<String, i64>,
    peak: HashMap<String, i64>,
    total: HashMap<String, i64>,
}

fn slow_endpoint(load: Arc<Mutex<Load>>) -> TestServer {
    TestServer::start_with(move |req| {
        if req.path() != "/slow" {
            return None;
        }
        let zone = req.query("zone").unwrap_or_default();
        let ms: u64 = req.query("ms").and_then(|m| m.parse().ok()).unwrap_or(300);
        {
            let mut l = load.lock().unwrap_or_else(|p| p.into_inner());
            let n = {
                let e = l.now.entry(zone.clone()).or_insert(0);
                *e += 1;
                *e
            };
            let p = l.peak.entry(zone.clone()).or_insert(0);
            *p = (*p).max(n);
            *l.total.entry(zone.clone()).or_insert(0) += 1;
        }
        std::thread::sleep(Duration::from_millis(ms));
        load.lock()
            .unwrap_or_else(|p| p.into_inner())
            .now
            .entry(zone.clone())
            .and_modify(|n| *n -= 1);
        Some((200, json!({ "zone": zone })))
    })
}

struct Worker(Child);

impl Worker {
    fn start(server: &str, args: &[&str]) -> Worker {
        let child = Command::new(kflow_bin())
            .arg("worker")
            .args(["--server", server])
            .env("KFLOW_TOKEN", support::TEST_TOKEN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a kflow worker");
        Worker(child)
    }

    fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn workflow(name: &str, zone: &str, resources: &str, endpoint: &str, ms: u64) -> String {
    format!(
        r#"document:
  dsl: '1.0.3'
  namespace: test
  name: {name}
  version: '1.0.0'
do:
  - work:
      metadata:
        kflow:
          queue: remote
          labels:
            zone: {zone}
          resources: {resources}
      call: http
      with:
        method: get
        endpoint: {endpoint}/slow?zone={zone}&ms={ms}
"#
    )
}

fn register(base: &str, doc: &str) {
    let (status, body) = support::http_request(
        "POST",
        base,
        "/api/v1/definitions",
        Some(("application/yaml", doc.as_bytes())),
        Duration::from_secs(30),
    )
    .map(|r| (r.status, r.text()))
    .expect("register");
    assert!(status < 300, "register failed: {status} {body}");
}

fn start(base: &str, name: &str) -> String {
    let (status, v) = post_json(
        base,
        "/api/v1/instances",
        &json!({ "namespace": "test", "name": name }),
    )
    .expect("start");
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().expect("id").to_string()
}

fn wait_done(base: &str, ids: &[String], timeout: Duration) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let all: Vec<Value> = ids
            .iter()
            .map(|id| {
                get_json(base, &format!("/api/v1/instances/{id}"))
                    .expect("get")
                    .1
            })
            .collect();
        if all.iter().all(|v| v["status"] != "running") {
            return all;
        }
        if t0.elapsed() > timeout {
            let stuck: Vec<String> = all
                .iter()
                .filter(|v| v["status"] == "running")
                .map(|v| v["id"].to_string())
                .collect();
            let explain: Vec<Value> = stuck
                .iter()
                .take(3)
                .map(|id| {
                    get_json(
                        base,
                        &format!("/api/v1/instances/{}/explain", id.trim_matches('"')),
                    )
                    .map(|r| r.1)
                    .unwrap_or(Value::Null)
                })
                .collect();
            panic!("instances still running after {timeout:?}: {stuck:?}\n{explain:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tasks_go_only_where_they_fit_and_capacity_is_never_exceeded() {
    let load = Arc::new(Mutex::new(Load::default()));
    let endpoint = slow_endpoint(load.clone());
    let dir = TempDir::new("workers-fit");
    let server = ServerProcess::start(dir.path(), &[]);
    let base = server.base();
    register(
        &base,
        &workflow("za", "a", "{ cpu: 2 }", &endpoint.base(), 300),
    );
    register(
        &base,
        &workflow("zb", "b", "{ cpu: 1, memory: 1Gi }", &endpoint.base(), 300),
    );
    register(
        &base,
        &workflow("zc", "c", "{ gpu: 1 }", &endpoint.base(), 300),
    );
    // A: zone a, 4 cpus → 2 tasks of 2 cpus at once. B: zone b, 1 cpu → one at a time.
    // C: zone c, one gpu → one at a time.
    let _a = Worker::start(
        &base,
        &[
            "--queue",
            "remote",
            "--labels",
            "zone=a",
            "--capacity",
            "cpu=4,memory=8Gi",
        ],
    );
    let _b = Worker::start(
        &base,
        &[
            "--queue",
            "remote",
            "--labels",
            "zone=b",
            "--capacity",
            "cpu=1,memory=2Gi",
        ],
    );
    let _c = Worker::start(
        &base,
        &[
            "--queue",
            "remote",
            "--labels",
            "zone=c",
            "--capacity",
            "cpu=8,gpu=1",
        ],
    );
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(start(&base, "za"));
        ids.push(start(&base, "zb"));
        ids.push(start(&base, "zc"));
    }
    let done = wait_done(&base, &ids, Duration::from_secs(60));
    for v in &done {
        assert_eq!(v["status"], "completed", "{v}");
    }
    let l = load.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "peak concurrent calls per zone: {:?}, totals: {:?}",
        l.peak, l.total
    );
    assert_eq!(l.total.get("a"), Some(&6));
    assert_eq!(l.total.get("b"), Some(&6));
    assert_eq!(l.total.get("c"), Some(&6));
    assert!(
        l.peak["a"] <= 2,
        "worker A's 4 cpus were oversubscribed: {}",
        l.peak["a"]
    );
    assert_eq!(
        l.peak["a"], 2,
        "worker A should run two 2-cpu tasks at once"
    );
    assert_eq!(l.peak["b"], 1, "worker B has one cpu");
    assert_eq!(l.peak["c"], 1, "worker C has one gpu");
    // Every call went to a worker of its zone: the endpoint saw each zone's calls only.
    let workers = get_json(&base, "/api/v1/workers").expect("workers").1;
    assert!(
        workers["items"].as_array().map(Vec::len).unwrap_or(0) >= 4,
        "{workers}"
    );
}

#[test]
fn a_task_on_a_killed_worker_is_finished_by_another() {
    let load = Arc::new(Mutex::new(Load::default()));
    let endpoint = slow_endpoint(load.clone());
    let dir = TempDir::new("workers-kill");
    let server = ServerProcess::start(dir.path(), &[]);
    let base = server.base();
    register(
        &base,
        &workflow("long", "k", "{ cpu: 1 }", &endpoint.base(), 1500),
    );
    let mut first = Worker::start(
        &base,
        &[
            "--queue",
            "remote",
            "--labels",
            "zone=k",
            "--capacity",
            "cpu=1",
        ],
    );
    let id = start(&base, "long");
    // Wait until the call is running on the first worker, then kill it.
    let t0 = Instant::now();
    while endpoint.requests().iter().all(|r| r.path() != "/slow") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the first worker never took the task"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let explain = get_json(&base, &format!("/api/v1/instances/{id}/explain"))
        .expect("explain")
        .1;
    assert!(
        explain.to_string().contains("running on worker"),
        "{explain}"
    );
    first.kill9();
    let killed_at = Instant::now();
    let _second = Worker::start(
        &base,
        &[
            "--queue",
            "remote",
            "--labels",
            "zone=k",
            "--capacity",
            "cpu=1",
        ],
    );
    let done = wait_done(&base, std::slice::from_ref(&id), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "completed", "{}", done[0]);
    let took = killed_at.elapsed();
    let calls: Vec<_> = endpoint
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/slow")
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "the call ran on the killed worker, then once more"
    );
    assert_eq!(
        calls[0].header("idempotency-key"),
        calls[1].header("idempotency-key"),
        "a re-run keeps its key"
    );
    // Lease TTL 2 s, plus the re-run's 1.5 s call, plus start-up of the second worker.
    assert!(
        took < Duration::from_secs(8),
        "re-queued too slowly: {took:?}"
    );
    let history = get_json(&base, &format!("/api/v1/instances/{id}/history"))
        .expect("history")
        .1;
    let deliveries = history["items"]
        .as_array()
        .map(|h| h.iter().filter(|e| e["kind"] == "delivery").count())
        .unwrap_or(0);
    assert_eq!(
        deliveries, 1,
        "the instance took exactly one result: {history}"
    );
    // The lost lease is in the history: which task, which worker, why.
    let requeued: Vec<&Value> = history["items"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| e["data"]["type"] == "task.requeued")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(requeued.len(), 1, "{history}");
    assert_eq!(requeued[0]["data"]["reference"], "/do/0/work", "{history}");
    assert!(
        requeued[0]["data"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("lease expired"),
        "{history}"
    );
}

#[test]
fn bad_worker_input_is_refused() {
    let dir = TempDir::new("workers-bad");
    let server = ServerProcess::start(dir.path(), &[]);
    let base = server.base();
    // A token with the worker role, created by the admin.
    let (code, created) = post_json(
        &base,
        "/api/v1/tokens",
        &json!({"name": "w", "role": "worker", "namespaces": ["*"]}),
    )
    .expect("create a worker token");
    assert_eq!(code, 201, "{created}");
    let secret = created["token"].as_str().expect("token").to_string();
    let call = |path: &str, token: &str, body: &[u8]| {
        let auth = format!("Bearer {token}");
        support::http_request_with(
            "POST",
            &base,
            path,
            &[("Authorization", auth.as_str())],
            Some(("application/json", body)),
            Duration::from_secs(30),
        )
        .expect("request")
    };
    // Wrong token.
    let r = call("/api/v1/workers", "nope", br#"{"queues":["q"]}"#);
    assert_eq!(r.status, 401, "{}", r.text());
    // A capacity the server cannot parse.
    let r = call(
        "/api/v1/workers",
        &secret,
        br#"{"queues":["q"],"capacity":"cpu=lots"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("cpu=lots"), "{}", r.text());
    // A result for a lease it does not hold.
    let r = call("/api/v1/workers", &secret, br#"{"id":"w1","queues":["q"]}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        "/api/v1/leases/w1-99/complete",
        &secret,
        br#"{"worker":"w1","output":1}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    // A worker token cannot do anything else: start an instance, list the workers.
    let r = call(
        "/api/v1/instances",
        &secret,
        br#"{"namespace":"n","name":"x"}"#,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // Another token cannot act as w1 (it was registered by "w").
    let (_, other) = post_json(
        &base,
        "/api/v1/tokens",
        &json!({"name": "w2", "role": "worker", "namespaces": ["*"]}),
    )
    .expect("create a second worker token");
    let other = other["token"].as_str().expect("token").to_string();
    let r = call("/api/v1/workers/w1/poll", &other, br#"{"wait_ms":10}"#);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = call(
        "/api/v1/leases/w1-99/complete",
        &other,
        br#"{"worker":"w1","output":1}"#,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // Polling as an unknown worker.
    let r = call("/api/v1/workers/ghost/poll", &secret, br#"{"wait_ms":10}"#);
    assert_eq!(r.status, 404, "{}", r.text());
    // The CLI refuses a capacity it cannot parse before contacting anyone.
    let out = support::kflow([
        "worker",
        "--server",
        &base,
        "--token",
        &secret,
        "--capacity",
        "tasks=many",
    ])
    .run();
    assert_eq!(out.code, Some(2), "{}", out.describe());
}

#[test]
fn a_rate_limit_per_target_host_spaces_the_calls() {
    let load = Arc::new(Mutex::new(Load::default()));
    let endpoint = slow_endpoint(load.clone());
    let dir = TempDir::new("workers-rate");
    let config = dir.write("kflow.yaml", "rate_limits:\n  host:127.0.0.1: 4\n");
    let server = ServerProcess::start(dir.path(), &["--config", &config.to_string_lossy()]);
    let base = server.base();
    // Default queue: the server's built-in worker runs these.
    let doc = format!(
        "document:\n  dsl: '1.0.3'\n  namespace: test\n  name: limited\n  version: '1.0.0'\ndo:\n  - hit:\n      call: http\n      with:\n        method: get\n        endpoint: {}/slow?zone=r&ms=1\n",
        endpoint.base()
    );
    register(&base, &doc);
    let ids: Vec<String> = (0..12).map(|_| start(&base, "limited")).collect();
    let done = wait_done(&base, &ids, Duration::from_secs(30));
    assert!(done.iter().all(|v| v["status"] == "completed"));
    let mut at: Vec<i64> = endpoint
        .requests()
        .iter()
        .filter(|r| r.path() == "/slow")
        .map(|r| r.at_ms)
        .collect();
    at.sort_unstable();
    assert_eq!(at.len(), 12);
    // A bucket of 4 tokens refilled at 4/s: call k (from 0) comes no sooner than (k-3)/4 s
    // after the first (100 ms of slack for scheduling jitter).
    for (k, t) in at.iter().enumerate().skip(4) {
        let earliest = (k as i64 - 3) * 250 - 100;
        assert!(
            t - at[0] >= earliest,
            "call {k} came {} ms after the first, before {earliest} ms: {at:?}",
            t - at[0]
        );
    }
    let spread = at[11] - at[0];
    assert!(
        spread >= 1_900,
        "12 calls at 4/s with a burst of 4 take about 2 s, took {spread} ms"
    );
}

#[test]
fn a_higher_priority_instance_runs_first() {
    let load = Arc::new(Mutex::new(Load::default()));
    let endpoint = slow_endpoint(load.clone());
    let dir = TempDir::new("workers-prio");
    let server = ServerProcess::start(dir.path(), &[]);
    let base = server.base();
    register(
        &base,
        &workflow("blocker", "p", "{ cpu: 1 }", &endpoint.base(), 800),
    );
    register(
        &base,
        &workflow("job", "p", "{ cpu: 1 }", &endpoint.base(), 10),
    );
    let _w = Worker::start(
        &base,
        &[
            "--queue",
            "remote",
            "--labels",
            "zone=p",
            "--capacity",
            "cpu=1",
        ],
    );
    let blocker = start(&base, "blocker");
    let t0 = Instant::now();
    while endpoint.requests().iter().all(|r| r.path() != "/slow") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the worker never took the blocker"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // While the only slot is busy: three ordinary instances, then an urgent one.
    let mut ids = vec![blocker];
    for i in 0..3 {
        let (s, v) = post_json(
            &base,
            "/api/v1/instances",
            &json!({"namespace": "test", "name": "job", "input": {"n": i}}),
        )
        .expect("start");
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    let (s, v) = post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "test", "name": "job", "priority": 10}),
    )
    .expect("start");
    assert_eq!(s, 201, "{v}");
    let urgent = v["id"].as_str().expect("id").to_string();
    ids.push(urgent.clone());
    wait_done(&base, &ids, Duration::from_secs(30));
    let order: Vec<String> = endpoint
        .requests()
        .iter()
        .filter(|r| r.path() == "/slow")
        .filter_map(|r| {
            r.header("idempotency-key")
                .map(|k| k.split('-').take(5).collect::<Vec<_>>().join("-"))
        })
        .collect();
    assert_eq!(order.len(), 5, "{order:?}");
    assert_eq!(
        order[1], urgent,
        "the urgent instance ran right after the blocker: {order:?}"
    );
}

/// SIGTERM while a remote worker runs a task: the server keeps its API up (a new start gets
/// 503 with Retry-After), the worker finishes and reports, the result is committed, and only
/// then does the server exit; after a restart nothing runs again.
#[test]
fn a_drain_waits_for_remote_workers_to_report() {
    let load = Arc::new(Mutex::new(Load::default()));
    let endpoint = slow_endpoint(load.clone());
    let dir = TempDir::new("workers-drain");
    let mut server = ServerProcess::start(dir.path(), &[]);
    let base = server.base();
    register(
        &base,
        &workflow("drained", "d", "{ cpu: 1 }", &endpoint.base(), 1500),
    );
    let _worker = Worker::start(
        &base,
        &[
            "--queue",
            "remote",
            "--labels",
            "zone=d",
            "--capacity",
            "cpu=1",
        ],
    );
    let id = start(&base, "drained");
    let t0 = Instant::now();
    while endpoint.requests().iter().all(|r| r.path() != "/slow") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the worker never took the task"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.terminate();
    std::thread::sleep(Duration::from_millis(200));
    // Still answering: starts are refused with a hint to come back.
    let body = serde_json::to_vec(&json!({"namespace": "test", "name": "drained"})).unwrap();
    let r = support::http_request(
        "POST",
        &base,
        "/api/v1/instances",
        Some(("application/json", &body)),
        Duration::from_secs(10),
    )
    .expect("the draining server answers");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("shutting down"), "{}", r.text());
    let status = server
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "the server did not finish its drain\n{}",
                server.log_tail(3000)
            )
        });
    assert!(status.success(), "{}", server.log_tail(3000));
    // The worker's report was committed before the exit: the instance is done, and a restart
    // runs nothing again.
    server.restart();
    let done = wait_done(
        &server.base(),
        std::slice::from_ref(&id),
        Duration::from_secs(10),
    );
    assert_eq!(done[0]["status"], "completed", "{}", done[0]);
    std::thread::sleep(Duration::from_millis(500));
    let calls = endpoint
        .requests()
        .iter()
        .filter(|r| r.path() == "/slow")
        .count();
    assert_eq!(calls, 1, "the task ran once");
}

//! Learned durations (issue 11): the real server learns each task's run time and queue wait as
//! tasks finish, keeps them across a restart, and `kflow analyze` shows them.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{ServerProcess, TempDir, TestServer, get_json, post_json};

const SLOW_MS: u64 = 60;

/// A server on a fresh data directory with `config` (YAML), and `learn/NAME`: one call to
/// `service`.
fn server_with_one_call(
    tag: &str,
    config: &str,
    name: &str,
    service: &TestServer,
) -> (TempDir, ServerProcess) {
    let dir = TempDir::new(tag);
    let config = dir.write("kflow.yaml", config);
    let config = config.to_string_lossy().into_owned();
    let server = ServerProcess::start(&dir.path().join("data"), &["--config", &config]);
    let doc = format!(
        "document: {{dsl: '1.0.0', namespace: learn, name: {name}, version: '1.0.0'}}\n\
         do:\n  - call:\n      call: http\n      with: {{method: get, endpoint: '{}/x'}}\n",
        service.base()
    );
    support::register(&server.base(), &doc);
    (dir, server)
}

#[test]
fn run_times_are_learned_kept_across_a_restart_and_shown() {
    let service = TestServer::start_with(|r| {
        if r.path() == "/slow" {
            std::thread::sleep(Duration::from_millis(SLOW_MS));
        }
        Some((200, json!({"ok": true})))
    });
    let dir = TempDir::new("analyze");
    let mut server = ServerProcess::start(&dir.path().join("data"), &[]);
    let base = server.base();
    let doc = format!(
        "document: {{dsl: '1.0.0', namespace: learn, name: two, version: '1.0.0'}}\n\
         do:\n  - slow:\n      call: http\n      with: {{method: get, endpoint: '{s}/slow'}}\n  \
         - quick:\n      call: http\n      with: {{method: get, endpoint: '{s}/quick'}}\n",
        s = service.base()
    );
    support::register(&base, &doc);
    // Nothing learned yet: said so.
    let out = support::kflow(["analyze", "learn/two"])
        .env("KFLOW_SERVER", &base)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.contains("no runs learned yet"), "{}", out.stdout);
    for i in 0..25 {
        let (code, v) = post_json(
            &base,
            "/api/v1/instances",
            &json!({"namespace": "learn", "name": "two", "input": {"i": i}, "wait": true}),
        )
        .expect("run");
        assert!(code < 300 && v["status"] == "completed", "{v}");
    }
    let check = |a: &serde_json::Value| {
        let tasks = a["versions"][0]["tasks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(a["versions"][0]["version"], "1.0.0", "{a}");
        assert_eq!(tasks.len(), 2, "{a}");
        assert_eq!(tasks[0]["task"], "/do/0/slow", "in document order: {a}");
        assert_eq!(tasks[0]["runs"], 25, "{a}");
        assert_eq!(tasks[0]["confident"], true, "{a}");
        assert_eq!(tasks[0]["failure_rate"], 0.0, "{a}");
        let p50 = tasks[0]["run_ms"]["p50"].as_f64().unwrap_or(0.0);
        assert!(
            (SLOW_MS as f64 * 0.95..SLOW_MS as f64 * 4.0).contains(&p50),
            "the slow call's median run time is about {SLOW_MS} ms: {a}"
        );
        let quick = tasks[1]["run_ms"]["p50"].as_f64().unwrap_or(f64::MAX);
        assert!(quick < p50, "the quick call is quicker: {a}");
        assert!(tasks[0]["wait_ms"]["p99"].as_f64().is_some(), "{a}");
        // One after the other: both on the critical path, which is all the task time.
        let v = &a["versions"][0];
        assert_eq!(
            v["critical_path"],
            json!(["/do/0/slow", "/do/1/quick"]),
            "{a}"
        );
        let (cp, total) = (v["critical_path_ms"].as_f64(), v["task_time_ms"].as_f64());
        assert!(cp.is_some() && cp == total, "{a}");
        assert_eq!(v["hot_spots"], json!([]), "{a}");
    };
    let (code, a) = get_json(&base, "/api/v1/definitions/learn/two/analysis").expect("analysis");
    assert_eq!(code, 200, "{a}");
    check(&a);
    // Kept: a restart reads them back from the store.
    server.signal("TERM");
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the server stops");
    server.restart();
    let base = server.base();
    let (_, a) = get_json(&base, "/api/v1/definitions/learn/two/analysis").expect("analysis");
    check(&a);
    let out = support::kflow(["analyze", "learn/two@1.0.0"])
        .env("KFLOW_SERVER", &base)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("learn/two@1.0.0")
            && out.stdout.contains("/do/0/slow")
            && out.stdout.contains("critical path (p50)")
            && out.stdout.contains("100% of")
            && out.stdout.contains("/do/0/slow -> /do/1/quick"),
        "{}",
        out.stdout
    );
    // The web UI's analysis page shows the same.
    let page = support::http_request(
        "GET",
        &base,
        "/ui/workflows/learn/two/analysis",
        None,
        Duration::from_secs(10),
    )
    .expect("the analysis page");
    let html = page.text();
    assert_eq!(page.status, 200, "{html}");
    assert!(
        html.contains("/do/0/slow")
            && html.contains("Run ms p50")
            && html.contains("Critical path (p50)"),
        "{html}"
    );
    // A workflow that is not registered: said so, with a suggestion.
    let (code, e) = get_json(&base, "/api/v1/definitions/learn/tow/analysis").expect("analysis");
    assert_eq!(code, 404, "{e}");
    assert!(e.to_string().contains("learn/two"), "{e}");
    let (code, e) = get_json(
        &base,
        "/api/v1/definitions/learn/two/analysis?version=9.9.9",
    )
    .expect("analysis");
    assert_eq!(code, 404, "{e}");
}

/// Critical-path-first dispatch on the real server: with two slots, a fork whose last branch is
/// a chain of two slow calls beside four quick ones. First come, first served runs the quick
/// ones first (they are first in the document); once run times are learned, a queue set to
/// `critical-path` starts the chain at once.
#[test]
fn a_critical_path_queue_starts_the_longest_remaining_path_first() {
    for (mode, expect_first_long) in [("fifo", false), ("critical-path", true)] {
        let service = TestServer::start_with(|r| {
            let ms = if r.path() == "/long" { 150 } else { 20 };
            std::thread::sleep(Duration::from_millis(ms));
            Some((200, json!({"ok": true})))
        });
        let dir = TempDir::new("cp");
        let config = dir.write(
            "kflow.yaml",
            format!("max_concurrent_effects: 2\ndispatch: {{'*': {mode}}}\n"),
        );
        let config = config.to_string_lossy().into_owned();
        let server = ServerProcess::start(&dir.path().join("data"), &["--config", &config]);
        let base = server.base();
        let call = |p: &str| {
            format!(
                "{{call: http, with: {{method: get, endpoint: '{}/{p}'}}}}",
                service.base()
            )
        };
        let doc = format!(
            "document: {{dsl: '1.0.0', namespace: learn, name: fork, version: '1.0.0'}}\n\
             do:\n  - all:\n      fork:\n        branches:\n          - q1: {q}\n          - q2: {q}\n          \
             - q3: {q}\n          - q4: {q}\n          - chain:\n              do:\n                \
             - a: {l}\n                - b: {l}\n",
            q = call("quick"),
            l = call("long"),
        );
        support::register(&base, &doc);
        let run = || {
            let (code, v) = post_json(
                &base,
                "/api/v1/instances",
                &json!({"namespace": "learn", "name": "fork", "wait": true}),
            )
            .expect("run");
            assert!(code < 300 && v["status"] == "completed", "{v}");
        };
        // Learn the run times, and let them be stored (every 2 s).
        for _ in 0..3 {
            run();
        }
        std::thread::sleep(Duration::from_millis(2_500));
        let before = service.requests().len();
        run();
        let order: Vec<String> = service.requests()[before..]
            .iter()
            .map(|r| r.path().to_string())
            .collect();
        let first_long = order
            .iter()
            .position(|p| p == "/long")
            .expect("a long call");
        eprintln!("{mode}: calls in order {order:?}");
        if expect_first_long {
            assert!(
                first_long < 2,
                "{mode}: the chain starts at once: {order:?}"
            );
        } else {
            assert_eq!(first_long, 4, "{mode}: the quick ones first: {order:?}");
        }
    }
}

/// The expected time to completion of a running instance, from learned run times: absent
/// before anything is learned, then within 20% (median over five instances) of when the
/// instance really ends.
#[test]
fn the_eta_of_a_running_instance_follows_learned_run_times() {
    const STEP_MS: u64 = 250;
    let service = TestServer::start_with(|_| {
        std::thread::sleep(Duration::from_millis(STEP_MS));
        Some((200, json!({"ok": true})))
    });
    let dir = TempDir::new("eta");
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let base = server.base();
    let doc = format!(
        "document: {{dsl: '1.0.0', namespace: learn, name: eta, version: '1.0.0'}}\n\
         do:\n  - one:\n      call: http\n      with: {{method: get, endpoint: '{s}/1'}}\n  \
         - two:\n      call: http\n      with: {{method: get, endpoint: '{s}/2'}}\n",
        s = service.base()
    );
    support::register(&base, &doc);
    let start = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let (code, v) = post_json(
                    &base,
                    "/api/v1/instances",
                    &json!({"namespace": "learn", "name": "eta"}),
                )
                .expect("start");
                assert!(code < 300, "{v}");
                v["id"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    };
    let done = |id: &str| {
        support::poll_until(Duration::from_secs(30), Duration::from_millis(20), || {
            let (_, v) = get_json(&base, &format!("/api/v1/instances/{id}")).ok()?;
            (v["status"] == "completed").then(|| v["updated_ms"].as_i64().unwrap_or(0))
        })
        .expect("completed")
    };
    // Nothing learned yet: no estimate.
    let first = start(1);
    let (_, v) = get_json(&base, &format!("/api/v1/instances/{}", first[0])).expect("get");
    assert!(v.get("eta").is_none(), "{v}");
    done(&first[0]);
    // Twenty runs learned (side by side), and stored.
    for id in start(20) {
        done(&id);
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let ids = start(5);
    std::thread::sleep(Duration::from_millis(STEP_MS + 50));
    let mut asked = Vec::new();
    for id in &ids {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let (_, v) = get_json(&base, &format!("/api/v1/instances/{id}")).expect("get");
        let eta = v["eta"]["remaining_ms_p50"].as_f64().expect("an estimate");
        let p95 = v["eta"]["remaining_ms_p95"].as_f64().expect("a band");
        assert!(p95 >= eta, "{v}");
        asked.push((id.clone(), now, eta));
    }
    let mut errors: Vec<f64> = asked
        .iter()
        .map(|(id, at, eta)| {
            let actual = (done(id) - at).max(1) as f64;
            (eta - actual).abs() / actual
        })
        .collect();
    errors.sort_by(|a, b| a.total_cmp(b));
    let median = errors[errors.len() / 2];
    eprintln!(
        "ETA: median absolute error {:.1}% over {} instances ({errors:?})",
        median * 100.0,
        errors.len()
    );
    assert!(median < 0.2, "median error {median}: {errors:?}");
    let (_, v) = get_json(&base, &format!("/api/v1/instances/{}", ids[0])).expect("get");
    assert!(v.get("eta").is_none(), "finished: no estimate: {v}");
}

/// A task running far past its learned p99 fires the `task_anomaly` alert rule.
#[test]
fn a_task_running_past_its_learned_p99_raises_an_alert() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let service = TestServer::start_with(|_| {
        // Twenty quick runs, then a stuck one.
        let n = CALLS.fetch_add(1, Ordering::SeqCst);
        let ms = if n < 20 { 30 } else { 4_000 };
        std::thread::sleep(Duration::from_millis(ms));
        Some((200, json!({"ok": true})))
    });
    let (_dir, server) = server_with_one_call(
        "anomaly",
        "alerts:\n  rules:\n    - {name: slow-task, on: task_anomaly, factor: 3}\n",
        "stuck",
        &service,
    );
    let base = server.base();
    for _ in 0..20 {
        let (code, v) = post_json(
            &base,
            "/api/v1/instances",
            &json!({"namespace": "learn", "name": "stuck", "wait": true}),
        )
        .expect("run");
        assert!(code < 300 && v["status"] == "completed", "{v}");
    }
    let (_, v) = post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "learn", "name": "stuck"}),
    )
    .expect("start");
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let alert = support::poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        let (_, a) = get_json(&base, "/api/v1/alerts").ok()?;
        a["items"]
            .as_array()?
            .iter()
            .find(|x| x["rule"] == "slow-task")
            .cloned()
    })
    .expect("the anomaly alert fired");
    assert!(alert.to_string().contains(&id), "{alert}");
    assert!(alert.to_string().contains("learned p99"), "{alert}");
    // `kflow explain` names it too.
    let out = support::kflow(["explain", &id])
        .env("KFLOW_SERVER", &base)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.contains("an anomaly"), "{}", out.stdout);
}

/// A new version whose task got three times slower fires the `version_drift` alert rule,
/// naming the version and the task.
#[test]
fn a_version_that_made_a_task_slower_raises_an_alert() {
    let service = TestServer::start_with(|r| {
        let ms = if r.path() == "/v2" { 90 } else { 30 };
        std::thread::sleep(Duration::from_millis(ms));
        Some((200, json!({"ok": true})))
    });
    let dir = TempDir::new("drift");
    let config = dir.write(
        "kflow.yaml",
        "alerts:\n  rules:\n    - {name: drifted, on: version_drift, factor: 2}\n",
    );
    let config = config.to_string_lossy().into_owned();
    let server = ServerProcess::start(&dir.path().join("data"), &["--config", &config]);
    let base = server.base();
    for (version, path) in [("1.0.0", "v1"), ("2.0.0", "v2")] {
        let doc = format!(
            "document: {{dsl: '1.0.0', namespace: learn, name: drifty, version: '{version}'}}\n\
             do:\n  - call:\n      call: http\n      with: {{method: get, endpoint: '{}/{path}'}}\n",
            service.base()
        );
        support::register(&base, &doc);
        for _ in 0..20 {
            let (code, v) = post_json(
                &base,
                "/api/v1/instances",
                &json!({"namespace": "learn", "name": "drifty", "wait": true}),
            )
            .expect("run");
            assert!(code < 300 && v["status"] == "completed", "{v}");
            assert_eq!(v["version"], version, "{v}");
        }
    }
    let alert = support::poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let (_, a) = get_json(&base, "/api/v1/alerts").ok()?;
        a["items"]
            .as_array()?
            .iter()
            .find(|x| x["rule"] == "drifted")
            .cloned()
    })
    .expect("the drift alert fired");
    let text = alert.to_string();
    assert!(
        text.contains("learn/drifty: /do/0/call got slower with version 2.0.0"),
        "{alert}"
    );
    assert!(text.contains("\"previous_version\":\"1.0.0\""), "{alert}");
}

/// Adaptive concurrency toward a host: a local service that answers in 20 ms up to 4 calls at
/// once and slows down beyond (latency grows with the square of the excess). 120 calls started
/// together: the limit toward the host settles near 4, and the service is not hammered.
#[test]
fn the_concurrency_toward_a_struggling_host_settles_near_what_it_serves_well() {
    let (service, seen) = support::struggling_service(None, 4, 40);
    let (_dir, server) = server_with_one_call(
        "aimd",
        "adaptive_concurrency: {hosts: ['*'], initial: 2}\n",
        "hit",
        &service,
    );
    let base = server.base();
    let ids: Vec<String> = (0..120)
        .map(|_| {
            let (code, v) = post_json(
                &base,
                "/api/v1/instances",
                &json!({"namespace": "learn", "name": "hit"}),
            )
            .expect("start");
            assert!(code < 300, "{v}");
            v["id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    for id in &ids {
        let done = support::poll_until(Duration::from_secs(60), Duration::from_millis(20), || {
            let (_, v) = get_json(&base, &format!("/api/v1/instances/{id}")).ok()?;
            (v["status"] == "completed").then_some(())
        });
        assert!(done.is_some(), "{id} completed");
    }
    let (_, q) = get_json(&base, "/api/v1/queues").expect("queues");
    let host = &q["hosts"][0];
    let limit = host["limit"].as_f64().expect("an adaptive limit");
    let most = seen.most_late.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "adaptive limit toward the host: {limit:.2}; at most {most} calls at once after the first 40"
    );
    assert!((2.0..=8.0).contains(&limit), "settled near 4: {q}");
    assert!(most <= 8, "not hammered: {most} at once");
    let out = support::kflow(["queues"]).env("KFLOW_SERVER", &base).run();
    assert!(out.stdout.contains("HOST (ADAPTIVE)"), "{}", out.stdout);
}

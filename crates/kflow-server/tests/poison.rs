//! One bad instance never stops the engine: an endless loop, a panic in the interpreter, a
//! history that cannot be replayed. Each beside 100 healthy instances, over a real SQLite
//! store, and again after a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use kflow_server::engine::{Engine, EngineConfig, EngineError, FaultInjection, InstanceLimits};
use kflow_store::{Commit, HistoryEvent, InstanceStatus, Store};

/// A watchdog for every test here: a regression fails instead of hanging the run.
const LIMIT: Duration = Duration::from_secs(60);

fn dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kflow-poison-{tag}-{}", uuid::Uuid::now_v7()))
}

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        limits: InstanceLimits {
            tasks_per_turn: 200,
            max_tasks: 20_000,
            ..InstanceLimits::default()
        },
        ..EngineConfig::default()
    }
}

const SPIN: &str = "document:\n  dsl: '1.0.3'\n  namespace: p\n  name: spin\n  version: '1.0.0'\ndo:\n  - spin:\n      set:\n        x: 1\n      then: spin\n";
const QUICK: &str = "document:\n  dsl: '1.0.3'\n  namespace: p\n  name: quick\n  version: '1.0.0'\ndo:\n  - a:\n      set:\n        n: ${ .n }\n  - nap:\n      wait: PT0.01S\n  - b:\n      set:\n        doubled: ${ .n * 2 }\n";
const PANICS: &str = "document:\n  dsl: '1.0.3'\n  namespace: p\n  name: panics\n  version: '1.0.0'\ndo:\n  - first:\n      set:\n        a: 1\n  - kaboom:\n      set:\n        b: 2\n";
const LISTENER: &str = "document:\n  dsl: '1.0.3'\n  namespace: p\n  name: listener\n  version: '1.0.0'\ndo:\n  - hear:\n      listen:\n        to:\n          one:\n            with:\n              type: p.go\n";

async fn register_all(e: &Engine) {
    for d in [SPIN, QUICK, PANICS, LISTENER] {
        e.register(d.as_bytes()).await.expect("register");
    }
}

/// Starts `n` quick instances and checks that every one completes with its own output.
async fn quick_ones_complete(e: &Engine, n: i64) {
    let mut ids = Vec::new();
    for i in 0..n {
        let inst = tokio::time::timeout(
            Duration::from_secs(10),
            e.start("p", "quick", None, json!({ "n": i })),
        )
        .await
        .expect("a start answers within 10 s beside a bad instance")
        .expect("start");
        ids.push((i, inst.id));
    }
    for (i, id) in ids {
        let v = e
            .wait_finished(&id, Duration::from_secs(30))
            .await
            .expect("finished");
        assert_eq!(v.instance.status, InstanceStatus::Completed, "{id}");
        assert_eq!(v.instance.output, Some(json!({ "doubled": i * 2 })), "{id}");
    }
}

async fn status(e: &Engine, id: &str) -> InstanceStatus {
    e.instance(id).await.expect("instance").instance.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_yields_is_cancellable_and_faults_at_its_limit() {
    tokio::time::timeout(LIMIT, async {
        let d = dir("loop");
        // No life limit to speak of: the loop runs until cancelled.
        let mut cfg = config(&d);
        cfg.limits.max_tasks = u64::MAX;
        let e = Engine::open(cfg).await.expect("open");
        register_all(&e).await;
        let spinner = e
            .start("p", "spin", None, json!({}))
            .await
            .expect("start")
            .id;
        quick_ones_complete(&e, 100).await;
        assert!(
            e.driver_alive(5_000).is_ok(),
            "the driver keeps going round"
        );
        // It really is still spinning, and committing its progress as it goes.
        assert_eq!(status(&e, &spinner).await, InstanceStatus::Running);
        let len = e.history(&spinner, 0, 10_000).await.expect("history").len();
        assert!(
            len > 200,
            "the loop's progress is committed turn by turn: {len} records"
        );
        // `kflow explain` says why it is not done: it used up its turn.
        let why = serde_json::to_value(e.explain(&spinner).await.expect("explain")).expect("json");
        assert!(why.to_string().contains("task budget"), "{why}");
        let c = e.cancel(&spinner).await.expect("cancel goes through");
        assert_eq!(c.status, InstanceStatus::Cancelled);
        e.shutdown(Duration::ZERO).await;
        drop(e);

        // A loop with a life limit faults naming it, and the limit holds across a restart.
        let e = Engine::open(config(&d)).await.expect("reopen");
        assert_eq!(status(&e, &spinner).await, InstanceStatus::Cancelled);
        let limited = e
            .start("p", "spin", None, json!({}))
            .await
            .expect("start")
            .id;
        e.shutdown(Duration::ZERO).await; // mid-loop
        drop(e);
        let e = Engine::open(config(&d)).await.expect("reopen");
        quick_ones_complete(&e, 100).await;
        let v = e
            .wait_finished(&limited, Duration::from_secs(30))
            .await
            .expect("faults at its limit");
        assert_eq!(v.instance.status, InstanceStatus::Faulted);
        let err = v.instance.error.expect("error").to_string();
        assert!(err.contains("limit of 20000 task executions"), "{err}");
        assert!(err.contains("limits.max_tasks"), "{err}");
        e.shutdown(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(&d);
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_faults_at_its_limit() {
    tokio::time::timeout(LIMIT, async {
        let d = dir("history");
        let mut cfg = config(&d);
        cfg.limits.max_tasks = u64::MAX;
        cfg.limits.max_history = 500;
        let e = Engine::open(cfg).await.expect("open");
        register_all(&e).await;
        let id = e
            .start("p", "spin", None, json!({}))
            .await
            .expect("start")
            .id;
        let v = e
            .wait_finished(&id, Duration::from_secs(30))
            .await
            .expect("faults");
        assert_eq!(v.instance.status, InstanceStatus::Faulted);
        let err = v.instance.error.expect("error").to_string();
        assert!(err.contains("limit of 500 history records"), "{err}");
        let len = e.history(&id, 0, 10_000).await.expect("history").len();
        assert!(
            len <= 500 + 2 * 200 + 4,
            "history stopped near the limit: {len}"
        );
        e.shutdown(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(&d);
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_instance_faults_alone_and_a_restart_does_not_crash_loop() {
    tokio::time::timeout(LIMIT, async {
        let d = dir("panic");
        let with_hook = || {
            let mut c = config(&d);
            c.faults = FaultInjection {
                panic_on_task: Some("kaboom".into()),
                ..FaultInjection::default()
            };
            c
        };
        let e = Engine::open(with_hook()).await.expect("open");
        register_all(&e).await;
        let bad = e
            .start("p", "panics", None, json!({}))
            .await
            .expect("start")
            .id;
        quick_ones_complete(&e, 100).await;
        let v = e
            .wait_finished(&bad, Duration::from_secs(10))
            .await
            .expect("finished");
        assert_eq!(v.instance.status, InstanceStatus::Faulted);
        let err = v.instance.error.expect("error").to_string();
        assert!(err.contains("panicked"), "{err}");
        assert!(err.contains("injected panic at task kaboom"), "{err}");
        let kinds: Vec<String> = e
            .history(&bad, 0, 100)
            .await
            .expect("history")
            .into_iter()
            .map(|h| h.kind)
            .collect();
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("faulted"),
            "{kinds:?}"
        );
        e.shutdown(Duration::ZERO).await;
        drop(e);
        // The same hook after a restart: the faulted instance stays faulted, nothing replays
        // into the panic, and new work runs.
        let e = Engine::open(with_hook())
            .await
            .expect("reopen without a crash loop");
        assert_eq!(status(&e, &bad).await, InstanceStatus::Faulted);
        quick_ones_complete(&e, 10).await;
        e.shutdown(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(&d);
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_that_cannot_be_replayed_parks_that_instance_only() {
    tokio::time::timeout(LIMIT, async {
        let d = dir("corrupt");
        let e = Engine::open(config(&d)).await.expect("open");
        register_all(&e).await;
        let broken = e
            .start("p", "listener", None, json!({}))
            .await
            .expect("start")
            .id;
        let fine = e
            .start("p", "listener", None, json!({}))
            .await
            .expect("start")
            .id;
        e.shutdown(Duration::ZERO).await;
        drop(e);
        // Damage one row of `broken`'s history, as a bug or a disk might.
        {
            let store = kflow_store::sqlite::SqliteStore::open(
                &d.join("kflow.db"),
                kflow_store::sqlite::Durability::Process,
            )
            .expect("store");
            let last = store.last_seq(&broken).expect("seq");
            store
                .apply(&[Commit {
                    instance_id: broken.clone(),
                    history: vec![HistoryEvent {
                        seq: last + 1,
                        time_ms: 0,
                        kind: "delivery".into(),
                        data: json!({ "effect": "not a number", "delivery": {} }),
                    }],
                    ..Default::default()
                }])
                .expect("append");
        }
        let e = Engine::open(config(&d)).await.expect("reopen");
        let n = e
            .publish_event(
                json!({"specversion": "1.0", "id": "go-1", "source": "https://t", "type": "p.go"}),
            )
            .await
            .expect("publish");
        assert!(n >= 1, "the healthy listener took the event");
        let v = e
            .wait_finished(&fine, Duration::from_secs(10))
            .await
            .expect("the other instance runs");
        assert_eq!(v.instance.status, InstanceStatus::Completed);
        quick_ones_complete(&e, 10).await;
        // The broken one is marked, says why, and is not silently advanced.
        let v = e.instance(&broken).await.expect("get");
        assert_eq!(v.instance.status, InstanceStatus::Running);
        let why = v.instance.attention.expect("marked as needing attention");
        assert!(why.contains(&format!("instance {broken}")), "{why}");
        assert!(why.contains("not an effect id"), "{why}");
        // The history API shows the row as unreadable instead of skipping it.
        let h = e.history(&broken, 0, 100).await.expect("history");
        let bad = h.last().expect("rows");
        assert_eq!(bad.kind, "unreadable");
        assert_eq!(bad.data["kind"], json!("delivery"));
        // Suspend says why it cannot; cancel works without a replay.
        match e.suspend(&broken).await {
            Err(EngineError::Conflict(m)) => assert!(m.contains("needs attention"), "{m}"),
            other => panic!("suspend of a parked instance: {other:?}"),
        }
        let c = e.cancel(&broken).await.expect("cancel");
        assert_eq!(c.status, InstanceStatus::Cancelled);
        let v = e.instance(&broken).await.expect("get");
        assert_eq!(v.instance.attention, None);
        e.shutdown(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(&d);
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_follows_the_driver() {
    let store = kflow_store::sqlite::SqliteStore::open_in_memory().expect("store");
    let e = Engine::with_store(Arc::new(store), EngineConfig::default())
        .await
        .expect("engine");
    assert!(e.driver_alive(5_000).is_ok());
    // A driver that stops going round (here: it has stopped) is reported, with how long.
    e.shutdown(Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = e
        .driver_alive(200)
        .expect_err("a stopped driver is not alive");
    assert!(stale >= 200, "{stale}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_cancelling_faults_that_instance_only() {
    tokio::time::timeout(LIMIT, async {
        let d = dir("cancel-panic");
        let mut cfg = config(&d);
        cfg.faults.panic_on_cancel = true;
        let e = Engine::open(cfg).await.expect("open");
        register_all(&e).await;
        let victim = e
            .start("p", "listener", None, json!({}))
            .await
            .expect("start")
            .id;
        let other = e
            .start("p", "listener", None, json!({}))
            .await
            .expect("start")
            .id;
        let v = e.cancel(&victim).await.expect("answered");
        assert_eq!(v.status, InstanceStatus::Faulted);
        let err = v.error.expect("error").to_string();
        assert!(err.contains("injected panic while cancelling"), "{err}");
        // The engine goes on: the other listener still takes its event, new work runs.
        let n = e
            .publish_event(
                json!({"specversion": "1.0", "id": "go-2", "source": "https://t", "type": "p.go"}),
            )
            .await
            .expect("publish");
        assert_eq!(n, 1);
        let w = e
            .wait_finished(&other, Duration::from_secs(10))
            .await
            .expect("other");
        assert_eq!(w.instance.status, InstanceStatus::Completed);
        quick_ones_complete(&e, 10).await;
        e.shutdown(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(&d);
    })
    .await
    .expect("watchdog");
}

//! Instance concurrency limits (`document.metadata.kflow.concurrency`), in-process over a real
//! SQLite store.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use kflow_server::engine::{Engine, EngineConfig, EngineError};
use kflow_store::sqlite::SqliteStore;

async fn engine() -> Engine {
    let store = SqliteStore::open_in_memory().expect("store");
    Engine::with_store(Arc::new(store), EngineConfig::default())
        .await
        .expect("engine")
}

fn doc(name: &str, concurrency: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: c\n  name: {name}\n  version: '1.0.0'\n  metadata:\n    kflow:\n      concurrency:\n{concurrency}do:\n  - nap:\n      wait: PT0.3S\n  - done:\n      set:\n        who: ${{ .who }}\n"
    )
}

/// (started ms, finished ms) of an instance, from its history.
async fn span(e: &Engine, id: &str) -> (i64, i64) {
    let h = e.history(id, 0, 1000).await.expect("history");
    let started = h
        .iter()
        .find(|ev| ev.kind == "started")
        .map(|ev| ev.time_ms)
        .expect("started");
    let done = h
        .iter()
        .rev()
        .find(|ev| ev.data["type"] == "workflow.completed" || ev.kind == "cancelled")
        .map(|ev| ev.time_ms)
        .expect("finished");
    (started, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_one_queues_and_runs_one_at_a_time_in_order() {
    let e = engine().await;
    e.register(doc("one", "        limit: 1\n").as_bytes())
        .await
        .expect("register");
    let mut ids = Vec::new();
    for who in ["a", "b", "c"] {
        ids.push(
            e.start("c", "one", None, json!({"who": who}))
                .await
                .expect("start")
                .id,
        );
    }
    let waiting = serde_json::to_value(e.explain(&ids[2]).await.expect("explain")).expect("json");
    assert!(
        waiting.to_string().contains("concurrency limit"),
        "{waiting}"
    );
    assert!(
        waiting["waiting"]
            .as_array()
            .expect("list")
            .contains(&json!({
                "task": null,
                "kind": "concurrency",
                "reason": "waiting for a slot under the workflow's concurrency limit"
            })),
        "{waiting}"
    );
    let mut spans = Vec::new();
    for id in &ids {
        let v = e
            .wait_finished(id, Duration::from_secs(10))
            .await
            .expect("wait");
        assert_eq!(v.instance.status.as_str(), "completed");
        spans.push(span(&e, id).await);
    }
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "the next instance started before the previous one finished: {spans:?}"
        );
    }
    let out: Vec<Value> = futures_outputs(&e, &ids).await;
    assert_eq!(
        out,
        vec![
            json!({"who": "a"}),
            json!({"who": "b"}),
            json!({"who": "c"})
        ]
    );
}

async fn futures_outputs(e: &Engine, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            e.instance(id)
                .await
                .expect("get")
                .instance
                .output
                .unwrap_or(Value::Null),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_refuses_and_cancel_oldest_replaces() {
    let e = engine().await;
    e.register(doc("sk", "        limit: 1\n        onLimit: skip\n").as_bytes())
        .await
        .expect("register");
    let first = e
        .start("c", "sk", None, json!({"who": "a"}))
        .await
        .expect("start");
    match e.start("c", "sk", None, json!({"who": "b"})).await {
        Err(EngineError::Conflict(m)) => assert!(m.contains("concurrency limit"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    e.wait_finished(&first.id, Duration::from_secs(10))
        .await
        .expect("wait");
    e.start("c", "sk", None, json!({"who": "c"}))
        .await
        .expect("a slot is free again");

    e.register(doc("co", "        limit: 1\n        onLimit: cancelOldest\n").as_bytes())
        .await
        .expect("register");
    let old = e
        .start("c", "co", None, json!({"who": "old"}))
        .await
        .expect("start");
    let new = e
        .start("c", "co", None, json!({"who": "new"}))
        .await
        .expect("start");
    assert_eq!(
        e.instance(&old.id)
            .await
            .expect("get")
            .instance
            .status
            .as_str(),
        "cancelled"
    );
    let v = e
        .wait_finished(&new.id, Duration::from_secs(10))
        .await
        .expect("wait");
    assert_eq!(v.instance.output, Some(json!({"who": "new"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limits_per_value() {
    let e = engine().await;
    e.register(doc("k", "        limit: 1\n        key: ${ .customer }\n").as_bytes())
        .await
        .expect("register");
    let a1 = e
        .start("c", "k", None, json!({"customer": "x", "who": 1}))
        .await
        .expect("start");
    let b1 = e
        .start("c", "k", None, json!({"customer": "y", "who": 2}))
        .await
        .expect("start");
    let a2 = e
        .start("c", "k", None, json!({"customer": "x", "who": 3}))
        .await
        .expect("start");
    for id in [&a1.id, &b1.id, &a2.id] {
        e.wait_finished(id, Duration::from_secs(10))
            .await
            .expect("wait");
    }
    let (sa1, ea1) = span(&e, &a1.id).await;
    let (sb1, _) = span(&e, &b1.id).await;
    let (sa2, _) = span(&e, &a2.id).await;
    assert!(sb1 < ea1, "another customer runs at the same time");
    assert!(sa2 >= ea1, "the same customer waits");
    assert!(sa1 <= sb1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_at_registration() {
    let e = engine().await;
    for bad in [
        "        limit: 0\n",
        "        limit: 1\n        onLimit: later\n",
        "        limit: 1\n        key: ${ .a ==\n",
        "        limit: 1\n        max: 2\n",
    ] {
        match e.register(doc("bad", bad).as_bytes()).await {
            Err(EngineError::Invalid { details, .. }) => assert!(
                details.iter().any(|d| d.contains("concurrency")),
                "{details:?}"
            ),
            other => panic!("{bad:?} should be refused, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_instances_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("kflow-conc-{}", uuid::Uuid::now_v7()));
    let cfg = || EngineConfig {
        data_dir: dir.clone(),
        ..EngineConfig::default()
    };
    let e = Engine::open(cfg()).await.expect("open");
    let body = "        limit: 1\n".to_string();
    let long = doc("r", &body).replace("PT0.3S", "PT1S");
    e.register(long.as_bytes()).await.expect("register");
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for who in ["a", "b", "c"] {
            v.push(
                e.start("c", "r", None, json!({"who": who}))
                    .await
                    .expect("start")
                    .id,
            );
        }
        v
    };
    // Stop at once: the first is mid-wait, the others queued.
    e.shutdown(Duration::from_millis(0)).await;
    drop(e);
    let e = Engine::open(cfg()).await.expect("reopen");
    for id in &ids {
        let v = e
            .wait_finished(id, Duration::from_secs(15))
            .await
            .expect("wait");
        assert_eq!(v.instance.status.as_str(), "completed", "{id}");
    }
    let mut spans = Vec::new();
    for id in &ids {
        spans.push(span(&e, id).await);
    }
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlap after the restart: {spans:?}");
    }
    e.shutdown(Duration::from_millis(0)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_limit_spans_its_workflows() {
    let store = SqliteStore::open_in_memory().expect("store");
    let mut cfg = EngineConfig::default();
    cfg.namespace_limits.insert("c".into(), 1);
    let e = Engine::with_store(Arc::new(store), cfg)
        .await
        .expect("engine");
    // Two workflows without limits of their own, in the limited namespace.
    let plain = |name: &str| {
        format!(
            "document:\n  dsl: '1.0.3'\n  namespace: c\n  name: {name}\n  version: '1.0.0'\ndo:\n  - nap:\n      wait: PT0.3S\n"
        )
    };
    e.register(plain("p").as_bytes()).await.expect("register");
    e.register(plain("q").as_bytes()).await.expect("register");
    let a = e.start("c", "p", None, json!({})).await.expect("start").id;
    let b = e.start("c", "q", None, json!({})).await.expect("start").id;
    for id in [&a, &b] {
        e.wait_finished(id, Duration::from_secs(10))
            .await
            .expect("wait");
    }
    let (_, end_a) = span(&e, &a).await;
    let (start_b, _) = span(&e, &b).await;
    assert!(
        start_b >= end_a,
        "the namespace runs one instance at a time"
    );
}

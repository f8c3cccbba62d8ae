//! `explain`: what an instance waits for, including DAG subtasks held by their dependencies.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use kflow_server::engine::{Engine, EngineConfig};
use kflow_store::sqlite::SqliteStore;

const DAG: &str = "document:\n  dsl: '1.0.3'\n  namespace: x\n  name: graph\n  version: '1.0.0'\ndo:\n  - build:\n      dag:\n        tasks:\n          - fetch:\n              wait: PT0.5S\n          - merge:\n              needs: [fetch]\n              set:\n                ok: true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_timers_and_dag_dependencies() {
    let e = Engine::with_store(
        Arc::new(SqliteStore::open_in_memory().expect("store")),
        EngineConfig::default(),
    )
    .await
    .expect("engine");
    e.register(DAG.as_bytes()).await.expect("register");
    let id = e
        .start("x", "graph", None, json!({}))
        .await
        .expect("start")
        .id;
    let why = serde_json::to_value(e.explain(&id).await.expect("explain")).expect("json");
    let reasons: Vec<String> = why["waiting"]
        .as_array()
        .expect("list")
        .iter()
        .map(|w| format!("{} {}", w["task"], w["reason"]))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("/do/0/build/dag/tasks/0/fetch") && r.contains("timer")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("/do/0/build/dag/tasks/1/merge")
                && r.contains("dependencies: fetch")),
        "{reasons:?}"
    );
    // The JSON is the API's: keys in this order, `effect` only on pending effects.
    let keys = |w: &serde_json::Value| {
        w.as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    let waiting = why["waiting"].as_array().expect("list");
    let timer = waiting
        .iter()
        .find(|w| w["kind"] == "timer")
        .expect("timer");
    assert_eq!(keys(timer), ["task", "effect", "kind", "reason"]);
    assert!(timer["effect"].is_u64(), "{timer}");
    let dep = waiting
        .iter()
        .find(|w| w["kind"] == "dependency")
        .expect("dependency");
    assert_eq!(
        *dep,
        json!({ "task": "/do/0/build/dag/tasks/1/merge", "kind": "dependency", "reason": "waiting for its dependencies: fetch" })
    );
    assert_eq!(keys(&why), ["id", "status", "waiting", "isolation"]);
    // In-process engines run no sandbox: said so.
    assert!(
        why["isolation"]
            .as_str()
            .unwrap_or("")
            .contains("unconfined"),
        "{why}"
    );
    assert_eq!(why["id"], json!(id));
    assert_eq!(why["status"], json!("running"));
    let v = e
        .wait_finished(&id, Duration::from_secs(5))
        .await
        .expect("wait");
    assert_eq!(v.instance.status.as_str(), "completed");
    let after = serde_json::to_value(e.explain(&id).await.expect("explain")).expect("json");
    assert_eq!(after["waiting"], json!([]));
}

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
    let why = e.explain(&id).await.expect("explain");
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
    let v = e
        .wait_finished(&id, Duration::from_secs(5))
        .await
        .expect("wait");
    assert_eq!(v.instance.status.as_str(), "completed");
    let after = e.explain(&id).await.expect("explain");
    assert_eq!(after["waiting"], json!([]));
}

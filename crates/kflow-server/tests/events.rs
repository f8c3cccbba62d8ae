//! Posted CloudEvents are recorded before they are acknowledged, and an event recorded but not
//! delivered (a crash in between) is offered again at the next start.

use std::time::Duration;

use serde_json::json;

use kflow_server::engine::{Engine, EngineConfig};
use kflow_store::Store;
use kflow_store::sqlite::{Durability, SqliteStore};

const LISTENER: &str = "document:\n  dsl: '1.0.3'\n  namespace: ev\n  name: waiter\n  version: '1.0.0'\ndo:\n  - wait:\n      listen:\n        to:\n          one:\n            with:\n              type: com.example.paid\n";

fn paid(id: &str) -> serde_json::Value {
    json!({"specversion": "1.0", "id": id, "source": "https://shop.test", "type": "com.example.paid", "data": {"order": id}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_recorded_and_a_lost_delivery_is_redone_at_restart() {
    let dir = std::env::temp_dir().join(format!("kflow-events-{}", uuid::Uuid::now_v7()));
    let cfg = || EngineConfig {
        data_dir: dir.clone(),
        ..EngineConfig::default()
    };
    let e = Engine::open(cfg()).await.expect("open");
    e.register(LISTENER.as_bytes()).await.expect("register");
    let first = e
        .start("ev", "waiter", None, json!({}))
        .await
        .expect("start")
        .id;
    let second = e
        .start("ev", "waiter", None, json!({}))
        .await
        .expect("start")
        .id;

    // A posted event: recorded, delivered to both listeners, marked processed.
    assert_eq!(e.publish_event(paid("o-1")).await.expect("publish"), 2);
    for id in [&first, &second] {
        let v = e
            .wait_finished(id, Duration::from_secs(5))
            .await
            .expect("wait");
        assert_eq!(v.instance.output, Some(json!([{"order": "o-1"}])));
    }

    // A third listener, then a crash between recording an event and delivering it: simulated by
    // recording it through another connection while the engine is stopped.
    let third = e
        .start("ev", "waiter", None, json!({}))
        .await
        .expect("start")
        .id;
    e.shutdown(Duration::from_millis(0)).await;
    drop(e);
    {
        let store = SqliteStore::open(&dir.join("kflow.db"), Durability::Process).expect("store");
        assert!(
            store.pending_events(10).expect("pending").is_empty(),
            "the first event was marked processed"
        );
        store.add_event(&paid("o-2"), 1).expect("record");
    }
    let e = Engine::open(cfg()).await.expect("reopen");
    let v = e
        .wait_finished(&third, Duration::from_secs(5))
        .await
        .expect("wait");
    assert_eq!(
        v.instance.output,
        Some(json!([{"order": "o-2"}])),
        "the recorded event reached the listener after the restart"
    );
    e.shutdown(Duration::from_millis(0)).await;
    drop(e);
    let store = SqliteStore::open(&dir.join("kflow.db"), Durability::Process).expect("store");
    assert!(
        store.pending_events(10).expect("pending").is_empty(),
        "offered once, then marked processed"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

//! Posted CloudEvents are recorded before they are acknowledged, and an event recorded but not
//! delivered (a crash in between) is offered again at the next start. A listener gets exactly
//! the events its filters take, runtime expressions included: the others never reach its
//! history.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

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

/// The spec's example filter (dsl-reference.md, Listen): `data: ${ .temperature > 38 }`.
const FEVER: &str = "document:\n  dsl: '1.0.3'\n  namespace: ev\n  name: fever\n  version: '1.0.0'\ndo:\n  - watch:\n      listen:\n        to:\n          one:\n            with:\n              type: com.fake-hospital.vitals.measurements.temperature\n              data: ${ .temperature > 38 }\n";

fn vitals(ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": uuid::Uuid::now_v7().to_string(), "source": "https://hospital.test", "type": ty, "data": data})
}

const TEMPERATURE: &str = "com.fake-hospital.vitals.measurements.temperature";

fn deliveries(history: &[Value]) -> Vec<&Value> {
    history.iter().filter(|e| e["kind"] == "delivery").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_is_delivered_only_the_events_its_expression_filter_takes() {
    let api = support::Api::new().await;
    api.register(FEVER).await;
    let id = api.start("ev", "fever", json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Five events the filter rejects, each on what its expression reads: none is delivered (the
    // host decides as the instance would), so none is journaled.
    for e in [
        vitals(TEMPERATURE, json!({"temperature": 20})),
        vitals(TEMPERATURE, json!({"temperature": 38})),
        vitals(TEMPERATURE, json!({"pulse": 90})),
        vitals(TEMPERATURE, json!("not an object")),
        vitals(
            "com.fake-hospital.vitals.measurements.bpm",
            json!({"temperature": 40}),
        ),
    ] {
        let r = api
            .post_json("/api/v1/events", &e)
            .await
            .expect(StatusCode::ACCEPTED);
        assert_eq!(r["matched"], 0, "{e}");
    }
    assert_eq!(api.instance(&id).await["status"], "running");
    assert!(deliveries(&api.history(&id).await).is_empty());
    let r = api
        .post_json(
            "/api/v1/events",
            &vitals(TEMPERATURE, json!({"temperature": 40})),
        )
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(r["matched"], 1);
    let done = api.wait_status(&id, "completed").await;
    assert_eq!(done["output"], json!([{"temperature": 40}]));
    let history = api.history(&id).await;
    let got = deliveries(&history);
    assert_eq!(got.len(), 1, "exactly one delivery: {history:?}");
    assert_eq!(
        got[0]["data"]["event"]["data"],
        json!({"temperature": 40}),
        "{history:?}"
    );
}

/// A filter reading the task input: `$input` travels with the subscription.
const THRESHOLD: &str = "document:\n  dsl: '1.0.3'\n  namespace: ev\n  name: threshold\n  version: '1.0.0'\ndo:\n  - watch:\n      listen:\n        to:\n          one:\n            with:\n              type: com.fake-hospital.vitals.measurements.temperature\n              data: ${ .temperature > $input.threshold }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_filter_reading_the_task_input_still_decides_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("kflow-events-{}", uuid::Uuid::now_v7()));
    let cfg = || EngineConfig {
        data_dir: dir.clone(),
        ..EngineConfig::default()
    };
    let e = Engine::open(cfg()).await.expect("open");
    e.register(THRESHOLD.as_bytes()).await.expect("register");
    let id = e
        .start("ev", "threshold", None, json!({"threshold": 30}))
        .await
        .expect("start")
        .id;
    let cold = || vitals(TEMPERATURE, json!({"temperature": 25}));
    assert_eq!(e.publish_event(cold()).await.expect("publish"), 0);
    e.shutdown(Duration::from_millis(0)).await;
    drop(e);

    // The subscription is rebuilt from its work row: same filter, same input.
    let e = Engine::open(cfg()).await.expect("reopen");
    assert_eq!(e.publish_event(cold()).await.expect("publish"), 0);
    let warm = vitals(TEMPERATURE, json!({"temperature": 31}));
    assert_eq!(e.publish_event(warm).await.expect("publish"), 1);
    let v = e
        .wait_finished(&id, Duration::from_secs(5))
        .await
        .expect("wait");
    assert_eq!(v.instance.output, Some(json!([{"temperature": 31}])));
    let history = e.history(&id, 0, 1000).await.expect("history");
    let n = history.iter().filter(|h| h.kind == "delivery").count();
    assert_eq!(n, 1, "{history:?}");
    e.shutdown(Duration::from_millis(0)).await;
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

//! Exactly-once starts for clients that retry: a client-chosen instance id or an
//! `Idempotency-Key` header, over the REST API.

mod support;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use kflow_server::api::{ApiConfig, router};
use kflow_server::{Engine, EngineConfig};
use kflow_store::sqlite::SqliteStore;
use support::{Api, wf};

fn waiter() -> String {
    wf(
        "idem",
        "waiter",
        "1.0.0",
        "do:\n  - nap:\n      wait: PT30S\n",
    )
}

async fn api_with_ttl(ttl_ms: i64) -> Api {
    let store = SqliteStore::open_in_memory().expect("store");
    let engine = Engine::with_store(
        Arc::new(store),
        EngineConfig {
            idempotency_ttl_ms: ttl_ms,
            ..EngineConfig::default()
        },
    )
    .await
    .expect("engine");
    Api {
        router: router(engine.clone(), ApiConfig::default()),
        engine,
    }
}

async fn start_keyed(api: &Api, key: &str, body: &Value) -> support::Resp {
    api.request(
        Method::POST,
        "/api/v1/instances",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        body.to_string(),
    )
    .await
}

async fn count_instances(api: &Api) -> usize {
    api.get("/api/v1/instances?namespace=idem&limit=1000")
        .await
        .expect(StatusCode::OK)["items"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_request_answer_the_same_instance() {
    let api = Api::new().await;
    api.register(&waiter()).await;
    let body = json!({"namespace": "idem", "name": "waiter", "input": {"n": 1}});
    let first = start_keyed(&api, "order-42", &body)
        .await
        .expect(StatusCode::CREATED);
    let again = start_keyed(&api, "order-42", &body)
        .await
        .expect(StatusCode::OK);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(count_instances(&api).await, 1);
    // Another request with the key is refused, and starts nothing.
    let other = json!({"namespace": "idem", "name": "waiter", "input": {"n": 2}});
    let e = start_keyed(&api, "order-42", &other)
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("order-42") && msg.contains("another request"),
        "{msg}"
    );
    assert_eq!(count_instances(&api).await, 1);
    // A different key is a different start; no key is always a new start.
    start_keyed(&api, "order-43", &body)
        .await
        .expect(StatusCode::CREATED);
    api.post_json("/api/v1/instances", &body)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(count_instances(&api).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_key_start_one_instance() {
    let api = Api::new().await;
    api.register(&waiter()).await;
    let body = json!({"namespace": "idem", "name": "waiter", "input": {}});
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let router = api.router.clone();
        let engine = api.engine.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let api = Api { router, engine };
            let r = start_keyed(&api, "burst", &body).await;
            (r.status, r.json()["id"].clone())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let (status, id) = t.await.expect("task");
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
        created += usize::from(status == StatusCode::CREATED);
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(created, 1);
    assert_eq!(count_instances(&api).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_chosen_id_starts_once() {
    let api = Api::new().await;
    api.register(&waiter()).await;
    let body = json!({"namespace": "idem", "name": "waiter", "id": "deploy-2026-12-04", "input": {"env": "prod"}});
    let first = api
        .post_json("/api/v1/instances", &body)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(first["id"], "deploy-2026-12-04");
    let again = api
        .post_json("/api/v1/instances", &body)
        .await
        .expect(StatusCode::OK);
    assert_eq!(again["id"], "deploy-2026-12-04");
    let mut other = body.clone();
    other["input"] = json!({"env": "staging"});
    api.post_json("/api/v1/instances", &other)
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(count_instances(&api).await, 1);
    for bad in ["", "has space", "a.b", "ünï", &"x".repeat(129)] {
        let mut b = body.clone();
        b["id"] = json!(bad);
        let e = api
            .post_json("/api/v1/instances", &b)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("invalid instance id")),
            "{e}"
        );
    }
    assert_eq!(count_instances(&api).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_and_expired_keys_are_forgotten() {
    let api = api_with_ttl(1).await;
    api.register(&waiter()).await;
    let body = json!({"namespace": "idem", "name": "waiter"});
    start_keyed(&api, &"k".repeat(256), &body)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    let a = start_keyed(&api, "short-lived", &body)
        .await
        .expect(StatusCode::CREATED);
    // Kept for 1 ms: by the next request it has expired and the key starts anew.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = start_keyed(&api, "short-lived", &body)
        .await
        .expect(StatusCode::CREATED);
    assert_ne!(a["id"], b["id"]);
}

//! Any request to the API (method, path and query, headers, body) from a caller with a valid
//! admin token: an answer, never a panic (a 500 from an in-memory store means one) or a hang.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-admin-token-0123456789abcdef0123";

struct Api {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let router = rt.block_on(async {
            let store: Arc<dyn kflow_store::Store> =
                Arc::new(kflow_store::sqlite::SqliteStore::open_in_memory().expect("store"));
            let engine = kflow_server::Engine::with_store(store.clone(), Default::default())
                .await
                .expect("engine");
            let doc = "document: {dsl: '1.0.0', namespace: f, name: w, version: '1.0.0'}\n\
                       do:\n  - a:\n      wait: {hours: 1}\n";
            engine.register(doc.as_bytes()).await.expect("register");
            let tokens = kflow_server::auth::Tokens::load(store, Some(TOKEN)).expect("tokens");
            kflow_server::api::router(
                engine,
                kflow_server::api::ApiConfig {
                    auth: kflow_server::auth::AuthMode::Tokens(Arc::new(tokens)),
                    ..Default::default()
                },
            )
        });
        Api { rt, router }
    })
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const PREFIXES: [&str; 8] = [
    "/api/v1/instances",
    "/api/v1/definitions",
    "/api/v1/events",
    "/api/v1/workers",
    "/api/v1/tokens",
    "/api/v1/secrets",
    "/api/v1/audit",
    "/api/v1/schedules",
];
const TYPES: [&str; 5] = [
    "application/json",
    "application/yaml",
    "application/cloudevents+json",
    "text/plain",
    "application/cloudevents-batch+json",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let method = METHODS[data[0] as usize % METHODS.len()];
    let prefix = PREFIXES[data[1] as usize % PREFIXES.len()];
    let ctype = TYPES[data[2] as usize % TYPES.len()];
    // The rest: a path suffix and query up to the first NUL, then the body.
    let rest = &data[3..];
    let (tail, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let tail = String::from_utf8_lossy(tail);
    let uri = format!("{prefix}{tail}");
    let Ok(req) = Request::builder()
        .method(method)
        .uri(uri.as_str())
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", ctype)
        .body(Body::from(body.to_vec()))
    else {
        return; // not a request http can even represent
    };
    let a = api();
    let status = a.rt.block_on(async {
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            a.router.clone().oneshot(req),
        )
        .await;
        match resp {
            Ok(Ok(r)) => r.status().as_u16(),
            Ok(Err(_)) => 0,
            // A long-poll or a wait: fine, as long as it is bounded by the caller's timeout.
            Err(_) => 0,
        }
    });
    assert_ne!(status, 500, "{method} {uri} ({ctype}) answered 500");
});

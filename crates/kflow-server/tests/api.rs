//! The REST API end to end, in process: every route, the good paths and the bad inputs, with
//! status codes and bodies checked.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use kflow_server::api::ApiConfig;
use kflow_server::engine::clock::ManualClock;
use support::{Api, kinds, notice_types, parse_sse, wf};

/// Two set tasks around a short wait: `{"greeting": "hello NAME", "done": true}`.
fn greeter(version: &str, wait: &str) -> String {
    wf(
        "test",
        "greeter",
        version,
        &format!(
            "do:\n  - first:\n      set:\n        greeting: ${{ \"hello \" + .name }}\n  - pause:\n      wait: {wait}\n  - second:\n      set:\n        greeting: ${{ .greeting }}\n        done: true\n"
        ),
    )
}

fn quick(ns: &str, name: &str, version: &str) -> String {
    wf(
        ns,
        name,
        version,
        "do:\n  - only:\n      set:\n        n: ${ .n }\n",
    )
}

fn sleeper(name: &str, wait: &str) -> String {
    wf(
        "test",
        name,
        "1.0.0",
        &format!("do:\n  - nap:\n      wait: {wait}\n  - after:\n      set:\n        woke: true\n"),
    )
}

const LISTENER_BODY: &str = "do:\n  - waitForOrder:\n      listen:\n        to:\n          one:\n            with:\n              type: com.example.order\n";

// ---------------------------------------------------------------------------------------------
// health, routing, openapi

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_ok() {
    let api = Api::new().await;
    let r = api.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let api = Api::new().await;
    let e = api
        .get("/api/v1/nothing-here")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/api/v1/nothing-here"),
        "{e}"
    );
    api.get("/nothing-here")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    api.get("/api/v1/definitions/a/b/c/d/e/f")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    // A known path with another method.
    api.request(Method::DELETE, "/api/v1/definitions", &[], Body::empty())
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    api.get("/api/v1/instances/x/cancel")
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    api.post("/healthz")
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_path() {
    let api = Api::new().await;
    let r = api.get("/api/v1/openapi.json").await;
    let doc = r.expect(StatusCode::OK);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "kflow");
    let paths = doc["paths"].as_object().expect("paths");
    let expect = [
        ("/api/v1/definitions", vec!["get", "post"]),
        ("/api/v1/definitions/{namespace}/{name}", vec!["get"]),
        (
            "/api/v1/definitions/{namespace}/{name}/versions/{version}",
            vec!["get"],
        ),
        (
            "/api/v1/definitions/{namespace}/{name}/versions/{version}/deprecate",
            vec!["post"],
        ),
        ("/api/v1/instances", vec!["get", "post"]),
        ("/api/v1/instances/{id}", vec!["get"]),
        ("/api/v1/instances/{id}/cancel", vec!["post"]),
        ("/api/v1/instances/{id}/retry", vec!["post"]),
        ("/api/v1/instances/{id}/suspend", vec!["post"]),
        ("/api/v1/instances/{id}/resume", vec!["post"]),
        ("/api/v1/instances/{id}/history", vec!["get"]),
        ("/api/v1/instances/{id}/watch", vec!["get"]),
        ("/api/v1/events", vec!["post"]),
        ("/api/v1/schedules", vec!["get"]),
        ("/api/v1/workers", vec!["get", "post"]),
        ("/api/v1/workers/{id}/poll", vec!["post"]),
        ("/api/v1/workers/{id}/heartbeat", vec!["post"]),
        ("/api/v1/workers/{id}/drain", vec!["post"]),
        ("/api/v1/leases/{lease}/complete", vec!["post"]),
        ("/api/v1/queues", vec!["get"]),
        ("/api/v1/services", vec!["get"]),
        ("/api/v1/services/{name}/endpoints", vec!["delete", "put"]),
        ("/api/v1/instances/{id}/explain", vec!["get"]),
        ("/api/v1/schedules/{namespace}/{name}/pause", vec!["post"]),
        ("/api/v1/schedules/{namespace}/{name}/resume", vec!["post"]),
        ("/api/v1/openapi.json", vec!["get"]),
        ("/healthz", vec!["get"]),
        ("/metrics", vec!["get"]),
        ("/api/v1/alerts", vec!["get"]),
        ("/api/v1/definitions/validate", vec!["post"]),
        (
            "/api/v1/definitions/{namespace}/{name}/versions/{version}/graph",
            vec!["get"],
        ),
        (
            "/api/v1/definitions/{namespace}/{name}/analysis",
            vec!["get"],
        ),
        ("/api/v1/definitions/{namespace}/{name}/diff", vec!["get"]),
        ("/api/v1/whoami", vec!["get"]),
        ("/api/v1/tokens", vec!["get", "post"]),
        ("/api/v1/tokens/{id}/revoke", vec!["post"]),
        ("/api/v1/audit", vec!["get"]),
        ("/api/v1/audit/verify", vec!["get"]),
        ("/api/v1/secrets", vec!["get"]),
        ("/api/v1/secrets/{namespace}/{name}", vec!["put", "delete"]),
        ("/api/v1/secrets/rotate-key", vec!["post"]),
        ("/api/v1/nodes", vec!["get"]),
    ];
    for (path, methods) in &expect {
        let item = paths.get(*path).unwrap_or_else(|| {
            panic!("{path} missing from {:?}", paths.keys().collect::<Vec<_>>())
        });
        for m in methods {
            assert!(item.get(*m).is_some(), "{path} has no {m}");
        }
    }
    assert_eq!(
        paths.len(),
        expect.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    // Generated from the types: the schemas are there and referenced.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for s in [
        "ErrorBody",
        "RegisterResponse",
        "DefinitionDetail",
        "InstanceDto",
        "InstanceViewDto",
        "InstanceList",
        "HistoryList",
        "StartRequest",
        "EventAccepted",
        "Explanation",
        "WaitReason",
        "QueuesResponse",
        "QueueView",
        "DispatchLatency",
    ] {
        assert!(
            schemas.contains_key(s),
            "schema {s} missing: {:?}",
            schemas.keys().collect::<Vec<_>>()
        );
    }
    let start = &paths["/api/v1/instances"]["post"];
    assert!(
        start["responses"]["201"].is_object() && start["responses"]["409"].is_object(),
        "{start}"
    );
    // Operation ids are unique.
    let mut ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|o| o.values()))
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate operation ids: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_answer_their_fields_in_order() {
    let api = Api::new().await;
    let doc = api.get("/api/v1/queues").await.expect(StatusCode::OK);
    let keys = |v: &Value| {
        v.as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&doc), ["items", "dispatch_latency", "hosts"]);
    assert_eq!(
        keys(&doc["dispatch_latency"]),
        ["count", "p50_us", "p99_us"]
    );
    let default = doc["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap_or_else(|| panic!("no default queue: {doc}"));
    assert_eq!(
        keys(default),
        ["queue", "depth", "oldest_wait_ms", "workers"]
    );
    assert_eq!(default["depth"], json!(0));
    assert!(default["workers"].is_array(), "{default}");
}

// ---------------------------------------------------------------------------------------------
// definitions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_created_unchanged_conflict() {
    let api = Api::new().await;
    let doc = quick("test", "reg", "1.0.0");
    let r = api
        .post_raw("/api/v1/definitions", "application/yaml", doc.clone())
        .await;
    assert_eq!(
        r.expect(StatusCode::CREATED),
        json!({"namespace": "test", "name": "reg", "version": "1.0.0", "outcome": "created"})
    );
    // Same content again (whatever the content type): unchanged.
    let r = api
        .post_raw("/api/v1/definitions", "text/plain", doc.clone())
        .await;
    assert_eq!(
        r.expect(StatusCode::OK),
        json!({"namespace": "test", "name": "reg", "version": "1.0.0", "outcome": "unchanged"})
    );
    // Same version, other content: conflict, saying to bump the version.
    let other = wf(
        "test",
        "reg",
        "1.0.0",
        "do:\n  - only:\n      set:\n        n: 2\n",
    );
    let e = api
        .post_raw("/api/v1/definitions", "application/yaml", other.clone())
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains("1.0.0") && msg.contains("version"), "{msg}");
    // Bumped: created.
    let bumped = other.replace("'1.0.0'", "'1.0.1'");
    assert_eq!(api.register(&bumped).await["version"], "1.0.1");
    // The first content is still what 1.0.0 holds.
    let got = api
        .get("/api/v1/definitions/test/reg/versions/1.0.0")
        .await
        .expect(StatusCode::OK);
    assert_eq!(got["source"], json!(doc));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_accepts_json_documents() {
    let api = Api::new().await;
    let doc = json!({
        "document": {"dsl": "1.0.3", "namespace": "json", "name": "doc", "version": "0.1.0"},
        "do": [{"only": {"set": {"from": "json"}}}]
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let r = api
        .post_raw("/api/v1/definitions", "application/json", text.clone())
        .await;
    assert_eq!(r.expect(StatusCode::CREATED)["outcome"], "created");
    // No content type at all works too (it is unchanged now).
    let r = api
        .request(Method::POST, "/api/v1/definitions", &[], text.clone())
        .await;
    assert_eq!(r.expect(StatusCode::OK)["outcome"], "unchanged");
    let got = api
        .get("/api/v1/definitions/json/doc")
        .await
        .expect(StatusCode::OK);
    assert_eq!(got["source"], json!(text));
    // And it runs.
    let inst = api.start("json", "doc", json!({})).await;
    let done = api
        .wait_status(inst["id"].as_str().unwrap_or_default(), "completed")
        .await;
    assert_eq!(done["output"], json!({"from": "json"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_invalid_documents_give_diagnostics() {
    let api = Api::new().await;
    // An unknown task type, on line 8.
    let bad = wf(
        "test",
        "bad",
        "1.0.0",
        "do:\n  - oops:\n      frobnicate: true\n",
    );
    let e = api
        .post_raw("/api/v1/definitions", "application/yaml", bad)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    let details = e["details"].as_array().cloned().unwrap_or_default();
    assert!(!details.is_empty(), "{e}");
    for d in &details {
        let d = d.as_str().unwrap_or_default();
        let mut parts = d.splitn(3, ':');
        let line = parts.next().unwrap_or_default();
        let col = parts.next().unwrap_or_default();
        assert!(
            line.parse::<u32>().is_ok() && col.parse::<u32>().is_ok(),
            "not LINE:COL: message: {d}"
        );
        assert!(parts.next().is_some_and(|m| !m.trim().is_empty()), "{d}");
    }
    assert!(
        details
            .iter()
            .any(|d| d.as_str().unwrap_or_default().starts_with("8:7:")),
        "{details:?}"
    );
    // Broken YAML, JSON, nothing at all, a bare scalar, binary junk: 400, never stored.
    for body in [
        "document: [unclosed".as_bytes().to_vec(),
        br#"{"document": {"dsl": "1.0.3""#.to_vec(),
        b"".to_vec(),
        b"   \n".to_vec(),
        b"42".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
    ] {
        let r = api
            .post_raw(
                "/api/v1/definitions",
                "application/octet-stream",
                body.clone(),
            )
            .await;
        r.expect_error(StatusCode::BAD_REQUEST, "invalid");
    }
    // Missing document fields.
    let e = api
        .post_raw(
            "/api/v1/definitions",
            "application/yaml",
            "document:\n  dsl: '1.0.3'\ndo: []\n",
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        !e["details"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .is_empty(),
        "{e}"
    );
    let list = api.get("/api/v1/definitions").await.expect(StatusCode::OK);
    assert_eq!(list, json!({"items": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_the_highest_semantic_version() {
    let api = Api::new().await;
    for v in ["1.2.0", "1.10.0", "1.9.0"] {
        api.register(&quick("test", "semver", v)).await;
    }
    let latest = api
        .get("/api/v1/definitions/test/semver")
        .await
        .expect(StatusCode::OK);
    assert_eq!(latest["version"], "1.10.0");
    assert_eq!(latest["source"], json!(quick("test", "semver", "1.10.0")));
    assert_eq!(latest["deprecated"], false);
    assert!(
        latest["hash"].as_str().is_some_and(|h| h.len() == 64),
        "{latest}"
    );
    assert!(
        latest["created"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{latest}"
    );
    assert!(
        latest["created_ms"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{latest}"
    );
    let v = api
        .get("/api/v1/definitions/test/semver/versions/1.9.0")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["version"], "1.9.0");
    assert_eq!(v["source"], json!(quick("test", "semver", "1.9.0")));
    let v = api
        .get("/api/v1/definitions/test/semver/versions/latest")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["version"], "1.10.0");
    // An instance started without a version runs the latest.
    let inst = api.start("test", "semver", json!({"n": 1})).await;
    assert_eq!(inst["version"], "1.10.0");
    // Unknown version, workflow, namespace.
    let e = api
        .get("/api/v1/definitions/test/semver/versions/2.0.0")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("2.0.0"),
        "{e}"
    );
    api.get("/api/v1/definitions/test/nope")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    api.get("/api/v1/definitions/other/semver")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    // `latest` in the deprecate path names the highest version.
    let d = api
        .post("/api/v1/definitions/test/semver/versions/latest/deprecate")
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (d["version"].clone(), d["deprecated"].clone()),
        (json!("1.10.0"), json!(true))
    );
    let v = api
        .get("/api/v1/definitions/test/semver/versions/1.9.0")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["deprecated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_definitions_by_namespace_without_sources() {
    let api = Api::new().await;
    api.register(&quick("alpha", "one", "1.0.0")).await;
    api.register(&quick("alpha", "one", "1.1.0")).await;
    api.register(&quick("alpha", "two", "0.1.0")).await;
    api.register(&quick("beta", "three", "2.0.0")).await;
    let all = api.get("/api/v1/definitions").await.expect(StatusCode::OK);
    let items = all["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 4, "{all}");
    for it in &items {
        let keys: Vec<&String> = it
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys.len(), 7, "{it}");
        for k in [
            "namespace",
            "name",
            "version",
            "hash",
            "deprecated",
            "created",
            "created_ms",
        ] {
            assert!(it.get(k).is_some(), "{k} missing in {it}");
        }
        assert!(
            it.get("source").is_none(),
            "the list carries no source: {it}"
        );
    }
    let alpha = api
        .get("/api/v1/definitions?namespace=alpha")
        .await
        .expect(StatusCode::OK);
    let mut got: Vec<(String, String)> = alpha["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_string(),
                i["version"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("one".into(), "1.0.0".into()),
            ("one".into(), "1.1.0".into()),
            ("two".into(), "0.1.0".into())
        ]
    );
    let beta = api
        .get("/api/v1/definitions?namespace=beta")
        .await
        .expect(StatusCode::OK);
    assert_eq!(beta["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(beta["items"][0]["name"], "three");
    let none = api
        .get("/api/v1/definitions?namespace=gamma")
        .await
        .expect(StatusCode::OK);
    assert_eq!(none, json!({"items": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_versions_start_nothing() {
    let api = Api::new().await;
    api.register(&quick("test", "old", "1.0.0")).await;
    let r = api
        .post("/api/v1/definitions/test/old/versions/1.0.0/deprecate")
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["deprecated"], true);
    assert_eq!(r["version"], "1.0.0");
    let got = api
        .get("/api/v1/definitions/test/old")
        .await
        .expect(StatusCode::OK);
    assert_eq!(got["deprecated"], true);
    let e = api
        .post_json(
            "/api/v1/instances",
            &json!({"namespace": "test", "name": "old", "input": {"n": 1}}),
        )
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("deprecated"),
        "{e}"
    );
    api.post_json(
        "/api/v1/instances",
        &json!({"namespace": "test", "name": "old", "version": "1.0.0"}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "conflict");
    // Undone with a body.
    let r = api
        .post_json(
            "/api/v1/definitions/test/old/versions/1.0.0/deprecate",
            &json!({"deprecated": false}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["deprecated"], false);
    let inst = api.start("test", "old", json!({"n": 5})).await;
    assert_eq!(
        api.wait_status(inst["id"].as_str().unwrap_or_default(), "completed")
            .await["output"],
        json!({"n": 5})
    );
    // Explicitly true.
    let r = api
        .post_json(
            "/api/v1/definitions/test/old/versions/1.0.0/deprecate",
            &json!({"deprecated": true}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["deprecated"], true);
    // Bad bodies, unknown versions.
    let e = api
        .post_raw(
            "/api/v1/definitions/test/old/versions/1.0.0/deprecate",
            "application/json",
            "{\"deprecated\": ",
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("line 1"),
        "{e}"
    );
    api.post_json(
        "/api/v1/definitions/test/old/versions/1.0.0/deprecate",
        &json!({"deprecated": "yes"}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    api.post_json(
        "/api/v1/definitions/test/old/versions/1.0.0/deprecate",
        &json!({"deprecate": true}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    api.post_raw(
        "/api/v1/definitions/test/old/versions/1.0.0/deprecate",
        "text/plain",
        "true",
    )
    .await
    .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    api.post("/api/v1/definitions/test/old/versions/9.9.9/deprecate")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    api.post("/api/v1/definitions/test/nope/versions/1.0.0/deprecate")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
}

// ---------------------------------------------------------------------------------------------
// instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_runs_to_completion() {
    let api = Api::new().await;
    api.register(&greeter("1.0.0", "PT0.2S")).await;
    let t0 = Instant::now();
    let inst = api.start("test", "greeter", json!({"name": "Ada"})).await;
    let id = inst["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(id.len(), 36, "a UUID: {inst}");
    assert_eq!(inst["status"], "running");
    assert_eq!(inst["namespace"], "test");
    assert_eq!(inst["name"], "greeter");
    assert_eq!(inst["version"], "1.0.0");
    assert_eq!(inst["input"], json!({"name": "Ada"}));
    assert!(inst.get("output").is_none(), "{inst}");
    assert!(
        inst["created"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{inst}"
    );
    let done = api.wait_status(&id, "completed").await;
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "the wait was not honoured"
    );
    assert_eq!(
        done["output"],
        json!({"greeting": "hello Ada", "done": true})
    );
    assert_eq!(done["input"], json!({"name": "Ada"}));
    assert!(done.get("error").is_none(), "{done}");
    assert_eq!(done["running"], json!([]));
    assert_eq!(done["waiting"], json!([]));
    assert!(
        done["updated_ms"].as_i64() >= done["created_ms"].as_i64(),
        "{done}"
    );
    // Explicit version and "latest" work too; no input means {}.
    let v = api
        .post_json("/api/v1/instances", &json!({"namespace": "test", "name": "greeter", "version": "1.0.0", "input": {"name": "Bo"}}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["version"], "1.0.0");
    let l = api
        .post_json(
            "/api/v1/instances",
            &json!({"namespace": "test", "name": "greeter", "version": "latest"}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(l["input"], json!({}));
    let done = api
        .wait_status(v["id"].as_str().unwrap_or_default(), "completed")
        .await;
    assert_eq!(done["output"]["greeting"], "hello Bo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_schema_failures_name_the_path() {
    let api = Api::new().await;
    let body = "input:\n  schema:\n    format: json\n    document:\n      type: object\n      required: [n]\n      properties:\n        n: { type: integer }\ndo:\n  - a:\n      set:\n        n: ${ .n }\n";
    api.register(&wf("test", "typed", "1.0.0", body)).await;
    let e = api
        .post_json(
            "/api/v1/instances",
            &json!({"namespace": "test", "name": "typed", "input": {"n": "x"}}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("schema"),
        "{e}"
    );
    let details = e["details"].as_array().cloned().unwrap_or_default();
    assert!(
        details
            .iter()
            .any(|d| d.as_str().unwrap_or_default().starts_with("/n")),
        "{e}"
    );
    let e = api
        .post_json(
            "/api/v1/instances",
            &json!({"namespace": "test", "name": "typed", "input": {}}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["details"].to_string().contains("\\\"n\\\"") || e["details"].to_string().contains('n'),
        "{e}"
    );
    // Nothing was started.
    let list = api
        .get("/api/v1/instances?name=typed")
        .await
        .expect(StatusCode::OK);
    assert_eq!(list["items"], json!([]));
    // A good input runs.
    let inst = api.start("test", "typed", json!({"n": 4})).await;
    let done = api
        .wait_status(inst["id"].as_str().unwrap_or_default(), "completed")
        .await;
    assert_eq!(done["output"], json!({"n": 4}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_start_requests() {
    let api = Api::new().await;
    api.register(&quick("test", "q", "1.0.0")).await;
    // Unknown workflow, version.
    let e = api
        .post_json(
            "/api/v1/instances",
            &json!({"namespace": "test", "name": "nope"}),
        )
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("nope"),
        "{e}"
    );
    api.post_json(
        "/api/v1/instances",
        &json!({"namespace": "test", "name": "q", "version": "3.0.0"}),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "not_found");
    // Malformed JSON: serde's message with the position.
    let e = api
        .post_raw(
            "/api/v1/instances",
            "application/json",
            "{\"namespace\": \"test\",",
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains("line 1") && msg.contains("column"), "{msg}");
    let e = api
        .post_raw(
            "/api/v1/instances",
            "application/json",
            "{\"namespace\": \"test\"}",
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing field `name`"),
        "{e}"
    );
    api.post_json(
        "/api/v1/instances",
        &json!({"namespace": "test", "name": "q", "extra": 1}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    api.post_json("/api/v1/instances", &json!({"namespace": 1, "name": "q"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    api.post_json("/api/v1/instances", &json!([1, 2]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    api.post_raw("/api/v1/instances", "application/json", "")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    // Not JSON at all.
    api.post_raw(
        "/api/v1/instances",
        "text/plain",
        "{\"namespace\": \"test\", \"name\": \"q\"}",
    )
    .await
    .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // Without a content type it is read as JSON.
    let r = api
        .request(
            Method::POST,
            "/api/v1/instances",
            &[],
            "{\"namespace\": \"test\", \"name\": \"q\"}",
        )
        .await;
    assert_eq!(r.expect(StatusCode::CREATED)["name"], "q");
    // Parameters on the content type are fine.
    let r = api
        .post_raw(
            "/api/v1/instances",
            "application/json; charset=utf-8",
            "{\"namespace\": \"test\", \"name\": \"q\"}",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instances_are_404() {
    let api = Api::new().await;
    for (method, uri) in [
        (Method::GET, "/api/v1/instances/nope"),
        (
            Method::GET,
            "/api/v1/instances/0190f5a4-7c4e-7b1a-9d7e-0123456789ab",
        ),
        (Method::POST, "/api/v1/instances/nope/cancel"),
        (Method::POST, "/api/v1/instances/nope/suspend"),
        (Method::POST, "/api/v1/instances/nope/resume"),
        (Method::GET, "/api/v1/instances/nope/history"),
        (Method::GET, "/api/v1/instances/nope/watch"),
    ] {
        let e = api
            .request(method.clone(), uri, &[], Body::empty())
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("does not exist"),
            "{method} {uri}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_instances_filters_and_pages() {
    let api = Api::new().await;
    api.register(&quick("test", "a", "1.0.0")).await;
    api.register(&quick("test", "a", "2.0.0")).await;
    api.register(&quick("other", "b", "1.0.0")).await;
    api.register(&sleeper("slow", "PT1H")).await;
    let before = kflow_now();
    let mut a_ids = Vec::new();
    for n in 0..7 {
        let version = if n < 5 { "1.0.0" } else { "2.0.0" };
        let inst = api
            .post_json(
                "/api/v1/instances",
                &json!({"namespace": "test", "name": "a", "version": version, "input": {"n": n}}),
            )
            .await
            .expect(StatusCode::CREATED);
        a_ids.push(inst["id"].as_str().unwrap_or_default().to_string());
    }
    let b = api.start("other", "b", json!({"n": 0})).await;
    let slow = api.start("test", "slow", json!({})).await;
    for id in &a_ids {
        api.wait_status(id, "completed").await;
    }
    api.wait_status(b["id"].as_str().unwrap_or_default(), "completed")
        .await;

    // Three pages of name=a, newest first, no duplicates, nothing missed.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let uri = match &cursor {
            None => "/api/v1/instances?namespace=test&name=a&limit=3".to_string(),
            Some(c) => format!("/api/v1/instances?namespace=test&name=a&limit=3&cursor={c}"),
        };
        let page = api.get(&uri).await.expect(StatusCode::OK);
        let items = page["items"].as_array().cloned().unwrap_or_default();
        sizes.push(items.len());
        for it in &items {
            assert_eq!(it["name"], "a");
            assert_eq!(it["status"], "completed");
            assert!(it["output"].is_object(), "{it}");
            seen.push(it["id"].as_str().unwrap_or_default().to_string());
        }
        cursor = page["next"].as_str().map(str::to_string);
        if sizes.len() < 3 {
            assert!(cursor.is_some(), "page {} has no next: {page}", sizes.len());
        } else {
            assert_eq!(page["next"], Value::Null, "the last page has no next");
        }
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    let mut newest_first = a_ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // Filters.
    let count = |v: &Value| v["items"].as_array().map(Vec::len).unwrap_or(usize::MAX);
    assert_eq!(
        count(&api.get("/api/v1/instances").await.expect(StatusCode::OK)),
        9
    );
    assert_eq!(
        count(
            &api.get("/api/v1/instances?name=a&version=2.0.0")
                .await
                .expect(StatusCode::OK)
        ),
        2
    );
    assert_eq!(
        count(
            &api.get("/api/v1/instances?namespace=other")
                .await
                .expect(StatusCode::OK)
        ),
        1
    );
    let running = api
        .get("/api/v1/instances?status=running")
        .await
        .expect(StatusCode::OK);
    assert_eq!(count(&running), 1);
    assert_eq!(running["items"][0]["id"], slow["id"]);
    assert_eq!(
        count(
            &api.get("/api/v1/instances?status=completed")
                .await
                .expect(StatusCode::OK)
        ),
        8
    );
    assert_eq!(
        count(
            &api.get("/api/v1/instances?status=cancelled")
                .await
                .expect(StatusCode::OK)
        ),
        0
    );
    // Time windows: epoch ms and RFC 3339.
    assert_eq!(
        count(
            &api.get(&format!("/api/v1/instances?from={before}"))
                .await
                .expect(StatusCode::OK)
        ),
        9
    );
    assert_eq!(
        count(
            &api.get(&format!("/api/v1/instances?to={before}"))
                .await
                .expect(StatusCode::OK)
        ),
        0
    );
    assert_eq!(
        count(
            &api.get("/api/v1/instances?from=2000-01-01T00:00:00Z")
                .await
                .expect(StatusCode::OK)
        ),
        9
    );
    assert_eq!(
        count(
            &api.get("/api/v1/instances?to=2000-01-01T00:00:00Z")
                .await
                .expect(StatusCode::OK)
        ),
        0
    );
    assert_eq!(
        count(
            &api.get("/api/v1/instances?from=2999-01-01T00:00:00%2B02:00")
                .await
                .expect(StatusCode::OK)
        ),
        0
    );
    let future = before + 3_600_000;
    assert_eq!(
        count(
            &api.get(&format!(
                "/api/v1/instances?from={before}&to={future}&name=a&limit=100"
            ))
            .await
            .expect(StatusCode::OK)
        ),
        7
    );

    // Bad parameters.
    for q in [
        "status=done",
        "status=RUNNING",
        "from=yesterday",
        "to=2020-13-01T00:00:00Z",
        "from=99999999999999999999",
        "cursor=not-a-cursor",
        "cursor=%FF%FE",
        "limit=0",
        "limit=-1",
        "limit=ten",
        "limit=100000",
    ] {
        let e = api
            .get(&format!("/api/v1/instances?{q}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid");
        assert!(!e["message"].as_str().unwrap_or_default().is_empty(), "{q}");
    }
    let e = api
        .get("/api/v1/instances?status=done")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("done"),
        "{e}"
    );
    let e = api
        .get("/api/v1/instances?cursor=zzz")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("cursor"),
        "{e}"
    );
}

fn kflow_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_waiting_instance() {
    let clock = Arc::new(ManualClock::new(kflow_now()));
    let api = Api::with_clock(clock.clone()).await;
    api.register(&sleeper("sleepy", "PT1H")).await;
    let inst = api.start("test", "sleepy", json!({})).await;
    let id = inst["id"].as_str().unwrap_or_default().to_string();
    let view = api
        .poll(&id, Duration::from_secs(10), "waiting", |v| {
            !v["waiting"].as_array().is_none_or(Vec::is_empty)
        })
        .await;
    assert_eq!(view["status"], "running");
    assert_eq!(view["waiting"][0]["on"], "timer");
    assert_eq!(view["waiting"][0]["task"], "/do/0/nap");
    let until = view["waiting"][0]["until_ms"].as_i64().unwrap_or_default();
    assert!(until > kflow_now() + 3_500_000, "{view}");
    assert!(
        view["waiting"][0]["until"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{view}"
    );
    assert_eq!(view["running"], json!([]));

    let c = api
        .post(&format!("/api/v1/instances/{id}/cancel"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(c["id"], json!(id));
    assert_eq!(c["status"], "cancelled");
    let got = api.instance(&id).await;
    assert_eq!(got["status"], "cancelled");
    assert_eq!(got["waiting"], json!([]), "the timer is gone: {got}");
    let history = api.history(&id).await;
    let k = kinds(&history);
    assert_eq!(k.first().map(String::as_str), Some("started"));
    assert!(k.iter().any(|k| k == "cancelled"), "{k:?}");
    assert!(
        notice_types(&history)
            .iter()
            .any(|t| t == "workflow.cancelled"),
        "{history:?}"
    );
    // Finished: every control is a conflict now.
    for action in ["cancel", "suspend", "resume"] {
        let e = api
            .post(&format!("/api/v1/instances/{id}/{action}"))
            .await
            .expect_error(StatusCode::CONFLICT, "conflict");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("cancelled"),
            "{action}: {e}"
        );
    }
    // Cancelled instances never complete: two hours later (on the engine's clock), after the
    // driver has gone round, it is still cancelled.
    clock.advance(2 * 3600 * 1000);
    api.engine.sync().await.expect("sync");
    assert_eq!(api.instance(&id).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_holds_and_resume_completes() {
    let clock = Arc::new(ManualClock::new(kflow_now()));
    let api = Api::with_clock(clock.clone()).await;
    api.register(&sleeper("pausable", "PT1S")).await;
    let inst = api.start("test", "pausable", json!({})).await;
    let id = inst["id"].as_str().unwrap_or_default().to_string();
    // Not suspended yet: resume is a conflict.
    let e = api
        .post(&format!("/api/v1/instances/{id}/resume"))
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("running"),
        "{e}"
    );
    let s = api
        .post(&format!("/api/v1/instances/{id}/suspend"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(s["status"], "suspended");
    api.post(&format!("/api/v1/instances/{id}/suspend"))
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    // The timer fires while suspended (the engine's clock moves past it and the driver goes
    // round): the instance does not move.
    clock.advance(1_500);
    api.engine.sync().await.expect("sync");
    api.engine.sync().await.expect("sync");
    let got = api.instance(&id).await;
    assert_eq!(got["status"], "suspended", "{got}");
    assert!(got.get("output").is_none(), "{got}");
    // `explain` says the timer fired and its answer waits for the resume.
    let why = api
        .get(&format!("/api/v1/instances/{id}/explain"))
        .await
        .expect(StatusCode::OK);
    let why = why.to_string();
    assert!(
        why.contains("the timer fired (") && why.contains("held until the instance is resumed"),
        "{why}"
    );
    let r = api
        .post(&format!("/api/v1/instances/{id}/resume"))
        .await
        .expect(StatusCode::OK);
    assert!(
        r["status"] == "running" || r["status"] == "completed",
        "{r}"
    );
    let done = api.wait_status(&id, "completed").await;
    assert_eq!(done["output"], json!({"woke": true}));
    let k = kinds(&api.history(&id).await);
    let pos = |kind: &str| k.iter().position(|x| x == kind);
    assert!(
        pos("suspended").is_some() && pos("resumed").is_some(),
        "{k:?}"
    );
    assert!(pos("suspended") < pos("resumed"), "{k:?}");
    // Finished: conflicts.
    for action in ["cancel", "suspend", "resume"] {
        api.post(&format!("/api/v1/instances/{id}/{action}"))
            .await
            .expect_error(StatusCode::CONFLICT, "conflict");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_instances_can_be_cancelled() {
    let api = Api::new().await;
    api.register(&sleeper("sc", "PT1H")).await;
    let id = api.start("test", "sc", json!({})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.post(&format!("/api/v1/instances/{id}/suspend"))
        .await
        .expect(StatusCode::OK);
    let c = api
        .post(&format!("/api/v1/instances/{id}/cancel"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(c["status"], "cancelled");
    assert_eq!(api.instance(&id).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_has_start_notices_and_deliveries() {
    let api = Api::new().await;
    api.register(&greeter("1.0.0", "PT0.1S")).await;
    let id = api.start("test", "greeter", json!({"name": "Cy"})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.wait_status(&id, "completed").await;
    let history = api.history(&id).await;
    // Sequence numbers from 1, no gaps, times in both forms.
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e["seq"], json!(i as i64 + 1), "{e}");
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        assert!(e["time_ms"].as_i64().is_some(), "{e}");
    }
    assert_eq!(history[0]["kind"], "started");
    assert_eq!(history[0]["data"]["input"], json!({"name": "Cy"}));
    let notices = notice_types(&history);
    assert_eq!(
        notices.first().map(String::as_str),
        Some("workflow.started"),
        "{notices:?}"
    );
    assert_eq!(
        notices.last().map(String::as_str),
        Some("workflow.completed"),
        "{notices:?}"
    );
    assert_eq!(
        notices.iter().filter(|t| *t == "task.started").count(),
        3,
        "{notices:?}"
    );
    assert_eq!(
        notices.iter().filter(|t| *t == "task.completed").count(),
        3,
        "{notices:?}"
    );
    let task_refs: Vec<&str> = history
        .iter()
        .filter(|e| e["data"]["type"] == "task.completed")
        .filter_map(|e| e["data"]["reference"].as_str())
        .collect();
    assert_eq!(
        task_refs,
        vec!["/do/0/first", "/do/1/pause", "/do/2/second"]
    );
    // The timer's answer is a delivery.
    let deliveries: Vec<&Value> = history.iter().filter(|e| e["kind"] == "delivery").collect();
    assert_eq!(deliveries.len(), 1, "{history:?}");
    assert!(
        deliveries[0]["data"]["effect"].is_u64(),
        "{}",
        deliveries[0]
    );
    // It reads as what happened (the timer's output: null), not as the journal's encoding.
    assert_eq!(
        deliveries[0]["data"],
        json!({"effect": deliveries[0]["data"]["effect"], "output": null}),
        "{}",
        deliveries[0]
    );
    // Paging with after / limit.
    let page = api
        .get(&format!("/api/v1/instances/{id}/history?after=2&limit=3"))
        .await
        .expect(StatusCode::OK);
    let seqs: Vec<i64> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    let last = history.len();
    let tail = api
        .get(&format!("/api/v1/instances/{id}/history?after={last}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(tail, json!({"items": []}));
    for q in ["after=-1", "after=x", "limit=0", "limit=x", "limit=10001"] {
        api.get(&format!("/api/v1/instances/{id}/history?{q}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid");
    }
}

// ---------------------------------------------------------------------------------------------
// watch (server-sent events)

/// Reads a streamed response until `event: end` and the end of the body (or panics after
/// `timeout`). Returns the text.
async fn read_sse(api: &Api, uri: &str, headers: &[(&str, &str)], timeout: Duration) -> String {
    let mut b = Request::builder().method(Method::GET).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = api
        .router
        .clone()
        .oneshot(b.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut body = resp.into_body();
    let mut text = String::new();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Err(_) => panic!("no end of stream within {timeout:?}; got:\n{text}"),
            Ok(None) => break,
            Ok(Some(Err(e))) => panic!("stream error {e}; got:\n{text}"),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
        }
    }
    assert!(
        text.contains("event: end"),
        "the stream closed without `end`:\n{text}"
    );
    text
}

fn check_history_events(events: &[(String, Option<String>, String)], first_seq: i64) -> Vec<Value> {
    let history: Vec<Value> = events
        .iter()
        .filter(|(e, _, _)| e == "history")
        .map(|(_, id, data)| {
            let v: Value =
                serde_json::from_str(data).unwrap_or_else(|e| panic!("bad data {data}: {e}"));
            assert_eq!(
                id.as_deref().and_then(|i| i.parse::<i64>().ok()),
                v["seq"].as_i64(),
                "the id is the seq"
            );
            v
        })
        .collect();
    for (i, e) in history.iter().enumerate() {
        assert_eq!(
            e["seq"],
            json!(first_seq + i as i64),
            "gap or duplicate: {history:?}"
        );
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_history_live_until_the_end() {
    let api = Api::new().await;
    api.register(&greeter("1.0.0", "PT0.4S")).await;
    let id = api.start("test", "greeter", json!({"name": "Di"})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let text = read_sse(
        &api,
        &format!("/api/v1/instances/{id}/watch"),
        &[],
        Duration::from_secs(20),
    )
    .await;
    let events = parse_sse(&text);
    let history = check_history_events(&events, 1);
    assert_eq!(history[0]["kind"], "started");
    let notices = notice_types(&history);
    assert!(notices.iter().any(|t| t == "task.started"), "{notices:?}");
    assert!(notices.iter().any(|t| t == "task.completed"), "{notices:?}");
    assert_eq!(
        notices.last().map(String::as_str),
        Some("workflow.completed"),
        "{notices:?}"
    );
    // The stream has everything the history has, then `end` with the finished instance.
    assert_eq!(history, api.history(&id).await);
    let (last_event, _, last_data) = events.last().cloned().unwrap_or_default();
    assert_eq!(last_event, "end");
    let end: Value = serde_json::from_str(&last_data).unwrap_or_default();
    assert_eq!(end["status"], "completed");
    assert_eq!(end["output"], json!({"greeting": "hello Di", "done": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_a_finished_instance_and_resume_after_an_id() {
    let api = Api::new().await;
    api.register(&quick("test", "w", "1.0.0")).await;
    let id = api.start("test", "w", json!({"n": 3})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.wait_status(&id, "completed").await;
    let all = api.history(&id).await;
    let text = read_sse(
        &api,
        &format!("/api/v1/instances/{id}/watch"),
        &[],
        Duration::from_secs(10),
    )
    .await;
    let events = parse_sse(&text);
    assert_eq!(check_history_events(&events, 1), all);
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("end"));
    // Last-Event-ID: only what follows.
    let text = read_sse(
        &api,
        &format!("/api/v1/instances/{id}/watch"),
        &[("last-event-id", "2")],
        Duration::from_secs(10),
    )
    .await;
    let events = parse_sse(&text);
    assert_eq!(check_history_events(&events, 3), all[2..].to_vec());
    let r = api
        .request(
            Method::GET,
            &format!("/api/v1/instances/{id}/watch"),
            &[("last-event-id", "abc")],
            Body::empty(),
        )
        .await;
    r.expect_error(StatusCode::BAD_REQUEST, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_a_cancel() {
    let api = Api::new().await;
    api.register(&sleeper("wc", "PT1H")).await;
    let id = api.start("test", "wc", json!({})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let router = api.router.clone();
    let id2 = id.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/v1/instances/{id2}/cancel"))
            .body(Body::empty());
        router
            .oneshot(req.expect("request"))
            .await
            .map(|r| r.status())
    });
    let text = read_sse(
        &api,
        &format!("/api/v1/instances/{id}/watch"),
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        canceller.await.ok().and_then(Result::ok),
        Some(StatusCode::OK)
    );
    let events = parse_sse(&text);
    let history = check_history_events(&events, 1);
    assert!(
        kinds(&history).iter().any(|k| k == "cancelled"),
        "{history:?}"
    );
    let end: Value =
        serde_json::from_str(&events.last().cloned().unwrap_or_default().2).unwrap_or_default();
    assert_eq!(end["status"], "cancelled");
}

// ---------------------------------------------------------------------------------------------
// events

async fn listening(api: &Api) -> String {
    api.register(&wf("test", "orders", "1.0.0", LISTENER_BODY))
        .await;
    let id = api.start("test", "orders", json!({})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let v = api
        .poll(&id, Duration::from_secs(10), "listening", |v| {
            v["waiting"][0]["on"] == "event"
        })
        .await;
    assert_eq!(v["waiting"][0]["task"], "/do/0/waitForOrder");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_cloudevents_reach_listeners() {
    let api = Api::new().await;
    let id = listening(&api).await;
    // Another type: nobody takes it.
    let other = json!({"specversion": "1.0", "id": "e0", "source": "/shop", "type": "com.example.other", "data": {"x": 1}});
    let r = api
        .post_raw(
            "/api/v1/events",
            "application/cloudevents+json",
            other.to_string(),
        )
        .await;
    assert_eq!(r.expect(StatusCode::ACCEPTED), json!({"matched": 0}));
    let ev = json!({"specversion": "1.0", "id": "e1", "source": "/shop", "type": "com.example.order", "datacontenttype": "application/json", "data": {"orderId": 42}});
    let r = api
        .post_raw(
            "/api/v1/events",
            "application/cloudevents+json; charset=utf-8",
            ev.to_string(),
        )
        .await;
    assert_eq!(r.expect(StatusCode::ACCEPTED), json!({"matched": 1}));
    let done = api.wait_status(&id, "completed").await;
    assert_eq!(done["output"], json!([{"orderId": 42}]));
    // The delivery is in the history.
    let history = api.history(&id).await;
    assert!(
        history
            .iter()
            .any(|e| e["kind"] == "delivery" && e["data"].to_string().contains("orderId")),
        "{history:?}"
    );
    // Nobody waits any more.
    let r = api.post_json("/api/v1/events", &ev).await;
    assert_eq!(r.expect(StatusCode::ACCEPTED), json!({"matched": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_json_structured_events_work() {
    let api = Api::new().await;
    let id = listening(&api).await;
    let ev = json!({"specversion": "1.0", "id": "e2", "source": "/shop", "type": "com.example.order", "data": {"orderId": 5}});
    assert_eq!(
        api.post_json("/api/v1/events", &ev)
            .await
            .expect(StatusCode::ACCEPTED),
        json!({"matched": 1})
    );
    assert_eq!(
        api.wait_status(&id, "completed").await["output"],
        json!([{"orderId": 5}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_cloudevents_reach_listeners() {
    let api = Api::new().await;
    let id = listening(&api).await;
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "b1"),
        ("ce-source", "/shop%2Fwest"),
        ("ce-type", "com.example.order"),
        ("ce-region", "eu"),
        ("content-type", "application/json"),
    ];
    let r = api
        .request(Method::POST, "/api/v1/events", &headers, "{\"orderId\": 7}")
        .await;
    assert_eq!(r.expect(StatusCode::ACCEPTED), json!({"matched": 1}));
    let done = api.wait_status(&id, "completed").await;
    assert_eq!(done["output"], json!([{"orderId": 7}]));
    // The attributes came from the headers (percent-decoded); the content type became
    // datacontenttype.
    let history = api.history(&id).await;
    let delivery = history
        .iter()
        .find(|e| e["kind"] == "delivery")
        .cloned()
        .unwrap_or_default();
    let text = delivery["data"].to_string();
    assert!(
        text.contains("/shop/west")
            && text.contains("\"region\":\"eu\"")
            && text.contains("datacontenttype"),
        "{delivery}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_events_with_text_data() {
    let api = Api::new().await;
    api.register(&wf("test", "texts", "1.0.0", "do:\n  - hear:\n      listen:\n        to:\n          one:\n            with:\n              type: com.example.note\n")).await;
    let id = api.start("test", "texts", json!({})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.poll(&id, Duration::from_secs(10), "listening", |v| {
        v["waiting"][0]["on"] == "event"
    })
    .await;
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "t1"),
        ("ce-source", "/notes"),
        ("ce-type", "com.example.note"),
        ("content-type", "text/plain"),
    ];
    let r = api
        .request(Method::POST, "/api/v1/events", &headers, "hello there")
        .await;
    assert_eq!(r.expect(StatusCode::ACCEPTED), json!({"matched": 1}));
    assert_eq!(
        api.wait_status(&id, "completed").await["output"],
        json!(["hello there"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cloudevents_are_refused() {
    let api = Api::new().await;
    let post = |ct: &'static str, body: String| {
        let api = &api;
        async move { api.post_raw("/api/v1/events", ct, body).await }
    };
    // Structured, attributes missing: each one named.
    let e = post(
        "application/cloudevents+json",
        json!({"specversion": "1.0", "type": "t"}).to_string(),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("id") && msg.contains("source") && !msg.contains("type"),
        "{msg}"
    );
    assert_eq!(e["details"], json!(["id: required", "source: required"]));
    for missing in ["specversion", "id", "source", "type"] {
        let mut ev = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        ev.as_object_mut().map(|o| o.remove(missing));
        let e = post("application/cloudevents+json", ev.to_string())
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid");
        assert!(
            e["message"].as_str().unwrap_or_default().contains(missing),
            "{missing}: {e}"
        );
    }
    // Empty strings count as missing; wrong types and versions are refused.
    let e = post(
        "application/json",
        json!({"specversion": "1.0", "id": "", "source": "/s", "type": "t"}).to_string(),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("id"),
        "{e}"
    );
    post(
        "application/json",
        json!({"specversion": "1.0", "id": 5, "source": "/s", "type": "t"}).to_string(),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    let e = post(
        "application/json",
        json!({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}).to_string(),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("0.3"),
        "{e}"
    );
    // Not an object, malformed JSON, nothing.
    post("application/cloudevents+json", "[1,2]".into())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    let e = post(
        "application/cloudevents+json",
        "{\"specversion\": \"1.0\", ".into(),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("line 1"),
        "{e}"
    );
    post("application/cloudevents+json", String::new())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    // Neither mode.
    post("text/plain", "hello".into())
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    post("application/cloudevents-batch+json", "[]".into())
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // Binary mode: missing headers named; bad JSON data; bad attribute names.
    let e = api
        .request(
            Method::POST,
            "/api/v1/events",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
            ],
            "x",
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("type"),
        "{e}"
    );
    assert_eq!(e["details"], json!(["type: required"]));
    let full = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("content-type", "application/json"),
    ];
    let e = api
        .request(Method::POST, "/api/v1/events", &full, "{oops")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("line 1"),
        "{e}"
    );
    let mut with_bad_name = full.to_vec();
    with_bad_name.push(("ce-bad_name", "x"));
    api.request(Method::POST, "/api/v1/events", &with_bad_name, "{}")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    let mut with_data = full.to_vec();
    with_data.push(("ce-data", "x"));
    api.request(Method::POST, "/api/v1/events", &with_data, "{}")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    // A complete binary event with nobody listening is fine.
    let r = api
        .request(Method::POST, "/api/v1/events", &full, "{}")
        .await;
    assert_eq!(r.expect(StatusCode::ACCEPTED), json!({"matched": 0}));
    // Binary data that is not UTF-8 is kept as data_base64.
    let bin = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("content-type", "application/octet-stream"),
    ];
    let r = api
        .request(
            Method::POST,
            "/api/v1/events",
            &bin,
            vec![0xffu8, 0x00, 0x10],
        )
        .await;
    assert_eq!(r.expect(StatusCode::ACCEPTED), json!({"matched": 0}));
}

// ---------------------------------------------------------------------------------------------
// limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let api = Api::with_config(ApiConfig {
        max_body_bytes: 1024,
        ..ApiConfig::default()
    })
    .await;
    let big = format!(
        "{}\n# {}\n",
        quick("test", "big", "1.0.0"),
        "x".repeat(2000)
    );
    for (uri, ct) in [
        ("/api/v1/definitions", "application/yaml"),
        ("/api/v1/instances", "application/json"),
        ("/api/v1/events", "application/cloudevents+json"),
        (
            "/api/v1/definitions/test/big/versions/1.0.0/deprecate",
            "application/json",
        ),
    ] {
        let e = api
            .post_raw(uri, ct, big.clone())
            .await
            .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
        assert!(
            e["message"].as_str().unwrap_or_default().contains("1024"),
            "{uri}: {e}"
        );
    }
    // A streamed body without a Content-Length is cut off too.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..20).map(|_| Ok("y".repeat(100))).collect();
    let stream = futures_util::stream::iter(chunks);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/definitions")
        .body(Body::from_stream(stream))
        .expect("request");
    api.send(req)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // Just under the limit is fine.
    let small = quick("test", "small", "1.0.0");
    assert!(small.len() < 1024);
    api.register(&small).await;
    // The default limit is 1 MiB.
    assert_eq!(ApiConfig::default().max_body_bytes, 1024 * 1024);
}

// ---------------------------------------------------------------------------------------------
// shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_answers_503() {
    let api = Api::new().await;
    api.register(&quick("test", "late", "1.0.0")).await;
    api.engine.shutdown(Duration::from_millis(200)).await;
    let e = api
        .post_json(
            "/api/v1/instances",
            &json!({"namespace": "test", "name": "late"}),
        )
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{e}"
    );
    let ev = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
    api.post_json("/api/v1/events", &ev)
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    // Reads still work.
    assert_eq!(api.get("/healthz").await.status, StatusCode::OK);
    api.get("/api/v1/definitions/test/late")
        .await
        .expect(StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waiting_for_a_worker_is_queued_not_running() {
    let api = Api::new().await;
    api.register(&wf(
        "test",
        "parked",
        "1.0.0",
        "do:\n  - work:\n      run:\n        shell:\n          command: echo hi\n      metadata:\n        kflow:\n          queue: nowhere\n",
    ))
    .await;
    let id = api.start("test", "parked", json!({})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // No worker serves `nowhere`: the task is queued, and says so, until one comes.
    let v = api.instance(&id).await;
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["queued"], json!(["/do/0/work"]), "{v}");
    assert_eq!(v["running"], json!([]), "{v}");
}

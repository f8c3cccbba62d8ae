//! In-process harness for the REST API: the router over an engine on an in-memory SQLite store,
//! called with `tower::ServiceExt::oneshot` (no socket).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use kflow_server::api::{ApiConfig, router};
use kflow_server::{Engine, EngineConfig};
use kflow_store::sqlite::SqliteStore;

pub struct Api {
    pub router: Router,
    pub engine: Engine,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {} {}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self.json()
    }

    /// Asserts an error response: status, `{"error": {"code", "message", "details"}}`, JSON
    /// content type. Returns the `error` object.
    #[track_caller]
    pub fn expect_error(&self, status: StatusCode, code: &str) -> Value {
        let body = self.expect(status);
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "error content type {ct:?}"
        );
        let err = body
            .get("error")
            .cloned()
            .unwrap_or_else(|| panic!("no `error` in {body}"));
        assert_eq!(err["code"], json!(code), "error code; body: {body}");
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error message: {body}"
        );
        assert!(err["details"].is_array(), "error details: {body}");
        err
    }
}

impl Api {
    pub async fn new() -> Api {
        Api::with_config(ApiConfig::default()).await
    }

    /// An API whose engine reads the time from `clock` (tests move it, then `engine.sync()`).
    pub async fn with_clock(clock: Arc<kflow_server::engine::clock::ManualClock>) -> Api {
        let store = SqliteStore::open_in_memory().expect("in-memory store");
        let engine = Engine::with_store(
            Arc::new(store),
            EngineConfig {
                clock,
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

    pub async fn with_config(cfg: ApiConfig) -> Api {
        let store = SqliteStore::open_in_memory().expect("in-memory store");
        let engine = Engine::with_store(Arc::new(store), EngineConfig::default())
            .await
            .expect("engine");
        Api {
            router: router(engine.clone(), cfg),
            engine,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .expect("the body within 30 s")
            .expect("a readable body")
            .to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(body.into()).expect("a valid request"))
            .await
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.request(Method::GET, uri, &[], Body::empty()).await
    }

    pub async fn post(&self, uri: &str) -> Resp {
        self.request(Method::POST, uri, &[], Body::empty()).await
    }

    pub async fn post_json(&self, uri: &str, v: &Value) -> Resp {
        self.request(
            Method::POST,
            uri,
            &[("content-type", "application/json")],
            v.to_string(),
        )
        .await
    }

    pub async fn post_raw(&self, uri: &str, content_type: &str, body: impl Into<Body>) -> Resp {
        self.request(Method::POST, uri, &[("content-type", content_type)], body)
            .await
    }

    /// Registers a definition, asserting 201.
    pub async fn register(&self, doc: &str) -> Value {
        self.post_raw("/api/v1/definitions", "application/yaml", doc.to_string())
            .await
            .expect(StatusCode::CREATED)
    }

    /// Starts an instance (latest version), asserting 201; returns the instance.
    pub async fn start(&self, ns: &str, name: &str, input: Value) -> Value {
        self.post_json(
            "/api/v1/instances",
            &json!({"namespace": ns, "name": name, "input": input}),
        )
        .await
        .expect(StatusCode::CREATED)
    }

    pub async fn instance(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/instances/{id}"))
            .await
            .expect(StatusCode::OK)
    }

    /// Polls the instance until `pred` holds (or panics after `timeout`).
    pub async fn poll(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let v = self.instance(id).await;
            if pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "instance {id}: not {what} after {timeout:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the instance has the status.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.poll(id, Duration::from_secs(20), status, |v| {
            v["status"] == json!(status)
        })
        .await
    }

    pub async fn history(&self, id: &str) -> Vec<Value> {
        let v = self
            .get(&format!("/api/v1/instances/{id}/history"))
            .await
            .expect(StatusCode::OK);
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

/// A workflow document: the `document` header, then `body` (YAML at the root level).
pub fn wf(ns: &str, name: &str, version: &str, body: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: {ns}\n  name: {name}\n  version: '{version}'\n{body}"
    )
}

/// Notice types (`task.started`, ...) in a list of history events, in order.
pub fn notice_types(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .filter(|e| e["kind"] == "notice")
        .filter_map(|e| e["data"]["type"].as_str().map(str::to_string))
        .collect()
}

/// The kinds of a list of history events, in order.
pub fn kinds(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

/// Parses a server-sent event stream into (event, id, data) triples.
pub fn parse_sse(text: &str) -> Vec<(String, Option<String>, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut event, mut id, mut data) = (String::from("message"), None, Vec::new());
        let mut any = false;
        for line in block.lines() {
            if line.starts_with(':') || line.is_empty() {
                continue;
            }
            let (field, value) = line
                .split_once(':')
                .map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)))
                .unwrap_or((line, ""));
            any = true;
            match field {
                "event" => event = value.to_string(),
                "id" => id = Some(value.to_string()),
                "data" => data.push(value.to_string()),
                _ => {}
            }
        }
        if any {
            out.push((event, id, data.join("\n")));
        }
    }
    out
}

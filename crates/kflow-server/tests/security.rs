//! Access control, route by route: every role, a token of another namespace, an expired, a
//! revoked, a malformed and no token, against every route of the API, with the exact status
//! expected. The routes come from the rule table and the OpenAPI document: a route without a
//! rule, or without a fixture here, fails the test.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use kflow_server::api::{ApiConfig, router};
use kflow_server::auth::rules::{Need, RULES, Rule};
use kflow_server::auth::{AuthMode, Role, Tokens};
use kflow_server::engine::clock::ManualClock;
use kflow_server::{Engine, EngineConfig};
use kflow_store::sqlite::SqliteStore;
use kflow_store::{ScheduleRow, Store};

const ROOT: &str = "root-token-for-the-security-tests-0123456789";
const T0: i64 = 1_800_000_000_000;

struct Ctx {
    router: Router,
    engine: Engine,
    clock: Arc<ManualClock>,
    n: AtomicU32,
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Ctx {
    async fn new() -> Ctx {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        Ctx::over(store, ApiConfig::default()).await
    }

    /// The API over `store` (root token from the environment), with `api`'s other settings.
    async fn over(store: Arc<dyn Store>, api: ApiConfig) -> Ctx {
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::with_store(
            store.clone(),
            EngineConfig {
                clock: clock.clone(),
                ..EngineConfig::default()
            },
        )
        .await
        .expect("engine");
        let tokens = Tokens::load(store, Some(ROOT)).expect("tokens");
        let router = router(
            engine.clone(),
            ApiConfig {
                auth: AuthMode::Tokens(Arc::new(tokens)),
                ..api
            },
        );
        Ctx {
            router,
            engine,
            clock,
            n: AtomicU32::new(0),
        }
    }

    fn next(&self) -> u32 {
        self.n.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request; reads the body only when it is not a stream.
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Answer {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", t);
        }
        let req = match body {
            Some((ct, text)) => b.header("content-type", ct).body(Body::from(text)),
            None => b.body(Body::empty()),
        }
        .expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let streaming = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body = if streaming {
            Value::Null
        } else {
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Answer { status, body }
    }

    async fn root(&self, method: &str, uri: &str, body: Option<Value>) -> Value {
        let a = self
            .call(
                method,
                uri,
                Some(&format!("Bearer {ROOT}")),
                body.map(|b| ("application/json", b.to_string())),
            )
            .await;
        assert!(
            a.status.is_success(),
            "setup {method} {uri}: {} {}",
            a.status,
            a.body
        );
        a.body
    }

    async fn register(&self, doc: String) {
        let a = self
            .call(
                "POST",
                "/api/v1/definitions",
                Some(&format!("Bearer {ROOT}")),
                Some(("application/yaml", doc)),
            )
            .await;
        assert!(a.status.is_success(), "register: {} {}", a.status, a.body);
    }

    async fn token(&self, name: &str, role: &str, ns: &[&str], expires: Option<u64>) -> String {
        let v = self
            .root(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": name, "role": role, "namespaces": ns,
                            "expires_in_seconds": expires})),
            )
            .await;
        format!("Bearer {}", v["token"].as_str().expect("token"))
    }

    async fn fresh_instance(&self) -> String {
        let v = self
            .root(
                "POST",
                "/api/v1/instances",
                Some(json!({"namespace": "team", "name": "wait"})),
            )
            .await;
        v["id"].as_str().expect("id").to_string()
    }
}

fn doc(name: &str, version: &str) -> String {
    format!(
        "document: {{dsl: '1.0.0', namespace: team, name: {name}, version: '{version}'}}\n\
         do:\n  - w:\n      wait: {{hours: 1}}\n"
    )
}

/// A caller of the matrix.
struct Caller {
    label: &'static str,
    header: Option<String>,
    role: Option<Role>,
    /// Over every namespace.
    global: bool,
    /// Limited to another namespace than the fixtures'.
    other: bool,
}

/// One route's request, and what it answers to a caller who passes every check, and to an
/// admin of another namespace.
struct Fixture {
    method: &'static str,
    uri: String,
    body: Option<(&'static str, String)>,
    ok: u16,
    /// The answer to an admin of another namespace (404: the resource is invisible to it).
    other: u16,
    /// Only a token over every namespace may call it.
    global_only: bool,
}

/// The request for `rule` as `caller` (setting up what it needs with the root token).
async fn fixture(ctx: &Ctx, rule: &Rule, caller: &Caller) -> Fixture {
    let n = ctx.next();
    let f = |method, uri: String, body: Option<(&'static str, String)>, ok, other, global_only| {
        Fixture {
            method,
            uri,
            body,
            ok,
            other,
            global_only,
        }
    };
    let json_body = |v: Value| Some(("application/json", v.to_string()));
    // A worker this caller registered (or root, when the caller cannot).
    let worker = |n: u32| format!("w-{n}");
    let can_work = caller.role.is_some_and(|r| r.allows(Need::Work));
    let own_worker = |id: String| async move {
        let who = if can_work {
            caller.header.clone()
        } else {
            Some(format!("Bearer {ROOT}"))
        };
        let a = ctx
            .call(
                "POST",
                "/api/v1/workers",
                who.as_deref(),
                Some((
                    "application/json",
                    json!({"id": id, "queues": ["q"]}).to_string(),
                )),
            )
            .await;
        assert_eq!(a.status, 200, "register worker: {}", a.body);
    };
    match (rule.method, rule.path) {
        ("GET", "/healthz") => f("GET", "/healthz".into(), None, 200, 200, false),
        ("GET", "/metrics") => f("GET", "/metrics".into(), None, 200, 403, true),
        ("GET", "/api/v1/nodes") => f("GET", "/api/v1/nodes".into(), None, 200, 403, true),
        ("GET", "/api/v1/services") => f("GET", "/api/v1/services".into(), None, 200, 403, true),
        // No services in this server's config: past every access check, none is found.
        ("PUT", "/api/v1/services/{name}/endpoints") => f(
            "PUT",
            "/api/v1/services/billing/endpoints".into(),
            json_body(json!({"url": "http://127.0.0.1:9", "ttl_seconds": 5})),
            404,
            403,
            true,
        ),
        ("DELETE", "/api/v1/services/{name}/endpoints") => f(
            "DELETE",
            "/api/v1/services/billing/endpoints".into(),
            json_body(json!({"url": "http://127.0.0.1:9"})),
            404,
            403,
            true,
        ),
        // Filtered by namespace: every reader gets a list.
        ("GET", "/api/v1/alerts") => f("GET", "/api/v1/alerts".into(), None, 200, 200, false),
        ("GET", "/api/v1/openapi.json") => {
            f("GET", "/api/v1/openapi.json".into(), None, 200, 200, false)
        }
        ("GET", "/api/v1/whoami") => f("GET", "/api/v1/whoami".into(), None, 200, 200, false),
        ("POST", "/api/v1/definitions") => f(
            "POST",
            "/api/v1/definitions".into(),
            Some(("application/yaml", doc(&format!("d{n}"), "1.0.0"))),
            201,
            403,
            false,
        ),
        ("GET", "/api/v1/definitions") => {
            f("GET", "/api/v1/definitions".into(), None, 200, 200, false)
        }
        ("GET", "/api/v1/definitions/{namespace}/{name}") => f(
            "GET",
            "/api/v1/definitions/team/wait".into(),
            None,
            200,
            404,
            false,
        ),
        ("GET", "/api/v1/definitions/{namespace}/{name}/versions/{version}") => f(
            "GET",
            "/api/v1/definitions/team/wait/versions/1.0.0".into(),
            None,
            200,
            404,
            false,
        ),
        // Checking a document registers nothing and reads nothing of a namespace.
        ("POST", "/api/v1/definitions/validate") => f(
            "POST",
            "/api/v1/definitions/validate".into(),
            Some(("application/yaml", doc(&format!("v{n}"), "1.0.0"))),
            200,
            200,
            false,
        ),
        ("GET", "/api/v1/definitions/{namespace}/{name}/versions/{version}/graph") => f(
            "GET",
            "/api/v1/definitions/team/wait/versions/1.0.0/graph".into(),
            None,
            200,
            404,
            false,
        ),
        ("GET", "/api/v1/definitions/{namespace}/{name}/analysis") => f(
            "GET",
            "/api/v1/definitions/team/wait/analysis".into(),
            None,
            200,
            404,
            false,
        ),
        ("GET", "/api/v1/definitions/{namespace}/{name}/diff") => f(
            "GET",
            "/api/v1/definitions/team/wait/diff?from=1.0.0&to=1.0.0".into(),
            None,
            200,
            404,
            false,
        ),
        ("POST", "/api/v1/definitions/{namespace}/{name}/versions/{version}/deprecate") => {
            ctx.register(doc(&format!("dep{n}"), "1.0.0")).await;
            f(
                "POST",
                format!("/api/v1/definitions/team/dep{n}/versions/1.0.0/deprecate"),
                None,
                200,
                404,
                false,
            )
        }
        ("POST", "/api/v1/instances") => f(
            "POST",
            "/api/v1/instances".into(),
            json_body(json!({"namespace": "team", "name": "wait"})),
            201,
            404,
            false,
        ),
        ("GET", "/api/v1/instances") => f("GET", "/api/v1/instances".into(), None, 200, 200, false),
        ("GET", "/api/v1/instances/{id}")
        | ("GET", "/api/v1/instances/{id}/history")
        | ("GET", "/api/v1/instances/{id}/watch")
        | ("GET", "/api/v1/instances/{id}/explain")
        | ("POST", "/api/v1/instances/{id}/cancel")
        | ("POST", "/api/v1/instances/{id}/suspend") => {
            let id = ctx.fresh_instance().await;
            let uri = rule.path.replace("{id}", &id);
            f(rule.method, uri, None, 200, 404, false)
        }
        // A running instance cannot be retried: the rule still decides who hears that (409).
        ("POST", "/api/v1/instances/{id}/retry") => {
            let id = ctx.fresh_instance().await;
            let uri = rule.path.replace("{id}", &id);
            f(rule.method, uri, None, 409, 404, false)
        }
        ("POST", "/api/v1/instances/{id}/resume") => {
            let id = ctx.fresh_instance().await;
            ctx.root("POST", &format!("/api/v1/instances/{id}/suspend"), None)
                .await;
            f(
                "POST",
                format!("/api/v1/instances/{id}/resume"),
                None,
                200,
                404,
                false,
            )
        }
        ("POST", "/api/v1/events") => f(
            "POST",
            "/api/v1/events".into(),
            Some((
                "application/cloudevents+json",
                json!({"specversion": "1.0", "id": format!("e{n}"), "source": "test", "type": "t"})
                    .to_string(),
            )),
            202,
            403,
            true,
        ),
        ("GET", "/api/v1/schedules") => f("GET", "/api/v1/schedules".into(), None, 200, 200, false),
        ("POST", "/api/v1/schedules/{namespace}/{name}/pause")
        | ("POST", "/api/v1/schedules/{namespace}/{name}/resume") => f(
            rule.method,
            rule.path
                .replace("{namespace}", "team")
                .replace("{name}", "tick"),
            None,
            200,
            404,
            false,
        ),
        ("POST", "/api/v1/workers") => f(
            "POST",
            "/api/v1/workers".into(),
            json_body(json!({"id": worker(n), "queues": ["q"]})),
            200,
            200,
            false,
        ),
        ("GET", "/api/v1/workers") => f("GET", "/api/v1/workers".into(), None, 200, 403, true),
        ("POST", "/api/v1/workers/{id}/poll") => {
            own_worker(worker(n)).await;
            f(
                "POST",
                format!("/api/v1/workers/{}/poll", worker(n)),
                json_body(json!({"wait_ms": 0})),
                200,
                200,
                false,
            )
        }
        ("POST", "/api/v1/workers/{id}/heartbeat") => {
            own_worker(worker(n)).await;
            f(
                "POST",
                format!("/api/v1/workers/{}/heartbeat", worker(n)),
                json_body(json!({"running": []})),
                200,
                200,
                false,
            )
        }
        ("POST", "/api/v1/workers/{id}/drain") => {
            own_worker(worker(n)).await;
            f(
                "POST",
                format!("/api/v1/workers/{}/drain", worker(n)),
                None,
                200,
                200,
                false,
            )
        }
        ("POST", "/api/v1/leases/{lease}/complete") => {
            own_worker(worker(n)).await;
            // A lease it does not hold: past every access check, the engine refuses it.
            f(
                "POST",
                "/api/v1/leases/nope-1/complete".into(),
                json_body(json!({"worker": worker(n), "output": 1})),
                409,
                409,
                false,
            )
        }
        ("GET", "/api/v1/queues") => f("GET", "/api/v1/queues".into(), None, 200, 200, false),
        ("POST", "/api/v1/tokens") => f(
            "POST",
            "/api/v1/tokens".into(),
            json_body(json!({"name": format!("t{n}"), "role": "viewer", "namespaces": ["team"]})),
            201,
            400,
            false,
        ),
        ("GET", "/api/v1/tokens") => f("GET", "/api/v1/tokens".into(), None, 200, 200, false),
        ("POST", "/api/v1/tokens/{id}/revoke") => {
            ctx.token(&format!("r{n}"), "viewer", &["team"], None).await;
            f(
                "POST",
                format!("/api/v1/tokens/r{n}/revoke"),
                None,
                200,
                404,
                false,
            )
        }
        ("GET", "/api/v1/audit") => f("GET", "/api/v1/audit".into(), None, 200, 403, true),
        ("GET", "/api/v1/audit/verify") => {
            f("GET", "/api/v1/audit/verify".into(), None, 200, 403, true)
        }
        ("GET", "/api/v1/secrets") => f("GET", "/api/v1/secrets".into(), None, 200, 200, false),
        ("PUT", "/api/v1/secrets/{namespace}/{name}") => f(
            "PUT",
            format!("/api/v1/secrets/team/s{n}"),
            json_body(json!({"value": "v"})),
            200,
            403,
            false,
        ),
        ("DELETE", "/api/v1/secrets/{namespace}/{name}") => {
            ctx.root(
                "PUT",
                &format!("/api/v1/secrets/team/d{n}"),
                Some(json!({"value": "v"})),
            )
            .await;
            f(
                "DELETE",
                format!("/api/v1/secrets/team/d{n}"),
                None,
                200,
                404,
                false,
            )
        }
        // This engine's key lives in memory (no key file to rotate): 409 past every check.
        ("POST", "/api/v1/secrets/rotate-key") => f(
            "POST",
            "/api/v1/secrets/rotate-key".into(),
            None,
            409,
            403,
            true,
        ),
        (m, p) => panic!("no fixture for {m} {p}: add one (and check its rule)"),
    }
}

/// What each route should need, written here independently of the server's table (so that a
/// change to the table is a change to this test too).
fn intended(method: &str, path: &str) -> Need {
    use Need::*;
    match (method, path) {
        (_, "/healthz") | (_, "/api/v1/openapi.json") => Public,
        (_, "/api/v1/whoami") => Authenticated,
        ("GET", "/api/v1/workers") => Admin,
        (_, p)
            if p.starts_with("/api/v1/tokens")
                || p.starts_with("/api/v1/audit")
                || p.starts_with("/api/v1/secrets") =>
        {
            Admin
        }
        (_, p) if p.starts_with("/api/v1/workers") || p.starts_with("/api/v1/leases") => Work,
        // A service's endpoints register themselves, as workers do.
        ("PUT" | "DELETE", p) if p.starts_with("/api/v1/services/") => Work,
        ("GET", _) => Read,
        // Checking a document changes nothing: a read.
        ("POST", "/api/v1/definitions/validate") => Read,
        (_, p) if p.starts_with("/api/v1/definitions") || p.starts_with("/api/v1/schedules") => {
            Edit
        }
        (_, p) if p.starts_with("/api/v1/instances") || p == "/api/v1/events" => Operate,
        (m, p) => panic!("no intended rule for {m} {p}"),
    }
}

/// Which roles pass a need, as the issue defines them (not through `Role::allows`).
fn passes(role: Role, need: Need) -> bool {
    use Role::*;
    match need {
        Need::Public | Need::Authenticated => true,
        Need::Read => matches!(role, Viewer | Operator | Editor | Admin),
        Need::Operate => matches!(role, Operator | Editor | Admin),
        Need::Edit => matches!(role, Editor | Admin),
        Need::Admin => role == Admin,
        Need::Work => matches!(role, Worker | Admin),
    }
}

fn expected(rule: &Rule, fx: &Fixture, c: &Caller) -> u16 {
    let need = intended(rule.method, rule.path);
    assert_eq!(need, rule.need, "the rule of {} {}", rule.method, rule.path);
    if need == Need::Public {
        return fx.ok;
    }
    let Some(role) = c.role else {
        return 401;
    };
    if !passes(role, need) {
        return 403;
    }
    if c.other {
        return if fx.global_only { 403 } else { fx.other };
    }
    if fx.global_only && !c.global {
        return 403;
    }
    fx.ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_with_the_exact_status() {
    let ctx = Ctx::new().await;
    ctx.register(doc("wait", "1.0.0")).await;
    ctx.register(doc("tick", "1.0.0")).await;
    ctx.engine
        .store()
        .put_schedule(&ScheduleRow {
            namespace: "team".into(),
            name: "tick".into(),
            version: "1.0.0".into(),
            next_fire_ms: None,
            last_fire_ms: None,
            paused: false,
            revision: 0,
            updated_ms: T0,
            state: json!({}),
        })
        .expect("schedule row");

    let mut callers = Vec::new();
    for (label, role) in [
        ("viewer", Role::Viewer),
        ("operator", Role::Operator),
        ("editor", Role::Editor),
        ("admin", Role::Admin),
        ("worker", Role::Worker),
    ] {
        callers.push(Caller {
            label,
            header: Some(ctx.token(label, role.as_str(), &["team"], None).await),
            role: Some(role),
            global: false,
            other: false,
        });
    }
    callers.push(Caller {
        label: "global admin",
        header: Some(ctx.token("global", "admin", &["*"], None).await),
        role: Some(Role::Admin),
        global: true,
        other: false,
    });
    callers.push(Caller {
        label: "admin of another namespace",
        header: Some(ctx.token("elsewhere", "admin", &["other"], None).await),
        role: Some(Role::Admin),
        global: false,
        other: true,
    });
    let expiring = ctx.token("expiring", "admin", &["*"], Some(60)).await;
    let revoked = ctx.token("revoked", "admin", &["*"], None).await;
    ctx.root("POST", "/api/v1/tokens/revoked/revoke", None)
        .await;
    ctx.clock.advance(61_000);
    for (label, header) in [
        ("no token", None),
        ("malformed", Some("Bearer not-a-kflow-token".to_string())),
        ("wrong scheme", Some(format!("Basic {ROOT}"))),
        ("expired", Some(expiring)),
        ("revoked", Some(revoked)),
    ] {
        callers.push(Caller {
            label,
            header,
            role: None,
            global: false,
            other: false,
        });
    }

    // The table covers the API exactly: every documented route has a rule, every rule a route.
    let doc: Value = serde_json::to_value(kflow_server::api::openapi()).expect("openapi");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in ["get", "post", "put", "delete", "patch"] {
            if item.get(m).is_some() {
                documented.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    let ruled: BTreeSet<(String, String)> = RULES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        documented, ruled,
        "routes without a rule, or rules without a route"
    );

    let mut failures = Vec::new();
    let mut checked = 0;
    for rule in RULES {
        for c in &callers {
            let fx = fixture(&ctx, rule, c).await;
            let want = expected(rule, &fx, c);
            let got = ctx
                .call(fx.method, &fx.uri, c.header.as_deref(), fx.body.clone())
                .await;
            checked += 1;
            if got.status.as_u16() != want {
                failures.push(format!(
                    "{} {} as {}: {} instead of {want} ({})",
                    fx.method, fx.uri, c.label, got.status, got.body
                ));
            }
            if got.status == StatusCode::UNAUTHORIZED {
                assert!(
                    got.body["error"]["message"].as_str().is_some(),
                    "{}",
                    got.body
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} answers were wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= RULES.len() * 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_only_the_callers_namespaces_and_other_ids_do_not_leak() {
    let ctx = Ctx::new().await;
    ctx.register(doc("wait", "1.0.0")).await;
    let other_doc = doc("wait", "1.0.0").replace("namespace: team", "namespace: ops");
    ctx.register(other_doc).await;
    let mine = ctx.fresh_instance().await;
    let theirs = ctx
        .root(
            "POST",
            "/api/v1/instances",
            Some(json!({"namespace": "ops", "name": "wait"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer = ctx.token("v", "viewer", &["team"], None).await;
    let list = ctx
        .call("GET", "/api/v1/instances", Some(&viewer), None)
        .await;
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    let defs = ctx
        .call("GET", "/api/v1/definitions", Some(&viewer), None)
        .await;
    assert!(
        defs.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["namespace"] == "team"),
        "{}",
        defs.body
    );
    // Someone else's instance and one that does not exist answer alike.
    let a = ctx
        .call(
            "GET",
            &format!("/api/v1/instances/{theirs}"),
            Some(&viewer),
            None,
        )
        .await;
    let b = ctx
        .call(
            "GET",
            "/api/v1/instances/does-not-exist",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    // Filtering by a namespace it cannot see gives nothing, not an error with hints.
    let list = ctx
        .call(
            "GET",
            "/api/v1/instances?namespace=ops",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_denials_are_audited_and_the_chain_verifies() {
    let ctx = Ctx::new().await;
    ctx.register(doc("wait", "1.0.0")).await;
    let op = ctx.token("op", "operator", &["team"], None).await;
    let started = ctx
        .call(
            "POST",
            "/api/v1/instances",
            Some(&op),
            Some((
                "application/json",
                json!({"namespace": "team", "name": "wait"}).to_string(),
            )),
        )
        .await;
    assert_eq!(started.status, 201);
    let id = started.body["id"].as_str().unwrap().to_string();
    // Denied: a viewer's change, a bad token.
    let viewer = ctx.token("v", "viewer", &["team"], None).await;
    ctx.call(
        "POST",
        &format!("/api/v1/instances/{id}/cancel"),
        Some(&viewer),
        None,
    )
    .await;
    ctx.call(
        "GET",
        "/api/v1/instances",
        Some("Bearer kf_nope_nope"),
        None,
    )
    .await;
    // The denials are written without waiting: give the writer a moment.
    let mut entries = Value::Null;
    for _ in 0..100 {
        entries = ctx.root("GET", "/api/v1/audit?limit=1000", None).await;
        if entries["items"].as_array().is_some_and(|a| a.len() >= 6) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let items = entries["items"].as_array().unwrap();
    let find = |actor: &str, action: &str| {
        items
            .iter()
            .find(|e| e["actor"] == actor && e["action"] == action)
            .unwrap_or_else(|| panic!("no {actor} {action} in {entries:#}"))
    };
    let start = find("op", "instances.start");
    assert_eq!(start["result"], "201");
    assert_eq!(start["namespace"], "team");
    assert!(start["resource"].as_str().unwrap().contains(&id));
    assert!(
        find("v", "instances.cancel")["result"]
            .as_str()
            .unwrap()
            .starts_with("403")
    );
    assert!(
        find("anonymous", "instances.list")["result"]
            .as_str()
            .unwrap()
            .starts_with("401")
    );
    assert!(
        find("admin (environment)", "tokens.create")["resource"]
            .as_str()
            .unwrap()
            .contains("op")
    );
    // No token secret in the trail.
    assert!(
        !entries
            .to_string()
            .contains(op.trim_start_matches("Bearer "))
    );
    let verdict = ctx.root("GET", "/api/v1/audit/verify", None).await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["checked"].as_u64(), Some(items.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_or_origin_is_refused_before_anything_else() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let engine = Engine::with_store(
        store,
        EngineConfig {
            clock,
            ..EngineConfig::default()
        },
    )
    .await
    .expect("engine");
    let router = router(
        engine,
        ApiConfig {
            hosts: kflow_server::auth::hosts::Hosts::loopback(&[]),
            ..ApiConfig::default()
        },
    );
    let send = |host: &'static str, origin: Option<&'static str>| {
        let router = router.clone();
        async move {
            let mut b = Request::builder()
                .method("POST")
                .uri("/api/v1/definitions")
                .header("host", host)
                .header("content-type", "text/plain");
            if let Some(o) = origin {
                b = b.header("origin", o);
            }
            let resp = router
                .oneshot(b.body(Body::from("document: {}")).unwrap())
                .await
                .unwrap();
            resp.status()
        }
    };
    // DNS rebinding: a foreign name resolving to loopback.
    assert_eq!(send("evil.example:8080", None).await, StatusCode::FORBIDDEN);
    // A page elsewhere posting cross-site (a "simple" text/plain request).
    assert_eq!(
        send("127.0.0.1:8080", Some("http://evil.example")).await,
        StatusCode::FORBIDDEN
    );
    // The same origin goes through to the handler (which finds the document invalid).
    assert_eq!(
        send("127.0.0.1:8080", Some("http://127.0.0.1:8080")).await,
        StatusCode::BAD_REQUEST
    );
}

/// An engine on a file (so that the test can reach under the server and edit the database).
async fn on_file(dir: &std::path::Path) -> Ctx {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            &dir.join("kflow.db"),
            kflow_store::sqlite::Durability::Process,
        )
        .expect("store"),
    );
    Ctx::over(store, ApiConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_first_entry_edited_removed_reordered_or_truncated() {
    // Each case: SQL run directly on the database, and the entry verify must name.
    let cases: [(&str, &str, i64); 5] = [
        (
            "edited",
            "UPDATE audit SET actor = 'mallory' WHERE seq = 4",
            4,
        ),
        ("removed", "DELETE FROM audit WHERE seq = 3", 3),
        (
            "reordered",
            "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 5; \
             UPDATE audit SET seq = 5 WHERE seq = -1",
            2,
        ),
        (
            "rehashed but not relinked",
            "UPDATE audit SET result = '500', hash = (SELECT hash FROM audit WHERE seq = 1) WHERE seq = 6",
            6,
        ),
        ("truncated", "DELETE FROM audit WHERE seq >= 7", 8),
    ];
    for (what, sql, broken) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let ctx = on_file(dir.path()).await;
        ctx.register(doc("wait", "1.0.0")).await;
        for i in 0..4 {
            ctx.token(&format!("t{i}"), "viewer", &["team"], None).await;
            ctx.fresh_instance().await;
        }
        let before = ctx.root("GET", "/api/v1/audit/verify", None).await;
        assert_eq!(before["ok"], true, "{before}");
        let (head_seq, head_hash) = (
            before["head_seq"].as_i64().unwrap(),
            before["head_hash"].as_str().unwrap().to_string(),
        );
        assert_eq!(head_seq, 9, "{before}");
        let conn = rusqlite::Connection::open(dir.path().join("kflow.db")).expect("open");
        conn.execute_batch(sql).expect(what);
        drop(conn);
        let v = ctx
            .root(
                "GET",
                &format!("/api/v1/audit/verify?head_seq={head_seq}&head_hash={head_hash}"),
                None,
            )
            .await;
        assert_eq!(v["ok"], false, "{what}: {v}");
        let expect_at = if what == "truncated" {
            head_seq
        } else {
            broken
        };
        assert_eq!(v["broken_at"].as_i64(), Some(expect_at), "{what}: {v}");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
        let _ = &ctx.clock;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_stored_as_hashes_only() {
    let dir = tempfile::tempdir().expect("dir");
    let ctx = on_file(dir.path()).await;
    let header = ctx.token("ci", "operator", &["team"], None).await;
    let token = header.trim_start_matches("Bearer ").to_string();
    let secret = token
        .strip_prefix("kf_")
        .and_then(|t| t.split_once('_'))
        .map(|(_, s)| s)
        .unwrap()
        .to_string();
    ctx.root("GET", "/api/v1/tokens", None).await;
    let listed = ctx.root("GET", "/api/v1/tokens", None).await.to_string();
    assert!(!listed.contains(&secret), "{listed}");
    assert!(
        !listed.contains("sha256"),
        "the hash is not shown either: {listed}"
    );
    let mut bytes = Vec::new();
    for f in std::fs::read_dir(dir.path()).expect("dir") {
        bytes.extend(std::fs::read(f.expect("entry").path()).unwrap_or_default());
    }
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the token's secret is in the database files"
    );
    assert!(
        !bytes.windows(ROOT.len()).any(|w| w == ROOT.as_bytes()),
        "the environment's admin token is in the database files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_cloud_metadata_faults_with_an_error_the_workflow_can_catch() {
    let ctx = Ctx::new().await;
    ctx.register(
        "document: {dsl: '1.0.0', namespace: team, name: meta, version: '1.0.0'}\n\
         do:\n\
         \x20 - probe:\n\
         \x20     try:\n\
         \x20       - get:\n\
         \x20           call: http\n\
         \x20           with: {method: get, endpoint: 'http://169.254.169.254/latest/meta-data/'}\n\
         \x20     catch:\n\
         \x20       errors: {with: {type: 'https://serverlessworkflow.io/spec/1.0.0/errors/authorization', status: 403}}\n\
         \x20       as: err\n\
         \x20       do:\n\
         \x20         - note:\n\
         \x20             set: {denied: '${ $err.title }', detail: '${ $err.detail }'}\n"
            .to_string(),
    )
    .await;
    let done = ctx
        .root(
            "POST",
            "/api/v1/instances",
            Some(json!({"namespace": "team", "name": "meta", "wait": true, "wait_seconds": 30})),
        )
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["denied"], "Egress denied", "{done}");
    assert!(
        done["output"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("169.254"),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_request_rate_gets_429_and_others_do_not() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let ctx = Ctx::over(
        store,
        ApiConfig {
            rate_limit_per_token: 5.0,
            ..ApiConfig::default()
        },
    )
    .await;
    let busy = ctx.token("busy", "viewer", &["*"], None).await;
    let calm = ctx.token("calm", "viewer", &["*"], None).await;
    // A burst of twice the rate passes, the next is refused with the limit's name.
    for i in 0..10 {
        let a = ctx.call("GET", "/api/v1/queues", Some(&busy), None).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
    }
    let a = ctx.call("GET", "/api/v1/queues", Some(&busy), None).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert!(
        a.body.to_string().contains("rate_limit_per_token"),
        "{}",
        a.body
    );
    // Another token is not affected; time refills the bucket.
    assert_eq!(
        ctx.call("GET", "/api/v1/queues", Some(&calm), None)
            .await
            .status,
        200
    );
    ctx.clock.advance(1_000);
    assert_eq!(
        ctx.call("GET", "/api/v1/queues", Some(&busy), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_is_audited_once_with_its_commit_and_a_repeat_once_more() {
    let ctx = Ctx::new().await;
    ctx.register(doc("wait", "1.0.0")).await;
    let op = ctx.token("op", "operator", &["team"], None).await;
    let start = |key: &'static str| {
        let (ctx, op) = (&ctx, op.clone());
        async move {
            let req = Request::builder()
                .method("POST")
                .uri("/api/v1/instances")
                .header("authorization", op)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(Body::from(
                    json!({"namespace": "team", "name": "wait"}).to_string(),
                ))
                .unwrap();
            ctx.router.clone().oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(start("k1").await, StatusCode::CREATED);
    assert_eq!(start("k1").await, StatusCode::OK);
    let entries = ctx
        .root("GET", "/api/v1/audit?action=instances.start", None)
        .await;
    let results: Vec<&str> = entries["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, vec!["201", "200"], "{entries}");
    let verdict = ctx.root("GET", "/api/v1/audit/verify", None).await;
    assert_eq!(verdict["ok"], true, "{verdict}");
}

//! The web UI's server side, through the whole router with tokens on: sign-in and the cookie,
//! pages built from the API with the viewer's rights, escaping of hostile text, security
//! headers, cross-site refusals, 404 pages, history paging; and the API the UI reads
//! (validate, graph, diff, the input search).

mod support;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use kflow_server::api::{ApiConfig, router};
use kflow_server::auth::{AuthMode, Tokens};
use kflow_server::engine::{Engine, EngineConfig};
use kflow_store::Store;
use kflow_store::sqlite::SqliteStore;

const ROOT: &str = "kflow-ui-test-root-token-0123456789abcdef";

struct Ui {
    router: Router,
    engine: Engine,
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Page {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Ui {
    async fn new() -> Ui {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let engine = Engine::with_store(store.clone(), EngineConfig::default())
            .await
            .expect("engine");
        let tokens = Tokens::load(store, Some(ROOT)).expect("tokens");
        let router = router(
            engine.clone(),
            ApiConfig {
                auth: AuthMode::Tokens(Arc::new(tokens)),
                ..ApiConfig::default()
            },
        );
        Ui { router, engine }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, String)>,
    ) -> Page {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:8080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some((ct, text)) => b.header("content-type", ct).body(Body::from(text)),
            None => b.body(Body::empty()),
        }
        .expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A page as the holder of `token` sees it (signed in with the cookie).
    async fn page(&self, uri: &str, token: &str) -> Page {
        let cookie = format!("kflow_token={token}");
        self.call(Method::GET, uri, &[("cookie", &cookie)], None)
            .await
    }

    async fn api(&self, method: Method, uri: &str, body: Option<(&str, String)>) -> Page {
        let auth = format!("Bearer {ROOT}");
        self.call(method, uri, &[("authorization", &auth)], body)
            .await
    }

    /// Starts without waiting; the new id.
    async fn start_now(&self, ns: &str, name: &str) -> String {
        let body = json!({"namespace": ns, "name": name}).to_string();
        let p = self
            .api(
                Method::POST,
                "/api/v1/instances",
                Some(("application/json", body)),
            )
            .await;
        assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
        p.json()["id"].as_str().unwrap().to_string()
    }

    async fn list(&self, query: &str) -> Value {
        self.api(Method::GET, &format!("/api/v1/instances?{query}"), None)
            .await
            .json()
    }

    async fn token(&self, name: &str, role: &str, namespaces: &[&str]) -> String {
        let p = self
            .api(
                Method::POST,
                "/api/v1/tokens",
                Some((
                    "application/json",
                    json!({"name": name, "role": role, "namespaces": namespaces}).to_string(),
                )),
            )
            .await;
        assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
        p.json()["token"].as_str().expect("token").to_string()
    }

    async fn register(&self, doc: &str) {
        let p = self
            .api(
                Method::POST,
                "/api/v1/definitions",
                Some(("application/yaml", doc.to_string())),
            )
            .await;
        assert!(p.status.is_success(), "{}", p.body);
    }

    async fn start(&self, ns: &str, name: &str, input: Value) -> String {
        let p = self
            .api(
                Method::POST,
                "/api/v1/instances",
                Some((
                    "application/json",
                    json!({"namespace": ns, "name": name, "input": input, "wait": true})
                        .to_string(),
                )),
            )
            .await;
        assert!(p.status.is_success(), "{}", p.body);
        p.json()["id"].as_str().expect("id").to_string()
    }
}

fn doc(ns: &str, name: &str, version: &str, body: &str) -> String {
    support::wf(ns, name, version, body)
}

const STEPS: &str = "do:\n  - a:\n      set: {x: 1}\n  - b:\n      set: {y: '${ .x + 1 }'}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sets_an_http_only_cookie_and_pages_need_it() {
    let ui = Ui::new().await;
    let p = ui.call(Method::GET, "/", &[], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let p = ui.call(Method::GET, "/ui/instances", &[], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(
        p.headers["location"], "/ui/login?next=%2Fui%2Finstances",
        "no token: to the sign-in page, coming back after"
    );
    // A wrong token is refused with the API's reason, and no cookie.
    let form = |t: &str| {
        Some((
            "application/x-www-form-urlencoded",
            format!("token={t}&next=%2Fui%2Fworkflows"),
        ))
    };
    let p = ui
        .call(Method::POST, "/ui/login", &[], form("kf_nope_nope"))
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.headers.get("set-cookie").is_none());
    // A good one: HttpOnly, SameSite=Strict, back to where the user was going.
    let p = ui.call(Method::POST, "/ui/login", &[], form(ROOT)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.headers["location"], "/ui/workflows");
    let cookie = p.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // `next` never leads off the UI.
    let p = ui
        .call(
            Method::POST,
            "/ui/login",
            &[],
            Some((
                "application/x-www-form-urlencoded",
                format!("token={ROOT}&next=https://evil.example/"),
            )),
        )
        .await;
    assert_eq!(p.headers["location"], "/ui/instances");
    // A sign-in posted from another site is refused.
    let p = ui
        .call(
            Method::POST,
            "/ui/login",
            &[("origin", "https://evil.example")],
            form(ROOT),
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // Signed in, a page renders, with the security headers.
    let p = ui.page("/ui/instances", ROOT).await;
    assert_eq!(p.status, StatusCode::OK);
    let csp = p.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(p.headers["x-frame-options"], "DENY");
    // Sign-out clears the cookie.
    let p = ui.call(Method::POST, "/ui/logout", &[], None).await;
    assert!(
        p.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_works_for_the_api_but_not_from_another_site() {
    let ui = Ui::new().await;
    ui.register(&doc("team", "w", "1.0.0", STEPS)).await;
    let operator = ui.token("op", "operator", &["team"]).await;
    let cookie = format!("kflow_token={operator}");
    let start = || {
        Some((
            "application/json",
            json!({"namespace": "team", "name": "w"}).to_string(),
        ))
    };
    let p = ui
        .call(
            Method::POST,
            "/api/v1/instances",
            &[("cookie", &cookie), ("origin", "http://127.0.0.1:8080")],
            start(),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "same site: {}", p.body);
    let p = ui
        .call(
            Method::POST,
            "/api/v1/instances",
            &[("cookie", &cookie), ("origin", "https://evil.example")],
            start(),
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "another site: {}", p.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_what_the_token_may_see_and_do() {
    let ui = Ui::new().await;
    ui.register(&doc("team", "w", "1.0.0", STEPS)).await;
    ui.register(&doc("other", "secret", "1.0.0", STEPS)).await;
    let id = ui.start("team", "w", json!({})).await;
    let hidden = ui.start("other", "secret", json!({})).await;
    let viewer = ui.token("v", "viewer", &["team"]).await;
    let operator = ui.token("o", "operator", &["team"]).await;

    let p = ui.page(&format!("/ui/instances/{id}"), &viewer).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(
        p.body.contains("data-id=\"/do/1/b\""),
        "the graph names the tasks"
    );
    assert!(
        p.body.contains("class=\"node k-set completed\""),
        "tasks coloured by state"
    );
    assert!(
        !p.body.contains("data-action=\"cancel\""),
        "a viewer gets no cancel button"
    );
    let p = ui.page("/ui/workflows/team/w", &viewer).await;
    assert!(!p.body.contains("/start?version="), "nor a start button");

    // Another namespace's instance is a 404 page for this viewer, as in the API.
    let p = ui.page(&format!("/ui/instances/{hidden}"), &viewer).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert!(p.body.contains("404"));
    let p = ui.page("/ui/workflows", &viewer).await;
    assert!(
        p.body.contains("team") && !p.body.contains("secret"),
        "lists are filtered"
    );

    // An operator may start (the form) but not edit.
    let p = ui.page("/ui/workflows/team/w", &operator).await;
    assert!(p.body.contains("/start?version=") && !p.body.contains("/ui/editor?namespace"));
    let p = ui.page("/ui/workflows/team/w/start", &viewer).await;
    assert_eq!(
        p.status,
        StatusCode::FORBIDDEN,
        "a viewer has no start form"
    );

    // Unknown things: 404 pages, not blank ones.
    for uri in [
        "/ui/instances/nope",
        "/ui/workflows/team/nope",
        "/ui/nowhere",
        "/ui/workflows/team/w?version=9.9.9",
    ] {
        let p = ui.page(uri, ROOT).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(p.body.contains("<h1>404"), "{uri}: {}", p.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_shown_as_text() {
    let ui = Ui::new().await;
    let evil = "<script>alert(1)</script>";
    ui.register(&doc(
        "team",
        "x",
        "1.0.0",
        "do:\n  - '<img src=x onerror=alert(1)>':\n      set: {v: '${ .v }'}\n",
    ))
    .await;
    let id = ui
        .start("team", "x", json!({"v": evil, "\"><b>k": 1}))
        .await;
    for uri in [
        format!("/ui/instances/{id}"),
        "/ui/workflows/team/x".into(),
        "/ui/instances".into(),
    ] {
        let p = ui.page(&uri, ROOT).await;
        assert_eq!(p.status, StatusCode::OK, "{uri}");
        assert!(!p.body.contains("<script>alert"), "{uri}");
        assert!(!p.body.contains("<img src=x"), "{uri}");
        assert!(!p.body.contains("<b>k"), "{uri}");
    }
    let p = ui.page(&format!("/ui/instances/{id}"), ROOT).await;
    assert!(
        p.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "shown, escaped"
    );
    // A very long string does not break the page.
    let long = "x".repeat(200_000);
    let id = ui.start("team", "x", json!({"v": long})).await;
    let p = ui.page(&format!("/ui/instances/{id}"), ROOT).await;
    assert_eq!(p.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_paged() {
    let ui = Ui::new().await;
    ui.register(&doc(
        "team",
        "loop",
        "1.0.0",
        "do:\n  - each:\n      for: {each: i, in: '${ [range(0; 700)] }'}\n      do:\n        - step: {set: {v: '${ $i }'}}\n",
    ))
    .await;
    let id = ui.start("team", "loop", json!({})).await;
    let p = ui.page(&format!("/ui/instances/{id}"), ROOT).await;
    assert_eq!(p.status, StatusCode::OK);
    let rows = p.body.matches("<tr><td>").count();
    assert_eq!(rows, 1000, "one page of history");
    assert!(p.body.contains("?after=1000"), "with a link to the next");
    let p = ui
        .page(&format!("/ui/instances/{id}?after=1000"), ROOT)
        .await;
    assert!(
        p.body.contains("<tr><td>1001</td>"),
        "the next page starts after 1000"
    );
    assert!(p.body.contains("First events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_checks_as_the_server_registers() {
    let ui = Ui::new().await;
    let check = |text: &str| Some(("text/plain", text.to_string()));
    let auth = format!("kflow_token={ROOT}");
    let bad = doc(
        "team",
        "e",
        "1.0.0",
        "do:\n  - a:\n      set: {x: 1}\n      then: nowhere\n",
    );
    let p = ui
        .call(
            Method::POST,
            "/ui/editor/check",
            &[("cookie", &auth)],
            check(&bad),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("data-valid=\"false\""), "{}", p.body);
    assert!(
        p.body.contains("data-line=\"9\""),
        "the error at its line: {}",
        p.body
    );
    let good = doc("team", "e", "1.0.0", STEPS);
    let p = ui
        .call(
            Method::POST,
            "/ui/editor/check",
            &[("cookie", &auth)],
            check(&good),
        )
        .await;
    assert!(
        p.body.contains("data-valid=\"true\"") && p.body.contains("<svg"),
        "{}",
        p.body
    );
    // Without a token, no check.
    let p = ui
        .call(Method::POST, "/ui/editor/check", &[], check(&good))
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    // The API the editor uses: the same diagnostics, the graph of a valid document.
    let p = ui
        .api(
            Method::POST,
            "/api/v1/definitions/validate",
            Some(("application/yaml", bad)),
        )
        .await;
    let v = p.json();
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["line"], 9, "{v}");
    assert!(
        v["diagnostics"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nowhere")
    );
    let p = ui
        .api(
            Method::POST,
            "/api/v1/definitions/validate",
            Some(("application/yaml", good)),
        )
        .await;
    let v = p.json();
    assert_eq!(v["valid"], true);
    assert_eq!(v["name"], "e");
    assert_eq!(v["graph"]["nodes"].as_array().map(Vec::len), Some(4), "{v}");
    // A schedule problem is at the schedule's line.
    let sched = doc(
        "team",
        "s",
        "1.0.0",
        "schedule:\n  cron: '0 0 30 2 *'\ndo:\n  - a: {set: {x: 1}}\n",
    );
    let v = ui
        .api(
            Method::POST,
            "/api/v1/definitions/validate",
            Some(("application/yaml", sched)),
        )
        .await
        .json();
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["line"], 7, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_and_diffs_of_versions() {
    let ui = Ui::new().await;
    ui.register(&doc("team", "d", "1.0.0", STEPS)).await;
    ui.register(&doc(
        "team",
        "d",
        "1.1.0",
        "do:\n  - a:\n      set: {x: 2}\n  - c:\n      set: {z: 1}\n",
    ))
    .await;
    let g = ui
        .api(
            Method::GET,
            "/api/v1/definitions/team/d/versions/1.0.0/graph",
            None,
        )
        .await
        .json();
    let mut edges: Vec<String> = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}->{}",
                e["from"].as_str().unwrap(),
                e["to"].as_str().unwrap()
            )
        })
        .collect();
    edges.sort();
    assert_eq!(
        edges,
        ["/do/0/a->/do/1/b", "/do/1/b->end", "start->/do/0/a"]
    );
    assert_eq!(g["nodes"][2]["line"], 7, "{g}");
    // The version before the latest, by default.
    let d = ui
        .api(Method::GET, "/api/v1/definitions/team/d/diff", None)
        .await
        .json();
    assert_eq!(
        (d["from"].as_str(), d["to"].as_str()),
        (Some("1.0.0"), Some("1.1.0"))
    );
    assert_eq!(d["added"], json!(["c"]));
    assert_eq!(d["removed"], json!(["b"]));
    assert_eq!(d["changed"], json!(["a"]));
    let ops: String = d["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["op"].as_str().unwrap())
        .collect();
    assert!(ops.contains('+') && ops.contains('-'), "{d}");
    let p = ui
        .api(
            Method::GET,
            "/api/v1/definitions/team/d/diff?to=1.0.0",
            None,
        )
        .await;
    assert_eq!(
        p.status,
        StatusCode::NOT_FOUND,
        "nothing before the first version: {}",
        p.body
    );
    let p = ui
        .page("/ui/workflows/team/d/diff?from=1.0.0&to=1.1.0", ROOT)
        .await;
    assert!(
        p.body
            .contains("class=\"node k-set added\" data-id=\"/do/1/c\""),
        "{}",
        p.body
    );
    assert!(
        p.body
            .contains("class=\"node k-set removed\" data-id=\"/do/1/b\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_found_by_text_in_their_input() {
    let ui = Ui::new().await;
    ui.register(&doc("team", "w", "1.0.0", STEPS)).await;
    for i in 0..30 {
        let who = if i % 3 == 0 { "Needle-Ann" } else { "bob" };
        ui.start("team", "w", json!({"customer": who, "n": i}))
            .await;
    }
    let v = ui.list("q=needle-ann&limit=4").await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|i| i["input"]["customer"] == "Needle-Ann"));
    let next = v["next"].as_str().unwrap().to_string();
    let mut seen: Vec<i64> = items
        .iter()
        .map(|i| i["input"]["n"].as_i64().unwrap())
        .collect();
    let v = ui
        .list(&format!("q=needle-ann&limit=100&cursor={next}"))
        .await;
    seen.extend(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["input"]["n"].as_i64().unwrap()),
    );
    assert!(v["next"].is_null());
    seen.sort();
    assert_eq!(
        seen,
        (0..30).filter(|i| i % 3 == 0).collect::<Vec<_>>(),
        "every match once, none skipped"
    );
    let p = ui
        .api(
            Method::GET,
            &format!("/api/v1/instances?q={}", "x".repeat(201)),
            None,
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let p = ui.page("/ui/instances?q=needle", ROOT).await;
    assert_eq!(p.body.matches("<tr><td><a class=\"mono\"").count(), 10);
    let _ = &ui.engine;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_by_namespace() {
    let ui = Ui::new().await;
    let store = ui.engine.store();
    for (rule, key, ns) in [
        ("faults", "inst-team", Some("team")),
        ("faults", "inst-other", Some("other")),
        ("stuck", "default", None),
    ] {
        store
            .fire_alert(&kflow_store::AlertRow {
                id: format!("{rule}-{key}"),
                rule: rule.into(),
                key: key.into(),
                namespace: ns.map(str::to_string),
                fired_ms: 1_000,
                summary: format!("<b>{key}</b> went wrong"),
                data: json!({"on": "instance_faulted", "details": {}}),
                delivered_ms: None,
                attempts: 0,
                next_ms: None,
                last_error: None,
                resolved_ms: None,
            })
            .unwrap();
    }
    let viewer = ui.token("v", "viewer", &["team"]).await;
    let p = ui.page("/ui/alerts", &viewer).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("inst-team"));
    assert!(!p.body.contains("inst-other"), "another namespace's alert");
    assert!(
        !p.body.contains(">default<"),
        "server-wide alerts need a global token"
    );
    assert!(p.body.contains("&lt;b&gt;inst-team&lt;/b&gt;"), "escaped");
    let p = ui.page("/ui/alerts", ROOT).await;
    assert!(p.body.contains("inst-other") && p.body.contains("stuck"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_record_when_a_worker_took_them() {
    let app = Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            axum::Json(json!({"ok": true}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let ui = Ui::new().await;
    ui.register(&doc(
        "team",
        "caller",
        "1.0.0",
        &format!(
            "do:\n  - fetch:\n      call: http\n      with: {{method: get, endpoint: '{url}'}}\n"
        ),
    ))
    .await;
    let id = ui.start("team", "caller", json!({})).await;
    let h = ui
        .api(
            Method::GET,
            &format!("/api/v1/instances/{id}/history"),
            None,
        )
        .await
        .json();
    let delivery = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "delivery")
        .expect("the call's result")
        .clone();
    assert_eq!(delivery["data"]["task"], "/do/0/fetch", "{delivery}");
    let leased = delivery["data"]["leased_ms"].as_i64().expect("leased_ms");
    assert!(
        leased <= delivery["time_ms"].as_i64().unwrap() - 100,
        "{delivery}"
    );
    let p = ui.page(&format!("/ui/instances/{id}"), ROOT).await;
    assert!(
        p.body.contains("<rect class=\"wait\""),
        "the queue wait is drawn apart"
    );
    assert!(p.body.contains("ran "), "and told: {}", p.body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_held_by_a_concurrency_limit_is_queued() {
    let ui = Ui::new().await;
    ui.register(
        &doc(
            "team",
            "single",
            "1.0.0",
            "do:\n  - nap:\n      wait: {minutes: 10}\n",
        )
        .replace(
            "  version: '1.0.0'\n",
            "  version: '1.0.0'\n  metadata:\n    kflow:\n      concurrency:\n        limit: 1\n",
        ),
    )
    .await;
    let first = ui.start_now("team", "single").await;
    let second = ui.start_now("team", "single").await;
    let status = |v: Value| v["status"].as_str().unwrap_or("").to_string();
    let v = ui
        .api(Method::GET, &format!("/api/v1/instances/{second}"), None)
        .await
        .json();
    assert_eq!(status(v), "queued");
    let v = ui
        .api(Method::GET, &format!("/api/v1/instances/{first}"), None)
        .await
        .json();
    assert_eq!(status(v), "running");
    let l = ui.list("status=queued").await;
    let ids: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str()]);
    let l = ui.list("namespace=team").await;
    assert!(
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["status"] == "queued")
    );
    let p = ui.page("/ui/instances", ROOT).await;
    assert!(p.body.contains("data-status=\"queued\""));
    // The slot frees: the queued one starts.
    ui.api(
        Method::POST,
        &format!("/api/v1/instances/{first}/cancel"),
        None,
    )
    .await;
    let mut now = String::new();
    for _ in 0..100 {
        now = status(
            ui.api(Method::GET, &format!("/api/v1/instances/{second}"), None)
                .await
                .json(),
        );
        if now == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(now, "running");
}

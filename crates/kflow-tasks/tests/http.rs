//! `call: http` against a real HTTP server on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use kflow_effects::OutputFormat;
use kflow_effects::effect::{Auth, HttpRequest};
use kflow_effects::{Effect, WfError};
use kflow_tasks::{EffectCtx, ExecConfig, Executor};

use support::{Req, Resp, Server, ctx, map};

fn get(uri: String) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        uri,
        headers: Default::default(),
        query: Default::default(),
        body: None,
        output: OutputFormat::Content,
        redirect: false,
        auth: None,
    }
}

async fn run(req: HttpRequest) -> Result<Value, WfError> {
    Executor::new(ExecConfig::default())
        .perform(&ctx(), &Effect::Http(req))
        .await
}

fn is_type(e: &WfError, kind: &str) -> bool {
    e.type_.ends_with(&format!("/{kind}"))
}

/// Echoes the request as JSON.
fn echo(r: &Req) -> Resp {
    Resp::json(
        200,
        &json!({
            "method": r.method, "path": r.path(), "query": r.query(),
            "headers": r.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "body": r.body_text(),
        }),
    )
}

#[tokio::test]
async fn get_with_query_and_headers() {
    let server = Server::start(echo).await;
    let mut req = get(server.url("/items?x=1"));
    req.query = map(json!({"a": "b c", "n": 2, "arr": [1, 2], "skip": null}));
    req.headers = map(json!({"X-Num": 5, "X-Bool": true, "X-Text": "hello"}));
    let out = run(req).await.unwrap();
    assert_eq!(out["method"], "GET");
    assert_eq!(out["path"], "/items");
    assert_eq!(out["query"], "x=1&a=b+c&n=2&arr=1&arr=2");
    assert_eq!(out["headers"]["x-num"], "5");
    assert_eq!(out["headers"]["x-bool"], "true");
    assert_eq!(out["headers"]["x-text"], "hello");
}

#[tokio::test]
async fn post_json_body() {
    let server = Server::start(|r: &Req| {
        Resp::json(
            201,
            &json!({"got": r.body_json(), "ct": r.header("content-type")}),
        )
    })
    .await;
    let mut req = get(server.url("/pets"));
    req.method = "POST".into();
    req.body = Some(json!({"name": "milou", "tags": [1, 2]}));
    let out = run(req).await.unwrap();
    assert_eq!(out["got"], json!({"name": "milou", "tags": [1, 2]}));
    assert_eq!(out["ct"], "application/json");
}

#[tokio::test]
async fn form_and_raw_text_bodies() {
    let server = Server::start(|r: &Req| {
        Resp::json(
            200,
            &json!({"ct": r.header("content-type"), "body": r.body_text()}),
        )
    })
    .await;
    let mut req = get(server.url("/form"));
    req.method = "POST".into();
    req.headers = map(json!({"Content-Type": "application/x-www-form-urlencoded"}));
    req.body = Some(json!({"user": "a b", "n": 1, "x": "é&="}));
    let out = run(req.clone()).await.unwrap();
    assert_eq!(out["body"], "user=a+b&n=1&x=%C3%A9%26%3D");
    assert_eq!(
        support::parse_form(out["body"].as_str().unwrap())[2],
        ("x".to_string(), "é&=".to_string())
    );

    req.headers = map(json!({"content-type": "text/plain"}));
    req.body = Some(json!("just text"));
    let out = run(req).await.unwrap();
    assert_eq!(out["body"], "just text");
    assert_eq!(out["ct"], "text/plain");
}

#[tokio::test]
async fn output_formats() {
    let server = Server::start(|r: &Req| match r.path() {
        "/json" => Resp::json(200, &json!({"id": 1})).header("X-Extra", "yes"),
        "/problem" => Resp::text(200, "application/problem+json", r#"{"title":"t"}"#),
        "/text" => Resp::text(200, "text/plain; charset=utf-8", "hello\n"),
        "/badjson" => Resp::text(200, "application/json", "{not json"),
        "/binary" => Resp::new(200)
            .header("content-type", "application/octet-stream")
            .body(vec![0xff, 0x00, 0xfe]),
        _ => Resp::new(204),
    })
    .await;
    assert_eq!(
        run(get(server.url("/json"))).await.unwrap(),
        json!({"id": 1})
    );
    assert_eq!(
        run(get(server.url("/problem"))).await.unwrap(),
        json!({"title": "t"})
    );
    assert_eq!(
        run(get(server.url("/text"))).await.unwrap(),
        json!("hello\n")
    );
    assert_eq!(
        run(get(server.url("/badjson"))).await.unwrap(),
        json!("{not json")
    );
    assert_eq!(
        run(get(server.url("/binary"))).await.unwrap(),
        json!("/wD+")
    );
    assert_eq!(run(get(server.url("/empty"))).await.unwrap(), Value::Null);

    let mut raw = get(server.url("/json"));
    raw.output = OutputFormat::Raw;
    let out = run(raw).await.unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(out.as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, br#"{"id":1}"#);

    let mut full = get(server.url("/json?q=1"));
    full.output = OutputFormat::Response;
    full.headers = map(json!({"X-Mine": "m"}));
    full.auth = Some(Auth::Bearer {
        token: "secret-token".into(),
    });
    let out = run(full).await.unwrap();
    assert_eq!(out["statusCode"], 200);
    assert_eq!(out["content"], json!({"id": 1}));
    assert_eq!(out["headers"]["content-type"], "application/json");
    assert_eq!(out["headers"]["x-extra"], "yes");
    assert_eq!(out["request"]["method"], "GET");
    assert_eq!(out["request"]["uri"], server.url("/json?q=1"));
    assert_eq!(out["request"]["headers"]["x-mine"], "m");
    assert_eq!(out["request"]["headers"]["idempotency-key"], "inst-1-42");
    assert!(
        out["request"]["headers"].get("authorization").is_none(),
        "credentials must not leak into the output"
    );
}

#[tokio::test]
async fn error_status_is_a_communication_error() {
    let server = Server::start(|_: &Req| {
        Resp::text(
            404,
            "text/plain",
            &format!("no such pet {}", "x".repeat(3000)),
        )
    })
    .await;
    let err = run(get(server.url("/pet/9"))).await.unwrap_err();
    assert!(is_type(&err, "communication"), "{err:?}");
    assert_eq!(err.status, 404);
    let detail = err.detail.unwrap();
    assert!(detail.contains("GET"), "{detail}");
    assert!(detail.contains(&server.url("/pet/9")), "{detail}");
    assert!(detail.contains("no such pet"), "{detail}");
    assert!(
        detail.len() < 1500,
        "the body excerpt is bounded: {}",
        detail.len()
    );

    let server = Server::start(|_: &Req| Resp::json(500, &json!({"e": 1}))).await;
    assert_eq!(run(get(server.url("/x"))).await.unwrap_err().status, 500);
}

#[tokio::test]
async fn redirects() {
    let server = Server::start(|r: &Req| match r.path() {
        "/old" => Resp::new(302).header("location", "/new"),
        "/new" => Resp::json(200, &json!({"moved": true})),
        "/not-modified" => Resp::new(304),
        "/loop" => Resp::new(302).header("location", "/loop"),
        _ => Resp::new(404),
    })
    .await;
    // redirect: false: not followed, and a 3xx is an error.
    let err = run(get(server.url("/old"))).await.unwrap_err();
    assert!(is_type(&err, "communication"));
    assert_eq!(err.status, 302);
    assert!(err.detail.unwrap().contains("/new"));
    assert_eq!(server.hits("/new"), 0);

    // redirect: true: followed; a final 3xx is not an error.
    let mut req = get(server.url("/old"));
    req.redirect = true;
    assert_eq!(run(req).await.unwrap(), json!({"moved": true}));
    let mut req = get(server.url("/not-modified"));
    req.redirect = true;
    req.output = OutputFormat::Response;
    assert_eq!(run(req).await.unwrap()["statusCode"], 304);
    let mut req = get(server.url("/loop"));
    req.redirect = true;
    let err = run(req).await.unwrap_err();
    assert!(is_type(&err, "communication"));
    assert!(server.hits("/loop") <= 11);
}

#[tokio::test]
async fn basic_and_bearer_headers_reach_the_server() {
    let server = Server::start(|r: &Req| Resp::json(200, &json!(r.header("authorization")))).await;
    let mut req = get(server.url("/secure"));
    req.auth = Some(Auth::Basic {
        username: "admin".into(),
        password: "p@ss:word".into(),
    });
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:p@ss:word")
    );
    assert_eq!(run(req.clone()).await.unwrap(), json!(expected));
    req.auth = Some(Auth::Bearer {
        token: "tok123".into(),
    });
    assert_eq!(run(req).await.unwrap(), json!("Bearer tok123"));
}

fn md5_hex(s: &str) -> String {
    // An independent MD5 (coreutils) to check kflow's own implementation end to end.
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn digest_params(h: &str) -> std::collections::HashMap<String, String> {
    let rest = h.strip_prefix("Digest ").unwrap_or("");
    let mut m = std::collections::HashMap::new();
    for part in rest.split(", ") {
        if let Some((k, v)) = part.split_once('=') {
            m.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    m
}

#[tokio::test]
async fn digest_authentication() {
    let server = Server::start(|r: &Req| {
        let challenge = Resp::new(401).header(
            "www-authenticate",
            r#"Digest realm="kflow-test", qop="auth", algorithm=MD5, nonce="abc123", opaque="op""#,
        );
        let Some(h) = r.header("authorization") else {
            return challenge;
        };
        let p = digest_params(h);
        let ha1 = md5_hex("alice:kflow-test:wonder land");
        let ha2 = md5_hex(&format!(
            "{}:{}",
            r.method,
            p.get("uri").cloned().unwrap_or_default()
        ));
        let expected = md5_hex(&format!(
            "{ha1}:abc123:{}:{}:auth:{ha2}",
            p.get("nc").cloned().unwrap_or_default(),
            p.get("cnonce").cloned().unwrap_or_default()
        ));
        let ok = p.get("response") == Some(&expected)
            && p.get("uri").map(String::as_str) == Some(r.target.as_str())
            && p.get("opaque").map(String::as_str) == Some("op");
        if ok {
            Resp::json(200, &json!({"user": p["username"]}))
        } else {
            challenge
        }
    })
    .await;
    let mut req = get(server.url("/digest?x=1"));
    req.auth = Some(Auth::Digest {
        username: "alice".into(),
        password: "wonder land".into(),
    });
    assert_eq!(run(req.clone()).await.unwrap(), json!({"user": "alice"}));
    req.auth = Some(Auth::Digest {
        username: "alice".into(),
        password: "wrong".into(),
    });
    assert_eq!(run(req).await.unwrap_err().status, 401);
}

#[tokio::test]
async fn oauth2_client_credentials_token_is_fetched_once() {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let calls = token_calls.clone();
    let server = Server::start(move |r: &Req| match r.path() {
        "/realms/test/oauth2/token" => {
            calls.fetch_add(1, Ordering::SeqCst);
            let f = r.form();
            let get = |k: &str| {
                f.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            if r.method == "POST"
                && r.header("content-type") == Some("application/x-www-form-urlencoded")
                && get("grant_type") == "client_credentials"
                && get("client_id") == "wf"
                && get("client_secret") == "s3cret"
                && get("scope") == "api read"
                && get("audience") == "runtime"
            {
                Resp::json(
                    200,
                    &json!({"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600}),
                )
            } else {
                Resp::json(
                    400,
                    &json!({"error": "invalid_client", "form": format!("{f:?}")}),
                )
            }
        }
        "/api" if r.header("authorization") == Some("Bearer tok-1") => {
            Resp::json(200, &json!("ok"))
        }
        _ => Resp::new(401),
    })
    .await;
    let props = json!({
        "authority": server.url("/realms/test"),
        "grant": "client_credentials",
        "client": {"id": "wf", "secret": "s3cret"},
        "scopes": ["api", "read"],
        "audiences": ["runtime"],
    });
    let exec = Executor::new(ExecConfig::default());
    let mut req = get(server.url("/api"));
    req.auth = Some(Auth::OAuth2 {
        oidc: false,
        properties: props.clone(),
    });
    let eff = Effect::Http(req);
    assert_eq!(exec.perform(&ctx(), &eff).await.unwrap(), json!("ok"));
    assert_eq!(
        exec.clone().perform(&ctx(), &eff).await.unwrap(),
        json!("ok")
    );
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "the second call reuses the cached token"
    );

    // A refused client: authentication error.
    let mut bad = props.clone();
    bad["client"]["secret"] = json!("nope");
    let mut req = get(server.url("/api"));
    req.auth = Some(Auth::OAuth2 {
        oidc: false,
        properties: bad,
    });
    let err = exec.perform(&ctx(), &Effect::Http(req)).await.unwrap_err();
    assert!(is_type(&err, "authentication"), "{err:?}");
    assert_eq!(err.status, 401);
    assert!(err.detail.unwrap().contains("400"));
}

#[tokio::test]
async fn oauth2_basic_client_auth_json_encoding_and_oidc_discovery() {
    let server = Server::start(|r: &Req| match r.path() {
        "/idp/.well-known/openid-configuration" => {
            let base = format!("http://{}", r.header("host").unwrap_or(""));
            Resp::json(200, &json!({"issuer": format!("{base}/idp"), "token_endpoint": format!("{base}/idp/connect/token")}))
        }
        "/idp/connect/token" => {
            let b = r.body_json();
            let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("wf:s%2Fx"));
            if r.header("authorization") == Some(basic.as_str())
                && b["grant_type"] == "password"
                && b["username"] == "bob"
                && b["password"] == "pw"
                && b.get("client_secret").is_none()
            {
                Resp::json(200, &json!({"access_token": "oidc-tok", "expires_in": "120"}))
            } else {
                Resp::json(401, &json!({"error": "bad", "body": b}))
            }
        }
        "/api" => Resp::json(200, &json!(r.header("authorization"))),
        _ => Resp::new(404),
    })
    .await;
    let mut req = get(server.url("/api"));
    req.auth = Some(Auth::OAuth2 {
        oidc: true,
        properties: json!({
            "authority": server.url("/idp"),
            "grant": "password",
            "username": "bob", "password": "pw",
            "client": {"id": "wf", "secret": "s/x", "authentication": "client_secret_basic"},
            "request": {"encoding": "application/json"},
        }),
    });
    assert_eq!(run(req).await.unwrap(), json!("Bearer oidc-tok"));
}

#[tokio::test]
async fn idempotency_key_is_sent() {
    let server =
        Server::start(|r: &Req| Resp::json(200, &json!(r.header("idempotency-key")))).await;
    let ctx = EffectCtx {
        instance_id: "0190-abc".into(),
        effect_id: 7,
        task: "/do/1/x".into(),
        attempt: 2,
        namespace: String::new(),
        limits: Default::default(),
        traceparent: None,
    };
    let out = Executor::new(ExecConfig::default())
        .perform(&ctx, &Effect::Http(get(server.url("/k"))))
        .await
        .unwrap();
    assert_eq!(out, json!(ctx.idempotency_key()));
    assert_eq!(ctx.idempotency_key(), "0190-abc-7");
}

#[tokio::test]
async fn transport_failures() {
    // Connection refused: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = run(get(format!("http://127.0.0.1:{port}/x")))
        .await
        .unwrap_err();
    assert!(is_type(&err, "communication"));
    assert_eq!(err.status, 503);

    // Timeout.
    let server =
        Server::start(|_: &Req| Resp::json(200, &json!(1)).delayed(Duration::from_secs(3))).await;
    let exec = Executor::new(ExecConfig {
        http_timeout: Duration::from_millis(300),
        ..ExecConfig::default()
    });
    let err = exec
        .perform(&ctx(), &Effect::Http(get(server.url("/slow"))))
        .await
        .unwrap_err();
    assert!(is_type(&err, "communication"));
    assert_eq!(err.status, 504);

    // Not an absolute http(s) URI.
    let err = run(get("relative/path".into())).await.unwrap_err();
    assert!(is_type(&err, "configuration"));
    let err = run(get("ftp://example.com/x".into())).await.unwrap_err();
    assert!(is_type(&err, "configuration"));
    // Invalid header name.
    let mut req = get(server.url("/x"));
    req.headers = map(json!({"bad header": "x"}));
    assert!(is_type(&run(req).await.unwrap_err(), "configuration"));
}

#[tokio::test]
async fn response_size_limit() {
    let server = Server::start(|_: &Req| Resp::text(200, "text/plain", &"a".repeat(10_000))).await;
    let exec = Executor::new(ExecConfig {
        max_response_bytes: 1000,
        ..ExecConfig::default()
    });
    let err = exec
        .perform(&ctx(), &Effect::Http(get(server.url("/big"))))
        .await
        .unwrap_err();
    assert!(is_type(&err, "communication"));
    assert!(err.detail.unwrap().contains("1000"));
}

#[tokio::test]
async fn other_effects_are_refused() {
    let err = Executor::new(ExecConfig::default())
        .perform(&ctx(), &Effect::Timer { at_ms: 0 })
        .await
        .unwrap_err();
    assert!(is_type(&err, "runtime"));
}

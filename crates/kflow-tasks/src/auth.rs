//! Authentication for HTTP and OpenAPI calls: Basic, Bearer, Digest and OAuth2/OpenID Connect.
//!
//! Basic sends `Authorization: Basic base64(username:password)`, Bearer sends the token. Digest
//! (RFC 7616) sends the request once without credentials and, when the server answers 401 with a
//! `WWW-Authenticate: Digest` challenge, sends it again with the answer; the first challenge whose
//! algorithm kflow knows wins (`MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`; `qop=auth` preferred
//! to `auth-int`; `userhash` honoured). MD5 and SHA-256 are implemented here, from RFC 1321 and
//! FIPS 180-4, to keep the dependency list short.
//!
//! OAuth2 and OIDC obtain a token from the authority's token endpoint and send it as a bearer
//! token. Grants: `client_credentials` (also spelled `client-credentials`), `password` and
//! `urn:ietf:params:oauth:grant-type:token-exchange` (`subject`, `actor`); `authorization_code`
//! and `refresh_token` need a user or a stored token and are configuration errors. Client
//! authentication follows the spec's default, `client_secret_post`; `client_secret_basic`,
//! `none`, and `private_key_jwt`/`client_secret_jwt` with a ready `client.assertion` are also
//! supported. The token endpoint is `endpoints.token` (default `/oauth2/token`) appended to the
//! authority, as the spec calls it a path relative to the authority; an absolute
//! `endpoints.token` is used as is. For OIDC without `endpoints.token`, and for any authority
//! that is itself a `/.well-known/openid-configuration` URL, the endpoint is discovered from
//! that document. The request is form-encoded unless `request.encoding` is `application/json`.
//!
//! Tokens are cached per token endpoint and request (so per authority, client, grant, scopes and
//! audiences) until 30 s before `expires_in` runs out (5 minutes when the server does not say);
//! a token the resource server answers 401 to is dropped from the cache. A token endpoint that
//! answers with an error status, or without `access_token`, raises an authentication error (401).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use kflow_core::WfError;
use kflow_core::effect::Auth;
use kflow_dsl::errors::AUTHENTICATION;

use crate::Inner;
use crate::http::{self, Outgoing};

const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// How long before its announced expiry a token stops being reused.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed for a token whose response has no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Cache bounds (entries are small; the bound only stops unbounded growth).
const MAX_CACHED: usize = 1024;

fn auth_error(detail: impl Into<String>) -> WfError {
    WfError::standard(AUTHENTICATION, 401, "Authentication Error", detail)
}

/// OAuth2 tokens and OIDC discovery results shared by all clones of an executor.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    discovered: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenCache {
    fn get(map: &Mutex<HashMap<String, (String, Instant)>>, key: &str) -> Option<String> {
        let m = map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    fn put(
        map: &Mutex<HashMap<String, (String, Instant)>>,
        key: String,
        value: String,
        until: Instant,
    ) {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_CACHED {
            let now = Instant::now();
            m.retain(|_, (_, u)| *u > now);
            if m.len() >= MAX_CACHED {
                m.clear();
            }
        }
        m.insert(key, (value, until));
    }

    pub(crate) fn invalidate(&self, key: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The `Authorization` header value for Basic, Bearer and OAuth2 (with the token cache key for
/// OAuth2, so that a refused token can be dropped). Digest has no value before the challenge.
pub(crate) async fn authorization(
    inner: &Inner,
    auth: &Auth,
) -> Result<(String, Option<String>), WfError> {
    match auth {
        Auth::Basic { username, password } => Ok((basic(username, password), None)),
        Auth::Bearer { token } => {
            if token.is_empty() {
                return Err(auth_error("bearer authentication: the token is empty"));
            }
            Ok((format!("Bearer {token}"), None))
        }
        Auth::Digest { .. } => Err(WfError::runtime(
            "digest authentication has no preemptive header",
        )),
        Auth::OAuth2 { oidc, properties } => {
            let (token, key) = oauth2_token(inner, *oidc, properties).await?;
            Ok((format!("Bearer {token}"), Some(key)))
        }
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", B64.encode(format!("{user}:{pass}")))
}

// ---------------------------------------------------------------------------------------------
// OAuth2 / OIDC

fn prop<'a>(p: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = p;
    for k in path {
        cur = cur.get(*k)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn prop_str(p: &Value, path: &[&str]) -> Option<String> {
    prop(p, path).map(http::text_of).filter(|s| !s.is_empty())
}

fn prop_list(p: &Value, path: &[&str]) -> Vec<String> {
    match prop(p, path) {
        Some(Value::Array(a)) => a
            .iter()
            .map(http::text_of)
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn join_path(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        return path.to_string();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

async fn token_endpoint(inner: &Inner, oidc: bool, props: &Value) -> Result<String, WfError> {
    let scheme = if oidc { "oidc" } else { "oauth2" };
    let authority = prop_str(props, &["authority"]).ok_or_else(|| {
        WfError::configuration(format!("{scheme} authentication: 'authority' is required"))
    })?;
    let authority = authority.trim().to_string();
    let (base, is_discovery_url) = match authority.trim_end_matches('/').strip_suffix(WELL_KNOWN) {
        Some(b) => (b.to_string(), true),
        None => (authority.trim_end_matches('/').to_string(), false),
    };
    if let Some(p) = prop_str(props, &["endpoints", "token"]) {
        return Ok(join_path(&base, &p));
    }
    if !(oidc || is_discovery_url) {
        return Ok(join_path(&base, "/oauth2/token"));
    }
    let url = format!("{base}{WELL_KNOWN}");
    if let Some(t) = TokenCache::get(&inner.tokens.discovered, &url) {
        return Ok(t);
    }
    let out = Outgoing {
        method: reqwest::Method::GET,
        url: http::parse_url(&url).map_err(|e| {
            auth_error(format!(
                "{scheme} authentication: {}",
                e.detail.unwrap_or_default()
            ))
        })?,
        headers: accept_json(),
        body: None,
    };
    let resp = fetch(inner, &out).await?;
    if !(200..300).contains(&resp.status) {
        return Err(auth_error(format!(
            "{scheme} discovery: GET {url} returned {}: {}",
            resp.status,
            http::excerpt(&resp.body, 512).trim()
        )));
    }
    let doc: Value = serde_json::from_slice(&resp.body).map_err(|e| {
        auth_error(format!(
            "{scheme} discovery: {url} is not a JSON document: {e}"
        ))
    })?;
    let endpoint = doc
        .get("token_endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| auth_error(format!("{scheme} discovery: {url} has no 'token_endpoint'")))?
        .to_string();
    TokenCache::put(
        &inner.tokens.discovered,
        url,
        endpoint.clone(),
        Instant::now() + Duration::from_secs(3600),
    );
    Ok(endpoint)
}

fn accept_json() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        reqwest::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    h
}

/// One plain request to an authorization server (redirects followed, no idempotency key).
async fn fetch(inner: &Inner, out: &Outgoing) -> Result<http::Received, WfError> {
    let client = inner.client(true)?;
    let mut rb = client
        .request(out.method.clone(), out.url.clone())
        .headers(out.headers.clone());
    if let Some(b) = &out.body {
        rb = rb.body(b.clone());
    }
    let resp = rb.send().await.map_err(|e| {
        let status = if e.is_timeout() { 504 } else { 503 };
        WfError::communication(
            status,
            format!(
                "{} {}: {}",
                out.method,
                http::redact_url(&out.url),
                http::error_chain(&e)
            ),
        )
    })?;
    let status = resp.status();
    let headers = resp.headers().clone();
    // Token responses are small; a megabyte is plenty.
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        WfError::communication(
            502,
            format!(
                "{} {}: {}",
                out.method,
                http::redact_url(&out.url),
                http::error_chain(&e)
            ),
        )
    })? {
        if body.len() + chunk.len() > 1024 * 1024 {
            return Err(auth_error(format!(
                "{}: the authorization server's answer is larger than 1 MiB",
                out.url
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(http::Received {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        headers,
        body,
    })
}

async fn oauth2_token(
    inner: &Inner,
    oidc: bool,
    props: &Value,
) -> Result<(String, String), WfError> {
    let scheme = if oidc { "oidc" } else { "oauth2" };
    if !props.is_object() {
        return Err(WfError::configuration(format!(
            "{scheme} authentication: the properties must be an object"
        )));
    }
    let endpoint = token_endpoint(inner, oidc, props).await?;
    let url = http::parse_url(&endpoint).map_err(|e| {
        WfError::configuration(format!(
            "{scheme} token endpoint: {}",
            e.detail.unwrap_or_default()
        ))
    })?;

    let grant_raw = prop_str(props, &["grant"]).unwrap_or_else(|| "client_credentials".into());
    let grant = match grant_raw.as_str() {
        "client_credentials" | "client-credentials" => "client_credentials",
        "password" => "password",
        "urn:ietf:params:oauth:grant-type:token-exchange" | "token_exchange" | "token-exchange" => {
            "urn:ietf:params:oauth:grant-type:token-exchange"
        }
        "authorization_code" | "refresh_token" => {
            return Err(WfError::configuration(format!(
                "{scheme} authentication: the '{grant_raw}' grant needs an interactive user or a stored token; kflow supports client_credentials, password and token-exchange"
            )));
        }
        other => {
            return Err(WfError::configuration(format!(
                "{scheme} authentication: unknown grant '{other}' (supported: client_credentials, password, urn:ietf:params:oauth:grant-type:token-exchange)"
            )));
        }
    };

    // Fields in request order; JSON encoding keeps audiences as an array.
    let mut fields: Vec<(String, String)> = vec![("grant_type".into(), grant.into())];
    let scopes = prop_list(props, &["scopes"]);
    if !scopes.is_empty() {
        fields.push(("scope".into(), scopes.join(" ")));
    }
    let audiences = prop_list(props, &["audiences"]);
    for a in &audiences {
        fields.push(("audience".into(), a.clone()));
    }
    match grant {
        "password" => {
            let user = prop_str(props, &["username"]).ok_or_else(|| {
                WfError::configuration(format!(
                    "{scheme} authentication: the password grant needs 'username'"
                ))
            })?;
            fields.push(("username".into(), user));
            fields.push((
                "password".into(),
                prop_str(props, &["password"]).unwrap_or_default(),
            ));
        }
        "urn:ietf:params:oauth:grant-type:token-exchange" => {
            let token = prop_str(props, &["subject", "token"]).ok_or_else(|| {
                WfError::configuration(format!(
                    "{scheme} authentication: token exchange needs 'subject.token'"
                ))
            })?;
            fields.push(("subject_token".into(), token));
            fields.push((
                "subject_token_type".into(),
                prop_str(props, &["subject", "type"])
                    .unwrap_or_else(|| "urn:ietf:params:oauth:token-type:access_token".into()),
            ));
            if let Some(actor) = prop_str(props, &["actor", "token"]) {
                fields.push(("actor_token".into(), actor));
                fields.push((
                    "actor_token_type".into(),
                    prop_str(props, &["actor", "type"])
                        .unwrap_or_else(|| "urn:ietf:params:oauth:token-type:access_token".into()),
                ));
            }
        }
        _ => {}
    }

    let client_id = prop_str(props, &["client", "id"]);
    let client_secret = prop_str(props, &["client", "secret"]);
    let method = prop_str(props, &["client", "authentication"])
        .unwrap_or_else(|| "client_secret_post".into());
    let mut headers = accept_json();
    let need_id = || {
        client_id
            .clone()
            .ok_or_else(|| WfError::configuration(format!("{scheme} authentication: 'client.id' is required with client authentication '{method}'")))
    };
    match method.as_str() {
        "client_secret_post" => {
            fields.push(("client_id".into(), need_id()?));
            if let Some(s) = &client_secret {
                fields.push(("client_secret".into(), s.clone()));
            }
        }
        "client_secret_basic" => {
            // RFC 6749 §2.3.1: both parts are form-encoded before base64.
            let id = need_id()?;
            let secret = client_secret.clone().unwrap_or_default();
            let value = basic(&http::form_escaped(&id), &http::form_escaped(&secret));
            let v = HeaderValue::from_str(&value).map_err(|_| {
                WfError::configuration(format!(
                    "{scheme} authentication: the client credentials are not valid header text"
                ))
            })?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        "none" => {
            if let Some(id) = &client_id {
                fields.push(("client_id".into(), id.clone()));
            }
        }
        "private_key_jwt" | "client_secret_jwt" => {
            let assertion = prop_str(props, &["client", "assertion"]).ok_or_else(|| {
                WfError::configuration(format!(
                    "{scheme} authentication: '{method}' needs a signed 'client.assertion' (kflow does not sign assertions itself)"
                ))
            })?;
            if let Some(id) = &client_id {
                fields.push(("client_id".into(), id.clone()));
            }
            fields.push((
                "client_assertion_type".into(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            fields.push(("client_assertion".into(), assertion));
        }
        other => {
            return Err(WfError::configuration(format!(
                "{scheme} authentication: unknown client authentication '{other}' (supported: client_secret_post, client_secret_basic, none, private_key_jwt, client_secret_jwt)"
            )));
        }
    }

    let encoding = prop_str(props, &["request", "encoding"]).unwrap_or_else(|| http::FORM.into());
    let body = match http::essence(&encoding).as_str() {
        "application/json" => {
            let mut m = Map::new();
            for (k, v) in &fields {
                if k == "audience" {
                    continue;
                }
                m.insert(k.clone(), Value::String(v.clone()));
            }
            if !audiences.is_empty() {
                m.insert(
                    "audience".into(),
                    Value::Array(audiences.iter().cloned().map(Value::String).collect()),
                );
            }
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Value::Object(m).to_string()
        }
        e if e == http::FORM => {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static(http::FORM),
            );
            http::form_encode(&fields)
        }
        other => {
            return Err(WfError::configuration(format!(
                "{scheme} authentication: unsupported request.encoding '{other}' (use application/x-www-form-urlencoded or application/json)"
            )));
        }
    };

    let basic_header = headers
        .get(reqwest::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let key = format!("{endpoint}\n{basic_header}\n{body}");
    if let Some(t) = TokenCache::get(&inner.tokens.tokens, &key) {
        return Ok((t, key));
    }

    let out = Outgoing {
        method: reqwest::Method::POST,
        url,
        headers,
        body: Some(body.into_bytes()),
    };
    let resp = fetch(inner, &out).await?;
    if !(200..300).contains(&resp.status) {
        return Err(auth_error(format!(
            "{scheme}: the token endpoint POST {} returned {}: {}",
            http::redact_url(&out.url),
            resp.status,
            http::excerpt(&resp.body, 1024).trim()
        )));
    }
    let answer: Value = serde_json::from_slice(&resp.body).map_err(|e| {
        auth_error(format!(
            "{scheme}: the token endpoint {} did not answer JSON: {e}",
            out.url
        ))
    })?;
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            auth_error(format!(
                "{scheme}: the token endpoint {} answered without 'access_token'",
                out.url
            ))
        })?
        .to_string();
    let lifetime = match answer.get("expires_in") {
        Some(Value::Number(n)) => n
            .as_f64()
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9))),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok().map(Duration::from_secs),
        _ => None,
    }
    .unwrap_or(DEFAULT_LIFETIME);
    if lifetime > EXPIRY_MARGIN {
        TokenCache::put(
            &inner.tokens.tokens,
            key.clone(),
            token.clone(),
            Instant::now() + (lifetime - EXPIRY_MARGIN),
        );
    }
    Ok((token, key))
}

// ---------------------------------------------------------------------------------------------
// Digest (RFC 7616)

/// One `WWW-Authenticate` challenge's parameters (names lowercase).
fn digest_challenges(headers: &HeaderMap) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    for v in headers.get_all(reqwest::header::WWW_AUTHENTICATE) {
        let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.extend(parse_challenges(&text));
    }
    out
}

/// Parses `Scheme k=v, k="v", Scheme2 ...`, keeping only Digest challenges.
fn parse_challenges(s: &str) -> Vec<HashMap<String, String>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let mut current: Option<(bool, HashMap<String, String>)> = None;
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if start == i {
            // Not a token: skip one byte to make progress on malformed input.
            i += 1;
            continue;
        }
        let token = &s[start..i];
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            // auth-param
            j += 1;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            let mut value = String::new();
            if j < b.len() && b[j] == b'"' {
                j += 1;
                let mut bytes = Vec::new();
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    bytes.push(b[j]);
                    j += 1;
                }
                j += 1; // closing quote (or end)
                value = String::from_utf8_lossy(&bytes).into_owned();
            } else {
                let vs = j;
                while j < b.len() && b[j] != b',' && b[j] != b' ' && b[j] != b'\t' {
                    j += 1;
                }
                value.push_str(&s[vs..j]);
            }
            if let Some((_, params)) = current.as_mut() {
                params.insert(token.to_ascii_lowercase(), value);
            }
            i = j.min(b.len());
        } else {
            // A new scheme (possibly followed by token68, which Digest does not use).
            if let Some((true, params)) = current.take() {
                out.push(params);
            }
            current = Some((token.eq_ignore_ascii_case("digest"), HashMap::new()));
        }
    }
    if let Some((true, params)) = current {
        out.push(params);
    }
    out
}

/// The `Authorization` value answering the response's Digest challenge, or `None` when the
/// response has no challenge kflow can answer.
pub(crate) fn digest_answer(
    headers: &HeaderMap,
    username: &str,
    password: &str,
    out: &Outgoing,
) -> Result<Option<String>, WfError> {
    let challenges = digest_challenges(headers);
    if challenges.is_empty() {
        return Ok(None);
    }
    let pick = challenges.iter().find_map(|c| {
        let alg = c
            .get("algorithm")
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_else(|| "MD5".into());
        let h: fn(&[u8]) -> String = match alg.as_str() {
            "MD5" | "MD5-SESS" => |d| hex(&md5(d)),
            "SHA-256" | "SHA-256-SESS" => |d| hex(&sha256(d)),
            _ => return None,
        };
        Some((c, alg, h))
    });
    let Some((c, alg, h)) = pick else {
        let algs: Vec<String> = challenges
            .iter()
            .map(|c| c.get("algorithm").cloned().unwrap_or_else(|| "MD5".into()))
            .collect();
        return Err(auth_error(format!(
            "digest authentication: the server asks for algorithm(s) {} (kflow supports MD5, MD5-sess, SHA-256, SHA-256-sess)",
            algs.join(", ")
        )));
    };
    let realm = c.get("realm").cloned().unwrap_or_default();
    let nonce = c
        .get("nonce")
        .cloned()
        .ok_or_else(|| auth_error("digest authentication: the server's challenge has no nonce"))?;
    let qops: Vec<String> = c
        .get("qop")
        .map(|q| {
            q.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let qop = if qops.is_empty() {
        None
    } else if qops.iter().any(|q| q == "auth") {
        Some("auth")
    } else if qops.iter().any(|q| q == "auth-int") {
        Some("auth-int")
    } else {
        return Err(auth_error(format!(
            "digest authentication: unsupported qop '{}'",
            qops.join(",")
        )));
    };
    let mut uri = out.url.path().to_string();
    if let Some(q) = out.url.query() {
        uri.push('?');
        uri.push_str(q);
    }
    let cnonce = uuid::Uuid::new_v4().simple().to_string();
    let nc = "00000001";
    let mut ha1 = h(format!("{username}:{realm}:{password}").as_bytes());
    if alg.ends_with("-SESS") {
        ha1 = h(format!("{ha1}:{nonce}:{cnonce}").as_bytes());
    }
    let ha2 = match qop {
        Some("auth-int") => {
            let body_hash = h(out.body.as_deref().unwrap_or(&[]));
            h(format!("{}:{uri}:{body_hash}", out.method).as_bytes())
        }
        _ => h(format!("{}:{uri}", out.method).as_bytes()),
    };
    let response = match qop {
        Some(q) => h(format!("{ha1}:{nonce}:{nc}:{cnonce}:{q}:{ha2}").as_bytes()),
        None => h(format!("{ha1}:{nonce}:{ha2}").as_bytes()),
    };
    let userhash = c
        .get("userhash")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let user_field = if userhash {
        h(format!("{username}:{realm}").as_bytes())
    } else {
        username.to_string()
    };
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{}\", uri=\"{}\", algorithm={}, nonce=\"{}\"",
        quote(&user_field),
        quote(&realm),
        quote(&uri),
        c.get("algorithm").cloned().unwrap_or_else(|| "MD5".into()),
        quote(&nonce)
    );
    if let Some(q) = qop {
        value.push_str(&format!(", qop={q}, nc={nc}, cnonce=\"{cnonce}\""));
    }
    value.push_str(&format!(", response=\"{response}\""));
    if let Some(o) = c.get("opaque") {
        value.push_str(&format!(", opaque=\"{}\"", quote(o)));
    }
    if userhash {
        value.push_str(", userhash=true");
    }
    Ok(Some(value))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pads a message to whole 64-byte blocks with the bit length in the last 8 bytes.
fn pad(data: &[u8], big_endian: bool) -> Vec<u8> {
    let mut m = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    m.push(0x80);
    while m.len() % 64 != 56 {
        m.push(0);
    }
    m.extend_from_slice(&if big_endian {
        bits.to_be_bytes()
    } else {
        bits.to_le_bytes()
    });
    m
}

/// MD5 (RFC 1321).
pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
    const SHIFTS: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    // K[i] = floor(|sin(i + 1)| * 2^32).
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut s = [0x6745_2301u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for block in pad(data, false).chunks_exact(64) {
        let mut w = [0u32; 16];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        let [mut a, mut b, mut c, mut d] = s;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(w[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(SHIFTS[(i / 16) * 4 + i % 4]));
        }
        s = [
            s[0].wrapping_add(a),
            s[1].wrapping_add(b),
            s[2].wrapping_add(c),
            s[3].wrapping_add(d),
        ];
    }
    let mut out = [0u8; 16];
    for (i, v) in s.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The first `n` primes.
fn primes(n: usize) -> Vec<u32> {
    let mut p = Vec::with_capacity(n);
    let mut c = 2u32;
    while p.len() < n {
        if p.iter().all(|q| !c.is_multiple_of(*q)) {
            p.push(c);
        }
        c += 1;
    }
    p
}

/// The first 32 bits of the fractional part of `x`.
fn frac32(x: f64) -> u32 {
    ((x - x.floor()) * 4_294_967_296.0) as u32
}

/// SHA-256 (FIPS 180-4).
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let ps = primes(64);
    let k: Vec<u32> = ps.iter().map(|&p| frac32(f64::from(p).cbrt())).collect();
    let mut h: Vec<u32> = ps[..8]
        .iter()
        .map(|&p| frac32(f64::from(p).sqrt()))
        .collect();
    for block in pad(data, true).chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let (mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh) =
            (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(k[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(v);
        }
    }
    let mut out = [0u8; 32];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_rfc1321_vectors() {
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(&md5(b"message digest")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
        assert_eq!(
            hex(&md5(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            )),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn sha256_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn rfc7616_md5_example() {
        // RFC 7616 §3.9.1 (the MD5 variant of the example).
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=MD5, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
            ),
        );
        let c = &digest_challenges(&headers)[0];
        assert_eq!(c["realm"], "http-auth@example.org");
        assert_eq!(c["qop"], "auth, auth-int");
        assert_eq!(c["opaque"], "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS");
        // With the RFC's fixed cnonce the response is 8ca523f5e9506fed4657c9700eebdbec.
        let h = |d: &[u8]| hex(&md5(d));
        let ha1 = h(b"Mufasa:http-auth@example.org:Circle of Life");
        let ha2 = h(b"GET:/dir/index.html");
        let r = h(format!(
            "{ha1}:7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v:00000001:f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ:auth:{ha2}"
        )
        .as_bytes());
        assert_eq!(r, "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn challenge_parser_survives_garbage() {
        for s in [
            "",
            "Digest",
            "Digest realm=",
            "Digest realm=\"x",
            "Basic realm=\"a\", Digest nonce=n",
            "==,,\"\\",
            "Bearer abc==, Digest nonce=\"q\"",
        ] {
            let _ = parse_challenges(s);
        }
        let c = parse_challenges("Basic realm=\"a\", Digest nonce=n, realm=\"r\"");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["nonce"], "n");
        assert_eq!(c[0]["realm"], "r");
        let c = parse_challenges("Bearer abc==, Digest nonce=\"q\"");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["nonce"], "q");
    }
}

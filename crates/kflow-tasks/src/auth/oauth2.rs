//! OAuth2 and OpenID Connect: obtaining a token from the authority's token endpoint.
//!
//! Grants: `client_credentials` (also spelled `client-credentials`), `password` and
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

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use kflow_effects::WfError;

use super::{auth_error, basic};
use crate::Inner;
use crate::http::{self, Outgoing};

const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// How long before its announced expiry a token stops being reused.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed for a token whose response has no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Cache bounds (entries are small; the bound only stops unbounded growth).
const MAX_CACHED: usize = 1024;

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
/// Token endpoints obey the server-wide egress policy.
async fn fetch(inner: &Inner, out: &Outgoing) -> Result<http::Received, WfError> {
    let clients = inner.clients("");
    clients
        .policy
        .check_url(&out.url)
        .map_err(crate::egress::denied)?;
    let client = clients.client(true)?;
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

/// A token for the policy `props` (from the cache when it is still good) and its cache key.
pub(super) async fn token(
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

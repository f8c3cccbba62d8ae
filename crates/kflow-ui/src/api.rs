//! The UI's only way to data: the REST API, called in-process with the browser's credentials.
//!
//! Every page is built from the same answers the CLI reads (the `kflow-api` types), through the
//! same router, so the same access rules, namespace checks, `Host` checks and audit apply: a
//! page can show nothing that its viewer could not `curl`.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// The cookie that holds a browser's token (HttpOnly, SameSite=Strict).
pub const COOKIE: &str = "kflow_token";

/// The largest API answer a page reads (a history page of 1,000 events fits easily).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The API as one viewer sees it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    token: Option<String>,
    host: Option<HeaderValue>,
}

/// Why a page could not be built.
#[derive(Debug)]
pub enum UiError {
    /// No valid credentials: the login page.
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Bad(String),
    Failed(StatusCode, String),
}

impl UiError {
    pub fn status(&self) -> StatusCode {
        match self {
            UiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::Bad(_) => StatusCode::BAD_REQUEST,
            UiError::Failed(s, _) => *s,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            UiError::Unauthorized(m)
            | UiError::Forbidden(m)
            | UiError::NotFound(m)
            | UiError::Bad(m)
            | UiError::Failed(_, m) => m,
        }
    }
}

/// The token a request carries: its `kflow_token` cookie, or a bearer `Authorization` header.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    cookie(headers, COOKIE)
}

/// A cookie's value.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

impl Api {
    pub fn new(router: Router, headers: &HeaderMap) -> Api {
        Api {
            router,
            token: token_of(headers),
            host: headers.get(header::HOST).cloned(),
        }
    }

    /// The same API with another token (the login form checks one).
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// One call; the answer's status and body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Vec<u8>), UiError> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = &self.token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
        {
            req = req.header(header::AUTHORIZATION, v);
        }
        if let Some(h) = &self.host {
            req = req.header(header::HOST, h.clone());
        }
        let req = match body {
            Some((ct, bytes)) => req.header(header::CONTENT_TYPE, ct).body(Body::from(bytes)),
            None => req.body(Body::empty()),
        }
        .map_err(|e| UiError::Bad(format!("bad request to the API: {e}")))?;
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| UiError::Failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| UiError::Failed(StatusCode::BAD_GATEWAY, e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok((status, body))
    }

    /// A GET whose answer is a `T`; an error status becomes the matching [`UiError`].
    pub async fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, UiError> {
        let (status, body) = self.call(Method::GET, uri, None).await?;
        if !status.is_success() {
            return Err(error_of(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            UiError::Failed(
                StatusCode::BAD_GATEWAY,
                format!("the API's answer to {uri} does not read: {e}"),
            )
        })
    }

    /// A POST of a body; the answer as a `T`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        uri: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<T, UiError> {
        let (status, answer) = self
            .call(Method::POST, uri, Some((content_type, body)))
            .await?;
        if !status.is_success() {
            return Err(error_of(status, &answer));
        }
        serde_json::from_slice(&answer).map_err(|e| {
            UiError::Failed(
                StatusCode::BAD_GATEWAY,
                format!("the API's answer to {uri} does not read: {e}"),
            )
        })
    }
}

/// The API's error body (`{"error": {"message", "details"}}`) as a [`UiError`].
pub fn error_of(status: StatusCode, body: &[u8]) -> UiError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut message = v
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"))
        .to_string();
    if let Some(details) = v.pointer("/error/details").and_then(|d| d.as_array()) {
        for d in details.iter().filter_map(|d| d.as_str()) {
            message.push('\n');
            message.push_str(d);
        }
    }
    match status {
        StatusCode::UNAUTHORIZED => UiError::Unauthorized(message),
        StatusCode::FORBIDDEN => UiError::Forbidden(message),
        StatusCode::NOT_FOUND => UiError::NotFound(message),
        StatusCode::BAD_REQUEST => UiError::Bad(message),
        s => UiError::Failed(s, message),
    }
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

//! The HTTP side of the client: one [`Api`] per invocation wrapping a reqwest client, and the
//! [`Failure`] every verb returns.
//!
//! Ordinary requests time out after 30 s; watch streams have no overall timeout (only the
//! connect timeout). A request that never reaches a server becomes [`Failure::Unreachable`]
//! naming the URL; an error status becomes [`Failure::Api`] carrying the server's
//! `{"error":{"code","message","details"}}` body (or its raw text when it is not that shape).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, Url};
use serde_json::Value;

use super::ServerArgs;

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a verb could not do its work, and which exit code that means.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or unreadable local files (exit 2).
    Usage(String),
    /// No server answered at `url` (exit 2).
    Unreachable { url: String, detail: String },
    /// The server refused the request (exit 1).
    Api { status: u16, error: ApiError },
    /// The server answered something the client cannot understand (exit 1).
    Protocol(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::Unreachable { .. } => 2,
            Failure::Api { .. } | Failure::Protocol(_) => 1,
        }
    }

    /// The message for stderr, `kflow: ` first, detail lines indented below.
    pub fn render(&self) -> String {
        match self {
            Failure::Usage(m) | Failure::Protocol(m) => format!("kflow: {m}"),
            Failure::Unreachable { url, detail } => {
                format!("kflow: no kflow server answered at {url} ({detail})")
            }
            Failure::Api { status, error } => format!("kflow: {}", error.render(*status)),
        }
    }
}

/// The error body of a refused request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: Option<String>,
    pub message: String,
    pub details: Vec<Value>,
}

impl ApiError {
    /// Reads `{"error":{"code","message","details"}}`; any other body becomes the message.
    pub fn from_body(status: u16, body: &[u8]) -> ApiError {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            let e = v.get("error").unwrap_or(&v);
            let message = match e.get("message") {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let code = e.get("code").and_then(Value::as_str).map(str::to_owned);
            if message.is_some() || code.is_some() {
                let details = match e.get("details") {
                    Some(Value::Array(a)) => a.clone(),
                    Some(Value::Null) | None => Vec::new(),
                    Some(other) => vec![other.clone()],
                };
                let message = message.unwrap_or_else(|| format!("HTTP {status}"));
                return ApiError {
                    code,
                    message,
                    details,
                };
            }
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            format!("the server answered HTTP {status}")
        } else {
            format!(
                "the server answered HTTP {status}: {}",
                super::render::clip(text, 500)
            )
        };
        ApiError {
            code: None,
            message,
            details: Vec::new(),
        }
    }

    /// The message, then one indented line per detail.
    pub fn render(&self, _status: u16) -> String {
        let mut s = self.message.clone();
        for d in &self.details {
            s.push_str("\n  ");
            s.push_str(&render_detail(d));
        }
        s
    }
}

/// One detail of an error body: a string as is; an object as `[FILE:]LINE:COL: message` or
/// `PATH: message` when it has those fields, compact JSON otherwise.
pub fn render_detail(d: &Value) -> String {
    match d {
        Value::String(s) => s.clone(),
        Value::Object(m) => {
            let Some(msg) = m.get("message").and_then(Value::as_str) else {
                return d.to_string();
            };
            let num = |k: &str| m.get(k).and_then(Value::as_u64);
            let mut at = String::new();
            if let Some(line) = num("line") {
                at = match num("column").or_else(|| num("col")) {
                    Some(col) => format!("{line}:{col}"),
                    None => line.to_string(),
                };
            }
            for k in ["path", "pointer", "field", "location"] {
                if let Some(p) = m.get(k).and_then(Value::as_str).filter(|p| !p.is_empty()) {
                    at = if at.is_empty() {
                        p.to_owned()
                    } else {
                        format!("{at} {p}")
                    };
                    break;
                }
            }
            if at.is_empty() {
                msg.to_owned()
            } else {
                format!("{at}: {msg}")
            }
        }
        other => other.to_string(),
    }
}

/// `Bearer TOKEN` as a header value marked sensitive (kept out of debug output).
/// An answer of the server read as the wire type it must be (`kflow-api`): a malformed answer
/// is an error naming what was read, never a blank or a default.
pub fn typed<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T, Failure> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Failure::Protocol(format!(
            "the server's answer about {what} is not understood: {e}"
        ))
    })
}

pub fn bearer(token: &str) -> Result<reqwest::header::HeaderValue, Failure> {
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Failure::Usage("the token holds characters a header cannot carry".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The server, at one base URL or several (the nodes of a cluster: a request goes to the one
/// that answered last, and to the next when it cannot be reached).
pub struct Api {
    bases: Vec<Url>,
    current: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
}

/// The base URLs of `--server` (comma-separated), checked.
pub fn parse_bases(raw: &str) -> Result<Vec<Url>, Failure> {
    let mut bases = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let base = Url::parse(part)
            .map_err(|e| Failure::Usage(format!("--server {part:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Failure::Usage(format!(
                "--server {part:?} must be an http:// or https:// URL"
            )));
        }
        bases.push(base);
    }
    if bases.is_empty() {
        return Err(Failure::Usage("--server is empty".into()));
    }
    Ok(bases)
}

impl Api {
    pub fn new(args: &ServerArgs) -> Result<Api, Failure> {
        let bases = parse_bases(&args.server)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = args.token()? {
            headers.insert(reqwest::header::AUTHORIZATION, bearer(&t)?);
        }
        let http = args
            .client_builder()?
            .connect_timeout(TIMEOUT)
            .default_headers(headers)
            .user_agent(concat!("kflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api {
            bases,
            current: Default::default(),
            http,
        })
    }

    fn current_base(&self) -> &Url {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// The base URL (the one in use, of several) as the user gave it (for messages).
    pub fn base(&self) -> &str {
        self.current_base().as_str().trim_end_matches('/')
    }

    /// Sends the request `make` builds for the base in use; when that server cannot be reached
    /// (nothing was sent), the same request to the next base, each once.
    async fn send(
        &self,
        make: impl Fn(&Self) -> RequestBuilder,
    ) -> Result<Response, reqwest::Error> {
        let mut tries = self.bases.len();
        loop {
            match make(self).send().await {
                Err(e) if e.is_connect() && tries > 1 => {
                    tries -= 1;
                    self.current
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    /// `BASE/api/v1/<segments...>`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.current_base().clone();
        u.set_query(None);
        u.set_fragment(None);
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        u
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http
            .request(method, self.url(segments))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value, Failure> {
        self.json(|a| a.request(Method::GET, segments).query(query))
            .await
            .map(|(_, v)| v)
    }

    pub async fn post_json(&self, segments: &[&str], body: &Value) -> Result<Value, Failure> {
        self.json(|a| a.request(Method::POST, segments).json(body))
            .await
            .map(|(_, v)| v)
    }

    pub async fn put_json(&self, segments: &[&str], body: &Value) -> Result<Value, Failure> {
        self.json(|a| a.request(Method::PUT, segments).json(body))
            .await
            .map(|(_, v)| v)
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value, Failure> {
        self.json(|a| a.request(Method::DELETE, segments))
            .await
            .map(|(_, v)| v)
    }

    /// POSTs raw bytes; returns the success status with the body.
    pub async fn post_bytes(
        &self,
        segments: &[&str],
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value), Failure> {
        self.json(|a| {
            a.request(Method::POST, segments)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone())
        })
        .await
    }

    /// Opens a server-sent-events stream (no overall timeout).
    pub async fn stream(&self, segments: &[&str]) -> Result<Response, Failure> {
        let resp = self
            .send(|a| {
                a.request(Method::GET, segments)
                    .header(reqwest::header::ACCEPT, "text/event-stream")
            })
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            return Err(Failure::Api {
                status,
                error: ApiError::from_body(status, &body),
            });
        }
        Ok(resp)
    }

    async fn json(&self, make: impl Fn(&Self) -> RequestBuilder) -> Result<(u16, Value), Failure> {
        let resp = self
            .send(|a| make(a).timeout(TIMEOUT))
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        if status >= 400 {
            return Err(Failure::Api {
                status,
                error: ApiError::from_body(status, &body),
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok((status, Value::Null));
        }
        match serde_json::from_slice(&body) {
            Ok(v) => Ok((status, v)),
            Err(e) => Err(Failure::Protocol(format!(
                "the server at {} answered HTTP {status} with a body that is not JSON ({e}): {}",
                self.base(),
                super::render::clip(&String::from_utf8_lossy(&body), 200)
            ))),
        }
    }

    /// Maps a transport error: connection problems and timeouts mean no server answered.
    pub fn transport(&self, e: reqwest::Error) -> Failure {
        let detail = if e.is_timeout() {
            format!("no answer within {} s", TIMEOUT.as_secs())
        } else {
            root_cause(&e)
        };
        if e.is_connect() || e.is_timeout() || e.is_request() {
            Failure::Unreachable {
                url: self.base().to_owned(),
                detail,
            }
        } else {
            Failure::Protocol(format!(
                "talking to the server at {} failed: {detail}",
                self.base()
            ))
        }
    }
}

/// The innermost cause of an error, which names what actually went wrong.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_body_with_details() {
        let body = json!({"error": {"code": "invalid_definition", "message": "the workflow is invalid",
            "details": ["3:5: unknown task kind", {"line": 7, "column": 2, "message": "bad duration"},
                        {"path": "/do/0", "message": "missing"}, {"x": 1}]}});
        let e = ApiError::from_body(400, body.to_string().as_bytes());
        assert_eq!(e.code.as_deref(), Some("invalid_definition"));
        assert_eq!(
            e.render(400),
            "the workflow is invalid\n  3:5: unknown task kind\n  7:2: bad duration\n  /do/0: missing\n  {\"x\":1}"
        );
        let f = Failure::Api {
            status: 400,
            error: e,
        };
        assert_eq!(f.exit_code(), 1);
        assert!(f.render().starts_with("kflow: the workflow is invalid\n"));
    }

    #[test]
    fn error_body_without_details_or_not_json() {
        let e = ApiError::from_body(
            409,
            br#"{"error":{"code":"conflict","message":"version exists"}}"#,
        );
        assert_eq!(e.render(409), "version exists");
        let e = ApiError::from_body(502, b"<html>Bad Gateway</html>");
        assert_eq!(
            e.message,
            "the server answered HTTP 502: <html>Bad Gateway</html>"
        );
        let e = ApiError::from_body(404, b"");
        assert_eq!(e.message, "the server answered HTTP 404");
        let e = ApiError::from_body(500, br#"{"error":{"code":"internal"}}"#);
        assert_eq!(e.message, "HTTP 500");
    }

    #[test]
    fn urls_encode_segments_and_keep_prefixes() {
        let api = Api::new(&ServerArgs {
            server: "http://h:1/kflow/".into(),
            token: None,
            ca_file: None,
        })
        .unwrap();
        assert_eq!(
            api.url(&["instances", "a/b c", "cancel"]).as_str(),
            "http://h:1/kflow/api/v1/instances/a%2Fb%20c/cancel"
        );
        assert_eq!(api.base(), "http://h:1/kflow");
        let api = Api::new(&ServerArgs {
            server: "http://127.0.0.1:8080".into(),
            token: None,
            ca_file: None,
        })
        .unwrap();
        assert_eq!(
            api.url(&["events"]).as_str(),
            "http://127.0.0.1:8080/api/v1/events"
        );
        assert!(matches!(
            Api::new(&ServerArgs {
                server: "localhost".into(),
                token: None,
                ca_file: None,
            }),
            Err(Failure::Usage(_))
        ));
    }
}

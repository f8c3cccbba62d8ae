//! `call: http`: builds the request, sends it, checks the status and shapes the output; the
//! OpenAPI executor and the OAuth2 token requests reuse the same machinery.
//!
//! Request: header values are strings (numbers and booleans are stringified, arrays become
//! repeated headers, nulls are dropped); `query` entries are appended to the URI's own query
//! (arrays repeat the parameter, nulls are dropped, objects are sent as JSON text). The body is
//! sent as JSON with `content-type: application/json` unless a `content-type` header says
//! otherwise: an object body with `application/x-www-form-urlencoded` is form-encoded, a string
//! body with a non-JSON type is sent as is, anything else is sent as JSON text. Every request
//! carries `Idempotency-Key: <instance id>-<effect id>` unless the workflow set that header.
//!
//! Redirects follow the spec's `redirect` property: `false` (the default) does not follow them
//! and any status outside 200–299 is an error, so a 3xx is an error too; `true` follows up to 10
//! redirects and a final status outside 200–399 is an error (a 3xx that cannot be followed, such
//! as a 304 or a 3xx without `Location`, is then a success).
//!
//! Errors: an error status becomes a communication error with that status, whose detail names the
//! method and URI and quotes up to 1 KiB of the body. Transport failures have no HTTP status, so
//! kflow picks one: 504 when the exchange timed out (`ExecConfig::http_timeout`), 503 for every
//! other failure to obtain a response (refused connection, DNS, TLS, redirect loop), 502 when the
//! response body breaks off or exceeds `ExecConfig::max_response_bytes`.
//!
//! Output: `content` is the decoded body (JSON when the content type is JSON and the body parses,
//! otherwise the text; a body that is not UTF-8 is base64-encoded, as the spec's HTTP response
//! says; an empty body is null); `raw` is the body base64-encoded; `response` is
//! `{request: {method, uri, headers}, statusCode, headers, content}` with lowercase response
//! header names and the request's `authorization` header left out (it carries credentials).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::{Map, Value};

use kflow_effects::OutputFormat;
use kflow_effects::WfError;
use kflow_effects::effect::{Auth, HttpRequest};

use crate::{EffectCtx, Inner, auth};

/// How much of an error response's body goes into the error detail.
const ERROR_BODY_EXCERPT: usize = 1024;

/// A request ready to be sent (possibly more than once: Digest authentication resends it).
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
}

/// A response with its whole body read.
#[derive(Debug)]
pub(crate) struct Received {
    pub status: u16,
    pub reason: &'static str,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

pub(crate) async fn perform(
    inner: &Inner,
    ctx: &EffectCtx,
    req: &HttpRequest,
) -> Result<Value, WfError> {
    let out = build(req)?;
    exchange(inner, ctx, out, req.auth.as_ref(), req.redirect, req.output).await
}

/// Sends `out`, checks the status against `redirect` and shapes the output.
pub(crate) async fn exchange(
    inner: &Inner,
    ctx: &EffectCtx,
    out: Outgoing,
    auth: Option<&Auth>,
    redirect: bool,
    output: OutputFormat,
) -> Result<Value, WfError> {
    let (sent, resp) = send(inner, ctx, &out, auth, redirect).await?;
    check_status(&out, &resp, redirect)?;
    Ok(shape(&out, &sent, &resp, output))
}

/// Builds the outgoing request of a `call: http` effect.
fn build(req: &HttpRequest) -> Result<Outgoing, WfError> {
    let method = parse_method(&req.method)?;
    let mut url = parse_url(&req.uri)?;
    append_query(&mut url, &req.query);
    let mut headers = header_map(&req.headers)?;
    let body = match &req.body {
        None | Some(Value::Null) => None,
        Some(b) => Some(encode_body(b, &mut headers)?),
    };
    Ok(Outgoing {
        method,
        url,
        headers,
        body,
    })
}

pub(crate) fn parse_method(m: &str) -> Result<Method, WfError> {
    let m = m.trim();
    if m.is_empty() {
        return Err(WfError::configuration("call http: the method is empty"));
    }
    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
        .map_err(|_| WfError::configuration(format!("call http: '{m}' is not a valid HTTP method")))
}

pub(crate) fn parse_url(uri: &str) -> Result<Url, WfError> {
    let url = Url::parse(uri.trim())
        .map_err(|e| WfError::configuration(format!("'{uri}' is not an absolute URI: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        "service" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        other => Err(WfError::configuration(format!(
            "'{uri}': the scheme '{other}' is not supported (use http, https, or \
             service://NAME/path for a service of the server's config)"
        ))),
    }
}

/// Text of a scalar for headers, query strings, forms and argv (strings as is, null empty,
/// anything else as JSON).
pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Name/value pairs of a query or form map: arrays repeat the name, nulls are dropped.
pub(crate) fn pairs_of(map: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in map {
        match v {
            Value::Null => {}
            Value::Array(items) => {
                out.extend(
                    items
                        .iter()
                        .filter(|i| !i.is_null())
                        .map(|i| (k.clone(), text_of(i))),
                );
            }
            other => out.push((k.clone(), text_of(other))),
        }
    }
    out
}

pub(crate) fn append_query(url: &mut Url, query: &Map<String, Value>) {
    let pairs = pairs_of(query);
    append_pairs(url, &pairs);
}

pub(crate) fn append_pairs(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        return;
    }
    let mut q = url.query_pairs_mut();
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
}

pub(crate) fn header_map(h: &Map<String, Value>) -> Result<HeaderMap, WfError> {
    let mut map = HeaderMap::new();
    for (k, v) in h {
        let values: Vec<String> = match v {
            Value::Null => continue,
            Value::Array(items) => items.iter().filter(|i| !i.is_null()).map(text_of).collect(),
            other => vec![text_of(other)],
        };
        for value in values {
            add_header(&mut map, k, &value)?;
        }
    }
    Ok(map)
}

pub(crate) fn add_header(map: &mut HeaderMap, name: &str, value: &str) -> Result<(), WfError> {
    let n = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| WfError::configuration(format!("'{name}' is not a valid HTTP header name")))?;
    let v = HeaderValue::from_str(value.trim()).map_err(|_| {
        WfError::configuration(format!(
            "the value of HTTP header '{name}' is not valid (control characters?)"
        ))
    })?;
    map.append(n, v);
    Ok(())
}

/// The media type without parameters, lowercase.
pub(crate) fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub(crate) fn is_json_type(content_type: &str) -> bool {
    let e = essence(content_type);
    e == "application/json" || e == "text/json" || e.ends_with("+json")
}

pub(crate) const FORM: &str = "application/x-www-form-urlencoded";

/// Encodes a body per the request's content type, setting `content-type: application/json` when
/// none was given.
pub(crate) fn encode_body(body: &Value, headers: &mut HeaderMap) -> Result<Vec<u8>, WfError> {
    let ct = headers
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let json = |b: &Value| {
        serde_json::to_vec(b)
            .map_err(|e| WfError::runtime(format!("the request body cannot be serialised: {e}")))
    };
    match ct {
        None => {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            json(body)
        }
        Some(ct) if is_json_type(&ct) => json(body),
        Some(ct) => match body {
            Value::Object(m) if essence(&ct) == FORM => Ok(form_encode(&pairs_of(m)).into_bytes()),
            Value::String(s) => Ok(s.clone().into_bytes()),
            other => json(other),
        },
    }
}

/// `application/x-www-form-urlencoded` serialisation of name/value pairs.
pub(crate) fn form_encode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        form_escape(k, &mut out);
        out.push('=');
        form_escape(v, &mut out);
    }
    out
}

/// One name or value, `application/x-www-form-urlencoded`-escaped.
pub(crate) fn form_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    form_escape(s, &mut out);
    out
}

fn form_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for path segments).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The error's message with its sources ("error sending request: ...: Connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    let mut depth = 0;
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    s
}

fn transport_error(out: &Outgoing, e: &reqwest::Error, timeout: std::time::Duration) -> WfError {
    let what = format!("{} {}", out.method, redact_url(&out.url));
    let chain = error_chain(e);
    if chain.contains("egress policy") {
        return crate::egress::denied(format!("{what}: {chain}"));
    }
    if e.is_timeout() {
        WfError::communication(
            504,
            format!(
                "{what}: no complete response within {} s: {}",
                timeout.as_secs_f64(),
                error_chain(e)
            ),
        )
    } else if e.is_redirect() {
        WfError::communication(
            503,
            format!("{what}: the redirect was not followed: {}", error_chain(e)),
        )
    } else {
        WfError::communication(503, format!("{what}: {}", error_chain(e)))
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// Sends the request with authentication and returns the headers actually sent (for the
/// `response` output) and the response with its body.
pub(crate) async fn send(
    inner: &Inner,
    ctx: &EffectCtx,
    out: &Outgoing,
    auth: Option<&Auth>,
    follow: bool,
) -> Result<(HeaderMap, Received), WfError> {
    let mut headers = out.headers.clone();
    if !headers.contains_key("idempotency-key")
        && let Ok(v) = HeaderValue::from_str(&ctx.idempotency_key())
    {
        headers.insert(HeaderName::from_static("idempotency-key"), v);
    }
    if !headers.contains_key("traceparent")
        && let Some(tp) = &ctx.traceparent
        && let Ok(v) = HeaderValue::from_str(tp)
    {
        headers.insert(HeaderName::from_static("traceparent"), v);
    }
    let mut oauth_key = None;
    match auth {
        None | Some(Auth::Digest { .. }) => {}
        Some(a) => {
            let (value, key) = auth::authorization(inner, a).await?;
            oauth_key = key;
            let v = HeaderValue::from_str(&value).map_err(|_| {
                WfError::configuration(
                    "the credentials contain characters not allowed in an HTTP header",
                )
            })?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    let resp = send_once(inner, ctx, out, &headers, follow).await?;
    if resp.status == 401 {
        if let Some(key) = oauth_key {
            // The token was refused: do not hand it out again.
            inner.tokens.invalidate(&key);
        }
        if let Some(Auth::Digest { username, password }) = auth
            && let Some(value) = auth::digest_answer(&resp.headers, username, password, out)?
        {
            let v = HeaderValue::from_str(&value).map_err(|_| {
                WfError::configuration(
                    "the digest credentials contain characters not allowed in an HTTP header",
                )
            })?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
            let resp = send_once(inner, ctx, out, &headers, follow).await?;
            return Ok((headers, resp));
        }
    }
    Ok((headers, resp))
}

async fn send_once(
    inner: &Inner,
    ctx: &EffectCtx,
    out: &Outgoing,
    headers: &HeaderMap,
    follow: bool,
) -> Result<Received, WfError> {
    if out.url.scheme() == "service" {
        return send_to_service(inner, ctx, out, headers, follow).await;
    }
    send_direct(inner, ctx, out, headers, follow)
        .await
        .map_err(|(e, _)| e)
}

/// A `service://NAME/path` request: to one of the service's endpoints, through its circuit,
/// bulkhead and retry budget; a failed connection goes on to another endpoint at once (no
/// retry of the task spent). A 5xx or a transport error counts as a failure of the service.
async fn send_to_service(
    inner: &Inner,
    ctx: &EffectCtx,
    out: &Outgoing,
    headers: &HeaderMap,
    follow: bool,
) -> Result<Received, WfError> {
    let name = out.url.host_str().unwrap_or_default();
    let mut call = inner
        .cfg
        .services
        .begin(name, &ctx.instance_id, &ctx.task, inner.cfg.http_timeout)
        .await?;
    loop {
        let attempt = Outgoing {
            url: call.next_url(&out.url)?,
            ..out.clone()
        };
        match send_direct(inner, ctx, &attempt, headers, follow).await {
            Ok(r) => {
                call.finish(r.status >= 500);
                return Ok(r);
            }
            Err((_, true)) => call.connect_failed(),
            Err((e, false)) => {
                call.finish(true);
                return Err(e);
            }
        }
    }
}

/// One exchange with `out.url`; the error says whether the connection itself failed (nothing
/// was sent).
async fn send_direct(
    inner: &Inner,
    ctx: &EffectCtx,
    out: &Outgoing,
    headers: &HeaderMap,
    follow: bool,
) -> Result<Received, (WfError, bool)> {
    let clients = inner.clients(&ctx.namespace);
    clients.policy.check_url(&out.url).map_err(|m| {
        (
            crate::egress::denied(format!("{} {}: {m}", out.method, redact_url(&out.url))),
            false,
        )
    })?;
    let client = clients.client(follow).map_err(|e| (e, false))?;
    let mut rb = client
        .request(out.method.clone(), out.url.clone())
        .headers(headers.clone());
    if let Some(b) = &out.body {
        rb = rb.body(b.clone());
    }
    let timeout = inner.cfg.http_timeout;
    let mut resp = rb
        .send()
        .await
        .map_err(|e| (transport_error(out, &e, timeout), e.is_connect()))?;
    let status = resp.status();
    let max = inner.cfg.max_response_bytes;
    let too_big = || {
        WfError::communication(
            502,
            format!(
                "{} {}: the response body exceeds the limit of {max} bytes",
                out.method,
                redact_url(&out.url)
            ),
        )
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err((too_big(), false));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err((too_big(), false));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err((transport_error(out, &e, timeout), false)),
            Err(e) => {
                return Err((
                    WfError::communication(
                        502,
                        format!(
                            "{} {}: reading the response body failed: {}",
                            out.method,
                            redact_url(&out.url),
                            error_chain(&e)
                        ),
                    ),
                    false,
                ));
            }
        }
    }
    Ok(Received {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        headers: resp.headers().clone(),
        body,
    })
}

/// 2xx is a success; so is 3xx when redirects are followed (`redirect: true`).
pub(crate) fn check_status(out: &Outgoing, resp: &Received, redirect: bool) -> Result<(), WfError> {
    let ok = (200..300).contains(&resp.status) || (redirect && (300..400).contains(&resp.status));
    if ok {
        return Ok(());
    }
    let mut detail = format!(
        "{} {} returned {}",
        out.method,
        redact_url(&out.url),
        resp.status
    );
    if !resp.reason.is_empty() {
        detail.push(' ');
        detail.push_str(resp.reason);
    }
    if (300..400).contains(&resp.status)
        && let Some(loc) = resp.headers.get(reqwest::header::LOCATION)
    {
        detail.push_str(&format!(
            " (redirect to {}; set 'redirect: true' to follow)",
            String::from_utf8_lossy(loc.as_bytes())
        ));
    }
    let excerpt = excerpt(&resp.body, ERROR_BODY_EXCERPT);
    if !excerpt.trim().is_empty() {
        detail.push_str(": ");
        detail.push_str(excerpt.trim());
    }
    Err(WfError::communication(i64::from(resp.status), detail))
}

/// Up to `max` bytes of `body` as text, cut at a character boundary, with "…" when cut.
pub(crate) fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= max {
        return text.into_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The body as the workflow sees it (`content` output).
pub(crate) fn decode_content(headers: &HeaderMap, body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    if content_type(headers).is_some_and(|ct| is_json_type(&ct))
        && let Ok(v) = serde_json::from_slice::<Value>(body)
    {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(B64.encode(body)),
    }
}

fn headers_json(h: &HeaderMap, skip_credentials: bool) -> Value {
    let mut m = Map::new();
    for name in h.keys() {
        if skip_credentials
            && (name == reqwest::header::AUTHORIZATION
                || name == reqwest::header::PROXY_AUTHORIZATION)
        {
            continue;
        }
        let joined = h
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        m.insert(name.as_str().to_ascii_lowercase(), Value::String(joined));
    }
    Value::Object(m)
}

pub(crate) fn shape(
    out: &Outgoing,
    sent: &HeaderMap,
    resp: &Received,
    output: OutputFormat,
) -> Value {
    match output {
        OutputFormat::Raw => Value::String(B64.encode(&resp.body)),
        OutputFormat::Content => decode_content(&resp.headers, &resp.body),
        OutputFormat::Response => {
            let mut request = Map::new();
            request.insert(
                "method".into(),
                Value::String(out.method.as_str().to_string()),
            );
            request.insert("uri".into(), Value::String(redact_url(&out.url)));
            request.insert("headers".into(), headers_json(sent, true));
            let mut m = Map::new();
            m.insert("request".into(), Value::Object(request));
            m.insert("statusCode".into(), Value::from(resp.status));
            m.insert("headers".into(), headers_json(&resp.headers, false));
            m.insert("content".into(), decode_content(&resp.headers, &resp.body));
            Value::Object(m)
        }
    }
}

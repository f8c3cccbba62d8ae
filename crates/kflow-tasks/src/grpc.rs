//! `call grpc`: a unary method of a service described by a `.proto` file, with messages built at
//! run time. The `.proto` is fetched like an OpenAPI document (`file://` or http(s), through the
//! egress policy), compiled with protox (imports of `google/protobuf/*` are known; other imports
//! are refused), and kept by URL. The arguments become the request message through the proto3
//! JSON mapping (prost-reflect); the response message comes back as JSON with the `.proto`'s own
//! field names and every field present.
//!
//! The call is HTTP/2 (`application/grpc`, no compression): cleartext with prior knowledge, or
//! TLS on port 443. A non-zero `grpc-status` becomes a communication error with the HTTP status
//! of the usual mapping (NOT_FOUND → 404, UNAVAILABLE → 503, ...) and the title `gRPC
//! <CODE>`, so a `try` can catch one code by its title.

use std::collections::HashMap;
use std::sync::Mutex;

use http_body_util::BodyExt;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use reqwest::Url;
use serde_json::Value;

use kflow_effects::WfError;
use kflow_effects::effect::GrpcRequest;
use kflow_effects::errors::COMMUNICATION;

use crate::{EffectCtx, Inner};

/// The most compiled `.proto` files kept; the cache is cleared when it fills up.
const MAX_PROTOS: usize = 64;

/// Compiled `.proto` files by URL.
#[derive(Default)]
pub(crate) struct ProtoCache {
    pools: Mutex<HashMap<String, DescriptorPool>>,
}

pub(crate) async fn perform(
    inner: &Inner,
    ctx: &EffectCtx,
    req: &GrpcRequest,
) -> Result<Value, WfError> {
    let url = Url::parse(req.proto.trim()).map_err(|e| {
        WfError::configuration(format!(
            "call grpc: the proto '{}' is not an absolute URI: {e}",
            req.proto
        ))
    })?;
    let pool = pool(inner, ctx, &url, req).await?;
    let method = method(&pool, &url, req)?;
    let message = DynamicMessage::deserialize(method.input(), Value::Object(req.arguments.clone()))
        .map_err(|e| {
            WfError::validation(format!(
                "call grpc: the arguments are not a {}: {e}",
                method.input().full_name()
            ))
        })?;
    let body = frame(&message.encode_to_vec());
    let reply = send(inner, ctx, req, body).await?;
    let out = DynamicMessage::decode(method.output(), reply.as_slice()).map_err(|e| {
        WfError::communication(
            502,
            format!(
                "call grpc: {}/{}: the reply is not a {}: {e}",
                req.service,
                req.method,
                method.output().full_name()
            ),
        )
    })?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    out.serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| WfError::runtime(format!("call grpc: the reply as JSON: {e}")))
}

async fn pool(
    inner: &Inner,
    ctx: &EffectCtx,
    url: &Url,
    req: &GrpcRequest,
) -> Result<DescriptorPool, WfError> {
    let key = url.to_string();
    if let Some(p) = inner
        .protos
        .pools
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return Ok(p.clone());
    }
    let bytes = crate::openapi::fetch(
        inner,
        ctx,
        url,
        req.proto_auth.as_ref(),
        "call grpc",
        "the proto",
        "text/plain, */*;q=0.5",
    )
    .await?;
    let source = String::from_utf8(bytes).map_err(|_| {
        WfError::configuration(format!("call grpc: the proto at {url} is not UTF-8 text"))
    })?;
    let pool = compile(&source, url)?;
    let mut pools = inner.protos.pools.lock().unwrap_or_else(|p| p.into_inner());
    if pools.len() >= MAX_PROTOS {
        pools.clear();
    }
    pools.insert(key, pool.clone());
    Ok(pool)
}

/// One `.proto` file from memory, its name the last segment of its URL.
struct Source {
    name: String,
    text: String,
}

impl protox::file::FileResolver for Source {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == self.name {
            protox::file::File::from_source(name, &self.text)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// The deepest nesting of `{` (or `[`, `(`, `<`) a `.proto` may have: the parser recurses on
/// each, and a hostile file must not exhaust the stack (a panic can be caught, an overflow
/// cannot).
const MAX_NESTING: usize = 64;

/// Compiles one `.proto` (and the well-known types it imports).
pub(crate) fn compile(source: &str, url: &Url) -> Result<DescriptorPool, WfError> {
    let mut depth = 0usize;
    for b in source.bytes() {
        match b {
            b'{' | b'[' | b'(' | b'<' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(WfError::configuration(format!(
                        "call grpc: the proto at {url} nests deeper than {MAX_NESTING} levels"
                    )));
                }
            }
            b'}' | b']' | b')' | b'>' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|n| n.ends_with(".proto"))
        .unwrap_or("service.proto")
        .to_string();
    let mut chain = protox::file::ChainFileResolver::new();
    chain.add(Source {
        name: name.clone(),
        text: source.to_string(),
    });
    chain.add(protox::file::GoogleFileResolver::new());
    // protox is young: a parser panic must not take the executor down.
    let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.include_imports(true);
        compiler
            .open_file(&name)
            .map(|c| c.descriptor_pool())
            .map_err(|e| e.to_string())
    }));
    match compiled {
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(e)) => Err(WfError::configuration(format!(
            "call grpc: the proto at {url} does not compile: {e}"
        ))),
        Err(_) => Err(WfError::configuration(format!(
            "call grpc: the proto at {url} could not be compiled"
        ))),
    }
}

fn method(
    pool: &DescriptorPool,
    url: &Url,
    req: &GrpcRequest,
) -> Result<MethodDescriptor, WfError> {
    let Some(service) = pool.get_service_by_name(&req.service) else {
        let known: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
        return Err(WfError::configuration(format!(
            "call grpc: the proto at {url} has no service {} (it has: {})",
            req.service,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    let Some(m) = service.methods().find(|m| m.name() == req.method) else {
        let known: Vec<String> = service.methods().map(|m| m.name().to_string()).collect();
        return Err(WfError::configuration(format!(
            "call grpc: the service {} has no method {} (it has: {})",
            req.service,
            req.method,
            known.join(", ")
        )));
    };
    if m.is_client_streaming() || m.is_server_streaming() {
        return Err(WfError::configuration(format!(
            "call grpc: {}/{} streams; only unary methods are supported",
            req.service, req.method
        )));
    }
    Ok(m)
}

/// A gRPC message frame: not compressed, its length, the bytes.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Sends one request frame; answers the reply message's bytes, or the call's error.
async fn send(
    inner: &Inner,
    ctx: &EffectCtx,
    req: &GrpcRequest,
    body: Vec<u8>,
) -> Result<Vec<u8>, WfError> {
    let tls = req.port == 443;
    let host = if req.host.contains(':') {
        format!("[{}]", req.host.trim_matches(['[', ']']))
    } else {
        req.host.clone()
    };
    let url = format!(
        "{}://{host}:{}/{}/{}",
        if tls { "https" } else { "http" },
        req.port,
        req.service,
        req.method
    );
    let place = format!(
        "call grpc: {}/{} at {host}:{}",
        req.service, req.method, req.port
    );
    let clients = inner.clients(&ctx.namespace);
    let client = clients.grpc(tls)?;
    let mut r = client
        .post(&url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "grpc-timeout",
            format!("{}m", inner.cfg.http_timeout.as_millis().min(99_999_999)),
        )
        .body(body);
    if let Some(a) = &req.auth {
        let (value, _) = crate::auth::authorization(inner, a).await?;
        r = r.header("authorization", value);
    }
    if let Some(tp) = &ctx.traceparent {
        r = r.header("traceparent", tp);
    }
    let resp = r.send().await.map_err(|e| {
        WfError::communication(503, format!("{place}: {}", crate::http::error_chain(&e)))
    })?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    if status != 200 {
        return Err(WfError::communication(
            i64::from(status),
            format!("{place}: the server answered HTTP {status}, not a gRPC reply"),
        ));
    }
    // The reply's frames, then the trailers (or headers only, for an error without a reply).
    let max = inner.cfg.max_response_bytes;
    let mut data = Vec::new();
    let mut trailers = reqwest::header::HeaderMap::new();
    let mut body = reqwest::Body::from(resp);
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| {
            WfError::communication(503, format!("{place}: {}", crate::http::error_chain(&e)))
        })?;
        match f.into_data() {
            Ok(d) => {
                if data.len() + d.len() > max + 5 {
                    return Err(WfError::communication(
                        502,
                        format!("{place}: the reply is larger than {max} bytes"),
                    ));
                }
                data.extend_from_slice(&d);
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers.extend(t);
                }
            }
        }
    }
    let get = |k: &str| {
        trailers
            .get(k)
            .or_else(|| headers.get(k))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let code = match get("grpc-status") {
        Some(c) => c.trim().parse::<u32>().unwrap_or(2),
        None => {
            return Err(WfError::communication(
                502,
                format!("{place}: the reply has no grpc-status"),
            ));
        }
    };
    if code != 0 {
        let detail = get("grpc-message")
            .map(|m| percent_decode(&m))
            .unwrap_or_default();
        let (name, http) = status_of(code);
        return Err(WfError::standard(
            COMMUNICATION,
            http,
            &format!("gRPC {name}"),
            format!(
                "{place}: {name} ({code}){}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ),
        ));
    }
    match data.as_slice() {
        [0, a, b, c, d, rest @ ..]
            if u32::from_be_bytes([*a, *b, *c, *d]) as usize == rest.len() =>
        {
            Ok(rest.to_vec())
        }
        [1, ..] => Err(WfError::communication(
            502,
            format!("{place}: the reply is compressed, which kflow did not ask for"),
        )),
        _ => Err(WfError::communication(
            502,
            format!(
                "{place}: the reply is not one gRPC message ({} bytes)",
                data.len()
            ),
        )),
    }
}

/// A gRPC status code's name and its usual HTTP status.
fn status_of(code: u32) -> (&'static str, i64) {
    match code {
        1 => ("CANCELLED", 499),
        3 => ("INVALID_ARGUMENT", 400),
        4 => ("DEADLINE_EXCEEDED", 504),
        5 => ("NOT_FOUND", 404),
        6 => ("ALREADY_EXISTS", 409),
        7 => ("PERMISSION_DENIED", 403),
        8 => ("RESOURCE_EXHAUSTED", 429),
        9 => ("FAILED_PRECONDITION", 400),
        10 => ("ABORTED", 409),
        11 => ("OUT_OF_RANGE", 400),
        12 => ("UNIMPLEMENTED", 501),
        13 => ("INTERNAL", 500),
        14 => ("UNAVAILABLE", 503),
        15 => ("DATA_LOSS", 500),
        16 => ("UNAUTHENTICATED", 401),
        _ => ("UNKNOWN", 500),
    }
}

/// `grpc-message` is percent-encoded (UTF-8).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
service Orders {
  rpc Get (GetRequest) returns (Order);
  rpc Watch (GetRequest) returns (stream Order);
}
message GetRequest { string order_id = 1; }
message Order { string order_id = 1; int32 count = 2; google.protobuf.Timestamp at = 3; }
"#;

    fn req(service: &str, method: &str) -> GrpcRequest {
        GrpcRequest {
            proto: "file:///x/shop.proto".into(),
            proto_auth: None,
            service: service.into(),
            host: "h".into(),
            port: 1,
            method: method.into(),
            arguments: Default::default(),
            auth: None,
        }
    }

    #[test]
    fn protos_compile_and_methods_are_found_or_named() {
        let url = Url::parse("file:///x/shop.proto").unwrap();
        let pool = compile(PROTO, &url).unwrap();
        let m = method(&pool, &url, &req("shop.Orders", "Get")).unwrap();
        assert_eq!(m.input().full_name(), "shop.GetRequest");
        let err = |r: &GrpcRequest| {
            method(&pool, &url, r)
                .unwrap_err()
                .detail
                .unwrap_or_default()
        };
        assert_eq!(
            err(&req("shop.Order", "Get")),
            "call grpc: the proto at file:///x/shop.proto has no service shop.Order (it has: shop.Orders)"
        );
        assert_eq!(
            err(&req("shop.Orders", "Put")),
            "call grpc: the service shop.Orders has no method Put (it has: Get, Watch)"
        );
        assert_eq!(
            err(&req("shop.Orders", "Watch")),
            "call grpc: shop.Orders/Watch streams; only unary methods are supported"
        );
        let bad = compile("syntax = \"proto3\";\nmessage {", &url).unwrap_err();
        assert!(
            bad.detail
                .as_deref()
                .is_some_and(|d| d
                    .starts_with("call grpc: the proto at file:///x/shop.proto does not compile")),
            "{bad:?}"
        );
        let deep = format!("syntax = \"proto3\";\n{}", "message M {".repeat(10_000));
        assert_eq!(
            compile(&deep, &url).unwrap_err().detail.as_deref(),
            Some("call grpc: the proto at file:///x/shop.proto nests deeper than 64 levels")
        );
        let import = compile("syntax = \"proto3\";\nimport \"other.proto\";", &url).unwrap_err();
        assert!(
            import
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("other.proto")),
            "{import:?}"
        );
    }

    #[test]
    fn frames_and_statuses() {
        assert_eq!(frame(b"ab"), [0, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(status_of(14), ("UNAVAILABLE", 503));
        assert_eq!(status_of(99), ("UNKNOWN", 500));
        assert_eq!(
            percent_decode("no%20such%20order%3A%207"),
            "no such order: 7"
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}

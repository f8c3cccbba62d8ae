//! `call` tasks: http, openapi, and functions declared in `use.functions`.
//!
//! Every expression (endpoint, headers, query, body, authentication) is evaluated here; the host
//! receives a fully resolved request and only performs it.

use base64_lite::encode as b64;
use serde_json::{Map, Value, json};

use kflow_dsl::model::{AuthPolicy, AuthScheme, Call, Endpoint, NamedTask, UriSpec};

use super::{Cx, KindResult, Scope};
use crate::effect::{
    AsyncApiRequest, Auth, Effect, FunctionRequest, GrpcRequest, HttpRequest, OpenApiRequest,
};
use crate::error::WfError;

pub(super) async fn call(
    cx: &Cx,
    named: &NamedTask,
    c: &Call,
    input: &Value,
    scope: &Scope<'_>,
) -> KindResult {
    match c {
        Call::Http(h) => {
            let method = match cx.eval(&h.method, input, scope)? {
                Value::String(s) => s.to_ascii_uppercase(),
                other => {
                    return Err(WfError::validation(format!(
                        "call http: 'method' must be a string, got {other}"
                    )));
                }
            };
            let uri = resolve_uri(cx, &h.endpoint, input, scope)?;
            let auth = resolve_auth(cx, h.endpoint.authentication.as_deref(), input, scope)?;
            let headers = object_of(cx, h.headers.as_ref(), input, scope, "headers")?;
            let query = object_of(cx, h.query.as_ref(), input, scope, "query")?;
            let body = match &h.body {
                None => None,
                Some(t) => Some(cx.eval(t, input, scope)?),
            };
            let authorization = auth.as_ref().map(authorization_descriptor);
            let req = HttpRequest {
                method,
                uri,
                headers,
                query,
                body,
                output: h.output,
                redirect: h.redirect,
                auth,
            };
            let out = cx.sh.effect(&named.reference, Effect::Http(req)).await?;
            Ok((out, None, authorization))
        }
        Call::OpenApi(o) => {
            let document = resolve_uri(cx, &o.document, input, scope)?;
            let document_auth =
                resolve_auth(cx, o.document.authentication.as_deref(), input, scope)?;
            let auth = resolve_auth(cx, o.authentication.as_deref(), input, scope)?;
            let parameters = object_of(cx, o.parameters.as_ref(), input, scope, "parameters")?;
            let authorization = auth.as_ref().map(authorization_descriptor);
            let req = OpenApiRequest {
                document,
                document_auth,
                operation_id: o.operation_id.clone(),
                parameters,
                auth,
                output: o.output,
                redirect: o.redirect,
            };
            let out = cx.sh.effect(&named.reference, Effect::OpenApi(req)).await?;
            Ok((out, None, authorization))
        }
        Call::Grpc(g) => {
            let proto = resolve_uri(cx, &g.proto, input, scope)?;
            let proto_auth = resolve_auth(cx, g.proto.authentication.as_deref(), input, scope)?;
            let auth = resolve_auth(cx, g.authentication.as_deref(), input, scope)?;
            let arguments = object_of(cx, g.arguments.as_ref(), input, scope, "arguments")?;
            let authorization = auth.as_ref().map(authorization_descriptor);
            let req = GrpcRequest {
                proto,
                proto_auth,
                service: g.service.clone(),
                host: g.host.clone(),
                port: g.port,
                method: g.method.clone(),
                arguments,
                auth,
            };
            let out = cx.sh.effect(&named.reference, Effect::Grpc(req)).await?;
            Ok((out, None, authorization))
        }
        Call::AsyncApi(a) => {
            let document = resolve_uri(cx, &a.document, input, scope)?;
            let document_auth =
                resolve_auth(cx, a.document.authentication.as_deref(), input, scope)?;
            let auth = resolve_auth(cx, a.authentication.as_deref(), input, scope)?;
            let variables = object_of(cx, a.variables.as_ref(), input, scope, "server.variables")?;
            let headers = object_of(cx, a.headers.as_ref(), input, scope, "message.headers")?;
            let payload = match &a.payload {
                None => Value::Null,
                Some(t) => cx.eval(t, input, scope)?,
            };
            let req = AsyncApiRequest {
                document,
                document_auth,
                operation: a.operation.clone(),
                channel: a.channel.clone(),
                server: a.server.clone(),
                variables,
                protocol: a.protocol.clone(),
                payload,
                headers,
                auth,
            };
            let out = cx
                .sh
                .effect(&named.reference, Effect::AsyncApi(Box::new(req)))
                .await?;
            Ok((out, None, None))
        }
        Call::Worker(w) => {
            let arguments = match &w.arguments {
                None => input.clone(),
                Some(t) => cx.eval(t, input, scope)?,
            };
            let req = FunctionRequest {
                queue: w.queue.clone(),
                function: w.function.clone(),
                arguments,
            };
            let out = cx
                .sh
                .effect(&named.reference, Effect::Function(req))
                .await?;
            Ok((out, None, None))
        }
        Call::Function { name, task, with } => {
            let fn_input = match with {
                None => input.clone(),
                Some(t) => cx.eval(t, input, scope)?,
            };
            // The function is a task of its own; run it as a one-task list under this reference.
            let list: kflow_dsl::model::TaskList = vec![kflow_dsl::model::NamedTask {
                name: name.clone(),
                reference: named.reference.clone(),
                task: (**task).clone(),
            }]
            .into();
            let (out, _) = super::run_task(cx.clone(), list, 0, fn_input).await?;
            Ok((out, None, None))
        }
        Call::Unsupported { kind } => Err(WfError::configuration(format!(
            "call {kind} is not supported yet by kflow (supported: http, openapi, grpc, functions from use.functions)"
        ))),
    }
}

fn object_of(
    cx: &Cx,
    t: Option<&kflow_dsl::template::Template>,
    input: &Value,
    scope: &Scope<'_>,
    what: &str,
) -> Result<Map<String, Value>, WfError> {
    match t {
        None => Ok(Map::new()),
        Some(t) => match cx.eval(t, input, scope)? {
            Value::Object(m) => Ok(m),
            Value::Null => Ok(Map::new()),
            other => Err(WfError::validation(format!(
                "call: '{what}' must be an object, got {other}"
            ))),
        },
    }
}

/// Resolves an endpoint URI: a literal URI template is filled from the task input (see
/// [`fill_uri_template`]); a `${ }` endpoint is evaluated.
pub(super) fn resolve_uri(
    cx: &Cx,
    e: &Endpoint,
    input: &Value,
    scope: &Scope<'_>,
) -> Result<String, WfError> {
    match &e.uri {
        UriSpec::Expr(x) => match cx.eval_expr(x, input, scope)? {
            Value::String(s) => Ok(s),
            other => Err(WfError::expression(format!(
                "endpoint expression must produce a string, got {other}"
            ))),
        },
        UriSpec::Template(t) => fill_uri_template(t, input),
    }
}

/// dsl-reference.md, "URI Template": only RFC 6570 Simple String Expansion (`{name}`) is
/// supported. The name is a top-level property of the task input, taken verbatim (`{pet.id}`
/// reads the property `"pet.id"`); "If no value is found for the identifier, an empty string
/// will be used"; the value "must be of type string, number, boolean, or null", anything else
/// raises an expression error with status 400. As in RFC 6570 §3.2.2, the value is
/// percent-encoded except for unreserved characters, and `null` (undefined) expands to nothing.
/// A `{` without a closing `}` is kept as written.
fn fill_uri_template(t: &str, input: &Value) -> Result<String, WfError> {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        let text = match input.get(name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            Some(other) => {
                let kind = if other.is_array() {
                    "an array"
                } else {
                    "an object"
                };
                return Err(WfError::expression(format!(
                    "the endpoint '{t}' substitutes '{{{name}}}', but the task input's '{name}' is {kind}; \
                     a URI template variable must be a string, number, boolean or null"
                )));
            }
        };
        out.push_str(&percent_encode(&text));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn percent_encode(s: &str) -> String {
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

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Evaluates an authentication policy, reading `use: <secret>` policies from `$secrets`.
pub(super) fn resolve_auth(
    cx: &Cx,
    p: Option<&AuthPolicy>,
    input: &Value,
    scope: &Scope<'_>,
) -> Result<Option<Auth>, WfError> {
    let Some(p) = p else { return Ok(None) };
    let ev = |t: &kflow_dsl::template::Template| cx.eval(t, input, scope);
    Ok(Some(match p {
        AuthPolicy::Basic { username, password } => Auth::Basic {
            username: text(ev(username)?),
            password: text(ev(password)?),
        },
        AuthPolicy::Digest { username, password } => Auth::Digest {
            username: text(ev(username)?),
            password: text(ev(password)?),
        },
        AuthPolicy::Bearer { token } => Auth::Bearer {
            token: text(ev(token)?),
        },
        AuthPolicy::OAuth2 { oidc, properties } => Auth::OAuth2 {
            oidc: *oidc,
            properties: ev(properties)?,
        },
        AuthPolicy::Secret { scheme, secret } => {
            // dsl.md, Secret: a secret the workflow may not access, or that does not exist,
            // raises an authorization error with status 403.
            super::check_secret(&cx.env, secret).map_err(super::secret_error)?;
            let s = cx.env.secrets.get(secret).unwrap_or(&Value::Null);
            let field = |k: &str| s.get(k).cloned().map(text).unwrap_or_default();
            match scheme {
                AuthScheme::Basic => Auth::Basic {
                    username: field("username"),
                    password: field("password"),
                },
                AuthScheme::Digest => Auth::Digest {
                    username: field("username"),
                    password: field("password"),
                },
                AuthScheme::Bearer => Auth::Bearer {
                    token: field("token"),
                },
                AuthScheme::OAuth2 => Auth::OAuth2 {
                    oidc: false,
                    properties: s.clone(),
                },
                AuthScheme::Oidc => Auth::OAuth2 {
                    oidc: true,
                    properties: s.clone(),
                },
            }
        }
    }))
}

/// `$authorization`: the scheme and parameter the request is sent with (when known before the
/// call; OAuth2 tokens are obtained by the host).
fn authorization_descriptor(a: &Auth) -> Value {
    match a {
        Auth::Basic { username, password } => {
            json!({ "scheme": "Basic", "parameter": b64(format!("{username}:{password}").as_bytes()) })
        }
        Auth::Bearer { token } => json!({ "scheme": "Bearer", "parameter": token }),
        Auth::Digest { username, .. } => json!({ "scheme": "Digest", "parameter": username }),
        Auth::OAuth2 { .. } => json!({ "scheme": "Bearer", "parameter": null }),
    }
}

/// Minimal standard base64 (the core keeps its dependency list to kflow-dsl and serde).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    #[test]
    fn encodes_rfc4648_vectors() {
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg==");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
    }
}

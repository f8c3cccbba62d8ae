//! The `call` task: http and openapi calls lowered fully, calls of `use.functions`, and the
//! protocols kflow does not run yet (grpc, asyncapi, a2a, mcp, catalog functions), which are
//! shape-checked so that documents using them still validate. Also endpoints, external
//! resources and authentication policies, which other tasks share.

use std::sync::Arc;

use crate::expr;
use crate::model::{
    AsyncApiCall, AuthPolicy, AuthScheme, Call, Endpoint, GrpcCall, HttpCall, OpenApiCall,
    OutputFormat, UriSpec, WorkerCall,
};
use crate::node::{Node, NodeKind};
use crate::template::Template;

use super::Cx;
use super::common::{self, Obj, key_str};

const HTTP_WITH: [&str; 7] = [
    "method", "endpoint", "headers", "body", "query", "output", "redirect",
];
const OPENAPI_WITH: [&str; 6] = [
    "document",
    "operationId",
    "parameters",
    "authentication",
    "output",
    "redirect",
];

/// `call:` with its `with:` (`task` is the task mapping).
pub(super) fn call(cx: &mut Cx, task: &Obj, value: &Node) -> Option<Call> {
    let target = common::string(cx, value, &task.field("call"))?;
    let with = task.get("with");
    match target {
        "http" | "openapi" | "grpc" | "worker" | "asyncapi" | "a2a" | "mcp" => {
            let with = task.req(cx, "with")?;
            let obj = Obj::new(cx, with, format!("call {target} 'with'"), "with")?;
            match target {
                "http" => http(cx, &obj).map(Call::Http),
                "openapi" => openapi(cx, &obj).map(Call::OpenApi),
                "grpc" => grpc(cx, &obj).map(Call::Grpc),
                "worker" => worker(cx, &obj).map(Call::Worker),
                "asyncapi" => asyncapi(cx, &obj),
                _ => {
                    unsupported(cx, &obj, target);
                    Some(Call::Unsupported {
                        kind: target.to_string(),
                    })
                }
            }
        }
        name => {
            let with = with.map(|n| common::mapping_template(cx, n, &task.field("with")));
            match cx.function(name, value) {
                Some(Some(function)) => Some(Call::Function {
                    name: name.to_string(),
                    task: function,
                    with: with.flatten(),
                }),
                Some(None) => None,
                None if name.contains("://") => Some(Call::Unsupported {
                    kind: format!("function {name}"),
                }),
                None if name.contains('@') => catalog_function(cx, value, name),
                None => {
                    cx.at(
                        value,
                        format!(
                            "function '{name}' is not defined in use.functions{}",
                            cx.known("functions")
                        ),
                    );
                    None
                }
            }
        }
    }
}

/// `name:version@catalog`: the catalog must be declared, unless it is the runtime's `default`.
fn catalog_function(cx: &mut Cx, node: &Node, name: &str) -> Option<Call> {
    let catalog = name.rsplit('@').next().unwrap_or("");
    if catalog != "default" && !cx.catalogs.iter().any(|c| c == catalog) {
        cx.at(
            node,
            format!(
                "catalog '{catalog}' of function '{name}' is not defined in use.catalogs{}",
                cx.known("catalogs")
            ),
        );
        return None;
    }
    Some(Call::Unsupported {
        kind: format!("catalog function {name}"),
    })
}

fn http(cx: &mut Cx, obj: &Obj) -> Option<HttpCall> {
    obj.check(cx, &HTTP_WITH);
    let method = obj
        .req(cx, "method")
        .and_then(|n| common::string_template(cx, n, &obj.field("method")));
    let endpoint = obj
        .req(cx, "endpoint")
        .and_then(|n| endpoint(cx, n, &obj.child("endpoint")));
    let headers = obj
        .get("headers")
        .map(|n| string_map_or_expr(cx, n, &obj.child("headers")));
    let body = obj.get("body").map(|n| common::template(cx, n));
    let query = obj
        .get("query")
        .map(|n| string_map_or_expr(cx, n, &obj.child("query")));
    let output = obj
        .get("output")
        .map(|n| output_format(cx, n, &obj.field("output")));
    let redirect = obj
        .get("redirect")
        .map(|n| common::boolean(cx, n, &obj.field("redirect")));
    Some(HttpCall {
        method: method?,
        endpoint: endpoint?,
        headers: headers.flatten(),
        body: body.flatten(),
        query: query.flatten(),
        output: output.flatten().unwrap_or_default(),
        redirect: redirect.flatten().unwrap_or(false),
    })
}

/// `headers` and `query`: a mapping of strings (each may be `${ }`), or one `${ }` expression.
fn string_map_or_expr(cx: &mut Cx, node: &Node, path: &str) -> Option<Template> {
    match &node.kind {
        NodeKind::Str(s) if common::is_dollar_expr(s) => common::template(cx, node),
        NodeKind::Map(entries) => {
            let mut ok = true;
            for (k, v) in entries {
                if v.as_str().is_none() {
                    common::type_error(cx, v, "a string", &format!("'{path}.{}'", key_str(k)));
                    ok = false;
                }
            }
            if ok { common::template(cx, node) } else { None }
        }
        _ => {
            common::type_error(
                cx,
                node,
                "a mapping of strings or a ${ } expression",
                &format!("'{path}'"),
            );
            None
        }
    }
}

fn output_format(cx: &mut Cx, node: &Node, what: &str) -> Option<OutputFormat> {
    match common::one_of(cx, node, what, &["raw", "content", "response"])? {
        "raw" => Some(OutputFormat::Raw),
        "response" => Some(OutputFormat::Response),
        _ => Some(OutputFormat::Content),
    }
}

fn openapi(cx: &mut Cx, obj: &Obj) -> Option<OpenApiCall> {
    obj.check(cx, &OPENAPI_WITH);
    let document = obj
        .req(cx, "document")
        .and_then(|n| external_resource(cx, n, &obj.child("document")));
    let operation_id = obj
        .req(cx, "operationId")
        .and_then(|n| common::string(cx, n, &obj.field("operationId")));
    let parameters = obj
        .get("parameters")
        .map(|n| common::mapping_template(cx, n, &obj.field("parameters")));
    let authentication = obj
        .get("authentication")
        .map(|n| authentication(cx, n, &obj.child("authentication")));
    let output = obj
        .get("output")
        .map(|n| output_format(cx, n, &obj.field("output")));
    let redirect = obj
        .get("redirect")
        .map(|n| common::boolean(cx, n, &obj.field("redirect")));
    Some(OpenApiCall {
        document: document?,
        operation_id: operation_id?.to_string(),
        parameters: parameters.flatten(),
        authentication: authentication.flatten(),
        output: output.flatten().unwrap_or_default(),
        redirect: redirect.flatten().unwrap_or(false),
    })
}

/// `call: worker` (kflow's): `queue` and `function` are names, `arguments` any value.
fn worker(cx: &mut Cx, obj: &Obj) -> Option<WorkerCall> {
    obj.check(cx, &["queue", "function", "arguments"]);
    let name = |cx: &mut Cx, key: &str| -> Option<String> {
        let n = obj.req(cx, key)?;
        let s = common::string(cx, n, &obj.field(key))?;
        let ok = !s.is_empty()
            && s.len() <= 200
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/')
            });
        if !ok {
            cx.at(
                n,
                format!(
                    "{} must be a name (letters, digits, '.', '-', '_', ':', '/'), got {s:?}",
                    obj.field(key)
                ),
            );
            return None;
        }
        Some(s.to_string())
    };
    let queue = name(cx, "queue");
    let function = name(cx, "function");
    if let (Some("default"), Some(n)) = (queue.as_deref(), obj.get("queue")) {
        cx.at(
            n,
            format!(
                "{}: 'default' is the server's own worker, which serves no worker functions; name a queue your workers serve",
                obj.field("queue")
            ),
        );
        return None;
    }
    let arguments = obj.get("arguments").map(|n| common::template(cx, n));
    Some(WorkerCall {
        queue: queue?,
        function: function?,
        arguments: arguments.flatten(),
    })
}

fn grpc(cx: &mut Cx, obj: &Obj) -> Option<GrpcCall> {
    obj.check(cx, &["proto", "service", "method", "arguments"]);
    let proto = obj
        .req(cx, "proto")
        .and_then(|n| external_resource(cx, n, &obj.child("proto")));
    let method = obj
        .req(cx, "method")
        .and_then(|n| common::string(cx, n, &obj.field("method")));
    let arguments = obj
        .get("arguments")
        .map(|n| common::mapping_template(cx, n, &obj.field("arguments")));
    let service = obj.req(cx, "service").and_then(|n| {
        let path = obj.child("service");
        let s = Obj::new(cx, n, format!("'{path}'"), &path)?;
        s.check(cx, &["name", "host", "port", "authentication"]);
        let name = s
            .req(cx, "name")
            .and_then(|n| common::string(cx, n, &s.field("name")));
        let host_node = s.req(cx, "host");
        let host = host_node.and_then(|n| common::string(cx, n, &s.field("host")));
        let port = match s.get("port") {
            None => Some(80),
            Some(n) => common::integer(cx, n, &s.field("port")).and_then(|p| {
                let port = u16::try_from(p).ok().filter(|p| *p > 0);
                if port.is_none() {
                    cx.at(
                        n,
                        format!("{} must be a port (1 to 65535), got {p}", s.field("port")),
                    );
                }
                port
            }),
        };
        let auth = s
            .get("authentication")
            .map(|n| authentication(cx, n, &s.child("authentication")));
        if let (Some(h), Some(hn)) = (host, host_node)
            && (h.is_empty() || h.contains(['/', ' ', '@']))
        {
            cx.at(
                hn,
                format!(
                    "{} must be a host name or address, got {h:?}",
                    s.field("host")
                ),
            );
            return None;
        }
        Some((name?.to_string(), host?.to_string(), port?, auth.flatten()))
    });
    let (service, host, port, authentication) = service?;
    Some(GrpcCall {
        proto: proto?,
        service,
        host,
        port,
        authentication,
        method: method?.to_string(),
        arguments: arguments.flatten(),
    })
}

/// grpc, asyncapi, a2a, mcp: the top-level shape of `with`, its expressions and its
/// authentication references are checked; kflow refuses to run them. Returns the external
/// resource and the authentication it read (for `asyncapi`'s publish, which kflow runs).
fn unsupported(cx: &mut Cx, obj: &Obj, kind: &str) -> (Option<Endpoint>, Option<Arc<AuthPolicy>>) {
    let (allowed, required): (&[&str], &[&str]) = match kind {
        "grpc" => (
            &["proto", "service", "method", "arguments"],
            &["proto", "service", "method"],
        ),
        "asyncapi" => (
            &[
                "document",
                "channel",
                "operation",
                "server",
                "protocol",
                "message",
                "subscription",
                "authentication",
            ],
            &["document"],
        ),
        "a2a" => (
            &["agentCard", "server", "method", "parameters"],
            &["method"],
        ),
        _ => (
            &[
                "protocolVersion",
                "method",
                "parameters",
                "timeout",
                "transport",
                "client",
            ],
            &["method", "transport"],
        ),
    };
    obj.check(cx, allowed);
    for key in required {
        obj.req(cx, key);
    }
    if kind == "asyncapi" {
        for pair in [["operation", "channel"], ["message", "subscription"]] {
            let n = pair.iter().filter(|k| obj.has(k)).count();
            if n != 1 {
                cx.at(
                    obj.node,
                    format!(
                        "{} needs exactly one of '{}' and '{}'",
                        obj.label, pair[0], pair[1]
                    ),
                );
            }
        }
    }
    let mut resource = None;
    for key in ["document", "proto", "agentCard"] {
        if let Some(n) = obj.get(key) {
            resource = external_resource(cx, n, &obj.child(key));
        }
    }
    let auth = obj
        .get("authentication")
        .and_then(|n| authentication(cx, n, &obj.child("authentication")));
    common::template(cx, obj.node);
    (resource, auth)
}

/// `call asyncapi`: shape-checked as the spec says; a publish (`message`) is run, a
/// subscription is refused when run.
fn asyncapi(cx: &mut Cx, obj: &Obj) -> Option<Call> {
    let (document, authentication) = unsupported(cx, obj, "asyncapi");
    if !obj.has("message") {
        return Some(Call::Unsupported {
            kind: "asyncapi (a subscription)".into(),
        });
    }
    let text = |cx: &mut Cx, key: &str| -> Option<String> {
        obj.get(key)
            .and_then(|n| common::string(cx, n, &obj.field(key)))
            .map(str::to_string)
    };
    let operation = text(cx, "operation");
    let channel = text(cx, "channel");
    let protocol = text(cx, "protocol");
    let mut server = None;
    let mut variables = None;
    if let Some(n) = obj.get("server") {
        let path = obj.child("server");
        let s = Obj::new(cx, n, format!("'{path}'"), &path)?;
        s.check(cx, &["name", "variables"]);
        server = s
            .req(cx, "name")
            .and_then(|n| common::string(cx, n, &s.field("name")))
            .map(str::to_string);
        variables = s.get("variables").and_then(|n| common::template(cx, n));
    }
    let m = obj.get("message")?;
    let path = obj.child("message");
    let m = Obj::new(cx, m, format!("'{path}'"), &path)?;
    m.check(cx, &["payload", "headers"]);
    let payload = m.get("payload").and_then(|n| common::template(cx, n));
    let headers = m.get("headers").and_then(|n| common::template(cx, n));
    Some(Call::AsyncApi(AsyncApiCall {
        document: document?,
        operation,
        channel,
        server,
        variables,
        protocol,
        payload,
        headers,
        authentication,
    }))
}

/// An external resource: `{ name?, endpoint }`; its endpoint is what kflow keeps.
pub(super) fn external_resource(cx: &mut Cx, node: &Node, path: &str) -> Option<Endpoint> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &["name", "endpoint"]);
    if let Some(n) = obj.get("name") {
        common::string(cx, n, &obj.field("name"));
    }
    let e = obj.req(cx, "endpoint")?;
    endpoint(cx, e, &obj.child("endpoint"))
}

/// An endpoint: a URI (template), a `${ }` expression, or `{ uri, authentication }`.
pub(super) fn endpoint(cx: &mut Cx, node: &Node, path: &str) -> Option<Endpoint> {
    match &node.kind {
        NodeKind::Str(_) => uri(cx, node, &format!("'{path}'")).map(|uri| Endpoint {
            uri,
            authentication: None,
        }),
        NodeKind::Map(_) => {
            let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
            obj.check(cx, &["uri", "authentication"]);
            let uri = obj
                .req(cx, "uri")
                .and_then(|n| uri(cx, n, &obj.field("uri")));
            let authentication = obj
                .get("authentication")
                .map(|n| authentication(cx, n, &obj.child("authentication")));
            Some(Endpoint {
                uri: uri?,
                authentication: authentication.flatten(),
            })
        }
        _ => {
            common::type_error(
                cx,
                node,
                "a URI or an endpoint mapping ({uri, authentication})",
                &format!("'{path}'"),
            );
            None
        }
    }
}

fn uri(cx: &mut Cx, node: &Node, what: &str) -> Option<UriSpec> {
    let s = common::string(cx, node, what)?;
    match expr::strip_dollar_braces(s) {
        Some(src) => common::compile(cx, node, src, what).map(UriSpec::Expr),
        None => {
            common::check_uri(cx, node, s, what)?;
            Some(UriSpec::Template(s.to_string()))
        }
    }
}

/// An authentication of an endpoint or call: `{ use: <name in use.authentications> }` or an
/// inline policy.
pub(super) fn authentication(cx: &mut Cx, node: &Node, path: &str) -> Option<Arc<AuthPolicy>> {
    if let Some(obj) = Obj::new(cx, node, format!("'{path}'"), path) {
        if let Some(n) = obj.get("use") {
            obj.check(cx, &["use"]);
            let name = common::string(cx, n, &obj.field("use"))?;
            return match cx.auths.get(name) {
                Some(policy) => policy.clone(),
                None => {
                    cx.at(
                        n,
                        format!(
                            "authentication '{name}' is not defined in use.authentications{}",
                            cx.known("authentications")
                        ),
                    );
                    None
                }
            };
        }
        return auth_policy(cx, node, path, false).map(Arc::new);
    }
    None
}

const SCHEMES: [&str; 5] = ["basic", "bearer", "digest", "oauth2", "oidc"];

/// An authentication policy: exactly one of basic, bearer, digest, oauth2, oidc, each with its
/// properties or `{ use: <secret> }`.
pub(super) fn auth_policy(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    top_level: bool,
) -> Option<AuthPolicy> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    if top_level && obj.has("use") {
        if let Some((k, _)) = obj.entries.iter().find(|(k, _)| key_str(k) == "use") {
            cx.at(k, "a policy in use.authentications cannot refer to another one with 'use'; define it inline");
        }
        return None;
    }
    obj.check(cx, &SCHEMES);
    let present: Vec<&str> = SCHEMES.into_iter().filter(|s| obj.has(s)).collect();
    let scheme = match present.as_slice() {
        [s] => *s,
        [] => {
            cx.at(
                node,
                format!(
                    "{} needs an authentication scheme: one of {}",
                    obj.label,
                    SCHEMES.join(", ")
                ),
            );
            return None;
        }
        many => {
            cx.at(
                node,
                format!(
                    "{} must have exactly one authentication scheme (found {})",
                    obj.label,
                    many.join(", ")
                ),
            );
            return None;
        }
    };
    let config = obj.sub(cx, scheme, obj.get(scheme)?)?;
    let auth_scheme = match scheme {
        "basic" => AuthScheme::Basic,
        "bearer" => AuthScheme::Bearer,
        "digest" => AuthScheme::Digest,
        "oauth2" => AuthScheme::OAuth2,
        _ => AuthScheme::Oidc,
    };
    if let Some(n) = config.get("use") {
        config.check(cx, &["use"]);
        let secret = common::string(cx, n, &config.field("use"))?;
        if !cx.secrets.iter().any(|s| s == secret) {
            cx.at(
                n,
                format!(
                    "secret '{secret}' is not declared in use.secrets{}",
                    cx.known("secrets")
                ),
            );
            return None;
        }
        return Some(AuthPolicy::Secret {
            scheme: auth_scheme,
            secret: secret.to_string(),
        });
    }
    let text = |cx: &mut Cx, key: &str| {
        config
            .req(cx, key)
            .and_then(|n| common::string_template(cx, n, &config.field(key)))
    };
    match auth_scheme {
        AuthScheme::Basic | AuthScheme::Digest => {
            config.check(cx, &["username", "password"]);
            let (username, password) = (text(cx, "username"), text(cx, "password"));
            let (username, password) = (username?, password?);
            Some(if auth_scheme == AuthScheme::Basic {
                AuthPolicy::Basic { username, password }
            } else {
                AuthPolicy::Digest { username, password }
            })
        }
        AuthScheme::Bearer => {
            config.check(cx, &["token"]);
            text(cx, "token").map(|token| AuthPolicy::Bearer { token })
        }
        AuthScheme::OAuth2 | AuthScheme::Oidc => {
            let oidc = auth_scheme == AuthScheme::Oidc;
            oauth2_properties(cx, &config, oidc)?;
            common::template(cx, config.node)
                .map(|properties| AuthPolicy::OAuth2 { oidc, properties })
        }
    }
}

/// Checks the properties of an oauth2 or oidc policy.
fn oauth2_properties(cx: &mut Cx, obj: &Obj, oidc: bool) -> Option<()> {
    const GRANTS: [&str; 5] = [
        "authorization_code",
        "client_credentials",
        "password",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ];
    let mut allowed = vec![
        "authority",
        "grant",
        "client",
        "request",
        "issuers",
        "scopes",
        "audiences",
        "username",
        "password",
        "subject",
        "actor",
    ];
    if !oidc {
        allowed.push("endpoints");
    }
    obj.check(cx, &allowed);
    let mut ok = true;
    ok &= obj
        .req(cx, "authority")
        .and_then(|n| common::uri_or_expr(cx, n, &obj.field("authority")))
        .is_some();
    ok &= obj
        .req(cx, "grant")
        .and_then(|n| common::one_of(cx, n, &obj.field("grant"), &GRANTS))
        .is_some();
    if let Some(client) = obj.get("client").and_then(|n| obj.sub(cx, "client", n)) {
        client.check(cx, &["id", "secret", "assertion", "authentication"]);
        for key in ["id", "secret", "assertion"] {
            if let Some(n) = client.get(key) {
                ok &= common::string(cx, n, &client.field(key)).is_some();
            }
        }
        if let Some(n) = client.get("authentication") {
            let methods = [
                "client_secret_basic",
                "client_secret_post",
                "client_secret_jwt",
                "private_key_jwt",
                "none",
            ];
            ok &= common::one_of(cx, n, &client.field("authentication"), &methods).is_some();
        }
    }
    if let Some(request) = obj.get("request").and_then(|n| obj.sub(cx, "request", n)) {
        request.check(cx, &["encoding"]);
        if let Some(n) = request.get("encoding") {
            let encodings = ["application/x-www-form-urlencoded", "application/json"];
            ok &= common::one_of(cx, n, &request.field("encoding"), &encodings).is_some();
        }
    }
    for key in ["issuers", "scopes", "audiences"] {
        if let Some(n) = obj.get(key) {
            ok &= common::string_list(cx, n, &obj.field(key)).is_some();
        }
    }
    for key in ["username", "password"] {
        if let Some(n) = obj.get(key) {
            ok &= common::string(cx, n, &obj.field(key)).is_some();
        }
    }
    for key in ["subject", "actor"] {
        if let Some(token) = obj.get(key).and_then(|n| obj.sub(cx, key, n)) {
            token.check(cx, &["token", "type"]);
            for k in ["token", "type"] {
                ok &= token
                    .req(cx, k)
                    .and_then(|n| common::string(cx, n, &token.field(k)))
                    .is_some();
            }
        }
    }
    if let Some(endpoints) = obj
        .get("endpoints")
        .and_then(|n| obj.sub(cx, "endpoints", n))
    {
        endpoints.check(cx, &["token", "revocation", "introspection"]);
        for (k, v) in endpoints.entries {
            ok &= common::string(cx, v, &endpoints.field(key_str(k))).is_some();
        }
    }
    ok.then_some(())
}

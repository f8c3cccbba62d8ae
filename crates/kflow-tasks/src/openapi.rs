//! `call: openapi`: fetches the OpenAPI document, finds the operation and performs it as an HTTP
//! call (same authentication, redirects, idempotency key and output formats as `call: http`).
//!
//! Documents (Swagger 2.0 or OpenAPI 3.x, JSON or YAML) are fetched once per URI, with the
//! document's own authentication, and cached for the executor's life; `file:` URIs are read from
//! disk. The operation is looked up by `operationId` across every path and method.
//!
//! The base URL: Swagger 2.0 uses `schemes` (the document's own scheme when listed, else the
//! first), `host` (default: the document's host and port) and `basePath`; OpenAPI 3.x uses
//! `servers[0].url` with its variables' defaults, resolved against the document URI when
//! relative (default: the document's origin).
//!
//! Parameters (path-level and operation-level, `$ref`s to `#/parameters/...` or
//! `#/components/parameters/...` followed) take their value from `parameters` by name; a missing
//! required one is a validation error. Path values are percent-encoded (arrays comma-joined);
//! query arrays follow the document: OpenAPI 3 `explode` (default true: repeated parameters,
//! false: comma-joined) and Swagger 2 `collectionFormat` (`multi` repeats, `csv` — the default —,
//! `ssv`, `tsv` and `pipes` join); header values are strings; cookie parameters are joined into
//! one `Cookie` header. The body: a Swagger 2 `in: body` parameter, or an OpenAPI 3
//! `requestBody` (named by `x-codegen-request-body-name`, else `body`), takes
//! `parameters[<name>]` when present, otherwise every parameter the operation does not declare,
//! as an object. Swagger 2 `formData` parameters are sent form-encoded. The content type is the
//! JSON one the operation accepts when there is one, else the first declared. `Accept:
//! application/json` is sent when the operation produces JSON.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use kflow_effects::WfError;
use kflow_effects::effect::{Auth, OpenApiRequest};

use crate::http::{self, Outgoing};
use crate::{EffectCtx, Inner};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// The most documents kept; the cache is cleared when it fills up.
const MAX_DOCS: usize = 128;
/// How many `$ref` hops are followed before giving up (cycles).
const MAX_REF_HOPS: usize = 16;

/// Parsed OpenAPI documents by URI.
#[derive(Default)]
pub(crate) struct DocCache {
    docs: Mutex<HashMap<String, Arc<Value>>>,
}

pub(crate) async fn perform(
    inner: &Inner,
    ctx: &EffectCtx,
    req: &OpenApiRequest,
) -> Result<Value, WfError> {
    let doc_url = Url::parse(req.document.trim()).map_err(|e| {
        WfError::configuration(format!(
            "call openapi: the document '{}' is not an absolute URI: {e}",
            req.document
        ))
    })?;
    let doc = document(inner, ctx, &doc_url, req.document_auth.as_ref()).await?;
    let out = build(&doc, &doc_url, &req.operation_id, &req.parameters)?;
    http::exchange(inner, ctx, out, req.auth.as_ref(), req.redirect, req.output).await
}

async fn document(
    inner: &Inner,
    ctx: &EffectCtx,
    url: &Url,
    auth: Option<&Auth>,
) -> Result<Arc<Value>, WfError> {
    let key = url.to_string();
    if let Some(d) = inner
        .docs
        .docs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return Ok(d.clone());
    }
    let bytes = fetch(
        inner,
        ctx,
        url,
        auth,
        "call openapi",
        "the document",
        "application/json, application/yaml;q=0.9, */*;q=0.5",
    )
    .await?;
    let doc = Arc::new(parse_document(&bytes, url)?);
    let mut docs = inner.docs.docs.lock().unwrap_or_else(|p| p.into_inner());
    if docs.len() >= MAX_DOCS {
        docs.clear();
    }
    docs.insert(key, doc.clone());
    Ok(doc)
}

/// The bytes of an external resource (`file://` or http(s), through the egress policy and the
/// resource's authentication), at most `max_response_bytes`. Errors start with `call` (`call
/// openapi`) and name the resource as `what` (`the document`).
pub(crate) async fn fetch(
    inner: &Inner,
    ctx: &EffectCtx,
    url: &Url,
    auth: Option<&Auth>,
    call: &str,
    what: &str,
    accept: &'static str,
) -> Result<Vec<u8>, WfError> {
    let max = inner.cfg.max_response_bytes;
    if url.scheme() == "file" {
        let path = url.to_file_path().map_err(|_| {
            WfError::configuration(format!("{call}: '{url}' is not a usable file URI"))
        })?;
        let unreadable = |e: std::io::Error| {
            WfError::configuration(format!(
                "{call}: cannot read {what} {}: {e}",
                path.display()
            ))
        };
        let meta = tokio::fs::metadata(&path).await.map_err(unreadable)?;
        if meta.len() > max as u64 {
            return Err(WfError::configuration(format!(
                "{call}: {what} {} is larger than {max} bytes",
                path.display()
            )));
        }
        return tokio::fs::read(&path).await.map_err(unreadable);
    }
    let url = http::parse_url(url.as_str())?;
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::ACCEPT, HeaderValue::from_static(accept));
    let out = Outgoing {
        method: reqwest::Method::GET,
        url,
        headers,
        body: None,
    };
    let (_, resp) = http::send(inner, ctx, &out, auth, true).await?;
    http::check_status(&out, &resp, true).map_err(|e| WfError {
        detail: e.detail.map(|d| format!("fetching {what}: {d}")),
        ..e
    })?;
    Ok(resp.body)
}

fn parse_document(bytes: &[u8], url: &Url) -> Result<Value, WfError> {
    let doc = match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => v,
        Err(json_err) => parse_yaml(bytes).map_err(|yaml_err| {
            WfError::configuration(format!(
                "call openapi: the document at {url} is neither JSON ({json_err}) nor YAML ({yaml_err})"
            ))
        })?,
    };
    if !doc.is_object() || doc.get("paths").is_none_or(|p| !p.is_object()) {
        return Err(WfError::configuration(format!(
            "call openapi: the document at {url} has no 'paths' object"
        )));
    }
    Ok(doc)
}

/// YAML through kflow-dsl's node parser (bounded, positions in errors).
pub(crate) fn parse_yaml(bytes: &[u8]) -> Result<Value, String> {
    // The parser is shared with the DSL loader; guard against it panicking so that a faulty
    // document can never take the executor down.
    let parsed = std::panic::catch_unwind(|| {
        kflow_dsl::node::parse(bytes, &kflow_dsl::node::Limits::default()).map(|n| n.to_json())
    });
    match parsed {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(d)) => Err(d.to_string()),
        Err(_) => Err("the YAML parser failed on this document".into()),
    }
}

/// Follows a local `$ref` (`#/a/b`) until a non-reference object.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> Result<&'a Value, WfError> {
    for _ in 0..MAX_REF_HOPS {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(WfError::configuration(format!(
                "call openapi: external reference '{r}' is not supported"
            )));
        };
        v = doc.pointer(pointer).ok_or_else(|| {
            WfError::configuration(format!("call openapi: the reference '{r}' points nowhere"))
        })?;
    }
    Err(WfError::configuration(
        "call openapi: too many nested $ref (a cycle?)",
    ))
}

struct Operation<'a> {
    method: &'static str,
    path: &'a str,
    item: &'a Value,
    op: &'a Value,
}

fn find_operation<'a>(doc: &'a Value, id: &str) -> Result<Operation<'a>, WfError> {
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten();
    let mut known = Vec::new();
    for (path, item) in paths {
        let item = resolve(doc, item)?;
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            match op.get("operationId").and_then(Value::as_str) {
                Some(oid) if oid == id => {
                    return Ok(Operation {
                        method,
                        path,
                        item,
                        op,
                    });
                }
                Some(oid) => known.push(oid.to_string()),
                None => {}
            }
        }
    }
    let total = known.len();
    known.truncate(10);
    let more = if total > known.len() {
        format!(" and {} more", total - known.len())
    } else {
        String::new()
    };
    Err(WfError::configuration(if known.is_empty() {
        format!("call openapi: the document has no operation '{id}' (it declares no operationIds)")
    } else {
        format!(
            "call openapi: the document has no operation '{id}'; known operations: {}{more}",
            known.join(", ")
        )
    }))
}

fn base_url(doc: &Value, doc_url: &Url) -> Result<String, WfError> {
    let origin = || {
        let mut s = format!(
            "{}://{}",
            doc_url.scheme(),
            doc_url.host_str().unwrap_or("")
        );
        if let Some(p) = doc_url.port() {
            s.push_str(&format!(":{p}"));
        }
        s
    };
    if doc.get("swagger").is_some() {
        let schemes: Vec<&str> = doc
            .get("schemes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let scheme = if schemes.is_empty() || schemes.contains(&doc_url.scheme()) {
            doc_url.scheme().to_string()
        } else {
            schemes[0].to_string()
        };
        let host = match doc.get("host").and_then(Value::as_str) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => {
                let mut h = doc_url.host_str().unwrap_or("").to_string();
                if let Some(p) = doc_url.port() {
                    h.push_str(&format!(":{p}"));
                }
                h
            }
        };
        let base_path = doc.get("basePath").and_then(Value::as_str).unwrap_or("");
        return Ok(format!(
            "{scheme}://{host}{}",
            base_path.trim_end_matches('/')
        ));
    }
    let server = doc
        .get("servers")
        .and_then(Value::as_array)
        .and_then(|s| s.first());
    let Some(server) = server else {
        return Ok(origin());
    };
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            let default = var.get("default").map(http::text_of).unwrap_or_default();
            url = url.replace(&format!("{{{name}}}"), &default);
        }
    }
    let resolved = doc_url.join(&url).map_err(|e| {
        WfError::configuration(format!(
            "call openapi: the server URL '{url}' is not valid: {e}"
        ))
    })?;
    Ok(resolved.as_str().trim_end_matches('/').to_string())
}

#[derive(Debug)]
struct Param<'a> {
    name: String,
    location: String,
    required: bool,
    def: &'a Value,
}

fn collect_params<'a>(doc: &'a Value, op: &Operation<'a>) -> Result<Vec<Param<'a>>, WfError> {
    let mut out: Vec<Param<'a>> = Vec::new();
    let lists = [op.item.get("parameters"), op.op.get("parameters")];
    for list in lists.into_iter().flatten() {
        let Some(list) = list.as_array() else {
            continue;
        };
        for p in list {
            let def = resolve(doc, p)?;
            let Some(name) = def.get("name").and_then(Value::as_str) else {
                continue;
            };
            let location = def
                .get("in")
                .and_then(Value::as_str)
                .unwrap_or("query")
                .to_string();
            let required = location == "path"
                || def
                    .get("required")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            // Operation-level parameters override path-level ones with the same name and place.
            out.retain(|q| !(q.name == name && q.location == location));
            out.push(Param {
                name: name.to_string(),
                location,
                required,
                def,
            });
        }
    }
    Ok(out)
}

fn is_json_list(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array)
        .is_some_and(|a| a.iter().filter_map(Value::as_str).any(http::is_json_type))
}

/// The content type to send: a JSON one when accepted, else the first.
fn pick_type<'t>(types: &[&'t str]) -> Option<&'t str> {
    types
        .iter()
        .find(|t| http::is_json_type(t))
        .or(types.first())
        .copied()
}

fn query_values(param: &Param<'_>, v: &Value, swagger: bool) -> Vec<(String, String)> {
    let name = param.name.clone();
    match v {
        Value::Null => Vec::new(),
        Value::Array(items) => {
            let texts: Vec<String> = items
                .iter()
                .filter(|i| !i.is_null())
                .map(http::text_of)
                .collect();
            let sep = if swagger {
                match param
                    .def
                    .get("collectionFormat")
                    .and_then(Value::as_str)
                    .unwrap_or("csv")
                {
                    "multi" => None,
                    "ssv" => Some(" "),
                    "tsv" => Some("\t"),
                    "pipes" => Some("|"),
                    _ => Some(","),
                }
            } else {
                let style = param
                    .def
                    .get("style")
                    .and_then(Value::as_str)
                    .unwrap_or("form");
                let explode = param
                    .def
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(style == "form");
                match (explode, style) {
                    (true, _) => None,
                    (false, "spaceDelimited") => Some(" "),
                    (false, "pipeDelimited") => Some("|"),
                    (false, _) => Some(","),
                }
            };
            match sep {
                None => texts.into_iter().map(|t| (name.clone(), t)).collect(),
                Some(s) => vec![(name, texts.join(s))],
            }
        }
        Value::Object(m)
            if !swagger
                && param
                    .def
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(true) =>
        {
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), http::text_of(x)))
                .collect()
        }
        other => vec![(name, http::text_of(other))],
    }
}

fn simple_text(v: &Value) -> String {
    match v {
        Value::Array(items) => items
            .iter()
            .map(http::text_of)
            .collect::<Vec<_>>()
            .join(","),
        other => http::text_of(other),
    }
}

fn build(
    doc: &Value,
    doc_url: &Url,
    operation_id: &str,
    params: &Map<String, Value>,
) -> Result<Outgoing, WfError> {
    let op = find_operation(doc, operation_id)?;
    let swagger = doc.get("swagger").is_some();
    let declared = collect_params(doc, &op)?;
    let missing = |p: &Param<'_>| {
        WfError::validation(format!(
            "call openapi: operation '{operation_id}' requires the {} parameter '{}', which 'parameters' does not have",
            p.location, p.name
        ))
    };

    let mut path = op.path.to_string();
    let mut query = Vec::new();
    let mut headers = HeaderMap::new();
    let mut cookies = Vec::new();
    let mut form = Vec::new();
    let mut body_param: Option<&Param<'_>> = None;
    for p in &declared {
        if p.location == "body" {
            body_param = Some(p);
            continue;
        }
        let value = params.get(&p.name).filter(|v| !v.is_null());
        let Some(value) = value else {
            if p.required {
                return Err(missing(p));
            }
            continue;
        };
        match p.location.as_str() {
            "path" => {
                path = path.replace(
                    &format!("{{{}}}", p.name),
                    &http::percent_encode(&simple_text(value)),
                )
            }
            "query" => query.extend(query_values(p, value, swagger)),
            "header" => http::add_header(&mut headers, &p.name, &simple_text(value))?,
            "cookie" => cookies.push(format!("{}={}", p.name, simple_text(value))),
            "formData" => match value {
                Value::Array(items) => {
                    form.extend(items.iter().map(|i| (p.name.clone(), http::text_of(i))))
                }
                other => form.push((p.name.clone(), http::text_of(other))),
            },
            other => {
                return Err(WfError::configuration(format!(
                    "call openapi: parameter '{}' is in '{other}', which kflow does not know",
                    p.name
                )));
            }
        }
    }
    if !cookies.is_empty() {
        http::add_header(&mut headers, "cookie", &cookies.join("; "))?;
    }

    // The body and its content type.
    let declared_names: HashSet<&str> = declared.iter().map(|p| p.name.as_str()).collect();
    let leftovers = |skip: &str| -> Map<String, Value> {
        params
            .iter()
            .filter(|(k, _)| !declared_names.contains(k.as_str()) && k.as_str() != skip)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut body: Option<Value> = None;
    let mut content_type: Option<String> = None;
    if swagger {
        let consumes = op.op.get("consumes").or(doc.get("consumes"));
        let types: Vec<&str> = consumes
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(p) = body_param {
            body = match params.get(&p.name).filter(|v| !v.is_null()) {
                Some(v) => Some(v.clone()),
                None => {
                    let rest = leftovers(&p.name);
                    if rest.is_empty() {
                        None
                    } else {
                        Some(Value::Object(rest))
                    }
                }
            };
            if body.is_none() && p.required {
                return Err(missing(p));
            }
            content_type = Some(pick_type(&types).unwrap_or("application/json").to_string());
        } else if !form.is_empty() {
            body = Some(Value::String(http::form_encode(&form)));
            content_type = Some(http::FORM.to_string());
        }
    } else if let Some(rb) = op.op.get("requestBody") {
        let rb = resolve(doc, rb)?;
        let name = rb
            .get("x-codegen-request-body-name")
            .or(op.op.get("x-codegen-request-body-name"));
        let name = name.and_then(Value::as_str).unwrap_or("body");
        body = match params.get(name).filter(|v| !v.is_null()) {
            Some(v) => Some(v.clone()),
            None => {
                let rest = leftovers(name);
                if rest.is_empty() {
                    None
                } else {
                    Some(Value::Object(rest))
                }
            }
        };
        if body.is_none() && rb.get("required").and_then(Value::as_bool).unwrap_or(false) {
            return Err(WfError::validation(format!(
                "call openapi: operation '{operation_id}' requires a request body: pass it as parameter '{name}' or as parameters the operation does not declare"
            )));
        }
        let types: Vec<&str> = rb
            .get("content")
            .and_then(Value::as_object)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        content_type = Some(pick_type(&types).unwrap_or("application/json").to_string());
    }

    let base = base_url(doc, doc_url)?;
    let full = format!(
        "{base}{}{path}",
        if path.starts_with('/') { "" } else { "/" }
    );
    let mut url = http::parse_url(&full)?;
    http::append_pairs(&mut url, &query);

    let produces_json = if swagger {
        is_json_list(op.op.get("produces").or(doc.get("produces")))
    } else {
        op.op
            .get("responses")
            .and_then(Value::as_object)
            .is_some_and(|rs| {
                rs.values().any(|r| {
                    resolve(doc, r)
                        .ok()
                        .and_then(|r| r.get("content"))
                        .and_then(Value::as_object)
                        .is_some_and(|c| c.keys().any(|k| http::is_json_type(k)))
                })
            })
    };
    if produces_json && !headers.contains_key(reqwest::header::ACCEPT) {
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
    }

    let body_bytes = match body {
        None => None,
        Some(b) => {
            if let Some(ct) = &content_type
                && !headers.contains_key(reqwest::header::CONTENT_TYPE)
            {
                http::add_header(&mut headers, "content-type", ct)?;
            }
            Some(http::encode_body(&b, &mut headers)?)
        }
    };
    let method = http::parse_method(op.method)?;
    Ok(Outgoing {
        method,
        url,
        headers,
        body: body_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn swagger_path_query_and_body() {
        let doc = json!({
            "swagger": "2.0", "host": "api.example.com:8443", "basePath": "/v2", "schemes": ["https"],
            "paths": {
                "/pet/{petId}": {
                    "parameters": [{"name": "petId", "in": "path", "required": true, "type": "integer"}],
                    "get": {"operationId": "getPet", "produces": ["application/json"],
                            "parameters": [{"$ref": "#/parameters/verbose"}]},
                    "post": {"operationId": "updatePet", "consumes": ["application/xml", "application/json"],
                             "parameters": [{"name": "pet", "in": "body", "required": true}]}
                },
                "/pet/findByStatus": {"get": {"operationId": "find", "parameters": [
                    {"name": "status", "in": "query", "type": "array", "collectionFormat": "multi"},
                    {"name": "tags", "in": "query", "type": "array"}]}}
            },
            "parameters": {"verbose": {"name": "verbose", "in": "query", "type": "boolean"}}
        });
        let u = Url::parse("http://docs.example.com/swagger.json").unwrap();
        let o = build(
            &doc,
            &u,
            "getPet",
            &params(json!({"petId": 7, "verbose": true})),
        )
        .unwrap();
        assert_eq!(
            o.url.as_str(),
            "https://api.example.com:8443/v2/pet/7?verbose=true"
        );
        assert_eq!(o.headers["accept"], "application/json");
        let o = build(
            &doc,
            &u,
            "find",
            &params(json!({"status": ["a", "b"], "tags": ["x", "y"]})),
        )
        .unwrap();
        assert_eq!(o.url.query(), Some("status=a&status=b&tags=x%2Cy"));
        let o = build(
            &doc,
            &u,
            "updatePet",
            &params(json!({"petId": 1, "name": "rex"})),
        )
        .unwrap();
        assert_eq!(o.method, reqwest::Method::POST);
        assert_eq!(o.body.as_deref(), Some(br#"{"name":"rex"}"#.as_slice()));
        assert_eq!(o.headers["content-type"], "application/json");
        let e = build(&doc, &u, "updatePet", &params(json!({"name": "rex"}))).unwrap_err();
        assert!(e.detail.unwrap().contains("'petId'"));
        let e = build(&doc, &u, "nope", &params(json!({}))).unwrap_err();
        assert!(e.detail.unwrap().contains("getPet"));
    }

    #[test]
    fn openapi3_servers_and_request_body() {
        let doc = json!({
            "openapi": "3.0.3",
            "servers": [{"url": "/api/{version}", "variables": {"version": {"default": "v1"}}}],
            "paths": {"/items/{id}": {"put": {
                "operationId": "put",
                "parameters": [{"$ref": "#/components/parameters/id"},
                               {"name": "X-Trace", "in": "header"},
                               {"name": "session", "in": "cookie"}],
                "requestBody": {"$ref": "#/components/requestBodies/item"}
            }}},
            "components": {
                "parameters": {"id": {"name": "id", "in": "path", "required": true}},
                "requestBodies": {"item": {"required": true, "content": {"application/json": {}}}}
            }
        });
        let u = Url::parse("http://localhost:9000/docs/openapi.yaml").unwrap();
        let o = build(
            &doc,
            &u,
            "put",
            &params(json!({"id": "a b", "X-Trace": 5, "session": "s1", "body": {"k": 1}})),
        )
        .unwrap();
        assert_eq!(o.url.as_str(), "http://localhost:9000/api/v1/items/a%20b");
        assert_eq!(o.headers["x-trace"], "5");
        assert_eq!(o.headers["cookie"], "session=s1");
        assert_eq!(o.body.as_deref(), Some(br#"{"k":1}"#.as_slice()));
        let e = build(&doc, &u, "put", &params(json!({"id": "x"}))).unwrap_err();
        assert_eq!(e.status, 400);
    }
}

//! `call asyncapi`: where a message goes, read from an AsyncAPI document (3.0: an operation
//! whose action is `send`, its channel's address; 2.x: a channel with a `publish` operation,
//! its name) and one of its servers (the one named, else the first of the wanted protocol,
//! else the first the channel lists, else the first). The server's `{variables}` come from the
//! call's `server.variables`, else their defaults. The publishing itself is the server's (it
//! holds the broker connections): this module only resolves.

use reqwest::Url;
use serde_json::{Map, Value};

use kflow_effects::WfError;
use kflow_effects::effect::AsyncApiRequest;

use crate::{EffectCtx, Inner};

/// Where one message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The server's name in the document.
    pub server: String,
    /// `nats`, `amqp` or `mqtt` (the protocols kflow publishes to).
    pub protocol: String,
    pub host: String,
    pub port: Option<u16>,
    /// The server's pathname (AMQP: the virtual host).
    pub pathname: String,
    /// The channel's address: a NATS subject, an AMQP routing key, an MQTT topic.
    pub address: String,
}

fn bad(detail: impl Into<String>) -> WfError {
    WfError::configuration(format!("call asyncapi: {}", detail.into()))
}

pub(crate) async fn resolve(
    inner: &Inner,
    ctx: &EffectCtx,
    req: &AsyncApiRequest,
) -> Result<Target, WfError> {
    let url = Url::parse(req.document.trim()).map_err(|e| {
        bad(format!(
            "the document '{}' is not an absolute URI: {e}",
            req.document
        ))
    })?;
    let bytes = crate::openapi::fetch(
        inner,
        ctx,
        &url,
        req.document_auth.as_ref(),
        "call asyncapi",
        "the document",
        "application/json, application/yaml;q=0.9, */*;q=0.5",
    )
    .await?;
    let doc = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => v,
        Err(json_err) => crate::openapi::parse_yaml(&bytes).map_err(|yaml_err| {
            bad(format!(
                "the document at {url} is neither JSON ({json_err}) nor YAML ({yaml_err})"
            ))
        })?,
    };
    target(&doc, req)
}

/// Resolves a `$ref` inside the document (`#/channels/x`).
fn deref<'a>(doc: &'a Value, v: &'a Value) -> Result<&'a Value, WfError> {
    match v.get("$ref").and_then(Value::as_str) {
        None => Ok(v),
        Some(r) => {
            let pointer = r.strip_prefix('#').ok_or_else(|| {
                bad(format!(
                    "{r}: only references inside the document are followed"
                ))
            })?;
            doc.pointer(pointer)
                .ok_or_else(|| bad(format!("{r} is not in the document")))
        }
    }
}

fn names(m: Option<&Map<String, Value>>) -> String {
    let v: Vec<&str> = m
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

pub fn target(doc: &Value, req: &AsyncApiRequest) -> Result<Target, WfError> {
    let version = doc
        .get("asyncapi")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the document has no 'asyncapi' version"))?;
    let servers = doc.get("servers").and_then(Value::as_object);
    // The channel's address and the servers it lists (names).
    let (address, listed): (String, Vec<String>) = if version.starts_with("3.") {
        let op_id = req.operation.as_deref().ok_or_else(|| {
            bad(format!(
                "the document is AsyncAPI {version}: name an 'operation'"
            ))
        })?;
        let ops = doc.get("operations").and_then(Value::as_object);
        let op = ops.and_then(|o| o.get(op_id)).ok_or_else(|| {
            bad(format!(
                "the document has no operation {op_id} (it has: {})",
                names(ops)
            ))
        })?;
        let op = deref(doc, op)?;
        match op.get("action").and_then(Value::as_str) {
            Some("send") => {}
            Some(a) => {
                return Err(bad(format!(
                    "operation {op_id} is a '{a}': a message is published through a 'send' operation"
                )));
            }
            None => return Err(bad(format!("operation {op_id} has no action"))),
        }
        let channel = op
            .get("channel")
            .ok_or_else(|| bad(format!("operation {op_id} has no channel")))?;
        let channel = deref(doc, channel)?;
        let address = channel
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("the channel of operation {op_id} has no address")))?;
        let listed = channel
            .get("servers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.get("$ref").and_then(Value::as_str))
                    .filter_map(|r| r.rsplit('/').next().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (address.to_string(), listed)
    } else if version.starts_with("2.") {
        let name = req.channel.as_deref().ok_or_else(|| {
            bad(format!(
                "the document is AsyncAPI {version}: name a 'channel'"
            ))
        })?;
        let chans = doc.get("channels").and_then(Value::as_object);
        let ch = chans.and_then(|c| c.get(name)).ok_or_else(|| {
            bad(format!(
                "the document has no channel {name} (it has: {})",
                names(chans)
            ))
        })?;
        if ch.get("publish").is_none() {
            return Err(bad(format!(
                "channel {name} has no 'publish' operation: a message cannot be sent to it"
            )));
        }
        let listed = ch
            .get("servers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (name.to_string(), listed)
    } else {
        return Err(bad(format!(
            "AsyncAPI {version} is not supported (2.x and 3.x are)"
        )));
    };
    if address.contains('{') {
        return Err(bad(format!(
            "the address {address} has parameters, which kflow does not fill yet"
        )));
    }
    // The server.
    let all = servers.ok_or_else(|| bad("the document has no servers"))?;
    let protocol_of = |s: &Value| -> String {
        deref(doc, s)
            .ok()
            .and_then(|s| s.get("protocol"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let name = match (&req.server, &req.protocol) {
        (Some(n), _) => {
            if !all.contains_key(n) {
                return Err(bad(format!(
                    "the document has no server {n} (it has: {})",
                    names(Some(all))
                )));
            }
            if !listed.is_empty() && !listed.contains(n) {
                return Err(bad(format!(
                    "server {n} does not carry the channel {address} (it is on: {})",
                    listed.join(", ")
                )));
            }
            n.clone()
        }
        (None, p) => {
            let candidates: Vec<&String> = if listed.is_empty() {
                all.keys().collect()
            } else {
                all.keys().filter(|k| listed.contains(k)).collect()
            };
            let pick = match p {
                Some(p) => candidates
                    .into_iter()
                    .find(|k| protocol_of(&all[k.as_str()]) == p.to_ascii_lowercase()),
                None => candidates.into_iter().next(),
            };
            pick.cloned().ok_or_else(|| {
                bad(format!(
                    "no server of the document carries {address}{}",
                    p.as_ref().map(|p| format!(" over {p}")).unwrap_or_default()
                ))
            })?
        }
    };
    let server = deref(doc, &all[&name])?;
    let protocol = protocol_of(server);
    if !matches!(protocol.as_str(), "nats" | "amqp" | "mqtt") {
        return Err(bad(format!(
            "server {name} speaks '{protocol}'; kflow publishes over nats, amqp and mqtt"
        )));
    }
    // 3.x: host (+ pathname); 2.x: url, with or without a scheme.
    let raw = server
        .get("host")
        .or_else(|| server.get("url"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("server {name} has no host")))?;
    let filled = fill(raw, server, &req.variables, &name)?;
    let hostport = filled.split_once("://").map_or(filled.as_str(), |(_, r)| r);
    let (hostport, path) = hostport.split_once('/').unwrap_or((hostport, ""));
    let pathname = match server.get("pathname").and_then(Value::as_str) {
        Some(p) => fill(p, server, &req.variables, &name)?,
        None => path.to_string(),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.to_string(), Some(p)),
            Err(_) => return Err(bad(format!("server {name}: {p:?} is not a port"))),
        },
        _ => (hostport.to_string(), None),
    };
    Ok(Target {
        server: name,
        protocol,
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        pathname: pathname.trim_start_matches('/').to_string(),
        address,
    })
}

/// `{var}` of a server string from the call's variables, else the variable's default.
fn fill(
    text: &str,
    server: &Value,
    given: &Map<String, Value>,
    name: &str,
) -> Result<String, WfError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let j = after
            .find('}')
            .ok_or_else(|| bad(format!("server {name}: an unclosed '{{' in {text}")))?;
        let var = &after[..j];
        let value = given
            .get(var)
            .map(crate::http::text_of)
            .or_else(|| {
                server
                    .pointer(&format!("/variables/{var}/default"))
                    .map(crate::http::text_of)
            })
            .ok_or_else(|| {
                bad(format!(
                    "server {name} needs the variable {var} (give it in server.variables)"
                ))
            })?;
        out.push_str(&value);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(
        op: Option<&str>,
        channel: Option<&str>,
        server: Option<&str>,
        protocol: Option<&str>,
    ) -> AsyncApiRequest {
        AsyncApiRequest {
            document: "file:///x".into(),
            document_auth: None,
            operation: op.map(str::to_string),
            channel: channel.map(str::to_string),
            server: server.map(str::to_string),
            variables: Map::new(),
            protocol: protocol.map(str::to_string),
            payload: Value::Null,
            headers: Map::new(),
            auth: None,
        }
    }

    fn doc() -> Value {
        json!({
            "asyncapi": "3.0.0",
            "servers": {
                "k": {"host": "kafka:9092", "protocol": "kafka"},
                "n": {"host": "{h}:4222", "protocol": "nats"},
                "r": {"host": "rabbit", "protocol": "amqp", "pathname": "/shop"},
            },
            "channels": {
                "c": {"address": "orders.created", "servers": [{"$ref": "#/servers/n"}, {"$ref": "#/servers/r"}]},
                "p": {"address": "orders.{id}"},
            },
            "operations": {
                "send": {"action": "send", "channel": {"$ref": "#/channels/c"}},
                "recv": {"action": "receive", "channel": {"$ref": "#/channels/c"}},
                "param": {"action": "send", "channel": {"$ref": "#/channels/p"}},
            }
        })
    }

    fn err(r: &AsyncApiRequest) -> String {
        target(&doc(), r).unwrap_err().detail.unwrap_or_default()
    }

    #[test]
    fn targets_are_resolved_or_refused_with_the_reason() {
        let mut r = req(Some("send"), None, None, Some("amqp"));
        assert_eq!(
            target(&doc(), &r).unwrap(),
            Target {
                server: "r".into(),
                protocol: "amqp".into(),
                host: "rabbit".into(),
                port: None,
                pathname: "shop".into(),
                address: "orders.created".into(),
            }
        );
        r.protocol = None;
        assert_eq!(
            err(&r),
            "call asyncapi: server n needs the variable h (give it in server.variables)"
        );
        r.variables.insert("h".into(), json!("10.0.0.1"));
        let t = target(&doc(), &r).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.1", Some(4222)));
        for (r, want) in [
            (
                req(Some("recv"), None, None, None),
                "call asyncapi: operation recv is a 'receive': a message is published through a 'send' operation",
            ),
            (
                req(Some("nope"), None, None, None),
                "call asyncapi: the document has no operation nope (it has: send, recv, param)",
            ),
            (
                req(Some("send"), None, Some("k"), None),
                "call asyncapi: server k does not carry the channel orders.created (it is on: n, r)",
            ),
            (
                req(Some("send"), None, None, Some("mqtt")),
                "call asyncapi: no server of the document carries orders.created over mqtt",
            ),
            (
                req(Some("param"), None, None, None),
                "call asyncapi: the address orders.{id} has parameters, which kflow does not fill yet",
            ),
            (
                req(None, Some("c"), None, None),
                "call asyncapi: the document is AsyncAPI 3.0.0: name an 'operation'",
            ),
        ] {
            assert_eq!(err(&r), want);
        }
        let v2 = json!({"asyncapi": "2.6.0", "servers": {"k": {"url": "kafka:9092", "protocol": "kafka"}},
                        "channels": {"in": {"subscribe": {}}, "out": {"publish": {}}}});
        let e = |r: &AsyncApiRequest| target(&v2, r).unwrap_err().detail.unwrap_or_default();
        assert_eq!(
            e(&req(None, Some("in"), None, None)),
            "call asyncapi: channel in has no 'publish' operation: a message cannot be sent to it"
        );
        assert_eq!(
            e(&req(None, Some("out"), None, None)),
            "call asyncapi: server k speaks 'kafka'; kflow publishes over nats, amqp and mqtt"
        );
    }
}

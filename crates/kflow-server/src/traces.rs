//! OpenTelemetry traces: one trace per instance, a span per task, exported over OTLP/HTTP
//! (JSON) when an endpoint is configured; W3C `traceparent` accepted on starts and sent on calls.
//!
//! Ids are derived, not drawn: an instance's trace id is its caller's (a `traceparent` on
//! `POST /instances`), its parent instance's (a sub-workflow), or its own id (a UUID is 128
//! bits); its span id is a hash of the instance id, a task's span id a hash of the instance id
//! and the seq of the task's `task.started` record. So a trace is the same whichever node or
//! incarnation of the server exports it, and needs nothing stored beyond the history: the
//! spans are built from the history when the instance ends, with the times it records.
//! `call http` and `call openapi` send `traceparent: 00-<trace>-<instance span>-01`, so the
//! called service's spans join the instance's trace.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

use kflow_store::InstanceStatus;

use crate::engine::journal::Record;
use crate::engine::{Ended, Engine};

/// An instance's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCtx {
    /// 32 hex digits.
    pub trace_id: String,
    /// The instance's span (16 hex digits).
    pub span_id: String,
    /// The caller's span, when the start came with a `traceparent`.
    pub parent: Option<String>,
}

/// `sha256(parts joined by \n)`, the first `bytes` bytes in hex.
fn hashed(parts: &[&str], bytes: usize) -> String {
    let h = sha2::Sha256::digest(parts.join("\n").as_bytes());
    h.iter().take(bytes).map(|b| format!("{b:02x}")).collect()
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero): its trace and span.
pub fn parse_traceparent(s: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts.as_slice() {
        [version, trace, span, flags, ..]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0')
                && (*version != "00" || parts.len() == 4) =>
        {
            Some((trace.to_string(), span.to_string()))
        }
        _ => None,
    }
}

impl TraceCtx {
    /// The trace of instance `id`, continuing `caller` (a valid `traceparent`) when given.
    pub fn of(id: &str, caller: Option<&str>) -> TraceCtx {
        let span_id = hashed(&["instance", id], 8);
        match caller.and_then(parse_traceparent) {
            Some((trace_id, parent)) => TraceCtx {
                trace_id,
                span_id,
                parent: Some(parent),
            },
            None => {
                let own: String = id.chars().filter(|c| *c != '-').collect();
                let trace_id = if own.len() == 32 && own.bytes().all(|b| b.is_ascii_hexdigit()) {
                    own.to_ascii_lowercase()
                } else {
                    hashed(&["trace", id], 16)
                };
                TraceCtx {
                    trace_id,
                    span_id,
                    parent: None,
                }
            }
        }
    }

    /// What the instance's calls send: its trace, its span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// `tracing:` in the config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct TracingConfig {
    /// The OTLP/HTTP endpoint (`http://collector:4318`); spans go to `<endpoint>/v1/traces`.
    /// Default: `OTEL_EXPORTER_OTLP_ENDPOINT`; none: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (default `kflow`).
    pub service_name: Option<String>,
}

/// A span of the OTLP JSON encoding.
#[allow(clippy::too_many_arguments)]
fn span(
    ctx: &TraceCtx,
    span_id: &str,
    parent: Option<&str>,
    name: &str,
    start_ms: i64,
    end_ms: i64,
    attributes: Vec<(&str, Value)>,
    error: Option<String>,
) -> Value {
    let attrs: Vec<Value> = attributes
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => json!({ "stringValue": s }),
                Value::Number(n) if n.is_i64() => json!({ "intValue": n.to_string() }),
                other => json!({ "stringValue": other.to_string() }),
            };
            json!({ "key": k, "value": value })
        })
        .collect();
    let mut s = json!({
        "traceId": ctx.trace_id,
        "spanId": span_id,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": (start_ms.max(0) as u128 * 1_000_000).to_string(),
        "endTimeUnixNano": (end_ms.max(start_ms).max(0) as u128 * 1_000_000).to_string(),
        "attributes": attrs,
        "status": match &error {
            Some(m) => json!({ "code": 2, "message": m }),
            None => json!({ "code": 1 }),
        },
    });
    if let Some(p) = parent {
        s["parentSpanId"] = Value::String(p.to_string());
    }
    s
}

/// The spans of an ended instance, from its history: the instance's, then one per task run,
/// each a child of the innermost task run open around it (its composite task), else of the
/// instance.
pub fn spans_of(
    e: &Ended,
    created_ms: i64,
    ended_ms: i64,
    history: &[(i64, i64, Record)],
) -> Vec<Value> {
    let mut trace = None;
    for (_, _, r) in history {
        if let Record::Started { trace: t, .. } = r {
            trace = t.clone();
        }
    }
    let ctx = TraceCtx::of(&e.id, trace.as_deref());
    let mut out = Vec::new();
    let error = (e.status == InstanceStatus::Faulted).then(|| {
        e.error
            .as_ref()
            .and_then(|v| v.get("title").or(v.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("faulted")
            .to_string()
    });
    out.push(span(
        &ctx,
        &ctx.span_id,
        ctx.parent.as_deref(),
        &format!("{}/{}@{}", e.namespace, e.name, e.version),
        created_ms,
        ended_ms,
        vec![
            ("kflow.instance.id", Value::String(e.id.clone())),
            ("kflow.namespace", Value::String(e.namespace.clone())),
            ("kflow.workflow", Value::String(e.name.clone())),
            ("kflow.version", Value::String(e.version.clone())),
            ("kflow.status", Value::String(e.status.as_str().into())),
        ],
        error,
    ));
    // Open task runs: (reference, name, span id, start ms).
    let mut open: Vec<(String, String, String, i64)> = Vec::new();
    for (seq, time, r) in history {
        let Record::Notice(m) = r else { continue };
        let (Some(kind), Some(reference)) = (
            m.get("type").and_then(Value::as_str),
            m.get("reference").and_then(Value::as_str),
        ) else {
            continue;
        };
        let name = m.get("task").and_then(Value::as_str).unwrap_or(reference);
        match kind {
            "task.started" => open.push((
                reference.to_string(),
                name.to_string(),
                hashed(&["task", &e.id, &seq.to_string()], 8),
                *time,
            )),
            "task.completed" | "task.faulted" | "task.cancelled" | "task.retried" => {
                let Some(i) = open.iter().rposition(|o| o.0 == reference) else {
                    continue;
                };
                let (reference, name, id, start) = open.remove(i);
                let parent = open
                    .iter()
                    .rev()
                    .find(|o| reference.starts_with(&format!("{}/", o.0)))
                    .map(|o| o.2.clone())
                    .unwrap_or_else(|| ctx.span_id.clone());
                let error = match kind {
                    "task.faulted" => Some(
                        m.get("error")
                            .and_then(|e| e.get("title").or(e.get("type")))
                            .and_then(Value::as_str)
                            .unwrap_or("faulted")
                            .to_string(),
                    ),
                    "task.cancelled" => Some("cancelled".to_string()),
                    "task.retried" => Some("failed; retried".to_string()),
                    _ => None,
                };
                out.push(span(
                    &ctx,
                    &id,
                    Some(&parent),
                    &name,
                    start,
                    *time,
                    vec![
                        ("kflow.task.reference", Value::String(reference)),
                        ("kflow.instance.id", Value::String(e.id.clone())),
                    ],
                    error,
                ));
            }
            _ => {}
        }
    }
    // Runs still open when the instance ended (a cancelled branch) end with it.
    for (reference, name, id, start) in open {
        out.push(span(
            &ctx,
            &id,
            Some(&ctx.span_id),
            &name,
            start,
            ended_ms,
            vec![("kflow.task.reference", Value::String(reference))],
            Some("ended with the instance".into()),
        ));
    }
    out
}

/// Exports the traces of ended instances.
pub struct Exporter {
    engine: Engine,
    url: String,
    service: String,
    http: reqwest::Client,
}

impl Exporter {
    /// `None` when no endpoint is configured.
    pub fn new(engine: Engine, cfg: &TracingConfig) -> Result<Option<Exporter>, String> {
        let endpoint = cfg
            .otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty());
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "tracing.otlp_endpoint: {endpoint:?} is not an http(s) URL"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("tracing: cannot build the HTTP client: {e}"))?;
        Ok(Some(Exporter {
            engine,
            url: format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            service: cfg.service_name.clone().unwrap_or_else(|| "kflow".into()),
            http,
        }))
    }

    /// Exports in batches: the instances that ended within 200 ms of the first waiting one
    /// (at most 500), their spans read in one go off the runtime and sent in one request.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let mut ended = self.engine.subscribe_ended();
        tracing::info!(url = %self.url, "exporting traces over OTLP");
        tokio::spawn(async move {
            loop {
                let first = match ended.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "traces: instances ended faster than they were exported"
                        );
                        continue;
                    }
                    Err(_) => return,
                };
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
                while batch.len() < 500 {
                    match tokio::time::timeout_at(deadline, ended.recv()).await {
                        Ok(Ok(e)) => batch.push(e),
                        Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                            tracing::warn!(
                                missed = n,
                                "traces: instances ended faster than they were exported"
                            );
                        }
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                self.export(batch).await;
            }
        })
    }

    async fn export(&self, batch: Vec<Ended>) {
        let store = self.engine.store();
        // Only the records spans are made of: the start and the notices (deliveries, with
        // their outputs, are not read into spans).
        let built = tokio::task::spawn_blocking(move || {
            let mut spans = Vec::new();
            for e in &batch {
                let Ok(wanted) = store.history_of_kinds(&e.id, &["started", "notice"]) else {
                    continue;
                };
                let Ok(records) = crate::engine::journal::decode_all(&e.id, &wanted) else {
                    continue;
                };
                let h: Vec<(i64, i64, Record)> = wanted
                    .iter()
                    .zip(records)
                    .map(|(ev, r)| (ev.seq, ev.time_ms, r))
                    .collect();
                spans.extend(spans_of(e, e.created_ms, e.ended_ms, &h));
            }
            spans
        })
        .await;
        let Ok(spans) = built else { return };
        if spans.is_empty() {
            return;
        }
        let body = json!({
            "resourceSpans": [{
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": self.service}},
                ]},
                "scopeSpans": [{"scope": {"name": "kflow"}, "spans": spans}],
            }],
        })
        .to_string();
        for attempt in 0..3u32 {
            let r = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => return,
                Ok(resp) => {
                    tracing::warn!(status = %resp.status(), "traces: the collector refused a batch")
                }
                Err(err) => tracing::warn!(error = %err, "traces: exporting failed"),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            ))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_instance_is_its_own_trace_unless_it_continues_one() {
        let id = "01a243e6-1e57-7087-b7c1-b771e03baa67";
        let own = TraceCtx::of(id, None);
        assert_eq!(own.trace_id, "01a243e61e577087b7c1b771e03baa67");
        assert_eq!(own.parent, None);
        assert_eq!(
            own,
            TraceCtx::of(id, Some("garbage")),
            "a bad traceparent is ignored"
        );
        let cont = TraceCtx::of(
            id,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(cont.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cont.parent.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(
            cont.span_id, own.span_id,
            "the instance's span id is its own"
        );
        assert!(
            cont.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        // A client-chosen id that is no UUID still gets a valid trace id.
        assert_eq!(TraceCtx::of("order-17", None).trace_id.len(), 32);
    }
}

//! What the API sends and takes: the wire types live in `kflow-api` (shared with the CLI); here
//! are the conversions from the engine's and the store's types, and the query parameters.

use serde::Deserialize;
use utoipa::IntoParams;

use kflow_core::time::iso8601;
use kflow_store::{Definition, HistoryEvent, Instance, InstanceStatus};

use crate::engine::{InstanceView, Registered, Waiting};

pub use kflow_api::definitions::{
    DefinitionDetail, DefinitionList, DefinitionSummary, DeprecateRequest, RegisterResponse,
};
pub use kflow_api::instances::{
    EventAccepted, HistoryEventDto, HistoryList, InstanceDto, InstanceList, InstanceViewDto,
    StartRequest, Status, WaitingDto,
};

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DefinitionQuery {
    /// Only the definitions of this namespace.
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// queued (waiting for a concurrency slot), running, suspended, completed, faulted or
    /// cancelled.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    /// Created at or after: RFC 3339 or epoch milliseconds.
    pub from: Option<String>,
    /// Created before: RFC 3339 or epoch milliseconds.
    pub to: Option<String>,
    /// Only instances whose input contains this text (case-insensitive, at most 200
    /// characters). A search reads at most 20,000 instances per request: a page may then hold
    /// fewer than `limit` items, with `next` to go on.
    pub q: Option<String>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only events with a greater `seq` (default 0).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
    /// At most this many, 1 to 10000 (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub limit: Option<String>,
}

impl From<Registered> for RegisterResponse {
    fn from(r: Registered) -> Self {
        RegisterResponse {
            namespace: r.namespace,
            name: r.name,
            version: r.version,
            outcome: r.outcome.to_string(),
        }
    }
}

/// A stored definition as listed (without its source).
pub fn definition_summary(d: &Definition) -> DefinitionSummary {
    DefinitionSummary {
        namespace: d.namespace.clone(),
        name: d.name.clone(),
        version: d.version.clone(),
        hash: d.hash.clone(),
        deprecated: d.deprecated,
        created: iso8601(d.created_ms),
        created_ms: d.created_ms,
    }
}

/// A stored definition with its source.
pub fn definition_detail(d: Definition) -> DefinitionDetail {
    // The inline input schema (`input.schema.document`), for forms; a registered document
    // always parses.
    let input_schema =
        kflow_dsl::node::parse(d.source.as_bytes(), &kflow_dsl::node::Limits::default())
            .ok()
            .and_then(|root| {
                let schema = root.get("input")?.get("schema")?;
                let is_json = schema
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_none_or(|f| f == "json");
                let doc = schema.get("document")?;
                is_json.then(|| doc.to_json())
            });
    DefinitionDetail {
        summary: definition_summary(&d),
        source: d.source,
        input_schema,
    }
}

pub fn status(s: InstanceStatus) -> Status {
    match s {
        InstanceStatus::Running => Status::Running,
        InstanceStatus::Suspended => Status::Suspended,
        InstanceStatus::Completed => Status::Completed,
        InstanceStatus::Faulted => Status::Faulted,
        InstanceStatus::Cancelled => Status::Cancelled,
    }
}

/// A stored instance as the API shows it.
pub fn instance_dto(i: Instance) -> InstanceDto {
    InstanceDto {
        status: status(i.status),
        created: iso8601(i.created_ms),
        updated: iso8601(i.updated_ms),
        created_ms: i.created_ms,
        updated_ms: i.updated_ms,
        id: i.id,
        namespace: i.namespace,
        name: i.name,
        version: i.version,
        input: i.input,
        output: i.output,
        error: i.error,
        attention: i.attention,
    }
}

impl From<Waiting> for WaitingDto {
    fn from(w: Waiting) -> Self {
        WaitingDto {
            task: w.task,
            on: w.on,
            until: w.until_ms.map(iso8601),
            until_ms: w.until_ms,
        }
    }
}

impl From<InstanceView> for InstanceViewDto {
    fn from(v: InstanceView) -> Self {
        InstanceViewDto {
            instance: instance_dto(v.instance),
            running: v.running,
            queued: v.queued,
            waiting: v.waiting.into_iter().map(WaitingDto::from).collect(),
            eta: v.eta.map(|e| kflow_api::instances::EtaDto {
                remaining_ms_p50: e.remaining_ms_p50,
                remaining_ms_p95: e.remaining_ms_p95,
            }),
        }
    }
}

/// A stored history event as the API shows it. A delivery reads as what happened —
/// `{effect, output}`, `{effect, error}` or `{effect, event}` — not as the journal's encoding of
/// a Rust `Result`.
pub fn history_event(e: HistoryEvent) -> HistoryEventDto {
    let data = if e.kind == "delivery" {
        readable_delivery(e.data)
    } else {
        e.data
    };
    HistoryEventDto {
        seq: e.seq,
        time: iso8601(e.time_ms),
        time_ms: e.time_ms,
        kind: e.kind,
        data,
    }
}

fn readable_delivery(data: serde_json::Value) -> serde_json::Value {
    use kflow_core::Delivery;
    let effect = data.get("effect").cloned().unwrap_or_default();
    let Some(delivery) = data
        .get("delivery")
        .and_then(|d| serde_json::from_value::<Delivery>(d.clone()).ok())
    else {
        return data;
    };
    let mut out = match delivery {
        Delivery::Result(Ok(output)) => serde_json::json!({"effect": effect, "output": output}),
        Delivery::Result(Err(error)) => {
            serde_json::json!({"effect": effect, "error": error.to_value()})
        }
        Delivery::Event(event) => serde_json::json!({"effect": effect, "event": event}),
    };
    // Which task's call or process it was, and when a worker took it (queue wait ends).
    for k in ["task", "leased_ms"] {
        if let Some(v) = data.get(k) {
            out[k] = v.clone();
        }
    }
    out
}

pub fn graph(g: kflow_dsl::graph::Graph) -> kflow_api::definitions::Graph {
    use kflow_api::definitions::{Graph, GraphEdge, GraphNode};
    Graph {
        nodes: g
            .nodes
            .into_iter()
            .map(|n| GraphNode {
                id: n.id,
                name: n.name,
                path: n.path,
                kind: n.kind,
                parent: n.parent,
                line: n.line,
                conditional: n.conditional,
            })
            .collect(),
        edges: g
            .edges
            .into_iter()
            .map(|e| GraphEdge {
                from: e.from,
                to: e.to,
                label: e.label,
            })
            .collect(),
    }
}

pub fn diagnostic(d: &kflow_dsl::Diagnostic) -> kflow_api::definitions::Diagnostic {
    kflow_api::definitions::Diagnostic {
        line: d.line,
        col: d.col,
        message: d.message.clone(),
    }
}

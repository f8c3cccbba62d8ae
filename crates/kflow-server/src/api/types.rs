//! What the API sends and takes, converted from the engine's and the store's types. Times are
//! given twice: as ISO 8601 UTC text (`created`) and as epoch milliseconds (`created_ms`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use kflow_core::time::iso8601;
use kflow_store::{Definition, HistoryEvent, Instance, InstanceStatus};

use crate::engine::{InstanceView, Registered, Waiting};

// --- definitions ---------------------------------------------------------------------------

/// The outcome of registering a definition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// `created` (201) or `unchanged` (200: the same version with the same content).
    #[schema(example = "created")]
    pub outcome: String,
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

/// One registered version, without its source.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionSummary {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// SHA-256 (hex) of the canonical JSON of the document.
    pub hash: String,
    /// A deprecated version starts no new instances.
    pub deprecated: bool,
    /// When it was registered (ISO 8601).
    #[schema(example = "2026-11-02T10:00:00.000Z")]
    pub created: String,
    pub created_ms: i64,
}

impl From<&Definition> for DefinitionSummary {
    fn from(d: &Definition) -> Self {
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
}

/// One registered version with the document as it was registered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionDetail {
    #[serde(flatten)]
    pub summary: DefinitionSummary,
    /// The document text (YAML or JSON) as registered.
    pub source: String,
}

impl From<Definition> for DefinitionDetail {
    fn from(d: Definition) -> Self {
        DefinitionDetail {
            summary: DefinitionSummary::from(&d),
            source: d.source,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionList {
    pub items: Vec<DefinitionSummary>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DefinitionQuery {
    /// Only the definitions of this namespace.
    pub namespace: Option<String>,
}

/// Body of the deprecate call (optional; `deprecated` defaults to true).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprecateRequest {
    /// `true` to deprecate, `false` to undo it.
    pub deprecated: Option<bool>,
}

// --- instances -----------------------------------------------------------------------------

/// Starts an instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub namespace: String,
    pub name: String,
    /// A registered version, or `latest` (the default): the highest semantic version.
    pub version: Option<String>,
    /// The workflow input (default `{}`); checked against the workflow's input schema.
    pub input: Option<Value>,
    /// Answer only once the instance has finished (or after `wait_seconds`, default 60).
    #[serde(default)]
    pub wait: bool,
    pub wait_seconds: Option<u64>,
    /// Queue priority of the instance's calls and processes (higher first; default 0).
    pub priority: Option<i64>,
    /// A client-chosen instance id (1 to 128 letters, digits, `-`, `_`): sending the same
    /// request again answers the same instance (200) instead of starting another; another
    /// request with this id is refused (409). Same guarantee as the `Idempotency-Key` header.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Suspended,
    Completed,
    Faulted,
    Cancelled,
}

impl From<InstanceStatus> for Status {
    fn from(s: InstanceStatus) -> Self {
        match s {
            InstanceStatus::Running => Status::Running,
            InstanceStatus::Suspended => Status::Suspended,
            InstanceStatus::Completed => Status::Completed,
            InstanceStatus::Faulted => Status::Faulted,
            InstanceStatus::Cancelled => Status::Cancelled,
        }
    }
}

/// A workflow instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceDto {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub status: Status,
    pub input: Value,
    /// The output, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The error (an RFC 7807 problem), once faulted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub created: String,
    pub created_ms: i64,
    pub updated: String,
    pub updated_ms: i64,
    /// Set when kflow cannot advance the instance without an operator (its history cannot be
    /// replayed by this build): why. Cancel it, or run a kflow that reads it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
}

impl From<Instance> for InstanceDto {
    fn from(i: Instance) -> Self {
        InstanceDto {
            status: i.status.into(),
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
}

/// A task waiting on a timer or for events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WaitingDto {
    /// Reference (JSON pointer) of the task.
    pub task: String,
    /// `timer` or `event`.
    pub on: String,
    /// When the timer fires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
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

/// An instance with what it is doing now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceViewDto {
    #[serde(flatten)]
    pub instance: InstanceDto,
    /// References of the tasks with an effect in progress (calls, processes, sub-workflows).
    pub running: Vec<String>,
    /// Tasks waiting on a timer or for events.
    pub waiting: Vec<WaitingDto>,
}

impl From<InstanceView> for InstanceViewDto {
    fn from(v: InstanceView) -> Self {
        InstanceViewDto {
            instance: v.instance.into(),
            running: v.running,
            waiting: v.waiting.into_iter().map(WaitingDto::from).collect(),
        }
    }
}

/// A page of instances, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub items: Vec<InstanceDto>,
    /// The cursor of the next page (`cursor=`), null on the last one.
    pub next: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// running, suspended, completed, faulted or cancelled.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    /// Created at or after: RFC 3339 or epoch milliseconds.
    pub from: Option<String>,
    /// Created before: RFC 3339 or epoch milliseconds.
    pub to: Option<String>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

// --- history -------------------------------------------------------------------------------

/// One history event of an instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryEventDto {
    /// From 1, without gaps.
    pub seq: i64,
    pub time: String,
    pub time_ms: i64,
    /// `started`, `notice`, `delivery`, `cancelled`, `suspended` or `resumed`.
    pub kind: String,
    pub data: Value,
}

impl From<HistoryEvent> for HistoryEventDto {
    fn from(e: HistoryEvent) -> Self {
        HistoryEventDto {
            seq: e.seq,
            time: iso8601(e.time_ms),
            time_ms: e.time_ms,
            kind: e.kind,
            data: e.data,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryList {
    pub items: Vec<HistoryEventDto>,
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

// --- events --------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventAccepted {
    /// How many waiting `listen` tasks took the event.
    pub matched: usize,
}

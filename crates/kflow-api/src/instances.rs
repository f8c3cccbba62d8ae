//! Instances, their histories, and posted events (`/api/v1/instances`, `/api/v1/events`).
//! Times are given twice: as ISO 8601 UTC text (`created`) and as epoch milliseconds
//! (`created_ms`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

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
    /// Waiting for a slot under a concurrency limit: not started yet.
    Queued,
    Running,
    Suspended,
    Completed,
    Faulted,
    Cancelled,
}

impl Status {
    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Suspended => "suspended",
            Status::Completed => "completed",
            Status::Faulted => "faulted",
            Status::Cancelled => "cancelled",
        }
    }

    /// Completed, faulted or cancelled: it will not change again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Faulted | Status::Cancelled
        )
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

/// An instance with what it is doing now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceViewDto {
    #[serde(flatten)]
    pub instance: InstanceDto,
    /// References of the tasks with an effect in progress (calls and processes a worker holds,
    /// sub-workflows).
    pub running: Vec<String>,
    /// References of the tasks whose call or process waits in a queue for a worker.
    #[serde(default)]
    pub queued: Vec<String>,
    /// Tasks waiting on a timer or for events.
    pub waiting: Vec<WaitingDto>,
    /// Expected time to completion of a running instance, from learned run times (absent:
    /// finished, nothing learned of its version yet, or waiting for an event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<EtaDto>,
}

/// The remaining critical path by the learned median run times, and by their p95.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EtaDto {
    pub remaining_ms_p50: f64,
    pub remaining_ms_p95: f64,
}

/// A page of instances, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub items: Vec<InstanceDto>,
    /// The cursor of the next page (`cursor=`), null on the last one.
    pub next: Option<String>,
}

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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryList {
    pub items: Vec<HistoryEventDto>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventAccepted {
    /// How many waiting `listen` tasks took the event.
    pub matched: usize,
}

/// `GET /api/v1/instances/{id}/explain`: why an instance is not done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Explanation {
    pub id: String,
    /// The instance's status.
    pub status: Status,
    /// What it waits for; empty when nothing (a finished instance).
    pub waiting: Vec<WaitReason>,
    /// How its shell and script tasks are confined (in its namespace, on this server).
    pub isolation: String,
}

/// One thing an instance waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaitReason {
    /// The waiting task's reference (a JSON pointer into the document); null for the whole
    /// instance (`concurrency`).
    pub task: Option<String>,
    /// The pending effect's id; absent for a DAG subtask that has not started and for the
    /// whole instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<u64>,
    /// The effect's kind (`timer`, `listen`, `workflow`, `call`, ...), `dependency` (a DAG
    /// subtask held by its dependencies) or `concurrency` (queued under a limit).
    pub kind: String,
    /// The reason in words.
    pub reason: String,
}

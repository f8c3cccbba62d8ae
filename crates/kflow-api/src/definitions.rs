//! Workflow definitions (`/api/v1/definitions`). Times are given twice: as ISO 8601 UTC text
//! (`created`) and as epoch milliseconds (`created_ms`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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

/// One registered version with the document as it was registered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionDetail {
    #[serde(flatten)]
    pub summary: DefinitionSummary,
    /// The document text (YAML or JSON) as registered.
    pub source: String,
    /// The workflow's input schema (`input.schema.document`, JSON Schema), when it has one
    /// inline: clients build input forms from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionList {
    pub items: Vec<DefinitionSummary>,
}

/// Body of the deprecate call (optional; `deprecated` defaults to true).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprecateRequest {
    /// `true` to deprecate, `false` to undo it.
    pub deprecated: Option<bool>,
}

/// The control-flow graph of a definition: a node per task (its JSON pointer as id, the same
/// pointer history events name), plus `start` and `end`; edges follow the flow.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Graph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GraphNode {
    /// The task's JSON pointer (`/do/0/greet`), or `start` / `end`.
    pub id: String,
    pub name: String,
    /// The names from the outermost task down to this one (`guard/risky`), as a diff names
    /// tasks.
    pub path: String,
    /// What the task does: `set`, `call http`, `run shell`, `fork`, ...
    pub kind: String,
    /// The pointer of the composite task this one belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The line of the task's name in the document (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The task has an `if:`.
    #[serde(default)]
    pub conditional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    /// Why the flow takes it: a switch case, `catch`, `each`, `done`, `branch`, `needs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// One problem in a document, at its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Diagnostic {
    /// 1-based.
    pub line: u32,
    /// 1-based.
    pub col: u32,
    pub message: String,
}

/// What the server thinks of a document, without registering it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidateResponse {
    /// No diagnostics: it would register.
    pub valid: bool,
    pub diagnostics: Vec<Diagnostic>,
    /// `namespace`, `name`, `version` when the document says them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The graph of a valid document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<Graph>,
}

/// How two versions of a workflow differ: their text, line by line, and their tasks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionDiff {
    pub namespace: String,
    pub name: String,
    pub from: String,
    pub to: String,
    /// The text, as unified-diff lines (` ` kept, `-` removed, `+` added), with the line
    /// numbers in each version.
    pub lines: Vec<DiffLine>,
    /// Tasks (by name path, `greet` or `guard/try/risky`) in `to` only.
    pub added: Vec<String>,
    /// Tasks in `from` only.
    pub removed: Vec<String>,
    /// Tasks in both whose definition changed.
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiffLine {
    /// ` `, `-` or `+`.
    pub op: String,
    /// The line number in `from` (kept and removed lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<u32>,
    /// The line number in `to` (kept and added lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<u32>,
    pub text: String,
}

/// Quantiles of a duration, in milliseconds (within 1% of the true value).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// What kflow learned of one task of one version, from its runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskAnalysis {
    /// The task's place in the document (its JSON pointer, `/do/0/name`).
    pub task: String,
    /// Runs that ended (ok + failed).
    pub runs: u64,
    pub failed: u64,
    /// Runs that were not the task's first attempt.
    pub retries: u64,
    pub failure_rate: f64,
    pub retry_rate: f64,
    /// From taken by a worker to its result.
    pub run_ms: Quantiles,
    /// From queued to taken by a worker.
    pub wait_ms: Quantiles,
    /// False below 20 runs: the figures are indications only.
    pub confident: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionAnalysis {
    pub version: String,
    pub tasks: Vec<TaskAnalysis>,
    /// What could be better, with its evidence (only tasks with 20 runs or more are judged).
    #[serde(default)]
    pub recommendations: Vec<Recommendation>,
    /// The tasks on the longest path through the workflow by median run times, in order.
    #[serde(default)]
    pub critical_path: Vec<String>,
    /// That path's length (ms, by median run times).
    #[serde(default)]
    pub critical_path_ms: f64,
    /// All learned tasks' median run times added up (ms): the critical path's share of it says
    /// how much runs side by side.
    #[serde(default)]
    pub task_time_ms: f64,
    /// Tasks that fail or are retried in 5% of runs or more, the most failures and retries
    /// first.
    #[serde(default)]
    pub hot_spots: Vec<String>,
}

/// A recommendation of `kflow analyze`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Recommendation {
    /// `useless-retries`, `loose-timeout`, `tight-timeout`, `queue-bound`, `drift`,
    /// `could-run-in-parallel`.
    pub kind: String,
    pub task: String,
    /// The line of the document it concerns (the task's, or the `try` whose retry it is).
    pub line: Option<u32>,
    pub message: String,
    pub evidence: String,
}

/// `GET /api/v1/definitions/{namespace}/{name}/analysis`: per version and task, durations
/// and failures learned from the workflow's runs (empty: nothing learned yet).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Analysis {
    pub namespace: String,
    pub name: String,
    pub versions: Vec<VersionAnalysis>,
}

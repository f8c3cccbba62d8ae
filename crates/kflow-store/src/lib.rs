//! kflow-store: where durable state lives.
//!
//! The [`Store`] trait is what the server's engine needs from a database; [`sqlite`] is the
//! embedded default backend; the PostgreSQL backend is the crate `kflow-store-pg`, which passes
//! the same conformance suite (`testkit`, feature `testkit`).
//!
//! Every state change of an instance is one [`Commit`], applied in one transaction: the history
//! events, the work rows they imply, the instance's status. Several commits may be applied in
//! one transaction ([`Store::apply`] takes a batch): that is group commit.
//!
//! The trait is synchronous: the server calls it from a dedicated writer thread (SQLite has one
//! writer anyway) and from blocking tasks for reads.

pub mod copy;
pub mod cursor;
pub mod security;
pub mod semver;
pub mod sqlite;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use security::{AuditEntry, AuditFilter, AuditRow, SecretRow, TokenRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a backend puts in the message of an error that says the database cannot be reached
/// now (a connection refused or lost): callers answer "try again" rather than "failed".
pub const UNAVAILABLE: &str = "the database is unavailable";

impl StoreError {
    /// Whether the database could not be reached (see [`UNAVAILABLE`]): worth trying again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Db(m) if m.contains(UNAVAILABLE))
    }
}

/// A registered workflow definition (one version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// The document text as registered.
    pub source: String,
    /// SHA-256 (hex) of the canonical JSON of the document: equal content, equal hash.
    pub hash: String,
    pub deprecated: bool,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutDefinition {
    Created,
    /// Same version, same content: nothing changed.
    Unchanged,
    /// Same version, different content: refused.
    Conflict {
        existing_hash: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Running,
    Suspended,
    Completed,
    Faulted,
    Cancelled,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Running => "running",
            InstanceStatus::Suspended => "suspended",
            InstanceStatus::Completed => "completed",
            InstanceStatus::Faulted => "faulted",
            InstanceStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceStatus> {
        Some(match s {
            "running" => InstanceStatus::Running,
            "suspended" => InstanceStatus::Suspended,
            "completed" => InstanceStatus::Completed,
            "faulted" => InstanceStatus::Faulted,
            "cancelled" => InstanceStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            InstanceStatus::Completed | InstanceStatus::Faulted | InstanceStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// UUID v7 text: sorts by creation time.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub status: InstanceStatus,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Set when the engine cannot advance the instance without an operator (its history
    /// cannot be replayed by this build, or replaying it panicked): why. Such an instance is
    /// parked: its timers, subscriptions and work are not resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
}

/// A start's idempotency key: the same key with the same request answers the same instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub namespace: String,
    pub key: String,
    /// SHA-256 (hex) of the canonical request.
    pub request_hash: String,
    pub instance_id: String,
    /// After this the key is forgotten (pruned) and may be used again.
    pub expires_ms: i64,
}

/// One history event of an instance. `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub seq: i64,
    pub time_ms: i64,
    /// `started` (data: input), `delivery` (data: {effect, delivery}), `notice` (data: the
    /// lifecycle notice as JSON), `cancelled`, `suspended`, `resumed`.
    pub kind: String,
    pub data: Value,
}

/// A durable row for an effect the instance started and that has not been answered yet:
/// calls, processes, timers, listen subscriptions, sub-workflows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    pub instance_id: String,
    pub effect_id: u64,
    /// Reference (JSON pointer) of the task that started it, e.g. `/do/0/getPet`.
    pub task: String,
    /// Effect kind: http, openapi, process, timer, listen, workflow, emit.
    pub kind: String,
    /// The effect as JSON (kflow_core::Effect).
    pub effect: Value,
    /// When it may run (timers: when they fire; others: when started).
    pub due_ms: i64,
    /// How many times it was handed out to run (0 until first claimed).
    pub attempts: u32,
}

/// One instance's state change, applied atomically (and possibly batched with others).
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub instance_id: String,
    /// Set when the instance is created by this commit.
    pub create: Option<Instance>,
    /// Appended to the history; their `seq` must continue the instance's history exactly.
    pub history: Vec<HistoryEvent>,
    pub add_work: Vec<WorkItem>,
    /// Effect ids whose work rows are removed (answered or cancelled).
    pub remove_work: Vec<u64>,
    /// New status, with output / error when finished.
    pub status: Option<(InstanceStatus, Option<Value>, Option<Value>)>,
    pub now_ms: i64,
    /// Posted CloudEvents (ids from [`Store::add_event`]) whose deliveries this batch commits.
    pub processed_events: Vec<i64>,
    /// Removes every work row of the instance (after `add_work`): an instance the engine
    /// faulted or cancelled without its core.
    pub clear_work: bool,
    /// An idempotency key recorded with the instance this commit creates.
    pub idempotency: Option<IdempotencyKey>,
    /// Audit entries appended to the chain in the same transaction (the start of an instance
    /// is audited exactly when it is committed).
    pub audit: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub namespace: Option<String>,
    /// Only instances in one of these namespaces (what a caller may see); `None`: any.
    pub within: Option<Vec<String>>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub status: Option<InstanceStatus>,
    /// Created at or after (ms).
    pub from_ms: Option<i64>,
    /// Created before (ms).
    pub to_ms: Option<i64>,
}

/// A page of instances, newest first; `next` is an opaque cursor for the following page.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Instance>,
    pub next: Option<String>,
}

/// The durable state of one workflow's schedule: one row per (namespace, name), following the
/// workflow's newest non-deprecated version. The store only keeps it; the server's scheduler
/// gives `state` its meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRow {
    pub namespace: String,
    pub name: String,
    /// The definition version the schedule runs.
    pub version: String,
    /// When the next timed fire is due (None: nothing timed is due, e.g. event-driven, or
    /// waiting for a run to finish).
    pub next_fire_ms: Option<i64>,
    /// The last fire (None: never fired).
    pub last_fire_ms: Option<i64>,
    pub paused: bool,
    /// Compare-and-set token: every write stores `revision + 1`. 0 means "no row yet".
    pub revision: i64,
    pub updated_ms: i64,
    /// The scheduler's own state (policies, pending fires, ...), as JSON.
    pub state: Value,
}

/// The learned statistics of one task of one workflow version (what they hold is the engine's:
/// the store keeps them as JSON and merges them with the engine's function).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatsRow {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub task: String,
    pub data: Value,
    pub updated_ms: i64,
}

/// How two statistics merge (see [`Store::merge_task_stats`]).
pub type MergeFn = dyn Fn(&Value, &Value) -> Value + Sync;

pub trait Store: Send + Sync + 'static {
    // --- definitions -----------------------------------------------------------------
    fn put_definition(&self, def: &Definition) -> Result<PutDefinition>;
    /// `version: None` is the latest: the highest semantic version (not the newest row).
    fn get_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Definition>>;
    fn list_definitions(&self, namespace: Option<&str>) -> Result<Vec<Definition>>;
    /// Returns false when no such version exists.
    fn set_deprecated(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        deprecated: bool,
    ) -> Result<bool>;

    // --- instances -------------------------------------------------------------------
    /// Applies all commits in ONE transaction, in order; either all or none.
    fn apply(&self, commits: &[Commit]) -> Result<()>;
    fn get_instance(&self, id: &str) -> Result<Option<Instance>>;
    /// The ids that start with `short`, or, when none does, that end with it; at most `limit`
    /// of them, in id order. Short ids in the CLI and the UI: a unique prefix or suffix names
    /// its instance (ids are UUID v7: their first characters are a time, their last random).
    fn instance_ids_matching(&self, prefix: &str, limit: u32) -> Result<Vec<String>>;
    fn list_instances(
        &self,
        filter: &InstanceFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page>;
    /// History events with `seq > after`, in order, at most `limit`.
    fn history(&self, id: &str, after: i64, limit: u32) -> Result<Vec<HistoryEvent>>;
    /// The history events of an instance of the given kinds (`started`, `notice`, ...), in
    /// order: readers that need only some kinds do not parse the others (trace export).
    fn history_of_kinds(&self, id: &str, kinds: &[&str]) -> Result<Vec<HistoryEvent>>;
    /// The last history seq of an instance (0 when none).
    fn last_seq(&self, id: &str) -> Result<i64>;

    // --- work --------------------------------------------------------------------------
    /// Every work row of an instance.
    fn work_of(&self, id: &str) -> Result<Vec<WorkItem>>;
    /// Work rows of running instances with `due_ms <= until_ms`, earliest first, at most `limit`,
    /// excluding `listen` rows. Used at startup (everything) and by the timer loop.
    fn due_work(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>>;
    /// Timer rows of running instances with `due_ms <= until_ms`, earliest first: the timer
    /// loop's rescan, which must not re-read in-flight calls.
    fn due_timers(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>>;
    /// The earliest `due_ms` of any timer row, if any.
    fn next_timer(&self) -> Result<Option<i64>>;
    /// Increments and returns the attempts counter of a work row (None if the row is gone).
    fn mark_attempt(&self, instance_id: &str, effect_id: u64) -> Result<Option<u32>>;
    /// Open `listen` rows (subscriptions) of running instances.
    fn subscriptions(&self) -> Result<Vec<WorkItem>>;
    /// Ids of instances in `running` status.
    fn running_instances(&self) -> Result<Vec<String>>;
    /// Marks an instance as needing attention (`Some(reason)`) or clears the mark.
    fn set_attention(&self, id: &str, reason: Option<&str>) -> Result<()>;

    // --- idempotency keys --------------------------------------------------------------
    /// The key's record, if it exists and has not expired by `now_ms`.
    fn idempotency_key(
        &self,
        namespace: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<IdempotencyKey>>;
    /// Deletes up to `limit` keys expired by `now_ms`; returns how many.
    fn prune_idempotency_keys(&self, now_ms: i64, limit: u32) -> Result<usize>;

    // --- learned task statistics (adaptive scheduling) -------------------------------------
    /// The learned statistics of a workflow's tasks, every version, by version then task.
    fn task_stats(&self, namespace: &str, name: &str) -> Result<Vec<TaskStatsRow>> {
        let _ = (namespace, name);
        Ok(Vec::new())
    }
    /// Merges `deltas` into the stored statistics in one transaction: a row's data becomes
    /// `merge(stored, delta)`, or the delta when none is stored (nodes sharing a database merge
    /// into the same rows).
    fn merge_task_stats(&self, deltas: &[TaskStatsRow], merge: &MergeFn) -> Result<()> {
        let _ = (deltas, merge);
        Ok(())
    }

    // --- events ------------------------------------------------------------------------
    /// Records a posted CloudEvent before it is acknowledged; returns its id (increasing).
    fn add_event(&self, event: &Value, received_ms: i64) -> Result<i64>;
    /// Records an event at most once per `dedup` key (a broker's message: its CloudEvents
    /// source and id): `None` when an event with that key was recorded before (and not yet
    /// pruned), and nothing is written.
    fn add_event_once(&self, event: &Value, dedup: &str, received_ms: i64) -> Result<Option<i64>>;
    /// Recorded events not yet marked processed by a commit, oldest first. On a store shared by
    /// several nodes: the events after this node's cursor.
    fn pending_events(&self, limit: u32) -> Result<Vec<(i64, Value)>>;
    /// On a store shared by several nodes: takes a concurrency slot for instance `id` in every
    /// group of `groups` (name, limit), all or none, counting the running instances of every
    /// node; false when a group is full. `replacing`: an instance whose cancellation is in
    /// the same batch (`onLimit: cancelOldest`), not counted. One node: the engine counts
    /// (always true).
    fn claim_slots(
        &self,
        id: &str,
        groups: &[(String, usize)],
        replacing: Option<&str>,
    ) -> Result<bool> {
        let _ = (id, groups, replacing);
        Ok(true)
    }
    /// On a store shared by several nodes: whether this node drives instance `id` (true when it
    /// does not exist: the caller says so). One node: always.
    fn is_mine(&self, id: &str) -> Result<bool> {
        let _ = id;
        Ok(true)
    }
    /// On a store shared by several nodes: the events after `after` that this node has already
    /// offered to its own instances (up to its cursor), oldest first; instances it takes over
    /// from a node whose cursor stood at `after` never saw them. One node: none.
    fn missed_events(&self, after: i64, limit: u32) -> Result<Vec<(i64, Value)>> {
        let _ = (after, limit);
        Ok(Vec::new())
    }

    // --- schedules ---------------------------------------------------------------------------
    /// Every schedule row, by namespace then name.
    fn list_schedules(&self) -> Result<Vec<ScheduleRow>>;
    fn get_schedule(&self, namespace: &str, name: &str) -> Result<Option<ScheduleRow>>;
    /// Compare-and-set: writes `row` (stored with revision `row.revision + 1`) if the stored
    /// row of (namespace, name) has revision `row.revision`, or if there is none and
    /// `row.revision` is 0. Returns false, writing nothing, otherwise.
    fn put_schedule(&self, row: &ScheduleRow) -> Result<bool>;
    /// Removes the row whatever its revision; false when there was none.
    fn delete_schedule(&self, namespace: &str, name: &str) -> Result<bool>;
    /// Pauses or resumes (bumping the revision); returns the row as it is now, None when there
    /// is none.
    fn set_schedule_paused(
        &self,
        namespace: &str,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<Option<ScheduleRow>>;
    /// The earliest `next_fire_ms` of the rows that are not paused.
    fn next_schedule_fire(&self) -> Result<Option<i64>>;

    // --- access control ----------------------------------------------------------------
    /// Adds a token; false (nothing written) when its id, or its name among tokens not
    /// revoked, is taken.
    fn put_token(&self, token: &TokenRow) -> Result<bool>;
    /// Every token, revoked ones included, oldest first.
    fn tokens(&self) -> Result<Vec<TokenRow>>;
    /// Revokes a token by id or name; the revoked row, None when no live token matches.
    fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> Result<Option<TokenRow>>;
    /// Appends entries to the audit chain, in order, in one transaction; returns the last row.
    fn append_audit(&self, entries: &[AuditEntry]) -> Result<Option<AuditRow>>;
    /// Audit rows with `seq > after`, in order, at most `limit`, matching `filter`.
    fn audit(&self, filter: &AuditFilter, after: i64, limit: u32) -> Result<Vec<AuditRow>>;

    // --- secrets (encrypted by the caller) ---------------------------------------------
    /// Writes secrets (insert or replace), all in one transaction.
    fn put_secrets(&self, rows: &[SecretRow]) -> Result<()>;
    /// Every secret row.
    fn secrets(&self) -> Result<Vec<SecretRow>>;
    /// Removes a secret; false when there was none.
    fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool>;

    // --- alerts ---------------------------------------------------------------------------
    /// Records an alert unless one with the same `(rule, key)` exists (an alert fires once per
    /// condition); true when it was recorded now.
    fn fire_alert(&self, alert: &AlertRow) -> Result<bool>;
    /// Alerts not delivered yet whose next attempt is due at `now_ms`, oldest first.
    fn due_alerts(&self, now_ms: i64, limit: u32) -> Result<Vec<AlertRow>>;
    /// Records a delivery attempt: delivered (`delivered_ms`), or failed with the time of the
    /// next attempt (`None`: given up) and the error.
    fn alert_attempted(&self, id: &str, outcome: AlertAttempt) -> Result<()>;
    /// Forgets the alerts of `(rule, key)` (the condition cleared: it may fire again).
    fn clear_alert(&self, rule: &str, key: &str) -> Result<bool>;
    /// Alerts, newest first, at most `limit`, fired before `before_ms` when given.
    fn alerts(&self, before_ms: Option<i64>, limit: u32) -> Result<Vec<AlertRow>>;

    // --- retention -------------------------------------------------------------------------
    /// Finished instances (completed, faulted, cancelled) last updated before `before_ms`,
    /// oldest first, at most `limit`: what retention prunes next.
    fn finished_before(&self, before_ms: i64, limit: u32) -> Result<Vec<Instance>>;
    /// Deletes these instances with their histories and work rows, in one transaction;
    /// instances that are not finished are left alone. Returns how many were deleted.
    fn delete_instances(&self, ids: &[String]) -> Result<usize>;
    /// Deletes up to `limit` processed events received before `before_ms`; returns how many.
    fn prune_events(&self, before_ms: i64, limit: u32) -> Result<usize>;
    /// Rows (and bytes, where the backend knows them) per table: `kflow db stats`.
    fn table_stats(&self) -> Result<Vec<TableStats>>;
}

/// The size of one table (or of the whole database, `table` = `(database)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStats {
    pub table: String,
    pub rows: i64,
    pub bytes: Option<i64>,
}

/// The tables `table_stats` reports, in order.
pub const TABLES: &[&str] = &[
    "definitions",
    "instances",
    "history",
    "work",
    "schedules",
    "events",
    "idempotency",
    "tokens",
    "audit",
    "secrets",
    "alerts",
];

/// A fired alert and its delivery state.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    /// Stable for `(rule, key)`: the CloudEvent id receivers de-duplicate on.
    pub id: String,
    pub rule: String,
    /// What the alert is about (an instance id, a queue, a worker, a schedule).
    pub key: String,
    /// The namespace concerned, when there is one (alerts are filtered by it).
    pub namespace: Option<String>,
    pub fired_ms: i64,
    pub summary: String,
    pub data: Value,
    pub delivered_ms: Option<i64>,
    pub attempts: u32,
    /// When the next delivery attempt is due; `None` once delivered or given up.
    pub next_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Set when the condition cleared (then the row may be replaced by a new firing).
    pub resolved_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlertAttempt {
    Delivered { at_ms: i64 },
    Failed { next_ms: Option<i64>, error: String },
}

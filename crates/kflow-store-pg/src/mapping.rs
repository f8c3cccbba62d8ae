//! Rows to values: the column lists of every table and the mapping of a row to its type.

use kflow_store::{
    AlertRow, AuditEntry, AuditRow, Definition, HistoryEvent, Instance, InstanceStatus, Result,
    ScheduleRow, StoreError, TokenRow, WorkItem,
};
use serde_json::Value;
use tokio_postgres::Row;

pub(crate) const DEFINITION_COLUMNS: &str =
    "namespace, name, version, hash, deprecated, created_ms, source";
pub(crate) const INSTANCE_COLUMNS: &str =
    "id, namespace, name, version, status, created_ms, updated_ms, input, output, error, attention";
pub(crate) const WORK_COLUMNS: &str =
    "w.instance_id, w.effect_id, w.task, w.kind, w.due_ms, w.attempts, w.effect";
pub(crate) const SCHEDULE_COLUMNS: &str =
    "namespace, name, version, next_fire_ms, last_fire_ms, paused, revision, updated_ms, state";
pub(crate) const ALERT_COLUMNS: &str = "id, rule, key, namespace, fired_ms, summary, data, delivered_ms, attempts, next_ms, last_error, resolved_ms";
pub(crate) const TOKEN_COLUMNS: &str =
    "id, name, role, namespaces, secret_sha256, created_ms, created_by, expires_ms, revoked_ms";
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, at_ms, actor, action, resource, namespace, source, result, prev_hash, hash";

pub(crate) fn to_json(v: &Value) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(format!("cannot serialize JSON: {e}")))
}

pub(crate) fn from_json(text: &str, what: impl FnOnce() -> String) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{}: invalid JSON: {e}", what())))
}

pub(crate) fn definition_row(row: &Row) -> Result<Definition> {
    Ok(Definition {
        namespace: row.get(0),
        name: row.get(1),
        version: row.get(2),
        hash: row.get(3),
        deprecated: row.get(4),
        created_ms: row.get(5),
        source: row.get(6),
    })
}

pub(crate) fn instance_row(row: &Row) -> Result<Instance> {
    let id: String = row.get(0);
    let status: String = row.get(4);
    let Some(status) = InstanceStatus::parse(&status) else {
        return Err(StoreError::Corrupt(format!(
            "instance {id}: unknown status {status:?}"
        )));
    };
    let input: String = row.get(7);
    let output: Option<String> = row.get(8);
    let error: Option<String> = row.get(9);
    Ok(Instance {
        input: from_json(&input, || format!("instance {id}: input"))?,
        output: output
            .map(|t| from_json(&t, || format!("instance {id}: output")))
            .transpose()?,
        error: error
            .map(|t| from_json(&t, || format!("instance {id}: error")))
            .transpose()?,
        namespace: row.get(1),
        name: row.get(2),
        version: row.get(3),
        status,
        created_ms: row.get(5),
        updated_ms: row.get(6),
        attention: row.get(10),
        id,
    })
}

pub(crate) fn work_row(row: &Row) -> Result<WorkItem> {
    let instance_id: String = row.get(0);
    let effect_id = row.get::<_, i64>(1) as u64;
    let attempts: i32 = row.get(5);
    let attempts = u32::try_from(attempts).map_err(|_| {
        StoreError::Corrupt(format!(
            "work {instance_id}/{effect_id}: attempts {attempts} out of range"
        ))
    })?;
    let effect: String = row.get(6);
    Ok(WorkItem {
        effect: from_json(&effect, || {
            format!("work {instance_id}/{effect_id}: effect")
        })?,
        task: row.get(2),
        kind: row.get(3),
        due_ms: row.get(4),
        attempts,
        effect_id,
        instance_id,
    })
}

pub(crate) fn schedule_row(row: &Row) -> Result<ScheduleRow> {
    let namespace: String = row.get(0);
    let name: String = row.get(1);
    let state: String = row.get(8);
    Ok(ScheduleRow {
        state: from_json(&state, || format!("schedule {namespace}/{name}: state"))?,
        version: row.get(2),
        next_fire_ms: row.get(3),
        last_fire_ms: row.get(4),
        paused: row.get(5),
        revision: row.get(6),
        updated_ms: row.get(7),
        namespace,
        name,
    })
}

pub(crate) fn history_row(row: &Row) -> Result<HistoryEvent> {
    let seq: i64 = row.get(0);
    let data: String = row.get(3);
    Ok(HistoryEvent {
        seq,
        time_ms: row.get(1),
        kind: row.get(2),
        data: from_json(&data, || format!("history event {seq}"))?,
    })
}

pub(crate) fn alert_row(r: &Row) -> Result<AlertRow> {
    let data: String = r.get(6);
    let attempts: i32 = r.get(8);
    Ok(AlertRow {
        id: r.get(0),
        rule: r.get(1),
        key: r.get(2),
        namespace: r.get(3),
        fired_ms: r.get(4),
        summary: r.get(5),
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
        delivered_ms: r.get(7),
        attempts: attempts.max(0) as u32,
        next_ms: r.get(9),
        last_error: r.get(10),
        resolved_ms: r.get(11),
    })
}

pub(crate) fn token_row(row: &Row) -> Result<TokenRow> {
    let namespaces: String = row.get(3);
    Ok(TokenRow {
        id: row.get(0),
        name: row.get(1),
        role: row.get(2),
        namespaces: serde_json::from_str(&namespaces)
            .map_err(|e| StoreError::Corrupt(format!("token namespaces: {e}")))?,
        secret_sha256: row.get(4),
        created_ms: row.get(5),
        created_by: row.get(6),
        expires_ms: row.get(7),
        revoked_ms: row.get(8),
    })
}

pub(crate) fn audit_row(row: &Row) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: row.get(0),
        entry: AuditEntry {
            at_ms: row.get(1),
            actor: row.get(2),
            action: row.get(3),
            resource: row.get(4),
            namespace: row.get(5),
            source: row.get(6),
            result: row.get(7),
        },
        prev_hash: row.get(8),
        hash: row.get(9),
    })
}

pub(crate) fn all<T>(rows: Vec<Row>, map: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(map).collect()
}

pub(crate) fn limit(n: u32) -> i64 {
    i64::from(n)
}

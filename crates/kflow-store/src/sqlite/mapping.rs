//! Rows to values: the column lists (as macros, so that statements stay `&'static str`), the
//! mapping of a row to its type, and the helpers that run a cached statement and map its rows.

use rusqlite::{Connection, Row};
use serde_json::Value;

use crate::{
    Definition, HistoryEvent, Instance, InstanceStatus, Result, ScheduleRow, StoreError, WorkItem,
};

// Column lists as macros so that every statement is one `&'static str` (no formatting on the
// hot path; the statement cache is keyed by the text).
macro_rules! definition_columns {
    () => {
        "namespace, name, version, hash, deprecated, created_ms, source"
    };
}
macro_rules! instance_columns {
    () => {
        "id, namespace, name, version, status, created_ms, updated_ms, input, output, error, attention"
    };
}
macro_rules! work_columns {
    () => {
        "w.instance_id, w.effect_id, w.task, w.kind, w.due_ms, w.attempts, w.effect"
    };
}

macro_rules! schedule_columns {
    () => {
        "namespace, name, version, next_fire_ms, last_fire_ms, paused, revision, updated_ms, state"
    };
}

pub(super) fn to_json(v: &Value) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(format!("cannot serialize JSON: {e}")))
}

pub(super) fn from_json(text: &str, what: impl FnOnce() -> String) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{}: invalid JSON: {e}", what())))
}

/// u64 effect ids are stored as the i64 with the same bits (SQLite integers are signed).
pub(super) fn effect_key(effect_id: u64) -> i64 {
    effect_id as i64
}

/// Adds what was being done to a database error.
pub(super) fn context(what: impl FnOnce() -> String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| match StoreError::from(e) {
        StoreError::Db(m) => StoreError::Db(format!("{}: {m}", what())),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", what())),
    }
}

pub(super) fn definition_row(row: &Row<'_>) -> Result<Definition> {
    Ok(Definition {
        namespace: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        hash: row.get(3)?,
        deprecated: row.get(4)?,
        created_ms: row.get(5)?,
        source: row.get(6)?,
    })
}

pub(super) fn instance_row(row: &Row<'_>) -> Result<Instance> {
    let id: String = row.get(0)?;
    let status: String = row.get(4)?;
    let Some(status) = InstanceStatus::parse(&status) else {
        return Err(StoreError::Corrupt(format!(
            "instance {id}: unknown status {status:?}"
        )));
    };
    let input: String = row.get(7)?;
    let output: Option<String> = row.get(8)?;
    let error: Option<String> = row.get(9)?;
    let input = from_json(&input, || format!("instance {id}: input"))?;
    let output = output
        .map(|t| from_json(&t, || format!("instance {id}: output")))
        .transpose()?;
    let error = error
        .map(|t| from_json(&t, || format!("instance {id}: error")))
        .transpose()?;
    Ok(Instance {
        namespace: row.get(1)?,
        name: row.get(2)?,
        version: row.get(3)?,
        status,
        input,
        output,
        error,
        created_ms: row.get(5)?,
        updated_ms: row.get(6)?,
        attention: row.get(10)?,
        id,
    })
}

pub(super) fn work_row(row: &Row<'_>) -> Result<WorkItem> {
    let instance_id: String = row.get(0)?;
    let effect_id = row.get::<_, i64>(1)? as u64;
    let attempts: i64 = row.get(5)?;
    let attempts = u32::try_from(attempts).map_err(|_| {
        StoreError::Corrupt(format!(
            "work {instance_id}/{effect_id}: attempts {attempts} out of range"
        ))
    })?;
    let effect: String = row.get(6)?;
    let effect = from_json(&effect, || {
        format!("work {instance_id}/{effect_id}: effect")
    })?;
    Ok(WorkItem {
        task: row.get(2)?,
        kind: row.get(3)?,
        due_ms: row.get(4)?,
        attempts,
        effect,
        effect_id,
        instance_id,
    })
}

pub(super) fn schedule_row(row: &Row<'_>) -> Result<ScheduleRow> {
    let namespace: String = row.get(0)?;
    let name: String = row.get(1)?;
    let state: String = row.get(8)?;
    let state = from_json(&state, || format!("schedule {namespace}/{name}: state"))?;
    Ok(ScheduleRow {
        version: row.get(2)?,
        next_fire_ms: row.get(3)?,
        last_fire_ms: row.get(4)?,
        paused: row.get(5)?,
        revision: row.get(6)?,
        updated_ms: row.get(7)?,
        state,
        namespace,
        name,
    })
}

pub(super) fn history_row(row: &Row<'_>) -> Result<HistoryEvent> {
    let seq: i64 = row.get(0)?;
    let data: String = row.get(3)?;
    Ok(HistoryEvent {
        seq,
        time_ms: row.get(1)?,
        kind: row.get(2)?,
        data: from_json(&data, || format!("history event {seq}"))?,
    })
}

/// Runs a cached statement and maps every row.
pub(super) fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_and_then(params, map)?;
    rows.collect()
}

/// Runs a cached statement and maps the first row, if any.
pub(super) fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query_and_then(params, map)?;
    rows.next().transpose()
}

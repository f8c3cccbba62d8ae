//! The alerts table: one row per firing of a rule for one subject, with its delivery state.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{AlertAttempt, AlertRow, Result};

const COLUMNS: &str = "id, rule, key, namespace, fired_ms, summary, data, delivered_ms, \
                       attempts, next_ms, last_error, resolved_ms";

fn row(r: &Row<'_>) -> Result<AlertRow> {
    let data: String = r.get(6)?;
    Ok(AlertRow {
        id: r.get(0)?,
        rule: r.get(1)?,
        key: r.get(2)?,
        namespace: r.get(3)?,
        fired_ms: r.get(4)?,
        summary: r.get(5)?,
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        delivered_ms: r.get(7)?,
        attempts: r.get(8)?,
        next_ms: r.get(9)?,
        last_error: r.get(10)?,
        resolved_ms: r.get(11)?,
    })
}

pub(super) fn fire(conn: &mut Connection, a: &AlertRow) -> Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // A resolved firing of the same condition gives way to the new one.
    let existing: Option<Option<i64>> = tx
        .query_row(
            "SELECT resolved_ms FROM alerts WHERE rule = ?1 AND key = ?2",
            params![a.rule, a.key],
            |r| r.get(0),
        )
        .optional()?;
    let fired = match existing {
        Some(None) => false,
        Some(Some(_)) | None => {
            tx.execute(
                "DELETE FROM alerts WHERE rule = ?1 AND key = ?2",
                params![a.rule, a.key],
            )?;
            tx.execute(
                &format!("INSERT INTO alerts ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    a.id,
                    a.rule,
                    a.key,
                    a.namespace,
                    a.fired_ms,
                    a.summary,
                    a.data.to_string(),
                    a.delivered_ms,
                    a.attempts,
                    a.next_ms,
                    a.last_error,
                    a.resolved_ms
                ],
            )?;
            true
        }
    };
    tx.commit()?;
    Ok(fired)
}

pub(super) fn due(conn: &Connection, now_ms: i64, limit: u32) -> Result<Vec<AlertRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM alerts WHERE next_ms IS NOT NULL AND next_ms <= ?1 \
         ORDER BY next_ms, fired_ms LIMIT ?2"
    ))?;
    let rows = stmt.query_and_then(params![now_ms, limit], row)?;
    rows.collect()
}

pub(super) fn attempted(conn: &mut Connection, id: &str, outcome: &AlertAttempt) -> Result<()> {
    match outcome {
        AlertAttempt::Delivered { at_ms } => conn.execute(
            "UPDATE alerts SET delivered_ms = ?2, next_ms = NULL, last_error = NULL, \
             attempts = attempts + 1 WHERE id = ?1",
            params![id, at_ms],
        )?,
        AlertAttempt::Failed { next_ms, error } => conn.execute(
            "UPDATE alerts SET next_ms = ?2, last_error = ?3, attempts = attempts + 1 WHERE id = ?1",
            params![id, next_ms, error],
        )?,
    };
    Ok(())
}

pub(super) fn clear(conn: &mut Connection, rule: &str, key: &str, now_ms: i64) -> Result<bool> {
    let n = conn.execute(
        "UPDATE alerts SET resolved_ms = ?3 WHERE rule = ?1 AND key = ?2 AND resolved_ms IS NULL",
        params![rule, key, now_ms],
    )?;
    Ok(n > 0)
}

pub(super) fn list(conn: &Connection, before_ms: Option<i64>, limit: u32) -> Result<Vec<AlertRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM alerts WHERE fired_ms < ?1 ORDER BY fired_ms DESC, id LIMIT ?2"
    ))?;
    let rows = stmt.query_and_then(params![before_ms.unwrap_or(i64::MAX), limit], row)?;
    rows.collect()
}

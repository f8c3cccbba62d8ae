//! Tokens and the audit chain in SQLite.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use super::mapping::{query_all, query_opt};
use crate::security::{GENESIS, chain_hash};
use crate::{AuditEntry, AuditFilter, AuditRow, Result, SecretRow, StoreError, TokenRow};

macro_rules! token_columns {
    () => {
        "id, name, role, namespaces, secret_sha256, created_ms, created_by, expires_ms, revoked_ms"
    };
}
macro_rules! audit_columns {
    () => {
        "seq, at_ms, actor, action, resource, namespace, source, result, prev_hash, hash"
    };
}

fn token_row(row: &Row<'_>) -> Result<TokenRow> {
    let namespaces: String = row.get(3)?;
    Ok(TokenRow {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        namespaces: serde_json::from_str(&namespaces)
            .map_err(|e| StoreError::Corrupt(format!("token namespaces: {e}")))?,
        secret_sha256: row.get(4)?,
        created_ms: row.get(5)?,
        created_by: row.get(6)?,
        expires_ms: row.get(7)?,
        revoked_ms: row.get(8)?,
    })
}

fn audit_row(row: &Row<'_>) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: row.get(0)?,
        entry: AuditEntry {
            at_ms: row.get(1)?,
            actor: row.get(2)?,
            action: row.get(3)?,
            resource: row.get(4)?,
            namespace: row.get(5)?,
            source: row.get(6)?,
            result: row.get(7)?,
        },
        prev_hash: row.get(8)?,
        hash: row.get(9)?,
    })
}

pub(super) fn put_token(conn: &mut Connection, t: &TokenRow) -> Result<bool> {
    let namespaces = serde_json::to_string(&t.namespaces)
        .map_err(|e| StoreError::Db(format!("token namespaces: {e}")))?;
    let n = conn
        .prepare_cached(concat!(
            "INSERT OR IGNORE INTO tokens (",
            token_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))?
        .execute(params![
            t.id,
            t.name,
            t.role,
            namespaces,
            t.secret_sha256,
            t.created_ms,
            t.created_by,
            t.expires_ms,
            t.revoked_ms
        ])?;
    Ok(n == 1)
}

pub(super) fn tokens(conn: &Connection) -> Result<Vec<TokenRow>> {
    query_all(
        conn,
        concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens ORDER BY created_ms, id"
        ),
        [],
        token_row,
    )
}

pub(super) fn revoke_token(
    conn: &mut Connection,
    id_or_name: &str,
    now_ms: i64,
) -> Result<Option<TokenRow>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = query_opt(
        &tx,
        concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE revoked_ms IS NULL AND (id = ?1 OR name = ?1) LIMIT 1"
        ),
        params![id_or_name],
        token_row,
    )?;
    let Some(mut row) = found else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1",
        params![row.id, now_ms],
    )?;
    tx.commit()?;
    row.revoked_ms = Some(now_ms);
    Ok(Some(row))
}

pub(super) fn append_audit(
    conn: &mut Connection,
    entries: &[AuditEntry],
) -> Result<Option<AuditRow>> {
    if entries.is_empty() {
        return Ok(None);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last = append_audit_in(&tx, entries)?;
    tx.commit()?;
    Ok(last)
}

/// Appends to the chain inside the caller's transaction.
pub(super) fn append_audit_in(
    tx: &rusqlite::Transaction<'_>,
    entries: &[AuditEntry],
) -> Result<Option<AuditRow>> {
    let (mut seq, mut prev): (i64, String) = query_opt(
        tx,
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?
    .unwrap_or((0, GENESIS.to_string()));
    let mut last = None;
    let mut insert = tx.prepare_cached(concat!(
        "INSERT INTO audit (",
        audit_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?;
    for e in entries {
        seq += 1;
        let hash = chain_hash(&prev, seq, e);
        insert.execute(params![
            seq,
            e.at_ms,
            e.actor,
            e.action,
            e.resource,
            e.namespace,
            e.source,
            e.result,
            prev,
            hash
        ])?;
        last = Some(AuditRow {
            seq,
            entry: e.clone(),
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    Ok(last)
}

pub(super) fn audit(
    conn: &Connection,
    f: &AuditFilter,
    after: i64,
    limit: u32,
) -> Result<Vec<AuditRow>> {
    let mut sql = String::from(concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit WHERE seq > ?"
    ));
    let mut args: Vec<SqlValue> = vec![SqlValue::Integer(after)];
    if let Some(a) = &f.actor {
        sql.push_str(" AND actor = ?");
        args.push(SqlValue::Text(a.clone()));
    }
    if let Some(a) = &f.action {
        sql.push_str(" AND substr(action, 1, length(?)) = ?");
        args.push(SqlValue::Text(a.clone()));
        args.push(SqlValue::Text(a.clone()));
    }
    if let Some(ns) = &f.namespace {
        sql.push_str(" AND namespace = ?");
        args.push(SqlValue::Text(ns.clone()));
    }
    if let Some(t) = f.since_ms {
        sql.push_str(" AND at_ms >= ?");
        args.push(SqlValue::Integer(t));
    }
    if let Some(t) = f.until_ms {
        sql.push_str(" AND at_ms < ?");
        args.push(SqlValue::Integer(t));
    }
    sql.push_str(" ORDER BY seq LIMIT ?");
    args.push(SqlValue::Integer(limit as i64));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_and_then(params_from_iter(args), audit_row)?;
    rows.collect()
}

pub(super) fn put_secrets(conn: &mut Connection, rows: &[SecretRow]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut st = tx.prepare_cached(
            "INSERT OR REPLACE INTO secrets (namespace, name, key_id, nonce, ciphertext, updated_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in rows {
            st.execute(params![
                r.namespace,
                r.name,
                r.key_id,
                r.nonce,
                r.ciphertext,
                r.updated_ms
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn secrets(conn: &Connection) -> Result<Vec<SecretRow>> {
    query_all(
        conn,
        "SELECT namespace, name, key_id, nonce, ciphertext, updated_ms FROM secrets ORDER BY namespace, name",
        [],
        |r| {
            Ok(SecretRow {
                namespace: r.get(0)?,
                name: r.get(1)?,
                key_id: r.get(2)?,
                nonce: r.get(3)?,
                ciphertext: r.get(4)?,
                updated_ms: r.get(5)?,
            })
        },
    )
}

pub(super) fn delete_secret(conn: &mut Connection, namespace: &str, name: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM secrets WHERE namespace = ?1 AND name = ?2")?
        .execute(params![namespace, name])?
        == 1)
}

/// Where a stored payload is: its table, its row, its column. The sealing context is built from
/// this by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadAt {
    Instance { id: String, field: &'static str },
    History { id: String, seq: i64 },
    Work { id: String, effect: u64 },
    Event { id: i64 },
}

/// Rewrites every payload column through `f` (None: leave the row as it is), a thousand rows
/// per transaction; returns how many were rewritten.
pub(super) fn rewrite_payloads(
    conn: &mut Connection,
    f: &dyn Fn(&PayloadAt, &serde_json::Value) -> Option<serde_json::Value>,
) -> Result<u64> {
    let mut n = 0u64;
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
    // (select, update) per column; rows are read in full first (one table at a time).
    let mut jobs: Vec<(PayloadAt, String)> = Vec::new();
    {
        let mut st = conn.prepare("SELECT id, input, output, error FROM instances")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        for row in rows {
            let (id, input, output, error) = row?;
            jobs.push((
                PayloadAt::Instance {
                    id: id.clone(),
                    field: "input",
                },
                input,
            ));
            if let Some(o) = output {
                jobs.push((
                    PayloadAt::Instance {
                        id: id.clone(),
                        field: "output",
                    },
                    o,
                ));
            }
            if let Some(e) = error {
                jobs.push((PayloadAt::Instance { id, field: "error" }, e));
            }
        }
    }
    {
        let mut st = conn.prepare("SELECT instance_id, seq, data FROM history")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (id, seq, data) = row?;
            jobs.push((PayloadAt::History { id, seq }, data));
        }
    }
    {
        let mut st = conn.prepare("SELECT instance_id, effect_id, effect FROM work")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (id, effect, e) = row?;
            jobs.push((
                PayloadAt::Work {
                    id,
                    effect: effect as u64,
                },
                e,
            ));
        }
    }
    {
        let mut st = conn.prepare("SELECT id, event FROM events")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, e) = row?;
            jobs.push((PayloadAt::Event { id }, e));
        }
    }
    for chunk in jobs.chunks(1000) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (at, text) in chunk {
            let Some(v) = parse(text) else { continue };
            let Some(new) = f(at, &v) else { continue };
            let new = new.to_string();
            match at {
                PayloadAt::Instance { id, field } => {
                    let sql = match *field {
                        "input" => "UPDATE instances SET input = ?2 WHERE id = ?1",
                        "output" => "UPDATE instances SET output = ?2 WHERE id = ?1",
                        _ => "UPDATE instances SET error = ?2 WHERE id = ?1",
                    };
                    tx.execute(sql, params![id, new])?;
                }
                PayloadAt::History { id, seq } => {
                    tx.execute(
                        "UPDATE history SET data = ?3 WHERE instance_id = ?1 AND seq = ?2",
                        params![id, seq, new],
                    )?;
                }
                PayloadAt::Work { id, effect } => {
                    tx.execute(
                        "UPDATE work SET effect = ?3 WHERE instance_id = ?1 AND effect_id = ?2",
                        params![id, *effect as i64, new],
                    )?;
                }
                PayloadAt::Event { id } => {
                    tx.execute(
                        "UPDATE events SET event = ?2 WHERE id = ?1",
                        params![id, new],
                    )?;
                }
            }
            n += 1;
        }
        tx.commit()?;
    }
    Ok(n)
}

pub(super) fn task_stats(
    conn: &Connection,
    namespace: &str,
    name: &str,
) -> Result<Vec<crate::TaskStatsRow>> {
    query_all(
        conn,
        "SELECT namespace, name, version, task, data, updated_ms FROM task_stats \
         WHERE namespace = ?1 AND name = ?2 ORDER BY version, task",
        params![namespace, name],
        |r| {
            let text: String = r.get(4)?;
            Ok(crate::TaskStatsRow {
                namespace: r.get(0)?,
                name: r.get(1)?,
                version: r.get(2)?,
                task: r.get(3)?,
                data: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                updated_ms: r.get(5)?,
            })
        },
    )
}

pub(super) fn merge_task_stats(
    conn: &mut Connection,
    deltas: &[crate::TaskStatsRow],
    merge: &crate::MergeFn,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for d in deltas {
        let old: Option<String> = tx
            .prepare_cached(
                "SELECT data FROM task_stats WHERE namespace = ?1 AND name = ?2 AND version = ?3 AND task = ?4",
            )?
            .query_row(params![d.namespace, d.name, d.version, d.task], |r| r.get(0))
            .optional()?;
        let data = match old.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
            Some(old) => merge(&old, &d.data),
            None => d.data.clone(),
        };
        tx.prepare_cached(
            "INSERT OR REPLACE INTO task_stats (namespace, name, version, task, data, updated_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            d.namespace,
            d.name,
            d.version,
            d.task,
            data.to_string(),
            d.updated_ms
        ])?;
    }
    tx.commit()?;
    Ok(())
}

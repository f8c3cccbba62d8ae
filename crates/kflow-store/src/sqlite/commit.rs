//! Applying one commit of a batch: the instance row, its history, work rows, events,
//! idempotency keys and audit entries, with the checks that keep a history continuous.
//! The batch's transaction is opened by `Store::apply` (queries.rs).

use rusqlite::{Connection, params};

use super::mapping::{context, effect_key, to_json};
use super::queries::last_seq;
use crate::{Commit, Result, StoreError};

/// One commit, inside the batch's transaction. Any error aborts the whole batch.
/// Applies one commit. `known` holds the last history seq of instances this store committed
/// before; `batch` those of this batch so far, and learns this commit's.
pub(super) fn apply_commit(
    conn: &Connection,
    c: &Commit,
    known: &std::collections::HashMap<String, i64>,
    batch: &mut std::collections::HashMap<String, i64>,
) -> Result<()> {
    let id = c.instance_id.as_str();
    if let Some(inst) = &c.create {
        if inst.id != c.instance_id {
            return Err(StoreError::Corrupt(format!(
                "the commit of instance {id} creates instance {}",
                inst.id
            )));
        }
        let output = inst.output.as_ref().map(to_json).transpose()?;
        let error = inst.error.as_ref().map(to_json).transpose()?;
        conn.prepare_cached(concat!(
            "INSERT INTO instances (",
            instance_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ))?
        .execute(params![
            inst.id,
            inst.namespace,
            inst.name,
            inst.version,
            inst.status.as_str(),
            inst.created_ms,
            inst.updated_ms,
            to_json(&inst.input)?,
            output,
            error,
            inst.attention,
        ])
        .map_err(context(|| format!("creating instance {id}")))?;
    }

    if let Some(first) = c.history.first() {
        let last = match batch.get(id).or_else(|| known.get(id)) {
            Some(n) => *n,
            // A new instance has no history yet (its row was just inserted).
            None if c.create.is_some() => 0,
            None => last_seq(conn, id)?,
        };
        if first.seq != last + 1 {
            return Err(StoreError::Corrupt(format!(
                "instance {id}: history seq {} does not follow the last stored seq {last} (expected {}); \
                 was this commit applied twice?",
                first.seq,
                last + 1
            )));
        }
        let mut insert = conn.prepare_cached(
            "INSERT INTO history (instance_id, seq, time_ms, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (expected, ev) in (last + 1..).zip(&c.history) {
            if ev.seq != expected {
                return Err(StoreError::Corrupt(format!(
                    "instance {id}: history seq {} follows seq {} in the same commit (expected {expected})",
                    ev.seq,
                    expected - 1
                )));
            }
            insert
                .execute(params![id, ev.seq, ev.time_ms, ev.kind, to_json(&ev.data)?])
                .map_err(context(|| {
                    format!("instance {id}: appending history seq {}", ev.seq)
                }))?;
        }
        batch.insert(id.to_string(), last + c.history.len() as i64);
    }

    if !c.add_work.is_empty() {
        let mut insert = conn.prepare_cached(
            "INSERT OR REPLACE INTO work (instance_id, effect_id, task, kind, due_ms, attempts, effect) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for w in &c.add_work {
            if w.instance_id != c.instance_id {
                return Err(StoreError::Corrupt(format!(
                    "the commit of instance {id} adds work {} of instance {}",
                    w.effect_id, w.instance_id
                )));
            }
            insert
                .execute(params![
                    id,
                    effect_key(w.effect_id),
                    w.task,
                    w.kind,
                    w.due_ms,
                    w.attempts,
                    to_json(&w.effect)?
                ])
                .map_err(context(|| {
                    format!("instance {id}: adding work {}", w.effect_id)
                }))?;
        }
    }

    if !c.remove_work.is_empty() {
        let mut delete =
            conn.prepare_cached("DELETE FROM work WHERE instance_id = ?1 AND effect_id = ?2")?;
        for effect_id in &c.remove_work {
            delete.execute(params![id, effect_key(*effect_id)])?;
        }
    }

    if c.clear_work {
        conn.prepare_cached("DELETE FROM work WHERE instance_id = ?1")?
            .execute(params![id])?;
    }

    if let Some(k) = &c.idempotency {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (namespace, key, request_hash, instance_id, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![k.namespace, k.key, k.request_hash, k.instance_id, k.expires_ms])
        .map_err(context(|| format!("instance {id}: recording its idempotency key")))?;
    }

    if !c.processed_events.is_empty() {
        let mut mark = conn.prepare_cached("UPDATE events SET processed = 1 WHERE id = ?1")?;
        for e in &c.processed_events {
            mark.execute(params![e])?;
        }
    }

    if let Some((status, output, error)) = &c.status {
        let output = output.as_ref().map(to_json).transpose()?;
        let error = error.as_ref().map(to_json).transpose()?;
        let changed = conn
            .prepare_cached("UPDATE instances SET status = ?2, output = ?3, error = ?4, updated_ms = ?5 WHERE id = ?1")?
            .execute(params![id, status.as_str(), output, error, c.now_ms])?;
        if changed == 0 {
            return Err(StoreError::Db(format!(
                "cannot set the status of instance {id}: no such instance"
            )));
        }
    }
    Ok(())
}

//! The [`Store`] implementation: SQL and row mapping.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};
use serde_json::Value;

use super::SqliteStore;
use super::mapping::*;
use crate::{
    Commit, Definition, HistoryEvent, IdempotencyKey, Instance, InstanceFilter, Page,
    PutDefinition, Result, ScheduleRow, Store, StoreError, WorkItem, cursor, semver,
};

// `CROSS JOIN` keeps SQLite from reordering the join: these walk the work indexes in the
// wanted order and stop after LIMIT rows, instead of collecting the work of every running
// instance and sorting it.

/// Work rows due by ?1, in (due_ms, instance_id, effect_id) order. Read when the engine starts
/// (recovery), where it needs every call in flight anyway: a scan of the table.
pub(super) const DUE_WORK: &str = concat!(
    "SELECT ",
    work_columns!(),
    " FROM work w CROSS JOIN instances i ON i.id = w.instance_id",
    " WHERE w.due_ms <= ?1 AND w.kind <> 'listen' AND i.status = 'running' AND i.attention IS NULL",
    " ORDER BY w.due_ms, w.instance_id, w.effect_id LIMIT ?2"
);

pub(super) const DUE_TIMERS: &str = concat!(
    "SELECT ",
    work_columns!(),
    " FROM work w CROSS JOIN instances i ON i.id = w.instance_id",
    " WHERE w.kind = 'timer' AND w.due_ms <= ?1 AND i.status = 'running' AND i.attention IS NULL",
    " ORDER BY w.due_ms LIMIT ?2"
);

/// The `work_timers` index from the earliest timer, up to the first one of a running instance.
pub(super) const NEXT_TIMER: &str = "SELECT w.due_ms FROM work w CROSS JOIN instances i ON i.id = w.instance_id \
     WHERE w.kind = 'timer' AND i.status = 'running' AND i.attention IS NULL ORDER BY w.due_ms LIMIT 1";

/// The earliest fire of the schedules that are not paused: the `schedules_next` index.
pub(super) const NEXT_SCHEDULE_FIRE: &str =
    "SELECT MIN(next_fire_ms) FROM schedules WHERE paused = 0 AND next_fire_ms IS NOT NULL";

/// The last history seq of ?1 (no row: 0): one probe of the primary-key index, however long the
/// history is.
pub(super) const LAST_SEQ: &str =
    "SELECT seq FROM history WHERE instance_id = ?1 ORDER BY seq DESC LIMIT 1";

pub(super) fn last_seq(conn: &Connection, id: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached(LAST_SEQ)?
        .query_row([id], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Most rows a page of instances holds.
const MAX_PAGE: u32 = 1000;

/// The `list_instances` query (rows after the cursor's, `limit` of them) and its parameters.
pub(super) fn list_instances_sql(
    filter: &InstanceFilter,
    after: Option<(i64, String)>,
    limit: u32,
) -> (String, Vec<SqlValue>) {
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    let text = |s: &String| SqlValue::Text(s.clone());
    if let Some(ns) = &filter.namespace {
        conds.push("namespace = ?");
        args.push(text(ns));
    }
    let within;
    if let Some(set) = &filter.within {
        within = if set.is_empty() {
            "0".to_string()
        } else {
            format!("namespace IN ({})", vec!["?"; set.len()].join(", "))
        };
        conds.push(&within);
        args.extend(set.iter().map(text));
    }
    if let Some(name) = &filter.name {
        conds.push("name = ?");
        args.push(text(name));
    }
    if let Some(version) = &filter.version {
        conds.push("version = ?");
        args.push(text(version));
    }
    if let Some(status) = filter.status {
        conds.push("status = ?");
        args.push(SqlValue::Text(status.as_str().to_string()));
    }
    if let Some(from) = filter.from_ms {
        conds.push("created_ms >= ?");
        args.push(SqlValue::Integer(from));
    }
    if let Some(to) = filter.to_ms {
        conds.push("created_ms < ?");
        args.push(SqlValue::Integer(to));
    }
    if let Some((ms, id)) = after {
        conds.push("(created_ms, id) < (?, ?)");
        args.push(SqlValue::Integer(ms));
        args.push(SqlValue::Text(id));
    }
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    args.push(SqlValue::Integer(i64::from(limit)));
    let sql = format!(
        concat!(
            "SELECT ",
            instance_columns!(),
            " FROM instances{} ORDER BY created_ms DESC, id DESC LIMIT ?"
        ),
        clause
    );
    (sql, args)
}

impl Store for SqliteStore {
    fn put_definition(&self, def: &Definition) -> Result<PutDefinition> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .prepare_cached("SELECT hash FROM definitions WHERE namespace = ?1 AND name = ?2 AND version = ?3")?
                .query_row(params![def.namespace, def.name, def.version], |row| row.get(0))
                .optional()?;
            let outcome = match existing {
                Some(hash) if hash == def.hash => PutDefinition::Unchanged,
                Some(hash) => PutDefinition::Conflict { existing_hash: hash },
                None => {
                    tx.prepare_cached(concat!(
                        "INSERT INTO definitions (",
                        definition_columns!(),
                        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    ))?
                    .execute(params![
                        def.namespace,
                        def.name,
                        def.version,
                        def.hash,
                        def.deprecated,
                        def.created_ms,
                        def.source
                    ])?;
                    PutDefinition::Created
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn get_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Definition>> {
        self.read(|conn| {
            let version = match version {
                Some(v) => v.to_string(),
                None => {
                    // Only the keys (the primary-key index covers them), never the sources.
                    let versions: Vec<String> = query_all(
                        conn,
                        "SELECT version FROM definitions WHERE namespace = ?1 AND name = ?2",
                        params![namespace, name],
                        |row| Ok(row.get(0)?),
                    )?;
                    match semver::latest(versions.iter().map(String::as_str)) {
                        Some(v) => v.to_string(),
                        None => return Ok(None),
                    }
                }
            };
            query_opt(
                conn,
                concat!(
                    "SELECT ",
                    definition_columns!(),
                    " FROM definitions WHERE namespace = ?1 AND name = ?2 AND version = ?3"
                ),
                params![namespace, name, version],
                definition_row,
            )
        })
    }

    fn list_definitions(&self, namespace: Option<&str>) -> Result<Vec<Definition>> {
        let mut defs = self.read(|conn| match namespace {
            Some(ns) => query_all(
                conn,
                concat!(
                    "SELECT ",
                    definition_columns!(),
                    " FROM definitions WHERE namespace = ?1"
                ),
                [ns],
                definition_row,
            ),
            None => query_all(
                conn,
                concat!("SELECT ", definition_columns!(), " FROM definitions"),
                [],
                definition_row,
            ),
        })?;
        semver::sort_definitions(&mut defs);
        Ok(defs)
    }

    fn set_deprecated(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        deprecated: bool,
    ) -> Result<bool> {
        self.write(|conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE definitions SET deprecated = ?4 WHERE namespace = ?1 AND name = ?2 AND version = ?3",
                )?
                .execute(params![namespace, name, version, deprecated])?;
            Ok(changed > 0)
        })
    }

    fn apply(&self, commits: &[Commit]) -> Result<()> {
        if commits.is_empty() {
            return Ok(());
        }
        self.write(|conn| {
            // Dropping the transaction on an error rolls the whole batch back, and what the
            // batch taught about last seqs is dropped with it.
            let mut known = self.last_seqs.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = std::collections::HashMap::new();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for commit in commits {
                super::commit::apply_commit(&tx, commit, &known, &mut batch)?;
            }
            let audit: Vec<crate::AuditEntry> = commits
                .iter()
                .flat_map(|c| c.audit.iter().cloned())
                .collect();
            if !audit.is_empty() {
                super::security::append_audit_in(&tx, &audit)?;
            }
            tx.commit()?;
            self.reset_wal(conn);
            if known.len() + batch.len() > super::LAST_SEQS {
                known.clear();
            }
            known.extend(batch);
            Ok(())
        })
    }

    fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        self.read(|conn| {
            query_opt(
                conn,
                concat!(
                    "SELECT ",
                    instance_columns!(),
                    " FROM instances WHERE id = ?1"
                ),
                [id],
                instance_row,
            )
        })
    }

    fn instance_ids_matching(&self, prefix: &str, limit: u32) -> Result<Vec<String>> {
        // A range of the primary key: `id >= prefix AND id < prefix with its last character
        // raised`, so that no row outside the prefix is read.
        let mut upper: Vec<char> = prefix.chars().collect();
        let bumped = upper
            .pop()
            .and_then(|c| char::from_u32(c as u32 + 1))
            .map(|c| {
                upper.push(c);
                upper.into_iter().collect::<String>()
            });
        let (lo, hi) = (
            prefix.to_string(),
            bumped.unwrap_or_else(|| "\u{10FFFF}".into()),
        );
        self.read(|conn| {
            let by_prefix = query_all(
                conn,
                "SELECT id FROM instances WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3",
                rusqlite::params![lo, hi, limit],
                |r| Ok(r.get::<_, String>(0)?),
            )?;
            if !by_prefix.is_empty() {
                return Ok(by_prefix);
            }
            // A suffix reads the whole key index: the short id is matched literally (`substr`,
            // not `LIKE`, so no character of it is a pattern).
            query_all(
                conn,
                "SELECT id FROM instances WHERE substr(id, -length(?1)) = ?1 ORDER BY id LIMIT ?2",
                rusqlite::params![prefix, limit],
                |r| Ok(r.get::<_, String>(0)?),
            )
        })
    }

    fn list_instances(
        &self,
        filter: &InstanceFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page> {
        let after = cursor.map(cursor::decode).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);
        // One row more than the page tells whether another page follows.
        let (sql, args) = list_instances_sql(filter, after, limit + 1);
        let mut items =
            self.read(|conn| query_all(conn, &sql, params_from_iter(args), instance_row))?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items
                .last()
                .map(|last| cursor::encode(last.created_ms, &last.id))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    fn history_of_kinds(&self, id: &str, kinds: &[&str]) -> Result<Vec<HistoryEvent>> {
        self.read(|conn| {
            // The kind is compared in SQL; only matching rows' data is parsed.
            let mut out = Vec::new();
            let mut stmt = conn.prepare_cached(
                "SELECT seq, time_ms, kind, data FROM history WHERE instance_id = ?1 ORDER BY seq",
            )?;
            let mut rows = stmt.query(params![id])?;
            while let Some(row) = rows.next()? {
                let kind: String = row.get(2)?;
                if kinds.contains(&kind.as_str()) {
                    out.push(history_row(row)?);
                }
            }
            Ok(out)
        })
    }

    fn history(&self, id: &str, after: i64, limit: u32) -> Result<Vec<HistoryEvent>> {
        self.read(|conn| {
            query_all(
                conn,
                "SELECT seq, time_ms, kind, data FROM history WHERE instance_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                params![id, after, limit],
                history_row,
            )
        })
    }

    fn last_seq(&self, id: &str) -> Result<i64> {
        self.read(|conn| last_seq(conn, id))
    }

    fn work_of(&self, id: &str) -> Result<Vec<WorkItem>> {
        self.read(|conn| {
            query_all(
                conn,
                concat!(
                    "SELECT ",
                    work_columns!(),
                    " FROM work w WHERE w.instance_id = ?1 ORDER BY w.effect_id"
                ),
                [id],
                work_row,
            )
        })
    }

    fn due_work(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>> {
        self.read(|conn| query_all(conn, DUE_WORK, params![until_ms, limit], work_row))
    }

    fn add_event(&self, event: &Value, received_ms: i64) -> Result<i64> {
        let text = to_json(event)?;
        self.write(|conn| {
            conn.prepare_cached("INSERT INTO events (received_ms, event) VALUES (?1, ?2)")?
                .execute(params![received_ms, text])?;
            Ok(conn.last_insert_rowid())
        })
    }

    fn add_event_once(&self, event: &Value, dedup: &str, received_ms: i64) -> Result<Option<i64>> {
        let text = to_json(event)?;
        self.write(|conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO events (received_ms, event, dedup) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (dedup) WHERE dedup IS NOT NULL DO NOTHING",
                )?
                .execute(params![received_ms, text, dedup])?;
            Ok((n == 1).then(|| conn.last_insert_rowid()))
        })
    }

    fn pending_events(&self, limit: u32) -> Result<Vec<(i64, Value)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, event FROM events WHERE processed = 0 ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (id, text) = r?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("event {id}: {e}")))?;
                out.push((id, v));
            }
            Ok(out)
        })
    }

    fn due_timers(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>> {
        self.read(|conn| query_all(conn, DUE_TIMERS, params![until_ms, limit], work_row))
    }

    fn next_timer(&self) -> Result<Option<i64>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(NEXT_TIMER)?
                .query_row([], |row| row.get(0))
                .optional()?)
        })
    }

    fn mark_attempt(&self, instance_id: &str, effect_id: u64) -> Result<Option<u32>> {
        let attempts: Option<i64> = self.write(|conn| {
            Ok(conn
                .prepare_cached(
                    "UPDATE work SET attempts = attempts + 1 WHERE instance_id = ?1 AND effect_id = ?2 RETURNING attempts",
                )?
                .query_row(params![instance_id, effect_key(effect_id)], |row| row.get(0))
                .optional()?)
        })?;
        attempts
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    StoreError::Corrupt(format!(
                        "work {instance_id}/{effect_id}: attempts {n} out of range"
                    ))
                })
            })
            .transpose()
    }

    fn subscriptions(&self) -> Result<Vec<WorkItem>> {
        self.read(|conn| {
            query_all(
                conn,
                concat!(
                    "SELECT ",
                    work_columns!(),
                    " FROM work w JOIN instances i ON i.id = w.instance_id",
                    " WHERE w.kind = 'listen' AND i.status = 'running' AND i.attention IS NULL ORDER BY w.instance_id, w.effect_id"
                ),
                [],
                work_row,
            )
        })
    }

    fn running_instances(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            query_all(
                conn,
                "SELECT id FROM instances WHERE status = 'running' ORDER BY created_ms, id",
                [],
                |row| Ok(row.get(0)?),
            )
        })
    }

    fn set_attention(&self, id: &str, reason: Option<&str>) -> Result<()> {
        self.write(|conn| {
            conn.prepare_cached("UPDATE instances SET attention = ?2 WHERE id = ?1")?
                .execute(params![id, reason])?;
            Ok(())
        })
    }

    fn idempotency_key(
        &self,
        namespace: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<IdempotencyKey>> {
        self.read(|conn| {
            query_opt(
                conn,
                "SELECT namespace, key, request_hash, instance_id, expires_ms FROM idempotency \
                 WHERE namespace = ?1 AND key = ?2 AND expires_ms > ?3",
                params![namespace, key, now_ms],
                |row| {
                    Ok(IdempotencyKey {
                        namespace: row.get(0)?,
                        key: row.get(1)?,
                        request_hash: row.get(2)?,
                        instance_id: row.get(3)?,
                        expires_ms: row.get(4)?,
                    })
                },
            )
        })
    }

    fn prune_idempotency_keys(&self, now_ms: i64, limit: u32) -> Result<usize> {
        self.write(|conn| {
            Ok(conn
                .prepare_cached(
                    "DELETE FROM idempotency WHERE rowid IN \
                     (SELECT rowid FROM idempotency WHERE expires_ms <= ?1 LIMIT ?2)",
                )?
                .execute(params![now_ms, limit])?)
        })
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.read(|conn| {
            query_all(
                conn,
                concat!(
                    "SELECT ",
                    schedule_columns!(),
                    " FROM schedules ORDER BY namespace, name"
                ),
                [],
                schedule_row,
            )
        })
    }

    fn get_schedule(&self, namespace: &str, name: &str) -> Result<Option<ScheduleRow>> {
        self.read(|conn| {
            query_opt(
                conn,
                concat!(
                    "SELECT ",
                    schedule_columns!(),
                    " FROM schedules WHERE namespace = ?1 AND name = ?2"
                ),
                params![namespace, name],
                schedule_row,
            )
        })
    }

    fn put_schedule(&self, row: &ScheduleRow) -> Result<bool> {
        let state = to_json(&row.state)?;
        self.write(|conn| {
            let changed = if row.revision == 0 {
                conn.prepare_cached(concat!(
                    "INSERT INTO schedules (",
                    schedule_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8) ON CONFLICT (namespace, name) DO NOTHING"
                ))?
                .execute(params![
                    row.namespace,
                    row.name,
                    row.version,
                    row.next_fire_ms,
                    row.last_fire_ms,
                    row.paused,
                    row.updated_ms,
                    state
                ])?
            } else {
                conn.prepare_cached(
                    "UPDATE schedules SET version = ?3, next_fire_ms = ?4, last_fire_ms = ?5, paused = ?6, \
                     revision = revision + 1, updated_ms = ?7, state = ?8 \
                     WHERE namespace = ?1 AND name = ?2 AND revision = ?9",
                )?
                .execute(params![
                    row.namespace,
                    row.name,
                    row.version,
                    row.next_fire_ms,
                    row.last_fire_ms,
                    row.paused,
                    row.updated_ms,
                    state,
                    row.revision
                ])?
            };
            Ok(changed == 1)
        })
    }

    fn delete_schedule(&self, namespace: &str, name: &str) -> Result<bool> {
        self.write(|conn| {
            let changed = conn
                .prepare_cached("DELETE FROM schedules WHERE namespace = ?1 AND name = ?2")?
                .execute(params![namespace, name])?;
            Ok(changed > 0)
        })
    }

    fn set_schedule_paused(
        &self,
        namespace: &str,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<Option<ScheduleRow>> {
        self.write(|conn| {
            query_opt(
                conn,
                concat!(
                    "UPDATE schedules SET paused = ?3, revision = revision + 1, updated_ms = ?4 ",
                    "WHERE namespace = ?1 AND name = ?2 RETURNING ",
                    schedule_columns!()
                ),
                params![namespace, name, paused, now_ms],
                schedule_row,
            )
        })
    }

    fn next_schedule_fire(&self) -> Result<Option<i64>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(NEXT_SCHEDULE_FIRE)?
                .query_row([], |row| row.get(0))?)
        })
    }

    fn put_token(&self, token: &crate::TokenRow) -> Result<bool> {
        self.write(|conn| super::security::put_token(conn, token))
    }

    fn tokens(&self) -> Result<Vec<crate::TokenRow>> {
        self.read(super::security::tokens)
    }

    fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> Result<Option<crate::TokenRow>> {
        self.write(|conn| super::security::revoke_token(conn, id_or_name, now_ms))
    }

    fn append_audit(&self, entries: &[crate::AuditEntry]) -> Result<Option<crate::AuditRow>> {
        self.write(|conn| super::security::append_audit(conn, entries))
    }

    fn audit(
        &self,
        filter: &crate::AuditFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::AuditRow>> {
        self.read(|conn| super::security::audit(conn, filter, after, limit))
    }

    fn task_stats(&self, namespace: &str, name: &str) -> Result<Vec<crate::TaskStatsRow>> {
        self.read(|conn| super::security::task_stats(conn, namespace, name))
    }

    fn merge_task_stats(
        &self,
        deltas: &[crate::TaskStatsRow],
        merge: &crate::MergeFn,
    ) -> Result<()> {
        self.write(|conn| super::security::merge_task_stats(conn, deltas, merge))
    }

    fn put_secrets(&self, rows: &[crate::SecretRow]) -> Result<()> {
        self.write(|conn| super::security::put_secrets(conn, rows))
    }

    fn secrets(&self) -> Result<Vec<crate::SecretRow>> {
        self.read(super::security::secrets)
    }

    fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool> {
        self.write(|conn| super::security::delete_secret(conn, namespace, name))
    }

    fn fire_alert(&self, alert: &crate::AlertRow) -> Result<bool> {
        self.write(|conn| super::alerts::fire(conn, alert))
    }

    fn due_alerts(&self, now_ms: i64, limit: u32) -> Result<Vec<crate::AlertRow>> {
        self.read(|conn| super::alerts::due(conn, now_ms, limit))
    }

    fn alert_attempted(&self, id: &str, outcome: crate::AlertAttempt) -> Result<()> {
        self.write(|conn| super::alerts::attempted(conn, id, &outcome))
    }

    fn clear_alert(&self, rule: &str, key: &str) -> Result<bool> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.write(|conn| super::alerts::clear(conn, rule, key, now))
    }

    fn alerts(&self, before_ms: Option<i64>, limit: u32) -> Result<Vec<crate::AlertRow>> {
        self.read(|conn| super::alerts::list(conn, before_ms, limit))
    }

    fn finished_before(&self, before_ms: i64, limit: u32) -> Result<Vec<Instance>> {
        self.read(|conn| super::retention::finished_before(conn, before_ms, limit))
    }

    fn delete_instances(&self, ids: &[String]) -> Result<usize> {
        let n = self.write(|conn| super::retention::delete_instances(conn, ids))?;
        let mut known = self.last_seqs.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            known.remove(id);
        }
        Ok(n)
    }

    fn prune_events(&self, before_ms: i64, limit: u32) -> Result<usize> {
        self.write(|conn| super::retention::prune_events(conn, before_ms, limit))
    }

    fn table_stats(&self) -> Result<Vec<crate::TableStats>> {
        let wal = self.path.as_ref().and_then(|p| {
            let mut w = p.as_os_str().to_owned();
            w.push("-wal");
            std::fs::metadata(w).ok().map(|m| m.len() as i64)
        });
        self.read(|conn| super::retention::table_stats(conn, wal))
    }
}

//! The [`Store`] implementation: statements and row mapping. Commits, the audit chain and the
//! other multi-statement writes are in `writes.rs`.

use kflow_store::{
    AlertAttempt, AlertRow, AuditEntry, AuditFilter, AuditRow, Commit, Definition, HistoryEvent,
    IdempotencyKey, Instance, InstanceFilter, Page, PutDefinition, Result, ScheduleRow, SecretRow,
    Store, StoreError, TokenRow, WorkItem, cursor, semver,
};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::PgStore;
use crate::mapping::*;
use crate::pool::Conn;

/// Most rows a page of instances holds.
/// In a cluster, the engine's scans see only this node's instances (`$3`, or `$1` for MINE1).
const MINE: &str = "AND ($3::text IS NULL OR i.owner = $3)";
const MINE1: &str = "AND ($1::text IS NULL OR i.owner = $1)";

const MAX_PAGE: u32 = 1000;

/// The `list_instances` statement (rows after the cursor's, `limit` of them) and its arguments.
fn list_instances_sql(
    filter: &InstanceFilter,
    after: Option<(i64, String)>,
    limit: u32,
) -> (String, Vec<Box<dyn ToSql + Sync>>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let arg = |args: &mut Vec<Box<dyn ToSql + Sync>>, v: Box<dyn ToSql + Sync>| {
        args.push(v);
        format!("${}", args.len())
    };
    if let Some(ns) = &filter.namespace {
        let p = arg(&mut args, Box::new(ns.clone()));
        conds.push(format!("namespace = {p}"));
    }
    if let Some(set) = &filter.within {
        let p = arg(&mut args, Box::new(set.clone()));
        conds.push(format!("namespace = ANY({p})"));
    }
    if let Some(name) = &filter.name {
        let p = arg(&mut args, Box::new(name.clone()));
        conds.push(format!("name = {p}"));
    }
    if let Some(version) = &filter.version {
        let p = arg(&mut args, Box::new(version.clone()));
        conds.push(format!("version = {p}"));
    }
    if let Some(status) = filter.status {
        let p = arg(&mut args, Box::new(status.as_str().to_string()));
        conds.push(format!("status = {p}"));
    }
    if let Some(from) = filter.from_ms {
        let p = arg(&mut args, Box::new(from));
        conds.push(format!("created_ms >= {p}"));
    }
    if let Some(to) = filter.to_ms {
        let p = arg(&mut args, Box::new(to));
        conds.push(format!("created_ms < {p}"));
    }
    if let Some((ms, id)) = after {
        let a = arg(&mut args, Box::new(ms));
        let b = arg(&mut args, Box::new(id));
        conds.push(format!("(created_ms, id) < ({a}, {b})"));
    }
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let l = arg(&mut args, Box::new(i64::from(limit)));
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances{clause} ORDER BY created_ms DESC, id DESC LIMIT {l}"
    );
    (sql, args)
}

fn refs(args: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store for PgStore {
    fn put_definition(&self, def: &Definition) -> Result<PutDefinition> {
        self.write(|c| crate::writes::put_definition(c, def))
    }

    fn get_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Definition>> {
        self.read(|c| {
            let version = match version {
                Some(v) => v.to_string(),
                None => {
                    let rows = c.query(
                        "SELECT version FROM definitions WHERE namespace = $1 AND name = $2",
                        &[&namespace, &name],
                    )?;
                    let versions: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    match semver::latest(versions.iter().map(String::as_str)) {
                        Some(v) => v.to_string(),
                        None => return Ok(None),
                    }
                }
            };
            c.query_opt(
                &format!(
                    "SELECT {DEFINITION_COLUMNS} FROM definitions WHERE namespace = $1 AND name = $2 AND version = $3"
                ),
                &[&namespace, &name, &version],
            )?
            .as_ref()
            .map(definition_row)
            .transpose()
        })
    }

    fn list_definitions(&self, namespace: Option<&str>) -> Result<Vec<Definition>> {
        let mut defs = self.read(|c| {
            let rows = match namespace {
                Some(ns) => c.query(
                    &format!("SELECT {DEFINITION_COLUMNS} FROM definitions WHERE namespace = $1"),
                    &[&ns],
                )?,
                None => c.query(
                    &format!("SELECT {DEFINITION_COLUMNS} FROM definitions"),
                    &[],
                )?,
            };
            all(rows, definition_row)
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
        self.write(|c| {
            Ok(c.execute(
                "UPDATE definitions SET deprecated = $4 WHERE namespace = $1 AND name = $2 AND version = $3",
                &[&namespace, &name, &version, &deprecated],
            )? > 0)
        })
    }

    fn apply(&self, commits: &[Commit]) -> Result<()> {
        crate::writes::apply(self, commits)
    }

    fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(instance_row)
            .transpose()
        })
    }

    fn instance_ids_matching(&self, prefix: &str, n: u32) -> Result<Vec<String>> {
        let mut upper: Vec<char> = prefix.chars().collect();
        let hi = upper
            .pop()
            .and_then(|c| char::from_u32(c as u32 + 1))
            .map(|c| {
                upper.push(c);
                upper.into_iter().collect::<String>()
            })
            .unwrap_or_else(|| "\u{10FFFF}".into());
        let n = limit(n);
        self.read(|c| {
            let rows = c.query(
                "SELECT id FROM instances WHERE id >= $1 AND id < $2 ORDER BY id LIMIT $3",
                &[&prefix, &hi, &n],
            )?;
            if !rows.is_empty() {
                return Ok(rows.iter().map(|r| r.get(0)).collect());
            }
            let rows = c.query(
                "SELECT id FROM instances WHERE right(id, length($1)) = $1 ORDER BY id LIMIT $2",
                &[&prefix, &n],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn list_instances(
        &self,
        filter: &InstanceFilter,
        cursor: Option<&str>,
        n: u32,
    ) -> Result<Page> {
        let after = cursor.map(cursor::decode).transpose()?;
        let n = n.clamp(1, MAX_PAGE);
        let (sql, args) = list_instances_sql(filter, after, n + 1);
        let mut items = self.read(|c| all(c.query(&sql, &refs(&args))?, instance_row))?;
        let next = if items.len() > n as usize {
            items.truncate(n as usize);
            items
                .last()
                .map(|last| cursor::encode(last.created_ms, &last.id))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    fn history(&self, id: &str, after: i64, n: u32) -> Result<Vec<HistoryEvent>> {
        let n = limit(n);
        self.read(|c| {
            all(
                c.query(
                    "SELECT seq, time_ms, kind, data FROM history WHERE instance_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&id, &after, &n],
                )?,
                history_row,
            )
        })
    }

    fn history_of_kinds(&self, id: &str, kinds: &[&str]) -> Result<Vec<HistoryEvent>> {
        let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        self.read(|c| {
            all(
                c.query(
                    "SELECT seq, time_ms, kind, data FROM history WHERE instance_id = $1 AND kind = ANY($2) ORDER BY seq",
                    &[&id, &kinds],
                )?,
                history_row,
            )
        })
    }

    fn last_seq(&self, id: &str) -> Result<i64> {
        self.read(|c| last_seq(c, id))
    }

    fn work_of(&self, id: &str) -> Result<Vec<WorkItem>> {
        self.read(|c| {
            all(
                c.query(
                    &format!(
                        "SELECT {WORK_COLUMNS} FROM work w WHERE w.instance_id = $1 ORDER BY w.effect_id"
                    ),
                    &[&id],
                )?,
                work_row,
            )
        })
    }

    fn due_work(&self, until_ms: i64, n: u32) -> Result<Vec<WorkItem>> {
        let n = limit(n);
        self.read(|c| {
            all(
                c.query(
                    &format!(
                        "SELECT {WORK_COLUMNS} FROM work w JOIN instances i ON i.id = w.instance_id \
                         WHERE w.due_ms <= $1 AND w.kind <> 'listen' AND i.status = 'running' AND i.attention IS NULL \
                         {MINE} ORDER BY w.due_ms, w.instance_id, w.effect_id LIMIT $2"
                    ),
                    &[&until_ms, &n, &self.node()],
                )?,
                work_row,
            )
        })
    }

    fn due_timers(&self, until_ms: i64, n: u32) -> Result<Vec<WorkItem>> {
        let n = limit(n);
        self.read(|c| {
            all(
                c.query(
                    &format!(
                        "SELECT {WORK_COLUMNS} FROM work w JOIN instances i ON i.id = w.instance_id \
                         WHERE w.kind = 'timer' AND w.due_ms <= $1 AND i.status = 'running' AND i.attention IS NULL \
                         {MINE} ORDER BY w.due_ms LIMIT $2"
                    ),
                    &[&until_ms, &n, &self.node()],
                )?,
                work_row,
            )
        })
    }

    fn next_timer(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_opt(
                &format!(
                    "SELECT w.due_ms FROM work w JOIN instances i ON i.id = w.instance_id \
                     WHERE w.kind = 'timer' AND i.status = 'running' AND i.attention IS NULL \
                     {MINE1} ORDER BY w.due_ms LIMIT 1"
                ),
                &[&self.node()],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn mark_attempt(&self, instance_id: &str, effect_id: u64) -> Result<Option<u32>> {
        let key = effect_id as i64;
        let n: Option<i32> = crate::writes::fenced(self, |c| {
            Ok(c.query_opt(
                "UPDATE work SET attempts = attempts + 1 WHERE instance_id = $1 AND effect_id = $2 RETURNING attempts",
                &[&instance_id, &key],
            )?
            .map(|r| r.get(0)))
        })?;
        n.map(|n| {
            u32::try_from(n).map_err(|_| {
                StoreError::Corrupt(format!(
                    "work {instance_id}/{effect_id}: attempts {n} out of range"
                ))
            })
        })
        .transpose()
    }

    fn subscriptions(&self) -> Result<Vec<WorkItem>> {
        self.read(|c| {
            all(
                c.query(
                    &format!(
                        "SELECT {WORK_COLUMNS} FROM work w JOIN instances i ON i.id = w.instance_id \
                         WHERE w.kind = 'listen' AND i.status = 'running' AND i.attention IS NULL \
                         {MINE1} ORDER BY w.instance_id, w.effect_id"
                    ),
                    &[&self.node()],
                )?,
                work_row,
            )
        })
    }

    fn running_instances(&self) -> Result<Vec<String>> {
        self.read(|c| {
            Ok(c.query(
                "SELECT id FROM instances i WHERE status = 'running' \
                 AND ($1::text IS NULL OR i.owner = $1) ORDER BY created_ms, id",
                &[&self.node()],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn set_attention(&self, id: &str, reason: Option<&str>) -> Result<()> {
        crate::writes::fenced(self, |c| {
            c.execute(
                "UPDATE instances SET attention = $2 WHERE id = $1",
                &[&id, &reason],
            )?;
            Ok(())
        })
    }

    fn idempotency_key(
        &self,
        namespace: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<IdempotencyKey>> {
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT namespace, key, request_hash, instance_id, expires_ms FROM idempotency \
                 WHERE namespace = $1 AND key = $2 AND expires_ms > $3",
                &[&namespace, &key, &now_ms],
            )?
            .map(|r| IdempotencyKey {
                namespace: r.get(0),
                key: r.get(1),
                request_hash: r.get(2),
                instance_id: r.get(3),
                expires_ms: r.get(4),
            }))
        })
    }

    fn prune_idempotency_keys(&self, now_ms: i64, n: u32) -> Result<usize> {
        let n = limit(n);
        self.write(|c| {
            Ok(c.execute(
                "DELETE FROM idempotency WHERE (namespace, key) IN \
                 (SELECT namespace, key FROM idempotency WHERE expires_ms <= $1 LIMIT $2)",
                &[&now_ms, &n],
            )? as usize)
        })
    }

    fn add_event(&self, event: &Value, received_ms: i64) -> Result<i64> {
        crate::events::add(self, event, received_ms)
    }

    fn add_event_once(&self, event: &Value, dedup: &str, received_ms: i64) -> Result<Option<i64>> {
        crate::events::add_once(self, event, dedup, received_ms)
    }

    fn pending_events(&self, n: u32) -> Result<Vec<(i64, Value)>> {
        crate::events::pending(self, n)
    }

    fn missed_events(&self, after: i64, n: u32) -> Result<Vec<(i64, Value)>> {
        crate::events::missed(self, after, n)
    }

    fn claim_slots(
        &self,
        id: &str,
        groups: &[(String, usize)],
        replacing: Option<&str>,
    ) -> Result<bool> {
        crate::slots::claim(self, id, groups, replacing)
    }

    fn is_mine(&self, id: &str) -> Result<bool> {
        crate::lease::is_mine(self, id)
    }

    fn task_stats(&self, namespace: &str, name: &str) -> Result<Vec<kflow_store::TaskStatsRow>> {
        crate::stats::task_stats(self, namespace, name)
    }

    fn merge_task_stats(
        &self,
        deltas: &[kflow_store::TaskStatsRow],
        merge: &kflow_store::MergeFn,
    ) -> Result<()> {
        crate::stats::merge(self, deltas, merge)
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.read(|c| {
            all(
                c.query(
                    &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY namespace, name"),
                    &[],
                )?,
                schedule_row,
            )
        })
    }

    fn get_schedule(&self, namespace: &str, name: &str) -> Result<Option<ScheduleRow>> {
        self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE namespace = $1 AND name = $2"
                ),
                &[&namespace, &name],
            )?
            .as_ref()
            .map(schedule_row)
            .transpose()
        })
    }

    fn put_schedule(&self, row: &ScheduleRow) -> Result<bool> {
        crate::writes::fenced(self, |c| crate::writes::put_schedule(c, row))
    }

    fn delete_schedule(&self, namespace: &str, name: &str) -> Result<bool> {
        crate::writes::fenced(self, |c| {
            Ok(c.execute(
                "DELETE FROM schedules WHERE namespace = $1 AND name = $2",
                &[&namespace, &name],
            )? > 0)
        })
    }

    fn set_schedule_paused(
        &self,
        namespace: &str,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<Option<ScheduleRow>> {
        crate::writes::fenced(self, |c| {
            c.query_opt(
                &format!(
                    "UPDATE schedules SET paused = $3, revision = revision + 1, updated_ms = $4 \
                     WHERE namespace = $1 AND name = $2 RETURNING {SCHEDULE_COLUMNS}"
                ),
                &[&namespace, &name, &paused, &now_ms],
            )?
            .as_ref()
            .map(schedule_row)
            .transpose()
        })
    }

    fn next_schedule_fire(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT MIN(next_fire_ms) FROM schedules WHERE NOT paused AND next_fire_ms IS NOT NULL",
                &[],
            )?
            .and_then(|r| r.get(0)))
        })
    }

    fn put_token(&self, token: &TokenRow) -> Result<bool> {
        self.write(|c| crate::writes::put_token(c, token))
    }

    fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.read(|c| {
            all(
                c.query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_ms, id"),
                    &[],
                )?,
                token_row,
            )
        })
    }

    fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> Result<Option<TokenRow>> {
        self.write(|c| {
            c.query_opt(
                &format!(
                    "UPDATE tokens SET revoked_ms = $2 WHERE id = (SELECT id FROM tokens \
                     WHERE revoked_ms IS NULL AND (id = $1 OR name = $1) ORDER BY created_ms LIMIT 1) \
                     AND revoked_ms IS NULL RETURNING {TOKEN_COLUMNS}"
                ),
                &[&id_or_name, &now_ms],
            )?
            .as_ref()
            .map(token_row)
            .transpose()
        })
    }

    fn append_audit(&self, entries: &[AuditEntry]) -> Result<Option<AuditRow>> {
        if entries.is_empty() {
            return Ok(None);
        }
        self.write(|c| c.transaction(|c| crate::writes::append_audit_in(c, entries)))
    }

    fn audit(&self, f: &AuditFilter, after: i64, n: u32) -> Result<Vec<AuditRow>> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > $1");
        let mut args: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(after)];
        // `{p}` in a condition is its argument's placeholder (used twice by the prefix match).
        let mut cond = |cond: &str, v: Box<dyn ToSql + Sync>| {
            args.push(v);
            sql.push_str(&cond.replace("{p}", &format!("${}", args.len())));
        };
        if let Some(a) = &f.actor {
            cond(" AND actor = {p}", Box::new(a.clone()));
        }
        if let Some(a) = &f.action {
            cond(" AND left(action, length({p})) = {p}", Box::new(a.clone()));
        }
        if let Some(ns) = &f.namespace {
            cond(" AND namespace = {p}", Box::new(ns.clone()));
        }
        if let Some(t) = f.since_ms {
            cond(" AND at_ms >= {p}", Box::new(t));
        }
        if let Some(t) = f.until_ms {
            cond(" AND at_ms < {p}", Box::new(t));
        }
        cond(" ORDER BY seq LIMIT {p}", Box::new(i64::from(n)));
        self.read(|c| all(c.query(&sql, &refs(&args))?, audit_row))
    }

    fn put_secrets(&self, rows: &[SecretRow]) -> Result<()> {
        self.write(|c| crate::writes::put_secrets(c, rows))
    }

    fn secrets(&self) -> Result<Vec<SecretRow>> {
        self.read(|c| {
            Ok(c.query(
                "SELECT namespace, name, key_id, nonce, ciphertext, updated_ms FROM secrets ORDER BY namespace, name",
                &[],
            )?
            .iter()
            .map(|r| SecretRow {
                namespace: r.get(0),
                name: r.get(1),
                key_id: r.get(2),
                nonce: r.get(3),
                ciphertext: r.get(4),
                updated_ms: r.get(5),
            })
            .collect())
        })
    }

    fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool> {
        self.write(|c| {
            Ok(c.execute(
                "DELETE FROM secrets WHERE namespace = $1 AND name = $2",
                &[&namespace, &name],
            )? == 1)
        })
    }

    fn fire_alert(&self, alert: &AlertRow) -> Result<bool> {
        self.write(|c| crate::writes::fire_alert(c, alert))
    }

    fn due_alerts(&self, now_ms: i64, n: u32) -> Result<Vec<AlertRow>> {
        let n = limit(n);
        self.read(|c| {
            all(
                c.query(
                    &format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE next_ms IS NOT NULL AND next_ms <= $1 \
                         ORDER BY next_ms, fired_ms LIMIT $2"
                    ),
                    &[&now_ms, &n],
                )?,
                alert_row,
            )
        })
    }

    fn alert_attempted(&self, id: &str, outcome: AlertAttempt) -> Result<()> {
        self.write(|c| {
            match &outcome {
                AlertAttempt::Delivered { at_ms } => c.execute(
                    "UPDATE alerts SET delivered_ms = $2, next_ms = NULL, last_error = NULL, \
                     attempts = attempts + 1 WHERE id = $1",
                    &[&id, at_ms],
                )?,
                AlertAttempt::Failed { next_ms, error } => c.execute(
                    "UPDATE alerts SET next_ms = $2, last_error = $3, attempts = attempts + 1 WHERE id = $1",
                    &[&id, next_ms, error],
                )?,
            };
            Ok(())
        })
    }

    fn clear_alert(&self, rule: &str, key: &str) -> Result<bool> {
        let now = now_ms();
        self.write(|c| {
            Ok(c.execute(
                "UPDATE alerts SET resolved_ms = $3 WHERE rule = $1 AND key = $2 AND resolved_ms IS NULL",
                &[&rule, &key, &now],
            )? > 0)
        })
    }

    fn alerts(&self, before_ms: Option<i64>, n: u32) -> Result<Vec<AlertRow>> {
        let before = before_ms.unwrap_or(i64::MAX);
        let n = limit(n);
        self.read(|c| {
            all(
                c.query(
                    &format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE fired_ms < $1 ORDER BY fired_ms DESC, id LIMIT $2"
                    ),
                    &[&before, &n],
                )?,
                alert_row,
            )
        })
    }

    fn finished_before(&self, before_ms: i64, n: u32) -> Result<Vec<Instance>> {
        crate::retention::finished_before(self, before_ms, n)
    }

    fn delete_instances(&self, ids: &[String]) -> Result<usize> {
        crate::retention::delete_instances(self, ids)
    }

    fn prune_events(&self, before_ms: i64, n: u32) -> Result<usize> {
        crate::retention::prune_events(self, before_ms, n)
    }

    fn table_stats(&self) -> Result<Vec<kflow_store::TableStats>> {
        crate::retention::table_stats(self)
    }
}

/// The last history seq of an instance (0 when none).
pub(crate) fn last_seq(c: &mut Conn, id: &str) -> Result<i64> {
    Ok(c.query_opt(
        "SELECT seq FROM history WHERE instance_id = $1 ORDER BY seq DESC LIMIT 1",
        &[&id],
    )?
    .map_or(0, |r| r.get(0)))
}

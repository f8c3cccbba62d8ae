//! Writes of more than one statement: a batch of commits (pipelined), definitions, schedules,
//! tokens, the audit chain, secrets, alerts.
//!
//! A batch of commits is one transaction sent as one pipeline: `BEGIN`, the fence check, the
//! read of the last history seqs it needs, then every write; the answers come back together,
//! are checked (fence, continuity of every history, statuses of existing instances), and the
//! batch is committed or rolled back. Two round trips per batch, whatever its size.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use kflow_store::security::{GENESIS, chain_hash};
use kflow_store::{
    AlertRow, AuditEntry, AuditRow, Commit, Definition, PutDefinition, Result, ScheduleRow,
    SecretRow, StoreError, TokenRow,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::lease::fenced_error;
use crate::mapping::{
    ALERT_COLUMNS, AUDIT_COLUMNS, DEFINITION_COLUMNS, SCHEDULE_COLUMNS, TOKEN_COLUMNS, to_json,
};
use crate::pool::{Conn, block_on, db_error};
use crate::{LAST_SEQS, PgStore};

/// The advisory lock that orders appends to the audit chain across nodes.
const AUDIT_LOCK: i64 = 0x6b_666c_6f77_0001;

/// This node's own lease (its row in `nodes`). Sent after [`HOLD_NODE`](crate::lease::HOLD_NODE),
/// in a statement of its own: it reads the row as it is once an adoption in flight has
/// committed. (That the instances written are this node's is checked when the engine loads
/// one, see `Store::is_mine`: an instance changes owner only when its node's lease lapsed, and
/// then this check fails for that node.)
const FENCE: &str = "SELECT 1 FROM nodes WHERE id = $1 AND epoch = $2 \
     AND expires_at > clock_timestamp() AND adopted_by IS NULL";
const CREATE_INSTANCE: &str = "INSERT INTO instances (id, namespace, name, version, status, created_ms, \
     updated_ms, input, output, error, attention, owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
/// The fence and the status update of the one-round-trip path: instead of answering no row,
/// they fail (division by zero), which aborts the transaction, so that `COMMIT` can be sent in
/// the same pipeline and becomes a rollback.
const FENCE_OR_FAIL: &str = "SELECT 1 / (SELECT COUNT(*)::int FROM (SELECT 1 FROM nodes \
     WHERE id = $1 AND epoch = $2 AND expires_at > clock_timestamp() AND adopted_by IS NULL) f)";
const SET_STATUS_OR_FAIL: &str = "WITH u AS (UPDATE instances SET status = $2, output = $3, \
     error = $4, updated_ms = $5 WHERE id = $1 RETURNING 1) SELECT 1 / (SELECT COUNT(*)::int FROM u)";
const LAST_SEQS_OF: &str =
    "SELECT instance_id, MAX(seq) FROM history WHERE instance_id = ANY($1) GROUP BY instance_id";
const INSERT_HISTORY: &str = "INSERT INTO history (instance_id, seq, time_ms, kind, data) \
     SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[])";
const UPSERT_WORK: &str = "INSERT INTO work (instance_id, effect_id, task, kind, due_ms, attempts, effect) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (instance_id, effect_id) DO UPDATE SET \
     task = EXCLUDED.task, kind = EXCLUDED.kind, due_ms = EXCLUDED.due_ms, \
     attempts = EXCLUDED.attempts, effect = EXCLUDED.effect";
const REMOVE_WORK: &str = "DELETE FROM work WHERE instance_id = $1 AND effect_id = ANY($2)";
const CLEAR_WORK: &str = "DELETE FROM work WHERE instance_id = $1";
const UPSERT_IDEMPOTENCY: &str = "INSERT INTO idempotency (namespace, key, request_hash, instance_id, expires_ms) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, key) DO UPDATE SET \
     request_hash = EXCLUDED.request_hash, instance_id = EXCLUDED.instance_id, expires_ms = EXCLUDED.expires_ms";
const RELEASE_SLOTS: &str = "DELETE FROM slots WHERE instance_id = $1";
const MARK_EVENTS: &str = "UPDATE events SET processed = true WHERE id = ANY($1)";
/// In a cluster every node offers every event to its own instances, in the order of their ids
/// (see `lease::EVENTS_LOCK`), from its own cursor.
const MOVE_EVENT_CURSOR: &str = "UPDATE nodes SET event_cursor = GREATEST(event_cursor, \
     (SELECT MAX(x) FROM unnest($2::bigint[]) x)) WHERE id = $1";
const SET_STATUS: &str = "UPDATE instances SET status = $2, output = $3, error = $4, updated_ms = $5 \
     WHERE id = $1 RETURNING 1";

type Arg = Box<dyn ToSql + Sync + Send>;

/// Marks (inside the pipeline) an error that broke the connection.
const BROKEN: &str = "\u{0}broken:";

/// What the answer of a pipelined statement is checked for.
enum Check {
    Nothing,
    Fence,
    LastSeqs,
    /// The status update of this instance must have found its row.
    Status(String),
}

struct Op {
    sql: &'static str,
    args: Vec<Arg>,
    check: Check,
}

fn op(sql: &'static str, args: Vec<Arg>) -> Op {
    Op {
        sql,
        args,
        check: Check::Nothing,
    }
}

pub(crate) fn apply(store: &PgStore, commits: &[Commit]) -> Result<()> {
    if commits.is_empty() {
        return Ok(());
    }
    let fence = store.fence();
    let mut known = store.last_seqs.lock().unwrap_or_else(|p| p.into_inner());

    // Instances whose last seq must be read: they append history, are not created by this
    // batch before that, and this store has not committed them before.
    let mut lookup: Vec<String> = Vec::new();
    {
        let mut seen = std::collections::HashSet::new();
        for c in commits {
            if c.create.is_some() {
                seen.insert(c.instance_id.as_str());
            }
            if !c.history.is_empty()
                && !seen.contains(c.instance_id.as_str())
                && !known.contains_key(&c.instance_id)
            {
                seen.insert(c.instance_id.as_str());
                lookup.push(c.instance_id.clone());
            }
        }
    }

    // One round trip when nothing must be read first: every history continues a seq this
    // store knows (checked here, before anything is sent), and no audit entry (the chain is
    // read and written in turn). The fence and the status updates then fail rather than
    // answer nothing, and COMMIT goes in the same pipeline.
    let audited = commits.iter().any(|c| !c.audit.is_empty());
    let one_trip = lookup.is_empty() && !audited;
    let batch_seqs = if one_trip {
        Some(continuity(commits, &known, &HashMap::new())?)
    } else {
        None
    };
    let mut ops: Vec<Op> = Vec::new();
    if let Some(f) = &fence {
        ops.push(op(crate::lease::HOLD_NODE, vec![Box::new(f.node.clone())]));
        ops.push(Op {
            // Failing (not answering no row) on both paths: a fenced batch aborts at once, and
            // none of its writes runs (nor waits on a row lock of the node that adopted them).
            sql: FENCE_OR_FAIL,
            args: vec![Box::new(f.node.clone()), Box::new(f.epoch)],
            check: Check::Fence,
        });
    }
    if !lookup.is_empty() {
        ops.push(Op {
            sql: LAST_SEQS_OF,
            args: vec![Box::new(lookup)],
            check: Check::LastSeqs,
        });
    }
    for c in commits {
        commit_ops(c, fence.as_ref().map(|f| f.node.as_str()), &mut ops)?;
    }
    if one_trip {
        for op in &mut ops {
            if op.sql == SET_STATUS {
                op.sql = SET_STATUS_OR_FAIL;
            }
        }
    }

    // A connection that broke while idle in the pool (the server restarted) fails at BEGIN,
    // before anything was written: that batch is sent again on a fresh connection.
    let mut conn = store.conn()?;
    let answers = match block_on(run_pipeline(&mut conn, &ops, one_trip)) {
        Err(_) if conn.is_broken() => {
            drop(conn);
            conn = store.conn()?;
            block_on(run_pipeline(&mut conn, &ops, one_trip))?
        }
        other => other?,
    };
    if let Some(batch) = batch_seqs {
        // Committed unless a statement failed (then the server rolled the batch back).
        let mut first_error = None;
        for (op, answer) in ops.iter().zip(answers) {
            if let Err(e) = answer {
                let e = match (&op.check, &e) {
                    (Check::Fence, StoreError::Db(m)) if m.contains("division by zero") => {
                        fenced_error(fence.as_ref().expect("fence checked only when set"))
                    }
                    (Check::Status(id), StoreError::Db(m)) if m.contains("division by zero") => {
                        StoreError::Db(format!(
                            "cannot set the status of instance {id}: no such instance"
                        ))
                    }
                    _ => e,
                };
                first_error.get_or_insert(e);
            }
        }
        return match first_error {
            Some(e) => Err(e),
            None => {
                if known.len() + batch.len() > LAST_SEQS {
                    known.clear();
                }
                known.extend(batch);
                Ok(())
            }
        };
    }

    // Check the answers in order: the fence first, then continuity, then the first error.
    let mut last_seqs: HashMap<String, i64> = HashMap::new();
    let mut first_error: Option<StoreError> = None;
    let mut fenced = false;
    for (op, answer) in ops.iter().zip(answers) {
        match (answer, &op.check) {
            (Ok(rows), Check::Fence) => fenced = rows.is_empty(),
            (Err(StoreError::Db(m)), Check::Fence) if m.contains("division by zero") => {
                fenced = true
            }
            (Ok(rows), Check::LastSeqs) => {
                for r in rows {
                    last_seqs.insert(r.get(0), r.get(1));
                }
            }
            (Ok(rows), Check::Status(id)) if rows.is_empty() && first_error.is_none() => {
                first_error = Some(StoreError::Db(format!(
                    "cannot set the status of instance {id}: no such instance"
                )));
            }
            (Ok(_), _) => {}
            (Err(e), _) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    let outcome = if fenced {
        Err(fenced_error(
            fence.as_ref().expect("fence checked only when set"),
        ))
    } else {
        continuity(commits, &known, &last_seqs).and_then(|batch| match first_error {
            Some(e) => Err(e),
            None => Ok(batch),
        })
    };
    let outcome = outcome.and_then(|batch| {
        let audit: Vec<AuditEntry> = commits
            .iter()
            .flat_map(|c| c.audit.iter().cloned())
            .collect();
        if !audit.is_empty() {
            append_audit_in(&mut conn, &audit)?;
        }
        Ok(batch)
    });
    match outcome {
        Ok(batch) => {
            conn.batch("COMMIT")?;
            if known.len() + batch.len() > LAST_SEQS {
                known.clear();
            }
            known.extend(batch);
            Ok(())
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Runs `f` in a transaction that first checks this node's fence (when it has one): the
/// engine's writes besides commits (schedules, attempts, attention marks).
pub(crate) fn fenced<T>(store: &PgStore, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
    match store.fence() {
        None => store.write(f),
        Some(fence) => store.write(|c| {
            c.transaction(|c| {
                c.execute(crate::lease::HOLD_NODE, &[&fence.node])?;
                let held = c.query_opt(FENCE, &[&fence.node, &fence.epoch])?.is_some();
                if !held {
                    return Err(fenced_error(&fence));
                }
                f(c)
            })
        }),
    }
}

/// Sends `BEGIN` and every statement without waiting, then collects the answers in order.
async fn run_pipeline(conn: &mut Conn, ops: &[Op], commit: bool) -> Result<Vec<Result<Vec<Row>>>> {
    let mut stmts = Vec::with_capacity(ops.len());
    for o in ops {
        stmts.push(conn.prepare(o.sql).await?);
    }
    let client = &conn.client;
    let args: Vec<Vec<&(dyn ToSql + Sync)>> = ops
        .iter()
        .map(|o| {
            o.args
                .iter()
                .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                .collect()
        })
        .collect();
    type Answer<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>>> + Send + 'a>>;
    let mut futures: Vec<Answer<'_>> = Vec::with_capacity(ops.len() + 1);
    futures.push(Box::pin(async move {
        match client.batch_execute("BEGIN").await {
            Ok(()) => Ok(Vec::new()),
            Err(e) if crate::pool::breaks_connection(&e) => {
                Err(StoreError::Db(format!("{BROKEN}{}", db_error(e))))
            }
            Err(e) => Err(db_error(e)),
        }
    }));
    for (st, a) in stmts.iter().zip(&args) {
        futures.push(Box::pin(async move {
            client.query(st, a).await.map_err(db_error)
        }));
    }
    if commit {
        // After a failed statement the server answers COMMIT with a rollback (no error):
        // the caller looks at every answer.
        futures.push(Box::pin(async move {
            client.batch_execute("COMMIT").await.map_err(db_error)?;
            Ok(Vec::new())
        }));
    }
    // The first pass polls every future in order: each sends its request at its first poll,
    // so the statements reach the server in the order of `ops`. Answers come back in that
    // order too, so later passes poll from the first unanswered one and stop at the first
    // that is still waiting (a pass costs what it settles, not the whole batch).
    let mut answers: Vec<Option<Result<Vec<Row>>>> = (0..futures.len()).map(|_| None).collect();
    let mut first_pass = true;
    let mut next = 0;
    std::future::poll_fn(|cx| {
        while next < futures.len() {
            if answers[next].is_none() {
                match futures[next].as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => answers[next] = Some(v),
                    std::task::Poll::Pending if first_pass => {
                        // Send the rest now; come back here when woken.
                        for i in next + 1..futures.len() {
                            if let std::task::Poll::Ready(v) = futures[i].as_mut().poll(cx) {
                                answers[i] = Some(v);
                            }
                        }
                        first_pass = false;
                        return std::task::Poll::Pending;
                    }
                    std::task::Poll::Pending => return std::task::Poll::Pending,
                }
            }
            next += 1;
        }
        std::task::Poll::Ready(())
    })
    .await;
    drop(futures);
    let mut answers: Vec<Result<Vec<Row>>> = answers
        .into_iter()
        .map(|a| a.expect("every answer is in once the pipeline is done"))
        .collect();
    let begin = answers.remove(0);
    if commit && let Some(Err(e)) = answers.pop() {
        // The COMMIT itself failed: the batch's last answer says so.
        if let Some(last) = answers.last_mut()
            && last.is_ok()
        {
            *last = Err(e);
        }
    }
    if let Err(StoreError::Db(m)) = &begin
        && let Some(m) = m.strip_prefix(BROKEN)
    {
        conn.broken = true;
        return Err(StoreError::Db(m.to_string()));
    }
    begin?;
    Ok(answers)
}

/// The statements of one commit (checked for consistency first).
/// `owner`: this node, in a cluster (new instances are its own; processed events move its
/// event cursor on).
fn commit_ops(c: &Commit, owner: Option<&str>, ops: &mut Vec<Op>) -> Result<()> {
    let id = c.instance_id.clone();
    if let Some(inst) = &c.create {
        if inst.id != c.instance_id {
            return Err(StoreError::Corrupt(format!(
                "the commit of instance {id} creates instance {}",
                inst.id
            )));
        }
        ops.push(op(
            CREATE_INSTANCE,
            vec![
                Box::new(inst.id.clone()),
                Box::new(inst.namespace.clone()),
                Box::new(inst.name.clone()),
                Box::new(inst.version.clone()),
                Box::new(inst.status.as_str().to_string()),
                Box::new(inst.created_ms),
                Box::new(inst.updated_ms),
                Box::new(to_json(&inst.input)?),
                Box::new(inst.output.as_ref().map(to_json).transpose()?),
                Box::new(inst.error.as_ref().map(to_json).transpose()?),
                Box::new(inst.attention.clone()),
                Box::new(owner.map(str::to_string)),
            ],
        ));
    }
    if !c.history.is_empty() {
        let mut seqs = Vec::with_capacity(c.history.len());
        let mut times = Vec::with_capacity(c.history.len());
        let mut kinds = Vec::with_capacity(c.history.len());
        let mut data = Vec::with_capacity(c.history.len());
        for ev in &c.history {
            seqs.push(ev.seq);
            times.push(ev.time_ms);
            kinds.push(ev.kind.clone());
            data.push(to_json(&ev.data)?);
        }
        ops.push(op(
            INSERT_HISTORY,
            vec![
                Box::new(id.clone()),
                Box::new(seqs),
                Box::new(times),
                Box::new(kinds),
                Box::new(data),
            ],
        ));
    }
    for w in &c.add_work {
        if w.instance_id != c.instance_id {
            return Err(StoreError::Corrupt(format!(
                "the commit of instance {id} adds work {} of instance {}",
                w.effect_id, w.instance_id
            )));
        }
        ops.push(op(
            UPSERT_WORK,
            vec![
                Box::new(id.clone()),
                Box::new(w.effect_id as i64),
                Box::new(w.task.clone()),
                Box::new(w.kind.clone()),
                Box::new(w.due_ms),
                Box::new(i32::try_from(w.attempts).unwrap_or(i32::MAX)),
                Box::new(to_json(&w.effect)?),
            ],
        ));
    }
    if !c.remove_work.is_empty() {
        let keys: Vec<i64> = c.remove_work.iter().map(|e| *e as i64).collect();
        ops.push(op(REMOVE_WORK, vec![Box::new(id.clone()), Box::new(keys)]));
    }
    if c.clear_work {
        ops.push(op(CLEAR_WORK, vec![Box::new(id.clone())]));
    }
    if let Some(k) = &c.idempotency {
        ops.push(op(
            UPSERT_IDEMPOTENCY,
            vec![
                Box::new(k.namespace.clone()),
                Box::new(k.key.clone()),
                Box::new(k.request_hash.clone()),
                Box::new(k.instance_id.clone()),
                Box::new(k.expires_ms),
            ],
        ));
    }
    if !c.processed_events.is_empty() {
        ops.push(op(MARK_EVENTS, vec![Box::new(c.processed_events.clone())]));
        if let Some(node) = owner {
            ops.push(op(
                MOVE_EVENT_CURSOR,
                vec![
                    Box::new(node.to_string()),
                    Box::new(c.processed_events.clone()),
                ],
            ));
        }
    }
    if let (Some(_), Some((status, _, _))) = (owner, &c.status)
        && status.is_finished()
    {
        // Its concurrency slots go with it (they stopped counting anyway).
        ops.push(op(RELEASE_SLOTS, vec![Box::new(id.clone())]));
    }
    if let Some((status, output, error)) = &c.status {
        ops.push(Op {
            sql: SET_STATUS,
            args: vec![
                Box::new(id.clone()),
                Box::new(status.as_str().to_string()),
                Box::new(output.as_ref().map(to_json).transpose()?),
                Box::new(error.as_ref().map(to_json).transpose()?),
                Box::new(c.now_ms),
            ],
            check: Check::Status(id.clone()),
        });
    }
    Ok(())
}

/// Checks that every commit's history continues its instance's exactly; returns the last seqs
/// the batch leaves.
fn continuity(
    commits: &[Commit],
    known: &HashMap<String, i64>,
    read: &HashMap<String, i64>,
) -> Result<HashMap<String, i64>> {
    let mut batch: HashMap<String, i64> = HashMap::new();
    for c in commits {
        let id = c.instance_id.as_str();
        if c.create.is_some() && !batch.contains_key(id) {
            batch.insert(id.to_string(), 0);
        }
        let Some(first) = c.history.first() else {
            continue;
        };
        let last = batch
            .get(id)
            .or_else(|| known.get(id))
            .or_else(|| read.get(id))
            .copied()
            .unwrap_or(0);
        if first.seq != last + 1 {
            return Err(StoreError::Corrupt(format!(
                "instance {id}: history seq {} does not follow the last stored seq {last} (expected {}); \
                 was this commit applied twice?",
                first.seq,
                last + 1
            )));
        }
        for (expected, ev) in (last + 1..).zip(&c.history) {
            if ev.seq != expected {
                return Err(StoreError::Corrupt(format!(
                    "instance {id}: history seq {} follows seq {} in the same commit (expected {expected})",
                    ev.seq,
                    expected - 1
                )));
            }
        }
        batch.insert(id.to_string(), last + c.history.len() as i64);
    }
    // Instances created but given no history keep no entry (nothing to continue from yet).
    batch.retain(|_, v| *v > 0);
    Ok(batch)
}

pub(crate) fn put_definition(c: &mut Conn, def: &Definition) -> Result<PutDefinition> {
    c.transaction(|c| {
        let inserted = c.execute(
            &format!(
                "INSERT INTO definitions ({DEFINITION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (namespace, name, version) DO NOTHING"
            ),
            &[
                &def.namespace,
                &def.name,
                &def.version,
                &def.hash,
                &def.deprecated,
                &def.created_ms,
                &def.source,
            ],
        )?;
        if inserted == 1 {
            return Ok(PutDefinition::Created);
        }
        let hash: String = c
            .query_opt(
                "SELECT hash FROM definitions WHERE namespace = $1 AND name = $2 AND version = $3",
                &[&def.namespace, &def.name, &def.version],
            )?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::Db("a definition vanished while it was written".into()))?;
        Ok(if hash == def.hash {
            PutDefinition::Unchanged
        } else {
            PutDefinition::Conflict {
                existing_hash: hash,
            }
        })
    })
}

pub(crate) fn put_schedule(c: &mut Conn, row: &ScheduleRow) -> Result<bool> {
    let state = to_json(&row.state)?;
    let changed = if row.revision == 0 {
        c.execute(
            &format!(
                "INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8) \
                 ON CONFLICT (namespace, name) DO NOTHING"
            ),
            &[
                &row.namespace,
                &row.name,
                &row.version,
                &row.next_fire_ms,
                &row.last_fire_ms,
                &row.paused,
                &row.updated_ms,
                &state,
            ],
        )?
    } else {
        c.execute(
            "UPDATE schedules SET version = $3, next_fire_ms = $4, last_fire_ms = $5, paused = $6, \
             revision = revision + 1, updated_ms = $7, state = $8 \
             WHERE namespace = $1 AND name = $2 AND revision = $9",
            &[
                &row.namespace,
                &row.name,
                &row.version,
                &row.next_fire_ms,
                &row.last_fire_ms,
                &row.paused,
                &row.updated_ms,
                &state,
                &row.revision,
            ],
        )?
    };
    Ok(changed == 1)
}

pub(crate) fn put_token(c: &mut Conn, t: &TokenRow) -> Result<bool> {
    let namespaces = serde_json::to_string(&t.namespaces)
        .map_err(|e| StoreError::Db(format!("token namespaces: {e}")))?;
    Ok(c.execute(
        &format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT DO NOTHING"
        ),
        &[
            &t.id,
            &t.name,
            &t.role,
            &namespaces,
            &t.secret_sha256,
            &t.created_ms,
            &t.created_by,
            &t.expires_ms,
            &t.revoked_ms,
        ],
    )? == 1)
}

/// Appends to the chain inside the caller's transaction; the advisory lock makes appends of
/// several nodes take turns, so that the chain cannot fork.
pub(crate) fn append_audit_in(c: &mut Conn, entries: &[AuditEntry]) -> Result<Option<AuditRow>> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    let (mut seq, mut prev): (i64, String) = c
        .query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or((0, GENESIS.to_string()));
    // The hashes are computed here, then every entry goes in one statement.
    let mut last = None;
    let n = entries.len();
    let (mut seqs, mut ats) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut actors, mut actions, mut resources) = (Vec::new(), Vec::new(), Vec::new());
    let (mut namespaces, mut sources, mut results) = (Vec::new(), Vec::new(), Vec::new());
    let (mut prevs, mut hashes) = (Vec::new(), Vec::new());
    for e in entries {
        seq += 1;
        let hash = chain_hash(&prev, seq, e);
        seqs.push(seq);
        ats.push(e.at_ms);
        actors.push(e.actor.clone());
        actions.push(e.action.clone());
        resources.push(e.resource.clone());
        namespaces.push(e.namespace.clone());
        sources.push(e.source.clone());
        results.push(e.result.clone());
        prevs.push(prev.clone());
        hashes.push(hash.clone());
        last = Some(AuditRow {
            seq,
            entry: e.clone(),
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    c.execute(
        &format!(
            "INSERT INTO audit ({AUDIT_COLUMNS}) SELECT * FROM unnest($1::bigint[], $2::bigint[], \
             $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
             $10::text[])"
        ),
        &[
            &seqs,
            &ats,
            &actors,
            &actions,
            &resources,
            &namespaces,
            &sources,
            &results,
            &prevs,
            &hashes,
        ],
    )?;
    Ok(last)
}

pub(crate) fn put_secrets(c: &mut Conn, rows: &[SecretRow]) -> Result<()> {
    c.transaction(|c| {
        for r in rows {
            c.execute(
                "INSERT INTO secrets (namespace, name, key_id, nonce, ciphertext, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (namespace, name) DO UPDATE SET \
                 key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, \
                 updated_ms = EXCLUDED.updated_ms",
                &[
                    &r.namespace,
                    &r.name,
                    &r.key_id,
                    &r.nonce,
                    &r.ciphertext,
                    &r.updated_ms,
                ],
            )?;
        }
        Ok(())
    })
}

/// Records a firing unless an unresolved one of the same `(rule, key)` exists; a resolved one
/// gives way. Safe when several nodes fire the same condition at once (the unique key decides).
pub(crate) fn fire_alert(c: &mut Conn, a: &AlertRow) -> Result<bool> {
    let data = a.data.to_string();
    let attempts = i32::try_from(a.attempts).unwrap_or(i32::MAX);
    c.transaction(|c| {
        c.execute(
            "DELETE FROM alerts WHERE rule = $1 AND key = $2 AND resolved_ms IS NOT NULL",
            &[&a.rule, &a.key],
        )?;
        Ok(c.execute(
            &format!(
                "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT DO NOTHING"
            ),
            &[
                &a.id,
                &a.rule,
                &a.key,
                &a.namespace,
                &a.fired_ms,
                &a.summary,
                &data,
                &a.delivered_ms,
                &attempts,
                &a.next_ms,
                &a.last_error,
                &a.resolved_ms,
            ],
        )? == 1)
    })
}

//! Workflow data at rest (`encrypt_data: true`): a [`Store`] that seals every payload it writes
//! — instance inputs, outputs and errors, history records, work rows, posted events — with the
//! vault's key, bound to where it is kept (instance and field, history seq, effect id), and
//! opens them when they are read. Everything above it (the driver, replay, the API) sees clear
//! values; the database holds none. Values written before it was turned on stay readable (an
//! unsealed value is returned as it is); `kflow db encrypt` seals them.

use std::sync::Arc;

use serde_json::Value;

use kflow_store::{
    AuditEntry, AuditFilter, AuditRow, Commit, Definition, HistoryEvent, IdempotencyKey, Instance,
    InstanceFilter, Page, PutDefinition, Result, ScheduleRow, SecretRow, Store, StoreError,
    TokenRow, WorkItem,
};

use crate::secrets::Vault;

pub struct Sealed {
    inner: Arc<dyn Store>,
    vault: Arc<Vault>,
    /// Seal what is written (`encrypt_data`); what is read is opened either way, so that data
    /// sealed earlier (or by `kflow db encrypt`) stays readable when the setting is off.
    seal_writes: bool,
}

/// Where a payload lives: its AEAD context.
pub fn ctx_instance(id: &str, field: &str) -> String {
    format!("instance/{id}/{field}")
}
pub fn ctx_history(id: &str, seq: i64) -> String {
    format!("history/{id}/{seq}")
}
pub fn ctx_work(id: &str, effect: u64) -> String {
    format!("work/{id}/{effect}")
}
/// Posted events: not bound to their row (the store gives the row id only after the insert).
pub const CTX_EVENT: &str = "event";

impl Sealed {
    pub fn new(inner: Arc<dyn Store>, vault: Arc<Vault>, seal_writes: bool) -> Sealed {
        Sealed {
            inner,
            vault,
            seal_writes,
        }
    }

    fn seal(&self, ctx: &str, v: &Value) -> Value {
        self.vault.seal_value(ctx, v)
    }

    fn open(&self, ctx: &str, v: &Value) -> Result<Value> {
        self.vault
            .unseal_value(ctx, v)
            .map_err(|m| StoreError::Corrupt(format!("{ctx}: {m}")))
    }

    fn open_instance(&self, mut i: Instance) -> Result<Instance> {
        i.input = self.open(&ctx_instance(&i.id, "input"), &i.input)?;
        if let Some(o) = &i.output {
            i.output = Some(self.open(&ctx_instance(&i.id, "output"), o)?);
        }
        if let Some(e) = &i.error {
            i.error = Some(self.open(&ctx_instance(&i.id, "error"), e)?);
        }
        Ok(i)
    }

    fn open_work(&self, mut w: WorkItem) -> Result<WorkItem> {
        w.effect = self.open(&ctx_work(&w.instance_id, w.effect_id), &w.effect)?;
        Ok(w)
    }

    fn open_works(&self, rows: Vec<WorkItem>) -> Result<Vec<WorkItem>> {
        rows.into_iter().map(|w| self.open_work(w)).collect()
    }
}

impl Store for Sealed {
    fn put_definition(&self, def: &Definition) -> Result<PutDefinition> {
        self.inner.put_definition(def)
    }
    fn get_definition(&self, ns: &str, name: &str, v: Option<&str>) -> Result<Option<Definition>> {
        self.inner.get_definition(ns, name, v)
    }
    fn list_definitions(&self, ns: Option<&str>) -> Result<Vec<Definition>> {
        self.inner.list_definitions(ns)
    }
    fn set_deprecated(&self, ns: &str, name: &str, v: &str, d: bool) -> Result<bool> {
        self.inner.set_deprecated(ns, name, v, d)
    }

    fn apply(&self, commits: &[Commit]) -> Result<()> {
        if !self.seal_writes {
            return self.inner.apply(commits);
        }
        let sealed: Vec<Commit> = commits
            .iter()
            .map(|c| {
                let id = &c.instance_id;
                let mut c = c.clone();
                if let Some(i) = &mut c.create {
                    i.input = self.seal(&ctx_instance(id, "input"), &i.input);
                }
                for ev in &mut c.history {
                    ev.data = self.seal(&ctx_history(id, ev.seq), &ev.data);
                }
                for w in &mut c.add_work {
                    // Calls and processes come sealed already (see `driver::stored_effect`).
                    if !Vault::is_sealed(&w.effect) {
                        w.effect = self.seal(&ctx_work(id, w.effect_id), &w.effect);
                    }
                }
                if let Some((_, out, err)) = &mut c.status {
                    if let Some(o) = out {
                        *o = self.seal(&ctx_instance(id, "output"), o);
                    }
                    if let Some(e) = err {
                        *e = self.seal(&ctx_instance(id, "error"), e);
                    }
                }
                c
            })
            .collect();
        self.inner.apply(&sealed)
    }
    fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        self.inner
            .get_instance(id)?
            .map(|i| self.open_instance(i))
            .transpose()
    }
    fn instance_ids_matching(&self, prefix: &str, limit: u32) -> Result<Vec<String>> {
        self.inner.instance_ids_matching(prefix, limit)
    }
    fn list_instances(&self, f: &InstanceFilter, cursor: Option<&str>, limit: u32) -> Result<Page> {
        let p = self.inner.list_instances(f, cursor, limit)?;
        Ok(Page {
            items: p
                .items
                .into_iter()
                .map(|i| self.open_instance(i))
                .collect::<Result<_>>()?,
            next: p.next,
        })
    }
    fn history_of_kinds(&self, id: &str, kinds: &[&str]) -> Result<Vec<HistoryEvent>> {
        self.inner
            .history_of_kinds(id, kinds)?
            .into_iter()
            .map(|mut ev| {
                ev.data = self.open(&ctx_history(id, ev.seq), &ev.data)?;
                Ok(ev)
            })
            .collect()
    }
    fn history(&self, id: &str, after: i64, limit: u32) -> Result<Vec<HistoryEvent>> {
        self.inner
            .history(id, after, limit)?
            .into_iter()
            .map(|mut ev| {
                ev.data = self.open(&ctx_history(id, ev.seq), &ev.data)?;
                Ok(ev)
            })
            .collect()
    }
    fn last_seq(&self, id: &str) -> Result<i64> {
        self.inner.last_seq(id)
    }
    fn work_of(&self, id: &str) -> Result<Vec<WorkItem>> {
        self.open_works(self.inner.work_of(id)?)
    }
    fn due_work(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>> {
        self.open_works(self.inner.due_work(until_ms, limit)?)
    }
    fn due_timers(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>> {
        self.open_works(self.inner.due_timers(until_ms, limit)?)
    }
    fn next_timer(&self) -> Result<Option<i64>> {
        self.inner.next_timer()
    }
    fn mark_attempt(&self, id: &str, effect: u64) -> Result<Option<u32>> {
        self.inner.mark_attempt(id, effect)
    }
    fn subscriptions(&self) -> Result<Vec<WorkItem>> {
        self.open_works(self.inner.subscriptions()?)
    }
    fn running_instances(&self) -> Result<Vec<String>> {
        self.inner.running_instances()
    }
    fn set_attention(&self, id: &str, reason: Option<&str>) -> Result<()> {
        self.inner.set_attention(id, reason)
    }
    fn idempotency_key(&self, ns: &str, key: &str, now: i64) -> Result<Option<IdempotencyKey>> {
        self.inner.idempotency_key(ns, key, now)
    }
    fn prune_idempotency_keys(&self, now: i64, limit: u32) -> Result<usize> {
        self.inner.prune_idempotency_keys(now, limit)
    }
    fn add_event(&self, event: &Value, received_ms: i64) -> Result<i64> {
        if !self.seal_writes {
            return self.inner.add_event(event, received_ms);
        }
        self.inner
            .add_event(&self.seal(CTX_EVENT, event), received_ms)
    }
    fn add_event_once(&self, event: &Value, dedup: &str, received_ms: i64) -> Result<Option<i64>> {
        if !self.seal_writes {
            return self.inner.add_event_once(event, dedup, received_ms);
        }
        self.inner
            .add_event_once(&self.seal(CTX_EVENT, event), dedup, received_ms)
    }
    fn pending_events(&self, limit: u32) -> Result<Vec<(i64, Value)>> {
        self.inner
            .pending_events(limit)?
            .into_iter()
            .map(|(id, v)| Ok((id, self.open(CTX_EVENT, &v)?)))
            .collect()
    }
    fn claim_slots(
        &self,
        id: &str,
        groups: &[(String, usize)],
        replacing: Option<&str>,
    ) -> Result<bool> {
        self.inner.claim_slots(id, groups, replacing)
    }
    fn task_stats(&self, namespace: &str, name: &str) -> Result<Vec<kflow_store::TaskStatsRow>> {
        self.inner.task_stats(namespace, name)
    }
    fn merge_task_stats(
        &self,
        deltas: &[kflow_store::TaskStatsRow],
        merge: &kflow_store::MergeFn,
    ) -> Result<()> {
        self.inner.merge_task_stats(deltas, merge)
    }
    fn is_mine(&self, id: &str) -> Result<bool> {
        self.inner.is_mine(id)
    }
    fn missed_events(&self, after: i64, limit: u32) -> Result<Vec<(i64, Value)>> {
        self.inner
            .missed_events(after, limit)?
            .into_iter()
            .map(|(id, v)| Ok((id, self.open(CTX_EVENT, &v)?)))
            .collect()
    }
    fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.inner.list_schedules()
    }
    fn get_schedule(&self, ns: &str, name: &str) -> Result<Option<ScheduleRow>> {
        self.inner.get_schedule(ns, name)
    }
    fn put_schedule(&self, row: &ScheduleRow) -> Result<bool> {
        self.inner.put_schedule(row)
    }
    fn delete_schedule(&self, ns: &str, name: &str) -> Result<bool> {
        self.inner.delete_schedule(ns, name)
    }
    fn set_schedule_paused(
        &self,
        ns: &str,
        n: &str,
        p: bool,
        now: i64,
    ) -> Result<Option<ScheduleRow>> {
        self.inner.set_schedule_paused(ns, n, p, now)
    }
    fn next_schedule_fire(&self) -> Result<Option<i64>> {
        self.inner.next_schedule_fire()
    }
    fn put_token(&self, t: &TokenRow) -> Result<bool> {
        self.inner.put_token(t)
    }
    fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.inner.tokens()
    }
    fn revoke_token(&self, id: &str, now: i64) -> Result<Option<TokenRow>> {
        self.inner.revoke_token(id, now)
    }
    fn append_audit(&self, entries: &[AuditEntry]) -> Result<Option<AuditRow>> {
        self.inner.append_audit(entries)
    }
    fn audit(&self, f: &AuditFilter, after: i64, limit: u32) -> Result<Vec<AuditRow>> {
        self.inner.audit(f, after, limit)
    }
    fn put_secrets(&self, rows: &[SecretRow]) -> Result<()> {
        self.inner.put_secrets(rows)
    }
    fn secrets(&self) -> Result<Vec<SecretRow>> {
        self.inner.secrets()
    }
    fn delete_secret(&self, ns: &str, name: &str) -> Result<bool> {
        self.inner.delete_secret(ns, name)
    }
    fn fire_alert(&self, alert: &kflow_store::AlertRow) -> kflow_store::Result<bool> {
        self.inner.fire_alert(alert)
    }
    fn due_alerts(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> kflow_store::Result<Vec<kflow_store::AlertRow>> {
        self.inner.due_alerts(now_ms, limit)
    }
    fn alert_attempted(
        &self,
        id: &str,
        outcome: kflow_store::AlertAttempt,
    ) -> kflow_store::Result<()> {
        self.inner.alert_attempted(id, outcome)
    }
    fn clear_alert(&self, rule: &str, key: &str) -> kflow_store::Result<bool> {
        self.inner.clear_alert(rule, key)
    }
    fn alerts(
        &self,
        before_ms: Option<i64>,
        limit: u32,
    ) -> kflow_store::Result<Vec<kflow_store::AlertRow>> {
        self.inner.alerts(before_ms, limit)
    }

    fn finished_before(&self, before_ms: i64, limit: u32) -> Result<Vec<Instance>> {
        self.inner
            .finished_before(before_ms, limit)?
            .into_iter()
            .map(|i| self.open_instance(i))
            .collect()
    }
    fn delete_instances(&self, ids: &[String]) -> Result<usize> {
        self.inner.delete_instances(ids)
    }
    fn prune_events(&self, before_ms: i64, limit: u32) -> Result<usize> {
        self.inner.prune_events(before_ms, limit)
    }
    fn table_stats(&self) -> Result<Vec<kflow_store::TableStats>> {
        self.inner.table_stats()
    }
}

/// `kflow db encrypt`: seals every payload written before `encrypt_data` was turned on (what
/// is sealed already is left alone); returns how many were sealed.
pub fn encrypt_existing(
    store: &kflow_store::sqlite::SqliteStore,
    vault: &Vault,
) -> std::result::Result<u64, String> {
    use kflow_store::sqlite::PayloadAt;
    store
        .rewrite_payloads(&|at, v| {
            if Vault::is_sealed(v) {
                return None;
            }
            let ctx = match at {
                PayloadAt::Instance { id, field } => ctx_instance(id, field),
                PayloadAt::History { id, seq } => ctx_history(id, *seq),
                PayloadAt::Work { id, effect } => ctx_work(id, *effect),
                PayloadAt::Event { .. } => CTX_EVENT.to_string(),
            };
            Some(vault.seal_value(&ctx, v))
        })
        .map_err(|e| e.to_string())
}

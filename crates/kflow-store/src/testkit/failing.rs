//! A store that fails on demand, for the engine's fault-injection tests.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use crate::{
    Commit, Definition, HistoryEvent, Instance, InstanceFilter, ScheduleRow, Store, WorkItem,
};

/// A store that fails on demand: wraps a real one and, while a switch is on, answers the
/// matching calls with a database error (as a database locked by another process would).
/// For the engine's fault-injection tests.
pub struct FailingStore {
    inner: Box<dyn Store>,
    /// `apply` fails (writes).
    pub fail_writes: AtomicBool,
    /// Reads of instances and histories fail (what replay needs).
    pub fail_reads: AtomicBool,
    /// How many calls failed so far.
    pub failures: std::sync::atomic::AtomicUsize,
}

impl FailingStore {
    pub fn new(inner: Box<dyn Store>) -> FailingStore {
        FailingStore {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            failures: Default::default(),
        }
    }

    fn check(&self, switch: &AtomicBool, what: &str) -> crate::Result<()> {
        if switch.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(crate::StoreError::Db(format!(
                "database is locked (injected failure of {what})"
            )));
        }
        Ok(())
    }
}

impl Store for FailingStore {
    fn put_definition(&self, def: &Definition) -> crate::Result<crate::PutDefinition> {
        self.inner.put_definition(def)
    }
    fn get_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> crate::Result<Option<Definition>> {
        self.inner.get_definition(namespace, name, version)
    }
    fn list_definitions(&self, namespace: Option<&str>) -> crate::Result<Vec<Definition>> {
        self.inner.list_definitions(namespace)
    }
    fn set_deprecated(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        deprecated: bool,
    ) -> crate::Result<bool> {
        self.inner
            .set_deprecated(namespace, name, version, deprecated)
    }
    fn apply(&self, commits: &[Commit]) -> crate::Result<()> {
        self.check(&self.fail_writes, "a commit")?;
        self.inner.apply(commits)
    }
    fn get_instance(&self, id: &str) -> crate::Result<Option<Instance>> {
        self.check(&self.fail_reads, "reading an instance")?;
        self.inner.get_instance(id)
    }
    fn instance_ids_matching(&self, prefix: &str, limit: u32) -> crate::Result<Vec<String>> {
        self.check(&self.fail_reads, "reading instance ids")?;
        self.inner.instance_ids_matching(prefix, limit)
    }
    fn list_instances(
        &self,
        filter: &InstanceFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> crate::Result<crate::Page> {
        self.inner.list_instances(filter, cursor, limit)
    }
    fn history_of_kinds(&self, id: &str, kinds: &[&str]) -> crate::Result<Vec<HistoryEvent>> {
        self.check(&self.fail_reads, "reading a history")?;
        self.inner.history_of_kinds(id, kinds)
    }
    fn history(&self, id: &str, after: i64, limit: u32) -> crate::Result<Vec<HistoryEvent>> {
        self.check(&self.fail_reads, "reading a history")?;
        self.inner.history(id, after, limit)
    }
    fn last_seq(&self, id: &str) -> crate::Result<i64> {
        self.inner.last_seq(id)
    }
    fn work_of(&self, id: &str) -> crate::Result<Vec<WorkItem>> {
        self.check(&self.fail_reads, "reading work")?;
        self.inner.work_of(id)
    }
    fn due_work(&self, until_ms: i64, limit: u32) -> crate::Result<Vec<WorkItem>> {
        self.inner.due_work(until_ms, limit)
    }
    fn due_timers(&self, until_ms: i64, limit: u32) -> crate::Result<Vec<WorkItem>> {
        self.inner.due_timers(until_ms, limit)
    }
    fn next_timer(&self) -> crate::Result<Option<i64>> {
        self.inner.next_timer()
    }
    fn mark_attempt(&self, instance_id: &str, effect_id: u64) -> crate::Result<Option<u32>> {
        self.check(&self.fail_writes, "counting an attempt")?;
        self.inner.mark_attempt(instance_id, effect_id)
    }
    fn subscriptions(&self) -> crate::Result<Vec<WorkItem>> {
        self.inner.subscriptions()
    }
    fn running_instances(&self) -> crate::Result<Vec<String>> {
        self.inner.running_instances()
    }
    fn set_attention(&self, id: &str, reason: Option<&str>) -> crate::Result<()> {
        self.inner.set_attention(id, reason)
    }
    fn idempotency_key(
        &self,
        namespace: &str,
        key: &str,
        now_ms: i64,
    ) -> crate::Result<Option<crate::IdempotencyKey>> {
        self.check(&self.fail_reads, "reading an idempotency key")?;
        self.inner.idempotency_key(namespace, key, now_ms)
    }
    fn prune_idempotency_keys(&self, now_ms: i64, limit: u32) -> crate::Result<usize> {
        self.inner.prune_idempotency_keys(now_ms, limit)
    }
    fn add_event(&self, event: &Value, received_ms: i64) -> crate::Result<i64> {
        self.inner.add_event(event, received_ms)
    }
    fn add_event_once(
        &self,
        event: &Value,
        dedup: &str,
        received_ms: i64,
    ) -> crate::Result<Option<i64>> {
        self.check(&self.fail_writes, "recording an event")?;
        self.inner.add_event_once(event, dedup, received_ms)
    }
    fn task_stats(&self, namespace: &str, name: &str) -> crate::Result<Vec<crate::TaskStatsRow>> {
        self.inner.task_stats(namespace, name)
    }
    fn merge_task_stats(
        &self,
        deltas: &[crate::TaskStatsRow],
        merge: &crate::MergeFn,
    ) -> crate::Result<()> {
        self.inner.merge_task_stats(deltas, merge)
    }
    fn pending_events(&self, limit: u32) -> crate::Result<Vec<(i64, Value)>> {
        self.inner.pending_events(limit)
    }
    fn list_schedules(&self) -> crate::Result<Vec<ScheduleRow>> {
        self.inner.list_schedules()
    }
    fn get_schedule(&self, namespace: &str, name: &str) -> crate::Result<Option<ScheduleRow>> {
        self.inner.get_schedule(namespace, name)
    }
    fn put_schedule(&self, row: &ScheduleRow) -> crate::Result<bool> {
        self.inner.put_schedule(row)
    }
    fn delete_schedule(&self, namespace: &str, name: &str) -> crate::Result<bool> {
        self.inner.delete_schedule(namespace, name)
    }
    fn set_schedule_paused(
        &self,
        namespace: &str,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> crate::Result<Option<ScheduleRow>> {
        self.inner
            .set_schedule_paused(namespace, name, paused, now_ms)
    }
    fn next_schedule_fire(&self) -> crate::Result<Option<i64>> {
        self.inner.next_schedule_fire()
    }
    fn put_token(&self, token: &crate::TokenRow) -> crate::Result<bool> {
        self.inner.put_token(token)
    }
    fn tokens(&self) -> crate::Result<Vec<crate::TokenRow>> {
        self.inner.tokens()
    }
    fn revoke_token(
        &self,
        id_or_name: &str,
        now_ms: i64,
    ) -> crate::Result<Option<crate::TokenRow>> {
        self.inner.revoke_token(id_or_name, now_ms)
    }
    fn append_audit(
        &self,
        entries: &[crate::AuditEntry],
    ) -> crate::Result<Option<crate::AuditRow>> {
        self.inner.append_audit(entries)
    }
    fn audit(
        &self,
        filter: &crate::AuditFilter,
        after: i64,
        limit: u32,
    ) -> crate::Result<Vec<crate::AuditRow>> {
        self.inner.audit(filter, after, limit)
    }
    fn put_secrets(&self, rows: &[crate::SecretRow]) -> crate::Result<()> {
        self.inner.put_secrets(rows)
    }
    fn secrets(&self) -> crate::Result<Vec<crate::SecretRow>> {
        self.inner.secrets()
    }
    fn delete_secret(&self, namespace: &str, name: &str) -> crate::Result<bool> {
        self.inner.delete_secret(namespace, name)
    }
    fn fire_alert(&self, alert: &crate::AlertRow) -> crate::Result<bool> {
        self.inner.fire_alert(alert)
    }
    fn due_alerts(&self, now_ms: i64, limit: u32) -> crate::Result<Vec<crate::AlertRow>> {
        self.inner.due_alerts(now_ms, limit)
    }
    fn alert_attempted(&self, id: &str, outcome: crate::AlertAttempt) -> crate::Result<()> {
        self.inner.alert_attempted(id, outcome)
    }
    fn clear_alert(&self, rule: &str, key: &str) -> crate::Result<bool> {
        self.inner.clear_alert(rule, key)
    }
    fn alerts(&self, before_ms: Option<i64>, limit: u32) -> crate::Result<Vec<crate::AlertRow>> {
        self.inner.alerts(before_ms, limit)
    }

    fn finished_before(&self, before_ms: i64, limit: u32) -> crate::Result<Vec<crate::Instance>> {
        self.inner.finished_before(before_ms, limit)
    }
    fn delete_instances(&self, ids: &[String]) -> crate::Result<usize> {
        self.inner.delete_instances(ids)
    }
    fn prune_events(&self, before_ms: i64, limit: u32) -> crate::Result<usize> {
        self.inner.prune_events(before_ms, limit)
    }
    fn table_stats(&self) -> crate::Result<Vec<crate::TableStats>> {
        self.inner.table_stats()
    }
}

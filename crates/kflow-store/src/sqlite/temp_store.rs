//! A file store for the SQLite tests: the conformance suite run on a real file, deleted with
//! its directory when dropped. It forwards every call to the `SqliteStore` inside.

use super::{Durability, SqliteStore};
use crate::{
    Commit, Definition, HistoryEvent, Instance, InstanceFilter, Page, PutDefinition, Result,
    ScheduleRow, Store, WorkItem,
};

/// A file store that deletes its directory when dropped (the store closes first).
pub(super) struct TempStore {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

impl TempStore {
    pub(super) fn new(durability: Durability) -> TempStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("kflow.db"), durability).expect("open");
        TempStore { store, _dir: dir }
    }
}

impl Store for TempStore {
    fn put_definition(&self, def: &Definition) -> Result<PutDefinition> {
        self.store.put_definition(def)
    }
    fn get_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Definition>> {
        self.store.get_definition(namespace, name, version)
    }
    fn list_definitions(&self, namespace: Option<&str>) -> Result<Vec<Definition>> {
        self.store.list_definitions(namespace)
    }
    fn set_deprecated(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        deprecated: bool,
    ) -> Result<bool> {
        self.store
            .set_deprecated(namespace, name, version, deprecated)
    }
    fn apply(&self, commits: &[Commit]) -> Result<()> {
        self.store.apply(commits)
    }
    fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        self.store.get_instance(id)
    }
    fn instance_ids_matching(&self, prefix: &str, limit: u32) -> Result<Vec<String>> {
        self.store.instance_ids_matching(prefix, limit)
    }
    fn list_instances(
        &self,
        filter: &InstanceFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page> {
        self.store.list_instances(filter, cursor, limit)
    }
    fn history_of_kinds(&self, id: &str, kinds: &[&str]) -> Result<Vec<HistoryEvent>> {
        self.store.history_of_kinds(id, kinds)
    }
    fn history(&self, id: &str, after: i64, limit: u32) -> Result<Vec<HistoryEvent>> {
        self.store.history(id, after, limit)
    }
    fn last_seq(&self, id: &str) -> Result<i64> {
        self.store.last_seq(id)
    }
    fn work_of(&self, id: &str) -> Result<Vec<WorkItem>> {
        self.store.work_of(id)
    }
    fn due_work(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>> {
        self.store.due_work(until_ms, limit)
    }
    fn add_event(&self, event: &serde_json::Value, received_ms: i64) -> Result<i64> {
        self.store.add_event(event, received_ms)
    }
    fn add_event_once(
        &self,
        event: &serde_json::Value,
        dedup: &str,
        received_ms: i64,
    ) -> Result<Option<i64>> {
        self.store.add_event_once(event, dedup, received_ms)
    }
    fn task_stats(&self, namespace: &str, name: &str) -> Result<Vec<crate::TaskStatsRow>> {
        self.store.task_stats(namespace, name)
    }
    fn merge_task_stats(
        &self,
        deltas: &[crate::TaskStatsRow],
        merge: &crate::MergeFn,
    ) -> Result<()> {
        self.store.merge_task_stats(deltas, merge)
    }
    fn pending_events(&self, limit: u32) -> Result<Vec<(i64, serde_json::Value)>> {
        self.store.pending_events(limit)
    }
    fn due_timers(&self, until_ms: i64, limit: u32) -> Result<Vec<WorkItem>> {
        self.store.due_timers(until_ms, limit)
    }
    fn next_timer(&self) -> Result<Option<i64>> {
        self.store.next_timer()
    }
    fn mark_attempt(&self, instance_id: &str, effect_id: u64) -> Result<Option<u32>> {
        self.store.mark_attempt(instance_id, effect_id)
    }
    fn subscriptions(&self) -> Result<Vec<WorkItem>> {
        self.store.subscriptions()
    }
    fn running_instances(&self) -> Result<Vec<String>> {
        self.store.running_instances()
    }
    fn set_attention(&self, id: &str, reason: Option<&str>) -> Result<()> {
        self.store.set_attention(id, reason)
    }
    fn idempotency_key(
        &self,
        namespace: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<crate::IdempotencyKey>> {
        self.store.idempotency_key(namespace, key, now_ms)
    }
    fn prune_idempotency_keys(&self, now_ms: i64, limit: u32) -> Result<usize> {
        self.store.prune_idempotency_keys(now_ms, limit)
    }
    fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.store.list_schedules()
    }
    fn get_schedule(&self, namespace: &str, name: &str) -> Result<Option<ScheduleRow>> {
        self.store.get_schedule(namespace, name)
    }
    fn put_schedule(&self, row: &ScheduleRow) -> Result<bool> {
        self.store.put_schedule(row)
    }
    fn delete_schedule(&self, namespace: &str, name: &str) -> Result<bool> {
        self.store.delete_schedule(namespace, name)
    }
    fn set_schedule_paused(
        &self,
        namespace: &str,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<Option<ScheduleRow>> {
        self.store
            .set_schedule_paused(namespace, name, paused, now_ms)
    }
    fn next_schedule_fire(&self) -> Result<Option<i64>> {
        self.store.next_schedule_fire()
    }
    fn put_token(&self, token: &crate::TokenRow) -> Result<bool> {
        self.store.put_token(token)
    }
    fn tokens(&self) -> Result<Vec<crate::TokenRow>> {
        self.store.tokens()
    }
    fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> Result<Option<crate::TokenRow>> {
        self.store.revoke_token(id_or_name, now_ms)
    }
    fn append_audit(&self, entries: &[crate::AuditEntry]) -> Result<Option<crate::AuditRow>> {
        self.store.append_audit(entries)
    }
    fn audit(
        &self,
        filter: &crate::AuditFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::AuditRow>> {
        self.store.audit(filter, after, limit)
    }
    fn put_secrets(&self, rows: &[crate::SecretRow]) -> crate::Result<()> {
        self.store.put_secrets(rows)
    }
    fn secrets(&self) -> crate::Result<Vec<crate::SecretRow>> {
        self.store.secrets()
    }
    fn delete_secret(&self, namespace: &str, name: &str) -> crate::Result<bool> {
        self.store.delete_secret(namespace, name)
    }
    fn fire_alert(&self, alert: &crate::AlertRow) -> crate::Result<bool> {
        self.store.fire_alert(alert)
    }
    fn due_alerts(&self, now_ms: i64, limit: u32) -> crate::Result<Vec<crate::AlertRow>> {
        self.store.due_alerts(now_ms, limit)
    }
    fn alert_attempted(&self, id: &str, outcome: crate::AlertAttempt) -> crate::Result<()> {
        self.store.alert_attempted(id, outcome)
    }
    fn clear_alert(&self, rule: &str, key: &str) -> crate::Result<bool> {
        self.store.clear_alert(rule, key)
    }
    fn alerts(&self, before_ms: Option<i64>, limit: u32) -> crate::Result<Vec<crate::AlertRow>> {
        self.store.alerts(before_ms, limit)
    }

    fn finished_before(&self, before_ms: i64, limit: u32) -> Result<Vec<Instance>> {
        self.store.finished_before(before_ms, limit)
    }
    fn delete_instances(&self, ids: &[String]) -> Result<usize> {
        self.store.delete_instances(ids)
    }
    fn prune_events(&self, before_ms: i64, limit: u32) -> Result<usize> {
        self.store.prune_events(before_ms, limit)
    }
    fn table_stats(&self) -> Result<Vec<crate::TableStats>> {
        self.store.table_stats()
    }
}

//! The backend-independent conformance suite of [`Store`] (feature `testkit`).
//!
//! Every backend runs the same cases, each on a fresh, empty store:
//!
//! ```ignore
//! // one #[test] per case:
//! kflow_store::store_conformance_tests!(|| Box::new(MyStore::new_empty()) as Box<dyn kflow_store::Store>);
//! // or everything in one test:
//! kflow_store::testkit::conformance_suite(&|| Box::new(MyStore::new_empty()));
//! ```
//!
//! The cases only use the trait: what they check is the contract every backend keeps.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::{
    Commit, Definition, HistoryEvent, Instance, InstanceFilter, InstanceStatus, PutDefinition,
    ScheduleRow, Store, StoreError, WorkItem,
};

/// One conformance case: runs against an empty store, panics on a violation.
pub struct Case {
    pub name: &'static str,
    pub run: fn(&dyn Store),
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, in a stable order.
        pub const CASES: &[Case] = &[$(Case { name: stringify!($name), run: $name }),*];
    };
}

cases!(
    definitions_put_created_unchanged_conflict,
    definitions_latest_is_highest_semver,
    definitions_list_sorted_and_filtered,
    definitions_set_deprecated,
    apply_creates_instances,
    apply_empty_batch_is_a_no_op,
    apply_appends_history_in_order,
    apply_refuses_seq_gaps,
    apply_refuses_double_apply,
    apply_batch_is_all_or_nothing,
    apply_refuses_unknown_instances,
    apply_updates_status,
    list_instances_newest_first_and_limit_clamp,
    list_instances_filters,
    list_instances_paginates_without_duplicates_or_gaps,
    list_instances_rejects_malformed_cursor,
    work_add_replace_remove,
    due_work_only_running_non_listen_in_order,
    next_timer_of_running_instances,
    mark_attempt_counts,
    subscriptions_of_running_instances,
    running_instances_lists_running_only,
    effect_ids_use_the_full_u64_range,
    events_are_pending_until_a_commit_processes_them,
    events_with_a_dedup_key_are_recorded_once,
    concurrent_writers_and_readers,
    schedules_put_is_compare_and_set,
    schedules_list_get_delete,
    schedules_pause_and_next_fire,
    attention_parks_an_instance,
    idempotency_keys_commit_with_their_instance_and_expire,
    retention_prunes_finished_instances_only,
    retention_prunes_processed_events_only,
    tokens_are_unique_and_revocation_frees_the_name,
    audit_chains_across_appends_and_filters,
    secrets_are_replaced_listed_and_deleted,
    alerts_fire_once_until_resolved,
    short_ids_match_a_prefix_then_a_suffix,
    history_of_kinds_reads_only_those,
    task_stats_merge_per_version_and_task,
);

/// Runs every case on a fresh store from `make`; reports all failures at the end.
pub fn conformance_suite(make: &dyn Fn() -> Box<dyn Store>) {
    let mut failed = Vec::new();
    for case in CASES {
        let store = make();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(store.as_ref())));
        if outcome.is_err() {
            failed.push(case.name);
        }
    }
    assert!(
        failed.is_empty(),
        "store conformance: {} of {} cases failed: {failed:?}",
        failed.len(),
        CASES.len()
    );
}

/// Expands to one `#[test]` per conformance case, each on a fresh store from `$make`
/// (an expression of a type `Fn() -> Box<dyn Store>`).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::__store_conformance_tests!(
            $make;
            definitions_put_created_unchanged_conflict,
            definitions_latest_is_highest_semver,
            definitions_list_sorted_and_filtered,
            definitions_set_deprecated,
            apply_creates_instances,
            apply_empty_batch_is_a_no_op,
            apply_appends_history_in_order,
            apply_refuses_seq_gaps,
            apply_refuses_double_apply,
            apply_batch_is_all_or_nothing,
            apply_refuses_unknown_instances,
            apply_updates_status,
            list_instances_newest_first_and_limit_clamp,
            list_instances_filters,
            list_instances_paginates_without_duplicates_or_gaps,
            list_instances_rejects_malformed_cursor,
            work_add_replace_remove,
            due_work_only_running_non_listen_in_order,
            next_timer_of_running_instances,
            mark_attempt_counts,
            subscriptions_of_running_instances,
            running_instances_lists_running_only,
            effect_ids_use_the_full_u64_range,
    events_are_pending_until_a_commit_processes_them,
            events_with_a_dedup_key_are_recorded_once,
            concurrent_writers_and_readers,
            schedules_put_is_compare_and_set,
            schedules_list_get_delete,
            schedules_pause_and_next_fire,
            attention_parks_an_instance,
            idempotency_keys_commit_with_their_instance_and_expire,
            retention_prunes_finished_instances_only,
            retention_prunes_processed_events_only,
            tokens_are_unique_and_revocation_frees_the_name,
            audit_chains_across_appends_and_filters,
            secrets_are_replaced_listed_and_deleted,
            alerts_fire_once_until_resolved,
            short_ids_match_a_prefix_then_a_suffix,
            history_of_kinds_reads_only_those,
            task_stats_merge_per_version_and_task,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_tests {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let make = $make;
                let store: ::std::boxed::Box<dyn $crate::Store> = make();
                $crate::testkit::$case(store.as_ref());
            }
        )*

        #[test]
        fn conformance_tests_cover_every_case() {
            let names: &[&str] = &[$(stringify!($case)),*];
            let all: ::std::vec::Vec<&str> = $crate::testkit::CASES.iter().map(|c| c.name).collect();
            assert_eq!(names, all.as_slice());
        }
    };
}

// --- builders -------------------------------------------------------------------------------

pub fn definition(namespace: &str, name: &str, version: &str, hash: &str) -> Definition {
    Definition {
        namespace: namespace.into(),
        name: name.into(),
        version: version.into(),
        source: format!(
            "document: {{dsl: '1.0.0', namespace: {namespace}, name: {name}, version: '{version}'}}"
        ),
        hash: hash.into(),
        deprecated: false,
        created_ms: 1_000,
    }
}

pub fn instance(id: &str, created_ms: i64) -> Instance {
    Instance {
        id: id.into(),
        namespace: "default".into(),
        name: "flow".into(),
        version: "1.0.0".into(),
        status: InstanceStatus::Running,
        input: json!({"id": id}),
        output: None,
        error: None,
        created_ms,
        updated_ms: created_ms,
        attention: None,
    }
}

pub fn event(seq: i64, kind: &str) -> HistoryEvent {
    HistoryEvent {
        seq,
        time_ms: 1_000 + seq,
        kind: kind.into(),
        data: json!({"seq": seq, "kind": kind}),
    }
}

pub fn work(instance_id: &str, effect_id: u64, kind: &str, due_ms: i64) -> WorkItem {
    WorkItem {
        instance_id: instance_id.into(),
        effect_id,
        task: format!("/do/{effect_id}/task"),
        kind: kind.into(),
        effect: json!({"kind": kind, "effect": effect_id}),
        due_ms,
        attempts: 0,
    }
}

/// Creates the instance with its `started` event (seq 1).
pub fn create(inst: &Instance) -> Commit {
    Commit {
        instance_id: inst.id.clone(),
        create: Some(inst.clone()),
        history: vec![HistoryEvent {
            seq: 1,
            time_ms: inst.created_ms,
            kind: "started".into(),
            data: inst.input.clone(),
        }],
        now_ms: inst.created_ms,
        ..Default::default()
    }
}

/// Appends events `seqs` to an existing instance.
pub fn append(id: &str, seqs: std::ops::RangeInclusive<i64>) -> Commit {
    Commit {
        instance_id: id.into(),
        history: seqs.map(|s| event(s, "delivery")).collect(),
        ..Default::default()
    }
}

pub fn set_status(id: &str, status: InstanceStatus, now_ms: i64) -> Commit {
    Commit {
        instance_id: id.into(),
        status: Some((status, None, None)),
        now_ms,
        ..Default::default()
    }
}

fn ok<T>(r: crate::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected store error: {e}"),
    }
}

fn seqs(events: &[HistoryEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

fn ids(items: &[Instance]) -> Vec<String> {
    items.iter().map(|i| i.id.clone()).collect()
}

fn work_keys(items: &[WorkItem]) -> Vec<(String, u64)> {
    items
        .iter()
        .map(|w| (w.instance_id.clone(), w.effect_id))
        .collect()
}

fn key(id: &str, effect: u64) -> (String, u64) {
    (id.to_string(), effect)
}

/// Collects every page of a listing, asserting each page's size.
fn all_pages(store: &dyn Store, filter: &InstanceFilter, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let page = ok(store.list_instances(filter, cursor.as_deref(), limit));
        assert!(page.items.len() <= limit as usize);
        if page.next.is_some() {
            assert_eq!(
                page.items.len(),
                limit as usize,
                "only the last page may be short"
            );
        }
        out.extend(ids(&page.items));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
    panic!("pagination does not end");
}

fn expect_corrupt(r: crate::Result<()>, must_contain: &[&str]) {
    match r {
        Err(StoreError::Corrupt(m)) => {
            for part in must_contain {
                assert!(m.contains(part), "message {m:?} should name {part:?}");
            }
        }
        other => panic!("expected StoreError::Corrupt, got {other:?}"),
    }
}

mod failing;
pub use failing::FailingStore;

// The cases, by concern.
mod definitions;
pub use definitions::*;
mod instances;
pub use instances::*;
mod work;
pub use work::*;
mod schedules;
pub use schedules::*;
mod retention;
pub use retention::*;
mod security;
pub use security::*;

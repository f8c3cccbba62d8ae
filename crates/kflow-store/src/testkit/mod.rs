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

// --- definitions ----------------------------------------------------------------------------

pub fn definitions_put_created_unchanged_conflict(store: &dyn Store) {
    let d = definition("ns", "flow", "1.0.0", "h1");
    assert_eq!(ok(store.put_definition(&d)), PutDefinition::Created);
    assert_eq!(ok(store.put_definition(&d)), PutDefinition::Unchanged);
    // Same hash: unchanged, whatever else differs; the stored row is kept.
    let mut same_hash = d.clone();
    same_hash.source = "reformatted".into();
    same_hash.created_ms = 9_999;
    assert_eq!(
        ok(store.put_definition(&same_hash)),
        PutDefinition::Unchanged
    );
    let other = definition("ns", "flow", "1.0.0", "h2");
    assert_eq!(
        ok(store.put_definition(&other)),
        PutDefinition::Conflict {
            existing_hash: "h1".into()
        }
    );
    assert_eq!(
        ok(store.get_definition("ns", "flow", Some("1.0.0"))),
        Some(d.clone())
    );

    // The key is (namespace, name, version).
    assert_eq!(
        ok(store.put_definition(&definition("ns2", "flow", "1.0.0", "h2"))),
        PutDefinition::Created
    );
    assert_eq!(
        ok(store.put_definition(&definition("ns", "flow2", "1.0.0", "h2"))),
        PutDefinition::Created
    );
    assert_eq!(
        ok(store.put_definition(&definition("ns", "flow", "1.0.1", "h2"))),
        PutDefinition::Created
    );

    assert_eq!(ok(store.get_definition("ns", "flow", Some("2.0.0"))), None);
    assert_eq!(ok(store.get_definition("ns", "nope", None)), None);
    assert_eq!(
        ok(store.get_definition("nope", "flow", Some("1.0.0"))),
        None
    );

    // Every field round-trips.
    let mut full = definition("ns", "full", "3.2.1", "hash-full");
    full.deprecated = true;
    full.created_ms = 1_234_567;
    full.source = "document:\n  name: \"ünïcode ✓\"\n".repeat(500);
    assert_eq!(ok(store.put_definition(&full)), PutDefinition::Created);
    assert_eq!(
        ok(store.get_definition("ns", "full", Some("3.2.1"))),
        Some(full.clone())
    );
    assert_eq!(ok(store.get_definition("ns", "full", None)), Some(full));
}

pub fn definitions_latest_is_highest_semver(store: &dyn Store) {
    let latest = |name: &str| ok(store.get_definition("ns", name, None)).map(|d| d.version);
    assert_eq!(latest("flow"), None);
    for v in ["1.9.0", "1.10.0", "1.2.0", "0.9.9"] {
        ok(store.put_definition(&definition("ns", "flow", v, v)));
    }
    assert_eq!(
        latest("flow").as_deref(),
        Some("1.10.0"),
        "numeric, not lexicographic"
    );
    ok(store.put_definition(&definition("ns", "flow", "2.0.0-rc.1", "rc1")));
    assert_eq!(latest("flow").as_deref(), Some("2.0.0-rc.1"));
    ok(store.put_definition(&definition("ns", "flow", "2.0.0", "2")));
    assert_eq!(latest("flow").as_deref(), Some("2.0.0"));
    // Registered later, but a pre-release of the same version sorts below it.
    ok(store.put_definition(&definition("ns", "flow", "2.0.0-rc.2", "rc2")));
    assert_eq!(
        latest("flow").as_deref(),
        Some("2.0.0"),
        "not the newest row"
    );
    // Deprecation does not change which version is the latest.
    assert!(ok(store.set_deprecated("ns", "flow", "2.0.0", true)));
    let d = ok(store.get_definition("ns", "flow", None)).expect("latest");
    assert_eq!((d.version.as_str(), d.deprecated), ("2.0.0", true));
    // Other names and namespaces do not leak in.
    ok(store.put_definition(&definition("ns", "other", "9.0.0", "o")));
    ok(store.put_definition(&definition("ns2", "flow", "9.0.0", "o")));
    assert_eq!(latest("flow").as_deref(), Some("2.0.0"));

    // Pre-release precedence (semver.org §11), registered in scrambled order.
    let chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ];
    for v in [
        chain[3], chain[6], chain[0], chain[5], chain[2], chain[4], chain[1],
    ] {
        ok(store.put_definition(&definition("pre", "flow", v, v)));
    }
    let listed: Vec<String> = ok(store.list_definitions(Some("pre")))
        .into_iter()
        .map(|d| d.version)
        .collect();
    let mut expected: Vec<String> = chain.iter().map(|s| s.to_string()).collect();
    expected.reverse();
    assert_eq!(listed, expected);
    assert_eq!(
        ok(store.get_definition("pre", "flow", None))
            .map(|d| d.version)
            .as_deref(),
        Some("1.0.0")
    );
    ok(store.put_definition(&definition("pre", "rc", "1.0.0-rc.9", "9")));
    ok(store.put_definition(&definition("pre", "rc", "1.0.0-rc.10", "10")));
    assert_eq!(
        ok(store.get_definition("pre", "rc", None))
            .map(|d| d.version)
            .as_deref(),
        Some("1.0.0-rc.10")
    );
}

pub fn definitions_list_sorted_and_filtered(store: &dyn Store) {
    assert!(ok(store.list_definitions(None)).is_empty());
    let rows = [
        ("b", "x", "1.0.0"),
        ("a", "y", "1.9.0"),
        ("a", "y", "1.10.0"),
        ("a", "x", "0.1.0"),
        ("b", "a", "2.0.0"),
        ("a", "y", "1.10.0-rc.1"),
    ];
    for (ns, name, v) in rows {
        ok(store.put_definition(&definition(ns, name, v, &format!("{ns}{name}{v}"))));
    }
    let keys = |defs: Vec<Definition>| -> Vec<String> {
        defs.into_iter()
            .map(|d| format!("{}/{}@{}", d.namespace, d.name, d.version))
            .collect()
    };
    assert_eq!(
        keys(ok(store.list_definitions(None))),
        [
            "a/x@0.1.0",
            "a/y@1.10.0",
            "a/y@1.10.0-rc.1",
            "a/y@1.9.0",
            "b/a@2.0.0",
            "b/x@1.0.0"
        ]
    );
    assert_eq!(
        keys(ok(store.list_definitions(Some("b")))),
        ["b/a@2.0.0", "b/x@1.0.0"]
    );
    assert!(ok(store.list_definitions(Some("c"))).is_empty());
    let listed = ok(store.list_definitions(Some("a")));
    assert_eq!(
        listed[0],
        definition("a", "x", "0.1.0", "ax0.1.0"),
        "full rows"
    );
}

pub fn definitions_set_deprecated(store: &dyn Store) {
    assert!(
        !ok(store.set_deprecated("ns", "flow", "1.0.0", true)),
        "no such version"
    );
    ok(store.put_definition(&definition("ns", "flow", "1.0.0", "h")));
    ok(store.put_definition(&definition("ns", "flow", "1.1.0", "h")));
    assert!(ok(store.set_deprecated("ns", "flow", "1.0.0", true)));
    let get = |v: &str| ok(store.get_definition("ns", "flow", Some(v))).expect("exists");
    assert!(get("1.0.0").deprecated);
    assert!(!get("1.1.0").deprecated, "only that version");
    assert!(
        ok(store.set_deprecated("ns", "flow", "1.0.0", true)),
        "idempotent"
    );
    assert!(get("1.0.0").deprecated);
    assert_eq!(get("1.0.0").hash, "h");
    assert_eq!(
        ok(store.put_definition(&definition("ns", "flow", "1.0.0", "h"))),
        PutDefinition::Unchanged
    );
    assert!(ok(store.set_deprecated("ns", "flow", "1.0.0", false)));
    assert!(!get("1.0.0").deprecated);
    assert!(!ok(store.set_deprecated("ns", "flow", "3.0.0", true)));
}

// --- instances and history ------------------------------------------------------------------

pub fn apply_creates_instances(store: &dyn Store) {
    assert_eq!(ok(store.get_instance("i1")), None);
    let mut i1 = instance("i1", 100);
    i1.input = json!({
        "z": 1, "a": [1, 2.5, -3, 1e300, "ünïcode ✓ \u{0}", null, true],
        "nested": {"b": {"c": {}}, "a": []},
        "big": 18446744073709551615u64, "neg": -9223372036854775808i64
    });
    let mut i2 = instance("i2", 200);
    i2.namespace = "other".into();
    i2.name = "flow2".into();
    i2.version = "2.0.0".into();
    i2.status = InstanceStatus::Suspended;
    i2.input = Value::String("x".repeat(100_000));
    i2.output = Some(json!({"partial": true}));
    i2.error = Some(json!({"type": "x", "status": 500}));
    i2.updated_ms = 250;
    ok(store.apply(&[create(&i1), create(&i2)]));
    let got = ok(store.get_instance("i1")).expect("i1");
    assert_eq!(got, i1);
    // Key order is kept (JSON objects keep their insertion order).
    assert_eq!(
        serde_json::to_string(&got.input).unwrap(),
        serde_json::to_string(&i1.input).unwrap()
    );
    assert_eq!(ok(store.get_instance("i2")), Some(i2.clone()));
    assert_eq!(ok(store.get_instance("i3")), None);
    let h = ok(store.history("i1", 0, 100));
    assert_eq!(
        h,
        vec![HistoryEvent {
            seq: 1,
            time_ms: 100,
            kind: "started".into(),
            data: i1.input.clone()
        }]
    );
    assert_eq!(ok(store.last_seq("i1")), 1);
    assert_eq!(ok(store.last_seq("i2")), 1);

    // A creation without any history event is allowed too.
    let i4 = instance("i4", 300);
    ok(store.apply(&[Commit {
        instance_id: "i4".into(),
        create: Some(i4.clone()),
        ..Default::default()
    }]));
    assert_eq!(ok(store.get_instance("i4")), Some(i4));
    assert_eq!(ok(store.last_seq("i4")), 0);
    assert!(ok(store.history("i4", 0, 10)).is_empty());

    // Creating an existing instance again is an error.
    assert!(store.apply(&[create(&instance("i1", 100))]).is_err());
    assert_eq!(ok(store.get_instance("i1")), Some(i1));
}

pub fn apply_empty_batch_is_a_no_op(store: &dyn Store) {
    ok(store.apply(&[]));
    ok(store.apply(&[create(&instance("a", 1))]));
    ok(store.apply(&[Commit {
        instance_id: "a".into(),
        now_ms: 5,
        ..Default::default()
    }]));
    let got = ok(store.get_instance("a")).expect("a");
    assert_eq!(
        got.updated_ms, 1,
        "a commit without status leaves updated_ms"
    );
    assert_eq!(ok(store.last_seq("a")), 1);
}

pub fn apply_appends_history_in_order(store: &dyn Store) {
    let a = instance("a", 1);
    // Several commits of one instance in one batch continue each other.
    ok(store.apply(&[create(&a), append("a", 2..=3), append("a", 4..=4)]));
    ok(store.apply(&[append("a", 5..=7)]));
    let all = ok(store.history("a", 0, 100));
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(all[2], event(3, "delivery"));
    assert_eq!(seqs(&ok(store.history("a", 2, 1))), [3]);
    assert_eq!(seqs(&ok(store.history("a", 2, 3))), [3, 4, 5]);
    assert_eq!(seqs(&ok(store.history("a", 6, 100))), [7]);
    assert!(ok(store.history("a", 7, 100)).is_empty());
    assert!(ok(store.history("a", 0, 0)).is_empty());
    assert!(ok(store.history("nope", 0, 100)).is_empty());
    assert_eq!(ok(store.last_seq("a")), 7);
    assert_eq!(ok(store.last_seq("nope")), 0);
    // Histories of instances are independent.
    ok(store.apply(&[
        create(&instance("b", 2)),
        append("b", 2..=2),
        append("a", 8..=8),
    ]));
    assert_eq!(ok(store.last_seq("a")), 8);
    assert_eq!(ok(store.last_seq("b")), 2);
    assert_eq!(seqs(&ok(store.history("b", 0, 100))), [1, 2]);
}

pub fn apply_refuses_seq_gaps(store: &dyn Store) {
    ok(store.apply(&[create(&instance("gap-instance", 1))]));
    // Skips seq 2.
    expect_corrupt(
        store.apply(&[append("gap-instance", 3..=3)]),
        &["gap-instance", "3", "1"],
    );
    // Starts over.
    expect_corrupt(
        store.apply(&[append("gap-instance", 1..=1)]),
        &["gap-instance"],
    );
    // A gap inside one commit.
    let mut c = append("gap-instance", 2..=2);
    c.history.push(event(4, "delivery"));
    expect_corrupt(store.apply(&[c]), &["gap-instance", "4"]);
    // A new instance's history starts at 1.
    let mut c = create(&instance("fresh", 2));
    c.history[0].seq = 2;
    expect_corrupt(store.apply(&[c]), &["fresh", "2"]);
    assert_eq!(ok(store.get_instance("fresh")), None);
    assert_eq!(ok(store.last_seq("gap-instance")), 1);
    assert_eq!(seqs(&ok(store.history("gap-instance", 0, 100))), [1]);
    ok(store.apply(&[append("gap-instance", 2..=3)]));
    assert_eq!(ok(store.last_seq("gap-instance")), 3);
}

pub fn apply_refuses_double_apply(store: &dyn Store) {
    let a = instance("twice", 1);
    let mut c = append("twice", 2..=3);
    c.add_work.push(work("twice", 1, "http", 10));
    ok(store.apply(&[create(&a), c.clone()]));
    expect_corrupt(store.apply(&[c.clone()]), &["twice", "2", "4"]);
    // The same commit twice in one batch.
    let d = append("twice", 4..=4);
    expect_corrupt(store.apply(&[d.clone(), d]), &["twice", "4", "5"]);
    assert_eq!(seqs(&ok(store.history("twice", 0, 100))), [1, 2, 3]);
    assert!(
        store.apply(&[create(&a)]).is_err(),
        "a creation applied twice"
    );
}

pub fn apply_batch_is_all_or_nothing(store: &dyn Store) {
    let mut x = create(&instance("x", 1));
    x.add_work.push(work("x", 1, "http", 5));
    x.add_work.push(work("x", 2, "timer", 50));
    ok(store.apply(&[x]));
    let before_x = ok(store.get_instance("x")).expect("x");

    // The 2nd commit has a seq gap: the 1st commit's rows must be absent too.
    let mut first = create(&instance("a", 2));
    first.add_work.push(work("a", 1, "http", 5));
    expect_corrupt(
        store.apply(&[first.clone(), append("x", 3..=3)]),
        &["x", "3"],
    );
    assert_eq!(ok(store.get_instance("a")), None);
    assert!(ok(store.history("a", 0, 10)).is_empty());
    assert_eq!(ok(store.last_seq("a")), 0);
    assert!(ok(store.work_of("a")).is_empty());

    // Every part of earlier commits is rolled back: history, work added and removed, status.
    let mut x_done = append("x", 2..=2);
    x_done.remove_work = vec![1, 2];
    x_done.add_work.push(work("x", 3, "process", 7));
    x_done.status = Some((InstanceStatus::Completed, Some(json!({"done": true})), None));
    x_done.now_ms = 99;
    let batch = [
        first.clone(),
        x_done.clone(),
        create(&instance("b", 3)),
        append("x", 4..=4),
    ];
    expect_corrupt(store.apply(&batch), &["x", "4"]);
    assert_eq!(ok(store.get_instance("a")), None);
    assert_eq!(ok(store.get_instance("b")), None);
    assert_eq!(ok(store.get_instance("x")), Some(before_x.clone()));
    assert_eq!(ok(store.last_seq("x")), 1);
    assert_eq!(
        work_keys(&ok(store.work_of("x"))),
        [key("x", 1), key("x", 2)]
    );
    assert_eq!(ok(store.running_instances()), ["x"]);

    // Any other error too (here: creating an instance that exists), wherever it comes.
    let batch = [first.clone(), x_done.clone(), create(&instance("x", 1))];
    assert!(store.apply(&batch).is_err());
    assert_eq!(ok(store.get_instance("a")), None);
    assert_eq!(ok(store.get_instance("x")), Some(before_x));
    assert_eq!(
        work_keys(&ok(store.work_of("x"))),
        [key("x", 1), key("x", 2)]
    );

    // And the same batch without the bad commit goes through whole.
    ok(store.apply(&[first, x_done]));
    assert!(ok(store.get_instance("a")).is_some());
    let x = ok(store.get_instance("x")).expect("x");
    assert_eq!(x.status, InstanceStatus::Completed);
    assert_eq!(work_keys(&ok(store.work_of("x"))), [key("x", 3)]);
}

pub fn apply_refuses_unknown_instances(store: &dyn Store) {
    ok(store.apply(&[create(&instance("known", 1))]));
    let history = append("ghost", 1..=1);
    let work_only = Commit {
        instance_id: "ghost".into(),
        add_work: vec![work("ghost", 1, "http", 1)],
        ..Default::default()
    };
    let status = set_status("ghost", InstanceStatus::Completed, 5);
    for bad in [history, work_only, status] {
        let batch = [append("known", 2..=2), bad];
        assert!(
            store.apply(&batch).is_err(),
            "a commit for an instance that does not exist"
        );
        assert_eq!(
            ok(store.last_seq("known")),
            1,
            "and nothing of its batch is kept"
        );
        assert_eq!(ok(store.get_instance("ghost")), None);
        assert!(ok(store.work_of("ghost")).is_empty());
    }
    // Removing work that does not exist is fine (it was answered already).
    ok(store.apply(&[Commit {
        instance_id: "known".into(),
        remove_work: vec![42],
        ..Default::default()
    }]));
}

pub fn apply_updates_status(store: &dyn Store) {
    ok(store.apply(&[create(&instance("s", 100)), create(&instance("f", 100))]));
    ok(store.apply(&[set_status("s", InstanceStatus::Suspended, 200)]));
    let s = ok(store.get_instance("s")).expect("s");
    assert_eq!(
        (s.status, s.created_ms, s.updated_ms),
        (InstanceStatus::Suspended, 100, 200)
    );
    assert_eq!((s.output, s.error), (None, None));
    ok(store.apply(&[set_status("s", InstanceStatus::Running, 250)]));
    let mut done = append("s", 2..=2);
    done.status = Some((
        InstanceStatus::Completed,
        Some(json!({"result": [1, 2, 3]})),
        None,
    ));
    done.now_ms = 300;
    ok(store.apply(&[done]));
    let s = ok(store.get_instance("s")).expect("s");
    assert_eq!(s.status, InstanceStatus::Completed);
    assert_eq!(s.output, Some(json!({"result": [1, 2, 3]})));
    assert_eq!(s.error, None);
    assert_eq!((s.created_ms, s.updated_ms), (100, 300));
    assert_eq!(s.input, json!({"id": "s"}), "input untouched");

    let mut faulted = set_status("f", InstanceStatus::Faulted, 400);
    faulted.status = Some((
        InstanceStatus::Faulted,
        None,
        Some(json!({"type": "https://x/error", "status": 500})),
    ));
    ok(store.apply(&[faulted]));
    let f = ok(store.get_instance("f")).expect("f");
    assert_eq!((f.status, f.updated_ms), (InstanceStatus::Faulted, 400));
    assert_eq!(
        f.error,
        Some(json!({"type": "https://x/error", "status": 500}))
    );
    assert_eq!(f.output, None);

    // A status replaces output and error as given.
    let mut c = set_status("f", InstanceStatus::Cancelled, 500);
    c.status = Some((InstanceStatus::Cancelled, Some(json!(null)), None));
    ok(store.apply(&[c]));
    let f = ok(store.get_instance("f")).expect("f");
    assert_eq!(
        (f.status, f.output, f.error),
        (InstanceStatus::Cancelled, Some(Value::Null), None)
    );
}

pub fn list_instances_newest_first_and_limit_clamp(store: &dyn Store) {
    let all = InstanceFilter::default();
    let page = ok(store.list_instances(&all, None, 10));
    assert!(page.items.is_empty());
    assert!(page.next.is_none());
    ok(store.apply(&[
        create(&instance("a", 10)),
        create(&instance("c", 30)),
        create(&instance("b", 20)),
        create(&instance("d", 30)),
    ]));
    let page = ok(store.list_instances(&all, None, 10));
    assert_eq!(
        ids(&page.items),
        ["d", "c", "b", "a"],
        "created_ms DESC, then id DESC"
    );
    assert!(page.next.is_none(), "no next page when everything fits");
    assert_eq!(page.items[3], instance("a", 10), "full rows");
    let page = ok(store.list_instances(&all, None, 4));
    assert!(page.next.is_none(), "exactly full: still no next page");

    // limit 0 is 1.
    let page = ok(store.list_instances(&all, None, 0));
    assert_eq!(ids(&page.items), ["d"]);
    let page = ok(store.list_instances(&all, page.next.as_deref(), 0));
    assert_eq!(ids(&page.items), ["c"]);

    // limit above 1000 is 1000.
    let many: Vec<Commit> = (0..1001)
        .map(|i| create(&instance(&format!("m{i:04}"), 1_000 + i)))
        .collect();
    ok(store.apply(&many));
    let page = ok(store.list_instances(&all, None, 5000));
    assert_eq!(page.items.len(), 1000);
    assert_eq!(page.items[0].id, "m1000");
    let page = ok(store.list_instances(&all, page.next.as_deref(), u32::MAX));
    assert_eq!(ids(&page.items), ["m0000", "d", "c", "b", "a"]);
    assert!(page.next.is_none());
}

pub fn list_instances_filters(store: &dyn Store) {
    use InstanceStatus::*;
    let mut model = Vec::new();
    let statuses = [Running, Suspended, Completed, Faulted, Cancelled];
    for i in 0..60i64 {
        let mut inst = instance(&format!("i{i:02}"), 1_000 + (i / 2) * 10);
        inst.namespace = ["a", "b"][(i % 2) as usize].into();
        inst.name = ["x", "y", "z"][(i % 3) as usize].into();
        inst.version = ["1.0.0", "2.0.0"][((i / 5) % 2) as usize].into();
        inst.status = statuses[(i % 5) as usize];
        model.push(inst);
    }
    let creates: Vec<Commit> = model
        .iter()
        .map(|inst| {
            let mut running = inst.clone();
            running.status = Running;
            create(&running)
        })
        .collect();
    ok(store.apply(&creates));
    let updates: Vec<Commit> = model
        .iter()
        .filter(|i| i.status != Running)
        .map(|i| set_status(&i.id, i.status, i.updated_ms))
        .collect();
    ok(store.apply(&updates));

    let filters = [
        InstanceFilter::default(),
        InstanceFilter {
            namespace: Some("a".into()),
            ..Default::default()
        },
        InstanceFilter {
            namespace: Some("b".into()),
            name: Some("y".into()),
            ..Default::default()
        },
        InstanceFilter {
            name: Some("z".into()),
            ..Default::default()
        },
        InstanceFilter {
            namespace: Some("a".into()),
            name: Some("x".into()),
            version: Some("2.0.0".into()),
            ..Default::default()
        },
        InstanceFilter {
            version: Some("1.0.0".into()),
            ..Default::default()
        },
        InstanceFilter {
            status: Some(Running),
            ..Default::default()
        },
        InstanceFilter {
            status: Some(Faulted),
            namespace: Some("b".into()),
            ..Default::default()
        },
        InstanceFilter {
            from_ms: Some(1_100),
            ..Default::default()
        },
        InstanceFilter {
            to_ms: Some(1_100),
            ..Default::default()
        },
        InstanceFilter {
            from_ms: Some(1_050),
            to_ms: Some(1_150),
            status: Some(Completed),
            ..Default::default()
        },
        InstanceFilter {
            from_ms: Some(1_100),
            to_ms: Some(1_100),
            ..Default::default()
        },
        InstanceFilter {
            namespace: Some("c".into()),
            ..Default::default()
        },
        InstanceFilter {
            namespace: Some("a".into()),
            name: Some("x".into()),
            version: Some("1.0.0".into()),
            status: Some(Completed),
            from_ms: Some(0),
            to_ms: Some(10_000),
            within: None,
        },
        InstanceFilter {
            within: Some(vec!["a".into(), "c".into()]),
            ..Default::default()
        },
        InstanceFilter {
            within: Some(vec![]),
            ..Default::default()
        },
        InstanceFilter {
            within: Some(vec!["b".into()]),
            namespace: Some("a".into()),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let mut expected: Vec<&Instance> = model
            .iter()
            .filter(|i| filter.namespace.as_ref().is_none_or(|v| &i.namespace == v))
            .filter(|i| {
                filter
                    .within
                    .as_ref()
                    .is_none_or(|v| v.contains(&i.namespace))
            })
            .filter(|i| filter.name.as_ref().is_none_or(|v| &i.name == v))
            .filter(|i| filter.version.as_ref().is_none_or(|v| &i.version == v))
            .filter(|i| filter.status.is_none_or(|v| i.status == v))
            .filter(|i| filter.from_ms.is_none_or(|v| i.created_ms >= v))
            .filter(|i| filter.to_ms.is_none_or(|v| i.created_ms < v))
            .collect();
        expected.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        let expected: Vec<String> = expected.iter().map(|i| i.id.clone()).collect();
        assert_eq!(all_pages(store, filter, 1000), expected, "{filter:?}");
        assert_eq!(
            all_pages(store, filter, 3),
            expected,
            "{filter:?} in pages of 3"
        );
    }
    let one = ok(store.list_instances(&filters[7], None, 1000));
    assert!(
        one.items
            .iter()
            .all(|i| i.status == Faulted && i.namespace == "b")
    );
    assert!(!one.items.is_empty());
}

pub fn list_instances_paginates_without_duplicates_or_gaps(store: &dyn Store) {
    // 25 instances, 3 per created_ms (ties are broken by id).
    let originals: Vec<Commit> = (0..25i64)
        .map(|i| create(&instance(&format!("p{i:02}"), 1_000 + i / 3)))
        .collect();
    ok(store.apply(&originals));
    let mut expected: Vec<(i64, String)> = (0..25i64)
        .map(|i| (1_000 + i / 3, format!("p{i:02}")))
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let all = InstanceFilter::default();
    let first = ok(store.list_instances(&all, None, 10));
    let stop = AtomicBool::new(false);
    let (second, third) = std::thread::scope(|scope| {
        // Meanwhile, new instances keep arriving (newer, as they do).
        let writer = scope.spawn(|| {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) && n < 2_000 {
                ok(store.apply(&[create(&instance(&format!("new{n:05}"), 5_000 + n))]));
                n += 1;
            }
            n
        });
        // Some arrive between pages for sure.
        ok(store.apply(&[
            create(&instance("between-1", 4_000)),
            create(&instance("between-2", 1_008)),
        ]));
        let second = ok(store.list_instances(&all, first.next.as_deref(), 10));
        ok(store.apply(&[create(&instance("between-3", 4_001))]));
        let third = ok(store.list_instances(&all, second.next.as_deref(), 10));
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer thread");
        (second, third)
    });
    assert_eq!(first.items.len(), 10);
    assert_eq!(second.items.len(), 10);
    assert_eq!(third.items.len(), 5);
    assert!(first.next.is_some() && second.next.is_some());
    assert!(third.next.is_none(), "the last page says so");
    let got: Vec<String> = [first, second, third]
        .iter()
        .flat_map(|p| ids(&p.items))
        .collect();
    assert_eq!(got, expected, "no duplicates, no gaps");
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 25);
}

pub fn list_instances_rejects_malformed_cursor(store: &dyn Store) {
    ok(store.apply(&[create(&instance("a", 1)), create(&instance("b", 2))]));
    for bad in [
        "",
        "garbage!",
        "%%%",
        "bm90LWEtY3Vyc29y",
        "MTIzNA",
        "=",
        "\u{1F600}",
    ] {
        match store.list_instances(&InstanceFilter::default(), Some(bad), 10) {
            Err(StoreError::Db(m)) => assert_eq!(m, "invalid cursor", "cursor {bad:?}"),
            other => panic!("cursor {bad:?}: expected Db(\"invalid cursor\"), got {other:?}"),
        }
    }
    // A real cursor works with other filters too (it is only a position).
    let page = ok(store.list_instances(&InstanceFilter::default(), None, 1));
    let next = page.next.expect("next");
    let filtered = InstanceFilter {
        status: Some(InstanceStatus::Running),
        ..Default::default()
    };
    assert_eq!(
        ids(&ok(store.list_instances(&filtered, Some(&next), 10)).items),
        ["a"]
    );
}

// --- work -----------------------------------------------------------------------------------

pub fn work_add_replace_remove(store: &dyn Store) {
    let mut c = create(&instance("w", 1));
    let mut big = work("w", 3, "listen", 0);
    big.effect = json!({"filter": "x".repeat(50_000)});
    big.attempts = 2;
    c.add_work = vec![
        work("w", 2, "timer", 500),
        work("w", 1, "http", 10),
        big.clone(),
    ];
    ok(store.apply(&[c]));
    let rows = ok(store.work_of("w"));
    assert_eq!(
        rows,
        vec![work("w", 1, "http", 10), work("w", 2, "timer", 500), big],
        "all fields, by effect id"
    );
    assert!(ok(store.work_of("nope")).is_empty());

    // Adding an existing effect id replaces the row.
    let mut replaced = work("w", 1, "http", 20);
    replaced.task = "/do/9/other".into();
    let c = Commit {
        instance_id: "w".into(),
        add_work: vec![replaced.clone()],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    assert_eq!(ok(store.work_of("w"))[0], replaced);

    // Remove; removing what is gone is fine; adds come before removes within a commit.
    let c = Commit {
        instance_id: "w".into(),
        add_work: vec![work("w", 4, "process", 30)],
        remove_work: vec![2, 4, 77],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    assert_eq!(
        work_keys(&ok(store.work_of("w"))),
        [key("w", 1), key("w", 3)]
    );

    // Work of other instances is separate.
    let mut other = create(&instance("v", 2));
    other.add_work = vec![work("v", 1, "http", 10)];
    ok(store.apply(&[other]));
    let c = Commit {
        instance_id: "v".into(),
        remove_work: vec![1, 3],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    assert!(ok(store.work_of("v")).is_empty());
    assert_eq!(
        work_keys(&ok(store.work_of("w"))),
        [key("w", 1), key("w", 3)]
    );
}

/// r1, r2 running; s suspended; d completed (with leftover rows, which must not run).
fn work_fixture(store: &dyn Store) {
    let mut r1 = create(&instance("r1", 1));
    r1.add_work = vec![
        work("r1", 1, "http", 100),
        work("r1", 2, "timer", 500),
        work("r1", 3, "listen", 50),
        work("r1", 4, "process", 100),
        work("r1", 5, "timer", 300),
    ];
    let mut r2 = create(&instance("r2", 2));
    r2.add_work = vec![
        work("r2", 1, "http", 100),
        work("r2", 2, "listen", 60),
        work("r2", 3, "workflow", 90),
    ];
    let mut s = create(&instance("s", 3));
    s.add_work = vec![
        work("s", 1, "http", 10),
        work("s", 2, "timer", 20),
        work("s", 3, "listen", 30),
    ];
    let mut d = create(&instance("d", 4));
    d.add_work = vec![
        work("d", 1, "http", 10),
        work("d", 2, "timer", 20),
        work("d", 3, "listen", 30),
    ];
    ok(store.apply(&[r1, r2, s, d]));
    ok(store.apply(&[
        set_status("s", InstanceStatus::Suspended, 5),
        set_status("d", InstanceStatus::Completed, 5),
    ]));
}

pub fn due_work_only_running_non_listen_in_order(store: &dyn Store) {
    assert!(ok(store.due_work(i64::MAX, 100)).is_empty());
    work_fixture(store);
    assert_eq!(
        work_keys(&ok(store.due_work(100, 100))),
        [key("r2", 3), key("r1", 1), key("r1", 4), key("r2", 1)],
        "due_ms, then instance, then effect; no listen; only running instances"
    );
    assert_eq!(work_keys(&ok(store.due_work(99, 100))), [key("r2", 3)]);
    assert!(ok(store.due_work(89, 100)).is_empty());
    assert_eq!(
        work_keys(&ok(store.due_work(i64::MAX, 100))),
        [
            key("r2", 3),
            key("r1", 1),
            key("r1", 4),
            key("r2", 1),
            key("r1", 5),
            key("r1", 2)
        ]
    );
    assert_eq!(
        work_keys(&ok(store.due_work(i64::MAX, 2))),
        [key("r2", 3), key("r1", 1)]
    );
    let rows = ok(store.due_work(90, 1));
    assert_eq!(rows, vec![work("r2", 3, "workflow", 90)], "full rows");

    // Resuming makes the suspended instance's work due again.
    ok(store.apply(&[set_status("s", InstanceStatus::Running, 6)]));
    assert_eq!(
        work_keys(&ok(store.due_work(20, 100))),
        [key("s", 1), key("s", 2)]
    );
}

pub fn next_timer_of_running_instances(store: &dyn Store) {
    assert_eq!(ok(store.next_timer()), None);
    let mut c = create(&instance("x", 1));
    c.add_work = vec![work("x", 1, "http", 5), work("x", 2, "listen", 6)];
    ok(store.apply(&[c]));
    assert_eq!(ok(store.next_timer()), None, "only timers count");
    assert!(
        ok(store.due_timers(1_000, 10)).is_empty(),
        "calls and listens are not timers"
    );
    let c = Commit {
        instance_id: "x".into(),
        add_work: vec![work("x", 3, "timer", 7), work("x", 4, "timer", 900)],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    assert_eq!(work_keys(&ok(store.due_timers(100, 10))), [key("x", 3)]);
    let c = Commit {
        instance_id: "x".into(),
        remove_work: vec![3, 4],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    work_fixture(store);
    assert_eq!(
        ok(store.next_timer()),
        Some(300),
        "the suspended and completed instances' timers do not count"
    );
    let c = Commit {
        instance_id: "r1".into(),
        remove_work: vec![5],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    assert_eq!(ok(store.next_timer()), Some(500));
    ok(store.apply(&[set_status("s", InstanceStatus::Running, 9)]));
    assert_eq!(ok(store.next_timer()), Some(20));
    ok(store.apply(&[
        set_status("s", InstanceStatus::Cancelled, 10),
        set_status("r1", InstanceStatus::Suspended, 10),
    ]));
    assert_eq!(ok(store.next_timer()), None);
}

pub fn mark_attempt_counts(store: &dyn Store) {
    let mut c = create(&instance("m", 1));
    c.add_work = vec![work("m", 1, "http", 1), work("m", 2, "process", 1)];
    ok(store.apply(&[c]));
    assert_eq!(ok(store.mark_attempt("m", 1)), Some(1));
    assert_eq!(ok(store.mark_attempt("m", 1)), Some(2));
    assert_eq!(ok(store.mark_attempt("m", 1)), Some(3));
    assert_eq!(ok(store.mark_attempt("m", 2)), Some(1));
    let rows = ok(store.work_of("m"));
    assert_eq!((rows[0].attempts, rows[1].attempts), (3, 1));
    assert_eq!(ok(store.mark_attempt("m", 3)), None, "no such row");
    assert_eq!(ok(store.mark_attempt("nope", 1)), None);
    let c = Commit {
        instance_id: "m".into(),
        remove_work: vec![1],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    assert_eq!(ok(store.mark_attempt("m", 1)), None, "gone");
    // A replaced row starts from the attempts it is given.
    let mut again = work("m", 2, "process", 1);
    again.attempts = 7;
    ok(store.apply(&[Commit {
        instance_id: "m".into(),
        add_work: vec![again],
        ..Default::default()
    }]));
    assert_eq!(ok(store.mark_attempt("m", 2)), Some(8));
    assert_eq!(ok(store.due_work(10, 10))[0].attempts, 8);
}

pub fn subscriptions_of_running_instances(store: &dyn Store) {
    assert!(ok(store.subscriptions()).is_empty());
    work_fixture(store);
    let subs = ok(store.subscriptions());
    assert_eq!(work_keys(&subs), [key("r1", 3), key("r2", 2)]);
    assert_eq!(subs[0], work("r1", 3, "listen", 50), "full rows");
    ok(store.apply(&[
        set_status("r1", InstanceStatus::Suspended, 9),
        set_status("s", InstanceStatus::Running, 9),
    ]));
    assert_eq!(
        work_keys(&ok(store.subscriptions())),
        [key("r2", 2), key("s", 3)]
    );
    let c = Commit {
        instance_id: "r2".into(),
        remove_work: vec![2],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    assert_eq!(work_keys(&ok(store.subscriptions())), [key("s", 3)]);
}

pub fn running_instances_lists_running_only(store: &dyn Store) {
    assert!(ok(store.running_instances()).is_empty());
    work_fixture(store);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(ok(store.running_instances())), ["r1", "r2"]);
    ok(store.apply(&[
        set_status("r1", InstanceStatus::Faulted, 9),
        set_status("s", InstanceStatus::Running, 9),
        create(&instance("n", 10)),
    ]));
    assert_eq!(sorted(ok(store.running_instances())), ["n", "r2", "s"]);
}

pub fn effect_ids_use_the_full_u64_range(store: &dyn Store) {
    let ids = [0u64, 1, i64::MAX as u64, 1 << 63, u64::MAX];
    let mut c = create(&instance("u", 1));
    c.add_work = ids.iter().map(|&e| work("u", e, "http", 1)).collect();
    ok(store.apply(&[c]));
    let mut got: Vec<u64> = ok(store.work_of("u")).iter().map(|w| w.effect_id).collect();
    got.sort();
    assert_eq!(got, ids);
    assert_eq!(ok(store.mark_attempt("u", u64::MAX)), Some(1));
    let due = ok(store.due_work(1, 100));
    assert!(
        due.iter()
            .any(|w| w.effect_id == u64::MAX && w.attempts == 1)
    );
    let c = Commit {
        instance_id: "u".into(),
        remove_work: vec![u64::MAX, 1 << 63],
        ..Default::default()
    };
    ok(store.apply(&[c]));
    let mut got: Vec<u64> = ok(store.work_of("u")).iter().map(|w| w.effect_id).collect();
    got.sort();
    assert_eq!(got, [0, 1, i64::MAX as u64]);
}

pub fn concurrent_writers_and_readers(store: &dyn Store) {
    const THREADS: usize = 4;
    const STEPS: i64 = 50;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                let id = format!("t{t}");
                ok(store.apply(&[create(&instance(&id, t as i64))]));
                for seq in 2..=STEPS {
                    let mut c = append(&id, seq..=seq);
                    c.add_work.push(work(&id, seq as u64, "http", seq));
                    c.remove_work.push(seq as u64 - 1);
                    ok(store.apply(&[c]));
                    // Reads see at least what this thread committed.
                    assert!(ok(store.last_seq(&id)) >= seq);
                    assert_eq!(work_keys(&ok(store.work_of(&id))), [key(&id, seq as u64)]);
                    ok(store.list_instances(&InstanceFilter::default(), None, 10));
                    ok(store.due_work(i64::MAX, 10));
                }
            });
        }
    });
    for t in 0..THREADS {
        let id = format!("t{t}");
        assert_eq!(ok(store.last_seq(&id)), STEPS);
        assert_eq!(
            seqs(&ok(store.history(&id, 0, 1000))),
            (1..=STEPS).collect::<Vec<_>>()
        );
    }
    assert_eq!(ok(store.running_instances()).len(), THREADS);
}

// --- schedules ------------------------------------------------------------------------------

pub fn schedule(namespace: &str, name: &str, next_fire_ms: Option<i64>) -> ScheduleRow {
    ScheduleRow {
        namespace: namespace.into(),
        name: name.into(),
        version: "1.0.0".into(),
        next_fire_ms,
        last_fire_ms: None,
        paused: false,
        revision: 0,
        updated_ms: 1,
        state: json!({"kind": "cron", "outbox": []}),
    }
}

pub fn schedules_put_is_compare_and_set(store: &dyn Store) {
    let mut row = schedule("ns", "a", Some(100));
    assert!(ok(store.put_schedule(&row)), "revision 0 creates");
    assert!(
        !ok(store.put_schedule(&row)),
        "revision 0 again: the row exists"
    );
    let stored = ok(store.get_schedule("ns", "a")).expect("stored");
    assert_eq!(stored.revision, 1);
    assert_eq!(
        stored,
        ScheduleRow {
            revision: 1,
            ..row.clone()
        }
    );

    // A write from revision 1 succeeds once; a second writer holding revision 1 loses.
    row.revision = 1;
    row.next_fire_ms = Some(200);
    row.last_fire_ms = Some(100);
    row.version = "1.1.0".into();
    row.state =
        json!({"kind": "cron", "outbox": [{"id": "x", "fire_ms": 100}], "big": "z".repeat(10_000)});
    row.updated_ms = 7;
    assert!(ok(store.put_schedule(&row)));
    let mut stale = row.clone();
    stale.next_fire_ms = Some(999);
    assert!(
        !ok(store.put_schedule(&stale)),
        "a stale revision writes nothing"
    );
    let stored = ok(store.get_schedule("ns", "a")).expect("stored");
    assert_eq!(
        stored,
        ScheduleRow {
            revision: 2,
            ..row.clone()
        }
    );
    // Unset times round-trip as None.
    let mut r = stored.clone();
    r.next_fire_ms = None;
    assert!(ok(store.put_schedule(&r)));
    let stored = ok(store.get_schedule("ns", "a")).expect("stored");
    assert_eq!((stored.next_fire_ms, stored.revision), (None, 3));
    // A revision that never existed writes nothing, and creates nothing.
    let mut ghost = schedule("ns", "ghost", Some(1));
    ghost.revision = 5;
    assert!(!ok(store.put_schedule(&ghost)));
    assert_eq!(ok(store.get_schedule("ns", "ghost")), None);
}

pub fn schedules_list_get_delete(store: &dyn Store) {
    assert!(ok(store.list_schedules()).is_empty());
    assert_eq!(ok(store.get_schedule("ns", "a")), None);
    for (ns, name) in [("b", "z"), ("a", "y"), ("b", "a"), ("a", "x")] {
        assert!(ok(store.put_schedule(&schedule(ns, name, Some(1)))));
    }
    let keys: Vec<(String, String)> = ok(store.list_schedules())
        .into_iter()
        .map(|r| (r.namespace, r.name))
        .collect();
    let expect: Vec<(String, String)> = [("a", "x"), ("a", "y"), ("b", "a"), ("b", "z")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(keys, expect, "sorted by namespace, then name");
    assert!(ok(store.delete_schedule("a", "y")));
    assert!(!ok(store.delete_schedule("a", "y")), "already gone");
    assert_eq!(ok(store.get_schedule("a", "y")), None);
    assert_eq!(ok(store.list_schedules()).len(), 3);
    // Deleted rows can be created again from revision 0.
    assert!(ok(store.put_schedule(&schedule("a", "y", None))));
    assert_eq!(
        ok(store.get_schedule("a", "y")).map(|r| r.revision),
        Some(1)
    );
}

pub fn schedules_pause_and_next_fire(store: &dyn Store) {
    assert_eq!(ok(store.next_schedule_fire()), None);
    assert_eq!(ok(store.set_schedule_paused("ns", "none", true, 5)), None);
    assert!(ok(store.put_schedule(&schedule("ns", "a", Some(300)))));
    assert!(ok(store.put_schedule(&schedule("ns", "b", Some(200)))));
    assert!(ok(store.put_schedule(&schedule("ns", "c", None))));
    assert_eq!(ok(store.next_schedule_fire()), Some(200));
    let paused = ok(store.set_schedule_paused("ns", "b", true, 42)).expect("row");
    assert!(paused.paused);
    assert_eq!(
        (paused.revision, paused.updated_ms, paused.next_fire_ms),
        (2, 42, Some(200))
    );
    assert_eq!(
        ok(store.next_schedule_fire()),
        Some(300),
        "paused rows are left out"
    );
    // Pausing bumps the revision: a writer that read the row before loses its compare-and-set.
    let mut before = schedule("ns", "b", Some(250));
    before.revision = 1;
    assert!(!ok(store.put_schedule(&before)));
    let resumed = ok(store.set_schedule_paused("ns", "b", false, 43)).expect("row");
    assert!(!resumed.paused);
    assert_eq!(resumed.revision, 3);
    assert_eq!(ok(store.next_schedule_fire()), Some(200));
    assert!(ok(store.get_schedule("ns", "a")).is_some_and(|r| !r.paused));
}

pub fn events_are_pending_until_a_commit_processes_them(store: &dyn Store) {
    assert!(ok(store.pending_events(10)).is_empty());
    let a = ok(store.add_event(&serde_json::json!({"id": "a"}), 1));
    let b = ok(store.add_event(&serde_json::json!({"id": "b"}), 2));
    assert!(b > a, "ids increase");
    let pending = ok(store.pending_events(10));
    assert_eq!(
        pending.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [a, b]
    );
    assert_eq!(pending[1].1["id"], "b");
    assert_eq!(ok(store.pending_events(1)).len(), 1, "limit");
    // A commit with no instance can mark events (an event that matched nobody).
    ok(store.apply(&[Commit {
        processed_events: vec![a],
        ..Default::default()
    }]));
    assert_eq!(
        ok(store.pending_events(10))
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        [b]
    );
    // A failing batch marks nothing.
    let mut bad = create(&instance("e1", 1));
    bad.processed_events = vec![b];
    let dup = create(&instance("e1", 1));
    assert!(store.apply(&[bad, dup]).is_err());
    assert_eq!(ok(store.pending_events(10)).len(), 1);
}

pub fn attention_parks_an_instance(store: &dyn Store) {
    let a = instance("a", 1);
    let b = instance("b", 2);
    let mut ca = create(&a);
    ca.add_work = vec![work("a", 1, "timer", 10), work("a", 2, "listen", 0)];
    let mut cb = create(&b);
    cb.add_work = vec![work("b", 1, "timer", 10), work("b", 2, "listen", 0)];
    ok(store.apply(&[ca, cb]));
    ok(store.set_attention("a", Some("history record #3 cannot be read")));
    let got = ok(store.get_instance("a")).expect("a");
    assert_eq!(
        got.attention.as_deref(),
        Some("history record #3 cannot be read")
    );
    assert_eq!(ok(store.get_instance("b")).expect("b").attention, None);
    // A parked instance's work is not resumed.
    assert_eq!(work_keys(&ok(store.due_work(100, 100))), vec![key("b", 1)]);
    assert_eq!(
        work_keys(&ok(store.due_timers(100, 100))),
        vec![key("b", 1)]
    );
    assert_eq!(work_keys(&ok(store.subscriptions())), vec![key("b", 2)]);
    // Cleared: back in motion; a commit can clear all of an instance's work at once.
    ok(store.set_attention("a", None));
    assert_eq!(ok(store.due_work(100, 100)).len(), 2);
    ok(store.apply(&[Commit {
        instance_id: "a".into(),
        clear_work: true,
        now_ms: 5,
        ..Default::default()
    }]));
    assert!(ok(store.work_of("a")).is_empty());
    assert_eq!(ok(store.work_of("b")).len(), 2);
}

pub fn idempotency_keys_commit_with_their_instance_and_expire(store: &dyn Store) {
    let k = |ns: &str, inst: &str, expires_ms: i64| crate::IdempotencyKey {
        namespace: ns.into(),
        key: "order-1".into(),
        request_hash: format!("hash-{inst}"),
        instance_id: inst.into(),
        expires_ms,
    };
    let mut c = create(&instance("i1", 1));
    c.idempotency = Some(k("default", "i1", 1_000));
    ok(store.apply(&[c]));
    assert_eq!(
        ok(store.idempotency_key("default", "order-1", 999)),
        Some(k("default", "i1", 1_000))
    );
    // Keys are per namespace; expired ones are not answered.
    assert_eq!(ok(store.idempotency_key("other", "order-1", 999)), None);
    assert_eq!(ok(store.idempotency_key("default", "order-1", 1_000)), None);
    // A failed batch records no key.
    let mut c2 = create(&instance("i2", 2));
    c2.idempotency = Some(k("other", "i2", 5_000));
    let bad = append("missing", 1..=1);
    assert!(store.apply(&[c2, bad]).is_err());
    assert_eq!(ok(store.idempotency_key("other", "order-1", 0)), None);
    // Pruning removes expired keys only, a bounded number at a time.
    let mut c3 = create(&instance("i3", 3));
    c3.idempotency = Some(k("third", "i3", 9_000));
    ok(store.apply(&[c3]));
    assert_eq!(ok(store.prune_idempotency_keys(2_000, 100)), 1);
    assert_eq!(ok(store.prune_idempotency_keys(2_000, 100)), 0);
    assert!(ok(store.idempotency_key("third", "order-1", 2_000)).is_some());
}

mod failing;
pub use failing::FailingStore;

// --- retention ------------------------------------------------------------------------------

pub fn retention_prunes_finished_instances_only(store: &dyn Store) {
    for (id, created) in [
        ("old-done", 1),
        ("old-failed", 2),
        ("old-running", 3),
        ("new-done", 4),
    ] {
        let mut c = create(&instance(id, created));
        c.add_work.push(work(id, 1, "timer", 10));
        ok(store.apply(&[c]));
    }
    let finish = |id: &str, status, at| ok(store.apply(&[set_status(id, status, at)]));
    finish("old-done", InstanceStatus::Completed, 100);
    finish("old-failed", InstanceStatus::Faulted, 110);
    finish("new-done", InstanceStatus::Completed, 10_000);
    ok(store.apply(&[append("old-done", 2..=4)]));

    let due: Vec<String> = ok(store.finished_before(1_000, 10))
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        due,
        ["old-done", "old-failed"],
        "oldest first, finished only"
    );
    assert_eq!(
        ok(store.finished_before(1_000, 1)).len(),
        1,
        "at most the limit"
    );
    // A running instance named by mistake is left alone.
    let n = ok(store.delete_instances(&[
        "old-done".into(),
        "old-failed".into(),
        "old-running".into(),
        "nobody".into(),
    ]));
    assert_eq!(n, 2);
    for gone in ["old-done", "old-failed"] {
        assert_eq!(ok(store.get_instance(gone)), None);
        assert!(
            ok(store.history(gone, 0, 100)).is_empty(),
            "{gone}: history"
        );
        assert!(ok(store.work_of(gone)).is_empty(), "{gone}: work");
        assert_eq!(ok(store.last_seq(gone)), 0);
    }
    assert!(ok(store.get_instance("old-running")).is_some());
    assert_eq!(ok(store.work_of("old-running")).len(), 1);
    assert!(ok(store.get_instance("new-done")).is_some());
    assert!(ok(store.finished_before(1_000, 10)).is_empty());
    // An id may be used again once its instance is gone.
    ok(store.apply(&[create(&instance("old-done", 5))]));

    let stats = ok(store.table_stats());
    let rows = |t: &str| stats.iter().find(|s| s.table == t).map(|s| s.rows);
    assert_eq!(rows("instances"), Some(3), "{stats:?}");
    assert_eq!(
        rows("work"),
        Some(2),
        "old-running's and new-done's: {stats:?}"
    );
}

pub fn retention_prunes_processed_events_only(store: &dyn Store) {
    let old = ok(store.add_event(&json!({"id": "old"}), 10));
    let pending = ok(store.add_event(&json!({"id": "pending"}), 20));
    let new = ok(store.add_event(&json!({"id": "new"}), 5_000));
    ok(store.apply(&[create(&instance("e", 1))]));
    let mut c = append("e", 2..=2);
    c.processed_events = vec![old, new];
    ok(store.apply(&[c]));
    assert_eq!(
        ok(store.prune_events(1_000, 10)),
        1,
        "the old processed one only"
    );
    assert_eq!(ok(store.prune_events(1_000, 10)), 0);
    let left: Vec<i64> = ok(store.pending_events(10))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        left,
        [pending],
        "pending events are kept whatever their age"
    );
    let stats = ok(store.table_stats());
    let events = stats.iter().find(|s| s.table == "events").map(|s| s.rows);
    assert_eq!(events, Some(2), "{stats:?}");
}

// --- access control, secrets, alerts, lookups -------------------------------------------------

fn token(id: &str, name: &str) -> crate::TokenRow {
    crate::TokenRow {
        id: id.into(),
        name: name.into(),
        role: "viewer".into(),
        namespaces: vec!["a".into(), "b".into()],
        secret_sha256: "ab".repeat(32),
        created_ms: 1,
        created_by: "admin".into(),
        expires_ms: Some(10),
        revoked_ms: None,
    }
}

pub fn tokens_are_unique_and_revocation_frees_the_name(store: &dyn Store) {
    assert!(ok(store.put_token(&token("t1", "ci"))));
    assert!(!ok(store.put_token(&token("t1", "other"))), "same id");
    assert!(!ok(store.put_token(&token("t2", "ci"))), "same live name");
    let revoked = ok(store.revoke_token("ci", 5)).expect("revoked");
    assert_eq!((revoked.id.as_str(), revoked.revoked_ms), ("t1", Some(5)));
    assert!(ok(store.revoke_token("ci", 6)).is_none(), "already revoked");
    assert!(
        ok(store.put_token(&token("t2", "ci"))),
        "the name is free again"
    );
    let all = ok(store.tokens());
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].namespaces, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(all[0].revoked_ms, Some(5));
    assert_eq!(
        ok(store.revoke_token("t2", 7)).map(|t| t.name),
        Some("ci".into())
    );
}

pub fn audit_chains_across_appends_and_filters(store: &dyn Store) {
    let e = |i: i64, actor: &str, action: &str| crate::AuditEntry {
        at_ms: i,
        actor: actor.into(),
        action: action.into(),
        resource: format!("r{i}"),
        namespace: Some(if i == 2 { "other" } else { "ns" }.into()),
        source: "test".into(),
        result: "200".into(),
    };
    ok(store.append_audit(&[e(1, "a", "instances.start"), e(2, "b", "tokens.create")]));
    let last = ok(store.append_audit(&[e(3, "a", "instances.cancel")])).expect("last");
    assert_eq!(last.seq, 3);
    // Started in a commit, the chain goes on.
    let mut c = create(&instance("audited", 1));
    c.audit.push(e(4, "c", "instances.start"));
    ok(store.apply(&[c]));
    let all = ok(store.audit(&Default::default(), 0, 100));
    let mut v = crate::security::ChainVerifier::default();
    for r in &all {
        v.check(r).expect("the chain holds");
    }
    assert_eq!(v.head().0, 4);
    let filter = crate::AuditFilter {
        actor: Some("a".into()),
        action: Some("instances.".into()),
        ..Default::default()
    };
    let seqs = |f: &crate::AuditFilter, after| -> Vec<i64> {
        ok(store.audit(f, after, 100))
            .iter()
            .map(|r| r.seq)
            .collect()
    };
    assert_eq!(seqs(&filter, 0), [1, 3]);
    // The action is a prefix, matched literally (no pattern characters).
    let literal = crate::AuditFilter {
        action: Some("instances%".into()),
        ..Default::default()
    };
    assert!(seqs(&literal, 0).is_empty());
    let by_ns = crate::AuditFilter {
        namespace: Some("other".into()),
        since_ms: Some(2),
        until_ms: Some(3),
        ..Default::default()
    };
    assert_eq!(seqs(&by_ns, 0), [2]);
    assert_eq!(ok(store.audit(&Default::default(), 1, 1))[0].seq, 2);
}

pub fn secrets_are_replaced_listed_and_deleted(store: &dyn Store) {
    let s = |ns: &str, name: &str, v: &str| crate::SecretRow {
        namespace: ns.into(),
        name: name.into(),
        key_id: "k1".into(),
        nonce: "n".into(),
        ciphertext: v.into(),
        updated_ms: 1,
    };
    ok(store.put_secrets(&[s("b", "x", "1"), s("a", "y", "2")]));
    ok(store.put_secrets(&[s("b", "x", "3")]));
    let all = ok(store.secrets());
    let got: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|r| (r.namespace.as_str(), r.name.as_str(), r.ciphertext.as_str()))
        .collect();
    assert_eq!(got, [("a", "y", "2"), ("b", "x", "3")]);
    assert!(ok(store.delete_secret("b", "x")));
    assert!(!ok(store.delete_secret("b", "x")));
    assert_eq!(ok(store.secrets()).len(), 1);
}

pub fn alerts_fire_once_until_resolved(store: &dyn Store) {
    let alert = |id: &str, fired: i64| crate::AlertRow {
        id: id.into(),
        rule: "r".into(),
        key: "k".into(),
        namespace: Some("ns".into()),
        fired_ms: fired,
        summary: "s".into(),
        data: json!({"on": "x"}),
        delivered_ms: None,
        attempts: 0,
        next_ms: Some(fired),
        last_error: None,
        resolved_ms: None,
    };
    assert!(ok(store.fire_alert(&alert("a1", 10))));
    assert!(
        !ok(store.fire_alert(&alert("a2", 11))),
        "the same condition again"
    );
    assert_eq!(ok(store.due_alerts(10, 10)).len(), 1);
    ok(store.alert_attempted(
        "a1",
        crate::AlertAttempt::Failed {
            next_ms: Some(50),
            error: "refused".into(),
        },
    ));
    assert!(
        ok(store.due_alerts(20, 10)).is_empty(),
        "not before its next attempt"
    );
    ok(store.alert_attempted("a1", crate::AlertAttempt::Delivered { at_ms: 60 }));
    let row = ok(store.alerts(None, 10)).remove(0);
    assert_eq!(
        (row.attempts, row.delivered_ms, row.next_ms),
        (2, Some(60), None)
    );
    assert!(ok(store.clear_alert("r", "k")));
    assert!(!ok(store.clear_alert("r", "k")));
    assert!(
        ok(store.fire_alert(&alert("a3", 70))),
        "fires again once resolved"
    );
    let ids: Vec<String> = ok(store.alerts(None, 10))
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["a3"]);
    assert!(ok(store.alerts(Some(70), 10)).is_empty());
}

pub fn short_ids_match_a_prefix_then_a_suffix(store: &dyn Store) {
    for (id, t) in [
        ("0190-aaaa-1111", 1),
        ("0190-aaab-2222", 2),
        ("0191-cccc-1111", 3),
    ] {
        ok(store.apply(&[create(&instance(id, t))]));
    }
    assert_eq!(
        ok(store.instance_ids_matching("0190-aaa", 10)),
        ["0190-aaaa-1111", "0190-aaab-2222"]
    );
    assert_eq!(
        ok(store.instance_ids_matching("0190-aaab", 10)),
        ["0190-aaab-2222"]
    );
    assert_eq!(
        ok(store.instance_ids_matching("1111", 10)),
        ["0190-aaaa-1111", "0191-cccc-1111"]
    );
    assert_eq!(ok(store.instance_ids_matching("0190", 1)).len(), 1);
    // Pattern characters are literal.
    assert!(ok(store.instance_ids_matching("%", 10)).is_empty());
    assert!(ok(store.instance_ids_matching("_111", 10)).is_empty());
    assert!(ok(store.instance_ids_matching("zzz", 10)).is_empty());
}

pub fn history_of_kinds_reads_only_those(store: &dyn Store) {
    ok(store.apply(&[create(&instance("k", 1))]));
    let mut c = append("k", 2..=4);
    c.history[0].kind = "notice".into();
    c.history[1].kind = "delivery".into();
    c.history[2].kind = "notice".into();
    ok(store.apply(&[c]));
    let kinds = |ks: &[&str]| -> Vec<i64> {
        ok(store.history_of_kinds("k", ks))
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(kinds(&["started", "notice"]), [1, 2, 4]);
    assert_eq!(kinds(&["delivery"]), [3]);
    assert!(kinds(&[]).is_empty());
}

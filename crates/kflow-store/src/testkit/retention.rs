//! Retention: finished instances and processed events pruned.

use super::*;

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

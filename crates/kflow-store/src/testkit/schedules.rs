//! Schedules, posted events, attention marks, idempotency keys.

use super::*;

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

pub fn events_with_a_dedup_key_are_recorded_once(store: &dyn Store) {
    let e = serde_json::json!({"id": "m1", "source": "s"});
    let first = ok(store.add_event_once(&e, "k1", 1)).expect("the first is recorded");
    // The same key again (a broker's redelivery), even processed meanwhile: nothing written.
    ok(store.apply(&[Commit {
        processed_events: vec![first],
        ..Default::default()
    }]));
    assert_eq!(ok(store.add_event_once(&e, "k1", 2)), None);
    let other = ok(store.add_event_once(&e, "k2", 3)).expect("another key");
    assert!(other > first);
    // Events without a key are never deduplicated.
    let a = ok(store.add_event(&e, 4));
    let b = ok(store.add_event(&e, 5));
    assert!(b > a && a > other);
    assert_eq!(
        ok(store.pending_events(10))
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        [other, a, b]
    );
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

//! Work rows: add, replace, remove, due work and timers, attempts, subscriptions.

use super::*;

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

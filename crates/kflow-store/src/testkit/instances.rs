//! Instances and their histories: commits, continuity, batches, listing and paging.

use super::*;

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

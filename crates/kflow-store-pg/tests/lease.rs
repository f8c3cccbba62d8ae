//! The PostgreSQL backend's own behaviour on a real server: the lease and its fence, refusals
//! of databases it must not touch, clear errors, and connections that break under it.

use kflow_store::InstanceStatus;
use kflow_store::Store;
use kflow_store::testkit::{append, create, instance, schedule, set_status};
use kflow_store_pg::testing::TestDb;
use kflow_store_pg::{PgOptions, PgStore, lease};

fn open(db: &TestDb) -> PgStore {
    PgStore::open(&PgOptions::new(&db.url)).expect("open")
}

#[test]
fn a_node_paused_past_its_lease_is_fenced_and_its_instances_adopted() {
    let Some(db) = TestDb::create("a_node_paused_past_its_lease_is_fenced") else {
        return;
    };
    let (a, b) = (open(&db), open(&db));
    let fa = a.join("a", "host", Some("127.0.0.1:1"), 1_000).unwrap();
    assert_eq!(fa.epoch, 1);
    a.set_fence(Some(fa.clone()));
    let fb = b.join("b", "host", Some("127.0.0.1:2"), 60_000).unwrap();
    b.set_fence(Some(fb.clone()));
    a.apply(&[create(&instance("i", 1))])
        .expect("a commits its own instance");
    b.apply(&[create(&instance("j", 1))])
        .expect("b commits its own instance");
    let owner = b.owner_of("i").unwrap().expect("i exists");
    assert_eq!(
        (owner.node.as_deref(), owner.api.as_deref(), owner.live),
        (Some("a"), Some("127.0.0.1:1"), true)
    );
    // Each node knows which instances it drives (the engine loads no other).
    assert!(a.is_mine("i").unwrap() && !b.is_mine("i").unwrap());
    assert!(b.is_mine("j").unwrap() && !a.is_mine("j").unwrap());
    assert!(
        a.is_mine("nonexistent").unwrap(),
        "unknown: the caller says so"
    );
    // Each node's scans see its own instances only.
    assert_eq!(a.running_instances().unwrap(), vec!["i".to_string()]);
    assert_eq!(b.running_instances().unwrap(), vec!["j".to_string()]);
    assert!(a.renew_node(&fa, 1_000, "active", 1).unwrap());
    assert_eq!(
        b.adopt(&fb, 60_000).unwrap(),
        None,
        "a is alive: nothing to adopt"
    );

    // An event posted now is offered by both nodes, each from its own cursor.
    let ev = a
        .add_event(&serde_json::json!({"type": "t", "id": "1"}), 1)
        .unwrap();
    assert_eq!(a.pending_events(10).unwrap().len(), 1);
    assert_eq!(b.pending_events(10).unwrap().len(), 1);
    let mut c = append("j", 2..=2);
    c.processed_events = vec![ev];
    b.apply(&[c]).unwrap();
    assert!(
        b.pending_events(10).unwrap().is_empty(),
        "b's cursor moved on"
    );
    assert_eq!(a.pending_events(10).unwrap().len(), 1, "a's did not");

    // a "pauses" past its lease: b adopts its instances, with a's event cursor.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let adopted = b.adopt(&fb, 60_000).unwrap().expect("a's lease lapsed");
    assert_eq!(adopted.from.as_deref(), Some("a"));
    assert_eq!(adopted.ids, vec!["i".to_string()]);
    assert_eq!(adopted.event_cursor, Some(ev - 1));
    assert_eq!(b.adopt(&fb, 60_000).unwrap(), None, "adopted once");
    assert_eq!(
        b.running_instances().unwrap(),
        vec!["i".to_string(), "j".to_string()]
    );

    // a wakes up: none of its writes lands, and it learns that it lost its lease.
    let e = a.apply(&[append("i", 2..=2)]).expect_err("a fenced commit");
    assert!(lease::is_fenced(&e), "{e}");
    assert!(e.to_string().contains("epoch 1"), "{e}");
    assert_eq!(
        b.last_seq("i").unwrap(),
        1,
        "nothing of the fenced batch was written"
    );
    assert!(
        !a.renew_node(&fa, 1_000, "active", 1).unwrap(),
        "the renewal finds the lease gone"
    );
    let e = a
        .put_schedule(&schedule("ns", "cron", Some(5)))
        .expect_err("a fenced schedule write");
    assert!(lease::is_fenced(&e), "{e}");
    assert_eq!(b.get_schedule("ns", "cron").unwrap(), None);
    assert!(lease::is_fenced(
        &a.set_attention("i", Some("x")).unwrap_err()
    ));
    assert!(
        a.join("a", "host", None, 1_000).is_err(),
        "an adopted node cannot come back"
    );
    b.apply(&[append("i", 2..=2)]).expect("the adopter commits");
    assert!(b.is_mine("i").unwrap() && !a.is_mine("i").unwrap());

    // A drained node gives its lease up: the others hear it and adopt at once.
    let fc = a.join("c", "host", None, 60_000).unwrap();
    a.set_fence(Some(fc.clone()));
    a.apply(&[create(&instance("k", 1))]).unwrap();
    let mut listener = b.listen_lease().expect("listen");
    assert!(a.release_node(&fc).unwrap());
    assert_eq!(pool_recv(&mut listener.notifications).as_deref(), Some("c"));
    let adopted = b.adopt(&fb, 60_000).unwrap().expect("c left");
    assert_eq!(adopted.ids, vec!["k".to_string()]);

    // The leader lease (retention, alert deliveries): one holder, handed over at once.
    let la = a.try_acquire_lease("a2", 1_000).unwrap().expect("free");
    assert_eq!(
        b.try_acquire_lease("b", 1_000).unwrap(),
        None,
        "a2 holds it"
    );
    assert!(a.renew_lease(&la, 1_000).unwrap());
    assert!(a.release_lease(&la).unwrap());
    let lb = b
        .try_acquire_lease("b", 1_000)
        .unwrap()
        .expect("taken at once");
    assert_eq!(lb.epoch, 2);
}

#[test]
fn concurrency_slots_count_every_nodes_instances() {
    let Some(db) = TestDb::create("concurrency_slots_count_every_node") else {
        return;
    };
    let (a, b) = (open(&db), open(&db));
    let fa = a.join("a", "host", None, 60_000).unwrap();
    a.set_fence(Some(fa));
    let fb = b.join("b", "host", None, 60_000).unwrap();
    b.set_fence(Some(fb));
    let g = |limit| vec![("ns/w".to_string(), limit), ("ns:ns".to_string(), 10)];
    assert!(a.claim_slots("x", &g(1), None).unwrap(), "a free slot");
    // Claimed, its instance not committed yet: it counts (for a minute).
    assert!(
        !b.claim_slots("y", &g(1), None).unwrap(),
        "full on the other node too"
    );
    assert!(
        a.claim_slots("x", &g(1), None).unwrap(),
        "claiming again is idempotent"
    );
    a.apply(&[create(&instance("x", 1))]).unwrap();
    assert!(!b.claim_slots("y", &g(1), None).unwrap(), "x runs");
    assert!(
        b.claim_slots("y", &g(2), None).unwrap(),
        "a limit of 2 has room"
    );
    // x ends: its slot goes with it, and y2 gets it.
    a.apply(&[set_status("x", InstanceStatus::Completed, 2)])
        .unwrap();
    assert!(b.claim_slots("y2", &g(2), None).unwrap());
    assert!(
        !a.claim_slots("z", &g(2), None).unwrap(),
        "y and y2 hold both"
    );
    assert!(
        a.claim_slots("z", &g(2), Some("y")).unwrap(),
        "y is cancelled in the same batch (cancelOldest): its slot is z's"
    );
    assert!(
        a.claim_slots("u", &[("ns/w".to_string(), usize::MAX)], None)
            .unwrap(),
        "no limit is no limit"
    );
    // All or none: a full namespace group takes no slot of the workflow group.
    let tight = vec![("ns/other".to_string(), 5), ("ns:ns".to_string(), 2)];
    assert!(!a.claim_slots("q", &tight, None).unwrap());
    assert!(
        a.claim_slots("q", &[("ns/other".to_string(), 1)], None)
            .unwrap(),
        "q took nothing before"
    );
}

#[test]
fn a_dead_nodes_instances_are_shared_out_whole_trees_at_a_time() {
    let Some(db) = TestDb::create("a_dead_nodes_instances_are_shared_out") else {
        return;
    };
    let dead = open(&db);
    let fd = dead.join("dead", "host", None, 1_000).unwrap();
    dead.set_fence(Some(fd));
    // Ten instances, each with a sub-workflow (ids extend their parent's).
    for i in 0..10 {
        let root = format!("r{i}");
        dead.apply(&[create(&instance(&root, 1))]).unwrap();
        dead.apply(&[create(&instance(&format!("{root}.3"), 1))])
            .unwrap();
    }
    let (b, c, d) = (open(&db), open(&db), open(&db));
    let mut fences = Vec::new();
    for (s, name) in [(&b, "b"), (&c, "c"), (&d, "d")] {
        let f = s.join(name, "host", None, 60_000).unwrap();
        s.set_fence(Some(f.clone()));
        fences.push(f);
    }
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let mut taken = Vec::new();
    for (s, f) in [(&b, &fences[0]), (&c, &fences[1]), (&d, &fences[2])] {
        let a = s.adopt(f, 60_000).unwrap().expect("a share");
        assert_eq!(a.from.as_deref(), Some("dead"));
        assert_eq!(s.adopt(f, 60_000).unwrap(), None, "one share each");
        // Every sub-workflow goes with its parent.
        for id in &a.ids {
            let root = id.split('.').next().unwrap();
            assert!(
                a.ids.iter().any(|x| x == root),
                "{id} without {root}: {:?}",
                a.ids
            );
        }
        taken.push(a.ids.len());
    }
    assert_eq!(taken, vec![8, 6, 6], "4, 3 and 3 trees of two");
    let nodes = b.nodes(60_000).unwrap();
    let dead_row = nodes.iter().find(|n| n.id == "dead").unwrap();
    assert_eq!(
        dead_row.adopted_by.as_deref(),
        Some("d"),
        "the last taker closes it"
    );
    assert_eq!(dead_row.owned, 0);
}

#[test]
fn instances_without_an_owner_are_adopted_in_batches() {
    let Some(db) = TestDb::create("instances_without_an_owner_are_adopted") else {
        return;
    };
    let a = open(&db);
    // Written without a fence (schema version 1, `kflow db copy`): no owner.
    a.apply(&[create(&instance("x", 1)), create(&instance("y", 1))])
        .unwrap();
    let fa = a.join("a", "host", None, 60_000).unwrap();
    a.set_fence(Some(fa.clone()));
    assert!(a.running_instances().unwrap().is_empty());
    let adopted = a.adopt(&fa, 60_000).unwrap().expect("orphans");
    assert_eq!(adopted.from, None);
    assert_eq!(adopted.ids.len(), 2);
    assert_eq!(a.running_instances().unwrap().len(), 2);
    assert_eq!(a.adopt(&fa, 60_000).unwrap(), None);
}

#[test]
fn refuses_a_newer_schema_and_foreign_databases() {
    let Some(db) = TestDb::create("refuses_a_newer_schema_and_foreign_databases") else {
        return;
    };
    // A database of something else: tables, but not kflow's.
    let mut other = PgOptions::new(&db.url);
    other.schema = Some("other".into());
    let store = PgStore::open(&PgOptions::new(&db.url)).expect("open");
    drop(store);
    let raw = PgStore::open(&other).expect("a fresh schema is migrated");
    raw.exec_for_tests("DROP TABLE kflow_schema").unwrap();
    drop(raw);
    let e = PgStore::open(&other).expect_err("not a kflow database");
    assert!(e.to_string().contains("not a kflow database"), "{e}");

    // A schema written by a newer kflow.
    let store = PgStore::open(&PgOptions::new(&db.url)).expect("open");
    store
        .exec_for_tests("INSERT INTO kflow_schema (version) VALUES (99)")
        .unwrap();
    drop(store);
    let e = PgStore::open(&PgOptions::new(&db.url)).expect_err("newer schema");
    let m = e.to_string();
    assert!(m.contains("version 99") && m.contains("newer"), "{m}");
    assert!(!m.contains("password"), "{m}");
}

#[test]
fn unreachable_servers_and_bad_credentials_say_what_went_wrong() {
    // Nothing listens on port 1.
    let e = PgStore::open(&PgOptions::new("postgres://kflow:secret@127.0.0.1:1/kflow"))
        .expect_err("unreachable");
    let m = e.to_string();
    assert!(
        m.contains("cannot connect") && m.contains("127.0.0.1:1"),
        "{m}"
    );
    assert!(!m.contains("secret"), "the password is not repeated: {m}");
    let e = PgStore::open(&PgOptions::new("mysql://x")).expect_err("not a PostgreSQL URL");
    assert!(e.to_string().contains("invalid database URL"), "{e}");

    let Some(db) = TestDb::create("unreachable_servers_and_bad_credentials") else {
        return;
    };
    let wrong_user = db.url.replace("postgres@", "no_such_kflow_role@");
    let e = PgStore::open(&PgOptions::new(&wrong_user)).expect_err("unknown role");
    assert!(e.to_string().contains("no_such_kflow_role"), "{e}");
    let wrong_db = format!("{}_missing", db.url);
    let e = PgStore::open(&PgOptions::new(&wrong_db)).expect_err("no such database");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn connections_killed_under_the_store_are_replaced() {
    let Some(db) = TestDb::create("connections_killed_under_the_store_are_replaced") else {
        return;
    };
    let store = open(&db);
    store.apply(&[create(&instance("k", 1))]).unwrap();
    // Every connection of this database dies (a restart, a proxy, an operator).
    let admin = PgStore::open(&PgOptions::new(&db.url)).unwrap();
    admin
        .exec_for_tests(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    // Reads retry on a new connection; so does a batch whose connection broke before it
    // began (nothing of it was written).
    assert_eq!(store.last_seq("k").unwrap(), 1);
    admin
        .exec_for_tests(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    store
        .apply(&[append("k", 2..=3)])
        .expect("sent again on a fresh connection");
    assert_eq!(store.last_seq("k").unwrap(), 3);
    assert_eq!(store.history("k", 0, 10).unwrap().len(), 3);
}

/// Waits (at most 5 s) for one notification.
fn pool_recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
            Err(_) if std::time::Instant::now() > deadline => return None,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

#[test]
fn tls_follows_sslmode() {
    let Some(db) = TestDb::create("tls_follows_sslmode") else {
        return;
    };
    let (_, ssl_on, cert) = open(&db).tls_for_tests().unwrap();
    if !ssl_on {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI: the PostgreSQL server does not serve TLS (ssl = off)"
        );
        eprintln!("TLS tests skipped: the PostgreSQL server has ssl = off");
        return;
    }
    let with = |url: &str, q: &str| PgStore::open(&PgOptions::new(&format!("{url}?{q}")));
    let tls = |s: PgStore| s.tls_for_tests().unwrap().0;
    assert!(
        !tls(with(&db.url, "sslmode=disable").unwrap()),
        "disable: plain"
    );
    assert!(
        tls(with(&db.url, "sslmode=require").unwrap()),
        "require: encrypted"
    );
    assert!(
        tls(open(&db)),
        "prefer (the default): encrypted when the server offers it"
    );
    // The server's certificate is self-signed: not among the system's roots.
    let e = with(&db.url, "sslmode=verify-full").err().expect("refused");
    assert!(e.to_string().contains("certificate"), "{e}");
    // Given as the root, it is accepted; verify-full also wants the host's name in it.
    if std::fs::read(&cert).is_ok() {
        let root = format!("sslrootcert={cert}");
        assert!(tls(
            with(&db.url, &format!("sslmode=verify-ca&{root}")).unwrap()
        ));
        let e = with(&db.url, &format!("sslmode=verify-full&{root}"))
            .err()
            .expect("127.0.0.1 is not the certificate's name");
        assert!(e.to_string().contains("certificate"), "{e}");
        let named = db.url.replace("127.0.0.1", "localhost");
        match with(&named, &format!("sslmode=verify-full&{root}")) {
            Ok(s) => assert!(tls(s)),
            // A certificate made for another name than localhost: refused, saying so.
            Err(e) => assert!(e.to_string().contains("certificate"), "{e}"),
        }
        let e = with(&db.url, "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .err()
            .expect("no such file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
    let e = with(&db.url, "sslmode=sometimes")
        .err()
        .expect("a bad mode");
    assert!(e.to_string().contains("invalid sslmode"), "{e}");
}

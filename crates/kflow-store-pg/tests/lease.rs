//! The PostgreSQL backend's own behaviour on a real server: the lease and its fence, refusals
//! of databases it must not touch, clear errors, and connections that break under it.

use kflow_store::Store;
use kflow_store::testkit::{append, create, instance, schedule};
use kflow_store_pg::testing::TestDb;
use kflow_store_pg::{PgOptions, PgStore, lease};

fn open(db: &TestDb) -> PgStore {
    PgStore::open(&PgOptions::new(&db.url)).expect("open")
}

#[test]
fn a_holder_paused_past_its_lease_is_fenced() {
    let Some(db) = TestDb::create("a_holder_paused_past_its_lease_is_fenced") else {
        return;
    };
    let (a, b) = (open(&db), open(&db));
    let fa = a
        .try_acquire_lease("a", 1_000)
        .unwrap()
        .expect("a takes the free lease");
    assert_eq!(fa.epoch, 1);
    a.set_fence(Some(fa.clone()));
    assert_eq!(b.try_acquire_lease("b", 1_000).unwrap(), None, "a holds it");
    a.apply(&[create(&instance("i", 1))])
        .expect("the holder commits");
    assert!(a.renew_lease(&fa, 1_000).unwrap());

    // a "pauses": b takes over once the lease lapsed, with a new epoch.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let fb = b
        .try_acquire_lease("b", 5_000)
        .unwrap()
        .expect("b takes the lapsed lease");
    assert_eq!(fb.epoch, 2);
    b.set_fence(Some(fb.clone()));

    // a wakes up: none of its commits lands, and it learns that it lost the lease.
    let e = a.apply(&[append("i", 2..=2)]).expect_err("a fenced commit");
    assert!(lease::is_fenced(&e), "{e}");
    assert!(e.to_string().contains("epoch 1"), "{e}");
    assert_eq!(
        b.last_seq("i").unwrap(),
        1,
        "nothing of the fenced batch was written"
    );
    assert!(
        !a.renew_lease(&fa, 1_000).unwrap(),
        "the renewal finds the lease gone"
    );
    // Nor do its other writes of engine state: a cron tick, an attempt, an attention mark.
    let e = a
        .put_schedule(&schedule("ns", "cron", Some(5)))
        .expect_err("a fenced schedule write");
    assert!(lease::is_fenced(&e), "{e}");
    assert_eq!(b.get_schedule("ns", "cron").unwrap(), None);
    assert!(lease::is_fenced(
        &a.set_attention("i", Some("x")).unwrap_err()
    ));
    b.apply(&[append("i", 2..=2)])
        .expect("the new holder commits");
    let l = b.lease().unwrap().expect("lease");
    assert_eq!((l.node.as_str(), l.epoch), ("b", 2));
    assert!(l.expires_in_ms > 0);

    // A drained holder gives it up: the standbys hear it, and the next node takes it at once.
    let mut listener = a.listen_lease().expect("listen");
    assert!(b.release_lease(&fb).unwrap());
    let heard = pool_recv(&mut listener.notifications);
    assert_eq!(
        heard.as_deref(),
        Some("b"),
        "the standby is told who gave it up"
    );
    let fa2 = a
        .try_acquire_lease("a", 1_000)
        .unwrap()
        .expect("taken at once");
    assert_eq!(fa2.epoch, 3);
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

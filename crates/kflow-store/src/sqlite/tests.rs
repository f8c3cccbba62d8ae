//! SqliteStore: the shared conformance suite (in memory and on a file) plus what is specific to
//! SQLite: files, schema versions, pragmas, concurrency of readers and the writer.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::temp_store::TempStore;
use super::{Durability, SCHEMA_VERSION, SqliteStore};
use crate::testkit::{self, append, create, instance, work};
use crate::{InstanceFilter, Result, Store};

mod conformance_in_memory {
    use super::*;
    crate::store_conformance_tests!(|| Box::new(SqliteStore::open_in_memory().expect("open")));
}

mod conformance_on_file {
    use super::*;
    crate::store_conformance_tests!(|| Box::new(TempStore::new(Durability::Process)));
}

#[test]
fn conformance_suite_runner_on_full_durability_file() {
    testkit::conformance_suite(&|| Box::new(TempStore::new(Durability::Full)));
}

fn pragma<T: rusqlite::types::FromSql>(conn: &rusqlite::Connection, name: &str) -> T {
    conn.pragma_query_value(None, name, |row| row.get(0))
        .expect("pragma")
}

fn schema_versions(path: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .expect("prepare");
    stmt.query_map([], |row| row.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

#[test]
fn open_creates_directories_schema_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    for (durability, synchronous) in [(Durability::Process, 1i64), (Durability::Full, 2)] {
        let path = dir
            .path()
            .join(format!("{durability:?}/nested/deeper/kflow.db"));
        let store = SqliteStore::open(&path, durability).expect("open");
        assert!(path.exists());
        assert_eq!(store.path(), Some(path.as_path()));
        {
            let w = store.writer_for_tests();
            assert_eq!(pragma::<String>(&w, "journal_mode"), "wal");
            assert_eq!(pragma::<i64>(&w, "synchronous"), synchronous);
            assert_eq!(pragma::<i64>(&w, "foreign_keys"), 1);
            assert_eq!(pragma::<i64>(&w, "busy_timeout"), 5000);
        }
        let pool = store.readers.as_ref().expect("file stores have readers");
        let readers = pool.idle.lock().unwrap();
        assert_eq!(readers.len(), super::READERS);
        for r in readers.iter() {
            assert!(r.is_readonly(rusqlite::MAIN_DB).unwrap());
            assert_eq!(pragma::<String>(r, "journal_mode"), "wal");
            assert_eq!(pragma::<i64>(r, "busy_timeout"), 5000);
        }
        drop(readers);
        drop(store);
        assert_eq!(
            schema_versions(&path),
            (1..=SCHEMA_VERSION).collect::<Vec<_>>()
        );
    }
    // A relative path without a directory part works too.
    assert!(
        Path::new("kflow.db")
            .parent()
            .is_some_and(|p| p.as_os_str().is_empty())
    );
}

#[test]
fn committed_pages_are_checkpointed_in_the_background() {
    use crate::Store;
    // About 1.5 MB of history: below SQLite's own threshold of a thousand pages, so only the
    // background checkpointer copies it into the database file while the store is open.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kflow.db");
    let store = SqliteStore::open(&path, Durability::Process).unwrap();
    let db_size = || std::fs::metadata(&path).unwrap().len();
    let before = db_size();
    let mut c = create(&instance("big", 1));
    for ev in &mut append("big", 2..=301).history {
        ev.data = serde_json::json!({"pad": "x".repeat(5_000)});
        c.history.push(ev.clone());
    }
    store.apply(&[c]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while db_size() < before + 1_000_000 {
        assert!(
            Instant::now() < deadline,
            "nothing was checkpointed: the database file stayed at {} bytes",
            db_size()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Closing stops the checkpointer's thread (the test would hang otherwise).
    drop(store);
}

#[test]
fn kept_statements_are_not_compiled_again_at_each_run() {
    // A WHERE on the `work` table meets its partial index; unless plans ignore bound values,
    // SQLite compiles such a statement again at every run with new values.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kflow.db"), Durability::Process).unwrap();
    let pool = store.readers.as_ref().unwrap();
    let readers = pool.idle.lock().unwrap();
    let w = store.writer_for_tests();
    for (k, conn) in std::iter::once(&*w).chain(readers.iter()).enumerate() {
        let mut sqls = vec![
            "SELECT w.effect FROM work w WHERE w.instance_id = ?1 ORDER BY w.effect_id",
            super::queries::DUE_WORK,
        ];
        if k == 0 {
            // The writer's, in every commit of a step.
            sqls.push("DELETE FROM work WHERE instance_id = ?1 AND effect_id = ?2");
        }
        for sql in sqls {
            for i in 0..4i64 {
                let mut stmt = conn.prepare_cached(sql).unwrap();
                let n = stmt.parameter_count();
                let args: Vec<rusqlite::types::Value> = (0..n)
                    .map(|k| {
                        if k == 0 && n == 1 {
                            rusqlite::types::Value::Text(format!("i{i}"))
                        } else {
                            rusqlite::types::Value::Integer(i + 10)
                        }
                    })
                    .collect();
                let mut rows = stmt.query(rusqlite::params_from_iter(args)).unwrap();
                while rows.next().unwrap().is_some() {}
            }
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }
}

#[test]
fn reopening_a_file_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/kflow.db");
    let mut i = instance("keep", 10);
    i.input = serde_json::json!({"big": "y".repeat(20_000)});
    let mut c = create(&i);
    c.add_work = vec![work("keep", 1, "timer", 99), work("keep", 2, "listen", 5)];
    {
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        store
            .put_definition(&testkit::definition("ns", "flow", "1.0.0", "h"))
            .unwrap();
        store.set_deprecated("ns", "flow", "1.0.0", true).unwrap();
        store.apply(&[c, append("keep", 2..=3)]).unwrap();
        store.mark_attempt("keep", 1).unwrap();
    }
    for durability in [Durability::Process, Durability::Full] {
        let store = SqliteStore::open(&path, durability).unwrap();
        let d = store
            .get_definition("ns", "flow", None)
            .unwrap()
            .expect("definition");
        assert!(d.deprecated);
        assert_eq!(store.get_instance("keep").unwrap(), Some(i.clone()));
        let expected = if durability == Durability::Process {
            3
        } else {
            4
        };
        assert_eq!(store.last_seq("keep").unwrap(), expected);
        assert_eq!(store.history("keep", 0, 10).unwrap().len() as i64, expected);
        let rows = store.work_of("keep").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].attempts, 1);
        assert_eq!(store.next_timer().unwrap(), Some(99));
        assert_eq!(store.subscriptions().unwrap().len(), 1);
        assert_eq!(store.running_instances().unwrap(), ["keep"]);
        // And it goes on from there.
        if durability == Durability::Process {
            store.apply(&[append("keep", 4..=4)]).unwrap();
        }
    }
    let store = SqliteStore::open(&path, Durability::Process).unwrap();
    assert_eq!(store.last_seq("keep").unwrap(), 4);
    assert_eq!(
        schema_versions(&path),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "no migration ran twice"
    );
}

/// A version-1 database (before schedules) is migrated to the current version on open, keeping
/// what it held; the new table works.
#[test]
fn a_version_1_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kflow.db");
    {
        let store = SqliteStore::open(&path, Durability::Process).unwrap();
        store
            .put_definition(&testkit::definition("ns", "flow", "1.0.0", "h"))
            .unwrap();
    }
    {
        // Back to what version 1 wrote.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE task_stats; DROP INDEX instances_finished; DROP TABLE alerts; DROP TABLE schedules; DROP TABLE events; DROP TABLE idempotency; DROP TABLE tokens; DROP TABLE audit; DROP TABLE secrets; ALTER TABLE instances DROP COLUMN attention; DROP INDEX work_timers; CREATE INDEX work_due ON work (due_ms, instance_id, effect_id) WHERE kind <> 'listen'; CREATE INDEX work_kind ON work (kind, due_ms); DELETE FROM schema_version WHERE version > 1;").unwrap();
    }
    assert_eq!(schema_versions(&path), vec![1]);
    let store = SqliteStore::open(&path, Durability::Process).unwrap();
    assert!(
        store
            .get_definition("ns", "flow", Some("1.0.0"))
            .unwrap()
            .is_some()
    );
    assert!(store.list_schedules().unwrap().is_empty());
    assert!(
        store
            .put_schedule(&testkit::schedule("ns", "flow", Some(5)))
            .unwrap()
    );
    assert_eq!(store.next_schedule_fire().unwrap(), Some(5));
    assert!(store.add_event(&serde_json::json!({"id": "e"}), 1).unwrap() > 0);
    drop(store);
    assert_eq!(
        schema_versions(&path),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
}

#[test]
fn a_newer_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kflow.db");
    drop(SqliteStore::open(&path, Durability::Process).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES (?1, 0)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
    }
    let err = SqliteStore::open(&path, Durability::Process).expect_err("must refuse");
    let msg = err.to_string();
    let newer = (SCHEMA_VERSION + 1).to_string();
    for part in [
        "schema version",
        newer.as_str(),
        "newer",
        "upgrade kflow",
        path.to_str().unwrap(),
    ] {
        assert!(msg.contains(part), "{msg:?} should mention {part:?}");
    }
    // Nothing was changed by the attempt.
    assert_eq!(
        schema_versions(&path),
        (1..=SCHEMA_VERSION + 1).collect::<Vec<_>>()
    );
}

#[test]
fn a_foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
            .unwrap();
    }
    let err = SqliteStore::open(&path, Durability::Process).expect_err("must refuse");
    assert!(err.to_string().contains("not a kflow database"), "{err}");

    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database file at all, not even close....................................................",
    )
    .unwrap();
    assert!(SqliteStore::open(&junk, Durability::Process).is_err());
}

/// A long write transaction is open on the writer connection; reads on the pool proceed (and
/// see the last committed state), they do not wait for it.
#[test]
fn reads_do_not_wait_for_a_long_write_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kflow.db"), Durability::Process).unwrap();
    let mut c = create(&instance("committed", 1));
    c.add_work = vec![work("committed", 1, "http", 1)];
    store.apply(&[c]).unwrap();

    let (opened_tx, opened_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let store = &store;
        scope.spawn(move || {
            let w = store.writer_for_tests();
            w.execute_batch("BEGIN IMMEDIATE").unwrap();
            w.execute(
                "INSERT INTO instances (id, namespace, name, version, status, created_ms, updated_ms, input) \
                 VALUES ('uncommitted', 'default', 'flow', '1.0.0', 'running', 2, 2, '{}')",
                [],
            )
            .unwrap();
            opened_tx.send(()).unwrap();
            // Hold the transaction (and the writer mutex) until the readers are done.
            release_rx.recv_timeout(Duration::from_secs(30)).ok();
            w.execute_batch("ROLLBACK").unwrap();
        });
        opened_rx.recv().unwrap();

        let (done_tx, done_rx) = mpsc::channel::<Duration>();
        scope.spawn(move || {
            let start = Instant::now();
            for _ in 0..20 {
                assert!(store.get_instance("committed").unwrap().is_some());
                assert!(
                    store.get_instance("uncommitted").unwrap().is_none(),
                    "uncommitted rows are invisible"
                );
                let page = store
                    .list_instances(&InstanceFilter::default(), None, 10)
                    .unwrap();
                assert_eq!(page.items.len(), 1);
                assert_eq!(store.last_seq("committed").unwrap(), 1);
                assert_eq!(store.history("committed", 0, 10).unwrap().len(), 1);
                assert_eq!(store.due_work(10, 10).unwrap().len(), 1);
                assert_eq!(store.running_instances().unwrap(), ["committed"]);
                assert!(store.get_definition("ns", "x", None).unwrap().is_none());
            }
            done_tx.send(start.elapsed()).unwrap();
        });
        let elapsed = done_rx.recv_timeout(Duration::from_secs(10));
        release_tx.send(()).unwrap();
        let elapsed = elapsed.expect("reads were blocked by the write transaction");
        assert!(elapsed < Duration::from_secs(5), "reads took {elapsed:?}");
    });
    // The rolled-back row never existed.
    assert!(store.get_instance("uncommitted").unwrap().is_none());
}

/// More concurrent readers than pooled connections: they queue for a free one.
#[test]
fn readers_share_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kflow.db"), Durability::Process).unwrap();
    store.apply(&[create(&instance("a", 1))]).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..(super::READERS * 3) {
            scope.spawn(|| {
                for _ in 0..200 {
                    assert_eq!(store.last_seq("a").unwrap(), 1);
                }
            });
        }
    });
    assert_eq!(
        store.readers.as_ref().unwrap().idle.lock().unwrap().len(),
        super::READERS,
        "all given back"
    );
}

/// A panic while the writer connection is inside a transaction does not wedge the store.
#[test]
fn the_writer_recovers_from_a_panic_inside_a_transaction() {
    let store = SqliteStore::open_in_memory().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = store.write(|conn| -> Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            conn.execute(
                "INSERT INTO instances (id, namespace, name, version, status, created_ms, updated_ms, input) \
                 VALUES ('half', 'default', 'flow', '1.0.0', 'running', 2, 2, '{}')",
                [],
            )
            .unwrap();
            panic!("boom");
        });
    }));
    assert!(result.is_err());
    store.apply(&[create(&instance("after", 3))]).unwrap();
    assert!(
        store.get_instance("half").unwrap().is_none(),
        "the half-done transaction was rolled back"
    );
    assert!(store.get_instance("after").unwrap().is_some());
}

/// The hot queries use their indexes (no full scan of instances or work).
#[test]
fn hot_queries_use_indexes() {
    let store = SqliteStore::open_in_memory().unwrap();
    let w = store.writer_for_tests();
    let plan = |sql: &str| -> String {
        let mut stmt = w.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
        let rows: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(nulls), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        rows.join(" | ")
    };
    use super::queries::{
        DUE_TIMERS, LAST_SEQ, NEXT_SCHEDULE_FIRE, NEXT_TIMER, list_instances_sql,
    };
    let list = |filter: InstanceFilter| list_instances_sql(&filter, Some((5, "x".into())), 10).0;
    let by_definition = InstanceFilter {
        namespace: Some("a".into()),
        name: Some("b".into()),
        ..Default::default()
    };
    let by_status = InstanceFilter {
        status: Some(crate::InstanceStatus::Running),
        ..Default::default()
    };
    let cases = [
        (LAST_SEQ.to_string(), "sqlite_autoindex_history_1"),
        (NEXT_TIMER.to_string(), "work_timers"),
        (DUE_TIMERS.to_string(), "work_timers"),
        (list(InstanceFilter::default()), "instances_created"),
        (list(by_definition), "instances_definition"),
        (list(by_status), "instances_status"),
        (NEXT_SCHEDULE_FIRE.to_string(), "schedules_next"),
    ];
    for (sql, index) in cases {
        let p = plan(&sql);
        assert!(p.contains(index), "{sql}: {p}");
        assert!(!p.contains("TEMP B-TREE"), "{sql} sorts: {p}");
        // Walking a (partial) index in order is fine; reading the whole table is not.
        let table_scan = p.split(" | ").any(|step| {
            (step.starts_with("SCAN w") || step.starts_with("SCAN work")) && !step.contains("USING")
        });
        assert!(!table_scan, "{sql} scans work: {p}");
    }
}

/// `Durability::Process`: what was committed survives `kill -9` of the process; what was not
/// committed is gone. The test re-runs its own binary as the child that gets killed.
#[test]
fn commits_survive_the_process_being_killed() {
    const CHILD: &str = "KFLOW_STORE_TEST_KILLED_CHILD";
    if let Some(path) = std::env::var_os(CHILD) {
        let store = SqliteStore::open(Path::new(&path), Durability::Process).unwrap();
        for i in 0..50 {
            let id = format!("k{i:02}");
            let mut c = create(&instance(&id, i));
            c.add_work = vec![work(&id, 1, "timer", 1_000 + i)];
            store.apply(&[c, append(&id, 2..=3)]).unwrap();
        }
        let w = store.writer_for_tests();
        w.execute_batch("BEGIN IMMEDIATE; DELETE FROM work; DELETE FROM history WHERE seq > 1;")
            .unwrap();
        w.execute(
            "INSERT INTO instances (id, namespace, name, version, status, created_ms, updated_ms, input) \
             VALUES ('uncommitted', 'default', 'flow', '1.0.0', 'running', 2, 2, '{}')",
            [],
        )
        .unwrap();
        // SIGKILL: nothing runs after it (no destructor, no close, no core dump).
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kflow.db");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite::tests::commits_survive_the_process_being_killed",
            "--test-threads=1",
        ])
        .env(CHILD, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die");
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by SIGKILL"
    );
    assert!(path.exists());

    let store = SqliteStore::open(&path, Durability::Process).unwrap();
    let page = store
        .list_instances(&InstanceFilter::default(), None, 1000)
        .unwrap();
    assert_eq!(page.items.len(), 50);
    assert!(store.get_instance("uncommitted").unwrap().is_none());
    for i in 0..50 {
        let id = format!("k{i:02}");
        assert_eq!(store.last_seq(&id).unwrap(), 3, "{id}");
        assert_eq!(store.work_of(&id).unwrap().len(), 1, "{id}");
    }
    assert_eq!(store.next_timer().unwrap(), Some(1_000));
    let integrity: String = store
        .writer_for_tests()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

#[cfg(unix)]
#[test]
fn the_database_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kflow.db");
    let store = SqliteStore::open(&path, Durability::Process).unwrap();
    store
        .put_definition(&testkit::definition("ns", "flow", "1.0.0", "h"))
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.path().join(format!("kflow.db{suffix}"));
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
    }
}

/// Readers that overlap without a pause keep a WAL in use: a passive checkpoint copies it but
/// can never start it over, and it grows with every commit. Past its limit the checkpointer
/// resets it (waiting for the readers of the moment), so it stays bounded.
#[test]
fn the_wal_stays_bounded_under_overlapping_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kflow.db");
    let store = std::sync::Arc::new(SqliteStore::open(&path, Durability::Process).unwrap());
    store.set_wal_limit(2 * 1024 * 1024);
    store.apply(&[create(&instance("big", 1))]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = store.history("big", 0, 50);
                }
            })
        })
        .collect();
    let wal = dir.path().join("kflow.db-wal");
    let mut peak = 0;
    let payload = serde_json::json!({"blob": "x".repeat(16 * 1024)});
    // About 40 MB of history in 2,500 commits.
    for seq in 2..2_502 {
        let mut c = append("big", seq..=seq);
        c.history[0].data = payload.clone();
        store.apply(&[c]).unwrap();
        peak = peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    eprintln!(
        "WAL peak: {:.1} MiB (limit 2 MiB)",
        peak as f64 / (1024.0 * 1024.0)
    );
    assert!(
        peak < 16 * 1024 * 1024,
        "the WAL reached {} MiB with a 2 MiB limit",
        peak / (1024 * 1024)
    );
}

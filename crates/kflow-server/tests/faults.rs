//! Faults in the commit path never lose or strand work: a commit that fails, reads that fail,
//! a database locked from outside, a remote worker's report that cannot be recorded. The
//! engine recovers each without a restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use kflow_server::engine::{Engine, EngineConfig, WorkerSpec};
use kflow_store::InstanceStatus;
use kflow_store::sqlite::SqliteStore;
use kflow_store::testkit::FailingStore;

const LIMIT: Duration = Duration::from_secs(60);

async fn engine_over(store: Arc<FailingStore>) -> Engine {
    Engine::with_store(store, EngineConfig::default())
        .await
        .expect("engine")
}

fn failing() -> Arc<FailingStore> {
    Arc::new(FailingStore::new(Box::new(
        SqliteStore::open_in_memory().expect("store"),
    )))
}

/// A shell task that counts its runs in `file` and takes `secs` seconds.
fn counting(name: &str, file: &std::path::Path, secs: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: f\n  name: {name}\n  version: '1.0.0'\ndo:\n  - work:\n      run:\n        shell:\n          command: sleep {secs}; echo run >> {}\n  - done:\n      set:\n        ok: true\n",
        file.display()
    )
}

fn runs(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not {what} after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_rebuilds_the_instance_and_reruns_its_work() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("runs");
        let store = failing();
        let e = engine_over(store.clone()).await;
        e.register(counting("c", &file, "0.3").as_bytes())
            .await
            .expect("register");
        let id = e.start("f", "c", None, json!({})).await.expect("start").id;
        // The commit of the task's result fails (the database is locked for a while).
        store.fail_writes.store(true, Ordering::SeqCst);
        wait_until("run once", || runs(&file) == 1).await;
        wait_until("a commit failed", || {
            store.failures.load(Ordering::SeqCst) > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.fail_writes.store(false, Ordering::SeqCst);
        // Without a restart: the instance is rebuilt from what was committed and its task,
        // whose result was lost, runs again and the instance completes.
        let v = e
            .wait_finished(&id, Duration::from_secs(20))
            .await
            .expect("finished");
        assert_eq!(v.instance.status, InstanceStatus::Completed);
        assert_eq!(v.instance.output, Some(json!({"ok": true})));
        assert_eq!(runs(&file), 2, "the lost result's task ran again, once");
        e.shutdown(Duration::ZERO).await;
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_does_not_lose_a_result() {
    tokio::time::timeout(LIMIT, async {
        let store = failing();
        let e = engine_over(store.clone()).await;
        let doc = "document:\n  dsl: '1.0.3'\n  namespace: f\n  name: l\n  version: '1.0.0'\ndo:\n  - hear:\n      listen:\n        to:\n          one:\n            with:\n              type: f.go\n  - done:\n      set:\n        heard: ${ .[0].n }\n";
        e.register(doc.as_bytes()).await.expect("register");
        let id = e.start("f", "l", None, json!({})).await.expect("start").id;
        // The instance only waits: it is out of memory, so the event needs a replay, whose
        // reads fail for a while.
        store.fail_reads.store(true, Ordering::SeqCst);
        let taken = e
            .publish_event(json!({"specversion": "1.0", "id": "e1", "source": "https://t", "type": "f.go", "data": {"n": 5}}))
            .await
            .expect("publish");
        assert_eq!(taken, 1);
        wait_until("a read failed", || store.failures.load(Ordering::SeqCst) > 0).await;
        store.fail_reads.store(false, Ordering::SeqCst);
        let v = e
            .wait_finished(&id, Duration::from_secs(20))
            .await
            .expect("finished");
        assert_eq!(v.instance.status, InstanceStatus::Completed);
        assert_eq!(v.instance.output, Some(json!({"heard": 5})));
        e.shutdown(Duration::ZERO).await;
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_result_is_acknowledged_only_once_committed() {
    tokio::time::timeout(LIMIT, async {
        let store = failing();
        let e = engine_over(store.clone()).await;
        let doc = "document:\n  dsl: '1.0.3'\n  namespace: f\n  name: r\n  version: '1.0.0'\ndo:\n  - work:\n      run:\n        shell:\n          command: echo hi\n      metadata:\n        kflow:\n          queue: remote\n";
        e.register(doc.as_bytes()).await.expect("register");
        let worker = e
            .register_worker(WorkerSpec {
                id: Some("w1".into()),
                queues: vec!["remote".into()],
                labels: Default::default(),
                capacity: None,
                owner: None,
                namespaces: None,
            })
            .expect("worker");
        let id = e.start("f", "r", None, json!({})).await.expect("start").id;
        let lease = e
            .poll_work(&worker, 1, Duration::from_secs(5))
            .await
            .expect("poll")
            .pop()
            .expect("a lease");
        assert_eq!(lease.attempt, 1);
        store.fail_writes.store(true, Ordering::SeqCst);
        let r = e
            .complete_lease(&worker, &lease.lease, Ok(json!({"out": 1})))
            .await;
        assert!(r.is_err(), "a report that was not committed is not accepted: {r:?}");
        store.fail_writes.store(false, Ordering::SeqCst);
        // The task is handed out again (the result was not recorded) and then completes.
        let again = e
            .poll_work(&worker, 1, Duration::from_secs(10))
            .await
            .expect("poll")
            .pop()
            .expect("the task again");
        assert_eq!((again.instance.as_str(), again.effect), (id.as_str(), lease.effect));
        assert_eq!(again.attempt, 2);
        e.complete_lease(&worker, &again.lease, Ok(json!({"out": 2})))
            .await
            .expect("accepted once committed");
        let v = e
            .wait_finished(&id, Duration::from_secs(10))
            .await
            .expect("finished");
        assert_eq!(v.instance.status, InstanceStatus::Completed);
        assert_eq!(v.instance.output, Some(json!({"out": 2})));
        e.shutdown(Duration::ZERO).await;
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_from_outside_strands_nothing() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("runs");
        let e = Engine::open(EngineConfig {
            data_dir: dir.path().join("data"),
            ..EngineConfig::default()
        })
        .await
        .expect("open");
        e.register(counting("c", &file, "0.5").as_bytes())
            .await
            .expect("register");
        let id = e.start("f", "c", None, json!({})).await.expect("start").id;
        // Another process takes the write lock for longer than kflow waits for it (5 s).
        let db = dir.path().join("data").join("kflow.db");
        let locker = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).expect("open");
            conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
            std::thread::sleep(Duration::from_millis(6_500));
            conn.execute_batch("COMMIT").expect("unlock");
        });
        let v = e
            .wait_finished(&id, Duration::from_secs(40))
            .await
            .expect("finished after the lock is released");
        locker.join().expect("locker");
        assert_eq!(v.instance.status, InstanceStatus::Completed);
        assert!(runs(&file) >= 1);
        e.shutdown(Duration::ZERO).await;
    })
    .await
    .expect("watchdog");
}

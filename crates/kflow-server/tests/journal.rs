//! Replay compatibility: a data directory written by kflow before the typed journal (store
//! schema v3, journal format 1; `tests/fixtures/journal-v1/`) is opened by this build: the
//! schema migrates, finished instances read as they were, and the instances that were still
//! waiting replay their old histories and run to the end.

use std::time::Duration;

use serde_json::{Value, json};

use kflow_server::engine::{Engine, EngineConfig};
use kflow_store::InstanceStatus;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journal-v1");

fn ids() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURE}/ids.json")).expect("fixture ids");
    serde_json::from_str(&text).expect("ids.json")
}

async fn publish_until_taken(e: &Engine, ty: &str, n: i64) {
    for attempt in 0..200 {
        let taken = e
            .publish_event(
                json!({"specversion": "1.0", "id": format!("{ty}-{n}-{attempt}"),
                "source": "https://fixture.example", "type": ty, "data": {"n": n}}),
            )
            .await
            .expect("publish");
        if taken > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nobody took {ty}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_previous_format_is_read_and_replayed() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = std::env::temp_dir().join(format!("kflow-journal-v1-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::copy(format!("{FIXTURE}/kflow.db"), dir.join("kflow.db")).expect("copy");
        let ids = ids();
        let id = |k: &str| ids[k].as_str().expect(k).to_string();
        let e = Engine::open(EngineConfig {
            data_dir: dir.clone(),
            ..EngineConfig::default()
        })
        .await
        .expect("the old store opens (and migrates)");

        // Finished instances read as they were; every history row decodes.
        let expect_done = [
            ("timer", InstanceStatus::Completed),
            ("fail", InstanceStatus::Faulted),
            ("parent", InstanceStatus::Completed),
            ("cancelled", InstanceStatus::Cancelled),
            ("heard", InstanceStatus::Completed),
        ];
        for (k, status) in expect_done {
            let v = e.instance(&id(k)).await.expect(k);
            assert_eq!(v.instance.status, status, "{k}");
            assert_eq!(v.instance.attention, None, "{k}");
            let h = e.history(&id(k), 0, 10_000).await.expect("history");
            assert!(h.len() > 2, "{k}: {h:?}");
            assert!(h.iter().all(|r| r.kind != "unreadable"), "{k}: {h:?}");
        }
        let out = |k: &str| {
            let e = e.clone();
            let k = id(k);
            async move { e.instance(&k).await.expect("get").instance }
        };
        assert_eq!(
            out("timer").await.output,
            Some(json!({"done": true, "who": null}))
        );
        assert_eq!(out("parent").await.output, Some(json!({"sum": 6})));
        assert_eq!(out("heard").await.output, Some(json!({"heard": 7})));
        let err = out("fail").await.error.expect("error");
        assert_eq!(err["title"], json!("second"));
        let cancelled = e.history(&id("cancelled"), 0, 100).await.expect("history");
        let kinds: Vec<&str> = cancelled.iter().map(|r| r.kind.as_str()).collect();
        for k in ["started", "suspended", "resumed", "cancelled"] {
            assert!(kinds.contains(&k), "{kinds:?}");
        }

        // The waiting instance replays its old history and takes a new event.
        publish_until_taken(&e, "fx.go", 9).await;
        let v = e
            .wait_finished(&id("waiting"), Duration::from_secs(20))
            .await
            .expect("finished");
        assert_eq!(v.instance.status, InstanceStatus::Completed);
        assert_eq!(v.instance.output, Some(json!({"heard": 9})));

        // Concurrency: the running one finishes, then the queued one (a format-1 `queued`
        // record) is admitted and runs.
        publish_until_taken(&e, "fx.go2", 1).await;
        let v = e
            .wait_finished(&id("limited_running"), Duration::from_secs(20))
            .await
            .expect("finished");
        assert_eq!(v.instance.output, Some(json!({"heard": 1, "who": "q1"})));
        publish_until_taken(&e, "fx.go2", 2).await;
        let v = e
            .wait_finished(&id("limited_queued"), Duration::from_secs(20))
            .await
            .expect("finished");
        assert_eq!(v.instance.output, Some(json!({"heard": 2, "who": "q2"})));
        e.shutdown(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .expect("watchdog");
}

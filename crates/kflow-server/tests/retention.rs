//! Retention on an engine: finished instances past the age are archived (gzip JSON lines,
//! sealed when workflow data is) and pruned with their histories; running ones and young ones
//! stay; processed events go too.

mod support;

use serde_json::json;
use support::{Api, wf};

use kflow_server::retention::{Retention, RetentionConfig, read_archive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_instances_are_archived_then_pruned() {
    let api = Api::new().await;
    api.register(&wf(
        "ret",
        "quick",
        "1.0.0",
        "do:\n  - a:\n      set: {done: true}\n",
    ))
    .await;
    api.register(&wf(
        "ret",
        "slow",
        "1.0.0",
        "do:\n  - w:\n      wait: {hours: 1}\n",
    ))
    .await;
    let mut done = Vec::new();
    for i in 0..5 {
        let id = api.start("ret", "quick", json!({"i": i})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        api.wait_status(&id, "completed").await;
        done.push(id);
    }
    let waiting = api.start("ret", "slow", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.wait_status(&waiting, "running").await;

    let dir = tempfile::tempdir().unwrap();
    let config = RetentionConfig {
        finished_after_seconds: Some(60),
        events_after_seconds: Some(60),
        archive_dir: Some(dir.path().to_path_buf()),
        every_seconds: None,
    };
    let now = api.engine.now_ms();
    let r = Retention::new(api.engine.clone(), config.clone(), false);
    // Nothing is old enough yet.
    assert_eq!(r.pass(now).unwrap().instances, 0);
    // An hour later, the five finished ones go; the waiting one stays.
    let pruned = r.pass(now + 3_600_000).unwrap();
    assert_eq!(pruned.instances, 5);
    let store = api.engine.store();
    for id in &done {
        assert_eq!(store.get_instance(id).unwrap(), None, "{id}");
        assert!(store.history(id, 0, 10).unwrap().is_empty(), "{id}");
    }
    assert!(store.get_instance(&waiting).unwrap().is_some());
    // The archive holds each one, with its whole history.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one file per day");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = files[0].metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the archive is private to the server's user");
    }
    let lines = read_archive(&files[0].path()).unwrap();
    assert_eq!(lines.len(), 5);
    for line in &lines {
        let id = line["instance"]["id"].as_str().unwrap();
        assert!(done.iter().any(|d| d == id));
        assert_eq!(line["instance"]["status"], "completed");
        assert_eq!(line["instance"]["output"], json!({"done": true}));
        let kinds: Vec<&str> = line["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert_eq!(kinds.first(), Some(&"started"), "{line}");
    }
    // Sealed data makes sealed archive lines (appended to the same day's file).
    api.start("ret", "quick", json!({"secret": "s3cr3t"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sealed = Retention::new(api.engine.clone(), config, true);
    assert_eq!(sealed.pass(now + 3_600_000).unwrap().instances, 1);
    let lines = read_archive(&files[0].path()).unwrap();
    assert_eq!(lines.len(), 6, "appended as a new gzip member");
    assert!(!lines[5].to_string().contains("s3cr3t"), "{}", lines[5]);
    assert!(lines[5].get("$sealed").is_some() || lines[5].to_string().contains("sealed"));
}

//! `kflow db stats`, `backup` and `restore` on SQLite with the real binary: a backup taken while
//! the server runs restores into a working installation; a restore onto a running server's
//! directory is refused.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{ServerProcess, TempDir, get_json, kflow, post_json};

#[test]
fn backup_of_a_running_server_restores_elsewhere() {
    let dir = TempDir::new("db-backup");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    support::register(
        &server.base(),
        "document: {dsl: '1.0.0', namespace: db, name: hello, version: '1.0.0'}\ndo:\n  - a:\n      set: {ok: true}\n",
    );
    support::start_and_wait(&server.base(), "db", "hello", "b", 0..20);

    let stats = kflow(["db", "stats", "--data-dir"]).arg(&data).run();
    assert_eq!(stats.code, Some(0), "{}", stats.describe());
    let line = stats
        .stdout
        .lines()
        .find(|l| l.starts_with("instances "))
        .unwrap_or_else(|| panic!("{}", stats.describe()));
    assert!(line.split_whitespace().nth(1) == Some("20"), "{line}");

    let file = dir.path().join("backup.db");
    let out = kflow(["db", "backup"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.contains("master key"), "{}", out.describe());
    let again = kflow(["db", "backup"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .run();
    assert_eq!(again.code, Some(2), "an existing file is not overwritten");

    // Restoring onto the running server's directory is refused.
    let busy = kflow(["db", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .run();
    assert_eq!(busy.code, Some(2), "{}", busy.describe());
    assert!(
        busy.stderr.contains("another kflow server"),
        "{}",
        busy.describe()
    );
    // Not a kflow database.
    let junk = dir.write("junk.db", "not a database");
    let bad = kflow(["db", "restore"])
        .arg(&junk)
        .arg("--data-dir")
        .arg(dir.path().join("x"))
        .run();
    assert_eq!(bad.code, Some(2), "{}", bad.describe());

    // Restored elsewhere (with the same master key), the instances are all there.
    let other = dir.path().join("restored");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(data.join("master.key"), other.join("master.key")).unwrap();
    let out = kflow(["db", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&other)
        .run();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    drop(server);
    let restored = ServerProcess::start(&other, &[]);
    for i in 0..20 {
        let (code, v) = get_json(&restored.base(), &format!("/api/v1/instances/b-{i}")).unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["status"], "completed", "{v}");
    }
}

/// An SQLite installation moved to PostgreSQL: every table copied and checked, the copy run
/// again, and a node on PostgreSQL serves what was there (and starts new instances).
#[test]
fn copy_an_installation_to_postgres_and_run_on_it() {
    let Some(db) = kflow_store_pg::testing::TestDb::create("copy_an_installation_to_postgres")
    else {
        return;
    };
    let dir = TempDir::new("db-copy");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    support::register(
        &server.base(),
        "document: {dsl: '1.0.0', namespace: db, name: hello, version: '1.0.0'}\ndo:\n  - a:\n      set: {ok: '${ $input.i }'}\n  - b:\n      wait: {milliseconds: 10}\n",
    );
    support::start_and_wait(&server.base(), "db", "hello", "m", 0..25);
    // The copy refuses a source that a server is using.
    let busy = kflow(["db", "copy", "--from"])
        .arg(&data)
        .args(["--to", db.url.as_str()])
        .run();
    assert_eq!(busy.code, Some(2), "{}", busy.describe());
    assert!(
        busy.stderr.contains("another kflow server"),
        "{}",
        busy.describe()
    );
    drop(server);

    for run in 0..2 {
        let out = kflow(["db", "copy", "--from"])
            .arg(format!("sqlite://{}", data.display()))
            .args(["--to", db.url.as_str()])
            .timeout(Duration::from_secs(120))
            .run();
        assert_eq!(out.code, Some(0), "run {run}: {}", out.describe());
        assert!(out.stdout.contains("verified"), "{}", out.describe());
        assert!(!out.stdout.contains("DIFFERENT"), "{}", out.describe());
        let history = out
            .stdout
            .lines()
            .find(|l| l.starts_with("history "))
            .unwrap_or_else(|| panic!("{}", out.describe()));
        let n: Vec<&str> = history.split_whitespace().collect();
        assert!(
            n[1] == n[2] && n[1].parse::<u64>().unwrap() > 25 * 3,
            "{history}"
        );
    }

    // A node on PostgreSQL, with the installation's master key, has it all.
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();
    let env = [("KFLOW_MASTER_KEY", key.trim())];
    let mut node =
        ServerProcess::spawn_with_env(&dir.path().join("node"), &["--db", db.url.as_str()], &env);
    node.wait_ready(Duration::from_secs(60))
        .expect("the node listens");
    for i in 0..25 {
        let (code, v) = get_json(&node.base(), &format!("/api/v1/instances/m-{i}")).unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["output"], json!({"ok": i}), "{v}");
    }
    let body = json!({"namespace": "db", "name": "hello", "input": {"i": 99}, "wait": true});
    let (code, v) = post_json(&node.base(), "/api/v1/instances", &body).unwrap();
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
}

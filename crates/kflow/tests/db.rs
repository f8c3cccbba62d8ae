//! `kflow db stats`, `backup` and `restore` on SQLite with the real binary: a backup taken while
//! the server runs restores into a working installation; a restore onto a running server's
//! directory is refused.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{ServerProcess, TempDir, get_json, http_request, kflow, post_json};

#[test]
fn backup_of_a_running_server_restores_elsewhere() {
    let dir = TempDir::new("db-backup");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let doc = "document: {dsl: '1.0.0', namespace: db, name: hello, version: '1.0.0'}\ndo:\n  - a:\n      set: {ok: true}\n";
    let r = http_request(
        "POST",
        &server.base(),
        "/api/v1/definitions",
        Some(("application/yaml", doc.as_bytes())),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    for i in 0..20 {
        let body = json!({"namespace": "db", "name": "hello", "id": format!("b-{i}"), "input": {}, "wait": true});
        let (code, v) = post_json(&server.base(), "/api/v1/instances", &body).unwrap();
        assert!(code == 201 || code == 200, "{v}");
    }

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

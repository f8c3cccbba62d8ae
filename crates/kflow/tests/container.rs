//! `run: container` on the real server (issue 12). This machine has the docker CLI and no
//! daemon, so the spec's own example is run against a daemon address where nothing listens:
//! the instance faults with "the docker daemon does not answer", naming what the CLI said.
//! A machine without docker or podman on PATH gets "no container runtime found" instead; both
//! are real answers of the machine, no stand-in.

mod support;

use serde_json::json;
use support::{ServerProcess, TempDir, get_json, post_json};

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

#[test]
fn a_container_without_a_daemon_fails_with_why() {
    let dir = TempDir::new("container");
    let sock = dir.path().join("no-daemon.sock");
    let config = dir.write(
        "kflow.yaml",
        format!(
            "containers:\n  host: 'unix://{}'\n  allow_volumes: [/srv/kflow-data]\n",
            sock.display()
        ),
    );
    let config = config.to_string_lossy().into_owned();
    let server = ServerProcess::start(&dir.path().join("data"), &["--config", &config]);
    let base = server.base();
    // The spec's example (dsl-reference.md, "Container Process").
    support::register(
        &base,
        "document: {dsl: '1.0.3', namespace: test, name: run-container-example, version: '0.1.0'}\n\
         do:\n  - setInput:\n      set:\n        message: Hello World\n  - runContainer:\n      \
         input:\n        from: ${ .message }\n      run:\n        container:\n          \
         image: alpine\n          stdin: ${ . }\n          command: |\n            \
         input=$(cat)\n            echo \"STDIN was: $input\"\n            echo \"ARGS are $1 $2\"\n          \
         arguments:\n          - Foo\n          - Bar\n          pullPolicy: always\n",
    );
    let (code, v) = post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "test", "name": "run-container-example", "wait": true}),
    )
    .expect("run");
    assert!(code < 300, "{v}");
    assert_eq!(v["status"], "faulted", "{v}");
    let detail = v["error"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if on_path("docker") {
        assert!(
            detail.contains("run container: the docker daemon does not answer: ")
                && detail.to_lowercase().contains("cannot connect"),
            "{v}"
        );
        assert_eq!(v["error"]["status"], 503, "{v}");
    } else if on_path("podman") {
        assert!(detail.contains("the podman daemon does not answer"), "{v}");
    } else {
        assert!(detail.contains("no container runtime found"), "{v}");
    }
    // A mount outside the allowed directories is refused before anything runs.
    support::register(
        &base,
        "document: {dsl: '1.0.0', namespace: test, name: mount, version: '0.1.0'}\n\
         do:\n  - c:\n      run:\n        container:\n          image: alpine\n          \
         volumes: {/etc: /host-etc}\n",
    );
    let (_, v) = post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "test", "name": "mount", "wait": true}),
    )
    .expect("run");
    assert_eq!(v["status"], "faulted", "{v}");
    assert_eq!(v["error"]["title"], "Volume not allowed", "{v}");
    let (_, h) = get_json(
        &base,
        &format!("/api/v1/instances/{}", v["id"].as_str().unwrap_or_default()),
    )
    .expect("get");
    assert_eq!(h["status"], "faulted");
}

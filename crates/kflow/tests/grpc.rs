//! `call grpc` on the real server against a real gRPC server: Python's grpcio (the reference
//! implementation's core), started by the test with code generated from the same `.proto`
//! by grpcio-tools. A unary call maps the arguments to the request message and the reply to
//! JSON; a gRPC error status reaches the workflow as a communication error a `try` catches by
//! its title; a method the proto does not have, and arguments that do not fit the message,
//! fail with a clear error. `.ci/run` installs grpcio and grpcio-tools; without them the test
//! skips, except under `CI=true`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{ServerProcess, TempDir, post_json};

/// The `.proto` and the Python server, shared with kflow-tasks' gRPC bench.
fn shared(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kflow-tasks/tests/grpc")
        .join(file)
}

struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpcio_present() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        support::missing("python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools)");
    }
    ok
}

fn start_python(dir: &TempDir) -> (Python, u16) {
    let mut child = Command::new("python3")
        .arg(shared("server.py"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().expect("stdout");
    let child = Python(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("PORT ") {
                let _ = tx.send(p.trim().parse::<u16>().unwrap_or(0));
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the Python gRPC server printed its port");
    (child, port)
}

fn run(base: &str, name: &str, input: Value) -> Value {
    let (code, v) = post_json(
        base,
        "/api/v1/instances",
        &json!({"namespace": "grpc", "name": name, "input": input, "wait": true}),
    )
    .expect("start");
    assert!(code < 300, "{v}");
    v
}

#[test]
fn unary_calls_against_a_real_grpc_server() {
    if !grpcio_present() {
        return;
    }
    let dir = TempDir::new("grpc");
    let (_python, port) = start_python(&dir);
    let proto = format!(
        "file://{}",
        shared("shop.proto")
            .canonicalize()
            .expect("shop.proto")
            .display()
    );
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let base = server.base();
    let call = |method: &str| {
        format!(
            "        call: grpc\n        with:\n          proto:\n            endpoint: '{proto}'\n\
             \x20         service:\n            name: shop.Orders\n            host: 127.0.0.1\n\
             \x20           port: {port}\n          method: {method}\n\
             \x20         arguments:\n            order_id: ${{ .id }}\n            fields: ${{ .fields }}\n"
        )
    };
    support::register(
        &base,
        &format!(
            "document:\n  dsl: '1.0.3'\n  namespace: grpc\n  name: order\n  version: '1.0.0'\n\
             do:\n  - get:\n      try:\n        - fetch:\n{}\
             \x20     catch:\n        errors:\n          with:\n            type: communication\n\
             \x20           title: gRPC NOT_FOUND\n        as: err\n        do:\n\
             \x20         - missing:\n              set:\n                missing: ${{ $err.detail }}\n\
             \x20               status: ${{ $err.status }}\n",
            call("Get")
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        ),
    );
    let v = run(
        &base,
        "order",
        json!({"id": "o-7", "fields": ["a", "b", "c"]}),
    );
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(
        v["output"],
        json!({
            "order_id": "o-7",
            "item_count": 3,
            "status": "SHIPPED",
            "labels": {"by": "python"},
            "total_cents": "12345678901"
        }),
        "{v}"
    );
    // A gRPC NOT_FOUND, caught by its title.
    let v = run(&base, "order", json!({"id": "missing", "fields": []}));
    assert_eq!(
        v["output"],
        json!({
            "missing": format!("call grpc: shop.Orders/Get at 127.0.0.1:{port}: NOT_FOUND (5): no such order: missing"),
            "status": 404
        }),
        "{v}"
    );

    // A method the proto does not have, and arguments that are not the request message.
    support::register(
        &base,
        &format!(
            "document:\n  dsl: '1.0.3'\n  namespace: grpc\n  name: wrong\n  version: '1.0.0'\n\
             do:\n  - fetch:\n{}",
            call("Put")
        ),
    );
    let v = run(&base, "wrong", json!({"id": "x", "fields": []}));
    assert_eq!(v["status"], "faulted", "{v}");
    assert_eq!(
        v["error"]["detail"], "call grpc: the service shop.Orders has no method Put (it has: Get)",
        "{v}"
    );
    let v = run(&base, "order", json!({"id": "x", "fields": "not a list"}));
    assert_eq!(v["status"], "faulted", "{v}");
    let detail = v["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("call grpc: the arguments are not a shop.GetRequest:"),
        "{v}"
    );
}

//! `call grpc` throughput: the executor's unary calls against a real gRPC server (Python's
//! grpcio, `tests/grpc/server.py`), sequential and 16 at a time, beside grpcio's own client
//! against the same kind of server as the yardstick. Needs python3 with grpcio and
//! grpcio-tools.
//!
//! `cargo bench -p kflow-tasks --bench grpc`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use kflow_effects::Effect;
use kflow_effects::effect::GrpcRequest;
use kflow_tasks::{EffectCtx, ExecConfig, Executor};

fn here(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(file)
}

/// Starts the server (or, with `client`, runs grpcio's own client) and reads its line.
fn python(out: &std::path::Path, client: Option<u32>) -> (std::process::Child, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(here("server.py")).arg(out);
    if let Some(n) = client {
        cmd.args(["--client", &n.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with grpcio and grpcio-tools");
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("PORT ") || l.starts_with("CLIENT "))
        .expect("the Python side's line");
    (child, line)
}

fn ctx() -> EffectCtx {
    EffectCtx {
        instance_id: "bench".into(),
        effect_id: 1,
        task: "/do/0/get".into(),
        attempt: 1,
        namespace: String::new(),
        limits: Default::default(),
        traceparent: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let out = std::env::temp_dir().join(format!("kflow-grpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let (mut server, line) = python(&out, None);
    let port: u16 = line[5..].trim().parse().expect("port");
    let exec = Arc::new(Executor::new(ExecConfig::default()));
    let req = |i: u32| {
        Effect::Grpc(GrpcRequest {
            proto: format!(
                "file://{}",
                here("shop.proto").canonicalize().expect("proto").display()
            ),
            proto_auth: None,
            service: "shop.Orders".into(),
            host: "127.0.0.1".into(),
            port,
            method: "Get".into(),
            arguments: serde_json::json!({"order_id": format!("o-{i}"), "fields": ["a", "b"]})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            auth: None,
        })
    };
    // Warm-up: the proto compiled and cached, the connection open.
    let first = Instant::now();
    exec.perform(&ctx(), &req(0)).await.expect("a call");
    println!(
        "first call (fetch and compile the .proto, connect): {:.2} ms",
        first.elapsed().as_secs_f64() * 1e3
    );
    for _ in 0..200 {
        exec.perform(&ctx(), &req(0)).await.expect("a call");
    }
    let n = 3_000u32;
    let start = Instant::now();
    for i in 0..n {
        exec.perform(&ctx(), &req(i)).await.expect("a call");
    }
    let seq = f64::from(n) / start.elapsed().as_secs_f64();
    println!("kflow, sequential: {seq:.0} calls/s ({n} calls)");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let exec = exec.clone();
        let reqs: Vec<Effect> = (0..n / 16).map(|i| req(w * 10_000 + i)).collect();
        tasks.push(tokio::spawn(async move {
            for r in reqs {
                exec.perform(&ctx(), &r).await.expect("a call");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let conc = f64::from(n / 16 * 16) / start.elapsed().as_secs_f64();
    println!("kflow, 16 at a time: {conc:.0} calls/s");
    let _ = server.kill();
    let _ = server.wait();
    let (mut client, line) = python(&out, Some(n));
    let _ = client.wait();
    let theirs: f64 = line[7..].trim().parse().expect("rate");
    println!("grpcio's own client, sequential: {theirs:.0} calls/s ({n} calls)");
    println!("kflow / grpcio client (sequential): {:.2}", seq / theirs);
    let _ = std::fs::remove_dir_all(&out);
}

//! Shell and script tasks under the server's sandbox, through the real binary: what they can
//! read, write, reach, spawn and use, and that nothing they start outlives them.
//!
//! Landlock and network namespaces are needed (this kind of machine has both); without them
//! the test says so and skips on a developer's machine, and fails under `CI=true`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::{ServerProcess, TempDir, post_json};

fn landlock_here() -> bool {
    // The launcher itself: a write outside the allowed folder must fail.
    let probe = std::process::Command::new(support::kflow_bin())
        .args([
            "__sandbox",
            "--landlock",
            "--ro",
            "/usr",
            "--ro",
            "/bin",
            "--ro",
            "/lib",
            "--ro",
            "/lib64",
            "--rw",
            "/nonexistent-kflow",
            "--",
            "/bin/sh",
            "-c",
            "echo x > /tmp/kflow-landlock-probe-$$ && rm -f /tmp/kflow-landlock-probe-$$",
        ])
        .output();
    matches!(probe, Ok(o) if !o.status.success())
}

struct Env {
    server: ServerProcess,
    dir: TempDir,
}

fn env() -> Option<Env> {
    if !landlock_here() {
        assert!(
            std::env::var_os("CI").is_none(),
            "Landlock is not enforced on this machine: the isolation tests cannot run under CI"
        );
        eprintln!("skipped: Landlock is not enforced on this machine");
        return None;
    }
    let dir = TempDir::new("isolation");
    let config = dir.path().join("kflow.yaml");
    std::fs::write(
        &config,
        "sandbox:\n  processes: 64\n  memory_mb: 256\n  no_network_namespaces: [nonet]\n  \
         forbid_namespaces: [noproc]\n",
    )
    .expect("config");
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    Some(Env { server, dir })
}

impl Env {
    fn register(&self, ns: &str, name: &str, body: &str) {
        let doc = format!(
            "document: {{dsl: '1.0.0', namespace: {ns}, name: {name}, version: '1.0.0'}}\ndo:\n{body}"
        );
        let r = support::http_request(
            "POST",
            &self.server.base(),
            "/api/v1/definitions",
            Some(("application/yaml", doc.as_bytes())),
            Duration::from_secs(30),
        )
        .expect("register");
        assert!(r.status < 300, "{}", r.text());
    }

    /// Runs a one-task workflow that runs `script` in a shell; returns the finished instance.
    fn shell(&self, ns: &str, name: &str, script: &str, timeout: Option<&str>) -> Value {
        self.shell_with(ns, name, script, timeout, "")
    }

    /// [`shell`](Self::shell) with the task's `metadata.kflow` (a flow mapping).
    fn shell_with(
        &self,
        ns: &str,
        name: &str,
        script: &str,
        timeout: Option<&str>,
        kflow: &str,
    ) -> Value {
        let timeout = timeout
            .map(|t| format!("      timeout: {{after: {t}}}\n"))
            .unwrap_or_default();
        let metadata = if kflow.is_empty() {
            String::new()
        } else {
            format!("      metadata: {{kflow: {kflow}}}\n")
        };
        let body = format!(
            "  - sh:\n{timeout}{metadata}      run:\n        shell:\n          command: {}\n        return: all\n",
            serde_json::to_string(script).unwrap()
        );
        self.register(ns, name, &body);
        let (code, v) = post_json(
            &self.server.base(),
            "/api/v1/instances",
            &json!({"namespace": ns, "name": name, "wait": true, "wait_seconds": 120}),
        )
        .expect("start");
        assert!(code < 300, "{v}");
        v
    }
}

fn stdout(v: &Value) -> String {
    v["output"]["stdout"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_task_sees_only_its_folder_and_the_system() {
    let Some(e) = env() else { return };
    let secret = e.dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = e.dir.path().join("data").join("kflow.db");
    let script = format!(
        "cat {s} 2>&1 | head -c 200; echo; cat {db} >/dev/null 2>&1 && echo READ-DB; \
         echo x > /tmp/kflow-isolation-$$ 2>/dev/null && echo WROTE-TMP; \
         echo here > ./mine && cat ./mine; env | grep -c KFLOW_ADMIN_TOKEN; \
         for p in /proc/[0-9]*/environ; do cat $p 2>/dev/null; done | tr '\\0' '\\n' | grep -c KFLOW_ADMIN_TOKEN; \
         id -u",
        s = secret.display(),
        db = db.display()
    );
    let v = e.shell("default", "fs", &script, None);
    assert_eq!(v["status"], "completed", "{v}");
    let out = stdout(&v);
    assert!(
        !out.contains("top secret"),
        "read a file outside its folder:\n{out}"
    );
    assert!(!out.contains("READ-DB"), "read the database:\n{out}");
    assert!(
        !out.contains("WROTE-TMP"),
        "wrote outside its folder:\n{out}"
    );
    assert!(out.contains("here"), "cannot use its own folder:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let n = lines.len();
    assert_eq!(
        lines[n - 3],
        "0",
        "the server's token is in its environment:\n{out}"
    );
    assert_eq!(
        lines[n - 2],
        "0",
        "the server's token is readable in /proc:\n{out}"
    );
    let uid: u64 = lines[n - 1].parse().unwrap_or(0);
    assert!(
        uid >= 1_800_000_000,
        "not run as a task user of its own:\n{out}"
    );
}

#[test]
fn nothing_a_task_starts_outlives_its_timeout() {
    let Some(e) = env() else { return };
    let script = "setsid sleep 313 & (sleep 314 &); nohup sleep 315 >/dev/null 2>&1 & sleep 316";
    let v = e.shell("default", "escape", script, Some("PT1S"));
    assert_eq!(v["status"], "faulted", "{v}");
    assert!(
        v["error"]["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("/timeout"),
        "{v}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = std::process::Command::new("pgrep")
            .args(["-f", "sleep 31[3-6]"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes outlived the task: {left}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn memory_and_processes_are_limited_and_a_fork_bomb_stays_contained() {
    let Some(e) = env() else { return };
    let v = e.shell(
        "default",
        "mem",
        "python3 -c 'x = bytearray(1024 * 1024 * 1024); print(\"allocated\")'",
        None,
    );
    assert_eq!(v["status"], "completed", "{v}");
    assert!(!stdout(&v).contains("allocated"), "{v}");
    assert_ne!(v["output"]["code"], 0, "{v}");
    let t0 = Instant::now();
    let v = e.shell(
        "default",
        "bomb",
        "bomb_7731() { bomb_7731 | bomb_7731 & }; bomb_7731; sleep 2; echo survived",
        Some("PT4S"),
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "{v}");
    // Whatever the shell made of it, the server answers and nothing of the bomb is left.
    let (code, _) = support::get_json(&e.server.base(), "/api/v1/queues").expect("server alive");
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("bomb_7731") > 0 {
        assert!(
            Instant::now() < deadline,
            "the fork bomb's processes are still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many processes have `marker` in their command line.
fn processes_with(marker: &str) -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != me.as_str())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn a_namespace_without_network_cannot_connect_and_a_forbidden_one_cannot_run() {
    let Some(e) = env() else { return };
    let port = e.server.port;
    let probe = format!(
        "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=3); print(\"connected\")' 2>&1 | tail -1"
    );
    let open = e.shell("default", "net", &probe, None);
    assert!(stdout(&open).contains("connected"), "{open}");
    let closed = e.shell("nonet", "net", &probe, None);
    assert!(!stdout(&closed).contains("connected"), "{closed}");
    let v = e.shell("noproc", "sh", "echo ran", None);
    assert_eq!(v["status"], "faulted", "{v}");
    assert_eq!(v["error"]["title"], "Processes forbidden", "{v}");
    // `kflow explain` says what is in force for each.
    let explain = |inst: &Value| {
        let id = inst["id"].as_str().unwrap();
        let (_, x) =
            support::get_json(&e.server.base(), &format!("/api/v1/instances/{id}/explain"))
                .expect("explain");
        x["isolation"].as_str().unwrap_or("").to_string()
    };
    assert!(explain(&open).contains("network on"), "{}", explain(&open));
    assert!(explain(&open).contains("Landlock"), "{}", explain(&open));
    assert!(
        explain(&closed).contains("network off"),
        "{}",
        explain(&closed)
    );
    assert!(explain(&v).contains("forbidden"), "{}", explain(&v));
}

#[test]
fn a_task_can_lower_its_own_limits_and_take_its_network_away() {
    let Some(e) = env() else { return };
    let port = e.server.port;
    let script = format!(
        "python3 -c 'x = bytearray(128 * 1024 * 1024); print(\"allocated\")' 2>&1 | tail -1; \
         python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=3); print(\"connected\")' 2>&1 | tail -1"
    );
    // The server allows 256 MiB and the network: this task asks for 64 MiB and none.
    let own = e.shell_with(
        "default",
        "own",
        &script,
        None,
        "{limits: {memoryMb: 64, network: false}}",
    );
    let out = stdout(&own);
    assert!(
        !out.contains("allocated") && !out.contains("connected"),
        "{own}"
    );
    // Asking for more than the server allows gets the server's limit.
    let more = e.shell_with(
        "default",
        "more",
        &script,
        None,
        "{limits: {memoryMb: 100000}}",
    );
    let out = stdout(&more);
    assert!(
        out.contains("allocated") && out.contains("connected"),
        "{more}"
    );
    let big = e.shell_with(
        "default",
        "big",
        "python3 -c 'x = bytearray(512 * 1024 * 1024); print(\"allocated\")' 2>&1 | tail -1",
        None,
        "{limits: {memoryMb: 100000}}",
    );
    assert!(!stdout(&big).contains("allocated"), "{big}");
}

#[test]
fn a_remote_worker_confines_its_tasks_the_same_way() {
    let Some(e) = env() else { return };
    let secret = e.dir.path().join("worker-secret.txt");
    std::fs::write(&secret, "worker top secret").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut worker = std::process::Command::new(support::kflow_bin())
        .args(["worker", "--server", &e.server.base(), "--queue", "remote"])
        .env("KFLOW_TOKEN", support::TEST_TOKEN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a worker");
    let script = format!("cat {} 2>&1 | head -c 100; echo; id -u", secret.display());
    let v = e.shell_with("default", "remote", &script, None, "{queue: remote}");
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(v["status"], "completed", "{v}");
    let out = stdout(&v);
    assert!(!out.contains("top secret"), "{out}");
    let uid: u64 = out.lines().last().unwrap_or("").trim().parse().unwrap_or(0);
    assert!(uid >= 1_800_000_000, "{out}");
}

//! The worker libraries in `workers/` (Python, TypeScript) run their own test suites against a
//! real server started here: `call worker` functions served by handlers written in each
//! language, with results journaled, typed errors, exceptions and cancellation.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{ServerProcess, TEST_TOKEN, TempDir};

fn workers_dir(lang: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../workers")
        .join(lang)
}

fn has(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_worker_library() {
    if !has("python3", "--version") {
        support::missing("python3");
        return;
    }
    let dir = TempDir::new("pyworker");
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "unittest", "discover", "-v", "-s", "tests"])
        .current_dir(workers_dir("python"))
        .env("KFLOW_URL", server.base())
        .env("KFLOW_TOKEN", TEST_TOKEN)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = support::run_with_timeout(cmd, Duration::from_secs(300));
    println!("{}", out.stderr);
    assert!(
        out.code == Some(0) && !out.stderr.contains("skipped"),
        "the Python worker library's tests failed:\n{}\n{}\n--- server ---\n{}",
        out.stdout,
        out.stderr,
        server.log_tail(3000)
    );
}

#[test]
fn typescript_worker_library() {
    if !has("node", "--version") || !has("npm", "--version") {
        support::missing("node and npm");
        return;
    }
    let here = workers_dir("typescript");
    if !here.join("node_modules/typescript").is_dir() {
        let mut ci = Command::new("npm");
        ci.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&here);
        let out = support::run_with_timeout(ci, Duration::from_secs(300));
        assert!(
            out.code == Some(0),
            "npm ci in workers/typescript failed:\n{}",
            out.stderr
        );
    }
    let dir = TempDir::new("tsworker");
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut cmd = Command::new("npm");
    cmd.args(["test", "--silent"])
        .current_dir(&here)
        .env("KFLOW_URL", server.base())
        .env("KFLOW_TOKEN", TEST_TOKEN);
    let out = support::run_with_timeout(cmd, Duration::from_secs(300));
    println!("{}", out.stdout);
    assert!(
        out.code == Some(0)
            && out.stdout.contains("# pass 5")
            && out.stdout.contains("# skipped 0"),
        "the TypeScript worker library's tests failed:\n{}\n{}\n--- server ---\n{}",
        out.stdout,
        out.stderr,
        server.log_tail(3000)
    );
}

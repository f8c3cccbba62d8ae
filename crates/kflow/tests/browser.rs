//! The web UI in a real browser: Debian's Chromium driven by Playwright (`playwright-core` from
//! npm, pointed at the system's browser) through `crates/kflow-ui/browser/flow.mjs`, against a
//! real `kflow server`: register a workflow in the editor (an error at its line first), start
//! it from the generated form (a field error first), watch it complete live, read its
//! timeline, diff two versions, and check that a viewer sees no cancel button and is refused
//! by the API.
//!
//! Needs node, Chromium (`chromium`, or `KFLOW_CHROMIUM`) and `npm ci` in
//! `crates/kflow-ui/browser` (`.ci/run` installs all three). Without them the test says so and
//! passes on a user's machine, and fails under `CI=true`.
//!
//! `KFLOW_SCREENSHOTS=docs/screenshots` (relative to the workspace) refreshes the README's
//! screenshots from the same run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{ServerProcess, TEST_TOKEN, TempDir, http_request};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KFLOW_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn node() -> Option<PathBuf> {
    let out = Command::new("node").arg("--version").output().ok()?;
    out.status.success().then(|| PathBuf::from("node"))
}

/// node, Chromium and playwright-core, or `None` (said, or a failure under `CI=true`).
fn browser_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let dir = workspace().join("crates/kflow-ui/browser");
    let Some(node) = node() else {
        support::missing("node (for the browser tests)");
        return None;
    };
    let Some(chromium) = chromium() else {
        support::missing("Chromium (apt install chromium; or set KFLOW_CHROMIUM)");
        return None;
    };
    if !dir.join("node_modules/playwright-core").is_dir() {
        support::missing("playwright-core (npm ci in crates/kflow-ui/browser)");
        return None;
    }
    Some((node, chromium, dir))
}

#[test]
fn the_ui_in_a_real_browser() {
    let Some((node, chromium, dir)) = browser_tools() else {
        return;
    };
    let data = TempDir::new("browser");
    let server = ServerProcess::start(data.path(), &[]);
    // A viewer token for the role checks.
    let r = http_request(
        "POST",
        &server.base(),
        "/api/v1/tokens",
        Some((
            "application/json",
            br#"{"name": "ui-viewer", "role": "viewer", "namespaces": ["*"]}"#,
        )),
        Duration::from_secs(10),
    )
    .expect("create a viewer token");
    assert_eq!(r.status, 201, "{}", r.text());
    let viewer = r.json().expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let mut cmd = Command::new(node);
    cmd.current_dir(&dir)
        .arg("flow.mjs")
        .env("KFLOW_URL", server.base())
        .env("KFLOW_ADMIN_TOKEN", TEST_TOKEN)
        .env("KFLOW_VIEWER_TOKEN", &viewer)
        .env("KFLOW_CHROMIUM", &chromium);
    if let Ok(shots) = std::env::var("KFLOW_SCREENSHOTS") {
        let shots = workspace().join(shots);
        std::fs::create_dir_all(&shots).expect("screenshot folder");
        cmd.env("KFLOW_SCREENSHOTS", shots);
    }
    let out = support::run_with_timeout(cmd, Duration::from_secs(240));
    println!("{}", out.stdout);
    assert!(
        out.code == Some(0),
        "the browser flow failed\n{}\n--- server ---\n{}",
        out.describe(),
        server.log_tail(4000)
    );
    assert!(
        out.stdout.contains("all steps passed"),
        "{}",
        out.describe()
    );
}

/// Time to first paint of the heavy pages, in the browser (not a pass/fail test: figures for
/// BENCHMARKS.md). Against `KFLOW_BENCH_URL` with `KFLOW_BENCH_TOKEN` when set (a release
/// server), else a server of this build.
#[test]
#[ignore = "a benchmark: cargo nextest run -p kflow --test browser --run-ignored only"]
fn paint_times() {
    let Some((node, chromium, dir)) = browser_tools() else {
        return;
    };
    let data = TempDir::new("paint");
    let (server, base, token) = match (
        std::env::var("KFLOW_BENCH_URL"),
        std::env::var("KFLOW_BENCH_TOKEN"),
    ) {
        (Ok(url), Ok(token)) => (None, url, token),
        _ => {
            let s = ServerProcess::start(data.path(), &[]);
            let base = s.base();
            (Some(s), base, TEST_TOKEN.to_string())
        }
    };
    let mut cmd = Command::new(node);
    cmd.current_dir(&dir)
        .arg("paint.mjs")
        .env("KFLOW_URL", &base)
        .env("KFLOW_ADMIN_TOKEN", &token)
        .env("KFLOW_CHROMIUM", &chromium);
    let out = support::run_with_timeout(cmd, Duration::from_secs(600));
    println!("{}", out.stdout);
    assert!(
        out.code == Some(0),
        "{}\n{}",
        out.describe(),
        server.map(|s| s.log_tail(3000)).unwrap_or_default()
    );
}

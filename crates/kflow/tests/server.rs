//! End-to-end tests of `kflow server` and the client verbs, with the real binary serving on
//! 127.0.0.1 from a temporary data folder: apply, start (--wait, --watch), get, ls, history,
//! cancel, suspend/resume, events, SIGTERM draining, a graceful restart, and config errors.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Outcome, ServerProcess, TempDir, free_port, get_json, json_eq, kflow, poll_until};

/// A workflow document in namespace `srv`: the `document` header, then `body`.
fn wf(name: &str, body: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: srv\n  name: {name}\n  version: '0.1.0'\n{body}"
    )
}

/// A server on a fresh data folder, and a folder for the test's files.
struct Env {
    server: ServerProcess,
    files: TempDir,
    _data: TempDir,
}

fn setup(tag: &str, extra: &[&str]) -> Env {
    let data = TempDir::new(&format!("{tag}-data"));
    let server = ServerProcess::start(&data.path().join("kflow"), extra);
    Env {
        server,
        files: TempDir::new(&format!("{tag}-files")),
        _data: data,
    }
}

impl Env {
    /// Runs a client verb against this server (through `KFLOW_SERVER`).
    fn cli(&self, args: &[&str]) -> Outcome {
        kflow(args)
            .env("KFLOW_SERVER", &self.server.base())
            .timeout(Duration::from_secs(60))
            .run()
    }

    /// Writes the documents and applies them; asserts success.
    fn apply(&self, docs: &[(&str, String)]) {
        for (name, text) in docs {
            let f = self.files.write(name, text);
            let o = self.cli(&["apply", "-f", f.to_str().unwrap_or_default()]);
            assert_eq!(
                o.code,
                Some(0),
                "apply {name}\n{}\n{}",
                o.describe(),
                self.server.log_tail(2000)
            );
        }
    }

    /// GET /api/v1/instances/{id}.
    fn instance(&self, id: &str) -> Value {
        let (status, v) = get_json(&self.server.base(), &format!("/api/v1/instances/{id}"))
            .unwrap_or_else(|e| panic!("GET instance {id}: {e}\n{}", self.server.log_tail(2000)));
        assert_eq!(status, 200, "GET instance {id}: {v}");
        v
    }

    /// Polls the instance until `pred` holds (30 s), returns it; panics with the instance.
    fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
            last = self.instance(id);
            pred(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| {
            panic!(
                "instance {id} never became {what}: {last}\n{}",
                self.server.log_tail(2000)
            )
        })
    }
}

fn ok(o: &Outcome) {
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
}

fn json_out(o: &Outcome) -> Value {
    ok(o);
    o.json().unwrap_or_else(|e| panic!("{e}\n{}", o.describe()))
}

/// The id `start --wait/--watch` reports on stderr as `started ID`.
fn started_id(o: &Outcome) -> String {
    o.stderr
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no `started ID` line on stderr\n{}", o.describe()))
}

/// Starts without waiting; returns the id printed on stdout.
fn start_id(env: &Env, workflow: &str, input: &str) -> String {
    let o = env.cli(&["start", workflow, "--input", input]);
    ok(&o);
    let id = o.stdout.trim().to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "start should print just the id\n{}",
        o.describe()
    );
    id
}

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("")
}

fn waiting_on(v: &Value, on: &str) -> bool {
    v["waiting"]
        .as_array()
        .is_some_and(|w| w.iter().any(|w| w["on"] == on))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn apply_a_folder_created_unchanged_and_conflict() {
    let env = setup("apply", &[]);
    let defs = TempDir::new("apply-defs");
    defs.write(
        "a.yaml",
        wf("alpha", "do:\n  - x:\n      set:\n        a: 1\n"),
    );
    defs.write(
        "b.yml",
        wf("beta", "do:\n  - y:\n      set:\n        b: 2\n"),
    );
    defs.write("notes.txt", "not a workflow");
    let dir = defs.path().to_str().unwrap_or_default();

    let o = env.cli(&["apply", "-f", dir]);
    ok(&o);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines,
        ["srv/alpha@0.1.0 created", "srv/beta@0.1.0 created"],
        "{}",
        o.describe()
    );

    let o = env.cli(&["apply", "-f", dir]);
    ok(&o);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines,
        ["srv/alpha@0.1.0 unchanged", "srv/beta@0.1.0 unchanged"],
        "{}",
        o.describe()
    );

    // The same version with other content: refused, the message names the file and the rule;
    // the other document still goes through.
    let a = defs.write(
        "a.yaml",
        wf("alpha", "do:\n  - x:\n      set:\n        a: 2\n"),
    );
    let o = env.cli(&["apply", "-f", dir]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(
        o.stderr.contains(&a.display().to_string()),
        "the message should name the file\n{}",
        o.describe()
    );
    assert!(
        o.stderr
            .contains("already registered with different content"),
        "the message should explain the conflict\n{}",
        o.describe()
    );
    assert!(
        o.stdout.contains("srv/beta@0.1.0 unchanged"),
        "{}",
        o.describe()
    );
    // The registered version did not change.
    let (code, def) =
        get_json(&env.server.base(), "/api/v1/definitions/srv/alpha").expect("GET definition");
    assert_eq!(code, 200, "{def}");
    assert!(
        def["source"].as_str().is_some_and(|s| s.contains("a: 1")),
        "the stored source changed: {def}"
    );

    // An invalid document: exit 1 with a positioned diagnostic.
    let bad = defs.write(
        "c.yaml",
        wf(
            "gamma",
            "do:\n  - z:\n      set:\n        c: 3\n      bogus: true\n",
        ),
    );
    let o = env.cli(&["apply", "-f", bad.to_str().unwrap_or_default()]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("invalid"), "{}", o.describe());
}

#[test]
fn start_wait_prints_the_output_or_the_error() {
    let env = setup("wait", &[]);
    env.apply(&[
        ("greet.yaml", wf("greet", "do:\n  - greet:\n      set:\n        greeting: ${ \"hello \" + .name }\n")),
        (
            "boom.yaml",
            wf(
                "boom",
                "do:\n  - boom:\n      raise:\n        error:\n          type: https://example.com/errors/boom\n          status: 418\n          title: Boom\n",
            ),
        ),
    ]);
    let o = env.cli(&[
        "start",
        "srv/greet",
        "--input",
        r#"{"name":"ada"}"#,
        "--wait",
    ]);
    let out = json_out(&o);
    assert!(
        json_eq(&out, &json!({"greeting": "hello ada"})),
        "{}",
        o.describe()
    );
    let id = started_id(&o);
    let inst = env.instance(&id);
    assert_eq!(status(&inst), "completed", "{inst}");
    assert!(json_eq(&inst["output"], &out), "{inst}");

    // With an explicit version.
    let o = env.cli(&[
        "start",
        "srv/greet@0.1.0",
        "--input",
        r#"{"name":"bob"}"#,
        "--wait",
    ]);
    assert!(
        json_eq(&json_out(&o), &json!({"greeting": "hello bob"})),
        "{}",
        o.describe()
    );

    // A fault: exit 1, the error object on stdout.
    let o = env.cli(&["start", "srv/boom", "--wait"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    let err = o.json().unwrap_or_else(|e| panic!("{e}\n{}", o.describe()));
    assert_eq!(err["status"], 418, "{err}");
    assert_eq!(err["type"], "https://example.com/errors/boom", "{err}");
    assert_eq!(status(&env.instance(&started_id(&o))), "faulted");

    // An unknown workflow: refused by the server (exit 1) with a message.
    let o = env.cli(&["start", "srv/nope", "--wait"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("not registered"), "{}", o.describe());
    assert!(o.stdout.trim().is_empty(), "{}", o.describe());
}

#[test]
fn start_with_input_failing_the_schema_is_refused() {
    let env = setup("schema", &[]);
    let body = "input:\n  schema:\n    format: json\n    document:\n      type: object\n      required: [ n ]\n      properties:\n        n:\n          type: integer\ndo:\n  - double:\n      set:\n        d: ${ .n * 2 }\n";
    env.apply(&[("typed.yaml", wf("typed", body))]);
    for bad in [r#"{"n": "seven"}"#, r#"{"m": 1}"#] {
        let o = env.cli(&["start", "srv/typed", "--input", bad, "--wait"]);
        assert_eq!(o.code, Some(1), "input {bad}\n{}", o.describe());
        assert!(
            o.stderr.contains("input schema"),
            "the message should name the input schema\n{}",
            o.describe()
        );
        assert!(
            !o.stderr.contains("started "),
            "no instance may start\n{}",
            o.describe()
        );
    }
    // Nothing was created; a good input works.
    let (_, page) = get_json(&env.server.base(), "/api/v1/instances?name=typed").expect("list");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "{page}");
    let o = env.cli(&["start", "srv/typed", "--input", r#"{"n": 21}"#, "--wait"]);
    assert!(
        json_eq(&json_out(&o), &json!({"d": 42})),
        "{}",
        o.describe()
    );
    // Input that is not JSON at all is a usage error (exit 2), caught by the client.
    let o = env.cli(&["start", "srv/typed", "--input", "{nope"]);
    assert_eq!(o.code, Some(2), "{}", o.describe());
}

#[test]
fn start_with_an_id_is_safe_to_retry() {
    let env = setup("start-id", &[]);
    env.apply(&[("nap.yaml", wf("nap", "do:\n  - nap:\n      wait: PT1H\n"))]);
    let first = env.cli(&[
        "start",
        "srv/nap",
        "--id",
        "job-42",
        "--input",
        r#"{"n": 1}"#,
    ]);
    ok(&first);
    assert_eq!(first.stdout.trim(), "job-42", "{}", first.describe());
    // The same command again (a retry after a lost answer): the same instance, no second one.
    let again = env.cli(&[
        "start",
        "srv/nap",
        "--id",
        "job-42",
        "--input",
        r#"{"n": 1}"#,
    ]);
    ok(&again);
    assert_eq!(again.stdout.trim(), "job-42", "{}", again.describe());
    // Another request with that id is refused and says why.
    let other = env.cli(&[
        "start",
        "srv/nap",
        "--id",
        "job-42",
        "--input",
        r#"{"n": 2}"#,
    ]);
    assert_eq!(other.code, Some(1), "{}", other.describe());
    assert!(
        other.stderr.contains("already exists"),
        "{}",
        other.describe()
    );
    let (_, page) = get_json(&env.server.base(), "/api/v1/instances?name=nap").expect("list");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    ok(&env.cli(&["cancel", "job-42"]));
}

#[test]
fn get_ls_and_history_show_the_instance() {
    let env = setup("read", &[]);
    env.apply(&[(
        "steps.yaml",
        wf("steps", "do:\n  - first:\n      set:\n        a: ${ .x + 1 }\n  - second:\n      set:\n        b: ${ .a * 10 }\n"),
    )]);
    let o = env.cli(&["start", "srv/steps", "--input", r#"{"x": 4}"#, "--wait"]);
    assert!(
        json_eq(&json_out(&o), &json!({"b": 50})),
        "{}",
        o.describe()
    );
    let id = started_id(&o);

    // get
    let v = json_out(&env.cli(&["get", &id, "-o", "json"]));
    assert_eq!(v["id"], id.as_str(), "{v}");
    assert_eq!(
        (
            v["namespace"].clone(),
            v["name"].clone(),
            v["version"].clone()
        ),
        (json!("srv"), json!("steps"), json!("0.1.0"))
    );
    assert_eq!(status(&v), "completed", "{v}");
    assert!(
        json_eq(&v["input"], &json!({"x": 4})) && json_eq(&v["output"], &json!({"b": 50})),
        "{v}"
    );
    let o = env.cli(&["get", &id]);
    ok(&o);
    for want in [id.as_str(), "srv/steps@0.1.0", "completed", "\"b\": 50"] {
        assert!(
            o.stdout.contains(want),
            "`get` text should show {want:?}\n{}",
            o.describe()
        );
    }
    assert!(
        o.stdout
            .lines()
            .any(|l| l.starts_with("Status:") && l.contains("completed")),
        "{}",
        o.describe()
    );

    // ls: a second instance, still running, to tell the filters apart.
    env.apply(&[(
        "sleepy.yaml",
        wf("sleepy", "do:\n  - nap:\n      wait: PT1H\n"),
    )]);
    let sleepy = start_id(&env, "srv/sleepy", "{}");
    let page = json_out(&env.cli(&["ls", "-o", "json"]));
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&sleepy.as_str()),
        "{page}"
    );
    assert_eq!(ids.first(), Some(&sleepy.as_str()), "newest first: {page}");
    let page = json_out(&env.cli(&[
        "ls",
        "--workflow",
        "steps",
        "--status",
        "completed",
        "-o",
        "json",
    ]));
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(
        (items[0]["id"].as_str(), status(&items[0])),
        (Some(id.as_str()), "completed"),
        "{page}"
    );
    let page = json_out(&env.cli(&["ls", "--status", "running", "-o", "json"]));
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, [sleepy.as_str()], "{page}");
    let o = env.cli(&["ls"]);
    ok(&o);
    let mut lines = o.stdout.lines();
    let head = lines.next().unwrap_or("");
    assert!(
        head.starts_with("ID") && head.contains("WORKFLOW") && head.contains("STATUS"),
        "{}",
        o.describe()
    );
    let row = o
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}\n{}", o.describe()));
    assert!(
        row.contains("srv/steps") && row.contains("0.1.0") && row.contains("completed"),
        "{row}"
    );
    let o = env.cli(&["ls", "--status", "faulted"]);
    ok(&o);
    assert!(
        o.stdout.trim().is_empty() && o.stderr.contains("no instances"),
        "{}",
        o.describe()
    );
    // --limit 1 --all follows the cursor through every page.
    let all = json_out(&env.cli(&["ls", "--limit", "1", "--all", "-o", "json"]));
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2), "{all}");
    // A bad status filter is refused by the server.
    let o = env.cli(&["ls", "--status", "sleeping"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());

    // history
    let h = json_out(&env.cli(&["history", &id, "-o", "json"]));
    let items = h["items"].as_array().expect("history items");
    let seqs: Vec<i64> = items.iter().filter_map(|i| i["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=items.len() as i64).collect::<Vec<_>>(),
        "seq from 1 without gaps: {h}"
    );
    assert_eq!(items[0]["kind"], "started", "{h}");
    assert!(json_eq(&items[0]["data"]["input"], &json!({"x": 4})), "{h}");
    let notice = |ty: &str, r: &str| {
        items.iter().any(|i| {
            i["kind"] == "notice"
                && i["data"]["type"] == ty
                && (r.is_empty() || i["data"]["reference"] == r)
        })
    };
    for (ty, r) in [
        ("task.started", "/do/0/first"),
        ("task.completed", "/do/0/first"),
        ("task.completed", "/do/1/second"),
        ("workflow.completed", ""),
    ] {
        assert!(notice(ty, r), "no {ty} {r} in the history: {h}");
    }
    let o = env.cli(&["history", &id]);
    ok(&o);
    assert!(
        o.stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("SEQ") && l.contains("KIND")),
        "{}",
        o.describe()
    );
    for want in [
        "started",
        "task.completed /do/0/first",
        "task.completed /do/1/second",
        "workflow.completed",
    ] {
        assert!(
            o.stdout.contains(want),
            "history text should show {want:?}\n{}",
            o.describe()
        );
    }
    assert_eq!(
        o.stdout.lines().count(),
        items.len() + 1,
        "one line per event\n{}",
        o.describe()
    );

    // Unknown ids: exit 1 with the server's message.
    for verb in ["get", "history"] {
        let o = env.cli(&[verb, "no-such-id"]);
        assert_eq!(o.code, Some(1), "{}", o.describe());
        assert!(o.stderr.contains("does not exist"), "{}", o.describe());
    }
    env.cli(&["cancel", &sleepy]);
}

#[test]
fn cancel_a_waiting_instance() {
    let env = setup("cancel", &[]);
    env.apply(&[(
        "sleepy.yaml",
        wf(
            "sleepy",
            "do:\n  - nap:\n      wait: PT1H\n  - after:\n      set:\n        woke: true\n",
        ),
    )]);
    let id = start_id(&env, "srv/sleepy", "{}");
    let v = env.wait_for(&id, "waiting on a timer", |v| waiting_on(v, "timer"));
    assert_eq!(status(&v), "running", "{v}");
    assert_eq!(v["waiting"][0]["task"], "/do/0/nap", "{v}");

    let o = env.cli(&["cancel", &id]);
    ok(&o);
    assert_eq!(
        o.stdout.trim(),
        format!("{id} cancelled"),
        "{}",
        o.describe()
    );
    let v = env.instance(&id);
    assert_eq!(status(&v), "cancelled", "{v}");
    assert!(
        v["waiting"].as_array().is_some_and(Vec::is_empty),
        "a cancelled instance waits for nothing: {v}"
    );
    assert!(v.get("output").is_none_or(Value::is_null), "{v}");
    let h = json_out(&env.cli(&["history", &id, "-o", "json"]));
    assert!(
        h["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["kind"] == "cancelled")),
        "{h}"
    );

    // Cancelling again: refused (already finished), exit 1.
    let o = env.cli(&["cancel", &id, "-o", "json"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("already"), "{}", o.describe());
    // Cancel with -o json prints the instance.
    let id2 = start_id(&env, "srv/sleepy", "{}");
    let v = json_out(&env.cli(&["cancel", &id2, "-o", "json"]));
    assert_eq!(
        (v["id"].as_str(), status(&v)),
        (Some(id2.as_str()), "cancelled"),
        "{v}"
    );
}

#[test]
fn suspend_holds_an_instance_and_resume_lets_it_finish() {
    let env = setup("suspend", &[]);
    env.apply(&[(
        "nap.yaml",
        wf(
            "nap",
            "do:\n  - nap:\n      wait: PT1S\n  - after:\n      set:\n        woke: ${ .name }\n",
        ),
    )]);
    let id = start_id(&env, "srv/nap", r#"{"name":"ada"}"#);
    let o = env.cli(&["suspend", &id]);
    ok(&o);
    assert_eq!(
        o.stdout.trim(),
        format!("{id} suspended"),
        "{}",
        o.describe()
    );
    assert_eq!(status(&env.instance(&id)), "suspended");
    // Suspending twice is refused.
    let o = env.cli(&["suspend", &id]);
    assert_eq!(o.code, Some(1), "{}", o.describe());

    // The timer fires while suspended: the instance must not move on. `explain` says when the
    // timer's answer has reached the instance and is held (no fixed sleep).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = env.cli(&["explain", &id, "-o", "json"]);
        ok(&o);
        if o.stdout.contains("held until the instance is resumed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the timer's answer was never held: {}",
            o.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = env.instance(&id);
    assert_eq!(status(&v), "suspended", "a suspended instance went on: {v}");
    assert!(v.get("output").is_none_or(Value::is_null), "{v}");

    let o = env.cli(&["resume", &id]);
    ok(&o);
    // The held timer is delivered in the same commit: the answer may already be `completed`.
    assert!(
        [format!("{id} running"), format!("{id} completed")].contains(&o.stdout.trim().to_string()),
        "{}",
        o.describe()
    );
    let v = env.wait_for(&id, "completed", |v| status(v) == "completed");
    assert!(json_eq(&v["output"], &json!({"woke": "ada"})), "{v}");
    let h = json_out(&env.cli(&["history", &id, "-o", "json"]));
    let kinds: Vec<&str> = h["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    let (s, r) = (
        kinds.iter().position(|k| *k == "suspended"),
        kinds.iter().position(|k| *k == "resumed"),
    );
    assert!(
        s.is_some() && r.is_some() && s < r,
        "suspended then resumed in the history: {kinds:?}"
    );

    // Resuming a finished instance is refused.
    let o = env.cli(&["resume", &id]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
}

#[test]
fn events_send_reaches_a_listen() {
    let env = setup("events", &[]);
    env.apply(&[(
        "ping.yaml",
        wf("ping", "do:\n  - hear:\n      listen:\n        to:\n          one:\n            with:\n              type: com.example.kflow.ping\n"),
    )]);
    let id = start_id(&env, "srv/ping", "{}");
    env.wait_for(&id, "waiting for an event", |v| waiting_on(v, "event"));

    let other = env.files.write(
        "other.json",
        r#"{"specversion":"1.0","id":"e0","source":"https://example.com/test","type":"com.example.kflow.other","data":{"n":0}}"#,
    );
    let o = env.cli(&["events", "send", other.to_str().unwrap_or_default()]);
    ok(&o);
    assert_eq!(
        o.stdout.trim(),
        "e0 (com.example.kflow.other): matched 0",
        "{}",
        o.describe()
    );
    assert_eq!(status(&env.instance(&id)), "running");

    let ping = env.files.write(
        "ping.json",
        r#"{"specversion":"1.0","id":"e1","source":"https://example.com/test","type":"com.example.kflow.ping","datacontenttype":"application/json","data":{"n":7}}"#,
    );
    let o = env.cli(&["events", "send", ping.to_str().unwrap_or_default()]);
    ok(&o);
    assert_eq!(
        o.stdout.trim(),
        "e1 (com.example.kflow.ping): matched 1",
        "{}",
        o.describe()
    );
    let v = env.wait_for(&id, "completed", |v| status(v) == "completed");
    assert!(json_eq(&v["output"], &json!([{"n": 7}])), "{v}");

    // Nobody listens any more.
    let o = env.cli(&["events", "send", ping.to_str().unwrap_or_default()]);
    ok(&o);
    assert!(o.stdout.contains("matched 0"), "{}", o.describe());
    // An event without the required attributes is refused (exit 1).
    let bad = env
        .files
        .write("bad.json", r#"{"id":"e2","type":"com.example.kflow.ping"}"#);
    let o = env.cli(&["events", "send", bad.to_str().unwrap_or_default()]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
}

#[test]
fn watch_without_a_terminal_prints_task_lines() {
    let env = setup("watch", &[]);
    env.apply(&[(
        "walk.yaml",
        wf(
            "walk",
            "do:\n  - first:\n      set:\n        a: 1\n  - pause:\n      wait: PT0.3S\n  - last:\n      set:\n        b: ${ .a + 1 }\n",
        ),
    )]);
    let o = env.cli(&["start", "srv/walk", "--watch"]);
    let out = json_out(&o);
    assert!(json_eq(&out, &json!({"b": 2})), "{}", o.describe());
    let id = started_id(&o);
    assert_eq!(status(&env.instance(&id)), "completed");
    // One plain line per lifecycle event (`HH:MM:SS.mmm what`, tasks by name), no terminal
    // control codes.
    assert!(
        !o.stderr.contains('\x1b') && !o.stderr.contains('\r'),
        "no redrawing without a terminal\n{}",
        o.describe()
    );
    for want in [
        "task.started first",
        "task.completed first",
        "task.started pause",
        "task.completed pause",
        "task.completed last",
        "workflow.completed",
    ] {
        let line = o.stderr.lines().find(|l| l.ends_with(want));
        let line = line.unwrap_or_else(|| panic!("no {want:?} line on stderr\n{}", o.describe()));
        let clock = line.split(' ').next().unwrap_or("");
        assert!(
            clock.len() == 12 && clock.as_bytes()[2] == b':' && clock.as_bytes()[8] == b'.',
            "{line}"
        );
    }
    let pos = |w: &str| o.stderr.find(w).unwrap_or(usize::MAX);
    assert!(
        pos("task.completed first") < pos("task.started pause"),
        "{}",
        o.describe()
    );
    assert!(
        pos("task.completed last") < pos("workflow.completed"),
        "{}",
        o.describe()
    );
}

#[test]
fn sigterm_drains_and_the_data_survives_a_graceful_restart() {
    let files = TempDir::new("drain-files");
    let cfg = files.write("kflow.yaml", "drain_seconds: 2\nmax_body_bytes: 1048576\n");
    let mut env = setup("drain", &["--config", cfg.to_str().unwrap_or_default()]);
    env.apply(&[
        ("greet.yaml", wf("greet", "do:\n  - greet:\n      set:\n        greeting: ${ \"hello \" + .name }\n")),
        (
            "slow.yaml",
            wf("slow", "do:\n  - sleep:\n      run:\n        shell:\n          command: sleep 30\n  - after:\n      set:\n        done: true\n"),
        ),
        ("sleepy.yaml", wf("sleepy", "do:\n  - nap:\n      wait: PT1H\n")),
    ]);
    let o = env.cli(&[
        "start",
        "srv/greet",
        "--input",
        r#"{"name":"ada"}"#,
        "--wait",
    ]);
    let out = json_out(&o);
    let done = started_id(&o);
    let history_before = json_out(&env.cli(&["history", &done, "-o", "json"]));
    let sleepy = start_id(&env, "srv/sleepy", "{}");
    env.wait_for(&sleepy, "waiting", |v| waiting_on(v, "timer"));
    let slow = start_id(&env, "srv/slow", "{}");
    env.wait_for(&slow, "running its shell task", |v| {
        v["running"]
            .as_array()
            .is_some_and(|r| r.iter().any(|t| t == "/do/0/sleep"))
    });

    let t0 = Instant::now();
    env.server.terminate();
    let exit = env.server.wait_exit(Duration::from_secs(20));
    let took = t0.elapsed();
    let log = env.server.log();
    let exit =
        exit.unwrap_or_else(|| panic!("the server did not exit within 20 s of SIGTERM\n{log}"));
    assert!(
        exit.success(),
        "SIGTERM should end the server with success, got {exit:?}\n{log}"
    );
    // The drain time is 2 s: the shell task (30 s) is not waited for.
    assert!(
        took < Duration::from_secs(2 + 6),
        "the server took {took:?} to drain (drain_seconds: 2)\n{log}"
    );
    assert!(log.contains("draining"), "{log}");

    // A graceful restart on the same data folder: everything is still there.
    env.server.restart();
    let v = env.instance(&done);
    assert_eq!(status(&v), "completed", "{v}");
    assert!(json_eq(&v["output"], &out), "{v}");
    let history_after = json_out(&env.cli(&["history", &done, "-o", "json"]));
    assert_eq!(
        history_before, history_after,
        "the history changed across the restart"
    );
    let v = env.instance(&sleepy);
    assert!(
        status(&v) == "running" && waiting_on(&v, "timer"),
        "the waiting instance should still wait: {v}"
    );
    // The interrupted shell task runs again.
    let v = env.wait_for(&slow, "running its shell task again", |v| {
        v["running"]
            .as_array()
            .is_some_and(|r| r.iter().any(|t| t == "/do/0/sleep"))
    });
    assert_eq!(status(&v), "running", "{v}");
    // Definitions survived too: no apply needed.
    let o = env.cli(&[
        "start",
        "srv/greet",
        "--input",
        r#"{"name":"bob"}"#,
        "--wait",
    ]);
    assert!(
        json_eq(&json_out(&o), &json!({"greeting": "hello bob"})),
        "{}",
        o.describe()
    );
    // Clean up the long-running ones (this also ends the sleeping shell).
    ok(&env.cli(&["cancel", &slow]));
    ok(&env.cli(&["cancel", &sleepy]));

    // An idle server stops at once on SIGTERM.
    let t0 = Instant::now();
    env.server.terminate();
    let exit = env.server.wait_exit(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        env.server.log_tail(2000)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "an idle server took {:?} to stop",
        t0.elapsed()
    );
}

#[test]
fn config_with_an_unknown_key_is_refused() {
    let dir = TempDir::new("config");
    let cfg = dir.write("kflow.yaml", "listen: 127.0.0.1:0\ndrain_secnds: 3\n");
    let data = dir.path().join("data");
    let o = kflow(["server", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .timeout(Duration::from_secs(30))
        .run();
    assert!(
        !o.timed_out,
        "the server started despite the bad config\n{}",
        o.describe()
    );
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(
        o.stderr.contains("drain_secnds"),
        "the message should name the unknown key\n{}",
        o.describe()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
    // A bad durability value is refused the same way.
    let o = kflow(["server", "--durability", "fast", "--data-dir"])
        .arg(&data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .timeout(Duration::from_secs(30))
        .run();
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(o.stderr.contains("fast"), "{}", o.describe());
}

#[test]
fn client_verbs_without_a_server_exit_2_naming_the_url() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["get", "some-id"],
        vec!["ls"],
        vec!["start", "srv/greet", "--wait"],
    ] {
        let o = kflow(&args)
            .arg("--server")
            .arg(&url)
            .timeout(Duration::from_secs(60))
            .run();
        assert_eq!(o.code, Some(2), "{args:?}\n{}", o.describe());
        assert!(
            o.stderr.contains(&url),
            "the message should name {url}\n{}",
            o.describe()
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_instance_id() {
    let env = setup("jsonlogs", &["--log-format", "json"]);
    env.apply(&[(
        "boom.yaml",
        wf(
            "boom",
            "do:\n  - fail:\n      raise:\n        error: {type: 'https://x/e', status: 400, title: nope}\n",
        ),
    )]);
    let id = start_id(&env, "srv/boom", "{}");
    env.wait_for(&id, "faulted", |v| status(v) == "faulted");
    // The line about it may come a moment after the status is readable.
    let line = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        env.server.log().lines().find_map(|l| {
            let (_, json) = l.split_once("] ")?;
            let v: Value = serde_json::from_str(json).ok()?;
            (v["instance"] == id.as_str()).then_some(v)
        })
    })
    .unwrap_or_else(|| panic!("no log line names {id}\n{}", env.server.log_tail(3000)));
    assert_eq!(line["message"], "instance faulted", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["workflow"], "boom", "{line}");
    // Every line the server wrote is a JSON object with a time, a level and a message.
    for l in env.server.log().lines() {
        let json = l.split_once("] ").map_or(l, |(_, j)| j);
        let v: Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{l}"
        );
    }
}

#[test]
fn watch_attaches_to_a_running_instance_and_prints_its_outcome() {
    let env = setup("watchid", &[]);
    env.apply(&[(
        "later.yaml",
        wf(
            "later",
            "do:\n  - pause:\n      wait: PT0.5S\n  - last:\n      set:\n        done: ${ .n }\n",
        ),
    )]);
    let id = start_id(&env, "srv/later", r#"{"n": 7}"#);
    // Attached while it waits: the lines of what happens from here, then the output.
    let o = env.cli(&["watch", &id]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        json_eq(&json_out(&o), &json!({"done": 7})),
        "{}",
        o.describe()
    );
    assert!(
        o.stderr.lines().any(|l| l.ends_with("workflow.completed")),
        "{}",
        o.describe()
    );
    // Watching a finished instance answers at once, the same way; an unknown one is an error.
    let o = env.cli(&["watch", &id]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        json_eq(&json_out(&o), &json!({"done": 7})),
        "{}",
        o.describe()
    );
    let o = env.cli(&["watch", "no-such-instance"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("does not exist"), "{}", o.describe());
}

#[test]
fn a_workflow_named_without_namespace_is_in_the_default_one() {
    let env = setup("defaultns", &[]);
    let doc = "document:\n  dsl: '1.0.3'\n  namespace: default\n  name: hi\n  version: '0.1.0'\n\
               do:\n  - say:\n      set:\n        hello: ${ .name }\n";
    env.apply(&[("hi.yaml", doc.to_string())]);
    let o = env.cli(&["start", "hi", "--input", r#"{"name":"ada"}"#, "--wait"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        json_eq(&json_out(&o), &json!({"hello": "ada"})),
        "{}",
        o.describe()
    );
    // $KFLOW_NAMESPACE chooses another default.
    let o = kflow(["start", "hi", "--wait"])
        .env("KFLOW_SERVER", &env.server.base())
        .env("KFLOW_NAMESPACE", "srv")
        .timeout(Duration::from_secs(60))
        .run();
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("srv/hi"), "{}", o.describe());
}

#[test]
fn defs_list_print_and_deprecate_versions() {
    let env = setup("defs", &[]);
    let doc = |v: &str, out: &str| {
        format!(
            "document:\n  dsl: '1.0.3'\n  namespace: srv\n  name: ver\n  version: '{v}'\n\
             do:\n  - s:\n      set:\n        out: {out}\n"
        )
    };
    env.apply(&[
        ("a.yaml", doc("0.1.0", "one")),
        ("b.yaml", doc("0.2.0", "two")),
    ]);
    let o = env.cli(&["defs", "ls"]);
    ok(&o);
    let rows: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.starts_with("srv/ver"))
        .collect();
    assert_eq!(rows.len(), 2, "{}", o.stdout);
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().nth(2) == Some("no")),
        "{}",
        o.stdout
    );
    // The latest document, or one version's, as registered.
    let o = env.cli(&["defs", "get", "srv/ver"]);
    ok(&o);
    assert!(
        o.stdout.contains("version: '0.2.0'") && o.stdout.contains("out: two"),
        "{}",
        o.stdout
    );
    let o = env.cli(&["defs", "get", "srv/ver@0.1.0"]);
    ok(&o);
    assert!(o.stdout.contains("out: one"), "{}", o.stdout);
    // Deprecated: marked, and a start of it is refused; --undo lifts it.
    let o = env.cli(&["defs", "deprecate", "srv/ver@0.2.0"]);
    ok(&o);
    assert_eq!(o.stdout.trim(), "srv/ver@0.2.0 deprecated");
    let o = env.cli(&["defs", "ls", "-o", "json"]);
    let v = json_out(&o);
    let deprecated: Vec<&str> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["deprecated"] == true)
        .filter_map(|d| d["version"].as_str())
        .collect();
    assert_eq!(deprecated, ["0.2.0"], "{v}");
    let o = env.cli(&["start", "srv/ver@0.2.0", "--wait"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    ok(&env.cli(&["defs", "deprecate", "srv/ver@0.2.0", "--undo"]));
    let o = env.cli(&["start", "srv/ver@0.2.0", "--wait"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    // A version is required, and an unknown one is an error naming it.
    let o = env.cli(&["defs", "deprecate", "srv/ver"]);
    assert_eq!(o.code, Some(2), "{}", o.describe());
    let o = env.cli(&["defs", "get", "srv/ver@9.9.9"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("9.9.9"), "{}", o.describe());
}

#[test]
fn read_verbs_answer_in_yaml_too() {
    let env = setup("yaml", &[]);
    env.apply(&[(
        "y.yaml",
        wf("y", "do:\n  - s:\n      set:\n        out: [1, 2]\n"),
    )]);
    let o = env.cli(&["start", "srv/y", "--wait"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    let o = env.cli(&["ls", "-o", "yaml"]);
    ok(&o);
    let v: Value = serde_saphyr::from_str(&o.stdout).expect("YAML");
    assert_eq!(v["items"][0]["status"], "completed", "{}", o.stdout);
    let id = v["items"][0]["id"].as_str().unwrap_or_default().to_string();
    let o = env.cli(&["get", &id, "-o", "yaml"]);
    ok(&o);
    let v: Value = serde_saphyr::from_str(&o.stdout).expect("YAML");
    assert!(
        json_eq(&v["output"], &json!({"out": [1, 2]})),
        "{}",
        o.stdout
    );
}

#[test]
fn short_ids_suggestions_and_diffs() {
    let env = setup("short", &[]);
    let v1 = wf(
        "greet",
        "do:\n  - a:\n      set: {x: 1}\n  - b:\n      set: {y: 2}\n",
    );
    let v2 = v1
        .replace("version: '0.1.0'", "version: '0.2.0'")
        .replace("y: 2", "y: 3")
        + "  - c:\n      set: {z: 1}\n";
    env.apply(&[("v1.yaml", v1), ("v2.yaml", v2)]);
    let ids: Vec<String> = (0..3)
        .map(|_| start_id(&env, "srv/greet@0.1.0", "{}"))
        .collect();
    // The random tail of an id names its instance; so does a unique head.
    for id in &ids {
        let tail = &id[id.len() - 8..];
        let v = json_out(&env.cli(&["get", tail, "-o", "json"]));
        assert_eq!(v["id"].as_str(), Some(id.as_str()), "{v}");
        let o = env.cli(&["history", tail]);
        ok(&o);
    }
    // A prefix shared by instances started in the same millisecond is ambiguous, and said so.
    let shared = &ids[0][..4];
    let o = env.cli(&["get", shared]);
    if ids.iter().all(|i| i.starts_with(shared)) {
        assert_ne!(o.code, Some(0));
        assert!(o.stderr.contains("give more of the id"), "{}", o.describe());
    }
    // A misspelt workflow name gets a suggestion; a missing version the list of versions.
    let o = env.cli(&["start", "srv/greeet"]);
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr.contains("did you mean srv/greet?"),
        "{}",
        o.describe()
    );
    let o = env.cli(&["start", "srv/greet@9.0.0"]);
    assert!(
        o.stderr.contains("its versions: 0.1.0, 0.2.0"),
        "{}",
        o.describe()
    );
    // The diff of the two versions: tasks, then the text.
    let o = env.cli(&["diff", "srv/greet@0.1.0", "0.2.0"]);
    ok(&o);
    assert!(
        o.stdout
            .starts_with("--- srv/greet@0.1.0\n+++ srv/greet@0.2.0\n"),
        "{}",
        o.describe()
    );
    assert!(o.stdout.contains("task + c (added)"), "{}", o.describe());
    assert!(o.stdout.contains("task ~ b (changed)"), "{}", o.describe());
    assert!(
        o.stdout
            .contains("-      set: {y: 2}\n+      set: {y: 3}\n"),
        "{}",
        o.describe()
    );
    // Without versions: the latest against the one before it.
    let o = env.cli(&["diff", "srv/greet", "-o", "json"]);
    let v = json_out(&o);
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some("0.1.0"), Some("0.2.0"))
    );
}

#[test]
fn retry_from_the_failed_task_reuses_what_came_before() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let env = setup("retry", &[]);
    // `first` counts its calls; `second` fails until it is told to work.
    let firsts = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (f, h) = (firsts.clone(), healthy.clone());
    let svc = support::TestServer::start_with(move |req: &support::Recorded| match req.path() {
        "/first" => {
            let n = f.fetch_add(1, Ordering::SeqCst) + 1;
            Some((200, json!({"token": format!("t{n}")})))
        }
        "/second" if h.load(Ordering::SeqCst) => Some((200, json!({"ok": true}))),
        "/second" => Some((503, json!({"error": "down"}))),
        _ => None,
    });
    let base = svc.base();
    env.apply(&[(
        "flow.yaml",
        wf(
            "twostep",
            &format!(
                "do:
  - first:
      call: http
      with: {{method: get, endpoint: '{base}/first'}}
      export: {{as: '${{ {{token: .token}} }}'}}
  - second:
      call: http
      with: {{method: get, endpoint: '{base}/second'}}
  - done:
      set: {{token: '${{ $context.token }}', second: '${{ .ok }}'}}
"
            ),
        ),
    )]);
    let o = env.cli(&["start", "srv/twostep", "--wait"]);
    assert_ne!(o.code, Some(0), "the first run faults\n{}", o.describe());
    let id = started_id(&o);
    assert_eq!(status(&env.instance(&id)), "faulted");
    assert_eq!(firsts.load(Ordering::SeqCst), 1);
    // Not a faulted instance, or a task that never ran: refused with the reason.
    let o = env.cli(&["retry", &id, "--task", "/do/2/done"]);
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("never started"), "{}", o.describe());

    healthy.store(true, Ordering::SeqCst);
    let o = env.cli(&["retry", &id]);
    ok(&o);
    let retry = o.stdout.trim().to_string();
    assert_ne!(retry, id);
    let v = env.wait_for(&retry, "completed", |v| status(v) == "completed");
    // The first call was not made again: its journaled result was reused.
    assert_eq!(firsts.load(Ordering::SeqCst), 1, "first ran again");
    assert_eq!(v["output"]["token"], "t1", "{v}");
    assert_eq!(v["output"]["second"], true, "{v}");
    // Its history says where it came from, and what it reused.
    let h = json_out(&env.cli(&["history", &retry, "-o", "json"]));
    let note = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["type"] == "instance.retried")
        .unwrap_or_else(|| panic!("no instance.retried notice: {h}"))
        .clone();
    assert_eq!(note["data"]["from"], id.as_str());
    assert_eq!(note["data"]["reference"], "/do/1/second");
    assert_eq!(note["data"]["reused"], 1);
    // A completed instance is not retried.
    let o = env.cli(&["retry", &retry]);
    assert!(
        o.stderr.contains("only a faulted instance"),
        "{}",
        o.describe()
    );
}

#[test]
fn traces_go_to_an_otlp_collector_and_continue_the_callers() {
    // One stand-in plays the collector (`/v1/traces`) and the service the workflow calls.
    let svc = support::TestServer::start_with(|req: &support::Recorded| match req.path() {
        "/v1/traces" => Some((200, json!({}))),
        "/ping" => Some((200, json!({"pong": true}))),
        _ => None,
    });
    let files = TempDir::new("otlp-files");
    let config = files.write(
        "kflow.yaml",
        format!(
            "tracing:\n  otlp_endpoint: '{}'\n  service_name: kflow-test\n",
            svc.base()
        ),
    );
    let data = TempDir::new("otlp-data");
    let server = ServerProcess::start(data.path(), &["--config", config.to_str().unwrap()]);
    let env = Env {
        server,
        files,
        _data: data,
    };
    env.apply(&[(
        "traced.yaml",
        wf(
            "traced",
            &format!(
                "do:
  - prep:
      set: {{a: 1}}
  - outer:
      do:
        - fetch:
            call: http
            with: {{method: get, endpoint: '{}/ping'}}
  - done:
      set: {{b: 2}}
",
                svc.base()
            ),
        ),
    )]);
    let (trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let tp = format!("00-{trace}-{caller_span}-01");
    let r = support::http_request_with(
        "POST",
        &env.server.base(),
        "/api/v1/instances",
        &[("traceparent", &tp)],
        Some((
            "application/json",
            br#"{"namespace": "srv", "name": "traced", "wait": true}"#,
        )),
        Duration::from_secs(30),
    )
    .expect("start");
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json().unwrap()["id"].as_str().unwrap().to_string();
    let batch = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        svc.requests()
            .into_iter()
            .find(|q| q.path() == "/v1/traces")
    })
    .unwrap_or_else(|| {
        panic!(
            "no spans reached the collector\n{}",
            env.server.log_tail(2000)
        )
    });
    let body: Value = serde_json::from_slice(&batch.body).expect("OTLP JSON");
    let rs = &body["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0]["value"]["stringValue"],
        "kflow-test"
    );
    let spans = rs["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans")
        .clone();
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("no span {n}: {body}"))
            .clone()
    };
    let inst = by_name("srv/traced@0.1.0");
    // The caller's trace continues: same trace id, the caller's span as the parent.
    assert!(spans.iter().all(|s| s["traceId"] == trace), "{body}");
    assert_eq!(inst["parentSpanId"], caller_span);
    let inst_span = inst["spanId"].as_str().unwrap().to_string();
    // A span per task, nested as the tasks are.
    let (prep, outer, fetch, done) = (
        by_name("prep"),
        by_name("outer"),
        by_name("fetch"),
        by_name("done"),
    );
    for s in [&prep, &outer, &done] {
        assert_eq!(s["parentSpanId"], inst_span.as_str(), "{s}");
    }
    assert_eq!(
        fetch["parentSpanId"], outer["spanId"],
        "fetch runs inside outer"
    );
    let t = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u128>().unwrap();
    assert!(t(&fetch, "startTimeUnixNano") >= t(&outer, "startTimeUnixNano"));
    assert!(t(&fetch, "endTimeUnixNano") <= t(&outer, "endTimeUnixNano"));
    assert_eq!(inst["attributes"][0]["value"]["stringValue"], id.as_str());
    // The call carried the instance's trace to the service.
    let ping = svc
        .requests()
        .into_iter()
        .find(|q| q.path() == "/ping")
        .expect("the call");
    assert_eq!(
        ping.header("traceparent"),
        Some(format!("00-{trace}-{inst_span}-01").as_str())
    );
    // Without a traceparent, an instance is a trace of its own: its id.
    let o = env.cli(&["start", "srv/traced", "--wait"]);
    ok(&o);
    let own = started_id(&o);
    let own_trace: String = own.chars().filter(|c| *c != '-').collect();
    poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        svc.requests().into_iter().find(|q| {
            q.path() == "/v1/traces" && String::from_utf8_lossy(&q.body).contains(&own_trace)
        })
    })
    .expect("the second instance's trace, under its own id");
}

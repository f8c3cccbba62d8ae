//! End-to-end tests of the `kflow` binary: `validate` on the spec's examples and invalid
//! fixtures, `run` with its exit codes and options (input files, secrets, events, sub-workflow
//! folders, traces), shell and HTTP tasks, and hostile documents that must be refused quickly
//! and cleanly.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Outcome, TempDir, TestServer, diagnostics_for, json_eq, json_subset, kflow, spec_dir,
};

/// A workflow document: the `document` header, then `body` (YAML at the root level).
fn wf(name: &str, body: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: test\n  name: {name}\n  version: '0.1.0'\n{body}"
    )
}

/// Runs `kflow run FILE` with extra arguments on a definition written to a temp folder.
fn run_wf(dir: &TempDir, definition: &str, extra: &[&str]) -> Outcome {
    let file = dir.write("workflow.yaml", definition);
    let mut cmd = kflow(["run"]).arg(&file);
    for a in extra {
        cmd = cmd.arg(a);
    }
    cmd.run()
}

/// Asserts exit 0 and returns the single JSON document on stdout.
fn completed(o: &Outcome) -> Value {
    assert_eq!(
        o.code,
        Some(0),
        "expected the workflow to complete\n{}",
        o.describe()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
    o.json().unwrap_or_else(|e| panic!("{e}\n{}", o.describe()))
}

/// Asserts exit 1 and returns the error object on stdout.
fn faulted(o: &Outcome) -> Value {
    assert_eq!(
        o.code,
        Some(1),
        "expected the workflow to fault\n{}",
        o.describe()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
    let err = o.json().unwrap_or_else(|e| panic!("{e}\n{}", o.describe()));
    assert!(
        err["type"].is_string() && err["status"].is_number(),
        "not an error object: {err}"
    );
    err
}

/// Asserts exit 2, nothing on stdout, a message on stderr, no panic.
fn refused(o: &Outcome) {
    assert!(
        !o.timed_out,
        "kflow did not finish in time\n{}",
        o.describe()
    );
    assert_eq!(o.code, Some(2), "expected exit 2\n{}", o.describe());
    assert!(
        o.stdout.trim().is_empty(),
        "exit 2 must print no JSON on stdout\n{}",
        o.describe()
    );
    assert!(
        !o.stderr.trim().is_empty(),
        "exit 2 needs a message on stderr\n{}",
        o.describe()
    );
    assert!(
        !o.stderr.contains("panicked"),
        "kflow panicked\n{}",
        o.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// validate

#[test]
fn validate_accepts_every_spec_example() {
    let Some(spec) = spec_dir() else {
        support::missing("../shared/spec");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(spec.join("examples"))
        .expect("examples folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 68, "the spec has 68 example workflows");
    let o = kflow(["validate"]).args(&files).run();
    let bad: Vec<String> = files
        .iter()
        .filter(|f| !diagnostics_for(&o.stderr, f).is_empty())
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        bad.is_empty(),
        "examples reported invalid: {bad:?}\n{}",
        o.describe()
    );
    assert_eq!(o.code, Some(0), "{}", o.describe());
}

#[test]
fn validate_rejects_the_invalid_fixtures_with_positions() {
    let Some(spec) = spec_dir() else {
        support::missing("../shared/spec");
        return;
    };
    for name in [
        "extra-property-in-call.yaml",
        "listen-any-until-any-until.yaml",
        "two-tasks-in-one-item.yaml",
    ] {
        let file = spec.join("invalid").join(name);
        let o = kflow(["validate"]).arg(&file).run();
        refused(&o);
        let diags = diagnostics_for(&o.stderr, &file);
        assert!(
            !diags.is_empty(),
            "{name}: no `FILE:LINE:COL: message` line\n{}",
            o.describe()
        );
        let lines = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count() as u32;
        for (l, c, _) in &diags {
            assert!(
                *l >= 1 && *l <= lines + 1 && *c >= 1,
                "{name}: position {l}:{c} is outside the file\n{}",
                o.describe()
            );
        }
    }
}

#[test]
fn validate_reports_every_problem() {
    let dir = TempDir::new("several");
    let several = dir.write(
        "several.yaml",
        wf(
            "several",
            "do:\n  - first:\n      set:\n        a: 1\n      colour: blue\n  - second:\n      wait:\n        seconds: 1\n      flavour: lemon\n  - third:\n      raise:\n        error:\n          status: 400\n      shape: round\n",
        ),
    );
    let good = dir.write(
        "good.yaml",
        wf("good", "do:\n  - only:\n      set:\n        a: 1\n"),
    );
    let o = kflow(["validate"]).arg(&good).arg(&several).run();
    refused(&o);
    let diags = diagnostics_for(&o.stderr, &several);
    let mut lines: Vec<u32> = diags.iter().map(|d| d.0).collect();
    lines.dedup();
    assert!(
        diags.len() >= 2 && lines.len() >= 2,
        "several problems should give several FILE:LINE:COL lines\n{}",
        o.describe()
    );
    assert!(
        diagnostics_for(&o.stderr, &good).is_empty(),
        "the valid file was reported\n{}",
        o.describe()
    );
    assert_eq!(kflow(["validate"]).arg(&good).run().code, Some(0));
}

// ---------------------------------------------------------------------------------------------
// run: exit codes and stdout

#[test]
fn run_exit_codes_and_stdout() {
    let dir = TempDir::new("exit");
    // 0: completed, stdout = the output.
    let o = run_wf(
        &dir,
        &wf(
            "ok",
            "do:\n  - greet:\n      set:\n        greeting: ${ \"hello \" + .name }\n",
        ),
        &["--input", r#"{"name":"ada"}"#],
    );
    assert!(
        json_eq(&completed(&o), &json!({"greeting": "hello ada"})),
        "{}",
        o.describe()
    );

    // 1: faulted, stdout = the error object.
    let raise = "do:\n  - boom:\n      raise:\n        error:\n          type: https://example.com/errors/boom\n          status: 418\n          title: Boom\n";
    let err = faulted(&run_wf(&dir, &wf("raise", raise), &[]));
    assert!(
        json_subset(
            &json!({"type": "https://example.com/errors/boom", "status": 418, "title": "Boom", "instance": "/do/0/boom"}),
            &err
        ),
        "{err}"
    );

    // 1: an expression that fails at run time is an expression error (status 400).
    let err = faulted(&run_wf(
        &dir,
        &wf(
            "expr",
            "do:\n  - bad:\n      set:\n        x: ${ \"a\" - 1 }\n",
        ),
        &[],
    ));
    assert!(
        err["type"].as_str().unwrap_or("").ends_with("/expression") && err["status"] == 400,
        "{err}"
    );

    // 2: an invalid definition, a missing file, bad usage, bad input JSON.
    refused(&run_wf(
        &dir,
        &wf(
            "bad",
            "do:\n  - x:\n      set:\n        a: 1\n      nonsense: true\n",
        ),
        &[],
    ));
    refused(&kflow(["run"]).arg(dir.path().join("missing.yaml")).run());
    refused(&kflow(["run"]).run());
    refused(&kflow(["frobnicate"]).run());
    refused(&run_wf(
        &dir,
        &wf("ok", "do:\n  - a:\n      set:\n        a: 1\n"),
        &["--input", "{not json"],
    ));
}

#[test]
fn run_reads_input_files_in_json_and_yaml() {
    let dir = TempDir::new("input");
    let def = wf(
        "input",
        "do:\n  - echo:\n      set:\n        greeting: ${ \"hello \" + .name }\n        flag: ${ .flag }\n",
    );
    let json_in = dir.write("in.json", r#"{"name": "ada", "flag": true}"#);
    let o = run_wf(
        &dir,
        &def,
        &["--input-file", json_in.to_str().unwrap_or_default()],
    );
    assert!(
        json_eq(
            &completed(&o),
            &json!({"greeting": "hello ada", "flag": true})
        ),
        "{}",
        o.describe()
    );
    // YAML 1.2: `yes` is a string, not a boolean.
    let yaml_in = dir.write("in.yaml", "name: grace\nflag: yes\n");
    let o = run_wf(
        &dir,
        &def,
        &["--input-file", yaml_in.to_str().unwrap_or_default()],
    );
    assert!(
        json_eq(
            &completed(&o),
            &json!({"greeting": "hello grace", "flag": "yes"})
        ),
        "{}",
        o.describe()
    );
}

#[test]
fn run_feeds_secrets_from_file_and_environment() {
    let dir = TempDir::new("secrets");
    let def = dir.write(
        "workflow.yaml",
        wf(
            "secrets",
            "use:\n  secrets:\n    - api\ndo:\n  - useSecret:\n      set:\n        t: ${ $secrets.api.token }\n",
        ),
    );
    let file = dir.write("secrets.yaml", "api:\n  token: from-file\n");
    let env_file = dir.write("env-secrets.json", r#"{"api": {"token": "from-env-file"}}"#);
    let env_json = r#"{"api": {"token": "from-env"}}"#;
    let token = |o: Outcome| completed(&o)["t"].clone();

    assert_eq!(
        token(
            kflow(["run"])
                .arg(&def)
                .arg("--secrets-file")
                .arg(&file)
                .run()
        ),
        json!("from-file")
    );
    assert_eq!(
        token(
            kflow(["run"])
                .arg(&def)
                .env("KFLOW_SECRETS_FILE", env_file.to_str().unwrap_or_default())
                .run()
        ),
        json!("from-env-file")
    );
    assert_eq!(
        token(
            kflow(["run"])
                .arg(&def)
                .env("KFLOW_SECRETS", env_json)
                .run()
        ),
        json!("from-env")
    );
    // --secrets-file wins over the environment; KFLOW_SECRETS_FILE over KFLOW_SECRETS.
    let both = kflow(["run"])
        .arg(&def)
        .arg("--secrets-file")
        .arg(&file)
        .env("KFLOW_SECRETS", env_json)
        .env("KFLOW_SECRETS_FILE", env_file.to_str().unwrap_or_default());
    assert_eq!(token(both.run()), json!("from-file"));
    let envs = kflow(["run"])
        .arg(&def)
        .env("KFLOW_SECRETS", env_json)
        .env("KFLOW_SECRETS_FILE", env_file.to_str().unwrap_or_default());
    assert_eq!(token(envs.run()), json!("from-env-file"));
}

const LISTEN: &str = "do:\n  - waitForOrder:\n      listen:\n        to:\n          one:\n            with:\n              type: com.example.order.placed\n";

#[test]
fn run_feeds_events_to_listen() {
    let dir = TempDir::new("events");
    let events = dir.write(
        "events.jsonl",
        concat!(
            r#"{"specversion":"1.0","id":"1","source":"https://example.com/shop","type":"com.example.other","data":{"ignored":true}}"#,
            "\n",
            r#"{"specversion":"1.0","id":"2","source":"https://example.com/shop","type":"com.example.order.placed","datacontenttype":"application/json","data":{"orderId":42}}"#,
            "\n"
        ),
    );
    let o = run_wf(
        &dir,
        &wf("listen", LISTEN),
        &["--events", events.to_str().unwrap_or_default()],
    );
    // A listen task outputs the array of consumed events, read as `data` by default.
    assert!(
        json_eq(&completed(&o), &json!([{"orderId": 42}])),
        "{}",
        o.describe()
    );
}

#[test]
fn run_listen_without_events_faults_instead_of_hanging() {
    let dir = TempDir::new("noevents");
    let file = dir.write("workflow.yaml", wf("listen", LISTEN));
    let o = kflow(["run"])
        .arg(&file)
        .timeout(Duration::from_secs(15))
        .run();
    assert!(
        !o.timed_out,
        "a listen with no events must not hang\n{}",
        o.describe()
    );
    let err = faulted(&o);
    assert!(
        err.to_string().to_lowercase().contains("event"),
        "the error should say that events are missing: {err}"
    );
}

#[test]
fn run_starts_sub_workflows_from_the_workflows_folder() {
    let dir = TempDir::new("subflow");
    let lib = TempDir::new("subflow-lib");
    lib.write(
        "child.yaml",
        wf(
            "child",
            "do:\n  - double:\n      set:\n        doubled: ${ .n * 2 }\n",
        ),
    );
    let parent = wf(
        "parent",
        "do:\n  - callChild:\n      run:\n        workflow:\n          namespace: test\n          name: child\n          version: '0.1.0'\n          input:\n            n: ${ .n }\n",
    );
    let o = run_wf(
        &dir,
        &parent,
        &[
            "--input",
            r#"{"n": 21}"#,
            "--workflows",
            lib.path().to_str().unwrap_or_default(),
        ],
    );
    assert!(
        json_eq(&completed(&o), &json!({"doubled": 42})),
        "{}",
        o.describe()
    );
    // Without the folder the child is unknown: a fault, not a hang or a crash.
    faulted(&run_wf(&dir, &parent, &["--input", r#"{"n": 21}"#]));
}

// ---------------------------------------------------------------------------------------------
// --trace

fn find<'a>(trace: &'a [Value], kind: &str, task: Option<&str>) -> Option<&'a Value> {
    trace
        .iter()
        .find(|l| l["type"] == kind && task.is_none_or(|t| l["task"] == t))
}

/// Every line has `type` and an ISO 8601 `time`; task lines have `task` and `reference`.
fn check_fields(trace: &[Value]) {
    for l in trace {
        let time = l["time"].as_str().unwrap_or("");
        let b = time.as_bytes();
        assert!(
            b.len() >= 20
                && b[4] == b'-'
                && b[10] == b'T'
                && (time.ends_with('Z') || time.contains('+')),
            "bad time in {l}"
        );
        if l["type"].as_str().is_some_and(|t| t.starts_with("task.")) {
            assert!(
                l["task"].as_str().is_some_and(|t| !t.is_empty()),
                "no task in {l}"
            );
            assert!(
                l["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("/do/")),
                "no reference in {l}"
            );
        }
    }
}

#[test]
fn trace_reports_started_completed_skipped() {
    let dir = TempDir::new("trace");
    let def = wf(
        "trace",
        "do:\n  - first:\n      set:\n        a: 1\n  - skipped:\n      if: ${ false }\n      set:\n        b: 2\n  - last:\n      set:\n        c: 3\n",
    );
    let o = run_wf(&dir, &def, &["--trace"]);
    assert!(
        json_eq(&completed(&o), &json!({"c": 3})),
        "{}",
        o.describe()
    );
    let t = o.trace();
    check_fields(&t);
    let msg = o.describe();
    assert_eq!(
        t.first().map(|l| l["type"].clone()),
        Some(json!("workflow.started")),
        "{msg}"
    );
    assert_eq!(
        t.last().map(|l| l["type"].clone()),
        Some(json!("workflow.completed")),
        "{msg}"
    );
    for (kind, task, reference) in [
        ("task.started", "first", "/do/0/first"),
        ("task.completed", "first", "/do/0/first"),
        ("task.skipped", "skipped", "/do/1/skipped"),
        ("task.started", "last", "/do/2/last"),
        ("task.completed", "last", "/do/2/last"),
    ] {
        let line = find(&t, kind, Some(task))
            .unwrap_or_else(|| panic!("no {kind} line for {task}\n{msg}"));
        assert_eq!(line["reference"], reference, "{msg}");
    }
    assert!(
        find(&t, "task.completed", Some("skipped")).is_none(),
        "a skipped task does not complete\n{msg}"
    );
}

#[test]
fn trace_reports_faulted_and_retried() {
    let dir = TempDir::new("trace-fault");
    let def = wf(
        "retry",
        "do:\n  - tryIt:\n      try:\n        - flaky:\n            raise:\n              error:\n                type: https://example.com/errors/flaky\n                status: 503\n      catch:\n        errors:\n          with:\n            status: 503\n        retry:\n          delay:\n            milliseconds: 10\n          limit:\n            attempt:\n              count: 3\n",
    );
    let o = run_wf(&dir, &def, &["--trace"]);
    assert!(
        !o.timed_out && !o.stderr.contains("panicked"),
        "{}",
        o.describe()
    );
    let t = o.trace();
    check_fields(&t);
    let msg = o.describe();
    assert!(
        find(&t, "task.retried", None).is_some(),
        "no task.retried line\n{msg}"
    );
    assert!(
        find(&t, "task.faulted", Some("flaky"))
            .is_some_and(|l| l["reference"] == "/do/0/tryIt/try/0/flaky"),
        "no task.faulted for flaky\n{msg}"
    );

    let o = run_wf(
        &dir,
        &wf(
            "boom",
            "do:\n  - boom:\n      raise:\n        error:\n          type: https://example.com/errors/boom\n          status: 400\n",
        ),
        &["--trace"],
    );
    faulted(&o);
    let t = o.trace();
    check_fields(&t);
    let msg = o.describe();
    assert!(
        find(&t, "task.faulted", Some("boom")).is_some_and(|l| l["reference"] == "/do/0/boom"),
        "no task.faulted for boom\n{msg}"
    );
    assert_eq!(
        t.last().map(|l| l["type"].clone()),
        Some(json!("workflow.faulted")),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// shell and http tasks

#[test]
fn run_shell_with_arguments_and_stdin() {
    let dir = TempDir::new("shell");
    let def = wf(
        "shell",
        "do:\n  - setInput:\n      set:\n        message: Hello World\n  - runShell:\n      input:\n        from: ${ .message }\n      run:\n        shell:\n          stdin: ${ . }\n          command: |\n            input=$(cat)\n            echo \"STDIN was: $input\"\n            echo \"ARGS are $1 $2\"\n          arguments:\n          - Foo\n          - Bar\n",
    );
    let out = completed(&run_wf(&dir, &def, &[]));
    assert_eq!(
        out.as_str().map(str::trim_end),
        Some("STDIN was: Hello World\nARGS are Foo Bar"),
        "output: {out}"
    );

    let all = wf(
        "shell-all",
        "do:\n  - both:\n      run:\n        shell:\n          command: echo out; echo err >&2\n        return: all\n",
    );
    let out = completed(&run_wf(&dir, &all, &[]));
    assert_eq!(out["code"], 0, "output: {out}");
    assert_eq!(
        out["stdout"].as_str().map(str::trim_end),
        Some("out"),
        "output: {out}"
    );
    assert_eq!(
        out["stderr"].as_str().map(str::trim_end),
        Some("err"),
        "output: {out}"
    );
}

fn http_post(server: &TestServer) -> String {
    wf(
        "http",
        &format!(
            "do:\n  - post:\n      call: http\n      with:\n        method: post\n        endpoint:\n          uri: {}/httpbin/anything/orders\n        headers:\n          X-Request-Source: kflow-test\n        query:\n          page: '2'\n        body:\n          item: ${{ .item }}\n          qty: 3\n",
            server.base()
        ),
    )
}

#[test]
fn run_http_call_against_the_local_server() {
    let server = TestServer::start();
    let dir = TempDir::new("http");
    let out = completed(&run_wf(
        &dir,
        &http_post(&server),
        &["--input", r#"{"item": "book"}"#],
    ));
    assert_eq!(out["method"], "POST", "output: {out}");
    assert!(
        json_eq(&out["json"], &json!({"item": "book", "qty": 3})),
        "output: {out}"
    );
    assert_eq!(out["args"]["page"], "2", "output: {out}");
    assert_eq!(
        out["headers"]["x-request-source"], "kflow-test",
        "output: {out}"
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "one request expected: {reqs:?}");
    assert_eq!(reqs[0].path(), "/httpbin/anything/orders");
    assert!(
        reqs[0]
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{reqs:?}"
    );

    // An uncaught 404 is a communication error carrying the status.
    let get = wf(
        "http404",
        &format!(
            "do:\n  - getPet:\n      call: http\n      with:\n        method: get\n        endpoint: {}/petstore/v2/pet/999\n",
            server.base()
        ),
    );
    let err = faulted(&run_wf(&dir, &get, &[]));
    assert!(
        err["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("/communication")
            && err["status"] == 404,
        "{err}"
    );
}

#[test]
fn http_calls_carry_an_idempotency_key() {
    let server = TestServer::start();
    let dir = TempDir::new("idem");
    completed(&run_wf(
        &dir,
        &http_post(&server),
        &["--input", r#"{"item": "book"}"#],
    ));
    let reqs = server.requests();
    let key = reqs.first().and_then(|r| r.header("idempotency-key"));
    assert!(
        key.is_some_and(|k| !k.is_empty()),
        "no Idempotency-Key header on the call: {reqs:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// hostile documents: exit 2 within seconds, a message, no panic

fn assert_refused_quickly(name: &str, bytes: &[u8]) {
    let dir = TempDir::new("hostile");
    let file = dir.write(name, bytes);
    for verb in ["validate", "run"] {
        let o = kflow([verb])
            .arg(&file)
            .timeout(Duration::from_secs(10))
            .run();
        refused(&o);
        assert!(
            !diagnostics_for(&o.stderr, &file).is_empty(),
            "`kflow {verb}` should print `FILE:LINE:COL: message`\n{}",
            o.describe()
        );
    }
}

#[test]
fn hostile_alias_bomb() {
    // Billion laughs, in a place where a map is allowed (`document.metadata`): 10^9 strings
    // once expanded. Nothing else is wrong with the document.
    let mut doc = String::from(
        "document:\n  dsl: '1.0.3'\n  namespace: test\n  name: bomb\n  version: '0.1.0'\n  metadata:\n",
    );
    doc.push_str("    a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 10].join(",");
        doc.push_str(&format!("    {}: &{} [{refs}]\n", w[1], w[1]));
    }
    doc.push_str("do:\n  - t:\n      set:\n        x: *j\n");
    assert_refused_quickly("bomb.yaml", doc.as_bytes());
}

#[test]
fn hostile_50_mb_document() {
    let mut doc = wf("huge", "do:\n  - t:\n      set:\n        x: '");
    doc.push_str(&"a".repeat(50 << 20));
    doc.push_str("'\n");
    assert_refused_quickly("huge.yaml", doc.as_bytes());
}

#[test]
fn hostile_deep_nesting() {
    let mut yaml = wf("deep", "do:\n  - t:\n      set:\n        x: ");
    yaml.push_str(&"[".repeat(10_000));
    yaml.push_str(&"]".repeat(10_000));
    yaml.push('\n');
    assert_refused_quickly("deep.yaml", yaml.as_bytes());
    let json = format!(
        r#"{{"document":{{"dsl":"1.0.3","namespace":"test","name":"deep","version":"0.1.0"}},"do":[{{"t":{{"set":{{"x":{}1{}}}}}}}]}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    assert_refused_quickly("deep.json", json.as_bytes());
}

#[test]
fn hostile_invalid_utf8() {
    let mut doc = wf("utf8", "do:\n  - t:\n      set:\n        x: ").into_bytes();
    doc.extend_from_slice(b"caf\xc3\x28 \xff\xfe\n");
    assert_refused_quickly("utf8.yaml", &doc);
}

/// A deterministic xorshift byte stream.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn hostile_binary_garbage() {
    assert_refused_quickly("garbage.yaml", &noise(0x2545_f491_4f6c_dd1d, 65_536));
    // Valid UTF-8 made of YAML's punctuation: exercises the parser rather than the UTF-8 check.
    const ALPHABET: &[u8] = b"{}[]&*!|>'\"%@`:-?,# \n\tab01";
    for seed in 1..=8u64 {
        let text: Vec<u8> = noise(seed * 0x9e37_79b9, 4096)
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()])
            .collect();
        assert_refused_quickly(&format!("punctuation-{seed}.yaml"), &text);
    }
}

#[test]
fn hostile_non_map_roots_and_empty_files() {
    assert_refused_quickly("list.yaml", b"- a\n- b\n");
    assert_refused_quickly("scalar.yaml", b"just a string\n");
    assert_refused_quickly("number.json", b"42");
    assert_refused_quickly("empty.yaml", b"");
    assert_refused_quickly("blank.yaml", b"\n   \n# only a comment\n");
}

/// `kflow … | head`: the reader of stdout goes away before kflow writes; kflow ends quietly with
/// SIGPIPE's status instead of a panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = TempDir::new("closed-pipe");
    let doc = dir.write(
        "w.yaml",
        "document: {dsl: '1.0.0', namespace: t, name: w, version: '1.0.0'}\n\
         do:\n  - nap:\n      wait: PT0.3S\n  - out:\n      set:\n        big: ${ [range(0; 20000)] }\n",
    );
    let mut child = std::process::Command::new(support::kflow_bin())
        .arg("run")
        .arg(&doc)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kflow");
    // Close the reading end at once: kflow's output comes 0.3 s later.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

#[test]
fn version_names_the_commit() {
    let o = kflow(["--version"]).run();
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        o.stdout
            .starts_with(&format!("kflow {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{}",
        o.stdout
    );
}

#[test]
fn completion_scripts_know_the_verbs() {
    for (shell, marker) in [
        ("bash", "_kflow()"),
        ("zsh", "#compdef kflow"),
        ("fish", "complete -c kflow"),
    ] {
        let o = kflow(["completion", shell]).run();
        assert_eq!(o.code, Some(0), "{shell}: {}", o.describe());
        assert!(
            o.stdout.contains(marker),
            "{shell}: {}",
            &o.stdout[..o.stdout.len().min(300)]
        );
        for verb in ["start", "watch", "explain", "worker"] {
            assert!(o.stdout.contains(verb), "{shell} script without {verb}");
        }
    }
    let o = kflow(["completion", "tcsh"]).run();
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(o.stderr.contains("possible values"), "{}", o.describe());
}

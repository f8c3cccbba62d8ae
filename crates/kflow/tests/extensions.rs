//! End-to-end tests of kflow's DSL extensions with the real binary: `kflow run` on a `dag` of
//! shell tasks (concurrency, `$needs`, a handled failure) and on a parallel `for`, and
//! `--strict` refusing the extensions on `validate` and `run` (exit 2, line:col diagnostics).

mod support;

use serde_json::{Value, json};
use support::{Outcome, TempDir, diagnostics_for, kflow};

fn wf(name: &str, body: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: test\n  name: {name}\n  version: '0.1.0'\n{body}"
    )
}

fn completed(o: &Outcome) -> Value {
    assert!(
        !o.timed_out,
        "kflow did not finish in time\n{}",
        o.describe()
    );
    assert_eq!(
        o.code,
        Some(0),
        "expected the workflow to complete\n{}",
        o.describe()
    );
    o.json().unwrap_or_else(|e| panic!("{e}\n{}", o.describe()))
}

fn refused(o: &Outcome) {
    assert!(
        !o.timed_out,
        "kflow did not finish in time\n{}",
        o.describe()
    );
    assert_eq!(o.code, Some(2), "expected exit 2\n{}", o.describe());
    assert!(
        o.stdout.trim().is_empty(),
        "exit 2 must print nothing on stdout\n{}",
        o.describe()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
}

/// A shell command that announces itself with a file `me` in `dir` and waits (up to 10 s) for
/// the file `other`: it can only succeed if `other` runs at the same time.
fn rendezvous(dir: &std::path::Path, me: &str, other: &str) -> String {
    let d = dir.display();
    format!(
        "touch {d}/{me}; for i in $(seq 200); do if [ -f {d}/{other} ]; then echo {me}; exit 0; fi; sleep 0.05; done; exit 3"
    )
}

#[test]
fn run_a_dag_of_shell_tasks() {
    let dir = TempDir::new("dag");
    let def = wf(
        "dag",
        &format!(
            r#"do:
  - build:
      dag:
        tasks:
          - left:
              run:
                shell:
                  command: "{left}"
          - right:
              run:
                shell:
                  command: "{right}"
          - flaky:
              run:
                shell:
                  command: echo broken >&2; exit 4
          - merge:
              needs: [left, right]
              set:
                joined: ${{ $needs.left + "+" + $needs.right }}
          - report:
              needs: [merge, flaky]
              trigger: all_done
              set:
                joined: ${{ $needs.merge.joined }}
                flakyFailed: ${{ $needs.flaky.status }}
"#,
            left = rendezvous(dir.path(), "left", "right"),
            right = rendezvous(dir.path(), "right", "left"),
        ),
    );
    let file = dir.write("dag.yaml", &def);
    let o = kflow(["run", "--trace"]).arg(&file).run();
    let out = completed(&o);
    // left and right ran concurrently (each waited for the other); flaky's failure was handled
    // by report (all_done), so the dag completed without it.
    assert_eq!(
        out,
        json!({
            "left": "left",
            "right": "right",
            "merge": {"joined": "left+right"},
            "report": {"joined": "left+right", "flakyFailed": 500}
        }),
        "{}",
        o.describe()
    );
    let trace = o.trace();
    let faulted: Vec<&Value> = trace
        .iter()
        .filter(|t| t["type"] == "task.faulted")
        .collect();
    assert_eq!(faulted.len(), 1, "only flaky faulted: {trace:?}");
    assert_eq!(faulted[0]["task"], "flaky");
}

#[test]
fn run_a_dag_whose_failure_nobody_handles() {
    let dir = TempDir::new("dag-fault");
    let def = wf(
        "dagfault",
        "do:\n  - build:\n      dag:\n        tasks:\n          - bad:\n              run:\n                shell:\n                  command: exit 5\n          - after:\n              needs: [bad]\n              set: { never: true }\n          - other:\n              run:\n                shell:\n                  command: echo fine\n",
    );
    let file = dir.write("dag.yaml", &def);
    let o = kflow(["run", "--trace"]).arg(&file).run();
    assert_eq!(o.code, Some(1), "{}", o.describe());
    let err = o.json().unwrap_or_else(|e| panic!("{e}\n{}", o.describe()));
    assert_eq!(err["instance"], "/do/0/build/dag/tasks/0/bad", "{err}");
    let trace = o.trace();
    assert!(
        trace
            .iter()
            .any(|t| t["type"] == "task.skipped" && t["task"] == "after"),
        "{trace:?}"
    );
    assert!(
        trace
            .iter()
            .any(|t| t["type"] == "task.completed" && t["task"] == "other"),
        "{trace:?}"
    );
}

#[test]
fn run_a_parallel_for_of_shell_tasks() {
    let dir = TempDir::new("pfor");
    let def = wf(
        "pfor",
        "do:\n  - each:\n      for:\n        each: who\n        in: ${ .names }\n      parallel: 2\n      do:\n        - greet:\n            run:\n              shell:\n                command: ${ .cmd[$who] }\n",
    );
    let file = dir.write("pfor.yaml", &def);
    let input = json!({
        "names": ["left", "right"],
        "cmd": {"left": rendezvous(dir.path(), "left", "right"), "right": rendezvous(dir.path(), "right", "left")}
    });
    let o = kflow(["run"])
        .arg(&file)
        .arg("--input")
        .arg(input.to_string())
        .run();
    assert_eq!(completed(&o), json!(["left", "right"]), "{}", o.describe());
}

const EXTENDED: &str = "do:\n  - build:\n      dag:\n        tasks:\n          - a:\n              set: { a: 1 }\n          - b:\n              needs: [a]\n              set: { b: 2 }\n  - loop:\n      for:\n        in: ${ [1, 2] }\n      parallel: true\n      do:\n        - one:\n            set: { x: 1 }\n";

#[test]
fn strict_validate_refuses_the_extensions_at_their_keys() {
    let dir = TempDir::new("strict");
    let file = dir.write("ext.yaml", wf("ext", EXTENDED));
    let plain = dir.write(
        "plain.yaml",
        wf("plain", "do:\n  - one:\n      set: { x: 1 }\n"),
    );

    let o = kflow(["validate"]).arg(&file).arg(&plain).run();
    assert_eq!(
        o.code,
        Some(0),
        "without --strict the extensions are valid\n{}",
        o.describe()
    );

    let o = kflow(["validate", "--strict"]).arg(&file).arg(&plain).run();
    refused(&o);
    let diags = diagnostics_for(&o.stderr, &file);
    let dag = "'dag' is a kflow extension, not part of the Serverless Workflow DSL; remove --strict to allow it";
    let parallel = "'parallel' is a kflow extension, not part of the Serverless Workflow DSL; remove --strict to allow it";
    assert_eq!(
        diags,
        [(8, 7, dag.to_string()), (18, 7, parallel.to_string())],
        "{}",
        o.describe()
    );
    assert!(
        diagnostics_for(&o.stderr, &plain).is_empty(),
        "standard documents stay valid\n{}",
        o.describe()
    );

    let o = kflow(["validate", "--strict"]).arg(&plain).run();
    assert_eq!(o.code, Some(0), "{}", o.describe());
}

#[test]
fn strict_run_refuses_the_extensions_and_runs_without_it() {
    let dir = TempDir::new("strict-run");
    let file = dir.write("ext.yaml", wf("ext", EXTENDED));
    let o = kflow(["run", "--strict"]).arg(&file).run();
    refused(&o);
    assert!(
        o.stderr.contains(":8:7: 'dag' is a kflow extension"),
        "{}",
        o.describe()
    );

    let o = kflow(["run"]).arg(&file).run();
    assert_eq!(
        completed(&o),
        json!([{"x": 1}, {"x": 1}]),
        "{}",
        o.describe()
    );
}

#[test]
fn strict_also_checks_the_sub_workflows_folder() {
    let dir = TempDir::new("strict-subflows");
    let lib = dir.path().join("lib");
    std::fs::create_dir_all(&lib).expect("mkdir");
    std::fs::write(lib.join("child.yaml"), wf("child", "do:\n  - g:\n      dag:\n        tasks:\n          - a:\n              set:\n                x: 1\n"))
        .expect("write child");
    let parent = dir.write(
        "parent.yaml",
        wf("parent", "do:\n  - sub:\n      run:\n        workflow:\n          namespace: test\n          name: child\n          version: '0.1.0'\n"),
    );
    let lib_s = lib.to_string_lossy().to_string();
    let ok = kflow(["run", &parent.to_string_lossy(), "--workflows", &lib_s]).run();
    assert_eq!(ok.code, Some(0), "{}", ok.describe());
    let strict = kflow([
        "run",
        &parent.to_string_lossy(),
        "--workflows",
        &lib_s,
        "--strict",
    ])
    .run();
    assert_eq!(strict.code, Some(2), "{}", strict.describe());
    assert!(
        strict.stderr.contains("child.yaml:")
            && strict.stderr.contains("'dag' is a kflow extension"),
        "{}",
        strict.stderr
    );
    assert!(strict.stdout.trim().is_empty());
}

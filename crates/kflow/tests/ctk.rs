//! Runs every scenario of the Serverless Workflow conformance kit (CTK) against the real
//! `kflow` binary.
//!
//! The feature files are read at run time from `../shared/spec/serverless-workflow/ctk`
//! (never copied into the project). A small Gherkin reader takes what those files use:
//! `Feature`, `Background`, `Scenario`, steps and `"""` docstrings. Every step of the CTK's
//! vocabulary (ctk/README.md) is understood; a step it does not know fails the scenario.
//!
//! Each scenario writes its definition to a temporary file and runs
//! `kflow run FILE --input JSON --trace`: stdout is the output (or the error), stderr carries
//! the trace lines used for the task-order steps. The one change made to a scenario: the
//! addresses of the public services it calls (`https://petstore.swagger.io`,
//! `https://httpbin.org`) are rewritten to a local stand-in server, because the machine that
//! runs the tests has no internet.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{TempDir, TestServer, at_path, clip, json_eq, json_subset, kflow, yaml};

// ---------------------------------------------------------------------------------------------
// The Gherkin reader

#[derive(Debug, Clone)]
struct StepText {
    keyword: String,
    text: String,
    doc: Option<String>,
    line: usize,
}

#[derive(Debug)]
struct Scenario {
    name: String,
    line: usize,
    steps: Vec<StepText>,
}

#[derive(Debug)]
struct Feature {
    name: String,
    scenarios: Vec<Scenario>,
}

const KEYWORDS: [&str; 6] = ["Given ", "When ", "Then ", "And ", "But ", "* "];

fn parse_feature(text: &str) -> Result<Feature, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut feature: Option<String> = None;
    let mut background: Vec<StepText> = Vec::new();
    let mut in_background = false;
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let t = raw.trim();
        let n = i + 1;
        i += 1;
        if t.is_empty() || t.starts_with('#') || t.starts_with('@') {
            continue;
        }
        if let Some(name) = t.strip_prefix("Feature:") {
            if feature.is_some() {
                return Err(format!("line {n}: a second Feature"));
            }
            feature = Some(name.trim().to_string());
        } else if t.starts_with("Background:") {
            in_background = true;
        } else if let Some(name) = t
            .strip_prefix("Scenario:")
            .or_else(|| t.strip_prefix("Example:"))
        {
            in_background = false;
            let steps = background.clone();
            scenarios.push(Scenario {
                name: name.trim().to_string(),
                line: n,
                steps,
            });
        } else if t.starts_with("Scenario Outline:")
            || t.starts_with("Scenario Template:")
            || t.starts_with("Examples:")
            || t.starts_with('|')
            || t.starts_with("Rule:")
        {
            return Err(format!("line {n}: this reader does not support `{t}`"));
        } else if let Some(kw) = KEYWORDS.iter().find(|k| t.starts_with(*k)) {
            let step = StepText {
                keyword: kw.trim().to_string(),
                text: t[kw.len()..].trim().to_string(),
                doc: None,
                line: n,
            };
            if in_background {
                background.push(step);
            } else if let Some(s) = scenarios.last_mut() {
                s.steps.push(step);
            } else {
                return Err(format!("line {n}: a step outside any scenario: {t}"));
            }
        } else if t.starts_with("\"\"\"") || t.starts_with("```") {
            let delim = &t[..3];
            let indent = raw.len() - raw.trim_start().len();
            let mut body = Vec::new();
            loop {
                let Some(l) = lines.get(i) else {
                    return Err(format!("line {n}: docstring never closed"));
                };
                i += 1;
                if l.trim() == delim {
                    break;
                }
                // Strip the opening delimiter's indentation (no more than the line has).
                let strip = l.len() - l.trim_start().len();
                body.push(&l[strip.min(indent)..]);
            }
            let doc = body.join("\n");
            let target = if in_background {
                background.last_mut()
            } else {
                scenarios.last_mut().and_then(|s| s.steps.last_mut())
            };
            match target {
                Some(step) if step.doc.is_none() => step.doc = Some(doc),
                _ => return Err(format!("line {n}: a docstring that belongs to no step")),
            }
        } else if feature.is_some() && scenarios.is_empty() && !in_background {
            // The feature's free-text description ("As an implementer ...").
        } else {
            return Err(format!("line {n}: not a step: {t}"));
        }
    }
    let name = feature.ok_or("no `Feature:` line")?;
    Ok(Feature { name, scenarios })
}

// ---------------------------------------------------------------------------------------------
// The step vocabulary of ctk/README.md

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Definition(String),
    Input(String),
    Execute,
    WorkflowCompletes,
    WorkflowCompletesWith(String),
    WorkflowFaults,
    WorkflowFaultsWith(String),
    WorkflowCancels,
    HasProperties(Vec<String>),
    PropertyValue(String, String),
    PropertyCount(String, usize),
    RunsFirst(String),
    RunsLast(String),
    RunsBefore(String, String),
    RunsAfter(String, String),
    TaskCompletes(String, Option<String>),
    TaskFaults(String, Option<String>),
    TaskCancels(String),
}

/// `'a', 'b.c'` → `["a", "b.c"]`.
fn quoted_list(s: &str) -> Option<Vec<String>> {
    s.split(',')
        .map(|p| {
            p.trim()
                .strip_prefix('\'')?
                .strip_suffix('\'')
                .map(str::to_string)
        })
        .collect()
}

/// A task name: one token (the CTK's names have no spaces).
fn task_name(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && !s.contains(char::is_whitespace)).then(|| s.to_string())
}

fn parse_step(st: &StepText) -> Result<Step, String> {
    let text = st.text.trim();
    // "And given the workflow input is:" spells its keyword twice.
    let text = text.strip_prefix("given ").unwrap_or(text);
    let doc = st.doc.clone();
    let with_doc = |s: fn(String) -> Step| {
        doc.clone()
            .map(s)
            .ok_or_else(|| format!("`{text}` needs a docstring"))
    };
    let step = match text {
        "a workflow with definition:" => with_doc(Step::Definition)?,
        "the workflow input is:" => with_doc(Step::Input)?,
        "the workflow is executed" => Step::Execute,
        "the workflow should complete" => Step::WorkflowCompletes,
        "the workflow should complete with output:" => with_doc(Step::WorkflowCompletesWith)?,
        "the workflow should fault" => Step::WorkflowFaults,
        "the workflow should fault with error:" => with_doc(Step::WorkflowFaultsWith)?,
        "the workflow should cancel" => Step::WorkflowCancels,
        _ => {
            if let Some(rest) = text.strip_prefix("the workflow output should have properties ") {
                Step::HasProperties(
                    quoted_list(rest).ok_or_else(|| format!("bad property list: {rest}"))?,
                )
            } else if let Some(rest) = text.strip_prefix("the workflow output should have a '") {
                let (path, tail) = rest.split_once('\'').ok_or("unclosed property name")?;
                if tail == " property with value:" {
                    Step::PropertyValue(
                        path.to_string(),
                        doc.clone().ok_or("a value step needs a docstring")?,
                    )
                } else if let Some(count) = tail
                    .strip_prefix(" property containing ")
                    .and_then(|t| t.strip_suffix(" items"))
                {
                    Step::PropertyCount(
                        path.to_string(),
                        count
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad count `{count}`"))?,
                    )
                } else {
                    return Err(format!("unknown step: {} {}", st.keyword, st.text));
                }
            } else if let Some(t) = text.strip_suffix(" should run first").and_then(task_name) {
                Step::RunsFirst(t)
            } else if let Some(t) = text.strip_suffix(" should run last").and_then(task_name) {
                Step::RunsLast(t)
            } else if let Some((a, b)) = text
                .split_once(" should run before ")
                .and_then(|(a, b)| Some((task_name(a)?, task_name(b)?)))
            {
                Step::RunsBefore(a, b)
            } else if let Some((a, b)) = text
                .split_once(" should run after ")
                .and_then(|(a, b)| Some((task_name(a)?, task_name(b)?)))
            {
                Step::RunsAfter(a, b)
            } else if let Some(t) = text.strip_suffix(" should complete").and_then(task_name) {
                Step::TaskCompletes(t, None)
            } else if let Some(t) = text
                .strip_suffix(" should complete with output:")
                .and_then(task_name)
            {
                Step::TaskCompletes(t, Some(doc.clone().ok_or("needs a docstring")?))
            } else if let Some(t) = text.strip_suffix(" should fault").and_then(task_name) {
                Step::TaskFaults(t, None)
            } else if let Some(t) = text
                .strip_suffix(" should fault with error:")
                .and_then(task_name)
            {
                Step::TaskFaults(t, Some(doc.clone().ok_or("needs a docstring")?))
            } else if let Some(t) = text.strip_suffix(" should cancel").and_then(task_name) {
                Step::TaskCancels(t)
            } else {
                return Err(format!("unknown step: {} {}", st.keyword, st.text));
            }
        }
    };
    let takes_doc = text.ends_with(':');
    if !takes_doc && st.doc.is_some() {
        return Err(format!("`{text}` takes no docstring"));
    }
    Ok(step)
}

// ---------------------------------------------------------------------------------------------
// Running a scenario

struct Ran {
    outcome: support::Outcome,
    trace: Vec<Value>,
}

#[derive(Default)]
struct World {
    definition: Option<String>,
    input: Option<Value>,
    ran: Option<Ran>,
}

fn doc_value(doc: &str) -> Result<Value, String> {
    yaml(doc).map_err(|e| format!("{e} in docstring:\n{doc}"))
}

/// (name, reference) of every `task.started` line, in order.
fn started(trace: &[Value]) -> Vec<(String, String)> {
    trace
        .iter()
        .filter(|l| l["type"] == "task.started")
        .map(|l| {
            (
                l["task"].as_str().unwrap_or("").to_string(),
                l["reference"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The reference of the task list a task belongs to: `/do/1/x` → `/do`.
fn parent(reference: &str) -> &str {
    let mut it = reference.rsplitn(3, '/');
    let (_, _, p) = (it.next(), it.next(), it.next());
    p.unwrap_or("")
}

impl World {
    fn ran(&self) -> Result<&Ran, String> {
        self.ran
            .as_ref()
            .ok_or_else(|| "an assertion before `When the workflow is executed`".to_string())
    }

    /// The output of a completed run.
    fn output(&self) -> Result<Value, String> {
        let ran = self.ran()?;
        if ran.outcome.code != Some(0) {
            return Err(format!(
                "the workflow did not complete (expected exit 0)\n{}",
                ran.outcome.describe()
            ));
        }
        ran.outcome.json()
    }

    /// The error object of a faulted run.
    fn fault(&self) -> Result<Value, String> {
        let ran = self.ran()?;
        if ran.outcome.code != Some(1) {
            return Err(format!(
                "the workflow did not fault (expected exit 1)\n{}",
                ran.outcome.describe()
            ));
        }
        let err = ran.outcome.json()?;
        if !(err["type"].is_string() && err["status"].is_number()) {
            return Err(format!(
                "a fault's stdout must be an error object with type and status: {err}"
            ));
        }
        Ok(err)
    }

    fn order_failure(&self, what: &str) -> String {
        let order: Vec<String> = self
            .ran
            .as_ref()
            .map(|r| started(&r.trace))
            .unwrap_or_default()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        format!("{what}; task.started order: {order:?}")
    }

    fn first_start(&self, task: &str) -> Result<(usize, String), String> {
        let s = started(&self.ran()?.trace);
        s.iter()
            .position(|(n, _)| n == task)
            .map(|i| (i, s[i].1.clone()))
            .ok_or_else(|| self.order_failure(&format!("`{task}` never started")))
    }

    fn step(&mut self, step: Step, server: &TestServer) -> Result<(), String> {
        match step {
            Step::Definition(d) => self.definition = Some(d),
            Step::Input(d) => self.input = Some(doc_value(&d)?),
            Step::Execute => {
                let def = self
                    .definition
                    .as_ref()
                    .ok_or("no workflow definition before `When`")?;
                let dir = TempDir::new("ctk");
                // The only change to the scenario: public service addresses → the local server.
                let file = dir.write("workflow.yaml", server.rewrite(def));
                let mut cmd = kflow(["run"]).arg(&file).arg("--trace");
                if let Some(input) = &self.input {
                    cmd = cmd
                        .arg("--input")
                        .arg(serde_json::to_string(input).unwrap_or_default());
                }
                let outcome = cmd.run();
                if outcome.timed_out {
                    return Err(format!(
                        "kflow run did not finish in time\n{}",
                        outcome.describe()
                    ));
                }
                if outcome.stderr.contains("panicked") {
                    return Err(format!("kflow panicked\n{}", outcome.describe()));
                }
                let trace = outcome.trace();
                self.ran = Some(Ran { outcome, trace });
            }
            Step::WorkflowCompletes => {
                self.output()?;
            }
            Step::WorkflowCompletesWith(d) => {
                let (want, got) = (doc_value(&d)?, self.output()?);
                if !json_eq(&want, &got) {
                    return Err(format!(
                        "output differs\n  expected: {want}\n  actual:   {got}"
                    ));
                }
            }
            Step::WorkflowFaults => {
                self.fault()?;
            }
            Step::WorkflowFaultsWith(d) => {
                let (want, got) = (doc_value(&d)?, self.fault()?);
                if !json_subset(&want, &got) {
                    return Err(format!(
                        "error differs (every expected field must be equal)\n  expected: {want}\n  actual:   {got}"
                    ));
                }
            }
            Step::WorkflowCancels | Step::TaskCancels(_) => {
                return Err(
                    "cancellation cannot be observed through `kflow run` (this runner has no way to check it)".into()
                );
            }
            Step::HasProperties(paths) => {
                let out = self.output()?;
                let missing: Vec<&String> = paths
                    .iter()
                    .filter(|p| at_path(&out, p).is_none())
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "output lacks {missing:?}\n  output: {}",
                        clip(&out.to_string(), 1500)
                    ));
                }
            }
            Step::PropertyValue(path, d) => {
                let (want, out) = (doc_value(&d)?, self.output()?);
                match at_path(&out, &path) {
                    Some(got) if json_eq(&want, got) => {}
                    got => {
                        return Err(format!(
                            "`{path}` is {got:?}, expected {want}\n  output: {}",
                            clip(&out.to_string(), 1500)
                        ));
                    }
                }
            }
            Step::PropertyCount(path, n) => {
                let out = self.output()?;
                match at_path(&out, &path) {
                    Some(Value::Array(a)) if a.len() == n => {}
                    got => {
                        return Err(format!(
                            "`{path}` should be an array of {n} items, is {got:?}"
                        ));
                    }
                }
            }
            // Order is judged among the tasks of the same list (siblings), by task.started.
            Step::RunsFirst(t) => {
                let (_, reference) = self.first_start(&t)?;
                let s = started(&self.ran()?.trace);
                let first = s.iter().find(|(_, r)| parent(r) == parent(&reference));
                if first.map(|(n, _)| n.as_str()) != Some(t.as_str()) {
                    return Err(self.order_failure(&format!("`{t}` did not run first")));
                }
            }
            Step::RunsLast(t) => {
                let (_, reference) = self.first_start(&t)?;
                let s = started(&self.ran()?.trace);
                let last = s
                    .iter()
                    .rev()
                    .find(|(_, r)| parent(r) == parent(&reference));
                if last.map(|(n, _)| n.as_str()) != Some(t.as_str()) {
                    return Err(self.order_failure(&format!("`{t}` did not run last")));
                }
            }
            Step::RunsBefore(a, b) | Step::RunsAfter(b, a) => {
                // `a` must start before `b` does.
                let (ia, _) = self.first_start(&a)?;
                let (ib, _) = self.first_start(&b)?;
                if ia >= ib {
                    return Err(self.order_failure(&format!("`{a}` did not run before `{b}`")));
                }
            }
            Step::TaskCompletes(t, want) => {
                let ran = self.ran()?;
                let line = ran
                    .trace
                    .iter()
                    .find(|l| l["type"] == "task.completed" && l["task"] == t.as_str());
                let line = line
                    .ok_or_else(|| self.order_failure(&format!("no task.completed for `{t}`")))?;
                if let Some(d) = want {
                    let want = doc_value(&d)?;
                    match line.get("output") {
                        Some(got) if json_eq(&want, got) => {}
                        got => {
                            return Err(format!(
                                "`{t}` output is {got:?}, expected {want} (trace line: {line})"
                            ));
                        }
                    }
                }
            }
            Step::TaskFaults(t, want) => {
                let ran = self.ran()?;
                let line = ran
                    .trace
                    .iter()
                    .find(|l| l["type"] == "task.faulted" && l["task"] == t.as_str());
                let line =
                    line.ok_or_else(|| self.order_failure(&format!("no task.faulted for `{t}`")))?;
                if let Some(d) = want {
                    let want = doc_value(&d)?;
                    if !line.get("error").is_some_and(|e| json_subset(&want, e)) {
                        return Err(format!(
                            "`{t}` error differs: expected {want}, trace line {line}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs one scenario; `Err` names the failing step and why.
fn run_scenario(sc: &Scenario, server: &TestServer) -> Result<(), String> {
    let mut world = World::default();
    for st in &sc.steps {
        let step = parse_step(st).map_err(|e| format!("line {}: {e}", st.line))?;
        world
            .step(step, server)
            .map_err(|e| format!("line {}: `{} {}` failed: {e}", st.line, st.keyword, st.text))?;
    }
    if world.ran.is_none() {
        return Err("the scenario never executed its workflow".into());
    }
    Ok(())
}

fn features() -> Option<Vec<PathBuf>> {
    let dir = support::spec_dir()?.join("ctk/features");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "feature"))
        .collect();
    files.sort();
    Some(files)
}

fn load(path: &Path) -> Feature {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_feature(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn ctk_conformance() {
    let Some(files) = features() else {
        support::missing("the CTK (../shared/spec/serverless-workflow/ctk)");
        return;
    };
    let server = TestServer::start();
    let mut rows: Vec<(String, String, Result<(), String>)> = Vec::new();
    for f in &files {
        let feature = load(f);
        let file = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for sc in &feature.scenarios {
            let r = run_scenario(sc, &server);
            rows.push((
                format!("{file}:{}", sc.line),
                format!("{} / {}", feature.name, sc.name),
                r,
            ));
        }
    }
    let passed = rows.iter().filter(|r| r.2.is_ok()).count();
    println!("\nCTK conformance: {passed}/{} scenarios pass", rows.len());
    println!("{:<6} {:<24} SCENARIO", "RESULT", "WHERE");
    for (at, name, r) in &rows {
        println!(
            "{:<6} {:<24} {name}",
            if r.is_ok() { "pass" } else { "FAIL" },
            at
        );
    }
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|(at, name, r)| r.as_ref().err().map(|e| format!("=== {at} {name}\n{e}")))
        .collect();
    for f in &failures {
        println!("\n{f}");
    }
    assert!(
        rows.len() >= 21,
        "expected the CTK's 21 scenarios, found {}",
        rows.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} CTK scenarios fail (see the table above)",
        failures.len(),
        rows.len()
    );
}

/// Every step of every CTK scenario is one this runner understands.
#[test]
fn ctk_steps_are_understood() {
    let Some(files) = features() else {
        support::missing("the CTK (../shared/spec/serverless-workflow/ctk)");
        return;
    };
    let mut count = 0;
    for f in &files {
        for sc in load(f).scenarios {
            count += 1;
            for st in &sc.steps {
                if let Err(e) = parse_step(st) {
                    panic!("{}:{}: {e}", f.display(), st.line);
                }
            }
        }
    }
    assert_eq!(count, 21, "the CTK has 21 scenarios");
}

#[test]
fn gherkin_reader() {
    let text = "Feature: F\n  As someone\n\n  # comment\n  Scenario: S1\n    Given a workflow with definition:\n    \"\"\"yaml\n    do:\n      - a: 1\n    \"\"\"\n    And given the workflow input is:\n      \"\"\"yaml\n      x: 1\n      \"\"\"\n    When the workflow is executed\n    Then the workflow should complete with output:\n    \"\"\"yaml\n    x: 1\n    \"\"\"\n    And setRed should run after setBlue\n    And the workflow output should have properties 'a', 'b.c'\n    And the workflow output should have a 'colors' property containing 3 items\n";
    let f = parse_feature(text).expect("parses");
    assert_eq!(f.name, "F");
    let steps: Vec<Step> = f.scenarios[0]
        .steps
        .iter()
        .map(|s| parse_step(s).expect("known step"))
        .collect();
    assert_eq!(steps[0], Step::Definition("do:\n  - a: 1".into()));
    assert_eq!(steps[1], Step::Input("x: 1".into()));
    assert_eq!(steps[4], Step::RunsAfter("setRed".into(), "setBlue".into()));
    assert_eq!(
        steps[5],
        Step::HasProperties(vec!["a".into(), "b.c".into()])
    );
    assert_eq!(steps[6], Step::PropertyCount("colors".into(), 3));
    // Unknown steps are errors, never ignored.
    let bad = StepText {
        keyword: "Then".into(),
        text: "the moon should be full".into(),
        doc: None,
        line: 1,
    };
    assert!(parse_step(&bad).is_err());
    assert!(
        parse_feature("Feature: F\n  Scenario: S\n    Given x\n    \"\"\"\n    never closed\n")
            .is_err()
    );
    assert_eq!(
        parent("/do/0/tryGetPet/try/0/getPet"),
        "/do/0/tryGetPet/try"
    );
    assert_eq!(parent("/do/1/setRed"), "/do");
    assert_eq!(yaml("1").unwrap(), serde_json::json!(1));
    assert_eq!(yaml("on: yes").unwrap(), serde_json::json!({"on": "yes"}));
    assert_eq!(yaml("/do/0/x").unwrap(), serde_json::json!("/do/0/x"));
}

/// The runner fails scenarios whose expectations are wrong (it does not pass vacuously).
#[test]
fn runner_detects_wrong_expectations() {
    let server = TestServer::start();
    let def = "    Given a workflow with definition:\n    \"\"\"yaml\n    document:\n      dsl: '1.0.3'\n      namespace: test\n      name: order\n      version: '0.1.0'\n    do:\n      - one:\n          set:\n            n: 1\n      - two:\n          set:\n            n: 2\n            list: [a, b]\n    \"\"\"\n    When the workflow is executed\n";
    let right = [
        "Then the workflow should complete with output:\n    \"\"\"yaml\n    n: 2\n    list: [a, b]\n    \"\"\"",
        "And one should run first",
        "And two should run last",
        "And two should run after one",
        "And one should run before two",
        "And the workflow output should have a 'list' property containing 2 items",
        "And the workflow output should have a 'list.1' property with value:\n    \"\"\"yaml\n    b\n    \"\"\"",
    ];
    let wrong = [
        "Then the workflow should fault",
        "Then the workflow should complete with output:\n    \"\"\"yaml\n    n: 1\n    \"\"\"",
        "And two should run first",
        "And one should run last",
        "And one should run after two",
        "And two should run before one",
        "And three should run first",
        "And the workflow output should have properties 'n', 'missing'",
        "And the workflow output should have a 'list' property containing 3 items",
        "And the moon should be full",
    ];
    let scenario = |step: &str| {
        let text = format!("Feature: self-check\n  Scenario: s\n{def}    {step}\n");
        let f = parse_feature(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        run_scenario(&f.scenarios[0], &server)
    };
    for step in right {
        assert!(
            scenario(step).is_ok(),
            "should pass: {step}: {:?}",
            scenario(step)
        );
    }
    for step in wrong {
        assert!(scenario(step).is_err(), "should fail: {step}");
    }
}

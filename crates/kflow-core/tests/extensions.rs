//! kflow's extensions to the DSL, run on the deterministic simulator (virtual time, scripted
//! answers): the `dag` task (dependencies, `$needs`, trigger rules, skips, faults, output) and
//! the parallel `for` (concurrency limit, output order, fault cancels the rest).

mod sim;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use kflow_core::{Command, Effect, Instance, InstanceConfig, NoticeKind, WfError};
use sim::{Reply, Sim, T0, load};

fn doc(body: &str) -> String {
    format!("document:\n  dsl: '1.0.3'\n  namespace: test\n  name: t\n  version: '1.0.0'\n{body}")
}

/// The last path segment of an http effect's URI (`http://svc/a` → `a`).
fn target(e: &Effect) -> String {
    match e {
        Effect::Http(r) => r.uri.rsplit('/').next().unwrap_or_default().to_string(),
        other => panic!("unexpected effect {other:?}"),
    }
}

/// An http call subtask named `name` calling `http://svc/<name>`, with extra YAML lines
/// (`needs`, `trigger`, ...) indented for a dag item.
fn call(name: &str, extra: &str) -> String {
    let mut s = format!("          - {name}:\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("              {line}\n"));
    }
    s.push_str(&format!("              call: http\n              with:\n                method: get\n                endpoint: http://svc/{name}\n"));
    s
}

/// A workflow whose only task is the dag `build` with `items` (YAML of the task list).
fn dag(items: &str) -> Arc<kflow_dsl::Workflow> {
    load(&doc(&format!(
        "do:\n  - build:\n      dag:\n        tasks:\n{items}"
    )))
}

/// A world where `http://svc/<name>` answers per `script` (name → reply), others after 10 ms
/// with `"<name>-out"`.
fn world(
    script: &'static [(&'static str, u64, Option<&'static str>)],
) -> impl FnMut(&Effect) -> Reply {
    move |e| {
        let name = target(e);
        match script.iter().find(|(n, _, _)| *n == name) {
            Some((_, ms, None)) => Reply::After(*ms, Ok(json!(format!("{name}-out")))),
            Some((_, ms, Some(detail))) => {
                Reply::After(*ms, Err(WfError::communication(503, *detail)))
            }
            None => Reply::After(10, Ok(json!(format!("{name}-out")))),
        }
    }
}

/// Virtual time (ms since T0) of the first notice of `kind` for task `task`.
fn at(s: &Sim, kind: NoticeKind, task: &str) -> Option<i64> {
    s.notices
        .iter()
        .find(|n| n.kind == kind && n.task.as_ref().is_some_and(|(name, _)| name == task))
        .map(|n| n.time_ms - T0)
}

fn started_at(s: &Sim, task: &str) -> i64 {
    at(s, NoticeKind::TaskStarted, task)
        .unwrap_or_else(|| panic!("task {task} never started: {:?}", s.trace()))
}

fn skipped(s: &Sim, task: &str) -> bool {
    at(s, NoticeKind::TaskSkipped, task).is_some()
}

/// Feeds the simulator's journal to a fresh instance, checking that the same commands come
/// out (the replay property), and returns the largest number of effects pending at once.
fn replay_max_pending(wf: Arc<kflow_dsl::Workflow>, input: Value, s: &Sim) -> usize {
    let cfg = InstanceConfig {
        id: "test-instance".into(),
        secrets: json!({"token": "s3cret"}),
        runtime: Value::Null,
        limits: Default::default(),
    };
    let mut inst = Instance::new(wf, cfg);
    let mut started = Vec::new();
    let mut collect = |cmds: Vec<Command>| {
        for c in cmds {
            if let Command::Start { id, effect, .. } = c {
                started.push((id, effect));
            }
        }
    };
    collect(inst.start(input, T0).commands);
    let mut max = inst.pending().len();
    for (id, d, now) in &s.journal {
        collect(inst.deliver(*id, d.clone(), *now).commands);
        max = max.max(inst.pending().len());
    }
    assert_eq!(
        started, s.started,
        "replaying the journal started different effects"
    );
    assert_eq!(
        inst.status(),
        s.inst.status(),
        "replaying the journal ended differently"
    );
    max
}

// ---------------------------------------------------------------------------------------------
// dag: scheduling

#[test]
fn dag_roots_run_concurrently_and_the_join_sees_needs() {
    let items = format!(
        "{}{}          - merge:\n              needs: [fetchA, fetchB]\n              set:\n                a: ${{ $needs.fetchA }}\n                b: ${{ $needs.fetchB }}\n                keys: ${{ $needs | keys }}\n                input: ${{ .n }}\n",
        call("fetchA", ""),
        call("fetchB", "")
    );
    let wf = dag(&items);

    // Both roots are started before either is answered.
    let mut s = Sim::new(wf.clone());
    s.run(json!({"n": 1}), |_| Reply::Never);
    assert_eq!(
        s.started.iter().map(|(_, e)| target(e)).collect::<Vec<_>>(),
        ["fetchA", "fetchB"]
    );

    let mut s = Sim::new(wf.clone());
    s.run(
        json!({"n": 1}),
        world(&[("fetchA", 50, None), ("fetchB", 10, None)]),
    );
    assert_eq!(
        s.output(),
        json!({
            "fetchA": "fetchA-out",
            "fetchB": "fetchB-out",
            "merge": {"a": "fetchA-out", "b": "fetchB-out", "keys": ["fetchA", "fetchB"], "input": 1}
        })
    );
    // Concurrent: the join starts when the slower root is done, at 50 ms (not 60).
    assert_eq!(started_at(&s, "fetchA"), 0);
    assert_eq!(started_at(&s, "fetchB"), 0);
    assert_eq!(started_at(&s, "merge"), 50);
    assert_eq!(
        s.trace(),
        [
            "task.started:build",
            "task.started:fetchA",
            "task.started:fetchB",
            "task.completed:fetchB",
            "task.completed:fetchA",
            "task.started:merge",
            "task.completed:merge",
            "task.completed:build"
        ]
    );
    assert_eq!(replay_max_pending(wf, json!({"n": 1}), &s), 2);
}

#[test]
fn dag_respects_dependency_order_in_a_diamond() {
    // a → (b, c) → d, declared in a scrambled order; e is independent.
    let items = [
        call("d", "needs: [c, b]"),
        call("b", "needs: [a]"),
        call("e", ""),
        call("c", "needs: a"),
        call("a", ""),
    ]
    .concat();
    let wf = dag(&items);
    let mut s = Sim::new(wf.clone());
    s.run(
        json!({}),
        world(&[
            ("a", 10, None),
            ("b", 30, None),
            ("c", 5, None),
            ("e", 100, None),
        ]),
    );
    assert_eq!(started_at(&s, "e"), 0);
    assert_eq!(started_at(&s, "a"), 0);
    assert_eq!(started_at(&s, "b"), 10);
    assert_eq!(started_at(&s, "c"), 10);
    assert_eq!(started_at(&s, "d"), 40);
    // Roots are started in declaration order (e before a), b and c in declaration order too.
    assert_eq!(
        s.started.iter().map(|(_, e)| target(e)).collect::<Vec<_>>(),
        ["e", "a", "b", "c", "d"]
    );
    let out = s.output();
    assert_eq!(out.as_object().map(|m| m.len()), Some(5));
    assert_eq!(out["d"], json!("d-out"));
    assert_eq!(replay_max_pending(wf, json!({}), &s), 3);
}

#[test]
fn dag_subtasks_get_the_dag_input_and_their_own_data_flow() {
    let s = {
        let mut s = Sim::new(load(&doc(r#"do:
  - build:
      input:
        from: ${ .payload }
      dag:
        tasks:
          - one:
              set:
                v: ${ .x + 1 }
          - two:
              needs: [one]
              input:
                from: '${ { base: .x, prev: $needs.one.v } }'
              set:
                sum: ${ .base + .prev }
              output:
                as: ${ .sum }
          - root:
              set:
                seen: ${ $needs }
"#)));
        s.run(json!({"payload": {"x": 10}}), sim::echo);
        s
    };
    assert_eq!(
        s.output(),
        json!({"one": {"v": 11}, "two": 21, "root": {"seen": {}}})
    );
}

// ---------------------------------------------------------------------------------------------
// dag: trigger rules, skips, faults

#[test]
fn all_succeeded_skips_after_a_failure_and_the_unhandled_failure_faults_the_dag_at_the_end() {
    // a fails at 10 ms; b (needs a) and c (needs b) are skipped; x, independent, runs on to
    // 100 ms and is not cancelled; then the dag faults with a's error.
    let items = [
        call("a", ""),
        call("b", "needs: [a]"),
        call("c", "needs: [b]"),
        call("x", ""),
    ]
    .concat();
    let wf = dag(&items);
    let mut s = Sim::new(wf.clone());
    s.run(
        json!({}),
        world(&[("a", 10, Some("a is down")), ("x", 100, None)]),
    );
    let err = s.error();
    assert_eq!(err.status, 503);
    assert_eq!(err.detail.as_deref(), Some("a is down"));
    assert_eq!(err.instance.as_deref(), Some("/do/0/build/dag/tasks/0/a"));
    assert!(skipped(&s, "b") && skipped(&s, "c"), "{:?}", s.trace());
    assert_eq!(at(&s, NoticeKind::TaskCompleted, "x"), Some(100));
    assert_eq!(at(&s, NoticeKind::TaskFaulted, "build"), Some(100));
    assert!(
        s.cancelled.is_empty(),
        "a failure cancels nothing: {:?}",
        s.cancelled
    );
    // The skip notice says why.
    let skip = s
        .notices
        .iter()
        .find(|n| n.kind == NoticeKind::TaskSkipped)
        .map(|n| n.to_json());
    assert_eq!(
        skip.as_ref().map(|j| j["detail"]["reason"].clone()),
        Some(json!("trigger 'all_succeeded' does not hold"))
    );
    replay_max_pending(wf, json!({}), &s);
}

#[test]
fn all_done_runs_after_a_failure_sees_the_error_and_handles_it() {
    let items = format!(
        "{}{}          - report:\n              needs: [a, b]\n              trigger: all_done\n              set:\n                a: ${{ $needs.a }}\n                bStatus: ${{ $needs.b.status }}\n",
        call("a", ""),
        call("b", "")
    );
    let mut s = Sim::new(dag(&items));
    s.run(json!({}), world(&[("b", 20, Some("b broke"))]));
    let out = s.output();
    // The failed subtask is absent from the output; the handler ran with its error.
    assert_eq!(
        out,
        json!({"a": "a-out", "report": {"a": "a-out", "bStatus": 503}})
    );
    assert_eq!(started_at(&s, "report"), 20);
}

#[test]
fn all_done_passes_errors_and_skips_in_needs() {
    let items = format!(
        "{}{}          - maybe:\n              if: ${{ false }}\n              set: {{ m: 1 }}\n          - report:\n              needs: [a, b, maybe]\n              trigger: all_done\n              set: ${{ $needs }}\n",
        call("a", ""),
        call("b", "")
    );
    let mut s = Sim::new(dag(&items));
    s.run(json!({}), world(&[("b", 20, Some("b broke"))]));
    let out = s.output();
    assert_eq!(out["report"]["a"], json!("a-out"));
    assert_eq!(out["report"]["maybe"], Value::Null);
    let b = &out["report"]["b"];
    assert_eq!(b["status"], json!(503));
    assert_eq!(b["detail"], json!("b broke"));
    assert_eq!(b["instance"], json!("/do/0/build/dag/tasks/1/b"));
    assert!(
        b["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/communication")),
        "{b}"
    );
    assert!(skipped(&s, "maybe"));
}

#[test]
fn one_failed_runs_only_when_a_dependency_failed() {
    let handler = "          - onError:\n              needs: [a, b]\n              trigger: one_failed\n              set:\n                failed: ${ [$needs | to_entries[] | select((.value | type) == \"object\") | select(.value | has(\"status\")) | .key] }\n";
    let items = format!("{}{}{handler}", call("a", ""), call("b", ""));
    let wf = dag(&items);

    // A failure: the handler runs, names it, and the dag completes (the failure is handled).
    let mut s = Sim::new(wf.clone());
    s.run(json!({}), world(&[("a", 5, Some("nope"))]));
    assert_eq!(
        s.output(),
        json!({"b": "b-out", "onError": {"failed": ["a"]}})
    );

    // No failure: the handler is skipped, the dag completes without it.
    let mut s = Sim::new(wf);
    s.run(json!({}), world(&[]));
    assert!(skipped(&s, "onError"));
    assert_eq!(s.output(), json!({"a": "a-out", "b": "b-out"}));
}

#[test]
fn one_succeeded_takes_any_mirror_and_faults_when_none_answers() {
    let pick = "          - pick:\n              needs: [m1, m2, m3]\n              trigger: one_succeeded\n              set: ${ [$needs[] | strings] | first }\n";
    let items = format!(
        "{}{}{}{pick}",
        call("m1", ""),
        call("m2", ""),
        call("m3", "")
    );
    let wf = dag(&items);

    let mut s = Sim::new(wf.clone());
    s.run(
        json!({}),
        world(&[("m1", 5, Some("m1 down")), ("m3", 5, Some("m3 down"))]),
    );
    // m1 and m3 failed, but pick ran after them: both failures are handled.
    assert_eq!(s.output(), json!({"m2": "m2-out", "pick": "m2-out"}));

    let mut s = Sim::new(wf);
    s.run(
        json!({}),
        world(&[
            ("m1", 30, Some("m1 down")),
            ("m2", 20, Some("m2 down")),
            ("m3", 10, Some("m3 down")),
        ]),
    );
    assert!(skipped(&s, "pick"));
    // Every mirror failed, nothing handled them: the first in declaration order (m1) wins,
    // although it failed last.
    assert_eq!(s.error().detail.as_deref(), Some("m1 down"));
}

#[test]
fn none_failed_accepts_skipped_dependencies_but_not_failed_ones() {
    let items = format!(
        "{}          - optional:\n              if: ${{ .withOptional }}\n              set: {{ o: 1 }}\n{}{}{}",
        call("a", ""),
        call("strict", "needs: [a, optional]"),
        call("lenient", "needs: [a, optional]\ntrigger: none_failed"),
        call("afterFail", "needs: [broken]\ntrigger: none_failed"),
    ) + &call("broken", "");
    let mut s = Sim::new(dag(&items));
    s.run(
        json!({"withOptional": false}),
        world(&[("broken", 5, Some("broken"))]),
    );
    assert!(skipped(&s, "optional"));
    assert!(
        skipped(&s, "strict"),
        "all_succeeded is false with a skipped dependency"
    );
    assert_eq!(started_at(&s, "lenient"), 10);
    assert!(skipped(&s, "afterFail"));
    // broken's failure is unhandled (its only dependent did not run).
    assert_eq!(s.error().detail.as_deref(), Some("broken"));
}

#[test]
fn skips_propagate_like_airflow_and_everything_that_can_run_runs() {
    // a fails → b skipped → c skipped; d (none_failed on c) still runs; the dag faults with a's
    // error after d ran.
    let items = [
        call("a", ""),
        call("b", "needs: [a]"),
        call("c", "needs: [b]"),
        call("d", "needs: [c]\ntrigger: none_failed"),
        call("e", "needs: [b]\ntrigger: all_done"),
    ]
    .concat();
    let mut s = Sim::new(dag(&items));
    s.run(json!({}), world(&[("a", 10, Some("a failed"))]));
    assert!(skipped(&s, "b") && skipped(&s, "c"));
    // e (all_done on the skipped b) ran, but e does not depend on a: a stays unhandled.
    assert_eq!(started_at(&s, "e"), 10);
    assert_eq!(started_at(&s, "d"), 10);
    assert_eq!(at(&s, NoticeKind::TaskCompleted, "d"), Some(20));
    assert_eq!(s.error().detail.as_deref(), Some("a failed"));
    assert_eq!(at(&s, NoticeKind::TaskFaulted, "build"), Some(20));
}

#[test]
fn a_failing_handler_is_itself_a_failure_to_handle() {
    let items = format!(
        "{}          - handler:\n              needs: [a]\n              trigger: all_done\n              raise:\n                error:\n                  type: https://example.com/handler\n                  status: 500\n                  detail: ${{ \"handled \" + $needs.a.detail }}\n",
        call("a", "")
    );
    let mut s = Sim::new(dag(&items));
    s.run(json!({}), world(&[("a", 10, Some("a failed"))]));
    let err = s.error();
    assert_eq!(err.type_, "https://example.com/handler");
    assert_eq!(err.detail.as_deref(), Some("handled a failed"));
}

#[test]
fn a_dag_inside_try_is_caught_and_a_dag_timeout_cancels_its_subtasks() {
    let mut s = Sim::new(load(&doc(r#"do:
  - guarded:
      try:
        - build:
            timeout:
              after: PT1S
            dag:
              tasks:
                - slow:
                    call: http
                    with: { method: get, endpoint: http://svc/slow }
                - slower:
                    call: http
                    with: { method: get, endpoint: http://svc/slower }
      catch:
        as: e
        do:
          - note:
              set:
                caught: ${ $e.status }
"#)));
    s.run(json!({}), |_| Reply::Never);
    assert_eq!(s.output(), json!({"caught": 408}));
    // Both subtask calls were cancelled when the timeout dropped the dag.
    let calls: Vec<u64> = s
        .started
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Http(_)))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(calls.len(), 2);
    assert!(
        calls.iter().all(|id| s.cancelled.contains(id)),
        "{:?} vs {:?}",
        calls,
        s.cancelled
    );
}

/// 1,000 subtasks in 20 layers of 50; each task of a layer needs two of the previous one.
fn dag1000() -> String {
    let mut s = String::from("do:\n  - build:\n      dag:\n        tasks:\n");
    for layer in 0..20 {
        for i in 0..50 {
            s.push_str(&format!("          - t{layer}_{i}:\n"));
            if layer > 0 {
                s.push_str(&format!(
                    "              needs: [t{}_{i}, t{}_{}]\n",
                    layer - 1,
                    layer - 1,
                    (i + 1) % 50
                ));
            }
            s.push_str(&format!(
                "              call: http\n              with:\n                method: get\n                endpoint: http://svc/t{layer}_{i}\n"
            ));
        }
    }
    s
}

#[test]
fn dag_of_1000_tasks_runs_layer_by_layer() {
    let t0 = Instant::now();
    let wf = load(&doc(&dag1000()));
    let loaded = t0.elapsed();
    let mut s = Sim::new(wf.clone());
    let t1 = Instant::now();
    s.run(json!({}), |_| Reply::After(10, Ok(json!(1))));
    let ran = t1.elapsed();
    let out = s.output();
    assert_eq!(out.as_object().map(|m| m.len()), Some(1000));
    assert_eq!(s.started.len(), 1000);
    // 20 layers of 10 ms each, every layer fully concurrent.
    assert_eq!(s.now - T0, 200);
    assert_eq!(started_at(&s, "t19_49"), 190);
    assert_eq!(replay_max_pending(wf, json!({}), &s), 50);
    println!(
        "dag1000: 1000 tasks, 1950 edges: loaded in {:.1} ms, run to completion in the simulator in {:.1} ms (virtual time 200 ms)",
        loaded.as_secs_f64() * 1e3,
        ran.as_secs_f64() * 1e3
    );
}

// ---------------------------------------------------------------------------------------------
// parallel for

fn parallel_for(parallel: &str) -> Arc<kflow_dsl::Workflow> {
    load(&doc(&format!(
        r#"do:
  - each:
      for:
        each: item
        in: ${{ .items }}
        at: i
      parallel: {parallel}
      do:
        - get:
            call: http
            with:
              method: get
              endpoint: ${{ "http://svc/" + ($item | tostring) }}
            output:
              as: '${{ {{ got: ., n: $input.n }} }}'
        - shape:
            set:
              item: ${{ $item }}
              i: ${{ $i }}
              got: ${{ .got }}
              n: ${{ .n }}
"#
    )))
}

/// Item `k` answers after `(10 - k) * 10` ms with `k * 100`: later items finish first.
fn reversed(e: &Effect) -> Reply {
    let k: u64 = target(e).parse().unwrap_or(0);
    Reply::After((10 - k) * 10, Ok(json!(k * 100)))
}

#[test]
fn parallel_for_keeps_item_order_and_gives_each_iteration_the_for_input() {
    let wf = parallel_for("true");
    let input = json!({"n": 7, "items": [0, 1, 2, 3, 4]});
    let mut s = Sim::new(wf.clone());
    s.run(input.clone(), reversed);
    let out = s.output();
    let expected: Vec<Value> = (0..5)
        .map(|k| json!({"item": k, "i": k, "got": k * 100, "n": 7}))
        .collect();
    assert_eq!(out, Value::Array(expected));
    // Unbounded: every iteration started at once; it took as long as the slowest (item 0).
    assert_eq!(replay_max_pending(wf, input, &s), 5);
    assert_eq!(s.now - T0, 100);
}

#[test]
fn parallel_for_never_has_more_than_the_limit_in_progress() {
    let wf = parallel_for("3");
    let items: Vec<u64> = (0..10).collect();
    let input = json!({"n": 1, "items": items});
    let mut s = Sim::new(wf.clone());
    s.run(input.clone(), reversed);
    let out = s.output();
    assert_eq!(out.as_array().map(Vec::len), Some(10));
    assert_eq!(out[9], json!({"item": 9, "i": 9, "got": 900, "n": 1}));
    assert_eq!(replay_max_pending(wf.clone(), input.clone(), &s), 3);
    // Started in item order, the next one as soon as a slot frees up.
    let order: Vec<String> = s.started.iter().map(|(_, e)| target(e)).collect();
    assert_eq!(order, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    // Before any answer, exactly 3 calls are out.
    let mut first = Sim::new(wf);
    first.run(input, |_| Reply::Never);
    assert_eq!(first.started.len(), 3);
}

#[test]
fn parallel_for_with_limit_one_runs_one_at_a_time_on_the_same_input() {
    let wf = parallel_for("1");
    let input = json!({"n": 3, "items": [5, 6]});
    let mut s = Sim::new(wf.clone());
    s.run(input.clone(), reversed);
    assert_eq!(
        s.output(),
        json!([{"item": 5, "i": 0, "got": 500, "n": 3}, {"item": 6, "i": 1, "got": 600, "n": 3}])
    );
    assert_eq!(replay_max_pending(wf, input, &s), 1);
    assert_eq!(s.now - T0, 50 + 40);
}

#[test]
fn parallel_for_fault_cancels_the_other_iterations() {
    let wf = parallel_for("true");
    let mut s = Sim::new(wf);
    s.run(json!({"n": 0, "items": [0, 1, 2, 3]}), |e| {
        match target(e).as_str() {
            "2" => Reply::After(10, Err(WfError::communication(502, "item 2 broke"))),
            _ => Reply::Never,
        }
    });
    let err = s.error();
    assert_eq!(err.detail.as_deref(), Some("item 2 broke"));
    assert_eq!(s.now - T0, 10);
    let others: Vec<u64> = s
        .started
        .iter()
        .filter(|(_, e)| target(e) != "2")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(others.len(), 3);
    let mut cancelled = s.cancelled.clone();
    cancelled.sort_unstable();
    assert_eq!(cancelled, others);
}

#[test]
fn parallel_for_fault_with_a_limit_starts_nothing_more() {
    let wf = parallel_for("2");
    let mut s = Sim::new(wf);
    s.run(
        json!({"n": 0, "items": [0, 1, 2, 3, 4]}),
        |e| match target(e).as_str() {
            "0" => Reply::After(5, Err(WfError::communication(500, "first broke"))),
            _ => Reply::Never,
        },
    );
    assert_eq!(s.error().detail.as_deref(), Some("first broke"));
    assert_eq!(s.started.len(), 2, "items 2.. never started");
    assert_eq!(s.cancelled.len(), 1);
}

#[test]
fn parallel_for_over_nothing_outputs_an_empty_array() {
    let mut s = Sim::new(parallel_for("4"));
    s.run(json!({"items": []}), |_| Reply::Never);
    assert_eq!(s.output(), json!([]));
}

#[test]
fn parallel_false_is_the_standard_sequential_for() {
    let mut s = Sim::new(load(&doc(
        "do:\n  - each:\n      for:\n        in: ${ .items }\n      parallel: false\n      while: ${ .sum < 3 }\n      do:\n        - add:\n            set:\n              sum: ${ .sum + $item }\n",
    )));
    s.run(json!({"sum": 0, "items": [1, 2, 3, 4]}), |_| Reply::Never);
    assert_eq!(s.output(), json!({"sum": 3}));
}

//! Task types and data-flow rules, as dsl.md and dsl-reference.md state them, run on the
//! deterministic simulator (virtual time, scripted answers).

mod sim;

use serde_json::{Value, json};

use kflow_core::{Effect, WfError};
use sim::{Reply, Sim, T0, echo, load};

fn doc(body: &str) -> String {
    format!("document:\n  dsl: '1.0.3'\n  namespace: test\n  name: t\n  version: '1.0.0'\n{body}")
}

fn run(body: &str, input: Value) -> Sim {
    let mut s = Sim::new(load(&doc(body)));
    s.run(input, echo);
    s
}

#[test]
fn set_replaces_the_output_and_chains_tasks() {
    let s = run(
        "do:\n  - a:\n      set:\n        x: ${ .n + 1 }\n  - b:\n      set:\n        y: ${ .x * 10 }\n        lit: [1, 'two']\n",
        json!({"n": 1}),
    );
    assert_eq!(s.output(), json!({"y": 20, "lit": [1, "two"]}));
    assert_eq!(
        s.trace(),
        [
            "task.started:a",
            "task.completed:a",
            "task.started:b",
            "task.completed:b"
        ]
    );
}

#[test]
fn input_from_output_as_export_as_and_context() {
    let s = run(
        r#"input:
  from: ${ .payload }
do:
  - a:
      input:
        from: .user
      set:
        name: ${ .name }
        raw: ${ $task.input.user.name }
      output:
        as: '${ { who: .name, raw } }'
      export:
        as: '${ $context + { seen: .who } }'
  - b:
      set:
        ctx: ${ $context }
        prev: ${ . }
        wfin: ${ $workflow.input.payload.user.name }
output:
  as: '${ { result: . } }'
"#,
        json!({"payload": {"user": {"name": "ada"}}}),
    );
    assert_eq!(
        s.output(),
        json!({"result": {"ctx": {"seen": "ada"}, "prev": {"who": "ada", "raw": "ada"}, "wfin": "ada"}})
    );
}

#[test]
fn if_false_skips_the_task_and_passes_input_through() {
    let s = run(
        "do:\n  - a:\n      if: ${ .go }\n      set:\n        x: 1\n  - b:\n      set:\n        y: ${ .go }\n",
        json!({"go": false}),
    );
    assert_eq!(s.output(), json!({"y": false}));
    assert_eq!(s.trace()[0], "task.skipped:a");
}

#[test]
fn schemas_validate_input_and_output() {
    let body = r#"input:
  schema:
    format: json
    document:
      type: object
      required: [n]
      properties:
        n: { type: integer }
do:
  - a:
      set:
        n: ${ .n }
      output:
        schema:
          format: json
          document:
            type: object
            properties:
              n: { maximum: 5 }
"#;
    let ok = run(body, json!({"n": 3}));
    assert_eq!(ok.output(), json!({"n": 3}));
    let bad_in = run(body, json!({"n": "x"}));
    let e = bad_in.error();
    assert!(e.type_.ends_with("/validation"), "{e:?}");
    assert!(e.detail.as_deref().unwrap_or("").contains("/n"), "{e:?}");
    let bad_out = run(body, json!({"n": 9}));
    let e = bad_out.error();
    assert!(e.type_.ends_with("/validation"));
    assert_eq!(e.instance.as_deref(), Some("/do/0/a"));
}

#[test]
fn switch_then_jumps_and_end() {
    let body = r#"do:
  - pick:
      switch:
        - big:
            when: .n > 10
            then: large
        - fallback:
            then: small
  - small:
      set:
        size: small
      then: end
  - large:
      set:
        size: large
  - after:
      set:
        size: ${ .size + "!" }
"#;
    assert_eq!(
        run(body, json!({"n": 50})).output(),
        json!({"size": "large!"})
    );
    assert_eq!(
        run(body, json!({"n": 1})).output(),
        json!({"size": "small"})
    );
}

#[test]
fn then_loops_back_until_a_condition() {
    let body = r#"do:
  - inc:
      set:
        n: ${ .n + 1 }
  - check:
      switch:
        - again:
            when: .n < 5
            then: inc
        - done:
            then: exit
"#;
    assert_eq!(run(body, json!({"n": 0})).output(), json!({"n": 5}));
}

#[test]
fn exit_leaves_only_the_enclosing_composite() {
    let body = r#"do:
  - outer:
      do:
        - one:
            set:
              v: 1
            then: exit
        - never:
            set:
              v: 99
  - next:
      set:
        v: ${ .v + 1 }
"#;
    assert_eq!(run(body, json!({})).output(), json!({"v": 2}));
}

#[test]
fn for_each_at_and_while() {
    let body = r#"do:
  - loop:
      for:
        each: c
        in: .colors
        at: i
      while: ${ $i < 2 }
      do:
        - add:
            set:
              seen: '${ .seen + [ { c: $c, i: $i } ] }'
"#;
    let s = run(body, json!({"colors": ["r", "g", "b"], "seen": []}));
    assert_eq!(
        s.output(),
        json!({"seen": [{"c": "r", "i": 0}, {"c": "g", "i": 1}]})
    );
    let defaults = "do:\n  - loop:\n      for:\n        in: ${ [10, 20] }\n      do:\n        - s:\n            set:\n              last: ${ [$item, $index] }\n";
    assert_eq!(run(defaults, json!({})).output(), json!({"last": [20, 1]}));
}

#[test]
fn fork_joins_in_declaration_order_even_when_answers_come_reversed() {
    let body = r#"do:
  - par:
      fork:
        branches:
          - a:
              call: http
              with:
                method: get
                endpoint: http://svc/a
          - b:
              call: http
              with:
                method: get
                endpoint: http://svc/b
"#;
    let mut s = Sim::new(load(&doc(body)));
    s.run(json!({}), |e| match e {
        Effect::Http(r) if r.uri.ends_with("/a") => Reply::After(50, Ok(json!("A"))),
        Effect::Http(_) => Reply::After(10, Ok(json!("B"))),
        _ => Reply::Now(Ok(Value::Null)),
    });
    assert_eq!(s.output(), json!(["A", "B"]));
    // Both calls were started before either answered: they ran concurrently.
    assert_eq!(s.started.len(), 2);
    assert_eq!(s.now, T0 + 50);
}

#[test]
fn fork_compete_takes_the_first_and_cancels_the_rest() {
    let body = r#"do:
  - race:
      fork:
        compete: true
        branches:
          - slow:
              call: http
              with:
                method: get
                endpoint: http://svc/slow
          - fast:
              call: http
              with:
                method: get
                endpoint: http://svc/fast
"#;
    let mut s = Sim::new(load(&doc(body)));
    s.run(json!({}), |e| match e {
        Effect::Http(r) if r.uri.ends_with("/slow") => Reply::Never,
        _ => Reply::After(5, Ok(json!({"winner": "fast"}))),
    });
    assert_eq!(s.output(), json!({"winner": "fast"}));
    assert_eq!(s.cancelled, vec![0], "the slow branch's call is cancelled");
    // Every run that started ends: the losing branch (and its call) with `task.cancelled`.
    let ends = |reference: &str| {
        s.notices
            .iter()
            .filter(|n| n.task.as_ref().is_some_and(|(_, r)| r == reference))
            .map(|n| n.kind.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ends("/do/0/race/fork/branches/0/slow"),
        ["task.started", "task.cancelled"]
    );
    assert_eq!(
        ends("/do/0/race/fork/branches/1/fast"),
        ["task.started", "task.completed"]
    );
    assert_eq!(ends("/do/0/race"), ["task.started", "task.completed"]);
}

#[test]
fn raise_inline_and_reusable_with_instance() {
    let e = run(
        "do:\n  - boom:\n      raise:\n        error:\n          type: https://example.com/errors/x\n          status: 418\n          title: ${ \"bad \" + .what }\n",
        json!({"what": "tea"}),
    )
    .error();
    assert_eq!(
        e,
        WfError {
            type_: "https://example.com/errors/x".into(),
            status: 418,
            title: Some("bad tea".into()),
            detail: None,
            instance: Some("/do/0/boom".into()),
        }
    );
    let e = run(
        "use:\n  errors:\n    nope:\n      type: https://example.com/nope\n      status: 400\ndo:\n  - r:\n      raise:\n        error: nope\n",
        json!({}),
    )
    .error();
    assert_eq!(
        (e.type_.as_str(), e.status),
        ("https://example.com/nope", 400)
    );
}

#[test]
fn try_catches_by_filter_with_any_standard_uri_spelling() {
    let body = |status: u16| {
        format!(
            r#"do:
  - guard:
      try:
        - fail:
            raise:
              error:
                type: https://serverlessworkflow.io/spec/1.0.0/errors/communication
                status: 404
      catch:
        errors:
          with:
            type: https://open-workflow-specification.org/dsl/errors/types/communication
            status: {status}
        as: err
        do:
          - keep:
              set:
                caught: ${{ $err.status }}
                at: ${{ $err.instance }}
"#
        )
    };
    let s = run(&body(404), json!({}));
    assert_eq!(
        s.output(),
        json!({"caught": 404, "at": "/do/0/guard/try/0/fail"})
    );
    let s = run(&body(503), json!({}));
    assert_eq!(
        s.error().status,
        404,
        "an error the filter does not match is not caught"
    );
}

#[test]
fn catch_when_and_except_when() {
    let body = |cond: &str| {
        format!(
            "do:\n  - t:\n      try:\n        - f:\n            raise:\n              error:\n                type: https://x/e\n                status: 500\n      catch:\n        {cond}\n"
        )
    };
    assert_eq!(
        run(&body("when: ${ .status == 500 }"), json!({"k": 1})).output(),
        json!({"k": 1})
    );
    assert_eq!(
        run(&body("when: ${ .status == 400 }"), json!({}))
            .error()
            .status,
        500
    );
    assert_eq!(
        run(&body("exceptWhen: ${ $error.status == 500 }"), json!({}))
            .error()
            .status,
        500
    );
}

#[test]
fn retry_with_exponential_backoff_in_virtual_time() {
    let body = r#"do:
  - t:
      try:
        - get:
            call: http
            with:
              method: get
              endpoint: http://svc/flaky
      catch:
        errors:
          with:
            status: 503
        retry:
          delay:
            seconds: 1
          backoff:
            exponential: {}
          limit:
            attempt:
              count: 5
"#;
    let mut s = Sim::new(load(&doc(body)));
    let mut calls = 0;
    s.run(json!({}), |e| match e {
        Effect::Http(_) => {
            calls += 1;
            if calls < 4 {
                Reply::Now(Err(WfError::communication(503, "busy")))
            } else {
                Reply::Now(Ok(json!("ok")))
            }
        }
        _ => Reply::Now(Ok(Value::Null)),
    });
    assert_eq!(s.output(), json!("ok"));
    assert_eq!(calls, 4);
    // Delays 1 s, 2 s, 4 s.
    assert_eq!(s.now - T0, 7_000);
    assert_eq!(
        s.trace()
            .iter()
            .filter(|t| t.starts_with("task.retried"))
            .count(),
        3
    );
}

#[test]
fn retry_gives_up_after_the_attempt_limit() {
    let body = r#"do:
  - t:
      try:
        - get:
            call: http
            with:
              method: get
              endpoint: http://svc/down
      catch:
        errors:
          with:
            status: 503
        retry:
          delay:
            milliseconds: 100
          backoff:
            linear: {}
          limit:
            attempt:
              count: 2
"#;
    let mut s = Sim::new(load(&doc(body)));
    let mut calls = 0;
    s.run(json!({}), |_| {
        calls += 1;
        Reply::Now(Err(WfError::communication(503, "down")))
    });
    let e = s.error();
    assert_eq!(
        (e.status, e.instance.as_deref()),
        (503, Some("/do/0/t/try/0/get"))
    );
    assert_eq!(calls, 3, "one try and two retries");
    assert_eq!(s.now - T0, 100 + 200, "linear backoff");
}

#[test]
fn wait_sleeps_in_workflow_time() {
    let s = run(
        "do:\n  - w:\n      wait: PT1M30S\n  - w2:\n      wait:\n        seconds: 10\n",
        json!({"x": 1}),
    );
    assert_eq!(s.output(), json!({"x": 1}));
    assert_eq!(s.now - T0, 100_000);
}

#[test]
fn task_timeout_raises_timeout_and_cancels_the_call() {
    let body = "do:\n  - slow:\n      timeout:\n        after: PT2S\n      call: http\n      with:\n        method: get\n        endpoint: http://svc/hang\n";
    let mut s = Sim::new(load(&doc(body)));
    s.run(json!({}), |_| Reply::Never);
    let e = s.error();
    assert!(e.type_.ends_with("/errors/timeout"), "{e:?}");
    assert_eq!((e.status, e.instance.as_deref()), (408, Some("/do/0/slow")));
    assert_eq!(s.cancelled, vec![0]);
    assert_eq!(s.now - T0, 2_000);
}

#[test]
fn workflow_timeout() {
    let body = "timeout:\n  after:\n    seconds: 5\ndo:\n  - w:\n      wait: PT1H\n";
    let s = run(body, json!({}));
    let e = s.error();
    assert!(e.type_.ends_with("/errors/timeout"));
    assert_eq!(s.now - T0, 5_000);
}

#[test]
fn http_endpoint_placeholders_headers_query_and_auth() {
    // The workflow declares the secret it reads (dsl.md, Secret; see spec_points.rs).
    let body = r#"use:
  secrets: [token]
do:
  - get:
      call: http
      with:
        method: post
        endpoint:
          uri: http://svc/pets/{petId}
          authentication:
            bearer:
              token: ${ $secrets.token }
        headers:
          x-n: ${ .n }
        query:
          q: ${ .q }
        body:
          name: ${ .q }
"#;
    let s = run(body, json!({"petId": "a b", "n": 3, "q": "rex"}));
    let out = s.output();
    assert_eq!(out["method"], "POST");
    assert_eq!(out["uri"], "http://svc/pets/a%20b");
    assert_eq!(out["headers"], json!({"x-n": 3}));
    assert_eq!(out["query"], json!({"q": "rex"}));
    assert_eq!(out["body"], json!({"name": "rex"}));
    assert_eq!(out["auth"], json!({"scheme": "bearer", "token": "s3cret"}));
}

#[test]
fn emit_outputs_the_event() {
    let body = "do:\n  - e:\n      emit:\n        event:\n          with:\n            source: https://src\n            type: t.v1\n            data:\n              n: ${ .n }\n";
    let s = run(body, json!({"n": 7}));
    assert_eq!(
        s.output(),
        json!({"source": "https://src", "type": "t.v1", "data": {"n": 7}})
    );
}

#[test]
fn listen_one_all_and_any_until() {
    let ev = |t: &str, n: i64| json!({"type": t, "source": "s", "data": {"n": n}});
    let one = "do:\n  - l:\n      listen:\n        to:\n          one:\n            with:\n              type: b\n";
    let mut s = Sim::new(load(&doc(one)));
    s.events.extend([ev("a", 1), ev("b", 2)]);
    s.run(json!({}), echo);
    assert_eq!(s.output(), json!([{"n": 2}]));

    let all = "do:\n  - l:\n      listen:\n        to:\n          all:\n            - with:\n                type: a\n            - with:\n                type: b\n        read: envelope\n";
    let mut s = Sim::new(load(&doc(all)));
    s.events.extend([ev("b", 1), ev("b", 2), ev("a", 3)]);
    s.run(json!({}), echo);
    assert_eq!(s.output(), json!([ev("b", 1), ev("a", 3)]));

    let until = "do:\n  - l:\n      listen:\n        to:\n          any: []\n          until: ( . | length ) >= 3\n";
    let mut s = Sim::new(load(&doc(until)));
    s.events
        .extend([ev("a", 1), ev("b", 2), ev("c", 3), ev("d", 4)]);
    s.run(json!({}), echo);
    assert_eq!(s.output(), json!([{"n": 1}, {"n": 2}, {"n": 3}]));
}

#[test]
fn run_shell_request_is_fully_resolved() {
    let body = "do:\n  - sh:\n      run:\n        shell:\n          command: echo $1\n          arguments: [ '${ .who }' ]\n          environment:\n            GREETING: hi\n        return: all\n";
    let mut s = Sim::new(load(&doc(body)));
    let mut seen = None;
    s.run(json!({"who": "ada"}), |e| {
        seen = Some(e.clone());
        Reply::Now(Ok(json!({"code": 0, "stdout": "ada\n", "stderr": ""})))
    });
    let Some(Effect::Process(p)) = seen else {
        panic!("no process effect")
    };
    assert_eq!(p.arguments, json!(["ada"]));
    assert_eq!(p.environment["GREETING"], "hi");
    assert_eq!(p.return_, kflow_dsl::model::ReturnMode::All);
    assert_eq!(s.output()["code"], 0);
}

#[test]
fn unsupported_calls_fail_clearly() {
    let body = "do:\n  - g:\n      call: asyncapi\n      with:\n        document:\n          endpoint: file://app/api.yaml\n        operation: inbox\n        subscription:\n          consume:\n            amount: 1\n";
    let e = run(body, json!({})).error();
    assert!(
        e.detail
            .as_deref()
            .unwrap_or("")
            .contains("not supported yet"),
        "{e:?}"
    );
}

#[test]
fn grpc_and_worker_calls_become_resolved_effects() {
    let body = "use:\n  functions:\n    acme.resize:\n      call: worker\n      with:\n        queue: images\n        function: acme.resize\ndo:\n  - g:\n      call: grpc\n      with:\n        proto:\n          endpoint: file:///app/greet.proto\n        service:\n          name: greet.Greeter\n          host: localhost\n          port: 5011\n        method: SayHello\n        arguments:\n          name: ${ .who }\n  - w:\n      call: acme.resize\n      with:\n        url: ${ .name }\n";
    let mut s = Sim::new(load(&doc(body)));
    let mut seen = Vec::new();
    s.run(json!({"who": "ada"}), |e| {
        seen.push(e.clone());
        Reply::Now(Ok(json!({"name": "hello ada"})))
    });
    let [Effect::Grpc(g), Effect::Function(f)] = seen.as_slice() else {
        panic!("{seen:?}")
    };
    assert_eq!(
        (
            g.service.as_str(),
            g.host.as_str(),
            g.port,
            g.method.as_str()
        ),
        ("greet.Greeter", "localhost", 5011, "SayHello")
    );
    assert_eq!(g.proto, "file:///app/greet.proto");
    assert_eq!(g.arguments["name"], "ada");
    // The function's arguments are the call's `with`, as its input.
    assert_eq!(
        (f.queue.as_str(), f.function.as_str(), &f.arguments),
        ("images", "acme.resize", &json!({"url": "hello ada"}))
    );
}

#[test]
fn expression_errors_fault_with_the_expression_type() {
    let e = run(
        "do:\n  - a:\n      set:\n        x: ${ .a + 1 }\n",
        json!({"a": "text"}),
    )
    .error();
    assert!(e.type_.ends_with("/errors/expression"), "{e:?}");
    assert_eq!((e.status, e.instance.as_deref()), (400, Some("/do/0/a")));
}

#[test]
fn catch_then_jumps_after_a_handled_error() {
    let body = r#"do:
  - attempt:
      try:
        - fail:
            raise:
              error:
                type: https://serverlessworkflow.io/spec/1.0.0/errors/communication
                status: 503
      catch:
        errors:
          with:
            status: 503
        then: recordFailure
  - continueProcessing:
      set:
        status: ok
      then: end
  - recordFailure:
      set:
        status: failed
"#;
    let s = run(body, json!({}));
    assert_eq!(s.output(), json!({"status": "failed"}));
    assert!(!s.trace().iter().any(|t| t.ends_with(":continueProcessing")));
}

#[test]
fn listen_foreach_processes_each_event_in_order() {
    let body = r#"do:
  - l:
      listen:
        to:
          any:
            - with:
                type: order
          until: ( . | length ) >= 2
      foreach:
        item: ev
        at: i
        do:
          - note:
              set:
                seen: '${ [$i, $ev.id] }'
        output:
          as: ${ .seen }
"#;
    let mut s = Sim::new(load(&doc(body)));
    s.events.extend([
        json!({"type": "order", "data": {"id": 1}}),
        json!({"type": "other", "data": {"id": 9}}),
        json!({"type": "order", "data": {"id": 2}}),
    ]);
    s.run(json!({}), echo);
    assert_eq!(s.output(), json!([[0, 1], [1, 2]]));
}

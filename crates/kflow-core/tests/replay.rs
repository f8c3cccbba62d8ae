//! Recovery by replay: feeding an instance's journal to a fresh instance rebuilds the same
//! state, whatever step the "crash" happened at.

mod sim;

use serde_json::{Value, json};

use kflow_core::{Effect, Instance, InstanceConfig, Status, WfError};
use sim::{Reply, Sim, T0, load};

const WF: &str = r#"document:
  dsl: '1.0.3'
  namespace: test
  name: replay
  version: '1.0.0'
do:
  - prep:
      set:
        ids: [1, 2, 3]
  - each:
      for:
        each: id
        in: .ids
      do:
        - get:
            call: http
            with:
              method: get
              endpoint: ${ "http://svc/item/" + ($id | tostring) }
            output:
              as: '${ { got: ((.got // []) + [$id]) } }'
  - par:
      fork:
        branches:
          - slow:
              call: http
              with:
                method: get
                endpoint: http://svc/slow
          - retrying:
              try:
                - flaky:
                    call: http
                    with:
                      method: get
                      endpoint: http://svc/flaky
              catch:
                errors:
                  with:
                    status: 503
                retry:
                  delay: PT1S
                  backoff:
                    constant: {}
                  jitter:
                    from: PT0S
                    to: PT1S
                  limit:
                    attempt:
                      count: 3
  - nap:
      wait: PT10S
"#;

fn world() -> impl FnMut(&Effect) -> Reply {
    let mut flaky = 0;
    move |e| match e {
        Effect::Http(r) if r.uri.ends_with("/slow") => Reply::After(3_000, Ok(json!("slow"))),
        Effect::Http(r) if r.uri.ends_with("/flaky") => {
            flaky += 1;
            if flaky < 3 {
                Reply::After(10, Err(WfError::communication(503, "busy")))
            } else {
                Reply::Now(Ok(json!("fine")))
            }
        }
        Effect::Http(r) => Reply::After(5, Ok(json!({"uri": r.uri}))),
        _ => Reply::Now(Ok(Value::Null)),
    }
}

fn fresh() -> Instance {
    let cfg = InstanceConfig {
        id: "test-instance".into(),
        secrets: json!({"token": "s3cret"}),
        runtime: Value::Null,
        limits: Default::default(),
    };
    Instance::new(load(WF), cfg)
}

#[test]
fn replaying_any_prefix_of_the_journal_then_the_rest_gives_the_same_result() {
    let mut original = Sim::new(load(WF));
    original.run(json!({}), world());
    let Status::Completed(expected) = original.inst.status().clone() else {
        panic!("{:?}", original.inst.status())
    };
    assert_eq!(expected, json!(["slow", "fine"]));
    let journal = original.journal.clone();
    assert!(
        journal.len() > 8,
        "journal too short to be interesting: {}",
        journal.len()
    );

    for crash_at in 0..=journal.len() {
        // Before the crash: the first `crash_at` deliveries were committed.
        let mut inst = fresh();
        let mut started = Vec::new();
        let step = inst.start(json!({}), T0);
        started.extend(step.commands);
        for (id, d, t) in &journal[..crash_at] {
            started.extend(inst.deliver(*id, d.clone(), *t).commands);
        }
        // The effects still pending after replay are the ones a host must run again.
        let pending: Vec<u64> = inst.pending().into_iter().map(|(id, _, _)| id).collect();
        let later: Vec<u64> = journal[crash_at..].iter().map(|(id, _, _)| *id).collect();
        for id in &pending {
            assert!(
                later.contains(id),
                "crash at {crash_at}: pending effect {id} never answered later"
            );
        }
        // Recovery: the rest of the journal, as the re-run effects answer.
        for (id, d, t) in &journal[crash_at..] {
            inst.deliver(*id, d.clone(), *t);
        }
        assert_eq!(
            inst.status(),
            &Status::Completed(expected.clone()),
            "crash at {crash_at}"
        );
    }
}

#[test]
fn the_same_journal_produces_the_same_commands() {
    let mut a = Sim::new(load(WF));
    a.run(json!({}), world());
    let mut b = fresh();
    let mut commands = b.start(json!({}), T0).commands;
    for (id, d, t) in &a.journal {
        commands.extend(b.deliver(*id, d.clone(), *t).commands);
    }
    let started: Vec<(u64, Effect)> = commands
        .into_iter()
        .filter_map(|c| match c {
            kflow_core::Command::Start { id, effect, .. } => Some((id, effect)),
            _ => None,
        })
        .collect();
    assert_eq!(started, a.started);
}

#[test]
fn stale_and_unknown_deliveries_are_ignored() {
    let mut inst = fresh();
    inst.start(json!({}), T0);
    let step = inst.deliver(999, kflow_core::Delivery::Result(Ok(json!(1))), T0);
    assert!(step.commands.is_empty() && step.finished.is_none());
    assert_eq!(inst.status(), &Status::Running);
}

#[test]
fn cancel_cancels_every_pending_effect() {
    let mut inst = fresh();
    inst.start(json!({}), T0);
    let pending: Vec<u64> = inst.pending().into_iter().map(|(id, _, _)| id).collect();
    assert!(!pending.is_empty());
    let step = inst.cancel(T0 + 1);
    let cancelled: Vec<u64> = step
        .commands
        .iter()
        .filter_map(|c| match c {
            kflow_core::Command::Cancel { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, pending);
    assert_eq!(inst.status(), &Status::Cancelled);
}

/// Expressions that run out of their budgets, caught by `try`: the original run and the
/// replay must take the same (catch) path, since the budgets count work, not time.
const BUDGETS: &str = r#"document:
  dsl: '1.0.3'
  namespace: test
  name: budgets
  version: '1.0.0'
do:
  - before:
      call: http
      with:
        method: get
        endpoint: http://svc/before
  - steps:
      try:
        - count:
            set:
              n: '${ [range(0; 10000000)] | length }'
      catch:
        as: err
        do:
          - stepsCaught:
              set:
                steps: ${ $err.detail }
  - depth:
      try:
        - recurse:
            set:
              n: '${ def f: 1 + f; f }'
      catch:
        as: err
        do:
          - depthCaught:
              set: '${ . + { depth: $err.detail } }'
  - after:
      call: http
      with:
        method: get
        endpoint: http://svc/after
      output:
        as: '${ $input }'
"#;

#[test]
fn an_expression_over_its_budget_takes_the_same_path_in_a_replay() {
    let world = |_: &Effect| Reply::After(5, Ok(json!("ok")));
    let mut original = Sim::new(load(BUDGETS));
    original.run(json!({}), world);
    let expected = original.output();
    let steps = expected["steps"].as_str().unwrap_or_default();
    assert!(steps.contains("step budget of 1000000"), "{expected}");
    let depth = expected["depth"].as_str().unwrap_or_default();
    assert!(depth.contains("more than 2000 nested calls"), "{expected}");
    let trace = original.trace();
    assert!(
        trace.contains(&"task.started:stepsCaught".to_string()),
        "{trace:?}"
    );
    assert!(
        trace.contains(&"task.started:depthCaught".to_string()),
        "{trace:?}"
    );
    assert_eq!(original.journal.len(), 2);

    // replay the start and the deliveries into a fresh instance, twice
    for _ in 0..2 {
        let inst = &mut Sim::new(load(BUDGETS)).inst;
        let mut notices = inst.start(json!({}), T0).notices;
        for (id, d, t) in &original.journal {
            notices.extend(inst.deliver(*id, d.clone(), *t).notices);
        }
        assert_eq!(inst.status(), &Status::Completed(expected.clone()));
        let replayed: Vec<String> = notices
            .iter()
            .filter_map(|n| {
                let (name, _) = n.task.as_ref()?;
                Some(format!("{}:{name}", n.kind.as_str()))
            })
            .collect();
        assert_eq!(replayed, trace);
    }
}

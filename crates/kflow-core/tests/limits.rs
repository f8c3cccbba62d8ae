//! Work budgets: an instance yields to its host every `tasks_per_turn` tasks, faults (as a
//! whole, past any `try`) after `max_tasks`, and both happen at the same tasks on replay.

use std::sync::Arc;

use serde_json::{Value, json};

use kflow_core::{Command, Delivery, Effect, Instance, InstanceConfig, Limits, Status, Step};

const SPIN: &str = "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: spin\n  version: '1.0.0'\ndo:\n  - spin:\n      set:\n        x: 1\n      then: spin\n";

const CAUGHT_SPIN: &str = "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: caught\n  version: '1.0.0'\ndo:\n  - guard:\n      try:\n        - spin:\n            set:\n              x: 1\n            then: spin\n      catch:\n        do:\n          - recovered:\n              set:\n                recovered: true\n";

fn instance(doc: &str, limits: Limits) -> Instance {
    let wf = Arc::new(kflow_dsl::load(doc.as_bytes()).expect("valid"));
    Instance::new(
        wf,
        InstanceConfig {
            id: "limits-test".into(),
            secrets: Value::Null,
            runtime: Value::Null,
            limits,
        },
    )
}

fn yields(step: &Step) -> Vec<u64> {
    step.commands
        .iter()
        .filter_map(|c| match c {
            Command::Start {
                id,
                effect: Effect::Yield,
                ..
            } => Some(*id),
            _ => None,
        })
        .collect()
}

fn task_starts(step: &Step) -> usize {
    step.notices
        .iter()
        .filter(|n| n.kind == kflow_core::NoticeKind::TaskStarted)
        .count()
}

/// Runs to the end answering every yield at once; returns the journal of deliveries.
fn run_to_end(inst: &mut Instance, max_turns: usize) -> (Vec<(u64, Delivery)>, Vec<Step>) {
    let mut journal = Vec::new();
    let mut steps = vec![inst.start(json!({}), 1_000)];
    for turn in 0..max_turns {
        let last = steps.last().expect("a step");
        if last.finished.is_some() {
            return (journal, steps);
        }
        let y = yields(last);
        assert_eq!(y.len(), 1, "turn {turn}: one yield per turn");
        let d = Delivery::Result(Ok(Value::Null));
        journal.push((y[0], d.clone()));
        steps.push(inst.deliver(y[0], d, 1_000 + turn as i64));
    }
    panic!("did not finish within {max_turns} turns");
}

#[test]
fn an_endless_loop_yields_every_turn_budget() {
    let mut inst = instance(
        SPIN,
        Limits {
            tasks_per_turn: 50,
            max_tasks: u64::MAX,
        },
    );
    let mut step = inst.start(json!({}), 0);
    for turn in 0..20 {
        assert_eq!(task_starts(&step), 50, "turn {turn}");
        let y = yields(&step);
        assert_eq!(y.len(), 1, "turn {turn}");
        assert!(step.finished.is_none());
        step = inst.deliver(y[0], Delivery::Result(Ok(Value::Null)), turn);
    }
    assert_eq!(*inst.status(), Status::Running);
}

#[test]
fn the_life_budget_faults_the_instance_past_any_try() {
    for doc in [SPIN, CAUGHT_SPIN] {
        let mut inst = instance(
            doc,
            Limits {
                tasks_per_turn: 100,
                max_tasks: 1_000,
            },
        );
        let (_, steps) = run_to_end(&mut inst, 100);
        let total: usize = steps.iter().map(task_starts).sum();
        assert!(total <= 1_000, "{total}");
        let Some(Err(e)) = &steps.last().expect("steps").finished else {
            panic!("{doc}: not faulted: {:?}", inst.status());
        };
        assert!(
            e.to_string().contains("limit of 1000 task executions"),
            "{e}"
        );
        assert!(matches!(inst.status(), Status::Faulted(_)));
        assert!(inst.pending().is_empty(), "nothing left running");
    }
}

#[test]
fn yields_and_the_fault_replay_identically() {
    let limits = Limits {
        tasks_per_turn: 7,
        max_tasks: 300,
    };
    let mut live = instance(CAUGHT_SPIN, limits);
    let (journal, live_steps) = run_to_end(&mut live, 1_000);
    let mut replayed = instance(CAUGHT_SPIN, limits);
    let mut steps = vec![replayed.start(json!({}), 1_000)];
    for (turn, (id, d)) in journal.into_iter().enumerate() {
        steps.push(replayed.deliver(id, d, 1_000 + turn as i64));
    }
    assert_eq!(live.status(), replayed.status());
    assert_eq!(live_steps.len(), steps.len());
    for (a, b) in live_steps.iter().zip(&steps) {
        assert_eq!(a.commands, b.commands);
        assert_eq!(a.notices, b.notices);
    }
}

#[test]
fn a_host_fault_ends_the_instance_and_cancels_its_effects() {
    let doc = "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: w\n  version: '1.0.0'\ndo:\n  - nap:\n      wait: PT1H\n";
    let mut inst = instance(doc, Limits::default());
    let step = inst.start(json!({}), 0);
    assert_eq!(step.commands.len(), 1);
    let step = inst.fault(kflow_core::WfError::runtime("history too long"), 5);
    assert!(
        matches!(step.commands.as_slice(), [Command::Cancel { id: 0 }]),
        "{:?}",
        step.commands
    );
    assert!(matches!(&step.finished, Some(Err(e)) if e.to_string().contains("history too long")));
    assert!(matches!(inst.status(), Status::Faulted(_)));
}

//! The `dag` task (a kflow extension): subtasks scheduled by their dependencies.
//!
//! The semantics are documented on [`kflow_dsl::model::DagDef`]. In short: a subtask is
//! decided once every task it needs is done; its trigger rule then says run or skip; running
//! subtasks are polled in declaration order (like fork branches), so the same deliveries
//! always give the same effect ids; failures cancel nothing; at the end the dag faults with
//! the first (in declaration order) failure that no dependent ran after, or outputs
//! `{name: output}` of the subtasks that succeeded.
//!
//! Bookkeeping is incremental: each subtask counts its dependencies not yet done, and a
//! subtask that finishes decrements its dependents' counts, so scheduling costs O(tasks +
//! edges) over the whole run, plus one poll of every running subtask per wake-up.

use std::collections::BTreeSet;
use std::task::Poll;

use serde_json::{Map, Value, json};

use kflow_dsl::model::{DagDef, NamedTask};

use super::{Cx, KindResult, Scope, TaskInfo, run_task};
use crate::error::WfError;
use crate::exec::BoxFut;
use crate::notice::NoticeKind;

enum State {
    Waiting,
    Running(BoxFut<Result<Value, WfError>>),
    Succeeded(Value),
    Failed(WfError),
    Skipped,
}

impl State {
    fn is_done(&self) -> bool {
        matches!(
            self,
            State::Succeeded(_) | State::Failed(_) | State::Skipped
        )
    }
}

struct Run<'a> {
    cx: &'a Cx,
    dag: &'a DagDef,
    input: &'a Value,
    states: Vec<State>,
    /// Dependencies not done yet, per subtask.
    remaining: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    /// Subtasks that were started (their trigger held and their `if` was true).
    ran: Vec<bool>,
    /// Decidable subtasks (every dependency done), in declaration order.
    ready: BTreeSet<usize>,
    running: BTreeSet<usize>,
    done: usize,
}

impl Run<'_> {
    fn finish(&mut self, i: usize, state: State) {
        debug_assert!(state.is_done());
        self.states[i] = state;
        self.running.remove(&i);
        self.done += 1;
        for k in 0..self.dependents[i].len() {
            let d = self.dependents[i][k];
            self.remaining[d] -= 1;
            if self.remaining[d] == 0 {
                self.ready.insert(d);
            }
        }
    }

    /// Subtask `i` has every dependency done: start it or skip it.
    fn decide(&mut self, i: usize) {
        let named = &self.dag.tasks[i];
        let node = &self.dag.nodes[i];
        let (mut succeeded, mut failed) = (0, 0);
        let mut needs = Map::new();
        for &j in &node.needs {
            let value = match &self.states[j] {
                State::Succeeded(v) => {
                    succeeded += 1;
                    v.clone()
                }
                State::Failed(e) => {
                    failed += 1;
                    e.to_value()
                }
                _ => Value::Null,
            };
            needs.insert(self.dag.tasks[j].name.clone(), value);
        }
        if !node.trigger.holds(succeeded, failed, node.needs.len()) {
            let reason = format!("trigger '{}' does not hold", node.trigger.name());
            self.cx.notice(
                NoticeKind::TaskSkipped,
                Some(named),
                Some(json!({ "reason": reason })),
            );
            self.finish(i, State::Skipped);
            return;
        }
        let icx = self.cx.with_var("needs", Value::Object(needs));
        // A false `if` makes a skipped subtask here (not a pass-through as in a task list), so
        // that its dependents see it skipped. run_task evaluates the same condition again.
        if let Some(cond) = &named.task.if_ {
            let info = TaskInfo {
                named,
                raw_input: self.input,
                raw_output: None,
                started_ms: icx.sh.now(),
            };
            let scope = Scope {
                cx: &icx,
                input: None,
                output: None,
                task: Some(&info),
                authorization: None,
            };
            match icx.eval_bool(cond, self.input, &scope) {
                Ok(true) => {}
                Ok(false) => {
                    self.cx.notice(NoticeKind::TaskSkipped, Some(named), None);
                    self.finish(i, State::Skipped);
                    return;
                }
                Err(e) => {
                    let e = e.at(&named.reference);
                    self.cx
                        .notice(NoticeKind::TaskFaulted, Some(named), Some(e.to_value()));
                    self.finish(i, State::Failed(e));
                    return;
                }
            }
        }
        let (list, input) = (self.dag.tasks.clone(), self.input.clone());
        // A subtask's own flow (a `then: end` from a nested list) stays inside the subtask.
        let fut: BoxFut<Result<Value, WfError>> =
            Box::pin(async move { Ok(run_task(icx, list, i, input).await?.0) });
        self.states[i] = State::Running(fut);
        self.ran[i] = true;
        self.running.insert(i);
    }

    /// The result once every subtask is done.
    fn result(&mut self) -> KindResult {
        let mut out = Map::new();
        let mut fault: Option<WfError> = None;
        for i in 0..self.states.len() {
            match std::mem::replace(&mut self.states[i], State::Skipped) {
                State::Succeeded(v) => {
                    out.insert(self.dag.tasks[i].name.clone(), v);
                }
                State::Failed(e)
                    if fault.is_none() && !self.dependents[i].iter().any(|&d| self.ran[d]) =>
                {
                    fault = Some(e)
                }
                _ => {}
            }
        }
        match fault {
            Some(e) => Err(e),
            None => Ok((Value::Object(out), None, None)),
        }
    }
}

pub(super) async fn dag(cx: &Cx, _named: &NamedTask, d: &DagDef, input: &Value) -> KindResult {
    let n = d.tasks.len();
    let mut dependents = vec![Vec::new(); n];
    for (i, node) in d.nodes.iter().enumerate() {
        for &j in &node.needs {
            dependents[j].push(i);
        }
    }
    let remaining: Vec<usize> = d.nodes.iter().map(|node| node.needs.len()).collect();
    let mut run = Run {
        cx,
        dag: d,
        input,
        states: (0..n).map(|_| State::Waiting).collect(),
        ready: (0..n).filter(|&i| remaining[i] == 0).collect(),
        remaining,
        dependents,
        ran: vec![false; n],
        running: BTreeSet::new(),
        done: 0,
    };
    std::future::poll_fn(move |pcx| {
        loop {
            while let Some(i) = run.ready.pop_first() {
                run.decide(i);
            }
            let order: Vec<usize> = run.running.iter().copied().collect();
            for i in order {
                let State::Running(fut) = &mut run.states[i] else {
                    continue;
                };
                match fut.as_mut().poll(pcx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(v)) => run.finish(i, State::Succeeded(v)),
                    Poll::Ready(Err(e)) => run.finish(i, State::Failed(e)),
                }
            }
            if run.done == n {
                return Poll::Ready(run.result());
            }
            // Subtasks that became decidable start now; otherwise wait for a delivery.
            if run.ready.is_empty() {
                return Poll::Pending;
            }
        }
    })
    .await
}

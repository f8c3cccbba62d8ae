//! A deterministic in-memory host for core tests: virtual time, scripted answers, a journal.
// Each test binary uses a different part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;

use kflow_core::{
    Command, Delivery, Effect, EffectId, Instance, InstanceConfig, Notice, Status, Step, WfError,
};

pub fn load(yaml: &str) -> Arc<kflow_dsl::Workflow> {
    match kflow_dsl::load(yaml.as_bytes()) {
        Ok(wf) => Arc::new(wf),
        Err(d) => panic!("test workflow is invalid: {d:?}"),
    }
}

/// What the scripted world answers to an effect.
pub enum Reply {
    Now(Result<Value, WfError>),
    /// Never answer (the task hangs until cancelled or timed out).
    Never,
    /// Answer after `ms` of virtual time.
    After(u64, Result<Value, WfError>),
}

pub struct Sim {
    pub inst: Instance,
    pub now: i64,
    pub notices: Vec<Notice>,
    pub started: Vec<(EffectId, Effect)>,
    pub cancelled: Vec<EffectId>,
    /// Every delivery in order, with its time: the instance's history.
    pub journal: Vec<(EffectId, Delivery, i64)>,
    /// Answers due: (at, id, delivery).
    due: Vec<(i64, EffectId, Delivery)>,
    pub events: VecDeque<Value>,
    pub finished: Option<Result<Value, WfError>>,
}

pub const T0: i64 = 1_700_000_000_000;

impl Sim {
    pub fn new(wf: Arc<kflow_dsl::Workflow>) -> Sim {
        let cfg = InstanceConfig {
            id: "test-instance".into(),
            secrets: serde_json::json!({"token": "s3cret"}),
            runtime: Value::Null,
            limits: Default::default(),
        };
        Sim {
            inst: Instance::new(wf, cfg),
            now: T0,
            notices: vec![],
            started: vec![],
            cancelled: vec![],
            journal: vec![],
            due: vec![],
            events: VecDeque::new(),
            finished: None,
        }
    }

    fn absorb(&mut self, step: Step, reply: &mut dyn FnMut(&Effect) -> Reply) {
        self.notices.extend(step.notices);
        for c in step.commands {
            match c {
                Command::Start { id, effect, .. } => {
                    self.started.push((id, effect.clone()));
                    match &effect {
                        Effect::Timer { at_ms } => {
                            self.due
                                .push((*at_ms, id, Delivery::Result(Ok(Value::Null))))
                        }
                        Effect::Yield => {
                            self.due
                                .push((self.now, id, Delivery::Result(Ok(Value::Null))))
                        }
                        Effect::Listen { .. } => {
                            for ev in self.events.drain(..) {
                                self.due.push((self.now, id, Delivery::Event(ev)));
                            }
                        }
                        _ => match reply(&effect) {
                            Reply::Now(r) => self.due.push((self.now, id, Delivery::Result(r))),
                            Reply::After(ms, r) => {
                                self.due
                                    .push((self.now + ms as i64, id, Delivery::Result(r)))
                            }
                            Reply::Never => {}
                        },
                    }
                }
                Command::Cancel { id } => {
                    self.cancelled.push(id);
                    self.due.retain(|(_, d, _)| *d != id);
                }
            }
        }
        if let Some(f) = step.finished {
            self.finished = Some(f);
        }
    }

    /// Runs to the end (or until nothing is due), answering effects with `reply`.
    pub fn run(&mut self, input: Value, mut reply: impl FnMut(&Effect) -> Reply) -> &Status {
        let step = self.inst.start(input, self.now);
        self.absorb(step, &mut reply);
        while self.finished.is_none() {
            // Earliest due first; ties in the order they were scheduled.
            let Some(i) = (0..self.due.len()).min_by_key(|&i| (self.due[i].0, i)) else {
                break;
            };
            let (at, id, d) = self.due.remove(i);
            self.now = self.now.max(at);
            self.journal.push((id, d.clone(), self.now));
            let step = self.inst.deliver(id, d, self.now);
            self.absorb(step, &mut reply);
        }
        self.inst.status()
    }

    pub fn output(&self) -> Value {
        match self.inst.status() {
            Status::Completed(v) => v.clone(),
            other => panic!("workflow did not complete: {other:?}"),
        }
    }

    pub fn error(&self) -> WfError {
        match self.inst.status() {
            Status::Faulted(e) => e.clone(),
            other => panic!("workflow did not fault: {other:?}"),
        }
    }

    /// `type:task` for each task notice, in order.
    pub fn trace(&self) -> Vec<String> {
        self.notices
            .iter()
            .filter_map(|n| {
                n.task
                    .as_ref()
                    .map(|(name, _)| format!("{}:{name}", n.kind.as_str()))
            })
            .collect()
    }
}

/// An echo world: http calls answer with their request, processes with their arguments.
pub fn echo(e: &Effect) -> Reply {
    match e {
        Effect::Http(r) => Reply::Now(Ok(serde_json::to_value(r).unwrap_or(Value::Null))),
        Effect::Emit { event } => Reply::Now(Ok(event.clone())),
        _ => Reply::Now(Ok(Value::Null)),
    }
}

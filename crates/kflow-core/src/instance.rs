//! One workflow instance: the public face of the core.
//!
//! The host calls [`Instance::start`] once, then [`Instance::deliver`] for every effect result
//! or event, passing the current time each time. Each call returns [`Step`]: the commands to
//! carry out, the lifecycle notices, and the final result when the workflow ended. Feeding the
//! same start and deliveries (with the same times) to a new instance rebuilds the same state:
//! that is recovery by replay.

use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::{Value, json};

use kflow_dsl::model::Workflow;

use crate::effect::{Command, Delivery, Effect, EffectId};
use crate::error::WfError;
use crate::exec::{BoxFut, Sh};
use crate::interp::{Cx, Env, run_workflow};
use crate::notice::{Notice, NoticeKind};
use crate::time;

/// Everything an instance needs from outside that is not part of its history.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// The instance id (`$workflow.id`); also seeds retry jitter.
    pub id: String,
    /// `$secrets`: never journaled, supplied again on recovery.
    pub secrets: Value,
    /// `$runtime`.
    pub runtime: Value,
    /// Work budgets (the same on every replay of the instance).
    pub limits: Limits,
}

/// How much work an instance may do. Both budgets count task starts, which are a function of
/// the history alone, so replay reaches the same decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tasks one call into the instance ([`Instance::start`], [`Instance::deliver`]) may start
    /// before it yields to its host with an [`Effect::Yield`]: a loop that never waits still
    /// lets the host record its progress and serve other instances.
    pub tasks_per_turn: u32,
    /// Tasks the instance may start in its whole life; past it the instance faults with a
    /// runtime error naming the limit (a `try` cannot catch it).
    pub max_tasks: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tasks_per_turn: 100,
            max_tasks: 250_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pending,
    Running,
    Completed(Value),
    Faulted(WfError),
    Cancelled,
}

impl Status {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Status::Completed(_) | Status::Faulted(_) | Status::Cancelled
        )
    }
}

/// What one call into the instance produced.
#[derive(Debug, Default)]
pub struct Step {
    pub commands: Vec<Command>,
    pub notices: Vec<Notice>,
    /// Set once, when the workflow completes or faults.
    pub finished: Option<Result<Value, WfError>>,
}

pub struct Instance {
    wf: Arc<Workflow>,
    config: InstanceConfig,
    sh: Sh,
    root: Option<BoxFut<Result<Value, WfError>>>,
    status: Status,
}

fn seed(id: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Instance {
    pub fn new(wf: Arc<Workflow>, config: InstanceConfig) -> Instance {
        Instance {
            wf,
            config,
            sh: Sh::default(),
            root: None,
            status: Status::Pending,
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Effects started and not yet answered: after a replay, the host runs these again.
    pub fn pending(&self) -> Vec<(EffectId, String, Effect)> {
        self.sh
            .lock()
            .pending
            .iter()
            .map(|(id, (task, e))| (*id, task.clone(), e.clone()))
            .collect()
    }

    /// Whether everything the instance waits for is a timer or an event (nothing in progress).
    pub fn only_waiting(&self) -> bool {
        self.sh
            .lock()
            .pending
            .values()
            .all(|(_, e)| matches!(e, Effect::Timer { .. } | Effect::Listen { .. }))
    }

    /// The task (its reference) of a started, unanswered effect.
    pub fn task_of(&self, id: EffectId) -> Option<String> {
        self.sh
            .lock()
            .pending
            .get(&id)
            .map(|(task, _)| task.clone())
    }

    /// Whether effect `id` is started and not yet answered.
    pub fn is_pending(&self, id: EffectId) -> bool {
        self.sh.lock().pending.contains_key(&id)
    }

    /// Starts the workflow with its raw input at time `now_ms`.
    pub fn start(&mut self, input: Value, now_ms: i64) -> Step {
        if self.root.is_some() || self.status.is_finished() {
            return Step::default();
        }
        {
            let mut s = self.sh.lock();
            s.now = now_ms;
            s.rng = seed(&self.config.id);
            s.limits = self.config.limits;
        }
        let env = Arc::new(Env {
            wf: self.wf.clone(),
            secrets: self.config.secrets.clone(),
            runtime: self.config.runtime.clone(),
            workflow_desc: json!({
                "id": self.config.id,
                "definition": *self.wf.definition,
                "input": input,
                "startedAt": time::descriptor(now_ms),
            }),
        });
        let cx = Cx::new(self.sh.clone(), env);
        self.sh.notice(Notice {
            kind: NoticeKind::WorkflowStarted,
            task: None,
            time_ms: now_ms,
            detail: None,
        });
        self.root = Some(Box::pin(run_workflow(cx, input)));
        self.status = Status::Running;
        self.poll()
    }

    /// Hands the host's answer for effect `id` to the workflow. Answers for effects that are
    /// no longer pending (cancelled, or already answered) are ignored.
    pub fn deliver(&mut self, id: EffectId, delivery: Delivery, now_ms: i64) -> Step {
        if self.status.is_finished() {
            return Step::default();
        }
        self.sh.lock().now = now_ms;
        let accepted = match delivery {
            Delivery::Result(r) => self.sh.deliver_result(id, r),
            Delivery::Event(ev) => self.sh.deliver_event(id, ev),
        };
        if !accepted {
            return Step::default();
        }
        self.poll()
    }

    /// Cancels the instance: every pending effect gets a cancel command.
    pub fn cancel(&mut self, now_ms: i64) -> Step {
        if self.status.is_finished() {
            return Step::default();
        }
        self.sh.lock().now = now_ms;
        self.root = None; // dropping the futures cancels their effects
        self.status = Status::Cancelled;
        self.sh.notice(Notice {
            kind: NoticeKind::WorkflowCancelled,
            task: None,
            time_ms: now_ms,
            detail: None,
        });
        self.drain(None)
    }

    /// Faults the instance from outside (a limit the host enforces, such as the length of
    /// its history): every pending effect gets a cancel command, and the step carries the
    /// error as the result. A `try` in the workflow does not see it.
    pub fn fault(&mut self, error: WfError, now_ms: i64) -> Step {
        if self.status.is_finished() {
            return Step::default();
        }
        self.sh.lock().now = now_ms;
        self.root = None;
        self.finish_faulted(error, now_ms)
    }

    fn finish_faulted(&mut self, error: WfError, now_ms: i64) -> Step {
        self.sh.notice(Notice {
            kind: NoticeKind::WorkflowFaulted,
            task: None,
            time_ms: now_ms,
            detail: Some(error.to_value()),
        });
        self.status = Status::Faulted(error.clone());
        self.drain(Some(Err(error)))
    }

    fn poll(&mut self) -> Step {
        let Some(root) = self.root.as_mut() else {
            return Step::default();
        };
        self.sh.lock().turn_tasks = 0;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = root.as_mut().poll(&mut cx);
        let exhausted = self.sh.lock().exhausted.take();
        if let (Poll::Pending, Some(error)) = (&polled, exhausted) {
            // A life budget ran out: the whole instance faults, whatever `try` it is in.
            self.root = None;
            let now = self.sh.now();
            return self.finish_faulted(error, now);
        }
        let finished = match polled {
            Poll::Pending => None,
            Poll::Ready(r) => {
                self.root = None;
                let now = self.sh.now();
                let (kind, detail) = match &r {
                    Ok(_) => (NoticeKind::WorkflowCompleted, None),
                    Err(e) => (NoticeKind::WorkflowFaulted, Some(e.to_value())),
                };
                self.sh.notice(Notice {
                    kind,
                    task: None,
                    time_ms: now,
                    detail,
                });
                self.status = match &r {
                    Ok(v) => Status::Completed(v.clone()),
                    Err(e) => Status::Faulted(e.clone()),
                };
                Some(r)
            }
        };
        self.drain(finished)
    }

    fn drain(&mut self, finished: Option<Result<Value, WfError>>) -> Step {
        let mut s = self.sh.lock();
        Step {
            commands: std::mem::take(&mut s.commands),
            notices: std::mem::take(&mut s.notices),
            finished,
        }
    }
}

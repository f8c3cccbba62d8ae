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

    fn poll(&mut self) -> Step {
        let Some(root) = self.root.as_mut() else {
            return Step::default();
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let finished = match root.as_mut().poll(&mut cx) {
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

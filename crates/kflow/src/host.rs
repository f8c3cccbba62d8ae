//! The in-process host for `kflow run`: drives one instance of the core to its end.
//!
//! It performs the core's effects on a tokio runtime: calls and processes through
//! `kflow-tasks`, timers with tokio sleeps, `listen` from the `--events` file, sub-workflows
//! as child instances. Nothing is persisted here; the durable server is another host of the
//! same core.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use kflow_core::events::Subscription;
use kflow_core::{Command, Delivery, Effect, EffectId, Instance, InstanceConfig, Step, WfError};
use kflow_dsl::Workflow;
use kflow_tasks::{EffectCtx, ExecConfig, Executor};

use crate::inputs::Registry;

/// How deep `run: workflow` may nest before kflow refuses (a workflow starting itself).
const MAX_DEPTH: usize = 32;

pub struct Host {
    registry: Registry,
    events: Mutex<VecDeque<Value>>,
    secrets: Value,
    trace: bool,
    executor: Executor,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Host {
    pub fn new(registry: Registry, events: Vec<Value>, secrets: Value, trace: bool) -> Arc<Host> {
        Arc::new(Host {
            registry,
            events: Mutex::new(events.into()),
            secrets,
            trace,
            executor: Executor::new(ExecConfig::default()),
        })
    }

    pub async fn run_root(
        self: Arc<Self>,
        wf: Arc<Workflow>,
        input: Value,
    ) -> Result<Value, WfError> {
        self.run(wf, input, 0).await
    }

    fn run(
        self: Arc<Self>,
        wf: Arc<Workflow>,
        input: Value,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, WfError>> + Send>> {
        Box::pin(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let config = InstanceConfig {
                id: id.clone(),
                secrets: self.secrets.clone(),
                runtime: kflow_tasks::emit::runtime_descriptor(),
                limits: kflow_core::Limits::default(),
            };
            let mut inst = Instance::new(wf, config);
            let (tx, mut rx) = mpsc::unbounded_channel::<(EffectId, Delivery)>();
            let mut run = Run {
                host: self.clone(),
                instance_id: id,
                depth,
                tx,
                tasks: HashMap::new(),
                subs: HashMap::new(),
                ready: VecDeque::new(),
            };
            let mut step = inst.start(input, now_ms());
            loop {
                if let Some(done) = run.handle(step) {
                    return done;
                }
                let next = match run.ready.pop_front() {
                    Some(x) => Some(x),
                    None if run.tasks.is_empty() => None,
                    None => rx.recv().await,
                };
                let Some((id, delivery)) = next else {
                    // Only `listen` tasks are left and no event can come any more.
                    let waiting: Vec<String> = run.subs.values().cloned().collect();
                    return Err(WfError::runtime(format!(
                        "the workflow waits for events that never came (listen tasks: {}); pass them with --events",
                        waiting.join(", ")
                    )));
                };
                run.tasks.remove(&id);
                step = inst.deliver(id, delivery, now_ms());
            }
        })
    }
}

/// The state of one running instance on this host.
struct Run {
    host: Arc<Host>,
    instance_id: String,
    depth: usize,
    tx: mpsc::UnboundedSender<(EffectId, Delivery)>,
    /// Effects being performed (calls, processes, timers, sub-workflows).
    tasks: HashMap<EffectId, JoinHandle<()>>,
    /// Open `listen` subscriptions: their task references.
    subs: HashMap<EffectId, String>,
    /// Deliveries available at once (emitted events, queued events for a new listen).
    ready: VecDeque<(EffectId, Delivery)>,
}

impl Run {
    /// Carries out a step's commands; `Some` when the workflow finished.
    fn handle(&mut self, step: Step) -> Option<Result<Value, WfError>> {
        if self.host.trace {
            for n in &step.notices {
                let mut line = n.to_json();
                if self.depth > 0 {
                    line["instance"] = Value::String(self.instance_id.clone());
                }
                eprintln!("{line}");
            }
        }
        for c in step.commands {
            match c {
                Command::Start { id, task, effect } => self.start(id, task, effect),
                Command::Cancel { id } => {
                    if let Some(h) = self.tasks.remove(&id) {
                        h.abort();
                    }
                    self.subs.remove(&id);
                }
            }
        }
        if let Some(done) = step.finished {
            for (_, h) in self.tasks.drain() {
                h.abort();
            }
            return Some(done);
        }
        None
    }

    fn spawn(
        &mut self,
        id: EffectId,
        fut: impl std::future::Future<Output = Result<Value, WfError>> + Send + 'static,
    ) {
        let tx = self.tx.clone();
        let h = tokio::spawn(async move {
            let r = fut.await;
            let _ = tx.send((id, Delivery::Result(r)));
        });
        self.tasks.insert(id, h);
    }

    fn start(&mut self, id: EffectId, task: String, effect: Effect) {
        match effect {
            Effect::Http(_)
            | Effect::OpenApi(_)
            | Effect::Grpc(_)
            | Effect::Function(_)
            | Effect::AsyncApi(_)
            | Effect::Process(_) => {
                let exec = self.host.executor.clone();
                let ctx = EffectCtx {
                    instance_id: self.instance_id.clone(),
                    effect_id: id,
                    task,
                    attempt: 1,
                    namespace: String::new(),
                    limits: Default::default(),
                    traceparent: None,
                };
                self.spawn(id, async move { exec.perform(&ctx, &effect).await });
            }
            Effect::Timer { at_ms } => {
                let wait = (at_ms - now_ms()).max(0) as u64;
                self.spawn(id, async move {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    Ok(Value::Null)
                });
            }
            // One run, one instance: nothing else to serve; continue at once.
            Effect::Yield => self
                .ready
                .push_back((id, Delivery::Result(Ok(Value::Null)))),
            Effect::Emit { event } => {
                let event = kflow_tasks::emit::complete_event(event, &self.instance_id, now_ms());
                self.ready.push_back((id, Delivery::Result(Ok(event))));
            }
            Effect::Listen { filters, args } => {
                // Hand over every queued event this subscription matches, in file order: the
                // events the instance takes (`kflow_core::events`); the others stay queued.
                let sub = Subscription::new(&filters, args.as_ref());
                let mut queue = self.host.events.lock().unwrap_or_else(|p| p.into_inner());
                let mut keep = VecDeque::with_capacity(queue.len());
                while let Some(ev) = queue.pop_front() {
                    if sub.matches(&ev) {
                        self.ready.push_back((id, Delivery::Event(ev)));
                    } else {
                        keep.push_back(ev);
                    }
                }
                *queue = keep;
                drop(queue);
                // The subscription stays open; when the events run out the run loop notices.
                self.subs.insert(id, task);
            }
            Effect::Workflow {
                namespace,
                name,
                version,
                input,
            } => {
                let key = (namespace.clone(), name.clone(), version.clone());
                let child = self.host.registry.get(&key).cloned();
                let host = self.host.clone();
                let depth = self.depth + 1;
                self.spawn(id, async move {
                    let Some(wf) = child else {
                        return Err(WfError::configuration(format!(
                            "run workflow: {namespace}/{name}@{version} is not known (pass its folder with --workflows)"
                        )));
                    };
                    if depth > MAX_DEPTH {
                        return Err(WfError::runtime(format!("run workflow: nesting deeper than {MAX_DEPTH} levels")));
                    }
                    host.run(wf, input, depth).await
                });
            }
        }
    }
}

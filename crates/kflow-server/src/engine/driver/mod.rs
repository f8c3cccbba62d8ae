//! The driver: the one task that changes instances.
//!
//! Messages are taken in batches. Each message is applied to its instance's core (replayed from
//! the history when not in memory), producing a [`Commit`]; the whole batch is written in one
//! transaction (group commit); only after it is durable does the driver reply, dispatch the new
//! effects and publish live events. If the write fails, the instances it touched are dropped
//! from memory (they will be replayed from what *was* committed) and callers get the error.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use kflow_core::events::Subscription;
use kflow_core::{Command, Delivery, Effect, Status, Step, WfError};
use kflow_dsl::Workflow;
use kflow_store::{Commit, HistoryEvent, Instance, InstanceStatus, WorkItem};

use super::journal::Record;

use super::dispatch::{child_error, complete_event};
use super::queue::{Item, hints};
use super::timers::Timers;

mod admission;
mod control;
mod effects;
mod io;
mod isolation;
mod protection;
mod recovery;
mod retry;
mod starts;
#[cfg(test)]
mod tests;

pub(super) use io::spawn;

use protection::{stored_effect, task_limits};

use isolation::{needs_attention, panic_message};

/// Batches of at most this many rows are committed on the driver's thread (see `commit`).
const INLINE_COMMIT_ROWS: usize = 64;

/// How long the driver waits before it asks a failing store again.
const RECOVERY_BACKOFF_MS: i64 = 200;

/// How often expired idempotency keys are pruned.
const PRUNE_EVERY_MS: i64 = 60_000;
use super::{EngineError, Result, Shared};

pub enum Msg {
    /// `id: Some` starts at most once: an instance with that id already existing is the answer.
    Start {
        id: Option<String>,
        /// An `Idempotency-Key` (or a client-chosen id): the same request again answers the
        /// same instance; another request with it is refused.
        dedupe: Option<super::Dedupe>,
        wf: Arc<Workflow>,
        input: Value,
        priority: Option<i64>,
        /// The audit entry of this start, written in the commit that creates the instance
        /// (its resource and namespace are filled in here).
        audit: Option<kflow_store::AuditEntry>,
        /// The caller's W3C `traceparent` (validated).
        trace: Option<String>,
        reply: oneshot::Sender<Result<super::Started>>,
    },
    Deliver {
        instance: String,
        effect: u64,
        delivery: Delivery,
        /// Answered once the delivery is committed (a remote worker's report).
        ack: Option<oneshot::Sender<Result<()>>>,
        /// When a worker took the effect (its lease): recorded with the result, so that queue
        /// wait and run time read apart from history.
        leased_ms: Option<i64>,
    },
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<Instance>>,
    },
    Suspend {
        id: String,
        reply: oneshot::Sender<Result<Instance>>,
    },
    Resume {
        id: String,
        reply: oneshot::Sender<Result<Instance>>,
    },
    /// A posted CloudEvent (`event_id`: its row in the store, marked processed by the commit
    /// of its deliveries).
    Event {
        event: Value,
        event_id: Option<i64>,
        reply: oneshot::Sender<Result<usize>>,
    },
    Shutdown {
        deadline: Duration,
        reply: oneshot::Sender<()>,
    },
    /// A new instance from a faulted one: `records` (a prefix of its history, up to the failed
    /// task's start) replayed, then on from there (see `retry.rs`).
    Retry {
        from: String,
        task: String,
        wf: Arc<Workflow>,
        input: Value,
        records: Vec<(Record, i64)>,
        reply: oneshot::Sender<Result<super::Started>>,
    },
    /// A worker's lease expired (the worker went silent): the task is queued again; recorded in
    /// the instance's history.
    LeaseLost {
        instance: String,
        effect: u64,
        task: String,
        worker: String,
    },
    /// Instances this node took over from a node whose lease lapsed or that left (see
    /// `cluster.rs`): each is brought back from its work rows as after a restart. `since`:
    /// where that node's event cursor stood; the events after it that this node already offered
    /// to its own instances are offered to the adopted subscriptions. Answers how many.
    Adopt {
        ids: Vec<String>,
        since: Option<i64>,
        reply: oneshot::Sender<Result<usize>>,
    },
    /// Answered once the driver has gone round its loop (timers due by the engine's clock
    /// fired, what it took committed): tests on a manual clock wait for it instead of sleeping.
    Sync { reply: oneshot::Sender<Result<()>> },
}

/// An instance in memory.
struct Active {
    core: kflow_core::Instance,
    wf: Arc<Workflow>,
    row: Instance,
    next_seq: i64,
    /// The trace its effects carry (`traceparent` of calls): the caller's, or its own.
    trace: crate::traces::TraceCtx,
    /// The instance's priority (from its start request; default 0).
    priority: i64,
    /// Deliveries that arrived while suspended.
    held: Vec<(u64, Delivery)>,
}

/// What to do once the batch is committed.
enum After {
    ReplyInstance(oneshot::Sender<Result<Instance>>, String),
    /// A start: the instance, and whether this request created it.
    ReplyStart(oneshot::Sender<Result<super::Started>>, String, bool),
    ReplyCount(oneshot::Sender<Result<usize>>, usize),
    /// A delivery is committed.
    Ack(oneshot::Sender<Result<()>>),
    /// The loop went round (see `Msg::Sync`).
    Sync(oneshot::Sender<Result<()>>),
    Dispatch {
        instance: String,
        effect: u64,
        task: String,
        effect_def: Effect,
    },
    Timer {
        instance: String,
        effect: u64,
        due: i64,
    },
    Abort {
        instance: String,
        effect: u64,
    },
    Live(String, HistoryEvent),
    /// An instance yielded (its turn's budget used up): answered in the next turn.
    Yield {
        instance: String,
        effect: u64,
    },
    /// An event an instance emitted: offered to event-driven schedules once committed.
    Emitted(Value),
    /// An emitted event for the brokers (`crate::brokers`): published once committed, and the
    /// emit answered when they confirmed it.
    Publish {
        instance: String,
        effect: u64,
        event: Value,
    },
    /// A `call asyncapi` message: published once committed, the call answered when the broker
    /// confirmed it.
    AsyncApi {
        instance: String,
        effect: u64,
        req: Box<kflow_core::effect::AsyncApiRequest>,
    },
}

#[derive(Default)]
struct Batch {
    commits: Vec<Commit>,
    /// Index of each instance's commit in `commits`.
    by_instance: HashMap<String, usize>,
    after: Vec<After>,
    /// Deliveries produced inside the batch (emits, events, finished children).
    ready: VecDeque<(String, u64, Delivery)>,
    /// Idempotency keys taken in this batch: (namespace, key) → (request hash, instance).
    keys: HashMap<(String, String), (String, String)>,
    /// The posted event (its row id) each event delivery of this batch came from.
    event_of: HashMap<(String, u64), i64>,
}

impl Batch {
    fn commit_for(&mut self, id: &str, now: i64) -> &mut Commit {
        let idx = match self.by_instance.get(id) {
            Some(i) => *i,
            None => {
                self.commits.push(Commit {
                    instance_id: id.to_string(),
                    now_ms: now,
                    ..Default::default()
                });
                self.by_instance
                    .insert(id.to_string(), self.commits.len() - 1);
                self.commits.len() - 1
            }
        };
        &mut self.commits[idx]
    }
}

struct Driver {
    shared: Arc<Shared>,
    /// The in-process worker, handed ready work right after each commit.
    builtin: super::workers::Builtin,
    active: HashMap<String, Active>,
    /// When the effects whose results wait in the batch were leased (see `Msg::Deliver`).
    leased: HashMap<(String, u64), i64>,
    /// Open `listen` subscriptions by (instance, effect): their filters compiled once, deciding
    /// as the instance will (`kflow_core::events`), so a rejected event is never delivered.
    subs: HashMap<(String, u64), Subscription>,
    timers: Timers,
    draining: bool,
    /// Running and waiting instances of workflows with a concurrency limit.
    groups: super::concurrency::Groups,
    /// Yielded instances, continued in the next turn (after the commit of their progress).
    deferred: VecDeque<(String, u64)>,
    /// Instances parked because they cannot be replayed: why (also in the store).
    parked: HashMap<String, String>,
    /// Instances whose commit failed: rebuilt from what was committed, their pending work put
    /// back in motion, as soon as the store answers again.
    recover: std::collections::HashSet<String>,
    /// Deliveries whose instance could not be read (a store error): tried again, with the
    /// posted event they came from (marked processed when they are committed).
    retry: VecDeque<(String, u64, Delivery, Option<i64>)>,
    /// Not before this (ms): the store just failed.
    next_recovery: i64,
    /// Emits being published to brokers, by (instance, effect): one that is aborted (the task
    /// timed out, the instance was cancelled) is taken out, and its publisher stops retrying.
    publishing: Arc<std::sync::Mutex<std::collections::HashSet<(String, u64)>>>,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Driver {
    /// Drops the touched instances that now only wait (timers, events, suspended) or are
    /// finished from memory: 100,000 waiting instances cost rows, not RAM.
    fn evict(&mut self, touched: Vec<String>) {
        for id in touched {
            let idle = self.active.get(&id).is_some_and(|a| {
                a.held.is_empty()
                    && (a.row.status != InstanceStatus::Running || a.core.only_waiting())
            });
            if idle {
                self.drop_active(&id);
            }
        }
    }

    /// Drops an instance from memory (with the answers it held while suspended).
    fn drop_active(&mut self, id: &str) -> Option<Active> {
        let a = self.active.remove(id)?;
        if !a.held.is_empty() {
            self.forget_held(id);
        }
        Some(a)
    }

    fn forget_held(&self, id: &str) {
        self.shared
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| i != id);
    }

    fn handle(&mut self, m: Msg, b: &mut Batch, now: i64) {
        match m {
            Msg::Start {
                id,
                dedupe,
                wf,
                input,
                priority,
                audit,
                trace,
                reply,
            } => {
                if self.draining {
                    let _ = reply.send(Err(EngineError::Unavailable));
                    return;
                }
                match self.repeat_of(id.as_deref(), dedupe.as_ref(), b, now) {
                    Ok(Some(existing)) => {
                        b.after.push(After::ReplyStart(reply, existing, false));
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                let priority = priority.unwrap_or(0);
                let doc = &wf.document;
                let audit = audit.map(|mut e| {
                    e.resource = format!(
                        "instance {id} of {}/{}@{}",
                        doc.namespace, doc.name, doc.version
                    );
                    e.namespace = Some(doc.namespace.clone());
                    e
                });
                match self.admission(&id, &wf, &input, priority, b, now) {
                    Ok(true) => self.create(&id, wf, input, priority, trace, b, now),
                    Ok(false) => {}
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                if let Some(d) = dedupe
                    && let Some(key) = d.key
                {
                    b.keys.insert(
                        (d.namespace.clone(), key.clone()),
                        (d.request_hash.clone(), id.clone()),
                    );
                    b.commit_for(&id, now).idempotency = Some(kflow_store::IdempotencyKey {
                        namespace: d.namespace,
                        key,
                        request_hash: d.request_hash,
                        instance_id: id.clone(),
                        expires_ms: d.expires_ms,
                    });
                }
                if let Some(e) = audit {
                    b.commit_for(&id, now).audit.push(e);
                }
                b.after.push(After::ReplyStart(reply, id, true));
            }
            Msg::Deliver {
                instance,
                effect,
                delivery,
                ack,
                leased_ms,
            } => {
                if let Some(ms) = leased_ms {
                    self.leased.insert((instance.clone(), effect), ms);
                }
                b.ready.push_back((instance, effect, delivery));
                if let Some(ack) = ack {
                    b.after.push(After::Ack(ack));
                }
            }
            Msg::Event {
                event,
                event_id,
                reply,
            } => {
                let n = self.offer_event(&event, event_id, b, now);
                b.after.push(After::ReplyCount(reply, n));
            }
            Msg::Adopt { ids, since, reply } => match self.adopt(&ids, since, b, now) {
                Ok(n) => b.after.push(After::ReplyCount(reply, n)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Msg::LeaseLost {
                instance,
                effect,
                task,
                worker,
            } => self.lease_lost(&instance, effect, task, worker, b, now),
            Msg::Retry {
                from,
                task,
                wf,
                input,
                records,
                reply,
            } => self.retry(from, task, wf, input, records, reply, b, now),
            Msg::Cancel { id, reply } => {
                if self.load(&id).is_err() && self.parked.contains_key(&id) {
                    let r = self.force_cancel(&id, b, now);
                    self.reply_control(r, reply, id, b);
                    return;
                }
                // Cancelling drops the interpreter's futures: guarded like every other call
                // into a core (a panic faults this instance alone).
                let mut panicked = None;
                let inject = self.shared.config.faults.panic_on_cancel;
                let r = self.control(&id, b, now, |a, now| {
                    if a.row.status.is_finished() {
                        return Err(EngineError::Conflict(format!(
                            "instance {} already {}",
                            a.row.id,
                            a.row.status.as_str()
                        )));
                    }
                    let core = &mut a.core;
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if inject {
                            panic!("injected panic while cancelling");
                        }
                        core.cancel(now)
                    })) {
                        Ok(step) => Ok((Record::Cancelled, Some(step))),
                        Err(p) => {
                            let m = panic_message(&*p);
                            panicked = Some(m.clone());
                            Err(EngineError::Conflict(format!(
                                "cancelling instance {} panicked: {m}",
                                a.row.id
                            )))
                        }
                    }
                });
                if let Some(m) = panicked {
                    self.poison(&id, &m, b, now);
                    b.after.push(After::ReplyInstance(reply, id));
                    return;
                }
                self.reply_control(r, reply, id, b);
            }
            Msg::Suspend { id, reply } => {
                let r = self.control(&id, b, now, |a, _| match a.row.status {
                    InstanceStatus::Running => {
                        a.row.status = InstanceStatus::Suspended;
                        Ok((Record::Suspended, None))
                    }
                    s => Err(EngineError::Conflict(format!(
                        "instance {} is {}: only a running instance can be suspended",
                        a.row.id,
                        s.as_str()
                    ))),
                });
                self.reply_control(r, reply, id, b);
            }
            Msg::Resume { id, reply } => {
                let r = self.control(&id, b, now, |a, _| match a.row.status {
                    InstanceStatus::Suspended => {
                        a.row.status = InstanceStatus::Running;
                        Ok((Record::Resumed, None))
                    }
                    s => Err(EngineError::Conflict(format!(
                        "instance {} is {}: only a suspended instance can be resumed",
                        a.row.id,
                        s.as_str()
                    ))),
                });
                if r.is_ok() {
                    self.after_resume(&id, b, now);
                }
                self.reply_control(r, reply, id, b);
            }
            Msg::Shutdown { .. } => {}
            Msg::Sync { reply } => b.after.push(After::Sync(reply)),
        }
    }

    /// Offers a posted event to every open subscription; returns how many took it.
    fn offer_event(
        &mut self,
        event: &Value,
        event_id: Option<i64>,
        b: &mut Batch,
        now: i64,
    ) -> usize {
        let mut n = 0;
        let mut keys: Vec<&(String, u64)> = self.subs.keys().collect();
        keys.sort();
        for key in keys {
            if self.subs[key].matches(event) {
                b.ready
                    .push_back((key.0.clone(), key.1, Delivery::Event(event.clone())));
                if let Some(e) = event_id {
                    b.event_of.insert(key.clone(), e);
                }
                n += 1;
            }
        }
        if let Some(id) = event_id {
            // Marked processed in the same transaction as the deliveries it caused.
            b.commit_for("", now).processed_events.push(id);
        }
        n
    }

    /// Applies every delivery produced so far in this batch (and the ones they produce).
    fn drain_ready(&mut self, b: &mut Batch, now: i64) {
        while let Some((id, effect, delivery)) = b.ready.pop_front() {
            match self.load(&id) {
                Ok(()) => {}
                // The store did not answer: not a reason to lose the result; tried again.
                Err(EngineError::Store(e @ kflow_store::StoreError::Db(_))) => {
                    tracing::warn!(instance = %id, error = %e, "reading the instance failed (trying again)");
                    // The event it came from is processed when this delivery is committed.
                    let event = b.event_of.remove(&(id.clone(), effect));
                    if let Some(ev) = event {
                        b.commit_for("", now).processed_events.retain(|x| *x != ev);
                    }
                    self.retry.push_back((id, effect, delivery, event));
                    self.next_recovery = now + RECOVERY_BACKOFF_MS;
                    continue;
                }
                // Gone, or parked (its work row stays for when it is unparked).
                Err(_) => continue,
            }
            let Some(a) = self.active.get_mut(&id) else {
                continue;
            };
            if a.row.status.is_finished() || !a.core.is_pending(effect) {
                continue; // stale: cancelled, timed out, or answered before
            }
            if a.row.status == InstanceStatus::Suspended {
                a.held.push((effect, delivery));
                self.shared
                    .held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((id.clone(), effect));
                continue;
            }
            if let Some(e) = b.event_of.remove(&(id.clone(), effect)) {
                let c = b.commit_for("", now);
                if !c.processed_events.contains(&e) {
                    c.processed_events.push(e);
                }
            }
            let seq = a.next_seq;
            a.next_seq += 1;
            let rec = Record::Delivery {
                effect,
                delivery: delivery.clone(),
            };
            let mut ev = rec.encode(seq, now);
            // Which task ran it and when its worker took it: queue wait and run time apart.
            if let Some(ms) = self.leased.remove(&(id.clone(), effect)) {
                ev.data["leased_ms"] = ms.into();
                if let Some(task) = a.core.task_of(effect) {
                    ev.data["task"] = task.into();
                }
            }
            let c = b.commit_for(&id, now);
            c.history.push(ev.clone());
            c.remove_work.push(effect);
            b.after.push(After::Live(id.clone(), ev));
            if let Some(step) = self.turn(&id, b, now, |core| core.deliver(effect, delivery, now)) {
                self.absorb(&id, step, b, now);
            }
        }
    }

    /// Turns a core step into history, work rows, and post-commit actions.
    fn absorb(&mut self, id: &str, mut step: Step, b: &mut Batch, now: i64) {
        let max_history = self.shared.config.limits.max_history;
        let Some(a) = self.active.get_mut(id) else {
            return;
        };
        if step.finished.is_none()
            && a.next_seq + step.notices.len() as i64 > max_history
            && !a.core.status().is_finished()
        {
            // The history would outgrow its limit: the instance faults instead (the step's
            // own notices are kept; the fault cancels what it started).
            let more = a.core.fault(
                WfError::runtime(format!(
                    "the instance exceeded its limit of {max_history} history records \
                     (limits.max_history)"
                )),
                now,
            );
            step.notices.extend(more.notices);
            step.commands.extend(more.commands);
            step.finished = more.finished;
        }
        let mut events = Vec::with_capacity(step.notices.len());
        for n in &step.notices {
            let Value::Object(m) = n.to_json() else {
                continue;
            };
            events.push(Record::Notice(m).encode(a.next_seq, n.time_ms));
            a.next_seq += 1;
        }
        let finished = step.finished.map(|r| {
            let (status, output, error) = match r {
                Ok(v) => (InstanceStatus::Completed, Some(v), None),
                Err(e) => (InstanceStatus::Faulted, None, Some(e.to_value())),
            };
            a.row.status = status;
            a.row.output = output.clone();
            a.row.error = error.clone();
            a.row.updated_ms = now;
            (status, output, error)
        });
        if let Status::Cancelled = a.core.status() {
            a.row.status = InstanceStatus::Cancelled;
        }
        let status = a.row.status;
        let leftover: Vec<u64> = if status.is_finished() {
            a.core.pending().into_iter().map(|(e, _, _)| e).collect()
        } else {
            Vec::new()
        };
        let c = b.commit_for(id, now);
        c.history.extend(events.iter().cloned());
        if let Some(f) = finished {
            c.status = Some(f);
        } else if status == InstanceStatus::Cancelled {
            c.status = Some((InstanceStatus::Cancelled, None, None));
        }
        for ev in events {
            b.after.push(After::Live(id.to_string(), ev));
        }
        for cmd in step.commands {
            match cmd {
                Command::Start {
                    id: effect,
                    task,
                    effect: e,
                } => self.start_effect(id, effect, task, e, b, now),
                Command::Cancel { id: effect } => {
                    b.commit_for(id, now).remove_work.push(effect);
                    b.after.push(After::Abort {
                        instance: id.to_string(),
                        effect,
                    });
                    self.subs.remove(&(id.to_string(), effect));
                }
            }
        }
        if status.is_finished() {
            b.commit_for(id, now).remove_work.extend(leftover);
            if let Some(row) = self.active.get(id).map(|a| a.row.clone()) {
                self.ended(id, &row, b, now);
            }
        }
    }

    /// An instance finished: its concurrency slot goes to the next in line, and a
    /// sub-workflow answers its parent.
    fn ended(&mut self, id: &str, row: &Instance, b: &mut Batch, now: i64) {
        let admitted = self.groups.finished(id);
        for next in self.claimed(admitted) {
            self.admit(&next, b, now);
        }
        if let Some((parent, effect)) = parent_of(id) {
            b.ready.push_back((parent, effect, child_result(row)));
        }
    }
}

/// A sub-workflow's id: its parent's id and the parent's effect id.
fn child_id(parent: &str, effect: u64) -> String {
    format!("{parent}.{effect}")
}

fn parent_of(id: &str) -> Option<(String, u64)> {
    let (parent, effect) = id.rsplit_once('.')?;
    Some((parent.to_string(), effect.parse().ok()?))
}

fn child_result(row: &Instance) -> Delivery {
    match row.status {
        InstanceStatus::Completed => {
            Delivery::Result(Ok(row.output.clone().unwrap_or(Value::Null)))
        }
        InstanceStatus::Faulted => Delivery::Result(Err(row
            .error
            .as_ref()
            .and_then(|e| kflow_core::WfError::from_value(e).ok())
            .unwrap_or_else(|| kflow_core::WfError::runtime("the sub-workflow faulted")))),
        _ => Delivery::Result(Err(kflow_core::WfError::runtime(format!(
            "the sub-workflow {} was cancelled",
            row.id
        )))),
    }
}

//! The driver's loop: it takes messages in batches, has the decisions (`mod.rs`) turn them
//! into a [`Batch`] — the commits to write and what to do once they are durable (`After`) —
//! writes the batch in one transaction, and only then performs it: replies to callers, hands
//! effects to the workers, arms timers, publishes live events. The decisions never perform
//! anything; everything they read goes through the injected store and clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use kflow_core::Delivery;
use kflow_store::{Commit, Instance};
use serde_json::Value;

use super::super::timers::{SCAN_EVERY_MS, Timers};
use super::super::{EngineError, LiveEvent, Result, Shared};
use super::isolation::panic_message;
use super::{After, Batch, Driver, INLINE_COMMIT_ROWS, Msg, PRUNE_EVERY_MS, blocking};

pub(in crate::engine) async fn spawn(
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
) -> Result<JoinHandle<()>> {
    let builtin = super::super::workers::start(
        shared.clone(),
        shared.queue.clone(),
        tx,
        shared.config.max_concurrent_effects.max(1),
    );
    let mut d = Driver {
        shared,
        builtin,
        active: HashMap::new(),
        leased: HashMap::new(),
        subs: HashMap::new(),
        timers: Timers::default(),
        draining: false,
        groups: Default::default(),
        deferred: VecDeque::new(),
        parked: HashMap::new(),
        recover: Default::default(),
        retry: VecDeque::new(),
        next_recovery: 0,
        publishing: Default::default(),
    };
    d.recover()?;
    Ok(tokio::spawn(d.run(rx)))
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut next_scan = self.shared.now() + SCAN_EVERY_MS;
        let mut next_prune = self.shared.now() + PRUNE_EVERY_MS;
        let mut shutdown: Option<(tokio::time::Instant, oneshot::Sender<()>)> = None;
        loop {
            let now = self.shared.now();
            self.shared.beat();
            let wake_at = self.timers.next_due().unwrap_or(i64::MAX).min(next_scan);
            let wake_at = if self.recover.is_empty() && self.retry.is_empty() {
                wake_at
            } else {
                wake_at.min(self.next_recovery)
            };
            // At most a second: the loop's heartbeat (and a manual clock) needs it.
            let sleep = if self.deferred.is_empty() {
                Duration::from_millis((wake_at - now).clamp(0, SCAN_EVERY_MS) as u64)
            } else {
                Duration::ZERO
            };
            let first = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => Some(m),
                    None => return,
                },
                _ = tokio::time::sleep(sleep) => None,
            };
            let mut msgs: Vec<Msg> = first.into_iter().collect();
            while msgs.len() < 2048 {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            let now = self.shared.now();
            let mut b = Batch::default();
            // Yielded instances go on, one turn each, after the messages that came meanwhile.
            for (inst, effect) in std::mem::take(&mut self.deferred) {
                b.ready
                    .push_back((inst, effect, Delivery::Result(Ok(Value::Null))));
            }
            if now >= self.next_recovery {
                for (inst, effect, d, event) in std::mem::take(&mut self.retry) {
                    if let Some(e) = event {
                        b.event_of.insert((inst.clone(), effect), e);
                    }
                    b.ready.push_back((inst, effect, d));
                }
                self.recover_failed(now, &mut b);
            }
            if !self.draining {
                for (inst, effect) in self.timers.pop_due(now) {
                    b.ready
                        .push_back((inst, effect, Delivery::Result(Ok(Value::Null))));
                }
            }
            if now >= next_prune {
                next_prune = now + PRUNE_EVERY_MS;
                let store = self.shared.store.clone();
                if let Err(e) = blocking(|| store.prune_idempotency_keys(now, 10_000)) {
                    tracing::warn!(error = %e, "pruning expired idempotency keys failed");
                }
            }
            if now >= next_scan {
                next_scan = now + SCAN_EVERY_MS;
                if !self.draining {
                    self.scan_timers(now);
                    // Several nodes: a slot freed on another node is taken here.
                    if self.shared.pump.is_some() {
                        for id in self.fill_groups() {
                            self.admit(&id, &mut b, now);
                        }
                    }
                }
            }
            // Adoptions first: the events of this batch are then offered to the adopted
            // subscriptions too, and what an adoption reads as already offered by this node is
            // exactly what earlier batches committed.
            msgs.sort_by_key(|m| !matches!(m, Msg::Adopt { .. }));
            for m in msgs {
                match m {
                    Msg::Shutdown { deadline, reply } => {
                        self.draining = true;
                        self.shared.queue.start_draining();
                        shutdown = Some((tokio::time::Instant::now() + deadline, reply));
                    }
                    other => self.handle(other, &mut b, now),
                }
            }
            self.drain_ready(&mut b, now);
            let touched: Vec<String> = b.by_instance.keys().cloned().collect();
            self.commit(b).await;
            self.evict(touched);
            if let Some((deadline, _)) = &shutdown {
                self.shared
                    .queue
                    .lock()
                    .set_draining(super::super::workers::BUILTIN);
                // Remote workers finish and report what they hold (the API is still up).
                if (self.shared.queue.builtin_running() == 0
                    && self.shared.queue.remote_leases() == 0)
                    || tokio::time::Instant::now() >= *deadline
                {
                    self.shared.queue.abort_builtin();
                    if let Some((_, reply)) = shutdown.take() {
                        let _ = reply.send(());
                    }
                    return;
                }
            }
        }
    }

    fn scan_timers(&mut self, now: i64) {
        let store = self.shared.store.clone();
        if let Ok(rows) =
            blocking(|| store.due_timers(now + super::super::timers::HORIZON_MS, 10_000))
        {
            for w in rows {
                self.timers
                    .offer(now, w.due_ms, &w.instance_id, w.effect_id);
            }
        }
    }

    async fn commit(&mut self, mut b: Batch) {
        if b.commits.is_empty() {
            self.finish(b);
            return;
        }
        let store = self.shared.store.clone();
        let mut commits = std::mem::take(&mut b.commits);
        self.redact(&mut commits);
        let t0 = std::time::Instant::now();
        let n = commits.len();
        // A small batch (the usual one when instances go step by step) is written in place:
        // handing it to the blocking pool and back costs two thread wake-ups, more than the
        // write itself. A large one goes to the blocking pool, so that this runtime thread is
        // never held for long. A panic in the store fails the batch like a store error.
        let rows: usize = commits
            .iter()
            .map(|c| c.history.len() + c.add_work.len() + c.remove_work.len())
            .sum();
        let result = if rows <= INLINE_COMMIT_ROWS {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.apply(&commits)))
                .map(|r| (commits, r))
                .map_err(|p| panic_message(p.as_ref()))
        } else {
            tokio::task::spawn_blocking(move || {
                let r = store.apply(&commits);
                (commits, r)
            })
            .await
            .map_err(|e| e.to_string())
        };
        let took = t0.elapsed().as_secs_f64();
        tracing::trace!(commits = n, rows, ms = took * 1e3, "batch written");
        match result {
            Ok((commits, Ok(()))) => {
                self.count(&commits, took);
                self.wake_waiters(&commits);
                self.finish(b)
            }
            Ok((commits, Err(e))) => self.fail(commits, b, e.to_string()),
            Err(e) => self.fail(Vec::new(), b, e),
        }
    }

    /// The metrics of a durable batch: its write, instances started and ended.
    fn count(&self, commits: &[Commit], took: f64) {
        let m = &self.shared.metrics;
        m.commit_duration.observe(took);
        m.commit_batch.observe(commits.len() as f64);
        for c in commits {
            if let Some(row) = &c.create {
                m.started(&row.namespace, &row.name);
                tracing::debug!(
                    instance = %row.id,
                    namespace = %row.namespace,
                    workflow = %row.name,
                    version = %row.version,
                    "instance started"
                );
            }
            if let Some((status, _, _)) = &c.status
                && status.is_finished()
            {
                let row = c
                    .create
                    .as_ref()
                    .or_else(|| self.active.get(&c.instance_id).map(|a| &a.row));
                let (ns, name, version, created_ms) = match row {
                    Some(r) => (
                        r.namespace.clone(),
                        r.name.clone(),
                        r.version.clone(),
                        r.created_ms,
                    ),
                    // Ended without being in memory (a parked instance cancelled).
                    None => match self.shared.store.get_instance(&c.instance_id) {
                        Ok(Some(r)) => (r.namespace, r.name, r.version, r.created_ms),
                        _ => continue,
                    },
                };
                m.finished(&ns, &name, status.as_str());
                if self.shared.ended.receiver_count() > 0 {
                    let _ = self.shared.ended.send(crate::engine::Ended {
                        id: c.instance_id.clone(),
                        namespace: ns.clone(),
                        name: name.clone(),
                        version,
                        status: *status,
                        error: c.status.as_ref().and_then(|(_, _, e)| e.clone()),
                        created_ms,
                        ended_ms: c.now_ms,
                    });
                }
                if *status == kflow_store::InstanceStatus::Completed {
                    tracing::debug!(instance = %c.instance_id, namespace = %ns, workflow = %name, "instance completed");
                } else {
                    tracing::info!(
                        instance = %c.instance_id,
                        namespace = %ns,
                        workflow = %name,
                        "instance {}",
                        status.as_str()
                    );
                }
            }
        }
    }

    fn wake_waiters(&self, commits: &[Commit]) {
        let mut waiters = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if waiters.is_empty() {
            return;
        }
        for c in commits {
            if c.status.as_ref().is_some_and(|(s, _, _)| s.is_finished()) {
                for w in waiters.remove(&c.instance_id).unwrap_or_default() {
                    let _ = w.send(());
                }
            }
        }
    }

    /// The batch is durable: act on it.
    pub(super) fn finish(&mut self, b: Batch) {
        let now = self.shared.now();
        let mut dispatched = false;
        for a in b.after {
            match a {
                After::ReplyInstance(reply, id) => {
                    let _ = reply.send(self.instance_row(&id));
                }
                After::ReplyStart(reply, id, created) => {
                    let r = self
                        .instance_row(&id)
                        .map(|instance| super::super::Started { instance, created });
                    let _ = reply.send(r);
                }
                After::ReplyCount(reply, n) => {
                    let _ = reply.send(Ok(n));
                }
                After::Ack(ack) | After::Sync(ack) => {
                    let _ = ack.send(Ok(()));
                }
                After::Dispatch {
                    instance,
                    effect,
                    task,
                    effect_def,
                } => {
                    if self.draining {
                        continue; // left as a work row: the next start runs it
                    }
                    let item = self.item(&instance, effect, task, effect_def, now, Some(1));
                    self.shared.queue.push_quiet(item);
                    dispatched = true;
                }
                After::Timer {
                    instance,
                    effect,
                    due,
                } => self.timers.offer(now, due, &instance, effect),
                After::Abort { instance, effect } => {
                    self.shared.queue.cancel(&instance, effect);
                    self.publishing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(instance.clone(), effect));
                    self.subs.remove(&(instance, effect));
                }
                After::Emitted(event) => {
                    let observer = self
                        .shared
                        .observer
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .and_then(std::sync::Weak::upgrade);
                    if let Some(o) = observer {
                        o.event_emitted(event);
                    }
                }
                After::Publish {
                    instance,
                    effect,
                    event,
                } => self.publish(instance, effect, event),
                After::AsyncApi {
                    instance,
                    effect,
                    req,
                } => {
                    if !self.draining {
                        self.publish_asyncapi(instance, effect, req);
                    }
                }
                After::Yield { instance, effect } => {
                    if !self.draining {
                        self.deferred.push_back((instance, effect));
                    }
                }
                After::Live(id, event) => self.shared.live.publish(LiveEvent {
                    instance_id: id,
                    event,
                }),
            }
        }
        if dispatched {
            // What the built-in worker can take starts now, from here; the rest (other
            // queues, no room) wakes the workers' polls.
            self.builtin.pump();
            self.shared.queue.notify_if_queued();
        }
    }

    /// A publish in flight for (instance, effect), until the returned guard is dropped.
    fn track(&self, instance: &str, effect: u64, tx: &mpsc::UnboundedSender<Msg>) -> Tracked {
        let key = (instance.to_string(), effect);
        self.publishing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        Tracked {
            set: self.publishing.clone(),
            key,
            tx: tx.clone(),
        }
    }

    /// Publishes an emitted event to the brokers that take it, then answers the emit (a
    /// refusal fails it). Not answered while the engine stops: its row makes the next start
    /// publish it again.
    pub(super) fn publish(&self, instance: String, effect: u64, event: Value) {
        let brokers = self.shared.config.brokers.clone();
        let tx = self.builtin.sender();
        let track = self.track(&instance, effect, &tx);
        tokio::spawn(async move {
            let published = brokers.publish(&event, || track.wanted()).await;
            drop(track);
            let delivery = match published {
                Ok(false) => return,
                Ok(true) => Delivery::Result(Ok(event)),
                Err(e) => Delivery::Result(Err(kflow_core::error::WfError::communication(502, e))),
            };
            crate::brokers::failpoint("emit-after-publish");
            let _ = tx.send(Msg::Deliver {
                instance,
                effect,
                delivery,
                ack: None,
                leased_ms: None,
            });
        });
    }

    /// Publishes a `call asyncapi` message to the server its document names, then answers the
    /// call with where it went. Retried while the broker cannot be reached and the call is
    /// wanted; its row makes the next start publish it again, with the same message id.
    pub(super) fn publish_asyncapi(
        &self,
        instance: String,
        effect: u64,
        req: Box<kflow_core::effect::AsyncApiRequest>,
    ) {
        let brokers = self.shared.config.brokers.clone();
        let executor = self.builtin.executor();
        let tx = self.builtin.sender();
        let track = self.track(&instance, effect, &tx);
        let namespace = self
            .active
            .get(&instance)
            .map(|a| a.row.namespace.clone())
            .unwrap_or_default();
        tokio::spawn(async move {
            let wanted = || track.wanted();
            let ctx = kflow_tasks::EffectCtx {
                instance_id: instance.clone(),
                effect_id: effect,
                task: String::new(),
                attempt: 1,
                namespace,
                limits: Default::default(),
                traceparent: None,
            };
            let id = format!("{instance}-{effect}");
            let result = match executor.asyncapi_target(&ctx, &req).await {
                Err(e) => Some(Err(e)),
                Ok(target) => match brokers
                    .publish_to(
                        &target,
                        req.auth.as_ref(),
                        &id,
                        &req.payload,
                        &req.headers,
                        wanted,
                    )
                    .await
                {
                    Ok(false) => None,
                    Ok(true) => Some(Ok(serde_json::json!({
                        "server": target.server,
                        "protocol": target.protocol,
                        "address": target.address,
                        "messageId": id,
                    }))),
                    Err(e) => Some(Err(e)),
                },
            };
            drop(track);
            let Some(result) = result else { return };
            let _ = tx.send(Msg::Deliver {
                instance,
                effect,
                delivery: Delivery::Result(result),
                ack: None,
                leased_ms: None,
            });
        });
    }

    /// An instance's row: from memory when active, else from the store.
    fn instance_row(&self, id: &str) -> Result<Instance> {
        if let Some(a) = self.active.get(id) {
            return Ok(a.row.clone());
        }
        let store = self.shared.store.clone();
        blocking(|| store.get_instance(id))?
            .ok_or_else(|| EngineError::NotFound(format!("instance {id} does not exist")))
    }
}

/// A publish in flight (see `Driver::publishing`).
pub(super) struct Tracked {
    set: Arc<std::sync::Mutex<std::collections::HashSet<(String, u64)>>>,
    key: (String, u64),
    tx: mpsc::UnboundedSender<Msg>,
}

impl Tracked {
    /// Still wanted: the engine runs and the effect was not aborted.
    fn wanted(&self) -> bool {
        !self.tx.is_closed()
            && self
                .set
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&self.key)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

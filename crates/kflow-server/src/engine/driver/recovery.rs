//! Bringing instances back: replaying a history into a core, re-arming and re-running the work
//! of a restart, and rebuilding the instances of a batch whose commit failed.

use super::*;

impl Driver {
    /// After a restart: re-open subscriptions, re-arm near timers, re-run interrupted effects.
    pub(super) fn recover(&mut self) -> Result<()> {
        let store = self.shared.store.clone();
        let now = self.shared.now();
        for w in blocking(|| store.subscriptions())? {
            if let Some(sub) = serde_json::from_value::<Effect>(w.effect.clone())
                .ok()
                .as_ref()
                .and_then(Subscription::of)
            {
                self.subs.insert((w.instance_id.clone(), w.effect_id), sub);
            }
        }
        let mut ready = VecDeque::new();
        for w in blocking(|| store.due_work(now + crate::engine::timers::HORIZON_MS, u32::MAX))? {
            self.resume_work(w, now, &mut ready);
        }
        let admitted = self.rebuild_groups();
        let pending_events = blocking(|| store.pending_events(10_000))?;
        if !ready.is_empty() || !admitted.is_empty() || !pending_events.is_empty() {
            let mut b = Batch {
                ready,
                ..Default::default()
            };
            // Events recorded but not delivered before the crash: offered again, once.
            for (id, event) in pending_events {
                self.offer_event(&event, Some(id), &mut b, now);
            }
            for id in admitted {
                self.admit(&id, &mut b, now);
            }
            self.drain_ready(&mut b, now);
            let commits = std::mem::take(&mut b.commits);
            blocking(|| store.apply(&commits))?;
            self.finish(b);
        }
        Ok(())
    }

    /// Takes over instances of another node (see `Msg::Adopt`): their subscriptions, near
    /// timers and interrupted effects, as `recover` does for all of this node's at a start.
    pub(super) fn adopt(
        &mut self,
        ids: &[String],
        since: Option<i64>,
        b: &mut Batch,
        now: i64,
    ) -> Result<usize> {
        let store = self.shared.store.clone();
        let mut subs: Vec<(String, u64)> = Vec::new();
        let mut adopted = 0;
        for id in ids {
            // Nothing of it may linger from an earlier time this node had it.
            self.active.remove(id);
            let Some(row) = blocking(|| store.get_instance(id))? else {
                continue;
            };
            adopted += 1;
            if row.status != InstanceStatus::Running || row.attention.is_some() {
                continue; // suspended or parked: its work moves again when it is resumed
            }
            for w in blocking(|| store.work_of(id))? {
                if w.kind == "listen" {
                    if let Some(sub) = serde_json::from_value::<Effect>(w.effect.clone())
                        .ok()
                        .as_ref()
                        .and_then(Subscription::of)
                    {
                        subs.push((w.instance_id.clone(), w.effect_id));
                        self.subs.insert((w.instance_id.clone(), w.effect_id), sub);
                    }
                } else if w.kind != "timer" || w.due_ms <= now + crate::engine::timers::HORIZON_MS {
                    self.resume_work(w, now, &mut b.ready);
                }
            }
            self.regroup(row);
        }
        for id in self.fill_groups() {
            self.admit(&id, b, now);
        }
        if let (Some(since), false) = (since, subs.is_empty()) {
            subs.sort();
            let mut after = since;
            loop {
                let page = blocking(|| store.missed_events(after, 1_000))?;
                let Some(last) = page.last().map(|(id, _)| *id) else {
                    break;
                };
                for (event_id, event) in page {
                    for key in &subs {
                        if self.subs.get(key).is_some_and(|s| s.matches(&event)) {
                            b.ready.push_back((
                                key.0.clone(),
                                key.1,
                                Delivery::Event(event.clone()),
                            ));
                            b.event_of.insert(key.clone(), event_id);
                        }
                    }
                }
                after = last;
            }
        }
        self.drain_ready(b, now);
        Ok(adopted)
    }

    /// Puts a stored work row back in motion (timer armed, effect re-run, child checked).
    pub(super) fn resume_work(
        &mut self,
        w: WorkItem,
        now: i64,
        ready: &mut VecDeque<(String, u64, Delivery)>,
    ) {
        let opened = self
            .shared
            .vault
            .unseal_value(
                &crate::sealed::ctx_work(&w.instance_id, w.effect_id),
                &w.effect,
            )
            .map_err(|m| m.to_string());
        let effect = match opened
            .and_then(|v| serde_json::from_value::<Effect>(v).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(e) => {
                let reason = format!(
                    "work row for effect {} ({}) cannot be read: {e}",
                    w.effect_id, w.kind
                );
                self.park(&w.instance_id, &reason);
                return;
            }
        };
        match effect {
            Effect::Yield => ready.push_back((
                w.instance_id,
                w.effect_id,
                Delivery::Result(Ok(Value::Null)),
            )),
            Effect::Timer { at_ms } => self.timers.offer(now, at_ms, &w.instance_id, w.effect_id),
            Effect::Listen { filters, args } => {
                self.subs.insert(
                    (w.instance_id.clone(), w.effect_id),
                    Subscription::new(&filters, args.as_ref()),
                );
            }
            Effect::Workflow { .. } => {
                let child = child_id(&w.instance_id, w.effect_id);
                let store = self.shared.store.clone();
                match blocking(|| store.get_instance(&child)) {
                    Ok(Some(c)) if c.status.is_finished() => {
                        ready.push_back((w.instance_id, w.effect_id, child_result(&c)))
                    }
                    Ok(Some(_)) => {} // still running: its completion will answer
                    Ok(None) => ready.push_back((
                        w.instance_id,
                        w.effect_id,
                        child_error(format!(
                            "run workflow: the sub-workflow {child} does not exist"
                        )),
                    )),
                    // Not a wrong value: the parent waits; the next restart or touch retries.
                    Err(e) => {
                        tracing::warn!(instance = %child, error = %e, "reading a sub-workflow failed")
                    }
                }
            }
            Effect::AsyncApi(req) => {
                // Published before the crash or not: again, with the same message id.
                self.publish_asyncapi(w.instance_id.clone(), w.effect_id, req);
            }
            Effect::Emit { event } => {
                let event = complete_event(event, &w.instance_id, now);
                if self.shared.config.brokers.publishes(&event) {
                    // Published before the crash or not: again, with the same id.
                    self.publish(w.instance_id.clone(), w.effect_id, event);
                } else {
                    ready.push_back((
                        w.instance_id.clone(),
                        w.effect_id,
                        Delivery::Result(Ok(event)),
                    ));
                }
            }
            other => {
                if !self.shared.queue.is_active(&w.instance_id, w.effect_id) {
                    // Interrupted by a restart (or a lost lease): run again, counted as a new attempt.
                    let item = self.item(&w.instance_id, w.effect_id, w.task, other, now, None);
                    self.shared.queue.push(item);
                }
            }
        }
    }

    pub(super) fn fail(&mut self, commits: Vec<Commit>, b: Batch, message: String) {
        tracing::error!(error = %message, "committing a batch failed: its instances are rebuilt from the store");
        for c in &commits {
            self.drop_active(&c.instance_id);
            // Rebuilt from what was committed, and its pending work re-dispatched: a result
            // lost with this batch runs again (same idempotency key), nothing stays stranded.
            if c.create.is_none() && !c.instance_id.is_empty() {
                self.recover.insert(c.instance_id.clone());
            }
        }
        self.next_recovery = self.shared.now() + RECOVERY_BACKOFF_MS;
        for a in b.after {
            match a {
                After::Ack(ack) | After::Sync(ack) => {
                    let _ = ack.send(Err(EngineError::Store(kflow_store::StoreError::Db(
                        message.clone(),
                    ))));
                }
                After::ReplyInstance(reply, _) => {
                    let _ = reply.send(Err(EngineError::Store(kflow_store::StoreError::Db(
                        message.clone(),
                    ))));
                }
                After::ReplyCount(reply, _) => {
                    let _ = reply.send(Err(EngineError::Store(kflow_store::StoreError::Db(
                        message.clone(),
                    ))));
                }
                After::ReplyStart(reply, _, _) => {
                    let _ = reply.send(Err(EngineError::Store(kflow_store::StoreError::Db(
                        message.clone(),
                    ))));
                }
                _ => {}
            }
        }
    }

    /// Puts the work of instances whose commit failed back in motion, from the store's rows
    /// (what was committed). A store that still fails is tried again after a back-off.
    pub(super) fn recover_failed(&mut self, now: i64, b: &mut Batch) {
        let ids: Vec<String> = self.recover.iter().cloned().collect();
        for id in ids {
            let store = self.shared.store.clone();
            match blocking(|| store.work_of(&id)) {
                Ok(rows) => {
                    self.recover.remove(&id);
                    for w in rows {
                        self.resume_work(w, now, &mut b.ready);
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "recovering the instance failed (trying again)");
                    self.next_recovery = now + RECOVERY_BACKOFF_MS;
                    return;
                }
            }
        }
    }

    /// Brings an instance into memory by replaying its committed history. A history that
    /// cannot be read, or whose replay panics, parks the instance (see [`Driver::park`]).
    pub(super) fn load(&mut self, id: &str) -> Result<()> {
        if self.active.contains_key(id) {
            return Ok(());
        }
        if let Some(reason) = self.parked.get(id) {
            return Err(needs_attention(id, reason));
        }
        let store = self.shared.store.clone();
        let id2 = id.to_string();
        let (row, history) = blocking(|| -> kflow_store::Result<_> {
            // Several nodes: only the node that drives an instance may change it.
            if !store.is_mine(&id2)? {
                return Ok((None, Vec::new()));
            }
            let row = store.get_instance(&id2)?;
            let history = match &row {
                Some(_) => store.history(&id2, 0, u32::MAX)?,
                None => Vec::new(),
            };
            Ok((row, history))
        })?;
        let row = match row {
            Some(r) => r,
            None if !blocking(|| store.is_mine(id))? => {
                return Err(EngineError::Conflict(format!(
                    "instance {id} is driven by another node: send the request to it (every \
                     node forwards the requests it cannot serve)"
                )));
            }
            None => {
                return Err(EngineError::NotFound(format!(
                    "instance {id} does not exist"
                )));
            }
        };
        if let Some(reason) = &row.attention {
            self.parked.insert(id.to_string(), reason.clone());
            return Err(needs_attention(id, reason));
        }
        let wf = match self
            .shared
            .workflow(&row.namespace, &row.name, &row.version)
        {
            Ok(wf) => wf,
            // Not a passing failure: its definition cannot be used by this build.
            Err(EngineError::Store(kflow_store::StoreError::Corrupt(m))) => {
                self.park(id, &m);
                return Err(needs_attention(id, &m));
            }
            Err(e) => return Err(e),
        };
        let records = match crate::engine::journal::decode_all(id, &history) {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                self.park(id, &reason);
                return Err(needs_attention(id, &reason));
            }
        };
        let mut core =
            kflow_core::Instance::new(wf.clone(), self.instance_config(id, &wf.document.namespace));
        let next_seq = history.last().map_or(1, |ev| ev.seq + 1);
        // A finished instance's core is never asked anything: its row says it all.
        let finished = row.status.is_finished();
        let timed = history.iter().zip(records).map(|(ev, r)| (r, ev.time_ms));
        let replay = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if finished {
                Replayed::default()
            } else {
                replay(&mut core, timed)
            }
        }));
        let Replayed { priority, trace } = match replay {
            Ok(r) => r,
            Err(payload) => {
                let reason = format!(
                    "replaying its history panicked: {}",
                    panic_message(&*payload)
                );
                self.park(id, &reason);
                return Err(needs_attention(id, &reason));
            }
        };
        self.active.insert(
            id.to_string(),
            Active {
                core,
                wf,
                row,
                next_seq,
                trace: crate::traces::TraceCtx::of(id, trace.as_deref()),
                priority,
                held: Vec::new(),
            },
        );
        Ok(())
    }
}

/// What a replay learned of the start: its priority and the caller's traceparent.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    pub priority: i64,
    pub trace: Option<String>,
}

/// Replays history records into a fresh core, as a restart does (run under `catch_unwind`).
pub(super) fn replay(
    core: &mut kflow_core::Instance,
    records: impl IntoIterator<Item = (Record, i64)>,
) -> Replayed {
    let mut r = Replayed::default();
    for (rec, time) in records {
        match rec {
            Record::Started {
                input,
                priority,
                trace,
                ..
            } => {
                r.priority = priority;
                r.trace = trace;
                core.start(input, time);
            }
            Record::Queued { priority, .. } => r.priority = priority,
            Record::Delivery { effect, delivery } => {
                core.deliver(effect, delivery, time);
            }
            Record::Cancelled => {
                core.cancel(time);
            }
            Record::Faulted { error } => {
                let e = WfError::from_value(&error)
                    .unwrap_or_else(|_| WfError::runtime(error.to_string()));
                core.fault(e, time);
            }
            Record::Notice(_) | Record::Suspended | Record::Resumed => {}
        }
    }
    r
}

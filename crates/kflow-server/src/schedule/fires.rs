//! Firing: the two phases of a tick (decide the fires that are due, durably, in the row;
//! then execute them, starting each instance with its decided id), and the fires of `on`
//! schedules as events arrive. The scheduler's handle, its loop and keeping rows in line with
//! definitions are in `mod.rs`.

use super::*;

impl Inner {
    /// Phase one of a tick: for every row, forget finished instances, move the queue on, and
    /// record the fires that are due (in the row, with their ids).
    pub(super) async fn decide(&self, now: i64) -> Result<()> {
        let rows = self.blocking(|s| s.list_schedules()).await?;
        for row in rows {
            let st = State::from_value(&row.state);
            if st.error.is_some() && st.running.is_empty() {
                continue;
            }
            let timed_due = !row.paused && row.next_fire_ms.is_some_and(|t| t <= now);
            let after_idle =
                st.kind == "after" && row.next_fire_ms.is_none() && st.outbox.is_empty();
            if !timed_due && st.running.is_empty() && st.queue.is_empty() && !after_idle {
                continue;
            }
            let plan = match self.plan_for(&row, &st).await {
                Ok(p) => p,
                Err(e) => {
                    self.update(&row.namespace, &row.name, now, |r, st| {
                        st.error = Some(e.clone());
                        r.next_fire_ms = None;
                        Change::Write
                    })
                    .await?;
                    continue;
                }
            };
            // Which tracked instances are still running.
            let ids = st.running.clone();
            let status = self
                .blocking(move |s| {
                    let mut out = HashMap::new();
                    for id in ids {
                        let inst = s.get_instance(&id)?;
                        out.insert(id, inst.map(|i| (i.status.is_finished(), i.updated_ms)));
                    }
                    Ok(out)
                })
                .await?;
            let grace = self.config.grace_ms;
            let (ns, name) = (row.namespace.clone(), row.name.clone());
            self.update(&ns, &name, now, |r, st| {
                advance(r, st, &plan, &status, now, grace);
                Change::Write
            })
            .await?;
        }
        Ok(())
    }

    /// Phase two: starts the instances of every recorded fire.
    pub(super) async fn execute(&self, now: i64) -> Result<Vec<Fired>> {
        let rows = self.blocking(|s| s.list_schedules()).await?;
        let mut done = Vec::new();
        for row in rows {
            if !State::from_value(&row.state).outbox.is_empty() {
                done.extend(self.execute_row(&row.namespace, &row.name, now).await?);
            }
        }
        Ok(done)
    }

    /// Starts the outbox fires of one row, in order; each leaves the outbox once started (or
    /// refused for good). Stops at the first failure that may pass (engine shutting down,
    /// store error): the fire stays for the next tick.
    pub(super) async fn execute_row(&self, ns: &str, name: &str, now: i64) -> Result<Vec<Fired>> {
        let mut done = Vec::new();
        loop {
            let (n, m) = (ns.to_string(), name.to_string());
            let Some(row) = self.blocking(move |s| s.get_schedule(&n, &m)).await? else {
                break;
            };
            let st = State::from_value(&row.state);
            let Some(fire) = st.outbox.first().cloned() else {
                break;
            };
            let tracked = match self.plan_for(&row, &st).await {
                Ok(p) => state::tracks(&p),
                Err(_) => true,
            };
            for id in &fire.cancel {
                match self.engine.cancel(id).await {
                    Ok(_) | Err(EngineError::NotFound(_)) | Err(EngineError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let outcome = match self
                .engine
                .start_with_id(&fire.id, ns, name, &row.version, fire.input.clone())
                .await
            {
                Ok(inst) => Ok(inst.id),
                Err(e @ (EngineError::Unavailable | EngineError::Store(_))) => return Err(e),
                Err(e) => Err(e.to_string()),
            };
            let after = st.kind == "after";
            self.update(ns, name, now, |_, st| {
                let Some(pos) = st.outbox.iter().position(|f| f.id == fire.id) else {
                    return Change::Keep;
                };
                st.outbox.remove(pos);
                match &outcome {
                    Ok(id) => {
                        st.fired += 1;
                        st.last_error = None;
                        if tracked && !st.running.contains(id) {
                            st.running.push(id.clone());
                        }
                    }
                    Err(e) => {
                        st.last_error = Some(e.clone());
                        if after {
                            // Nothing runs, so nothing will finish: count from now.
                            st.finished_ms = Some(now);
                        }
                    }
                }
                Change::Write
            })
            .await?;
            if let Ok(id) = &outcome
                && tracked
            {
                self.watch(id);
            }
            done.push(Fired {
                namespace: ns.to_string(),
                name: name.to_string(),
                fire_ms: fire.fire_ms,
                outcome,
            });
        }
        Ok(done)
    }

    /// Offers an event to every `on` schedule that is not paused.
    pub(super) async fn on_event(&self, event: &Value, now: i64) -> Result<usize> {
        let rows = self.blocking(|s| s.list_schedules()).await?;
        let mut started = 0;
        for row in rows {
            let st = State::from_value(&row.state);
            if row.paused || st.kind != "on" || st.error.is_some() {
                continue;
            }
            let Ok(plan) = self.plan_for(&row, &st).await else {
                continue;
            };
            let Trigger::On(spec) = &plan.trigger else {
                continue;
            };
            // Cheap test first: does any filter match at all?
            if !(spec.filters.is_empty() || spec.filters.iter().any(|f| f.matches(event).is_some()))
            {
                continue;
            }
            let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::now_v7().to_string()).collect();
            let mut fired = false;
            self.update(&row.namespace, &row.name, now, |r, st| {
                if r.paused {
                    return Change::Keep;
                }
                let inputs = state::on_event(spec, st, event);
                fired = !inputs.is_empty();
                for (i, input) in inputs.into_iter().enumerate() {
                    let id = ids
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                    st.offer(
                        plan.settings.overlap,
                        Fire {
                            id,
                            fire_ms: now,
                            input,
                            cancel: Vec::new(),
                        },
                    );
                    r.last_fire_ms = Some(now);
                }
                Change::Write
            })
            .await?;
            if fired {
                started += self
                    .execute_row(&row.namespace, &row.name, now)
                    .await?
                    .iter()
                    .filter(|f| f.outcome.is_ok())
                    .count();
            }
        }
        Ok(started)
    }
}

//! Effects leaving an instance: the work row committed for each (sealed where it may hold a
//! secret) and the queue item it becomes for a worker (queue, priority, resources, labels,
//! rate-limit buckets, the task's own process limits).

use super::*;

impl Driver {
    /// A queue item for a call or process, with the task's engine hints (`metadata.kflow`:
    /// queue, priority, resources, labels; the workflow's `document.metadata.kflow` gives
    /// defaults).
    pub(super) fn item(
        &mut self,
        instance: &str,
        effect_id: u64,
        task: String,
        effect: Effect,
        now: i64,
        attempt: Option<u32>,
    ) -> Item {
        let wf = match self.active.get(instance) {
            Some(a) => Some(a.wf.clone()),
            None => self
                .load(instance)
                .ok()
                .and_then(|_| self.active.get(instance).map(|a| a.wf.clone())),
        };
        let instance_priority = self.active.get(instance).map(|a| a.priority).unwrap_or(0);
        let (mut queue, priority, needs, labels) = match &wf {
            Some(wf) => crate::engine::queue::task_hints(wf, &task, instance_priority),
            None => {
                let (q, _, n, l) = hints(None);
                (q, instance_priority, n, l)
            }
        };
        // A worker function goes to the queue its definition names.
        if let Effect::Function(f) = &effect {
            queue = f.queue.clone();
        }
        let ready_us = crate::engine::queue::mono_us();
        let task_ref = task.clone();
        let namespace = self
            .active
            .get(instance)
            .map(|a| a.row.namespace.clone())
            .unwrap_or_default();
        let mut rate_keys = vec![format!("queue:{queue}")];
        // Ranked only in queues that dispatch critical-path-first.
        let critical_path = {
            let cp = &self.shared.config.critical_path_queues;
            cp.contains("*") || cp.contains(&queue)
        };
        let uri = match &effect {
            Effect::Http(h) => Some(h.uri.as_str()),
            Effect::OpenApi(o) => Some(o.document.as_str()),
            _ => None,
        };
        if let Some(host) = uri.and_then(host_of) {
            rate_keys.push(format!("host:{host}"));
        } else if let Effect::Grpc(g) = &effect {
            rate_keys.push(format!("host:{}", g.host));
        }
        Item {
            instance: instance.to_string(),
            namespace,
            rate_keys,
            effect_id,
            task,
            effect,
            queue,
            priority,
            needs,
            labels,
            enqueued_ms: now,
            ready_us,
            attempt,
            limits: wf
                .as_ref()
                .map(|wf| task_limits(&wf.kflow.task(&task_ref).limits))
                .unwrap_or_default(),
            traceparent: self.active.get(instance).map(|a| a.trace.traceparent()),
            rank_ms: match (&wf, self.active.get(instance)) {
                (Some(wf), Some(a)) if critical_path => self.shared.rank_of(
                    wf,
                    &a.row.namespace,
                    &a.row.name,
                    &a.row.version,
                    &task_ref,
                ),
                _ => 0.0,
            },
            workflow: self
                .active
                .get(instance)
                .map(|a| (a.row.name.clone(), a.row.version.clone())),
        }
    }

    pub(super) fn start_effect(
        &mut self,
        id: &str,
        effect: u64,
        task: String,
        e: Effect,
        b: &mut Batch,
        now: i64,
    ) {
        let due = match &e {
            Effect::Timer { at_ms } => *at_ms,
            _ => now,
        };
        // An emitted event is completed (id, time, source) before its row is written: published
        // again after a crash, it is the same event with the same id.
        let e = match e {
            Effect::Emit { event } => Effect::Emit {
                event: complete_event(event, id, now),
            },
            other => other,
        };
        let row = WorkItem {
            instance_id: id.to_string(),
            effect_id: effect,
            task: task.clone(),
            kind: e.kind().to_string(),
            effect: stored_effect(
                &self.shared,
                id,
                effect,
                &e,
                self.active
                    .get(id)
                    .is_some_and(|a| !a.wf.use_.secrets.is_empty()),
            ),
            due_ms: due,
            // Calls and processes are dispatched right after this commit: that is attempt 1.
            attempts: u32::from(e.is_call()),
        };
        b.commit_for(id, now).add_work.push(row);
        match e {
            Effect::Yield => b.after.push(After::Yield {
                instance: id.to_string(),
                effect,
            }),
            Effect::Timer { at_ms } => b.after.push(After::Timer {
                instance: id.to_string(),
                effect,
                due: at_ms,
            }),
            Effect::Emit { event } => {
                // Emitted events also reach this server's listeners.
                let mut keys: Vec<(String, u64)> = self.subs.keys().cloned().collect();
                keys.sort();
                for key in keys {
                    if self.subs[&key].matches(&event) {
                        b.ready
                            .push_back((key.0, key.1, Delivery::Event(event.clone())));
                    }
                }
                b.after.push(After::Emitted(event.clone()));
                if self.shared.config.brokers.publishes(&event) {
                    // Answered once the brokers confirmed it (after this commit).
                    b.after.push(After::Publish {
                        instance: id.to_string(),
                        effect,
                        event,
                    });
                } else {
                    b.ready
                        .push_back((id.to_string(), effect, Delivery::Result(Ok(event))));
                }
            }
            Effect::Listen { filters, args } => {
                let sub = Subscription::new(&filters, args.as_ref());
                self.subs.insert((id.to_string(), effect), sub);
            }
            Effect::Workflow {
                namespace,
                name,
                version,
                input,
            } => {
                let child = child_id(id, effect);
                match self.shared.workflow(&namespace, &name, &version) {
                    Ok(wf) => {
                        // A sub-workflow runs at its parent's priority.
                        let p = self.active.get(id).map(|a| a.priority).unwrap_or(0);
                        // Its trace is the parent's: its span a child of the parent's.
                        let trace = self.active.get(id).map(|a| a.trace.traceparent());
                        self.create(&child, wf, input, p, trace, b, now)
                    }
                    Err(e) => b.ready.push_back((
                        id.to_string(),
                        effect,
                        child_error(format!("run workflow: {e}")),
                    )),
                }
            }
            Effect::AsyncApi(req) => b.after.push(After::AsyncApi {
                instance: id.to_string(),
                effect,
                req,
            }),
            other => b.after.push(After::Dispatch {
                instance: id.to_string(),
                effect,
                task,
                effect_def: other,
            }),
        }
    }
}

/// The host of an absolute URI (`https://api.example.com:8443/x` → `api.example.com`).
fn host_of(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| h.trim_start_matches('['))?
    } else {
        host.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

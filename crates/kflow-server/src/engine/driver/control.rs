//! Cancel, suspend and resume: a history record, the new status and the core's reaction, the
//! caller answered after the commit; on resume, the answers held while suspended go on.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use kflow_core::Step;
use kflow_store::Instance;

use super::super::journal::Record;
use super::super::{EngineError, Result};
use super::{Active, After, Batch, Driver, blocking};

impl Driver {
    pub(super) fn reply_control(
        &mut self,
        r: Result<()>,
        reply: oneshot::Sender<Result<Instance>>,
        id: String,
        b: &mut Batch,
    ) {
        match r {
            Ok(()) => b.after.push(After::ReplyInstance(reply, id)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Cancel / suspend / resume: a history event, the status, and the core's reaction.
    pub(super) fn control(
        &mut self,
        id: &str,
        b: &mut Batch,
        now: i64,
        f: impl FnOnce(&mut Active, i64) -> Result<(Record, Option<Step>)>,
    ) -> Result<()> {
        self.load(id)?;
        let Some(a) = self.active.get_mut(id) else {
            return Err(EngineError::NotFound(format!(
                "instance {id} does not exist"
            )));
        };
        let (rec, step) = f(a, now)?;
        let seq = a.next_seq;
        a.next_seq += 1;
        let ev = rec.encode(seq, now);
        let status = a.row.status;
        let c = b.commit_for(id, now);
        c.history.push(ev.clone());
        c.status = Some((status, None, None));
        b.after.push(After::Live(id.to_string(), ev));
        if let Some(step) = step {
            self.absorb(id, step, b, now);
        }
        Ok(())
    }

    /// Records that a worker lost its lease on an effect still pending: the task waits in its
    /// queue again, and will run on another worker (with the same idempotency key).
    pub(super) fn lease_lost(
        &mut self,
        id: &str,
        effect: u64,
        task: String,
        worker: String,
        b: &mut Batch,
        now: i64,
    ) {
        if self.load(id).is_err() {
            return;
        }
        let Some(a) = self.active.get_mut(id) else {
            return;
        };
        if a.row.status.is_finished() || !a.core.is_pending(effect) {
            return;
        }
        let name = task.rsplit('/').next().unwrap_or(&task).to_string();
        let mut m = serde_json::Map::new();
        m.insert("type".into(), "task.requeued".into());
        m.insert("task".into(), name.into());
        m.insert("reference".into(), task.into());
        m.insert("effect".into(), effect.into());
        m.insert("worker".into(), worker.into());
        m.insert(
            "reason".into(),
            "the worker's lease expired (it stopped heartbeating): the task waits for another \
             worker"
                .into(),
        );
        m.insert("time".into(), kflow_core::time::iso8601(now).into());
        let seq = a.next_seq;
        a.next_seq += 1;
        let ev = Record::Notice(m).encode(seq, now);
        b.commit_for(id, now).history.push(ev.clone());
        b.after.push(After::Live(id.to_string(), ev));
    }

    pub(super) fn after_resume(&mut self, id: &str, b: &mut Batch, now: i64) {
        let held = self
            .active
            .get_mut(id)
            .map(|a| std::mem::take(&mut a.held))
            .unwrap_or_default();
        self.forget_held(id);
        let answered: Vec<u64> = held.iter().map(|(e, _)| *e).collect();
        for (effect, d) in held {
            b.ready.push_back((id.to_string(), effect, d));
        }
        // Effects that were interrupted while suspended (e.g. by a restart) run again.
        let store = self.shared.store.clone();
        let id2 = id.to_string();
        if let Ok(rows) = blocking(|| store.work_of(&id2)) {
            let mut ready = VecDeque::new();
            for w in rows
                .into_iter()
                .filter(|w| !answered.contains(&w.effect_id))
            {
                if !self.shared.queue.is_active(&w.instance_id, w.effect_id) {
                    self.resume_work(w, now, &mut ready);
                }
            }
            b.ready.extend(ready);
        }
    }
}

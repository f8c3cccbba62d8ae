//! One instance's faults stay its own: every call into a core runs guarded (a panic faults
//! that instance alone), and an instance whose history cannot be replayed is parked with the
//! reason, cancellable without a replay.

use super::*;

impl Driver {
    /// One call into an instance's core, guarded: a panic faults that instance alone (see
    /// [`Driver::poison`]) and returns `None`.
    pub(super) fn turn(
        &mut self,
        id: &str,
        b: &mut Batch,
        now: i64,
        f: impl FnOnce(&mut kflow_core::Instance) -> Step,
    ) -> Option<Step> {
        let a = self.active.get_mut(id)?;
        let inject = self.shared.config.faults.panic_on_task.as_deref();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let step = f(&mut a.core);
            if let Some(task) = inject
                && step.notices.iter().any(|n| {
                    n.kind == kflow_core::NoticeKind::TaskStarted
                        && n.task.as_ref().is_some_and(|(name, _)| name == task)
                })
            {
                panic!("injected panic at task {task}");
            }
            step
        }));
        match r {
            Ok(step) => Some(step),
            Err(payload) => {
                self.poison(id, &panic_message(&*payload), b, now);
                None
            }
        }
    }

    /// The core of an instance panicked: the instance faults with a runtime error naming the
    /// panic, its work rows go, and everything else goes on. Its core is dropped (its state is
    /// unknown); the fault is journaled, so a restart does not run into the panic again.
    pub(super) fn poison(&mut self, id: &str, message: &str, b: &mut Batch, now: i64) {
        tracing::error!(instance = %id, panic = %message, "instance panicked in the interpreter: it faults");
        let Some(mut a) = self.drop_active(id) else {
            return;
        };
        let error = WfError::runtime(format!(
            "kflow's interpreter panicked while running this instance: {message}"
        ))
        .to_value();
        let ev = Record::Faulted {
            error: error.clone(),
        }
        .encode(a.next_seq, now);
        a.row.status = InstanceStatus::Faulted;
        a.row.error = Some(error.clone());
        a.row.updated_ms = now;
        // Nothing this turn asked of the world is acted on.
        b.after.retain(|x| match x {
            After::Dispatch { instance, .. }
            | After::Timer { instance, .. }
            | After::Yield { instance, .. } => instance != id,
            _ => true,
        });
        self.subs.retain(|(inst, _), _| inst != id);
        let c = b.commit_for(id, now);
        c.add_work.clear();
        c.history.push(ev.clone());
        c.status = Some((InstanceStatus::Faulted, None, Some(error)));
        c.clear_work = true;
        b.after.push(After::Live(id.to_string(), ev));
        self.ended(id, &a.row, b, now);
    }

    /// Cancels a parked instance without its core (which cannot be rebuilt): the cancellation
    /// is journaled, its work rows go, and the mark is cleared.
    pub(super) fn force_cancel(&mut self, id: &str, b: &mut Batch, now: i64) -> Result<()> {
        let store = self.shared.store.clone();
        let (row, last) = blocking(|| -> kflow_store::Result<_> {
            Ok((store.get_instance(id)?, store.last_seq(id)?))
        })?;
        let mut row =
            row.ok_or_else(|| EngineError::NotFound(format!("instance {id} does not exist")))?;
        if row.status.is_finished() {
            return Err(EngineError::Conflict(format!(
                "instance {id} already {}",
                row.status.as_str()
            )));
        }
        blocking(|| store.set_attention(id, None))?;
        self.parked.remove(id);
        row.status = InstanceStatus::Cancelled;
        row.attention = None;
        let ev = Record::Cancelled.encode(last + 1, now);
        let c = b.commit_for(id, now);
        c.history.push(ev.clone());
        c.status = Some((InstanceStatus::Cancelled, None, None));
        c.clear_work = true;
        b.after.push(After::Live(id.to_string(), ev));
        self.ended(id, &row, b, now);
        Ok(())
    }

    /// Marks an instance that cannot be replayed as needing attention: parked (its work is
    /// not resumed) until an operator cancels it or a build that reads it runs.
    pub(super) fn park(&mut self, id: &str, reason: &str) {
        tracing::error!(instance = %id, reason = %reason, "instance needs attention: parked");
        self.drop_active(id);
        self.subs.retain(|(inst, _), _| inst != id);
        self.parked.insert(id.to_string(), reason.to_string());
        let store = self.shared.store.clone();
        if let Err(e) = blocking(|| store.set_attention(id, Some(reason))) {
            tracing::error!(instance = %id, error = %e, "marking the instance as needing attention failed");
        }
    }
}

pub(super) fn needs_attention(id: &str, reason: &str) -> EngineError {
    EngineError::Conflict(format!("instance {id} needs attention: {reason}"))
}

/// The text of a panic's payload.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

//! Retrying a faulted instance from one of its tasks: a new instance that reuses the journaled
//! results of everything before that task.
//!
//! Why it is correct: the new instance's history is a prefix of the old one's (its `started`
//! record and every record before the failed task's last `task.started`), then a notice saying
//! where it came from. Replaying a prefix of a history is exactly what a restart after a crash
//! at that point does, and the interpreter is deterministic: the same definition version, the
//! same input and the same deliveries give the same effects with the same ids. So the new
//! instance reaches the state the old one had just before the task started, with the same
//! effects open, and goes on live from there: the open effects (the failed task's, and those of
//! parallel branches that had not answered yet) run again; nothing before is run again.

use super::starts::new_row;
use super::*;

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn retry(
        &mut self,
        from: String,
        task: String,
        wf: Arc<Workflow>,
        input: Value,
        records: Vec<(Record, i64)>,
        reply: oneshot::Sender<Result<super::super::Started>>,
        b: &mut Batch,
        now: i64,
    ) {
        if self.draining {
            let _ = reply.send(Err(EngineError::Unavailable));
            return;
        }
        let id = uuid::Uuid::now_v7().to_string();
        let row = new_row(&id, &wf, input, now);
        let mut core = kflow_core::Instance::new(
            wf.clone(),
            self.instance_config(&id, &wf.document.namespace),
        );
        let replayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::recovery::replay(&mut core, records.iter().cloned())
        }));
        let super::recovery::Replayed { priority, trace } = match replayed {
            Ok(r) => r,
            Err(payload) => {
                let _ = reply.send(Err(EngineError::Conflict(format!(
                    "replaying instance {from} up to {task} panicked: {}",
                    panic_message(&*payload)
                ))));
                return;
            }
        };
        let pending = core.pending();
        if core.status().is_finished() || pending.is_empty() {
            let _ = reply.send(Err(EngineError::Conflict(format!(
                "retrying instance {from} from {task} would end the same way: the task does not \
                 wait on anything outside the workflow (a call, a process, a timer, an event), so \
                 its failure comes from the workflow itself; fix the definition and start a new \
                 instance"
            ))));
            return;
        }
        b.commit_for(&id, now).create = Some(row.clone());
        let mut seq = 1;
        for (rec, time) in &records {
            let ev = rec.encode(seq, *time);
            b.commit_for(&id, now).history.push(ev.clone());
            b.after.push(After::Live(id.clone(), ev));
            seq += 1;
        }
        let reused = records
            .iter()
            .filter(|(r, _)| matches!(r, Record::Delivery { .. }))
            .count();
        let mut note = serde_json::Map::new();
        note.insert("type".into(), "instance.retried".into());
        note.insert("from".into(), from.clone().into());
        note.insert("reference".into(), task.clone().into());
        note.insert("reused".into(), reused.into());
        note.insert("time".into(), kflow_core::time::iso8601(now).into());
        let ev = Record::Notice(note).encode(seq, now);
        b.commit_for(&id, now).history.push(ev.clone());
        b.after.push(After::Live(id.clone(), ev));
        tracing::info!(instance = %id, from = %from, task = %task, reused, "retrying from a task");
        self.active.insert(
            id.clone(),
            Active {
                core,
                wf,
                row,
                next_seq: seq + 1,
                trace: crate::traces::TraceCtx::of(&id, trace.as_deref()),
                priority,
                held: Vec::new(),
            },
        );
        // The effects open at that point run (again): as a restart re-runs interrupted work.
        let step = Step {
            commands: pending
                .into_iter()
                .map(|(effect, task, e)| Command::Start {
                    id: effect,
                    task,
                    effect: e,
                })
                .collect(),
            notices: Vec::new(),
            finished: None,
        };
        self.absorb(&id, step, b, now);
        b.after.push(After::ReplyStart(reply, id, true));
    }
}

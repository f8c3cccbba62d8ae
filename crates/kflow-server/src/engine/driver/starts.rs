//! Starts: whether a start repeats an earlier one (a client id or an `Idempotency-Key`), and
//! the new instance — its row, its `started` record and its first turn.

use std::sync::Arc;

use serde_json::Value;

use kflow_core::InstanceConfig;
use kflow_dsl::Workflow;
use kflow_store::{Instance, InstanceStatus};

use super::super::journal::Record;
use super::super::{EngineError, Result};
use super::{Active, After, Batch, Driver, blocking};

impl Driver {
    /// Whether a start repeats an earlier one: `Some(instance)` it does (answer that one),
    /// `None` start anew, `Err` the id or key was used for another request (or the store
    /// could not tell: never guessed).
    pub(super) fn repeat_of(
        &self,
        id: Option<&str>,
        dedupe: Option<&super::super::Dedupe>,
        b: &Batch,
        now: i64,
    ) -> Result<Option<String>> {
        let store = self.shared.store.clone();
        if let Some(d) = dedupe
            && let Some(key) = &d.key
        {
            let found = match b.keys.get(&(d.namespace.clone(), key.clone())) {
                Some((hash, inst)) => Some((hash.clone(), inst.clone())),
                None => blocking(|| store.idempotency_key(&d.namespace, key, now))?
                    .map(|k| (k.request_hash, k.instance_id)),
            };
            if let Some((hash, inst)) = found {
                if hash == d.request_hash {
                    return Ok(Some(inst));
                }
                return Err(EngineError::Conflict(format!(
                    "the idempotency key {key:?} was used for another request (instance {inst}); \
                     use a new key for a new request"
                )));
            }
        }
        let Some(id) = id else {
            return Ok(None);
        };
        let existing = match self.active.get(id) {
            Some(a) => Some(a.row.clone()),
            None if b.by_instance.contains_key(id) => b
                .commits
                .get(b.by_instance[id])
                .and_then(|c| c.create.clone()),
            None => blocking(|| store.get_instance(id))?,
        };
        let Some(row) = existing else {
            return Ok(None);
        };
        if let Some(d) = dedupe {
            // A client-chosen id: the same request again is answered; another one is refused.
            let same = row.namespace == d.namespace
                && row.name == d.name
                && d.version.as_ref().is_none_or(|v| *v == row.version)
                && row.input == d.input;
            if !same {
                return Err(EngineError::Conflict(format!(
                    "instance {id} already exists ({}/{}@{}) for another request",
                    row.namespace, row.name, row.version
                )));
            }
        }
        Ok(Some(id.to_string()))
    }

    pub(super) fn create(
        &mut self,
        id: &str,
        wf: Arc<Workflow>,
        input: Value,
        priority: i64,
        trace: Option<String>,
        b: &mut Batch,
        now: i64,
    ) {
        let row = new_row(id, &wf, input.clone(), now);
        let core =
            kflow_core::Instance::new(wf.clone(), self.instance_config(id, &wf.document.namespace));
        let ctx = crate::traces::TraceCtx::of(id, trace.as_deref());
        let started = Record::Started {
            input: input.clone(),
            priority,
            format: crate::engine::journal::FORMAT,
            trace,
        }
        .encode(1, now);
        let c = b.commit_for(id, now);
        c.create = Some(row.clone());
        c.history.push(started.clone());
        b.after.push(After::Live(id.to_string(), started));
        self.active.insert(
            id.to_string(),
            Active {
                core,
                wf,
                row,
                next_seq: 2,
                trace: ctx,
                priority,
                held: Vec::new(),
            },
        );
        if let Some(step) = self.turn(id, b, now, |core| core.start(input, now)) {
            self.absorb(id, step, b, now);
        }
    }

    pub(super) fn instance_config(&self, id: &str, namespace: &str) -> InstanceConfig {
        let l = self.shared.config.limits;
        InstanceConfig {
            id: id.to_string(),
            secrets: self
                .shared
                .vault
                .for_namespace(&self.shared.config.secrets, namespace),
            runtime: kflow_tasks::emit::runtime_descriptor(),
            limits: kflow_core::Limits {
                tasks_per_turn: l.tasks_per_turn.max(1),
                max_tasks: l.max_tasks,
            },
        }
    }
}

/// The row of a new instance.
pub(super) fn new_row(id: &str, wf: &Workflow, input: Value, now: i64) -> Instance {
    let d = &wf.document;
    Instance {
        id: id.to_string(),
        namespace: d.namespace.clone(),
        name: d.name.clone(),
        version: d.version.clone(),
        status: InstanceStatus::Running,
        input,
        output: None,
        error: None,
        created_ms: now,
        updated_ms: now,
        attention: None,
    }
}

//! Admission under concurrency limits: which new instances start at once, which are queued
//! (committed with a `queued` event) and admitted later, and rebuilding that state at start.

use std::sync::Arc;

use serde_json::Value;

use kflow_dsl::Workflow;
use kflow_store::{Instance, InstanceStatus};

use super::starts::new_row;
use super::{After, Batch, Driver, Record, blocking};
use crate::engine::{EngineError, Result};

impl Driver {
    /// After a restart: which running instances of limited workflows run and which wait;
    /// returns the waiting ones that have room now.
    pub(super) fn rebuild_groups(&mut self) -> Vec<String> {
        let store = self.shared.store.clone();
        // Only instances of limited workflows or namespaces matter: find those first, so that
        // a restart with 100,000 waiting instances of unlimited workflows reads nothing more.
        let Ok(defs) = blocking(|| store.list_definitions(None)) else {
            return Vec::new();
        };
        let mut filters: Vec<kflow_store::InstanceFilter> = Vec::new();
        for d in &defs {
            let limited = self
                .shared
                .workflow(&d.namespace, &d.name, &d.version)
                .ok()
                .is_some_and(|wf| matches!(crate::engine::concurrency::spec(&wf), Ok(Some(_))));
            if limited {
                filters.push(kflow_store::InstanceFilter {
                    namespace: Some(d.namespace.clone()),
                    name: Some(d.name.clone()),
                    version: Some(d.version.clone()),
                    status: Some(InstanceStatus::Running),
                    ..Default::default()
                });
            }
        }
        for ns in self.shared.config.namespace_limits.keys() {
            filters.push(kflow_store::InstanceFilter {
                namespace: Some(ns.clone()),
                status: Some(InstanceStatus::Running),
                ..Default::default()
            });
        }
        let mut rows: Vec<Instance> = Vec::new();
        for f in filters {
            let mut cursor: Option<String> = None;
            loop {
                let Ok(page) = blocking(|| store.list_instances(&f, cursor.as_deref(), 1000))
                else {
                    break;
                };
                rows.extend(page.items);
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows.dedup_by(|a, b| a.id == b.id);
        // On a store shared by several nodes: only this node's instances.
        let mine: std::collections::HashSet<String> = match blocking(|| store.running_instances()) {
            Ok(ids) => ids.into_iter().collect(),
            Err(_) => return Vec::new(),
        };
        for row in rows {
            if mine.contains(&row.id) {
                self.regroup(row);
            }
        }
        self.fill_groups()
    }

    /// Counts one running instance in its concurrency groups (running or waiting for a slot).
    pub(super) fn regroup(&mut self, row: Instance) {
        let store = self.shared.store.clone();
        let id = row.id.clone();
        let Ok(head) = blocking(|| store.history(&id, 0, 2)) else {
            return;
        };
        let Ok(wf) = self
            .shared
            .workflow(&row.namespace, &row.name, &row.version)
        else {
            return;
        };
        let Ok((groups, _)) = self.groups_of(&wf, &row.input) else {
            return;
        };
        if groups.is_empty() {
            return;
        }
        let records = match crate::engine::journal::decode_all(&id, &head) {
            Ok(r) => r,
            Err(e) => {
                self.park(&id, &e.to_string());
                return;
            }
        };
        if records.iter().any(|r| matches!(r, Record::Started { .. })) {
            self.groups.add_running(&id, &groups);
        } else {
            self.groups.add_waiting(&id, &groups);
        }
    }

    /// On several nodes: takes the instance's slots in the database (every node's running
    /// instances count); a store that cannot be asked counts as full (asked again later).
    pub(super) fn claim(
        &self,
        id: &str,
        groups: &[(String, usize)],
        replacing: Option<&str>,
    ) -> bool {
        if self.shared.pump.is_none() {
            return true;
        }
        let store = self.shared.store.clone();
        match blocking(|| store.claim_slots(id, groups, replacing)) {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "claiming a concurrency slot failed; trying again");
                false
            }
        }
    }

    /// The waiting instances that may start now (`Groups::fill`), each with its slots taken
    /// in the database on several nodes; the others wait on, in their order.
    pub(super) fn fill_groups(&mut self) -> Vec<String> {
        let admitted = self.groups.fill();
        self.claimed(admitted)
    }

    /// Of the instances the local groups admitted, those whose slots the database gives too
    /// (on several nodes); the others wait again, first in line.
    pub(super) fn claimed(&mut self, admitted: Vec<String>) -> Vec<String> {
        if self.shared.pump.is_none() {
            return admitted;
        }
        // At most this many claims (a transaction each) per turn of the driver: the rest wait
        // for the next scan, so that many waiting instances cannot stall the driver.
        const CLAIMS_PER_TURN: usize = 64;
        let mut ok = Vec::new();
        let mut back = Vec::new();
        for (n, id) in admitted.into_iter().enumerate() {
            let groups = self.groups.groups_of_id(&id);
            if n < CLAIMS_PER_TURN && self.claim(&id, &groups, None) {
                ok.push(id);
            } else {
                back.push(id);
            }
        }
        self.groups.requeue(back);
        ok
    }

    /// Starts an instance that waited for a concurrency slot.
    pub(super) fn admit(&mut self, id: &str, b: &mut Batch, now: i64) {
        if self.load(id).is_err() {
            return;
        }
        let Some(a) = self.active.get_mut(id) else {
            return;
        };
        if a.row.status != InstanceStatus::Running {
            return;
        }
        let input = a.row.input.clone();
        let seq = a.next_seq;
        a.next_seq += 1;
        let started = Record::started(input.clone(), a.priority).encode(seq, now);
        b.commit_for(id, now).history.push(started.clone());
        b.after.push(After::Live(id.to_string(), started));
        if let Some(step) = self.turn(id, b, now, |core| core.start(input, now)) {
            self.absorb(id, step, b, now);
        }
    }

    /// Commits an instance that waits for a concurrency slot: row and a `queued` event only.
    fn create_queued(
        &mut self,
        id: &str,
        wf: &Workflow,
        input: Value,
        priority: i64,
        b: &mut Batch,
        now: i64,
    ) {
        let row = new_row(id, wf, input, now);
        let queued = Record::Queued {
            reason: "concurrency limit".into(),
            priority,
        }
        .encode(1, now);
        let c = b.commit_for(id, now);
        c.create = Some(row);
        c.history.push(queued.clone());
        b.after.push(After::Live(id.to_string(), queued));
    }

    /// Applies the workflow's concurrency limit to a new instance: `Ok(true)` start it now,
    /// `Ok(false)` it was queued, `Err` refused.
    pub(super) fn admission(
        &mut self,
        id: &str,
        wf: &Arc<Workflow>,
        input: &Value,
        priority: i64,
        b: &mut Batch,
        now: i64,
    ) -> Result<bool> {
        use crate::engine::concurrency::OnLimit;
        let (groups, spec) = self.groups_of(wf, input)?;
        if groups.is_empty() {
            return Ok(true);
        }
        let (full, oldest) = match self.groups.full(&groups) {
            // Room here; on several nodes, the database counts every node's instances too.
            None if self.claim(id, &groups, None) => {
                self.groups.add_running(id, &groups);
                return Ok(true);
            }
            None => (groups[0].0.clone(), None),
            Some(f) => f,
        };
        // The namespace limit always queues; the workflow's own limit follows its onLimit.
        let policy = if full.starts_with("ns:") {
            OnLimit::Queue
        } else {
            spec.map_or(OnLimit::Queue, |s| s.on_limit)
        };
        match policy {
            OnLimit::Skip => Err(EngineError::Conflict(format!(
                "{full} already has as many running instances as its concurrency limit allows (onLimit: skip): not started"
            ))),
            OnLimit::Queue => {
                self.create_queued(id, wf, input.clone(), priority, b, now);
                self.groups.add_waiting(id, &groups);
                Ok(false)
            }
            OnLimit::CancelOldest => {
                if let Some(o) = &oldest {
                    let _ = self.control(o, b, now, |a, now| {
                        Ok((Record::Cancelled, Some(a.core.cancel(now))))
                    });
                }
                // The oldest may run on another node: then the new one waits its turn. (The
                // one cancelled here ends in this batch: its slot is the new one's.)
                if self.groups.full(&groups).is_some()
                    || !self.claim(id, &groups, oldest.as_deref())
                {
                    self.create_queued(id, wf, input.clone(), priority, b, now);
                    self.groups.add_waiting(id, &groups);
                    return Ok(false);
                }
                self.groups.add_running(id, &groups);
                Ok(true)
            }
        }
    }

    /// The concurrency groups of a new instance: its workflow (or workflow key) when the
    /// workflow sets a limit, its namespace when the server limits it.
    fn groups_of(
        &self,
        wf: &Workflow,
        input: &Value,
    ) -> Result<(
        Vec<(String, usize)>,
        Option<crate::engine::concurrency::Spec>,
    )> {
        let invalid = |m: String| EngineError::Invalid {
            message: m,
            details: vec![],
        };
        let mut groups = Vec::new();
        let spec = crate::engine::concurrency::spec(wf).map_err(invalid)?;
        if let Some(s) = &spec {
            groups.push((
                crate::engine::concurrency::group_of(wf, s, input).map_err(invalid)?,
                s.limit,
            ));
        }
        if let Some(limit) = self
            .shared
            .config
            .namespace_limits
            .get(&wf.document.namespace)
        {
            groups.push((format!("ns:{}", wf.document.namespace), *limit));
        }
        Ok((groups, spec))
    }
}

//! Concurrency control of instances: at most N running instances of a workflow, or of each
//! value of a concurrency key (one at a time per customer, say).
//!
//! Settings are a kflow extension in `document.metadata.kflow.concurrency` (valid DSL):
//!
//! ```yaml
//! document:
//!   metadata:
//!     kflow:
//!       concurrency:
//!         limit: 1                      # running instances at most (per key value)
//!         key: ${ .customerId }         # optional jq on the instance input
//!         onLimit: queue                # queue (default) | skip | cancelOldest
//! ```
//!
//! The settings are checked when the workflow is loaded (see `kflow_dsl::settings`).
//!
//! `queue`: the instance is committed at once (the caller gets its id) but starts only when a
//! slot frees, oldest first. `skip`: the start is refused (409). `cancelOldest`: the oldest
//! running instance of the group is cancelled and the new one starts.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde_json::Value;

use kflow_dsl::Workflow;
use kflow_dsl::expr::Expr;

pub use kflow_dsl::model::OnLimit;

#[derive(Debug, Clone)]
pub struct Spec {
    pub limit: usize,
    pub key: Option<Expr>,
    pub on_limit: OnLimit,
}

/// The concurrency settings of a workflow; `Ok(None)` when it has none. They were checked when
/// the workflow was loaded (`kflow_dsl` reports a wrong one at its line and column), so this
/// cannot fail any more; the `Result` stays for the callers.
pub fn spec(wf: &Workflow) -> Result<Option<Spec>, String> {
    Ok(wf.kflow.concurrency.as_ref().map(|c| Spec {
        limit: usize::try_from(c.limit).unwrap_or(usize::MAX),
        key: c.key.clone(),
        on_limit: c.on_limit,
    }))
}

/// The group an instance belongs to: the workflow, plus the key's value when there is a key.
pub fn group_of(wf: &Workflow, spec: &Spec, input: &Value) -> Result<String, String> {
    let d = &wf.document;
    let base = format!("{}/{}", d.namespace, d.name);
    match &spec.key {
        None => Ok(base),
        Some(e) => {
            let v = e
                .eval(input, &())
                .map_err(|e| format!("the concurrency key failed: {e}"))?;
            Ok(format!("{base}#{v}"))
        }
    }
}

/// Running and waiting instances. An instance belongs to one or more groups (its workflow or
/// workflow key, its namespace when the server limits it), each with a limit; it runs only when
/// every one of its groups has room. Waiting instances start in arrival order.
#[derive(Debug, Default)]
pub struct Groups {
    limits: HashMap<String, usize>,
    /// Running instances per group; ids are UUID v7, so the first is the oldest.
    running: HashMap<String, BTreeSet<String>>,
    of: HashMap<String, Vec<String>>,
    waiting: VecDeque<String>,
}

impl Groups {
    fn has_room(&self, group: &str) -> bool {
        let limit = self.limits.get(group).copied().unwrap_or(usize::MAX);
        self.running.get(group).map_or(0, BTreeSet::len) < limit
    }

    /// `None` when every group has room; else the first full group and its oldest instance.
    pub fn full(&mut self, groups: &[(String, usize)]) -> Option<(String, Option<String>)> {
        for (g, limit) in groups {
            self.limits.insert(g.clone(), *limit);
        }
        groups
            .iter()
            .find(|(g, _)| !self.has_room(g))
            .map(|(g, _)| {
                (
                    g.clone(),
                    self.running.get(g).and_then(|r| r.first().cloned()),
                )
            })
    }

    pub fn add_running(&mut self, id: &str, groups: &[(String, usize)]) {
        for (g, limit) in groups {
            self.limits.insert(g.clone(), *limit);
            self.running
                .entry(g.clone())
                .or_default()
                .insert(id.to_string());
        }
        self.of.insert(
            id.to_string(),
            groups.iter().map(|(g, _)| g.clone()).collect(),
        );
    }

    pub fn add_waiting(&mut self, id: &str, groups: &[(String, usize)]) {
        for (g, limit) in groups {
            self.limits.insert(g.clone(), *limit);
        }
        self.of.insert(
            id.to_string(),
            groups.iter().map(|(g, _)| g.clone()).collect(),
        );
        self.waiting.push_back(id.to_string());
    }

    /// An instance finished (or was cancelled): frees its slots; returns the waiting instances
    /// that may start now (counted as running from here on).
    pub fn finished(&mut self, id: &str) -> Vec<String> {
        let Some(groups) = self.of.remove(id) else {
            return Vec::new();
        };
        for g in &groups {
            if let Some(r) = self.running.get_mut(g) {
                r.remove(id);
                if r.is_empty() {
                    self.running.remove(g);
                }
            }
        }
        self.waiting.retain(|w| w != id);
        self.fill()
    }

    /// Admits waiting instances, in arrival order, wherever all their groups have room.
    pub fn fill(&mut self) -> Vec<String> {
        let mut admitted = Vec::new();
        let mut still = VecDeque::with_capacity(self.waiting.len());
        while let Some(w) = self.waiting.pop_front() {
            let groups = self.of.get(&w).cloned().unwrap_or_default();
            if groups.iter().all(|g| self.has_room(g)) {
                for g in &groups {
                    self.running.entry(g.clone()).or_default().insert(w.clone());
                }
                admitted.push(w);
            } else {
                still.push_back(w);
            }
        }
        self.waiting = still;
        admitted
    }

    /// The groups of an instance and their limits.
    pub fn groups_of_id(&self, id: &str) -> Vec<(String, usize)> {
        self.of
            .get(id)
            .map(|gs| {
                gs.iter()
                    .map(|g| (g.clone(), self.limits.get(g).copied().unwrap_or(usize::MAX)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Admitted instances that could not start after all (another node holds the slots):
    /// waiting again, first in line, in their order.
    pub fn requeue(&mut self, ids: Vec<String>) {
        for id in ids.into_iter().rev() {
            if let Some(groups) = self.of.get(&id) {
                for g in groups {
                    if let Some(r) = self.running.get_mut(g) {
                        r.remove(&id);
                        if r.is_empty() {
                            self.running.remove(g);
                        }
                    }
                }
            }
            self.waiting.push_front(id);
        }
    }

    pub fn is_waiting(&self, id: &str) -> bool {
        self.waiting.iter().any(|w| w == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, limit: usize) -> (String, usize) {
        (name.to_string(), limit)
    }

    #[test]
    fn slots_free_in_order() {
        let mut gs = Groups::default();
        let w = [g("w", 1)];
        assert_eq!(gs.full(&w), None);
        gs.add_running("a", &w);
        assert_eq!(gs.full(&w), Some(("w".to_string(), Some("a".to_string()))));
        gs.add_waiting("b", &w);
        gs.add_waiting("c", &w);
        assert!(gs.is_waiting("b"));
        assert_eq!(gs.finished("a"), vec!["b".to_string()]);
        assert!(!gs.is_waiting("b"));
        assert_eq!(
            gs.finished("c"),
            Vec::<String>::new(),
            "a waiting one cancelled frees nothing"
        );
        assert_eq!(gs.finished("b"), Vec::<String>::new());
        assert_eq!(gs.full(&w), None);
    }

    #[test]
    fn every_group_must_have_room() {
        let mut gs = Groups::default();
        // Namespace limit 2 across two workflows with limit 5 each.
        gs.add_running("a1", &[g("ns:x", 2), g("x/a", 5)]);
        gs.add_running("b1", &[g("ns:x", 2), g("x/b", 5)]);
        assert!(
            gs.full(&[g("ns:x", 2), g("x/a", 5)]).is_some(),
            "the namespace is full"
        );
        gs.add_waiting("a2", &[g("ns:x", 2), g("x/a", 5)]);
        assert_eq!(gs.finished("b1"), vec!["a2".to_string()]);
    }
}

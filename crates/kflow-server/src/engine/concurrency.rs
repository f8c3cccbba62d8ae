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
//! `queue`: the instance is committed at once (the caller gets its id) but starts only when a
//! slot frees, oldest first. `skip`: the start is refused (409). `cancelOldest`: the oldest
//! running instance of the group is cancelled and the new one starts.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde_json::Value;

use kflow_dsl::Workflow;
use kflow_dsl::expr::{Expr, strip_dollar_braces};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    Queue,
    Skip,
    CancelOldest,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub limit: usize,
    pub key: Option<Expr>,
    pub on_limit: OnLimit,
}

/// Reads and checks the settings of a workflow; `Ok(None)` when it has none.
pub fn spec(wf: &Workflow) -> Result<Option<Spec>, String> {
    let Some(c) = wf.definition.pointer("/document/metadata/kflow/concurrency") else { return Ok(None) };
    let obj = c.as_object().ok_or("document.metadata.kflow.concurrency must be a mapping")?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "limit" | "key" | "onLimit") {
            return Err(format!("unknown key '{k}' in document.metadata.kflow.concurrency (expected limit, key, onLimit)"));
        }
    }
    let limit = obj
        .get("limit")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
        .ok_or("document.metadata.kflow.concurrency.limit must be a whole number of at least 1")?;
    let key = match obj.get("key") {
        None => None,
        Some(Value::String(s)) => {
            let src = strip_dollar_braces(s).unwrap_or(s);
            Some(Expr::compile(src).map_err(|e| format!("document.metadata.kflow.concurrency.key: {e}"))?)
        }
        Some(_) => return Err("document.metadata.kflow.concurrency.key must be a jq expression".into()),
    };
    let on_limit = match obj.get("onLimit").and_then(Value::as_str) {
        None | Some("queue") => OnLimit::Queue,
        Some("skip") => OnLimit::Skip,
        Some("cancelOldest") => OnLimit::CancelOldest,
        Some(other) => return Err(format!("document.metadata.kflow.concurrency.onLimit '{other}' is not one of queue, skip, cancelOldest")),
    };
    Ok(Some(Spec { limit: limit as usize, key, on_limit }))
}

/// The group an instance belongs to: the workflow, plus the key's value when there is a key.
pub fn group_of(wf: &Workflow, spec: &Spec, input: &Value) -> Result<String, String> {
    let d = &wf.document;
    let base = format!("{}/{}", d.namespace, d.name);
    match &spec.key {
        None => Ok(base),
        Some(e) => {
            let v = e.eval(input, &()).map_err(|e| format!("the concurrency key failed: {e}"))?;
            Ok(format!("{base}#{v}"))
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    limit: usize,
    /// Running instances; ids are UUID v7, so the first is the oldest.
    running: BTreeSet<String>,
    waiting: VecDeque<String>,
}

/// Running and waiting instances per group.
#[derive(Debug, Default)]
pub struct Groups {
    groups: HashMap<String, Group>,
    of: HashMap<String, String>,
}

impl Groups {
    /// Whether `group` has a free slot; else its oldest running instance.
    pub fn full(&mut self, group: &str, limit: usize) -> Option<Option<String>> {
        let g = self.groups.entry(group.to_string()).or_default();
        g.limit = limit;
        if g.running.len() < limit { None } else { Some(g.running.first().cloned()) }
    }

    pub fn add_running(&mut self, group: &str, limit: usize, id: &str) {
        let g = self.groups.entry(group.to_string()).or_default();
        g.limit = limit;
        g.running.insert(id.to_string());
        self.of.insert(id.to_string(), group.to_string());
    }

    pub fn add_waiting(&mut self, group: &str, limit: usize, id: &str) {
        let g = self.groups.entry(group.to_string()).or_default();
        g.limit = limit;
        g.waiting.push_back(id.to_string());
        self.of.insert(id.to_string(), group.to_string());
    }

    /// An instance finished (or was cancelled): frees its slot; returns the waiting instances
    /// that may start now (they are counted as running from here on).
    pub fn finished(&mut self, id: &str) -> Vec<String> {
        let Some(group) = self.of.remove(id) else { return Vec::new() };
        let Some(g) = self.groups.get_mut(&group) else { return Vec::new() };
        g.running.remove(id);
        g.waiting.retain(|w| w != id);
        let mut admitted = Vec::new();
        while g.running.len() < g.limit {
            let Some(next) = g.waiting.pop_front() else { break };
            g.running.insert(next.clone());
            admitted.push(next);
        }
        for a in &admitted {
            self.of.insert(a.clone(), group.clone());
        }
        if g.running.is_empty() && g.waiting.is_empty() {
            self.groups.remove(&group);
        }
        admitted
    }

    /// Admits waiting instances wherever a group has room (after a restart); returns them.
    pub fn fill(&mut self) -> Vec<String> {
        let mut admitted = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            while g.running.len() < g.limit {
                let Some(next) = g.waiting.pop_front() else { break };
                g.running.insert(next.clone());
                admitted.push((next, name.clone()));
            }
        }
        admitted.into_iter().map(|(id, _)| id).collect()
    }

    pub fn is_waiting(&self, id: &str) -> bool {
        self.of.get(id).and_then(|g| self.groups.get(g)).is_some_and(|g| g.waiting.iter().any(|w| w == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_free_in_order() {
        let mut g = Groups::default();
        assert_eq!(g.full("w", 1), None);
        g.add_running("w", 1, "a");
        assert_eq!(g.full("w", 1), Some(Some("a".to_string())));
        g.add_waiting("w", 1, "b");
        g.add_waiting("w", 1, "c");
        assert!(g.is_waiting("b"));
        assert_eq!(g.finished("a"), vec!["b".to_string()]);
        assert!(!g.is_waiting("b"));
        assert_eq!(g.finished("c"), Vec::<String>::new(), "a waiting one cancelled frees nothing");
        assert_eq!(g.finished("b"), Vec::<String>::new());
        assert_eq!(g.full("w", 1), None);
    }
}

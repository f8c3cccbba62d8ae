//! The engine's side of learned durations (`crate::adaptive::learn`): flushing what finished
//! tasks taught into the store, and the analysis `kflow analyze` shows.

use std::time::Duration;

use kflow_api::definitions::{Analysis, Quantiles, TaskAnalysis, VersionAnalysis};
use kflow_store::TaskStatsRow;

use crate::adaptive::learn::{TaskStats, merge_json};

use super::{Engine, Result, Shared};

/// How long the ranks of a workflow version are used before they are computed again from what
/// was learned since.
const RANKS_FOR_MS: i64 = 30_000;

/// How often a node merges what it learned into the store.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Below this many runs a task's figures are shown as indications only.
const CONFIDENT_RUNS: u64 = 20;

/// What was learned of one workflow version, ready for dispatch and estimates: per task
/// pointer, its upward rank and its own expected run time, at the median and at p95.
#[derive(Debug, Default)]
pub(crate) struct RankSet {
    pub rank50: std::collections::HashMap<String, f64>,
    pub rank95: std::collections::HashMap<String, f64>,
    pub d50: std::collections::HashMap<String, f64>,
    pub d95: std::collections::HashMap<String, f64>,
}

/// A workflow version's rank set, and when (monotonic ms) it was computed.
pub(crate) type Ranks = (i64, std::sync::Arc<RankSet>);

impl Shared {
    /// A task's expected remaining path (ms): its upward rank in its workflow's graph from the
    /// learned median run times (0 when nothing is learned).
    pub(crate) fn rank_of(
        &self,
        wf: &kflow_dsl::Workflow,
        ns: &str,
        name: &str,
        version: &str,
        task: &str,
    ) -> f64 {
        self.ranks_of(wf, ns, name, version)
            .rank50
            .get(task)
            .copied()
            .unwrap_or(0.0)
    }

    /// The rank set of a workflow version: computed once every 30 s (a read of its
    /// statistics; every 2 s while nothing is learned), cached meanwhile.
    pub(crate) fn ranks_of(
        &self,
        wf: &kflow_dsl::Workflow,
        ns: &str,
        name: &str,
        version: &str,
    ) -> std::sync::Arc<RankSet> {
        let key = (ns.to_string(), name.to_string(), version.to_string());
        let now = super::mono_ms();
        if let Some((at, ranks)) = self
            .ranks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && now - at < RANKS_FOR_MS
        {
            return ranks.clone();
        }
        let rows = self.store.task_stats(ns, name).unwrap_or_default();
        let mut set = RankSet::default();
        for r in rows.into_iter().filter(|r| r.version == version) {
            let Ok(s) = serde_json::from_value::<TaskStats>(r.data) else {
                continue;
            };
            let q = |p: f64| s.run.quantile(p).ok().flatten().map(|v| v * 1e3);
            if let (Some(a), Some(b)) = (q(0.5), q(0.95)) {
                set.d50.insert(r.task.clone(), a);
                set.d95.insert(r.task, b);
            }
        }
        let graph = kflow_dsl::graph::graph(wf, None);
        set.rank50 = crate::adaptive::rank::of_graph(&graph, &set.d50);
        set.rank95 = crate::adaptive::rank::of_graph(&graph, &set.d95);
        let learned = !set.d50.is_empty();
        let set = std::sync::Arc::new(set);
        let mut cache = self.ranks.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        // Nothing learned yet: asked again after the next flush, not in 30 s.
        let at = if learned {
            now
        } else {
            now - RANKS_FOR_MS + FLUSH_EVERY.as_millis() as i64
        };
        cache.insert(key, (at, set.clone()));
        set
    }
}

impl Engine {
    /// Merges what finished tasks taught since the last flush into the store (what could not
    /// be written waits for the next flush).
    pub async fn flush_learned(&self) -> Result<()> {
        let learned = self.shared.queue.learned.clone();
        let taken = learned.take();
        if taken.is_empty() {
            return Ok(());
        }
        let now = self.shared.now();
        let rows: Vec<TaskStatsRow> = taken
            .iter()
            .filter_map(|((ns, name, version, task), s)| {
                Some(TaskStatsRow {
                    namespace: ns.clone(),
                    name: name.clone(),
                    version: version.clone(),
                    task: task.clone(),
                    data: serde_json::to_value(s).ok()?,
                    updated_ms: now,
                })
            })
            .collect();
        match self
            .blocking(move |s| s.merge_task_stats(&rows, &merge_json))
            .await
        {
            Ok(()) => {
                // A rank set that lacks a task learned just now is computed again at its next
                // use, not up to 30 s later: the first runs of a version shape dispatch soon.
                let mut cache = self.shared.ranks.lock().unwrap_or_else(|p| p.into_inner());
                for ((ns, name, version, task), _) in &taken {
                    let key = (ns.clone(), name.clone(), version.clone());
                    if cache
                        .get(&key)
                        .is_some_and(|(_, r)| !r.d50.contains_key(task))
                    {
                        cache.remove(&key);
                    }
                }
                Ok(())
            }
            Err(e) => {
                learned.put_back(taken);
                Err(e)
            }
        }
    }

    /// Flushes every `FLUSH_EVERY` while the engine runs (holds it weakly).
    pub(crate) fn spawn_learning(&self) {
        let weak = std::sync::Arc::downgrade(&self.shared);
        let (tx, driver) = (self.tx.clone(), self.driver.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let engine = Engine {
                    shared,
                    tx: tx.clone(),
                    driver: driver.clone(),
                };
                if let Err(e) = engine.flush_learned().await {
                    tracing::warn!(error = %e, "storing learned task durations failed; trying again");
                }
            }
        });
    }

    /// What was learned of `ns/name` (every version, or `version`), per task.
    pub async fn analysis(&self, ns: &str, name: &str, version: Option<&str>) -> Result<Analysis> {
        let _ = self.flush_learned().await;
        let (n, m) = (ns.to_string(), name.to_string());
        let rows = self.blocking(move |s| s.task_stats(&n, &m)).await?;
        let mut versions: Vec<VersionAnalysis> = Vec::new();
        let mut retry_ok: std::collections::HashMap<
            String,
            std::collections::HashMap<String, u64>,
        > = Default::default();
        for r in rows {
            if version.is_some_and(|v| v != r.version) {
                continue;
            }
            let Ok(stats) = serde_json::from_value::<TaskStats>(r.data) else {
                continue;
            };
            let runs = stats.count();
            if runs == 0 {
                continue;
            }
            retry_ok
                .entry(r.version.clone())
                .or_default()
                .insert(r.task.clone(), stats.retry_ok);
            let q = |sk: &sketches_ddsketch::DDSketch| {
                let at = |p: f64| sk.quantile(p).ok().flatten().unwrap_or(0.0) * 1e3;
                Quantiles {
                    p50: round(at(0.5)),
                    p95: round(at(0.95)),
                    p99: round(at(0.99)),
                }
            };
            let task = TaskAnalysis {
                task: r.task,
                runs,
                failed: stats.failed,
                retries: stats.retries,
                failure_rate: stats.failed as f64 / runs as f64,
                retry_rate: stats.retries as f64 / runs as f64,
                run_ms: q(&stats.run),
                wait_ms: q(&stats.wait),
                confident: runs >= CONFIDENT_RUNS,
            };
            match versions.iter_mut().find(|v| v.version == r.version) {
                Some(v) => v.tasks.push(task),
                None => versions.push(VersionAnalysis {
                    version: r.version,
                    tasks: vec![task],
                    recommendations: Vec::new(),
                    critical_path: Vec::new(),
                    critical_path_ms: 0.0,
                    task_time_ms: 0.0,
                    hot_spots: Vec::new(),
                }),
            }
        }
        versions.sort_by(|a, b| kflow_store::semver::compare(&b.version, &a.version));
        for v in &mut versions {
            v.tasks.sort_by_key(|t| task_order(&t.task));
            let mut hot: Vec<&TaskAnalysis> = v
                .tasks
                .iter()
                .filter(|t| t.failure_rate + t.retry_rate >= 0.05)
                .collect();
            hot.sort_by_key(|t| std::cmp::Reverse(t.failed + t.retries));
            v.hot_spots = hot.iter().map(|t| t.task.clone()).collect();
            let d50: std::collections::HashMap<String, f64> = v
                .tasks
                .iter()
                .map(|t| (t.task.clone(), t.run_ms.p50))
                .collect();
            v.task_time_ms = d50.values().sum();
            // The document of that version: its tasks' settings and lines.
            if let (Ok(def), Ok(wf)) = (
                self.definition(ns, name, Some(&v.version)).await,
                self.compiled(ns, name, &v.version),
            ) {
                let graph = kflow_dsl::graph::graph(&wf, None);
                (v.critical_path, v.critical_path_ms) =
                    crate::adaptive::rank::critical_path(&graph, &d50);
                v.recommendations = crate::adaptive::advice::advise(
                    &wf,
                    &def.source,
                    &v.tasks,
                    &retry_ok.remove(&v.version).unwrap_or_default(),
                );
            }
        }
        // A task whose p95 rose by half or more from one version to the next: flagged in the
        // version that changed it (both with enough runs).
        for i in 0..versions.len().saturating_sub(1) {
            let (newer, older) = versions.split_at_mut(i + 1);
            let found = drifted(&newer[i], &older[0], 1.5);
            newer[i].recommendations.extend(found);
        }
        Ok(Analysis {
            namespace: ns.to_string(),
            name: name.to_string(),
            versions,
        })
    }
}

fn round(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

/// Tasks in document order: `/do/2/x` before `/do/10/y` (numbers compared as numbers).
fn task_order(pointer: &str) -> Vec<(u64, String)> {
    pointer
        .split('/')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (u64::MAX, p.to_string()),
        })
        .collect()
}

/// The tasks of `newer` whose p95 run time is more than `factor` × what it was in `older`, both
/// with enough runs to judge, as `drift` recommendations naming the version that changed it.
pub(crate) fn drifted(
    newer: &VersionAnalysis,
    older: &VersionAnalysis,
    factor: f64,
) -> Vec<kflow_api::definitions::Recommendation> {
    let mut found = Vec::new();
    for t in newer.tasks.iter().filter(|t| t.confident) {
        if let Some(o) = older.tasks.iter().find(|o| o.task == t.task && o.confident)
            && o.run_ms.p95 > 0.0
            && t.run_ms.p95 > factor * o.run_ms.p95
        {
            found.push(kflow_api::definitions::Recommendation {
                kind: "drift".into(),
                task: t.task.clone(),
                line: None,
                message: format!(
                    "{} got slower with version {}: its p95 run time rose by {:.0}%",
                    t.task,
                    newer.version,
                    (t.run_ms.p95 / o.run_ms.p95 - 1.0) * 100.0
                ),
                evidence: format!(
                    "p95 {:.1} ms in {} ({} runs), {:.1} ms in {} ({} runs)",
                    t.run_ms.p95, newer.version, t.runs, o.run_ms.p95, older.version, o.runs
                ),
            });
        }
    }
    found
}

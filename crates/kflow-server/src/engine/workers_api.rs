//! The engine's side of remote workers: registration, long-polls for leases, heartbeats,
//! results, draining, and what the workers and queues look like.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Engine, EngineError, Result, now_ms, queue, workers};

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct WorkerSpec {
    /// Stable id; generated when absent.
    pub id: Option<String>,
    pub queues: Vec<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `cpu=4,memory=8Gi,gpu=1` (a `tasks` slot count defaults to 16).
    #[serde(default)]
    pub capacity: Option<String>,
    /// Who registers it (a token's name); a worker id held by another owner is refused.
    #[serde(skip)]
    pub owner: Option<String>,
    /// The namespaces whose tasks it may take; `None`: all.
    #[serde(skip)]
    pub namespaces: Option<Vec<String>>,
}

/// A task handed to a worker.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub lease: String,
    pub instance: String,
    pub effect: u64,
    pub task: String,
    pub effect_def: kflow_core::Effect,
    pub attempt: u32,
    pub expires_ms: i64,
}

/// One work queue as `GET /api/v1/queues` lists it (a wire type: the engine builds it).
pub use kflow_api::workers::QueueView;

impl Engine {
    pub fn lease_ttl_ms(&self) -> i64 {
        self.shared.queue.ttl_ms
    }

    /// Registers (or re-registers) a worker; returns its id.
    pub fn register_worker(&self, spec: WorkerSpec) -> Result<String> {
        if spec.queues.is_empty() || spec.queues.iter().any(|q| q.trim().is_empty()) {
            return Err(EngineError::Invalid {
                message: "a worker needs at least one non-empty queue name".into(),
                details: vec![],
            });
        }
        let capacity =
            queue::parse_capacity(spec.capacity.as_deref().unwrap_or("")).map_err(|e| {
                EngineError::Invalid {
                    message: format!("invalid capacity: {e}"),
                    details: vec![],
                }
            })?;
        let id = spec
            .id
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("w-{}", uuid::Uuid::now_v7()));
        if id == workers::BUILTIN {
            return Err(EngineError::Conflict(
                "the worker id 'builtin' is reserved for the server's own worker".into(),
            ));
        }
        if let Some(w) = self.shared.queue.lock().worker(&id)
            && w.owner != spec.owner
        {
            return Err(EngineError::Forbidden(format!(
                "worker id {id:?} is registered by another token"
            )));
        }
        self.shared.queue.register(queue::Worker {
            owner: spec.owner,
            namespaces: spec.namespaces,
            id: id.clone(),
            queues: spec.queues,
            labels: spec.labels,
            capacity,
            used: Default::default(),
            leases: Default::default(),
            last_seen_ms: now_ms(),
            draining: false,
            builtin: false,
            waiting: false,
        });
        Ok(id)
    }

    /// Who registered a worker: `None` when there is no such worker, `Some(None)` when it was
    /// registered without a token.
    pub fn worker_owner(&self, id: &str) -> Option<Option<String>> {
        self.shared.queue.lock().worker(id).map(|w| w.owner.clone())
    }

    fn known_worker(&self, id: &str) -> Result<()> {
        if self.shared.queue.lock().worker(id).is_some() {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!(
                "worker {id} is not registered (or was forgotten after going silent): register again"
            )))
        }
    }

    /// Long-polls for up to `max` tasks for a registered worker.
    pub async fn poll_work(
        &self,
        worker: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LeaseView>> {
        self.known_worker(worker)?;
        let leases = self
            .shared
            .queue
            .poll(worker, max.clamp(1, 64), wait.min(Duration::from_secs(60)))
            .await;
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            let Some(attempt) = workers::attempt_of(&self.shared, &l).await else {
                // The effect was answered or cancelled meanwhile: drop the lease.
                let _ = self.shared.queue.lock().complete(&l.id, worker);
                continue;
            };
            out.push(LeaseView {
                lease: l.id,
                instance: l.item.instance,
                effect: l.item.effect_id,
                task: l.item.task,
                effect_def: l.item.effect,
                attempt,
                expires_ms: l.expires_ms,
            });
        }
        Ok(out)
    }

    /// Renews a worker's leases; returns the leases it reported that it must stop.
    pub fn heartbeat(&self, worker: &str, running: &[String]) -> Result<Vec<String>> {
        self.shared.queue.heartbeat(worker, running).ok_or_else(|| {
            EngineError::NotFound(format!("worker {worker} is not registered (or was forgotten after going silent): register again"))
        })
    }

    /// A worker's result for a lease it holds; refused (Conflict) when the lease expired.
    /// Ends a lease with its result; returns once the result is committed (an error when it
    /// could not be: the task then runs again).
    pub async fn complete_lease(
        &self,
        worker: &str,
        lease: &str,
        result: std::result::Result<Value, kflow_core::WfError>,
    ) -> Result<()> {
        let (ack, committed) = oneshot::channel();
        workers::deliver(
            &self.shared.queue,
            &self.tx,
            lease,
            worker,
            result,
            Some(ack),
        )
        .map_err(EngineError::Conflict)?;
        committed.await.map_err(|_| EngineError::Unavailable)?
    }

    /// Stops a worker taking work; it finishes what it has.
    pub fn drain_worker(&self, worker: &str) -> Result<()> {
        if self.shared.queue.lock().set_draining(worker) {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!(
                "worker {worker} is not registered"
            )))
        }
    }

    pub fn workers(&self) -> Vec<queue::Worker> {
        let mut w: Vec<queue::Worker> = self.shared.queue.lock().workers().cloned().collect();
        w.sort_by(|a, b| a.id.cmp(&b.id));
        w
    }

    /// Tasks running on a worker now: (instance, namespace, task reference, effect id, when it
    /// was leased).
    pub fn running_tasks(&self) -> Vec<(String, String, String, u64, i64)> {
        self.shared
            .queue
            .lock()
            .leases()
            .map(|l| {
                (
                    l.item.instance.clone(),
                    l.item.namespace.clone(),
                    l.item.task.clone(),
                    l.item.effect_id,
                    l.leased_ms,
                )
            })
            .collect()
    }

    /// The tasks running on workers with their workflow: (instance, namespace, workflow,
    /// version, task, effect, leased at).
    #[allow(clippy::type_complexity)]
    pub fn running_tasks_of_workflows(
        &self,
    ) -> Vec<(String, String, String, String, String, u64, i64)> {
        self.shared
            .queue
            .lock()
            .leases()
            .filter_map(|l| {
                let (name, version) = l.item.workflow.clone()?;
                Some((
                    l.item.instance.clone(),
                    l.item.namespace.clone(),
                    name,
                    version,
                    l.item.task.clone(),
                    l.item.effect_id,
                    l.leased_ms,
                ))
            })
            .collect()
    }

    /// The learned p99 run time (ms) of each task of `ns/name@version` with at least 20 runs.
    pub async fn learned_p99(
        &self,
        ns: &str,
        name: &str,
        version: &str,
    ) -> Result<std::collections::HashMap<String, f64>> {
        let a = self.analysis(ns, name, Some(version)).await?;
        Ok(a.versions
            .into_iter()
            .flat_map(|v| v.tasks)
            .filter(|t| t.confident)
            .map(|t| (t.task, t.run_ms.p99))
            .collect())
    }

    /// Dispatch latency from ready to leased over recent dispatches: (count, p50 µs, p99 µs);
    /// `reset` starts a new measurement.
    pub fn dispatch_latency(&self, reset: bool) -> (usize, u64, u64) {
        let mut q = self.shared.queue.lock();
        let l = q.latency();
        if reset {
            q.reset_latency();
        }
        l
    }

    /// Per queue: depth, age of the oldest waiting item (ms), and the workers serving it.
    /// The adaptive concurrency limits toward hosts: (host, limit, calls in flight).
    pub fn host_limits(&self) -> Vec<(String, f64, usize)> {
        self.shared.queue.lock().host_limits()
    }

    /// The named services calls go to (`service://NAME/...`).
    pub fn services(&self) -> std::sync::Arc<kflow_tasks::services::Registry> {
        self.shared.config.executor.services.clone()
    }

    pub fn queues(&self) -> Vec<QueueView> {
        let q = self.shared.queue.lock();
        let now = self.shared.now();
        q.depths(now)
            .into_iter()
            .map(|(name, (depth, oldest))| {
                let serving: Vec<String> = q
                    .workers()
                    .filter(|w| w.queues.contains(&name))
                    .map(|w| w.id.clone())
                    .collect();
                QueueView {
                    rate_per_second: q.limit_of(&format!("queue:{name}")),
                    queue: name,
                    depth,
                    oldest_wait_ms: oldest,
                    workers: serving,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::QueueView;

    #[test]
    fn a_queue_view_is_the_json_the_api_always_sent() {
        let v = QueueView {
            queue: "default".into(),
            depth: 2,
            oldest_wait_ms: 40,
            workers: vec!["builtin".into()],
            rate_per_second: None,
        };
        assert_eq!(
            serde_json::to_string(&v).expect("json"),
            r#"{"queue":"default","depth":2,"oldest_wait_ms":40,"workers":["builtin"]}"#
        );
    }
}

//! The durable engine: the kflow-core interpreter driven over a [`Store`].
//!
//! The API talks to an [`Engine`] handle. Every state change goes through one driver task
//! ([`driver`]) that owns the active instances, turns messages (start, effect results, cancel,
//! events, ...) into [`kflow_store::Commit`]s, applies a whole batch of them in one transaction,
//! and only then acts: replies to callers, dispatches effects, publishes live events. Reads go
//! straight to the store.

pub mod clock;
mod cluster;
pub use cluster::Route;
pub mod concurrency;
mod definitions;
mod dispatch;
mod driver;
mod explain;
mod instances;
pub mod journal;
mod learned;
pub(crate) use learned::drifted;
pub mod live;
pub mod queue;
mod timers;
pub mod workers;
mod workers_api;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use kflow_dsl::Workflow;
use kflow_store::{Definition, HistoryEvent, Instance, Store, StoreError};

pub use definitions::{Registered, check};
pub use driver::Msg;
pub use explain::{Explanation, WaitReason};
pub use instances::{InstanceView, StartSpec, Waiting};
pub use workers_api::{LeaseView, QueueView, WorkerSpec};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (a namespace outside its token's).
    #[error("{0}")]
    Forbidden(String),
    /// Bad input: an invalid definition (with its diagnostics), input failing the schema, ...
    #[error("{message}")]
    Invalid {
        message: String,
        details: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the engine is shutting down")]
    Unavailable,
}

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub durability: kflow_store::sqlite::Durability,
    /// Effects (calls, processes) performed at the same time, at most.
    pub max_concurrent_effects: usize,
    /// Active instances kept in memory; waiting ones are dropped first.
    pub max_active: usize,
    pub executor: kflow_tasks::ExecConfig,
    /// `$secrets` for every instance.
    pub secrets: Value,
    /// Seal workflow data at rest (inputs, outputs, histories, work rows, events) with the
    /// master key (`Engine::open` only).
    pub encrypt_data: bool,
    /// How long a remote worker's lease lives without a heartbeat: a worker that dies has its
    /// tasks queued again after this long.
    pub lease_ttl_ms: i64,
    /// Tasks per second by bucket: `queue:NAME` or `host:NAME`.
    pub rate_limits: HashMap<String, f64>,
    /// Running instances at most per namespace (more wait, oldest first).
    pub namespace_limits: HashMap<String, usize>,
    /// What one instance may do (see [`InstanceLimits`]).
    pub limits: InstanceLimits,
    /// How long an `Idempotency-Key` of a start is remembered.
    pub idempotency_ttl_ms: i64,
    /// Live watchers at most (server, per client).
    pub watch_limits: live::WatchLimits,
    /// Faults injected by tests (never set from a config file).
    #[doc(hidden)]
    pub faults: FaultInjection,
    /// Where the engine reads the time (timers, history times, expiries).
    pub clock: Arc<dyn clock::Clock>,
    /// A PostgreSQL database (opened, and its lease taken, by the caller) instead of the
    /// SQLite file in `data_dir` (`Engine::open` only).
    pub database: Option<Arc<kflow_store_pg::PgStore>>,
    /// Queues that dispatch critical-path-first (`*`: all), from `dispatch:` in the config.
    pub critical_path_queues: std::collections::HashSet<String>,
    /// Adaptive concurrency toward hosts (`adaptive_concurrency:` in the config).
    pub adaptive_concurrency: Option<queue::AdaptiveHosts>,
    /// Several nodes share the database (`crate::cluster`): posted events reach this node's
    /// instances from its own cursor, definitions are read afresh, and the duties of one node
    /// for all wait until this node is the leader.
    pub cluster: bool,
    /// Brokers (`brokers:` in the config): where emitted events are published.
    pub brokers: Arc<crate::brokers::Brokers>,
}

/// Per-instance budgets: one instance can neither stall the engine nor grow without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct InstanceLimits {
    /// Tasks an instance may run in one turn of the driver before it yields (its progress is
    /// committed and the other instances go on).
    pub tasks_per_turn: u32,
    /// Tasks an instance may run in its life; past it, it faults naming this limit.
    pub max_tasks: u64,
    /// History records an instance may have; past it, it faults naming this limit.
    pub max_history: i64,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            tasks_per_turn: 100,
            max_tasks: 250_000,
            max_history: 600_000,
        }
    }
}

/// Test-only fault injection.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct FaultInjection {
    /// Panic inside the driver's turn of an instance when it starts a task with this name.
    pub panic_on_task: Option<String>,
    /// Panic while cancelling an instance's core.
    pub panic_on_cancel: bool,
}

/// Deduplication of a start request (see `Engine::start_request`).
#[derive(Debug, Clone)]
pub struct Dedupe {
    pub namespace: String,
    /// The client's `Idempotency-Key`, when it sent one.
    pub key: Option<String>,
    /// SHA-256 of the canonical request (namespace, name, version, input, priority).
    pub request_hash: String,
    /// The request, to compare with an instance found by a client-chosen id.
    pub name: String,
    pub version: Option<String>,
    pub input: Value,
    pub expires_ms: i64,
}

/// What a start did.
/// An instance that ended (committed).
#[derive(Debug, Clone)]
pub struct Ended {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub status: kflow_store::InstanceStatus,
    pub error: Option<Value>,
    pub created_ms: i64,
    pub ended_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Started {
    pub instance: Instance,
    /// False when the request was a repeat answered with the existing instance.
    pub created: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("kflow-data"),
            durability: kflow_store::sqlite::Durability::Process,
            max_concurrent_effects: 512,
            max_active: 10_000,
            executor: kflow_tasks::ExecConfig::default(),
            secrets: Value::Object(Default::default()),
            encrypt_data: false,
            lease_ttl_ms: 1_500,
            rate_limits: HashMap::new(),
            namespace_limits: HashMap::new(),
            limits: InstanceLimits::default(),
            idempotency_ttl_ms: 24 * 3600 * 1000,
            watch_limits: live::WatchLimits::default(),
            faults: FaultInjection::default(),
            clock: Arc::new(clock::SystemClock),
            database: None,
            cluster: false,
            critical_path_queues: Default::default(),
            adaptive_concurrency: None,
            brokers: Arc::default(),
        }
    }
}

/// A live update: one history event of one instance, as it is committed.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    pub instance_id: String,
    pub event: HistoryEvent,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub config: EngineConfig,
    /// Compiled definitions by (namespace, name, version).
    pub workflows: Mutex<HashMap<(String, String, String), Arc<Workflow>>>,
    /// Live updates, routed to the watchers of each instance.
    pub live: Arc<live::LiveHub>,
    /// Resolved definitions by (namespace, name, version or None for latest); cleared for a
    /// workflow when one of its versions is registered or deprecated.
    pub definitions: Mutex<HashMap<(String, String, Option<String>), Definition>>,
    /// Calls and processes waiting for, or leased to, a worker (built-in or remote).
    pub queue: Arc<workers::WorkQueue>,
    /// Callers waiting for instances to finish.
    pub waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// The scheduler, told about definitions and events (weak: it holds an Engine).
    pub observer: RwLock<Option<Weak<dyn Observer>>>,
    /// When the driver last went round its loop (ms on a monotonic clock, see `mono_ms`).
    pub driver_beat: std::sync::atomic::AtomicI64,
    /// Namespaces' secrets, decrypted in memory (sealed in the store).
    pub vault: Arc<crate::secrets::Vault>,
    /// What `/metrics` shows.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Instances that ended, once their end is committed (the alert rules listen).
    pub ended: tokio::sync::broadcast::Sender<Ended>,
    /// Answers (a fired timer, a call's result) that reached a suspended instance and wait for
    /// its resume, by (instance, effect): what `explain` tells. Kept by the driver.
    pub held: Mutex<std::collections::HashSet<(String, u64)>>,
    /// In a cluster: the offering of posted events (see `cluster.rs`).
    pub pump: Option<Arc<cluster::Pump>>,
    pub leader: cluster::Leader,
    /// Nodes sharing the work (1 on one node): rate limits are divided among them.
    pub live_nodes: std::sync::atomic::AtomicI64,
    /// Upward ranks of tasks by workflow version (critical-path-first dispatch).
    pub ranks: Mutex<HashMap<(String, String, String), learned::Ranks>>,
}

/// Milliseconds on a monotonic clock (since the first call).
pub fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

impl Shared {
    /// The engine's shared state over `store`, before its driver starts.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        vault: Arc<crate::secrets::Vault>,
        config: EngineConfig,
    ) -> Shared {
        let live = Arc::new(live::LiveHub::new(config.watch_limits));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let queue = Arc::new(workers::WorkQueue::new(
            config.lease_ttl_ms,
            metrics.clone(),
        ));
        queue.lock().set_limits(config.rate_limits.clone());
        queue
            .lock()
            .set_critical_path(config.critical_path_queues.clone());
        queue
            .lock()
            .set_adaptive(config.adaptive_concurrency.clone());
        Shared {
            store,
            workflows: Mutex::new(HashMap::new()),
            live,
            definitions: Mutex::new(HashMap::new()),
            queue,
            waiters: Mutex::new(HashMap::new()),
            observer: RwLock::new(None),
            driver_beat: std::sync::atomic::AtomicI64::new(mono_ms()),
            vault,
            held: Mutex::new(Default::default()),
            metrics,
            ended: tokio::sync::broadcast::channel(16_384).0,
            pump: config.cluster.then(|| Arc::new(cluster::Pump::new())),
            leader: cluster::Leader::new(!config.cluster),
            live_nodes: std::sync::atomic::AtomicI64::new(1),
            ranks: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// The engine's time (its clock's).
    pub fn now(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// The driver is alive and going round its loop.
    pub fn beat(&self) {
        self.driver_beat
            .store(mono_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The compiled workflow of a registered version (compiled once, then cached).
    /// Every secret value to redact (the namespaces' and the secrets file's, long enough to
    /// matter), longest first.
    pub fn secret_values(&self) -> Vec<String> {
        let mut values = self.vault.all_values();
        if let Some(m) = self.config.secrets.as_object() {
            values.extend(m.values().filter_map(|v| v.as_str().map(str::to_string)));
        }
        values.retain(|v| v.len() >= crate::secrets::MIN_REDACTED);
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values
    }

    pub fn workflow(&self, ns: &str, name: &str, version: &str) -> Result<Arc<Workflow>> {
        let key = (ns.to_string(), name.to_string(), version.to_string());
        if let Some(wf) = self
            .workflows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(wf.clone());
        }
        let def = self
            .store
            .get_definition(ns, name, Some(version))?
            .ok_or_else(|| {
                EngineError::NotFound(format!("workflow {ns}/{name}@{version} is not registered"))
            })?;
        let wf = kflow_dsl::load(def.source.as_bytes()).map_err(|d| {
            EngineError::Store(StoreError::Corrupt(format!(
                "stored definition {ns}/{name}@{version} no longer validates: {}",
                d.first().map(|d| d.to_string()).unwrap_or_default()
            )))
        })?;
        let wf = Arc::new(wf);
        self.workflows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, wf.clone());
        Ok(wf)
    }
}

/// The handle the API uses. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    driver: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn canonical_hash(doc: &Value) -> String {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Engine {
    /// Opens (or creates) the store in the data directory (or uses the PostgreSQL database of
    /// the config), recovers, and starts the driver.
    pub async fn open(config: EngineConfig) -> Result<Engine> {
        let store: Arc<dyn Store> = match &config.database {
            Some(db) => {
                // The master key lives in the data directory (unless KFLOW_MASTER_KEY).
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    EngineError::Store(StoreError::Db(format!(
                        "cannot create the data directory {}: {e}",
                        config.data_dir.display()
                    )))
                })?;
                db.clone()
            }
            None => {
                let path = config.data_dir.join("kflow.db");
                let durability = config.durability;
                Arc::new(
                    tokio::task::spawn_blocking(move || {
                        kflow_store::sqlite::SqliteStore::open(&path, durability)
                    })
                    .await
                    .map_err(|e| EngineError::Store(StoreError::Db(e.to_string())))??,
                )
            }
        };
        let vault = Arc::new(
            crate::secrets::Vault::open(store.clone(), &config.data_dir)
                .map_err(|m| EngineError::Store(StoreError::Db(m)))?,
        );
        let store: Arc<dyn Store> = Arc::new(crate::sealed::Sealed::new(
            store,
            vault.clone(),
            config.encrypt_data,
        ));
        Self::with_vault(store, vault, config).await
    }

    /// An engine over `store`, its secrets sealed under a key that lives only as long as the
    /// process (tests, in-memory stores).
    pub async fn with_store(store: Arc<dyn Store>, config: EngineConfig) -> Result<Engine> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| EngineError::Store(StoreError::Db(e.to_string())))?;
        use base64::Engine as _;
        let source =
            crate::secrets::KeySource::Env(base64::engine::general_purpose::STANDARD.encode(key));
        let vault = crate::secrets::Vault::with_source(store.clone(), source)
            .map_err(|m| EngineError::Store(StoreError::Db(m)))?;
        Self::with_vault(store, Arc::new(vault), config).await
    }

    pub async fn with_vault(
        store: Arc<dyn Store>,
        vault: Arc<crate::secrets::Vault>,
        config: EngineConfig,
    ) -> Result<Engine> {
        let shared = Arc::new(Shared::new(store, vault, config));
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = driver::spawn(shared.clone(), tx.clone(), rx).await?;
        let engine = Engine {
            shared,
            tx,
            driver: Arc::new(Mutex::new(Some(handle))),
        };
        engine.spawn_learning();
        Ok(engine)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Msg) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| EngineError::Unavailable)?;
        rx.await.map_err(|_| EngineError::Unavailable)?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> kflow_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(shared.store.as_ref()))
            .await
            .map_err(|e| EngineError::Store(StoreError::Db(e.to_string())))?
            .map_err(EngineError::Store)
    }

    /// Returns once the driver has gone round its loop: timers due by the engine's clock have
    /// fired and what they caused is committed. For tests on a [`clock::ManualClock`].
    pub async fn sync(&self) -> Result<()> {
        self.ask(|reply| Msg::Sync { reply }).await
    }

    /// The metrics in the Prometheus text format, the gauges read from the queues now.
    pub fn metrics_text(&self) -> String {
        let queues = self.queues();
        let workers = self.workers();
        let services = self.services().views();
        self.shared.metrics.render(|m| {
            for q in &queues {
                let l = crate::metrics::QueueLabels {
                    queue: q.queue.clone(),
                };
                m.queue_depth.get_or_create(&l).set(q.depth as i64);
                m.queue_oldest_wait
                    .get_or_create(&l)
                    .set(q.oldest_wait_ms as f64 / 1e3);
            }
            m.workers.set(workers.len() as i64);
            m.tasks_running
                .set(workers.iter().map(|w| w.leases.len() as i64).sum());
            for s in &services {
                let l = crate::metrics::ServiceLabels {
                    service: s.name.clone(),
                };
                m.service_circuit.get_or_create(&l).set(match s.circuit {
                    "closed" => 0,
                    "open" => 1,
                    _ => 2,
                });
                m.service_healthy_endpoints
                    .get_or_create(&l)
                    .set(s.endpoints.iter().filter(|e| e.healthy).count() as i64);
                m.service_in_flight
                    .get_or_create(&l)
                    .set(s.in_flight as i64);
                let t = &s.totals;
                for (outcome, total) in [
                    ("ok", t.calls - t.failures.min(t.calls)),
                    ("failed", t.failures),
                    ("failover", t.failovers),
                    ("refused_open", t.rejected_open),
                    ("refused_budget", t.rejected_budget),
                    ("refused_bulkhead", t.rejected_bulkhead),
                ] {
                    let c = m
                        .service_calls
                        .get_or_create(&crate::metrics::ServiceOutcomeLabels {
                            service: s.name.clone(),
                            outcome,
                        });
                    // The registry's totals only grow: the counter catches up.
                    c.inc_by(total.saturating_sub(c.get()));
                }
            }
            self.shared.config.brokers.render_metrics(m);
        })
    }

    /// Counts one API request (route template, method, status class, time).
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.shared
            .metrics
            .http_duration
            .get_or_create(&crate::metrics::RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: format!("{}xx", status / 100),
            })
            .observe(seconds);
    }

    /// Whether the driver went round its loop within `stale_ms`: `Err(ms since it did)`.
    pub fn driver_alive(&self, stale_ms: i64) -> std::result::Result<(), i64> {
        let since = mono_ms()
            - self
                .shared
                .driver_beat
                .load(std::sync::atomic::Ordering::Relaxed);
        if since > stale_ms { Err(since) } else { Ok(()) }
    }

    /// Stops taking work, lets running effects finish until `deadline`, then stops the driver.
    /// The nodes sharing the database (blocking: call it from a blocking thread).
    pub fn nodes(&self) -> kflow_store::Result<kflow_api::security::NodeList> {
        use kflow_api::security::{NodeList, NodeView};
        let Some(db) = &self.shared.config.database else {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            return Ok(NodeList {
                backend: "sqlite".into(),
                lease_holder: None,
                lease_epoch: None,
                items: vec![NodeView {
                    id: host.clone(),
                    host,
                    api: None,
                    state: "active".into(),
                    running: self.running_tasks().len() as i64,
                    owned: 0,
                    adopted_by: None,
                    started_ms: 0,
                    seen_ms: now_ms(),
                    silent_ms: 0,
                }],
            });
        };
        let lease = db.lease()?;
        let items = db
            .nodes(3_600_000)?
            .into_iter()
            .map(|n| NodeView {
                // What the node last said, corrected by what the database knows: a node whose
                // lease lapsed died or was cut off; a node that stopped beating is silent.
                state: if n.adopted_by.is_some() {
                    "gone".into()
                } else if n.state == "stopped" {
                    n.state
                } else if n.expired {
                    "lost".into()
                } else if n.silent_ms > 10_000 {
                    "silent".into()
                } else {
                    n.state
                },
                id: n.id,
                host: n.host,
                api: n.api,
                running: n.running,
                owned: n.owned,
                adopted_by: n.adopted_by,
                started_ms: n.started_ms,
                seen_ms: n.seen_ms,
                silent_ms: n.silent_ms,
            })
            .collect();
        Ok(NodeList {
            backend: "postgres".into(),
            lease_holder: lease.as_ref().map(|l| l.node.clone()),
            lease_epoch: lease.map(|l| l.epoch),
            items,
        })
    }

    /// This node surely holds the database lease until `mono_ms` (see [`mono_ms`]): no task
    /// starts past it (the cluster's lease keeper calls this after every renewal).
    pub fn set_lease_valid_until(&self, mono_ms: i64) {
        self.shared.queue.set_lease_valid_until(mono_ms);
    }

    pub async fn shutdown(&self, deadline: Duration) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { deadline, reply }).is_ok() {
            let _ = rx.await;
        }
        let handle = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        // What the last tasks taught is kept.
        if let Err(e) = self.flush_learned().await {
            tracing::warn!(error = %e, "storing learned task durations failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// For the scheduler (crate::schedule): an observer hook and the store (compiled definitions
// are in definitions.rs, starts with a caller-chosen id in instances.rs).

/// What the scheduler is told by the engine. Held weakly: dropping the scheduler detaches it.
pub trait Observer: Send + Sync + 'static {
    /// A version of namespace/name was registered (new content), deprecated or undeprecated.
    fn definitions_changed<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> futures_util::future::BoxFuture<'a, ()>;
    /// A CloudEvent posted to the API; returns how many instances it started. An error fails
    /// the post (nothing was committed for it).
    fn event_published<'a>(
        &'a self,
        event: &'a Value,
    ) -> futures_util::future::BoxFuture<'a, Result<usize>>;
    /// A CloudEvent emitted by an instance, once committed (called by the driver; must not
    /// block).
    fn event_emitted(&self, event: Value);
    /// Schedules were paused or resumed through the API: look again.
    fn nudge(&self);
}

impl Engine {
    /// Attaches the scheduler (replacing any other).
    pub fn set_observer(&self, observer: Weak<dyn Observer>) {
        *self
            .shared
            .observer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    pub(crate) fn observer(&self) -> Option<Arc<dyn Observer>> {
        self.shared
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// The store under the engine (reads, and the schedules rows).
    /// The engine's clock (ms since the epoch): the system's, or the one injected for tests.
    pub fn now_ms(&self) -> i64 {
        self.shared.now()
    }

    /// Every secret value in `v` replaced (for what the API shows: histories, live streams).
    pub fn redact(&self, v: &mut serde_json::Value) {
        let values = self.shared.secret_values();
        if !values.is_empty() {
            crate::secrets::redact(v, &values);
        }
    }

    /// The namespaces' secrets.
    pub fn vault(&self) -> Arc<crate::secrets::Vault> {
        self.shared.vault.clone()
    }

    /// Instances as they end (committed); a receiver that falls behind is told how many it
    /// missed.
    pub fn subscribe_ended(&self) -> tokio::sync::broadcast::Receiver<Ended> {
        self.shared.ended.subscribe()
    }

    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.shared.metrics.clone()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.shared.store.clone()
    }
}

//! The durable engine: the kflow-core interpreter driven over a [`Store`].
//!
//! The API talks to an [`Engine`] handle. Every state change goes through one driver task
//! ([`driver`]) that owns the active instances, turns messages (start, effect results, cancel,
//! events, ...) into [`kflow_store::Commit`]s, applies a whole batch of them in one transaction,
//! and only then acts: replies to callers, dispatches effects, publishes live events. Reads go
//! straight to the store.

pub mod clock;
pub mod concurrency;
mod dispatch;
mod driver;
pub mod journal;
pub mod live;
pub mod queue;
mod timers;
pub mod workers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot};

use kflow_dsl::Workflow;
use kflow_store::{
    Definition, HistoryEvent, Instance, InstanceFilter, Page, PutDefinition, Store, StoreError,
};

pub use driver::Msg;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
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

/// A start request.
#[derive(Debug, Clone, Default)]
pub struct StartSpec {
    pub namespace: String,
    pub name: String,
    /// None: the latest version that takes new runs.
    pub version: Option<String>,
    pub input: Value,
    pub priority: Option<i64>,
    /// A client-chosen instance id: the same request again answers that instance.
    pub id: Option<String>,
    /// An idempotency key (per namespace): the same request again answers the same instance.
    pub idempotency_key: Option<String>,
}

/// What a start did.
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
            lease_ttl_ms: 1_500,
            rate_limits: HashMap::new(),
            namespace_limits: HashMap::new(),
            limits: InstanceLimits::default(),
            idempotency_ttl_ms: 24 * 3600 * 1000,
            watch_limits: live::WatchLimits::default(),
            faults: FaultInjection::default(),
            clock: Arc::new(clock::SystemClock),
        }
    }
}

/// A live update: one history event of one instance, as it is committed.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    pub instance_id: String,
    pub event: HistoryEvent,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub instance: Instance,
    /// Tasks with an effect in progress (calls, processes, sub-workflows).
    pub running: Vec<String>,
    /// Tasks waiting on a timer or for events.
    pub waiting: Vec<Waiting>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub task: String,
    /// `timer` or `event`.
    pub on: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// `created` or `unchanged`.
    pub outcome: &'static str,
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
}

/// Milliseconds on a monotonic clock (since the first call).
pub(crate) fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

impl Shared {
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
    /// Opens (or creates) the store in the data directory, recovers, and starts the driver.
    pub async fn open(config: EngineConfig) -> Result<Engine> {
        let path = config.data_dir.join("kflow.db");
        let durability = config.durability;
        let store = tokio::task::spawn_blocking(move || {
            kflow_store::sqlite::SqliteStore::open(&path, durability)
        })
        .await
        .map_err(|e| EngineError::Store(StoreError::Db(e.to_string())))??;
        Self::with_store(Arc::new(store), config).await
    }

    pub async fn with_store(store: Arc<dyn Store>, config: EngineConfig) -> Result<Engine> {
        let live = Arc::new(live::LiveHub::new(config.watch_limits));
        let queue = Arc::new(workers::WorkQueue::new(config.lease_ttl_ms));
        queue.lock().set_limits(config.rate_limits.clone());
        let shared = Arc::new(Shared {
            store,
            config,
            workflows: Mutex::new(HashMap::new()),
            live,
            definitions: Mutex::new(HashMap::new()),
            queue,
            waiters: Mutex::new(HashMap::new()),
            observer: RwLock::new(None),
            driver_beat: std::sync::atomic::AtomicI64::new(mono_ms()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = driver::spawn(shared.clone(), tx.clone(), rx).await?;
        Ok(Engine {
            shared,
            tx,
            driver: Arc::new(Mutex::new(Some(handle))),
        })
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

    /// Registers a definition. Same version and content: no-op; same version, other content:
    /// refused. An invalid document is never stored.
    pub async fn register(&self, source: &[u8]) -> Result<Registered> {
        let wf = kflow_dsl::load(source).map_err(|diags| EngineError::Invalid {
            message: "the workflow definition is invalid".into(),
            details: diags.iter().map(|d| d.to_string()).collect(),
        })?;
        crate::schedule::check(&wf).map_err(|details| EngineError::Invalid {
            message: "the workflow's schedule is invalid".into(),
            details,
        })?;
        concurrency::spec(&wf).map_err(|m| EngineError::Invalid {
            message: "the workflow's concurrency settings are invalid".into(),
            details: vec![m],
        })?;
        let text = String::from_utf8_lossy(source).into_owned();
        let d = &wf.document;
        let def = Definition {
            namespace: d.namespace.clone(),
            name: d.name.clone(),
            version: d.version.clone(),
            source: text,
            hash: canonical_hash(&wf.definition),
            deprecated: false,
            created_ms: self.shared.now(),
        };
        let (ns, name, version) = (def.namespace.clone(), def.name.clone(), def.version.clone());
        let outcome = self.blocking(move |s| s.put_definition(&def)).await?;
        match outcome {
            PutDefinition::Created => {
                self.forget_definitions(&ns, &name);
                let key = (ns.clone(), name.clone(), version.clone());
                self.shared
                    .workflows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Arc::new(wf));
                if let Some(o) = self.observer() {
                    o.definitions_changed(&ns, &name).await;
                }
                Ok(Registered {
                    namespace: ns,
                    name,
                    version,
                    outcome: "created",
                })
            }
            PutDefinition::Unchanged => Ok(Registered {
                namespace: ns,
                name,
                version,
                outcome: "unchanged",
            }),
            PutDefinition::Conflict { .. } => Err(EngineError::Conflict(format!(
                "{ns}/{name} version {version} is already registered with different content; \
                 registered versions never change: bump document.version (e.g. to a higher patch version)"
            ))),
        }
    }

    pub async fn definitions(&self, namespace: Option<String>) -> Result<Vec<Definition>> {
        self.blocking(move |s| s.list_definitions(namespace.as_deref()))
            .await
    }

    /// One version, or the latest (highest semver) when `version` is None or `latest`.
    pub async fn definition(
        &self,
        ns: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Definition> {
        let (n, m) = (ns.to_string(), name.to_string());
        let v = version.filter(|v| *v != "latest").map(str::to_string);
        let key = (n.clone(), m.clone(), v.clone());
        if let Some(d) = self
            .shared
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(d.clone());
        }
        let shown = format!("{ns}/{name}@{}", version.unwrap_or("latest"));
        let def = self
            .blocking(move |s| s.get_definition(&n, &m, v.as_deref()))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("workflow {shown} is not registered")))?;
        self.shared
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, def.clone());
        Ok(def)
    }

    fn forget_definitions(&self, ns: &str, name: &str) {
        self.shared
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, m, _), _| !(n == ns && m == name));
    }

    pub async fn deprecate(
        &self,
        ns: &str,
        name: &str,
        version: &str,
        deprecated: bool,
    ) -> Result<()> {
        let (n, m, v) = (ns.to_string(), name.to_string(), version.to_string());
        let found = self
            .blocking(move |s| s.set_deprecated(&n, &m, &v, deprecated))
            .await?;
        self.forget_definitions(ns, name);
        if found && let Some(o) = self.observer() {
            o.definitions_changed(ns, name).await;
        }
        if found {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!(
                "workflow {ns}/{name}@{version} is not registered"
            )))
        }
    }

    /// Starts an instance; returns once it is committed.
    pub async fn start(
        &self,
        ns: &str,
        name: &str,
        version: Option<&str>,
        input: Value,
    ) -> Result<Instance> {
        self.start_with_priority(ns, name, version, input, None)
            .await
    }

    /// The compiled workflow a new instance of `ns/name[@version]` would run, after the
    /// checks every start makes: the version takes new runs ("latest" skips deprecated ones)
    /// and the input matches the input schema.
    async fn startable(
        &self,
        ns: &str,
        name: &str,
        version: Option<&str>,
        input: &Value,
    ) -> Result<Arc<Workflow>> {
        let mut def = self.definition(ns, name, version).await?;
        if def.deprecated && version.is_none() {
            // "latest" means the highest version that still takes new runs.
            let (n, m) = (ns.to_string(), name.to_string());
            let all = self.blocking(move |s| s.list_definitions(Some(&n))).await?;
            if let Some(d) = all.into_iter().find(|d| d.name == m && !d.deprecated) {
                def = d;
            }
        }
        if def.deprecated {
            return Err(EngineError::Conflict(format!(
                "{ns}/{name}@{} is deprecated: no new instances can start; use a newer version",
                def.version
            )));
        }
        let wf = self.shared.workflow(ns, name, &def.version)?;
        if let Some(schema) = wf.input.as_ref().and_then(|i| i.schema.as_ref()) {
            schema.check(input).map_err(|errs| EngineError::Invalid {
                message: "the input does not match the workflow's input schema".into(),
                details: errs,
            })?;
        }
        Ok(wf)
    }

    /// Starts an instance whose calls and processes queue at `priority` (higher first; a
    /// task's own `metadata.kflow.priority` wins).
    pub async fn start_with_priority(
        &self,
        ns: &str,
        name: &str,
        version: Option<&str>,
        input: Value,
        priority: Option<i64>,
    ) -> Result<Instance> {
        let wf = self.startable(ns, name, version, &input).await?;
        self.ask(|reply| Msg::Start {
            id: None,
            dedupe: None,
            wf,
            input,
            priority,
            reply,
        })
        .await
        .map(|s: Started| s.instance)
    }

    /// Starts an instance, exactly once per client-chosen id or idempotency key: the same
    /// request again answers the instance it started (`created: false`), another request
    /// with the same id or key is refused (conflict). Keys are kept for
    /// `idempotency_ttl_ms`; ids for as long as their instance exists.
    pub async fn start_request(&self, spec: StartSpec) -> Result<Started> {
        if let Some(id) = &spec.id {
            check_client_id(id)?;
        }
        if let Some(k) = &spec.idempotency_key
            && (k.is_empty() || k.len() > 255 || k.chars().any(char::is_control))
        {
            return Err(EngineError::Invalid {
                message: "the idempotency key must be 1 to 255 characters, none of them control characters".into(),
                details: Vec::new(),
            });
        }
        let dedupe = (spec.id.is_some() || spec.idempotency_key.is_some()).then(|| Dedupe {
            namespace: spec.namespace.clone(),
            key: spec.idempotency_key.clone(),
            request_hash: canonical_hash(&serde_json::json!({
                "namespace": spec.namespace,
                "name": spec.name,
                "version": spec.version,
                "input": spec.input,
                "priority": spec.priority,
                "id": spec.id,
            })),
            name: spec.name.clone(),
            version: spec.version.clone(),
            input: spec.input.clone(),
            expires_ms: self
                .shared
                .now()
                .saturating_add(self.shared.config.idempotency_ttl_ms),
        });
        let wf = self
            .startable(
                &spec.namespace,
                &spec.name,
                spec.version.as_deref(),
                &spec.input,
            )
            .await?;
        self.ask(|reply| Msg::Start {
            id: spec.id,
            dedupe,
            wf,
            input: spec.input,
            priority: spec.priority,
            reply,
        })
        .await
    }

    /// Returns once the driver has gone round its loop: timers due by the engine's clock have
    /// fired and what they caused is committed. For tests on a [`clock::ManualClock`].
    pub async fn sync(&self) -> Result<()> {
        self.ask(|reply| Msg::Sync { reply }).await
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

    pub async fn instance(&self, id: &str) -> Result<InstanceView> {
        let id2 = id.to_string();
        let (inst, work) = self
            .blocking(move |s| Ok((s.get_instance(&id2)?, s.work_of(&id2)?)))
            .await?;
        let instance =
            inst.ok_or_else(|| EngineError::NotFound(format!("instance {id} does not exist")))?;
        let mut running = Vec::new();
        let mut waiting = Vec::new();
        for w in work {
            match w.kind.as_str() {
                "timer" => waiting.push(Waiting {
                    task: w.task,
                    on: "timer".into(),
                    until_ms: Some(w.due_ms),
                }),
                "listen" => waiting.push(Waiting {
                    task: w.task,
                    on: "event".into(),
                    until_ms: None,
                }),
                _ => running.push(w.task),
            }
        }
        Ok(InstanceView {
            instance,
            running,
            waiting,
        })
    }

    /// Waits until the instance is finished (completed, faulted or cancelled), at most
    /// `timeout`; returns its view either way.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Result<InstanceView> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .push(tx);
        // Registered before reading: a finish committed in between still wakes us.
        let view = self.instance(id).await?;
        if !view.instance.status.is_finished() {
            let _ = tokio::time::timeout(timeout, rx).await;
            self.forget_closed_waiters(id);
            return self.instance(id).await;
        }
        Ok(view)
    }

    fn forget_closed_waiters(&self, id: &str) {
        let mut waiters = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(list) = waiters.get_mut(id) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                waiters.remove(id);
            }
        }
    }

    pub async fn instances(
        &self,
        filter: InstanceFilter,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<Page> {
        self.blocking(move |s| s.list_instances(&filter, cursor.as_deref(), limit))
            .await
            .map_err(|e| match e {
                EngineError::Store(StoreError::Db(m)) if m.contains("invalid cursor") => {
                    EngineError::Invalid {
                        message: "invalid cursor".into(),
                        details: vec![],
                    }
                }
                other => other,
            })
    }

    pub async fn history(&self, id: &str, after: i64, limit: u32) -> Result<Vec<HistoryEvent>> {
        let id2 = id.to_string();
        let exists = self
            .blocking(move |s| s.get_instance(&id2))
            .await?
            .is_some();
        if !exists {
            return Err(EngineError::NotFound(format!(
                "instance {id} does not exist"
            )));
        }
        let id2 = id.to_string();
        let rows = self
            .blocking(move |s| s.history(&id2, after, limit))
            .await?;
        // Every row is read through the journal: one that does not decode is shown as
        // `unreadable` with the reason and the raw row, never dropped or guessed at.
        Ok(rows
            .into_iter()
            .map(|ev| match journal::Record::decode(id, &ev) {
                Ok(_) => ev,
                Err(e) => HistoryEvent {
                    seq: ev.seq,
                    time_ms: ev.time_ms,
                    kind: "unreadable".into(),
                    data: serde_json::json!({ "kind": ev.kind, "error": e.to_string(), "data": ev.data }),
                },
            })
            .collect())
    }

    pub async fn cancel(&self, id: &str) -> Result<Instance> {
        self.ask(|reply| Msg::Cancel {
            id: id.to_string(),
            reply,
        })
        .await
    }

    pub async fn suspend(&self, id: &str) -> Result<Instance> {
        self.ask(|reply| Msg::Suspend {
            id: id.to_string(),
            reply,
        })
        .await
    }

    pub async fn resume(&self, id: &str) -> Result<Instance> {
        self.ask(|reply| Msg::Resume {
            id: id.to_string(),
            reply,
        })
        .await
    }

    /// Offers a CloudEvent to every waiting `listen`; returns how many took it. Acknowledged
    /// after the deliveries are committed.
    /// Schedules (`schedule.on`) that start an instance for it count too.
    pub async fn publish_event(&self, event: Value) -> Result<usize> {
        // Recorded first: an event is never acknowledged before it is durable, and one whose
        // deliveries were not committed (a crash in between) is offered again at the next start.
        let (e2, now) = (event.clone(), self.shared.now());
        let event_id = self.blocking(move |s| s.add_event(&e2, now)).await?;
        let scheduled = match self.observer() {
            Some(o) => o.event_published(&event).await?,
            None => 0,
        };
        let delivered = self
            .ask(|reply| Msg::Event {
                event,
                event_id: Some(event_id),
                reply,
            })
            .await?;
        Ok(delivered + scheduled)
    }

    /// Live updates of one instance, for `client` (its address: watchers are capped per
    /// client and per server).
    pub fn watch(
        &self,
        instance: &str,
        client: &str,
    ) -> std::result::Result<(broadcast::Receiver<LiveEvent>, live::WatchGuard), live::WatchRefused>
    {
        self.shared.live.subscribe(instance, client)
    }

    /// Live watchers open now.
    pub fn watchers(&self) -> usize {
        self.shared.live.watchers()
    }

    /// Stops taking work, lets running effects finish until `deadline`, then stops the driver.
    pub async fn shutdown(&self, deadline: Duration) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { deadline, reply }).is_ok() {
            let _ = rx.await;
        }
        let handle = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

/// Every `dag` task in a definition: its reference and (name, reference, needs) of its subtasks.
#[allow(clippy::type_complexity)]
fn find_dags(v: &Value, path: String, out: &mut Vec<(String, Vec<(String, String, Vec<String>)>)>) {
    match v {
        Value::Object(m) => {
            if let Some(tasks) = m
                .get("dag")
                .and_then(|d| d.get("tasks"))
                .and_then(Value::as_array)
            {
                let mut subs = Vec::new();
                for (i, item) in tasks.iter().enumerate() {
                    if let Some((name, body)) = item.as_object().and_then(|o| o.iter().next()) {
                        let needs = match body.get("needs") {
                            Some(Value::String(s)) => vec![s.clone()],
                            Some(Value::Array(a)) => a
                                .iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect(),
                            _ => Vec::new(),
                        };
                        subs.push((name.clone(), format!("{path}/dag/tasks/{i}/{name}"), needs));
                    }
                }
                out.push((path.clone(), subs));
            }
            for (k, child) in m {
                find_dags(
                    child,
                    format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                find_dags(child, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

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
        self.shared.queue.register(queue::Worker {
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
    pub fn queues(&self) -> Vec<Value> {
        let q = self.shared.queue.lock();
        let now = self.shared.now();
        q.depths(now)
            .into_iter()
            .map(|(name, (depth, oldest))| {
                let serving: Vec<&str> = q.workers().filter(|w| w.queues.contains(&name)).map(|w| w.id.as_str()).collect();
                serde_json::json!({ "queue": name, "depth": depth, "oldest_wait_ms": oldest, "workers": serving })
            })
            .collect()
    }

    /// DAG subtasks that have not started because a dependency is not done yet, from the
    /// definition and the history's task notices.
    async fn dag_waits(&self, id: &str, inst: &Instance) -> Result<Vec<Value>> {
        let wf = self
            .shared
            .workflow(&inst.namespace, &inst.name, &inst.version)?;
        let mut dags = Vec::new();
        find_dags(&wf.definition, String::new(), &mut dags);
        if dags.is_empty() {
            return Ok(Vec::new());
        }
        let id2 = id.to_string();
        let history = self.blocking(move |s| s.history(&id2, 0, u32::MAX)).await?;
        let mut started = std::collections::HashSet::new();
        let mut done = std::collections::HashSet::new();
        for rec in journal::decode_all(id, &history)
            .map_err(|e| EngineError::Store(StoreError::Corrupt(e.to_string())))?
        {
            let Some(n) = rec.notice() else { continue };
            let r = n.reference().unwrap_or_default().to_string();
            match n.kind() {
                "task.started" => {
                    started.insert(r);
                }
                "task.completed" | "task.faulted" | "task.skipped" => {
                    done.insert(r);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (dag_ref, tasks) in dags {
            if !started.contains(&dag_ref) || done.contains(&dag_ref) {
                continue;
            }
            let refs: HashMap<String, String> = tasks
                .iter()
                .map(|(name, r, _)| (name.clone(), r.clone()))
                .collect();
            for (_, r, needs) in &tasks {
                if started.contains(r) || done.contains(r) {
                    continue;
                }
                let waiting: Vec<&str> = needs
                    .iter()
                    .filter(|n| refs.get(*n).is_none_or(|nr| !done.contains(nr)))
                    .map(String::as_str)
                    .collect();
                if !waiting.is_empty() {
                    out.push(serde_json::json!({ "task": r, "kind": "dependency", "reason": format!("waiting for its dependencies: {}", waiting.join(", ")) }));
                }
            }
        }
        Ok(out)
    }

    /// Why an instance is not done: for each pending effect, what it is waiting for.
    pub async fn explain(&self, id: &str) -> Result<Value> {
        let view = self.instance(id).await?;
        let status = view.instance.status;
        let id2 = id.to_string();
        let work = self.blocking(move |s| s.work_of(&id2)).await?;
        let now = self.shared.now();
        let mut reasons = Vec::new();
        for w in work {
            let why = match w.kind.as_str() {
                "timer" => format!(
                    "waiting on a timer until {}",
                    kflow_core::time::iso8601(w.due_ms)
                ),
                "listen" => {
                    let filters = w.effect.get("filters").cloned().unwrap_or(Value::Null);
                    format!("waiting for an event matching {filters}")
                }
                "workflow" => format!("waiting for the sub-workflow {id}.{}", w.effect_id),
                _ => {
                    let q = self.shared.queue.lock();
                    if let Some(l) = q.lease_of(&w.instance_id, w.effect_id) {
                        format!(
                            "running on worker {} (attempt {}, lease until {})",
                            l.worker,
                            w.attempts,
                            kflow_core::time::iso8601(l.expires_ms)
                        )
                    } else if let Some(item) = q
                        .items()
                        .iter()
                        .find(|i| i.instance == w.instance_id && i.effect_id == w.effect_id)
                    {
                        format!(
                            "queued for {} ms: {}",
                            now - item.enqueued_ms,
                            queue::why_waiting(&q, item)
                        )
                    } else if status == kflow_store::InstanceStatus::Suspended {
                        "the instance is suspended".to_string()
                    } else {
                        "about to be dispatched".to_string()
                    }
                }
            };
            reasons.push(serde_json::json!({ "task": w.task, "effect": w.effect_id, "kind": w.kind, "reason": why }));
        }
        if status == kflow_store::InstanceStatus::Running {
            reasons.extend(self.dag_waits(id, &view.instance).await?);
            let id2 = id.to_string();
            let head = self.blocking(move |s| s.history(&id2, 0, 2)).await?;
            let head = journal::decode_all(id, &head)
                .map_err(|e| EngineError::Store(StoreError::Corrupt(e.to_string())))?;
            let has = |f: fn(&journal::Record) -> bool| head.iter().any(f);
            if has(|r| matches!(r, journal::Record::Queued { .. }))
                && !has(|r| matches!(r, journal::Record::Started { .. }))
            {
                reasons.push(serde_json::json!({ "task": null, "kind": "concurrency", "reason": "waiting for a slot under the workflow's concurrency limit" }));
            }
        }
        Ok(serde_json::json!({ "id": id, "status": status, "waiting": reasons }))
    }
}

// ---------------------------------------------------------------------------------------------
// For the scheduler (crate::schedule): an observer hook, the store, compiled definitions, and
// starts with a caller-chosen id.

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

/// The `Msg::Start` of an instance; `id: None` lets the driver pick a UUID v7, `Some` starts
/// at most once (an existing instance with that id is the answer).
/// A client-chosen instance id: 1 to 128 letters, digits, `-` and `_` (no `.`: it separates
/// a sub-workflow's id from its parent's).
fn check_client_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid {
            message: format!(
                "invalid instance id {:?}: use 1 to 128 letters, digits, '-' or '_'",
                id.chars().take(140).collect::<String>()
            ),
            details: Vec::new(),
        })
    }
}

fn start_msg(
    id: Option<String>,
    wf: Arc<Workflow>,
    input: Value,
    reply: oneshot::Sender<Result<Started>>,
) -> Msg {
    Msg::Start {
        id,
        dedupe: None,
        wf,
        input,
        priority: None,
        reply,
    }
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
    pub fn store(&self) -> Arc<dyn Store> {
        self.shared.store.clone()
    }

    /// The compiled workflow of a registered version (cached).
    pub fn compiled(&self, ns: &str, name: &str, version: &str) -> Result<Arc<Workflow>> {
        self.shared.workflow(ns, name, version)
    }

    /// Starts an instance with the given id, at most once: if an instance with this id exists,
    /// returns it and starts nothing. (Until the driver takes the id, a new instance gets a
    /// fresh id; see `start_msg`.)
    pub async fn start_with_id(
        &self,
        id: &str,
        ns: &str,
        name: &str,
        version: &str,
        input: Value,
    ) -> Result<Instance> {
        let id2 = id.to_string();
        if let Some(existing) = self.blocking(move |s| s.get_instance(&id2)).await? {
            return Ok(existing);
        }
        let wf = self.startable(ns, name, Some(version), &input).await?;
        let id = id.to_string();
        self.ask(|reply| start_msg(Some(id), wf, input, reply))
            .await
            .map(|s| s.instance)
    }
}

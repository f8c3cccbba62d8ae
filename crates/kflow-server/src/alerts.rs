//! Alerts: rules from the config, evaluated by the server, recorded in the store, delivered as
//! CloudEvents to webhooks with retries.
//!
//! - `instance_faulted`: as instances fault (the driver's committed ends, `Shared::ended`).
//! - `instance_duration`: an instance running longer than `seconds`.
//! - `task_duration`: a call or process running on a worker longer than `seconds` (from its
//!   lease).
//! - `queue_wait`: a queue whose oldest waiting task waited longer than `seconds`.
//! - `worker_lost`: a remote worker silent longer than its lease TTL (its tasks go to others).
//! - `schedule_missed`: a schedule that skipped a fire (the `missed` policy, or a fire that
//!   could not start).
//!
//! An alert fires once per rule and subject (`key`: the instance, the queue, the worker, the
//! schedule and its skip count): the store keeps `(rule, key)` unique, so a condition that lasts,
//! or a restart, does not fire it again; a condition that clears (a queue drained, a worker
//! back) resolves it, and it may fire again later. Its id is stable, and is the CloudEvent's
//! `id`: a receiver that gets a retried delivery twice can tell. Deliveries are retried with
//! exponential back-off (1 s doubling to 5 min) up to `max_attempts`; every attempt is recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

use kflow_store::{AlertAttempt, AlertRow, InstanceFilter, InstanceStatus};

use crate::engine::Engine;

/// `alerts:` in the config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct AlertsConfig {
    /// Named webhooks: where alerts go.
    #[serde(default)]
    pub webhooks: BTreeMap<String, Webhook>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Delivery attempts per alert and webhook before giving up (default 10).
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Webhook {
    pub url: String,
    /// Extra request headers (an `Authorization`, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    InstanceFaulted,
    InstanceDuration,
    TaskDuration,
    /// A task running past its learned p99 run time × `factor` (default 3), once 20 runs of it
    /// are known.
    TaskAnomaly,
    /// A task of a workflow's newest version (with 20 runs) whose p95 run time is more than
    /// `factor` (default 1.5) × its p95 in the version before.
    VersionDrift,
    QueueWait,
    WorkerLost,
    ScheduleMissed,
}

impl On {
    fn as_str(self) -> &'static str {
        match self {
            On::InstanceFaulted => "instance_faulted",
            On::InstanceDuration => "instance_duration",
            On::TaskDuration => "task_duration",
            On::TaskAnomaly => "task_anomaly",
            On::VersionDrift => "version_drift",
            On::QueueWait => "queue_wait",
            On::WorkerLost => "worker_lost",
            On::ScheduleMissed => "schedule_missed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Rule {
    pub name: String,
    pub on: On,
    /// Only instances (or schedules) of this namespace.
    pub namespace: Option<String>,
    /// Only instances (or schedules) of this workflow.
    pub workflow: Option<String>,
    /// Only this queue (`queue_wait`).
    pub queue: Option<String>,
    /// The threshold of `instance_duration` and `queue_wait`.
    pub seconds: Option<f64>,
    /// `task_anomaly`: how many times its learned p99 a task may run (default 3);
    /// `version_drift`: how many times its p95 in the version before (default 1.5).
    pub factor: Option<f64>,
    /// Webhooks to send to (default: every webhook).
    #[serde(default)]
    pub webhooks: Vec<String>,
}

impl AlertsConfig {
    /// Every mistake of the section at once, each naming its rule.
    pub fn check(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        for (name, w) in &self.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                errors.push(format!(
                    "alerts.webhooks.{name}.url: {:?} is not an http(s) URL",
                    w.url
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("alerts.rules[{i}] ({:?})", r.name);
            if r.name.is_empty() || !seen.insert(r.name.clone()) {
                errors.push(format!("{at}: rule names must be unique and not empty"));
            }
            let needs_seconds = matches!(
                r.on,
                On::InstanceDuration | On::TaskDuration | On::QueueWait
            );
            match (needs_seconds, r.seconds) {
                (true, None) => errors.push(format!("{at}: `{}` needs `seconds`", r.on.as_str())),
                (true, Some(s)) if !(s > 0.0 && s.is_finite()) => {
                    errors.push(format!("{at}: `seconds` must be a positive number"))
                }
                (false, Some(_)) => {
                    errors.push(format!("{at}: `{}` takes no `seconds`", r.on.as_str()))
                }
                _ => {}
            }
            if let Some(f) = r.factor
                && (!matches!(r.on, On::TaskAnomaly | On::VersionDrift)
                    || !(f >= 1.0 && f.is_finite()))
            {
                errors.push(format!(
                    "{at}: `factor` applies to task_anomaly and version_drift only, and must be \
                     at least 1"
                ));
            }
            if r.queue.is_some() && r.on != On::QueueWait {
                errors.push(format!("{at}: `queue` applies to queue_wait only"));
            }
            for w in &r.webhooks {
                if !self.webhooks.contains_key(w) {
                    errors.push(format!("{at}: no webhook named {w:?} in alerts.webhooks"));
                }
            }
        }
        if self.max_attempts == Some(0) {
            errors.push("alerts.max_attempts must be at least 1".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The stable id of an alert: the CloudEvent id receivers de-duplicate on.
fn alert_id(rule: &str, key: &str, fired_ms: i64) -> String {
    let h = sha2::Sha256::digest(format!("{rule}\n{key}\n{fired_ms}").as_bytes());
    h.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The alert service of one server.
pub struct Alerts {
    engine: Engine,
    config: AlertsConfig,
    http: reqwest::Client,
    /// Conditions seen firing at the last evaluation, by (rule, key): cleared ones resolve.
    active: std::sync::Mutex<HashSet<(String, String)>>,
    /// `version_drift` findings per rule, and when they are due to be worked out again (they
    /// are read from the learned statistics now and then, not every tick).
    drifts: tokio::sync::Mutex<HashMap<String, (std::time::Instant, Vec<Finding>)>>,
}

/// What a rule found: its key, namespace, summary and details.
type Finding = (String, String, String, Value);

/// How often at most `version_drift` reads the learned statistics again; a pass that took long
/// waits 50 times as long before the next (at most 2% of a core spent on it).
const DRIFT_EVERY: Duration = Duration::from_secs(5);

/// Most workflows one `version_drift` pass looks at.
const DRIFT_MAX_WORKFLOWS: usize = 1_000;

const TICK: Duration = Duration::from_secs(1);

impl Alerts {
    pub fn new(engine: Engine, config: AlertsConfig) -> Result<Arc<Alerts>, String> {
        config.check()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("alerts: cannot build the HTTP client: {e}"))?;
        Ok(Arc::new(Alerts {
            engine,
            config,
            http,
            active: Default::default(),
            drifts: Default::default(),
        }))
    }

    /// Starts the evaluator and the sender; they stop when the handle is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            if me.config.rules.is_empty() {
                return;
            }
            let mut ended = me.engine.subscribe_ended();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    e = ended.recv() => match e {
                        Ok(e) => me.instance_ended(&e).await,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "alerts: instance ends were missed under load");
                        }
                        Err(_) => return,
                    },
                    _ = tick.tick() => {
                        me.evaluate().await;
                        // Several nodes: one of them (the leader) delivers for all.
                        if me.engine.is_leader() {
                            me.deliver_due().await;
                        }
                    }
                }
            }
        })
    }

    fn matches(r: &Rule, ns: &str, workflow: &str) -> bool {
        r.namespace.as_deref().is_none_or(|n| n == ns)
            && r.workflow.as_deref().is_none_or(|w| w == workflow)
    }

    async fn instance_ended(&self, e: &crate::engine::Ended) {
        if e.status != InstanceStatus::Faulted {
            return;
        }
        for r in &self.config.rules {
            if r.on == On::InstanceFaulted && Self::matches(r, &e.namespace, &e.name) {
                let error = e.error.clone().unwrap_or(Value::Null);
                let title = error
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or("no title");
                self.fire(
                    r,
                    &e.id,
                    Some(&e.namespace),
                    format!("instance {} of {}/{} faulted: {title}", e.id, e.namespace, e.name),
                    json!({
                        "instance": e.id, "namespace": e.namespace, "workflow": e.name,
                        "version": e.version,
                        // The error's kind, not its detail (which may hold data).
                        "error": {"type": error.get("type"), "status": error.get("status"), "title": error.get("title")},
                    }),
                )
                .await;
            }
        }
    }

    /// Evaluates the conditions that last (durations, queues, workers, schedules).
    async fn evaluate(&self) {
        let now = self.engine.now_ms();
        let mut firing: HashSet<(String, String)> = HashSet::new();
        for r in &self.config.rules {
            match r.on {
                On::InstanceFaulted => {}
                On::InstanceDuration => {
                    let limit_ms = (r.seconds.unwrap_or(0.0) * 1000.0) as i64;
                    let filter = InstanceFilter {
                        namespace: r.namespace.clone(),
                        name: r.workflow.clone(),
                        status: Some(InstanceStatus::Running),
                        to_ms: Some(now - limit_ms),
                        ..Default::default()
                    };
                    let Ok(page) = self.engine.instances(filter, None, 200).await else {
                        continue;
                    };
                    for i in page.items {
                        firing.insert((r.name.clone(), i.id.clone()));
                        self.fire(
                            r,
                            &i.id,
                            Some(&i.namespace),
                            format!(
                                "instance {} of {}/{} has run for more than {} s",
                                i.id,
                                i.namespace,
                                i.name,
                                r.seconds.unwrap_or(0.0)
                            ),
                            json!({"instance": i.id, "namespace": i.namespace, "workflow": i.name,
                                   "version": i.version, "running_ms": now - i.created_ms}),
                        )
                        .await;
                    }
                }
                On::TaskDuration => {
                    let limit_ms = (r.seconds.unwrap_or(0.0) * 1000.0) as i64;
                    // Wall-clock lease times: the queue's clock.
                    let wall = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    for (instance, ns, task, effect, leased_ms) in self.engine.running_tasks() {
                        if wall - leased_ms <= limit_ms
                            || r.namespace.as_deref().is_some_and(|n| n != ns)
                        {
                            continue;
                        }
                        let key = format!("{instance}#{effect}");
                        firing.insert((r.name.clone(), key.clone()));
                        self.fire(
                            r,
                            &key,
                            Some(&ns),
                            format!(
                                "task {task} of instance {instance} has run for more than {} s",
                                r.seconds.unwrap_or(0.0)
                            ),
                            json!({"instance": instance, "namespace": ns, "task": task,
                                   "running_ms": wall - leased_ms}),
                        )
                        .await;
                    }
                }
                On::TaskAnomaly => {
                    let factor = r.factor.unwrap_or(3.0);
                    let wall = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let mut learned: HashMap<(String, String, String), HashMap<String, f64>> =
                        HashMap::new();
                    for (instance, ns, name, version, task, effect, leased_ms) in
                        self.engine.running_tasks_of_workflows()
                    {
                        if !Self::matches(r, &ns, &name) {
                            continue;
                        }
                        let key = (ns.clone(), name.clone(), version.clone());
                        if !learned.contains_key(&key) {
                            let p = self
                                .engine
                                .learned_p99(&ns, &name, &version)
                                .await
                                .unwrap_or_default();
                            learned.insert(key.clone(), p);
                        }
                        let Some(p99) = learned[&key].get(&task).copied() else {
                            continue;
                        };
                        let running = (wall - leased_ms) as f64;
                        if running <= p99 * factor {
                            continue;
                        }
                        let alert_key = format!("{instance}#{effect}");
                        firing.insert((r.name.clone(), alert_key.clone()));
                        self.fire(
                            r,
                            &alert_key,
                            Some(&ns),
                            format!(
                                "task {task} of instance {instance} ({ns}/{name}@{version}) has run \
                                 for {:.1} s, more than {factor} × its learned p99 ({:.1} s)",
                                running / 1e3,
                                p99 / 1e3
                            ),
                            json!({"instance": instance, "namespace": ns, "workflow": name,
                                   "version": version, "task": task, "running_ms": running,
                                   "p99_ms": p99, "factor": factor}),
                        )
                        .await;
                    }
                }
                On::VersionDrift => {
                    for (key, ns, summary, details) in self.version_drifts(r).await {
                        firing.insert((r.name.clone(), key.clone()));
                        self.fire(r, &key, Some(&ns), summary, details).await;
                    }
                }
                On::QueueWait => {
                    let limit_ms = (r.seconds.unwrap_or(0.0) * 1000.0) as i64;
                    for q in self.engine.queues() {
                        if r.queue.as_deref().is_some_and(|n| n != q.queue) {
                            continue;
                        }
                        if q.depth > 0 && q.oldest_wait_ms > limit_ms {
                            firing.insert((r.name.clone(), q.queue.clone()));
                            self.fire(
                                r,
                                &q.queue,
                                None,
                                format!(
                                    "queue {} has a task waiting for {} ms ({} waiting, {} workers)",
                                    q.queue,
                                    q.oldest_wait_ms,
                                    q.depth,
                                    q.workers.len()
                                ),
                                json!({"queue": q.queue, "depth": q.depth,
                                       "oldest_wait_ms": q.oldest_wait_ms, "workers": q.workers}),
                            )
                            .await;
                        }
                    }
                }
                On::WorkerLost => {
                    let ttl = self.engine.lease_ttl_ms();
                    for w in self.engine.workers() {
                        if w.builtin || w.draining || now - w.last_seen_ms <= ttl {
                            continue;
                        }
                        firing.insert((r.name.clone(), w.id.clone()));
                        self.fire(
                            r,
                            &w.id,
                            None,
                            format!(
                                "worker {} has not been heard from for {} ms: its tasks go to other workers",
                                w.id,
                                now - w.last_seen_ms
                            ),
                            json!({"worker": w.id, "queues": w.queues, "last_seen_ms": w.last_seen_ms}),
                        )
                        .await;
                    }
                }
                On::ScheduleMissed => {
                    let Ok(list) = crate::schedule::views::list(&self.engine).await else {
                        continue;
                    };
                    for s in list {
                        let lost = s.skipped + s.missed_ticks;
                        if lost == 0 || !Self::matches(r, &s.namespace, &s.name) {
                            continue;
                        }
                        let key = format!("{}/{}#{lost}", s.namespace, s.name);
                        self.fire(
                            r,
                            &key,
                            Some(&s.namespace),
                            format!(
                                "schedule of {}/{} missed or skipped a fire ({} skipped, {} \
                                 missed so far){}",
                                s.namespace,
                                s.name,
                                s.skipped,
                                s.missed_ticks,
                                s.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                            ),
                            json!({"namespace": s.namespace, "workflow": s.name, "skipped": s.skipped,
                                   "missed": s.missed_ticks, "last_error": s.last_error}),
                        )
                        .await;
                    }
                }
            }
        }
        // Conditions that cleared resolve their alert: they may fire again.
        let cleared: Vec<(String, String)> = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let gone = active.difference(&firing).cloned().collect();
            *active = firing;
            gone
        };
        for (rule, key) in cleared {
            let store = self.engine.store();
            let _ = tokio::task::spawn_blocking(move || store.clear_alert(&rule, &key)).await;
        }
    }

    /// Records an alert (once per rule and key); a new one is delivered at the next tick.
    /// The drifts `r` sees: per workflow, the tasks of its newest learned version whose p95
    /// rose past `factor` × the version before (both with enough runs). Worked out again every
    /// `DRIFT_EVERY` or 50 × the last pass, whichever is longer.
    async fn version_drifts(&self, r: &Rule) -> Vec<Finding> {
        let mut cache = self.drifts.lock().await;
        if let Some((due, found)) = cache.get(&r.name)
            && std::time::Instant::now() < *due
        {
            return found.clone();
        }
        let started = std::time::Instant::now();
        let factor = r.factor.unwrap_or(1.5);
        let mut workflows: Vec<(String, String)> = self
            .engine
            .definitions(r.namespace.clone())
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.namespace, d.name))
            .filter(|(ns, name)| Self::matches(r, ns, name))
            .collect();
        workflows.sort();
        workflows.dedup();
        workflows.truncate(DRIFT_MAX_WORKFLOWS);
        let mut found = Vec::new();
        for (ns, name) in workflows {
            let Ok(a) = self.engine.analysis(&ns, &name, None).await else {
                continue;
            };
            // Newest first: the newest version with runs to judge, and the one before it.
            let mut judged = a
                .versions
                .iter()
                .filter(|v| v.tasks.iter().any(|t| t.confident));
            let (Some(newer), Some(older)) = (judged.next(), judged.next()) else {
                continue;
            };
            for d in crate::engine::drifted(newer, older, factor) {
                found.push((
                    format!("{ns}/{name}@{}#{}", newer.version, d.task),
                    ns.clone(),
                    format!("{ns}/{name}: {}", d.message),
                    json!({"namespace": ns, "workflow": name, "version": newer.version,
                           "previous_version": older.version, "task": d.task,
                           "evidence": d.evidence, "factor": factor}),
                ));
            }
        }
        let due = std::time::Instant::now() + DRIFT_EVERY.max(started.elapsed() * 50);
        cache.insert(r.name.clone(), (due, found.clone()));
        found
    }

    async fn fire(
        &self,
        r: &Rule,
        key: &str,
        namespace: Option<&str>,
        summary: String,
        data: Value,
    ) {
        // A condition already seen at the previous evaluation is recorded: no write per tick.
        if self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(r.name.clone(), key.to_string()))
        {
            return;
        }
        let now = self.engine.now_ms();
        let row = AlertRow {
            id: alert_id(&r.name, key, now),
            rule: r.name.clone(),
            key: key.to_string(),
            namespace: namespace.map(str::to_string),
            fired_ms: now,
            summary: summary.clone(),
            data: json!({"on": r.on.as_str(), "details": data,
                         "webhooks": self.targets(r)}),
            delivered_ms: None,
            attempts: 0,
            next_ms: (!self.targets(r).is_empty()).then_some(now),
            last_error: None,
            resolved_ms: None,
        };
        let store = self.engine.store();
        match tokio::task::spawn_blocking(move || store.fire_alert(&row)).await {
            Ok(Ok(true)) => {
                tracing::warn!(rule = %r.name, key, "alert: {summary}");
                self.engine.metrics().alerts_fired.inc();
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "alerts: recording an alert failed"),
            Err(e) => tracing::error!(error = %e, "alerts: recording an alert failed"),
        }
    }

    fn targets(&self, r: &Rule) -> Vec<String> {
        if r.webhooks.is_empty() {
            self.config.webhooks.keys().cloned().collect()
        } else {
            r.webhooks.clone()
        }
    }

    /// Sends the alerts that are due, each to its webhooks.
    async fn deliver_due(&self) {
        let now = self.engine.now_ms();
        let store = self.engine.store();
        let due = match tokio::task::spawn_blocking(move || store.due_alerts(now, 50)).await {
            Ok(Ok(d)) => d,
            _ => return,
        };
        let max = self.config.max_attempts.unwrap_or(10);
        for a in due {
            let targets: Vec<String> = a.data["webhooks"]
                .as_array()
                .map(|w| {
                    w.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let event = cloud_event(&a);
            let mut errors = Vec::new();
            for t in &targets {
                let Some(w) = self.config.webhooks.get(t) else {
                    continue;
                };
                if let Err(e) = self.post(w, &event).await {
                    errors.push(format!("{t}: {e}"));
                }
            }
            let outcome = if errors.is_empty() {
                AlertAttempt::Delivered {
                    at_ms: self.engine.now_ms(),
                }
            } else {
                let attempts = a.attempts + 1;
                let backoff = (1000i64 << attempts.min(9)).min(300_000);
                tracing::warn!(alert = %a.id, attempts, error = %errors.join("; "), "alerts: delivery failed");
                AlertAttempt::Failed {
                    next_ms: (attempts < max).then_some(self.engine.now_ms() + backoff),
                    error: errors.join("; "),
                }
            };
            let (store, id) = (self.engine.store(), a.id.clone());
            let _ = tokio::task::spawn_blocking(move || store.alert_attempted(&id, outcome)).await;
        }
    }

    async fn post(&self, w: &Webhook, event: &Value) -> Result<(), String> {
        let mut req = self
            .http
            .post(&w.url)
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string());
        for (k, v) in &w.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }
}

/// The CloudEvent (structured JSON mode) of an alert.
pub fn cloud_event(a: &AlertRow) -> Value {
    json!({
        "specversion": "1.0",
        "id": a.id,
        "source": "kflow/alerts",
        "type": format!("io.kflow.alert.{}", a.data["on"].as_str().unwrap_or("alert")),
        "subject": a.key,
        "time": kflow_core::time::iso8601(a.fired_ms),
        "datacontenttype": "application/json",
        "data": {
            "rule": a.rule,
            "summary": a.summary,
            "namespace": a.namespace,
            "details": a.data["details"],
        },
    })
}

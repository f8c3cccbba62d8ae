//! Instances: starts (exactly once per client id or idempotency key), reads (one instance,
//! lists, histories), waiting for the end, control (cancel, suspend, resume), posted events and
//! live updates.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use kflow_dsl::Workflow;
use kflow_store::{HistoryEvent, Instance, InstanceFilter, Page, StoreError};

use super::{
    Dedupe, Engine, EngineError, LiveEvent, Msg, Result, Started, canonical_hash, journal, live,
};

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
    /// The caller's W3C `traceparent`: the instance's trace continues it.
    pub trace: Option<String>,
    /// The audit entry of the start (actor, action, source, result): committed with the
    /// instance it creates, and not at all when it creates none (a repeated request).
    pub audit: Option<kflow_store::AuditEntry>,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub instance: Instance,
    /// Tasks with an effect in progress (calls and processes a worker holds, sub-workflows).
    pub running: Vec<String>,
    /// Tasks whose call or process waits in a queue for a worker (not started yet).
    pub queued: Vec<String>,
    /// Tasks waiting on a timer or for events.
    pub waiting: Vec<Waiting>,
    /// Expected time to completion, from learned run times (None: finished, nothing learned
    /// yet, or waiting for an event).
    pub eta: Option<Eta>,
}

/// The expected time to completion of a running instance: its remaining critical path by the
/// learned median run times, and by their p95 (the band).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Eta {
    pub remaining_ms_p50: f64,
    pub remaining_ms_p95: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub task: String,
    /// `timer` or `event`.
    pub on: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

impl Engine {
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
            audit: None,
            trace: None,
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
            audit: spec.audit,
            trace: spec.trace,
            reply,
        })
        .await
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

    pub async fn instance(&self, id: &str) -> Result<InstanceView> {
        let id2 = id.to_string();
        let (inst, work) = self
            .blocking(move |s| Ok((s.get_instance(&id2)?, s.work_of(&id2)?)))
            .await?;
        let instance =
            inst.ok_or_else(|| EngineError::NotFound(format!("instance {id} does not exist")))?;
        let mut running = Vec::new();
        let mut queued = Vec::new();
        let mut waiting = Vec::new();
        let pending: Vec<(String, String, i64)> = work
            .iter()
            .map(|w| (w.task.clone(), w.kind.clone(), w.due_ms))
            .collect();
        let in_queue: std::collections::HashSet<u64> = {
            let q = self.shared.queue.lock();
            q.items()
                .iter()
                .filter(|i| i.instance == id)
                .map(|i| i.effect_id)
                .collect()
        };
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
                _ if in_queue.contains(&w.effect_id) => queued.push(w.task),
                _ => running.push(w.task),
            }
        }
        let eta = if instance.status == kflow_store::InstanceStatus::Running {
            self.eta(&instance, pending).await
        } else {
            None
        };
        Ok(InstanceView {
            instance,
            running,
            queued,
            waiting,
            eta,
        })
    }

    /// The expected time to completion (see [`Eta`]) of a running instance whose pending work
    /// is `pending` (task, kind, due): for each, its remaining path (its rank, less what it has
    /// already run; a timer's time left plus the path after it); the longest. None when nothing
    /// is learned of its version, or when it waits for an event.
    async fn eta(&self, inst: &Instance, pending: Vec<(String, String, i64)>) -> Option<Eta> {
        if pending.is_empty() || pending.iter().any(|(_, kind, _)| kind == "listen") {
            return None;
        }
        let wf = self
            .shared
            .workflow(&inst.namespace, &inst.name, &inst.version)
            .ok()?;
        let shared = self.shared.clone();
        let (ns, name, version) = (
            inst.namespace.clone(),
            inst.name.clone(),
            inst.version.clone(),
        );
        let set = tokio::task::spawn_blocking(move || shared.ranks_of(&wf, &ns, &name, &version))
            .await
            .ok()?;
        if set.d50.is_empty() {
            return None;
        }
        let now = self.shared.now();
        let (mut p50, mut p95) = (0.0_f64, 0.0_f64);
        for (task, kind, due) in pending {
            let r50 = set.rank50.get(&task).copied().unwrap_or(0.0);
            let r95 = set.rank95.get(&task).copied().unwrap_or(0.0);
            let (a, b) = if kind == "timer" {
                let left = (due - now).max(0) as f64;
                (left + r50, left + r95)
            } else {
                let ran = (now - due).max(0) as f64;
                let d50 = set.d50.get(&task).copied().unwrap_or(0.0);
                let d95 = set.d95.get(&task).copied().unwrap_or(0.0);
                (r50 - ran.min(d50), r95 - ran.min(d95))
            };
            p50 = p50.max(a);
            p95 = p95.max(b);
        }
        Some(Eta {
            remaining_ms_p50: p50.round(),
            remaining_ms_p95: p95.max(p50).round(),
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
        // Registered before reading: a finish committed in between still wakes us. The status
        // is all this needs (the whole view reads and opens every pending work row).
        let id2 = id.to_string();
        let row = self
            .blocking(move |s| s.get_instance(&id2))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("instance {id} does not exist")))?;
        if !row.status.is_finished() {
            if self.clustered() {
                // Another node may drive it (and finish it): its end is read, twice a second.
                let deadline = tokio::time::Instant::now() + timeout;
                let mut rx = rx;
                loop {
                    let step = deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(Duration::from_millis(500));
                    if step.is_zero() || tokio::time::timeout(step, &mut rx).await.is_ok() {
                        break;
                    }
                    let id2 = id.to_string();
                    let finished = self
                        .blocking(move |s| s.get_instance(&id2))
                        .await?
                        .is_none_or(|r| r.status.is_finished());
                    if finished {
                        break;
                    }
                }
            } else {
                let _ = tokio::time::timeout(timeout, rx).await;
            }
            self.forget_closed_waiters(id);
        }
        self.instance(id).await
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

    /// A new instance from faulted instance `id`, from `task` (a task's JSON pointer; by default
    /// the first task that faulted): it reuses the journaled results of everything before the
    /// task's last start, and runs the task and what follows again (see `driver/retry.rs`).
    pub async fn retry(&self, id: &str, task: Option<&str>) -> Result<Started> {
        let i = id.to_string();
        let (row, history) = self
            .blocking(move |s| {
                let row = s.get_instance(&i)?;
                let history = match row {
                    Some(_) => s.history(&i, 0, u32::MAX)?,
                    None => Vec::new(),
                };
                Ok((row, history))
            })
            .await?;
        let row = row.ok_or_else(|| EngineError::NotFound(format!("no instance {id}")))?;
        if row.status != kflow_store::InstanceStatus::Faulted {
            return Err(EngineError::Conflict(format!(
                "instance {id} is {}: only a faulted instance can be retried from a task",
                row.status.as_str()
            )));
        }
        let records =
            journal::decode_all(id, &history).map_err(|e| EngineError::Conflict(e.to_string()))?;
        let notice = |r: &journal::Record, kind: &str| match r {
            journal::Record::Notice(m) if m.get("type").and_then(Value::as_str) == Some(kind) => m
                .get("reference")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let task = match task {
            Some(t) => t.to_string(),
            None => records
                .iter()
                .find_map(|r| notice(r, "task.faulted"))
                .ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "no task of instance {id} faulted (the instance itself did): start a new                          instance instead"
                    ))
                })?,
        };
        let cut = history
            .iter()
            .zip(&records)
            .filter(|(_, r)| notice(r, "task.started").as_deref() == Some(task.as_str()))
            .map(|(ev, _)| ev.seq)
            .last()
            .ok_or_else(|| EngineError::Invalid {
                message: format!("task {task} never started in instance {id}"),
                details: Vec::new(),
            })?;
        let prefix: Vec<(journal::Record, i64)> = history
            .iter()
            .zip(records)
            .filter(|(ev, r)| {
                ev.seq < cut
                    && matches!(
                        r,
                        journal::Record::Started { .. }
                            | journal::Record::Delivery { .. }
                            | journal::Record::Notice(_)
                    )
            })
            .map(|(ev, r)| (r, ev.time_ms))
            .collect();
        let wf = self
            .shared
            .workflow(&row.namespace, &row.name, &row.version)?;
        if super::concurrency::spec(&wf).ok().flatten().is_some() {
            return Err(EngineError::Conflict(format!(
                "{}/{}@{} has a concurrency limit: retrying from a task does not take a slot                  yet, so it is refused for this workflow",
                row.namespace, row.name, row.version
            )));
        }
        self.ask(|reply| Msg::Retry {
            from: id.to_string(),
            task,
            wf,
            input: row.input,
            records: prefix,
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
        self.offer_recorded(event, event_id).await
    }

    /// [`publish_event`](Self::publish_event) at most once per CloudEvents `source` and `id`
    /// (a broker's message, delivered again when its acknowledgement was lost): `None` when an
    /// event with both was recorded before, and it is not offered again.
    pub async fn publish_event_once(&self, event: Value) -> Result<Option<usize>> {
        let key = dedup_key(&event);
        let (e2, now) = (event.clone(), self.shared.now());
        let Some(event_id) = self
            .blocking(move |s| s.add_event_once(&e2, &key, now))
            .await?
        else {
            return Ok(None);
        };
        self.offer_recorded(event, event_id).await.map(Some)
    }

    async fn offer_recorded(&self, event: Value, event_id: i64) -> Result<usize> {
        let scheduled = match self.observer() {
            Some(o) => o.event_published(&event).await?,
            None => 0,
        };
        if self.offers_by_pump() {
            return Ok(self.offered_here(event_id).await.unwrap_or(0) + scheduled);
        }
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
}

/// The key an event is recorded once by: a digest of its `source` and `id` (fixed length, and
/// nothing of either readable in the store).
fn dedup_key(event: &Value) -> String {
    use sha2::Digest;
    let text = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(text("source").as_bytes());
    h.update([0]);
    h.update(text("id").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

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

/// The `Msg::Start` of an instance; `id: None` lets the driver pick a UUID v7, `Some` starts
/// at most once (an existing instance with that id is the answer).
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
        audit: None,
        trace: None,
        reply,
    }
}

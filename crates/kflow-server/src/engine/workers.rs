//! The async side of the work queue: long polls, the lease sweeper, and the server's built-in
//! worker, which takes work through the same queue as remote `kflow worker` processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use kflow_core::{Delivery, WfError};
use kflow_tasks::{EffectCtx, Executor};

use super::driver::Msg;
use super::queue::{Item, Lease, Queue, Worker};
use super::{Shared, now_ms};

pub const BUILTIN: &str = "builtin";

pub struct WorkQueue {
    q: Mutex<Queue>,
    /// Queue waits and lease expiries are counted here.
    pub metrics: Arc<crate::metrics::Metrics>,
    notify: Notify,
    pub ttl_ms: i64,
    /// Tasks the built-in worker is running, by (instance, effect).
    running: Mutex<HashMap<(String, u64), JoinHandle<()>>>,
    /// Lease ids revoked while a remote worker held them: told at its next heartbeat.
    revoked: Mutex<HashMap<String, HashSet<String>>>,
    /// Set when the engine drains: workers get no new work, and finish and report what they
    /// hold.
    draining: std::sync::atomic::AtomicBool,
    /// Until when (monotonic ms, see `mono_ms`) this node surely holds the database lease
    /// (PostgreSQL); no task starts past it. A node paused past its lease (SIGSTOP, a long GC)
    /// finds it lapsed when it wakes, even before it learns that another node took over, and
    /// starts nothing more. `i64::MAX`: no lease (SQLite).
    valid_until: std::sync::atomic::AtomicI64,
    /// What finished tasks taught since the last flush (see `crate::adaptive::learn`).
    pub learned: Arc<crate::adaptive::learn::Learned>,
}

impl WorkQueue {
    pub fn new(ttl_ms: i64, metrics: Arc<crate::metrics::Metrics>) -> WorkQueue {
        WorkQueue {
            q: Mutex::new(Queue::default()),
            metrics,
            notify: Notify::new(),
            ttl_ms,
            running: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            valid_until: std::sync::atomic::AtomicI64::new(i64::MAX),
            learned: Default::default(),
        }
    }

    /// A task finished: how long it waited and ran, learned for its workflow version.
    pub(crate) fn learn(&self, lease: &Lease, run_s: f64, ok: bool) {
        // Adaptive concurrency toward the call's host learns from every answer.
        self.lock().answered(lease, run_s * 1e3, ok);
        let item = &lease.item;
        let Some((name, version)) = &item.workflow else {
            return;
        };
        self.learned.record(
            (
                item.namespace.clone(),
                name.clone(),
                version.clone(),
                item.task.clone(),
            ),
            (lease.leased_ms - item.enqueued_ms).max(0) as f64 / 1e3,
            run_s,
            ok,
            item.attempt.unwrap_or(1),
        );
    }

    /// The database lease holds until `mono_ms` (monotonic milliseconds, see `mono_ms`).
    pub fn set_lease_valid_until(&self, mono_ms: i64) {
        self.valid_until
            .store(mono_ms, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether tasks may start now (the lease, when there is one, has not lapsed).
    pub fn lease_valid(&self) -> bool {
        super::mono_ms() < self.valid_until.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on no worker takes new work (the engine drains).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Tasks leased to remote workers now (they may still report during a drain).
    pub fn remote_leases(&self) -> usize {
        self.lock().leases().filter(|l| l.worker != BUILTIN).count()
    }

    pub fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, item: Item) {
        self.lock().push(item);
        self.notify.notify_waiters();
    }

    /// Queues an item without waking the polls: the caller offers it to the built-in worker
    /// first, then calls [`WorkQueue::notify_if_queued`].
    pub fn push_quiet(&self, item: Item) {
        self.lock().push(item);
    }

    /// Wakes the polls when items wait.
    pub fn notify_if_queued(&self) {
        if !self.lock().items().is_empty() {
            self.notify.notify_waiters();
        }
    }

    /// The effect is no longer wanted: drop it from the queue, stop it where it runs.
    pub fn cancel(&self, instance: &str, effect_id: u64) {
        let key = (instance.to_string(), effect_id);
        let lease = self
            .lock()
            .lease_of(instance, effect_id)
            .map(|l| (l.id.clone(), l.worker.clone()));
        self.lock().cancel(instance, effect_id);
        if let Some(h) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
        {
            h.abort();
        }
        if let Some((lease, worker)) = lease {
            if worker != BUILTIN {
                self.revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(worker)
                    .or_default()
                    .insert(lease);
            }
        }
    }

    pub fn is_active(&self, instance: &str, effect_id: u64) -> bool {
        let q = self.lock();
        q.lease_of(instance, effect_id).is_some()
            || q.items()
                .iter()
                .any(|i| i.instance == instance && i.effect_id == effect_id)
    }

    pub fn register(&self, w: Worker) {
        self.lock().register(w);
        self.notify.notify_waiters();
    }

    /// Waits up to `wait` for work `worker` can take; returns the leases (maybe none).
    pub async fn poll(&self, worker: &str, max: usize, wait: Duration) -> Vec<Lease> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst);
            let leases = if draining || !self.lease_valid() {
                Vec::new()
            } else {
                self.lock().take(worker, max, now_ms(), self.ttl_ms)
            };
            self.observe_taken(&leases);
            if !leases.is_empty() || draining || tokio::time::Instant::now() >= deadline {
                return leases;
            }
            // The flag must drop even when the long poll is abandoned (client gone): a guard.
            let _waiting = Waiting::new(self, worker);
            // Work held back by a rate limit becomes takeable without a push: look again soon.
            let held_back = !self.lock().items().is_empty();
            let until = if held_back {
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(50))
            } else {
                deadline
            };
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    /// Renews a worker's leases; returns the reported leases it must stop, or None when the
    /// worker is unknown (it must register again).
    pub fn heartbeat(&self, worker: &str, reported: &[String]) -> Option<Vec<String>> {
        let mut stop = self
            .lock()
            .heartbeat(worker, reported, now_ms(), self.ttl_ms)?;
        if let Some(revoked) = self
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(worker)
        {
            for id in revoked {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        Some(stop)
    }

    /// Counts how long the taken items waited, by queue.
    fn observe_taken(&self, leases: &[Lease]) {
        let now = super::queue::mono_us();
        for l in leases {
            self.metrics
                .queue_wait
                .get_or_create(&crate::metrics::QueueLabels {
                    queue: l.item.queue.clone(),
                })
                .observe(now.saturating_sub(l.item.ready_us) as f64 / 1e6);
        }
    }

    /// Expires leases of silent workers; their items are queued again. Returns the leases lost.
    pub fn sweep(&self) -> Vec<Lease> {
        let lost = self.lock().expire(now_ms(), self.ttl_ms);
        self.metrics.lease_expiries.inc_by(lost.len() as u64);
        if !lost.is_empty() {
            self.notify.notify_waiters();
        }
        lost
    }

    pub fn builtin_running(&self) -> usize {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|_, h| !h.is_finished());
        r.len()
    }

    pub fn abort_builtin(&self) {
        for (_, h) in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            h.abort();
        }
    }
}

/// Marks a worker as parked in a long poll for as long as it lives.
struct Waiting<'a> {
    queue: &'a WorkQueue,
    worker: &'a str,
}

impl<'a> Waiting<'a> {
    fn new(queue: &'a WorkQueue, worker: &'a str) -> Waiting<'a> {
        queue.lock().set_waiting(worker, true);
        Waiting { queue, worker }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queue.lock().set_waiting(self.worker, false);
    }
}

/// The attempt number of a lease: known for a first run, else counted in the store now.
/// `None` when the work row is gone (answered or cancelled meanwhile). A store error is
/// retried (with a growing pause, while the lease is still held), never taken for "gone".
pub(crate) async fn attempt_of(shared: &Arc<Shared>, lease: &Lease) -> Option<u32> {
    if let Some(a) = lease.attempt {
        return Some(a);
    }
    let mut pause = Duration::from_millis(20);
    loop {
        let (s, i, e) = (
            shared.clone(),
            lease.item.instance.clone(),
            lease.item.effect_id,
        );
        match tokio::task::spawn_blocking(move || s.store.mark_attempt(&i, e)).await {
            Ok(Ok(attempt)) => return attempt,
            Ok(Err(err)) => tracing::warn!(
                instance = %lease.item.instance,
                effect = lease.item.effect_id,
                error = %err,
                "counting the attempt failed (trying again)"
            ),
            Err(err) => tracing::warn!(error = %err, "counting an attempt failed (trying again)"),
        }
        if !shared
            .queue
            .is_active(&lease.item.instance, lease.item.effect_id)
        {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// The server's built-in worker: runs the tasks leased to it in this process. The driver holds
/// one too and hands it ready work right after each commit ([`Builtin::pump`]), so that a call
/// starts on the driver's thread instead of after a wake-up of the worker loop; the loop
/// remains for everything else (slots freed, rate limits lifted, work re-queued).
#[derive(Clone)]
pub(crate) struct Builtin {
    shared: Arc<Shared>,
    queue: Arc<WorkQueue>,
    executor: Executor,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Builtin {
    /// The built-in worker without its loop, for tests of the driver's decisions (which hand
    /// it nothing: performing is the loop's job).
    #[cfg(test)]
    pub(crate) fn idle(shared: Arc<Shared>, tx: mpsc::UnboundedSender<Msg>) -> Builtin {
        Builtin {
            executor: Executor::new(shared.config.executor.clone()),
            queue: shared.queue.clone(),
            shared,
            permits: Arc::new(Semaphore::new(1)),
            tx,
        }
    }

    /// The executor (`call asyncapi` resolves its document through it).
    pub(crate) fn executor(&self) -> Executor {
        self.executor.clone()
    }

    /// Where results go: the driver's queue.
    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<Msg> {
        self.tx.clone()
    }

    /// Takes, now, the queued work the built-in worker has room for, and runs it.
    pub fn pump(&self) {
        let free = self.permits.available_permits();
        if free == 0 {
            return;
        }
        let leases = {
            let mut q = self.queue.lock();
            if q.worker(BUILTIN).is_none_or(|w| w.draining) || !self.queue.lease_valid() {
                return;
            }
            q.take(BUILTIN, free, now_ms(), self.queue.ttl_ms)
        };
        self.queue.observe_taken(&leases);
        for lease in leases {
            self.run(lease);
        }
    }

    /// Runs a leased task on the runtime and hands its result to the driver.
    fn run(&self, lease: Lease) {
        let me = self.clone();
        let key = (lease.item.instance.clone(), lease.item.effect_id);
        let h = tokio::spawn(async move {
            let Ok(_permit) = me.permits.clone().acquire_owned().await else {
                return;
            };
            let Some(attempt) = attempt_of(&me.shared, &lease).await else {
                let _ = me.queue.lock().complete(&lease.id, BUILTIN);
                return;
            };
            let item = &lease.item;
            let ctx = EffectCtx {
                instance_id: item.instance.clone(),
                effect_id: item.effect_id,
                task: item.task.clone(),
                attempt,
                namespace: item.namespace.clone(),
                limits: item.limits,
                traceparent: item.traceparent.clone(),
            };
            let t0 = std::time::Instant::now();
            let result = me.executor.perform(&ctx, &item.effect).await;
            let took = t0.elapsed().as_secs_f64();
            me.queue
                .metrics
                .task_duration
                .get_or_create(&crate::metrics::KindLabels {
                    kind: item.effect.kind(),
                })
                .observe(took);
            me.queue.learn(&lease, took, result.is_ok());
            // Refused only when the effect was cancelled meanwhile: nothing to do.
            let _ = deliver(&me.queue, &me.tx, &lease.id, BUILTIN, result, None);
            // Its slot is free: work that waited for one starts now.
            drop(_permit);
            if !me.queue.lock().items().is_empty() {
                me.pump();
            }
        });
        self.queue
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h);
    }
}

/// Starts the sweeper and the built-in worker (`slots` tasks at once); returns the built-in
/// worker for the driver.
pub(crate) fn start(
    shared: Arc<Shared>,
    queue: Arc<WorkQueue>,
    tx: mpsc::UnboundedSender<Msg>,
    slots: usize,
) -> Builtin {
    let mut capacity = BTreeMap::new();
    capacity.insert("tasks".to_string(), slots as f64);
    queue.register(Worker {
        id: BUILTIN.into(),
        queues: vec!["default".into()],
        labels: BTreeMap::new(),
        capacity,
        used: BTreeMap::new(),
        leases: HashSet::new(),
        last_seen_ms: now_ms(),
        draining: false,
        builtin: true,
        waiting: false,
        owner: None,
        namespaces: None,
    });
    let q2 = queue.clone();
    let tx2 = tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Each lost lease is recorded in its instance's history (`task.requeued`).
            for l in q2.sweep() {
                let _ = tx2.send(Msg::LeaseLost {
                    instance: l.item.instance,
                    effect: l.item.effect_id,
                    task: l.item.task,
                    worker: l.worker,
                });
            }
            if Arc::strong_count(&q2) == 1 {
                return;
            }
        }
    });
    let builtin = Builtin {
        executor: Executor::new(shared.config.executor.clone()),
        shared,
        queue,
        permits: Arc::new(Semaphore::new(slots.max(1))),
        tx,
    };
    let b = builtin.clone();
    tokio::spawn(async move {
        loop {
            let free = b.permits.available_permits();
            if free == 0 {
                let _ = b.permits.clone().acquire_owned().await.map(drop);
                continue;
            }
            if b.queue.lock().worker(BUILTIN).is_some_and(|w| w.draining) {
                return;
            }
            let leases = b
                .queue
                .poll(BUILTIN, free, Duration::from_millis(500))
                .await;
            for lease in leases {
                b.run(lease);
            }
        }
    });
    builtin
}

/// Ends a lease with its result and hands the result to the driver; `Err` when the lease is
/// no longer held (expired or cancelled): the result is refused.
pub(crate) fn deliver(
    queue: &WorkQueue,
    tx: &mpsc::UnboundedSender<Msg>,
    lease_id: &str,
    worker: &str,
    result: Result<serde_json::Value, WfError>,
    ack: Option<tokio::sync::oneshot::Sender<crate::engine::Result<()>>>,
) -> Result<(), String> {
    let lease = queue.lock().complete(lease_id, worker)?;
    let key = (lease.item.instance.clone(), lease.item.effect_id);
    if worker != BUILTIN {
        // A remote worker's run: from its lease to its report (the built-in worker times its
        // own runs).
        queue
            .metrics
            .task_duration
            .get_or_create(&crate::metrics::KindLabels {
                kind: lease.item.effect.kind(),
            })
            .observe((now_ms() - lease.leased_ms).max(0) as f64 / 1e3);
        queue.learn(
            &lease,
            (now_ms() - lease.leased_ms).max(0) as f64 / 1e3,
            result.is_ok(),
        );
    }
    if worker == BUILTIN {
        queue
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    tx.send(Msg::Deliver {
        instance: key.0,
        effect: key.1,
        delivery: Delivery::Result(result),
        ack,
        leased_ms: Some(lease.leased_ms),
    })
    .map_err(|_| "the engine is shutting down".to_string())
}

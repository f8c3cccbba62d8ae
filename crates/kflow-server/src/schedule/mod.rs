//! Schedules: the document's `schedule` (cron, every, after, on events), honoured by the server.
//!
//! - [`plan`] works out what a schedule means (the trigger, kflow's policies from
//!   `document.metadata.kflow.schedule`); [`state`] holds the decisions, as pure functions.
//! - The [`Scheduler`] keeps one `schedules` row per workflow that has a schedule, for the
//!   workflow's newest non-deprecated version, and fires it.
//!
//! Exactly once per tick, across crashes: a fire is first *decided* — in one compare-and-set
//! write of the row, `next_fire_ms` moves on and the fire, with the instance id it will have,
//! joins the row's outbox — then *executed*: the instance is started with that id (a start with
//! an id that exists starts nothing) and the fire leaves the outbox. A crash between the two
//! executes the fire again after the restart, with the same id. A tick's id is derived from
//! the workflow and the tick's time, so two schedulers racing on one row (another process) also
//! name the same instance; the compare-and-set lets only one of them decide.
//!
//! Time is passed in ([`Scheduler::tick`] takes `now_ms`; the background loop reads a
//! [`Clock`]), so tests run on virtual time.

mod fires;
pub mod plan;
pub mod state;
#[cfg(test)]
mod tests;
pub mod views;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Notify;

use kflow_dsl::Workflow;
use kflow_store::{ScheduleRow, Store, StoreError};

use crate::engine::{Engine, EngineError, Observer, Result};
pub use plan::{Missed, Overlap, Plan, Settings, Trigger};
use state::{Fire, State, Ticks};

/// The registration-time check of a workflow's schedule (and of its kflow settings).
pub fn check(wf: &Workflow) -> std::result::Result<(), Vec<String>> {
    plan::check(wf)
}

/// Where the scheduler's loop reads the time: the engine's clock types.
pub use crate::engine::clock::{Clock, ManualClock, SystemClock};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The time zone of schedules that name none (IANA name).
    pub timezone: String,
    /// A tick seen at most this late still fires; later, it was missed (see [`Missed`]).
    pub grace_ms: i64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            timezone: "UTC".into(),
            grace_ms: 60_000,
        }
    }
}

/// A fire the scheduler executed (or tried to).
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub namespace: String,
    pub name: String,
    pub fire_ms: i64,
    /// The instance started (or found already started), or why not.
    pub outcome: std::result::Result<String, String>,
}

pub use views::{ScheduleView, list, set_paused, view_of};

pub(super) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> kflow_store::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Store(StoreError::Db(e.to_string())))?
        .map_err(EngineError::Store)
}

/// Plans by (namespace, name), with the fingerprint each was built for.
type PlanCache = HashMap<(String, String), (String, Arc<Plan>)>;

/// Runs the schedules of every registered workflow. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    /// Plans by (namespace, name), with the fingerprint they were built for.
    plans: Mutex<PlanCache>,
    /// One decision at a time in this process (other processes: the compare-and-set).
    busy: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Events emitted by instances, for `on` schedules.
    emitted: Mutex<VecDeque<Value>>,
    /// Tracked instances someone waits on.
    watching: Mutex<HashSet<String>>,
}

/// What a row update closure says.
enum Change {
    Keep,
    Write,
}

impl Scheduler {
    /// Attaches a scheduler to the engine and brings the rows in line with the registered
    /// definitions. Nothing fires until [`Scheduler::tick`] (or the loop of
    /// [`Scheduler::spawn`]).
    pub async fn new(
        engine: Engine,
        config: SchedulerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Scheduler> {
        plan::parse_tz(&config.timezone).map_err(|e| EngineError::Invalid {
            message: format!("server timezone: {e}"),
            details: vec![],
        })?;
        let inner = Arc::new(Inner {
            store: engine.store(),
            engine: engine.clone(),
            clock,
            config,
            plans: Mutex::new(HashMap::new()),
            busy: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            emitted: Mutex::new(VecDeque::new()),
            watching: Mutex::new(HashSet::new()),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        engine.set_observer(weak);
        let s = Scheduler { inner };
        s.sync_all().await?;
        Ok(s)
    }

    /// Re-reads every definition and creates, updates or removes rows to match.
    pub async fn sync_all(&self) -> Result<()> {
        let _g = self.inner.busy.lock().await;
        let store = self.inner.store.clone();
        let defs = run_blocking(move || store.list_definitions(None)).await?;
        let mut names: Vec<(String, String)> = defs
            .iter()
            .map(|d| (d.namespace.clone(), d.name.clone()))
            .collect();
        let store = self.inner.store.clone();
        for row in run_blocking(move || store.list_schedules()).await? {
            names.push((row.namespace, row.name));
        }
        names.sort();
        names.dedup();
        for (ns, name) in names {
            match self.inner.sync(&ns, &name).await {
                Ok(()) => {}
                Err(e @ EngineError::Store(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(namespace = %ns, workflow = %name, error = %e, "a schedule failed")
                }
            }
        }
        Ok(())
    }

    /// Re-reads one workflow's definitions and updates its row.
    pub async fn sync(&self, ns: &str, name: &str) -> Result<()> {
        let _g = self.inner.busy.lock().await;
        self.inner.sync(ns, name).await
    }

    /// Decides what is due at `now_ms` and executes it (see the module documentation).
    pub async fn tick(&self, now_ms: i64) -> Result<Vec<Fired>> {
        let _g = self.inner.busy.lock().await;
        self.inner.decide(now_ms).await?;
        self.inner.execute(now_ms).await
    }

    /// Only the first half of a tick: fires are decided and recorded, none executed (tests
    /// simulate a crash right after it).
    pub async fn decide(&self, now_ms: i64) -> Result<()> {
        let _g = self.inner.busy.lock().await;
        self.inner.decide(now_ms).await
    }

    /// Offers an event to the `on` schedules; returns how many instances it started.
    pub async fn offer_event(&self, event: &Value, now_ms: i64) -> Result<usize> {
        let _g = self.inner.busy.lock().await;
        self.inner.on_event(event, now_ms).await
    }

    pub async fn list(&self) -> Result<Vec<ScheduleView>> {
        list(&self.inner.engine).await
    }

    /// Runs the scheduler on its clock until the task is aborted: ticks when the next fire is
    /// due, when nudged (pause/resume, an instance it tracks finished, an emitted event), and at
    /// least every 30 s.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run().await })
    }

    async fn run(self) {
        const CLUSTER_SYNC: Duration = Duration::from_secs(5);
        let inner = &self.inner;
        let max_sleep_ms: i64 = if inner.engine.clustered() {
            5_000
        } else {
            30_000
        };
        let mut last_sync = std::time::Instant::now();
        // Instances started before a restart that someone waits for.
        if let Ok(rows) = {
            let store = inner.store.clone();
            run_blocking(move || store.list_schedules()).await
        } {
            for row in rows {
                for id in State::from_value(&row.state).running {
                    inner.watch(&id);
                }
            }
        }
        loop {
            let emitted: Vec<Value> = inner
                .emitted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .collect();
            for event in emitted {
                let now = inner.clock.now_ms();
                let _g = inner.busy.lock().await;
                if let Err(e) = inner.on_event(&event, now).await {
                    tracing::warn!(error = %e, "the scheduler could not offer an emitted event");
                }
            }
            // Several nodes: definitions registered through another node are picked up here
            // (the rows are shared; the plans this node caches are not).
            if inner.engine.clustered() && last_sync.elapsed() >= CLUSTER_SYNC {
                last_sync = std::time::Instant::now();
                if let Err(e) = self.sync_all().await {
                    tracing::warn!(error = %e, "reading the schedules again failed");
                }
            }
            let now = inner.clock.now_ms();
            if let Err(e) = self.tick(now).await {
                tracing::warn!(error = %e, "the scheduler failed");
            }
            let store = inner.store.clone();
            let next = run_blocking(move || store.next_schedule_fire())
                .await
                .ok()
                .flatten();
            let now = inner.clock.now_ms();
            let sleep = next.map_or(max_sleep_ms, |t| (t - now).clamp(20, max_sleep_ms));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep as u64)) => {}
                _ = inner.wake.notified() => {}
            }
        }
    }
}

impl Observer for Inner {
    fn definitions_changed<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _g = self.busy.lock().await;
            if let Err(e) = self.sync(namespace, name).await {
                tracing::warn!(namespace = %namespace, workflow = %name, error = %e, "updating a schedule failed");
            }
            self.wake.notify_one();
        })
    }

    fn event_published<'a>(&'a self, event: &'a Value) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            if !self.has_on_schedules() {
                return Ok(0); // the common case: no lock, no read
            }
            let _g = self.busy.lock().await;
            self.on_event(event, self.clock.now_ms()).await
        })
    }

    fn event_emitted(&self, event: Value) {
        if !self.has_on_schedules() {
            return;
        }
        self.emitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(event);
        self.wake.notify_one();
    }

    fn nudge(&self) {
        self.wake.notify_one();
    }
}

impl Inner {
    /// Whether any schedule of this process is event-driven (every row's plan is cached by
    /// the syncs).
    fn has_on_schedules(&self) -> bool {
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|(_, p)| matches!(p.trigger, Trigger::On(_)))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> kflow_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        run_blocking(move || f(store.as_ref())).await
    }

    /// Reads the row, lets `f` change it, writes it back with a compare-and-set; retries on a
    /// concurrent write. Returns the row as stored (None: no row).
    async fn update(
        &self,
        ns: &str,
        name: &str,
        now: i64,
        mut f: impl FnMut(&mut ScheduleRow, &mut State) -> Change,
    ) -> Result<Option<ScheduleRow>> {
        for _ in 0..20 {
            let (n, m) = (ns.to_string(), name.to_string());
            let Some(row) = self.blocking(move |s| s.get_schedule(&n, &m)).await? else {
                return Ok(None);
            };
            let mut new = row.clone();
            let mut st = State::from_value(&row.state);
            if let Change::Keep = f(&mut new, &mut st) {
                return Ok(Some(row));
            }
            new.state = st.to_value();
            if new == row {
                return Ok(Some(row));
            }
            new.updated_ms = now;
            let put = new.clone();
            if self.blocking(move |s| s.put_schedule(&put)).await? {
                new.revision += 1;
                // Fires started and skipped, counted once their row is written.
                let before = State::from_value(&row.state);
                let m = self.engine.metrics();
                let l = crate::metrics::WorkflowLabels {
                    namespace: ns.to_string(),
                    workflow: name.to_string(),
                };
                m.schedule_fires
                    .get_or_create(&l)
                    .inc_by(st.fired.saturating_sub(before.fired));
                m.schedule_skips
                    .get_or_create(&l)
                    .inc_by(st.skipped.saturating_sub(before.skipped));
                m.schedule_missed
                    .get_or_create(&l)
                    .inc_by(st.missed_ticks.saturating_sub(before.missed_ticks));
                return Ok(Some(new));
            }
        }
        Err(EngineError::Conflict(format!(
            "the schedule of {ns}/{name} keeps changing under the scheduler"
        )))
    }

    /// The plan of a row's definition (cached by fingerprint).
    async fn plan_for(
        &self,
        row: &ScheduleRow,
        st: &State,
    ) -> std::result::Result<Arc<Plan>, String> {
        let key = (row.namespace.clone(), row.name.clone());
        if let Some((fp, plan)) = self
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && *fp == st.fingerprint
        {
            return Ok(plan.clone());
        }
        let wf = self
            .engine
            .compiled(&row.namespace, &row.name, &row.version)
            .map_err(|e| e.to_string())?;
        let plan = match Plan::build(&wf, &self.config.timezone) {
            Ok(Some(p)) => Arc::new(p),
            Ok(None) => {
                return Err(format!(
                    "{}/{}@{} has no schedule",
                    row.namespace, row.name, row.version
                ));
            }
            Err(errs) => return Err(errs.join("; ")),
        };
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (st.fingerprint.clone(), plan.clone()));
        Ok(plan)
    }

    /// Brings one workflow's row in line with its newest non-deprecated version.
    async fn sync(&self, ns: &str, name: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let n = ns.to_string();
        let defs = self.blocking(move |s| s.list_definitions(Some(&n))).await?;
        let target = defs
            .into_iter()
            .filter(|d| d.name == name)
            .find(|d| !d.deprecated);
        let built = match &target {
            None => None,
            Some(d) => match self.engine.compiled(ns, name, &d.version) {
                // A stored definition that no longer loads: shown as the schedule's error.
                Err(e) => Some((d.clone(), Err(e.to_string()))),
                Ok(wf) => match Plan::build(&wf, &self.config.timezone) {
                    Ok(None) => None,
                    Ok(Some(p)) => Some((d.clone(), Ok(Arc::new(p)))),
                    Err(errs) => Some((d.clone(), Err(errs.join("; ")))),
                },
            },
        };
        let key = (ns.to_string(), name.to_string());
        let Some((def, plan)) = built else {
            self.plans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let (n, m) = (ns.to_string(), name.to_string());
            self.blocking(move |s| s.delete_schedule(&n, &m)).await?;
            return Ok(());
        };
        let tz = plan
            .as_ref()
            .map(|p| p.timezone.clone())
            .unwrap_or_default();
        let fingerprint = format!("{}|{tz}", def.hash);
        for _ in 0..20 {
            let (n, m) = (ns.to_string(), name.to_string());
            let old = self.blocking(move |s| s.get_schedule(&n, &m)).await?;
            if let Some(old) = &old {
                let st = State::from_value(&old.state);
                if old.version == def.version && st.fingerprint == fingerprint {
                    if let Ok(p) = &plan {
                        self.plans
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key.clone(), (fingerprint.clone(), p.clone()));
                    }
                    return Ok(());
                }
            }
            let row = fresh_row(
                ns,
                name,
                old.as_ref(),
                &def.version,
                &fingerprint,
                &plan,
                now,
            );
            let put = row.clone();
            if self.blocking(move |s| s.put_schedule(&put)).await? {
                if let Ok(p) = &plan {
                    self.plans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone(), (fingerprint.clone(), p.clone()));
                }
                return Ok(());
            }
        }
        Err(EngineError::Conflict(format!(
            "the schedule of {ns}/{name} keeps changing under the scheduler"
        )))
    }

    /// Wakes the loop when a tracked instance finishes.
    fn watch(&self, id: &str) {
        if !self
            .watching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
        {
            return;
        }
        let engine = self.engine.clone();
        let me = self.engine.observer();
        let id = id.to_string();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            loop {
                match engine.wait_finished(&id, Duration::from_secs(3600)).await {
                    Ok(v) if !v.instance.status.is_finished() => continue,
                    _ => break,
                }
            }
            if let Some(o) = me {
                o.nudge();
            }
        });
    }
}

/// A row for a (new) plan: what can be kept of the old row is kept (pause, the instances it
/// runs, the pending fires, the origin of `every`).
fn fresh_row(
    ns: &str,
    name: &str,
    old: Option<&ScheduleRow>,
    version: &str,
    fingerprint: &str,
    plan: &std::result::Result<Arc<Plan>, String>,
    now: i64,
) -> ScheduleRow {
    let old_state = old.map(|r| State::from_value(&r.state)).unwrap_or_default();
    let mut st = State {
        created_ms: if old.is_some() {
            old_state.created_ms
        } else {
            now
        },
        running: old_state.running.clone(),
        finished_ms: old_state.finished_ms,
        queue: old_state.queue.clone(),
        outbox: old_state.outbox.clone(),
        fired: old_state.fired,
        skipped: old_state.skipped,
        last_error: old_state.last_error.clone(),
        fingerprint: fingerprint.to_string(),
        ..State::default()
    };
    let next_fire_ms = match plan {
        Err(e) => {
            st.error = Some(e.clone());
            None
        }
        Ok(p) => {
            st.describe(p);
            // A timed fire that was due and not decided yet stays due: the missed policy then
            // looks at the new expression's ticks since then.
            let due_before = old
                .and_then(|r| r.next_fire_ms)
                .filter(|t| *t <= now && matches!(old_state.kind.as_str(), "cron" | "every"));
            match &p.trigger {
                Trigger::Cron(_) | Trigger::Every { .. } if due_before.is_some() => due_before,
                Trigger::Cron(c) => match c.next_after(now) {
                    Ok(Some(t)) => Some(t),
                    Ok(None) => {
                        st.error = Some(format!("cron '{}' never fires", c.text));
                        None
                    }
                    Err(e) => {
                        st.error = Some(e);
                        None
                    }
                },
                Trigger::Every { .. } => Ticks::of(&p.trigger, st.created_ms)
                    .and_then(|t| t.next_after(now).ok().flatten()),
                // Kept while it was already an `after` schedule; else the first run is now.
                Trigger::After { .. } if old_state.kind == "after" => {
                    old.and_then(|r| r.next_fire_ms)
                }
                Trigger::After { .. } if st.busy() => None,
                Trigger::After { .. } => Some(now),
                Trigger::On(_) => None,
            }
        }
    };
    ScheduleRow {
        namespace: ns.to_string(),
        name: name.to_string(),
        version: version.to_string(),
        next_fire_ms,
        last_fire_ms: old.and_then(|r| r.last_fire_ms),
        paused: old.is_some_and(|r| r.paused),
        revision: old.map_or(0, |r| r.revision),
        updated_ms: now,
        state: st.to_value(),
    }
}

/// One row's decisions at `now` (pure): forget finished instances, move the queue, fire what is
/// due.
pub(crate) fn advance(
    row: &mut ScheduleRow,
    st: &mut State,
    plan: &Plan,
    status: &HashMap<String, Option<(bool, i64)>>,
    now: i64,
    grace_ms: i64,
) {
    st.reconcile(status);
    if st.error.is_some() {
        return;
    }
    let tracked = state::tracks(plan);
    if !tracked {
        st.running.clear();
    }
    if !row.paused && !st.busy() && !st.queue.is_empty() {
        let next = st.queue.remove(0);
        st.outbox.push(next);
    }
    if row.paused {
        return;
    }
    match &plan.trigger {
        Trigger::Cron(_) | Trigger::Every { .. } => {
            let Some(next_fire) = row.next_fire_ms else {
                return;
            };
            let Some(ticks) = Ticks::of(&plan.trigger, st.created_ms) else {
                return;
            };
            match state::due(&ticks, &plan.settings, next_fire, now, grace_ms) {
                Ok(due) => {
                    st.missed_ticks += due.missed;
                    for t in due.fires {
                        let fire = Fire {
                            id: state::tick_id(&row.namespace, &row.name, t),
                            fire_ms: t,
                            input: json!({}),
                            cancel: vec![],
                        };
                        st.offer(plan.settings.overlap, fire);
                        row.last_fire_ms = Some(t);
                    }
                    row.next_fire_ms = due.next;
                    if due.next.is_none() {
                        st.error = Some(format!("'{}' has no further fire time", st.expression));
                    }
                }
                Err(e) => {
                    st.error = Some(e);
                    row.next_fire_ms = None;
                }
            }
        }
        Trigger::After { ms } => {
            if row.next_fire_ms.is_none() && !st.busy() {
                row.next_fire_ms = Some(st.finished_ms.unwrap_or(now).saturating_add(*ms));
            }
            if let Some(t) = row.next_fire_ms
                && t <= now
                && !st.busy()
            {
                let fire = Fire {
                    id: state::tick_id(&row.namespace, &row.name, t),
                    fire_ms: t,
                    input: json!({}),
                    cancel: vec![],
                };
                st.outbox.push(fire);
                row.last_fire_ms = Some(t);
                row.next_fire_ms = None;
            }
        }
        Trigger::On(_) => {}
    }
}

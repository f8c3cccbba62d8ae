//! The work queue: ready calls and processes waiting for a worker, the workers, their leases.
//!
//! A pure data structure (time is passed in), wrapped by [`super::workers`] for the async side.
//! Rules:
//! - an item goes only to a worker that serves its queue, has every label it asks for, and has
//!   room for its resources (`tasks` slots always, plus `cpu`, `memory`, named slots when the
//!   task declares them): capacity is never oversubscribed;
//! - among items a worker can take, the highest effective priority wins: the task's priority
//!   plus one point per [`AGING_MS`] of waiting, so low priority is never starved; ties go to
//!   the oldest;
//! - among workers waiting for work, an item goes to the least loaded eligible one;
//! - in a queue that dispatches critical-path-first (`dispatch:` in the config), among items of
//!   equal effective priority the one with the longest expected remaining path (its upward rank
//!   from learned run times) goes first; aging still raises waiting items a point per
//!   [`AGING_MS`], a point no rank outweighs, so no item waits for ever;
//! - among items of equal effective priority, the namespace holding the fewest leases goes
//!   first, so namespaces share the workers fairly;
//! - rate limits (per second, per queue `queue:NAME` or per target host `host:NAME`) are token
//!   buckets with a one-second burst: an item waits while any of its buckets is empty;
//! - a lease lives while its worker heartbeats; an expired lease puts its item back.

use std::collections::{BTreeMap, HashMap, HashSet};

mod hints;
#[cfg(test)]
mod tests;

pub use hints::{hints, parse_capacity, task_hints};

use serde::Serialize;

use kflow_core::Effect;

/// Waiting this long raises an item's effective priority by one.
pub const AGING_MS: i64 = 10_000;

/// Resource amounts by name: `tasks`, `cpu` (cores), `memory` (bytes), or any named slot.
pub type Resources = BTreeMap<String, f64>;

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub instance: String,
    pub namespace: String,
    /// Rate-limit buckets this item draws from: `queue:NAME`, `host:NAME`.
    pub rate_keys: Vec<String>,
    pub effect_id: u64,
    pub task: String,
    #[serde(skip)]
    pub effect: Effect,
    pub queue: String,
    pub priority: i64,
    pub needs: Resources,
    pub labels: BTreeMap<String, String>,
    pub enqueued_ms: i64,
    /// When it became ready, on the monotonic clock (µs), for dispatch latency.
    #[serde(skip)]
    pub ready_us: u64,
    /// Known attempt number (1 for a first run committed with the row); `None`: count it.
    #[serde(skip)]
    pub attempt: Option<u32>,
    /// The task's own process limits (`metadata.kflow.limits`).
    #[serde(skip)]
    pub limits: kflow_tasks::TaskLimits,
    /// The W3C `traceparent` its calls send (the instance's trace and span).
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Its workflow's name and version (what its run times are learned for).
    #[serde(skip)]
    pub workflow: Option<(String, String)>,
    /// Its expected remaining path (ms: its upward rank from learned run times); ordered by
    /// in queues that dispatch critical-path-first, 0 when nothing is learned.
    #[serde(skip)]
    pub rank_ms: f64,
}

impl Item {
    fn score(&self, now: i64) -> i64 {
        self.priority + (now - self.enqueued_ms).max(0) / AGING_MS
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Worker {
    pub id: String,
    pub queues: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub used: Resources,
    pub leases: HashSet<String>,
    pub last_seen_ms: i64,
    pub draining: bool,
    /// The server's own in-process worker: never expires.
    pub builtin: bool,
    /// Parked in a long poll right now.
    #[serde(skip)]
    pub waiting: bool,
    /// Who registered it (the token's name): only that token (or a global admin) may poll,
    /// heartbeat, report and drain as this worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The namespaces whose tasks it may take (its token's); `None`: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

impl Worker {
    fn fits(&self, item: &Item) -> bool {
        if self.draining || !self.queues.iter().any(|q| *q == item.queue) {
            return false;
        }
        if let Some(ns) = &self.namespaces
            && !ns.contains(&item.namespace)
        {
            return false;
        }
        if !item
            .labels
            .iter()
            .all(|(k, v)| self.labels.get(k) == Some(v))
        {
            return false;
        }
        item.needs.iter().all(|(k, need)| {
            let cap = self.capacity.get(k).copied().unwrap_or(0.0);
            let used = self.used.get(k).copied().unwrap_or(0.0);
            used + need <= cap + 1e-9
        })
    }

    /// The fullest dimension, as a fraction of capacity.
    fn load(&self) -> f64 {
        self.capacity
            .iter()
            .map(|(k, cap)| {
                if *cap > 0.0 {
                    self.used.get(k).copied().unwrap_or(0.0) / cap
                } else {
                    1.0
                }
            })
            .fold(0.0, f64::max)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Lease {
    pub id: String,
    pub worker: String,
    /// When a worker took it: its queue wait ends, its run starts.
    pub leased_ms: i64,
    pub expires_ms: i64,
    pub attempt: Option<u32>,
    pub item: Item,
    /// Calls to its host in flight when it was taken, itself included (adaptive concurrency).
    #[serde(skip)]
    pub host_in_flight: usize,
}

#[derive(Debug, Default)]
pub struct Queue {
    items: Vec<Item>,
    workers: HashMap<String, Worker>,
    leases: HashMap<String, Lease>,
    by_effect: HashMap<(String, u64), String>,
    next_lease: u64,
    /// Recent dispatch latencies (ready → leased), in microseconds: a ring of the last 10,000.
    latencies: Vec<u64>,
    latency_next: usize,
    /// Rate limits (per second) by bucket key, and the buckets: (tokens, last refill ms).
    limits: HashMap<String, f64>,
    buckets: HashMap<String, (f64, i64)>,
    /// Leases held per namespace, for fairness.
    ns_leases: HashMap<String, usize>,
    /// Queues that dispatch critical-path-first (`*`: every queue).
    critical_path: HashSet<String>,
    /// Adaptive concurrency toward hosts: which hosts (`*`: all), and each host's limiter.
    adaptive: Option<AdaptiveHosts>,
    hosts: HashMap<String, crate::adaptive::limit::Aimd>,
}

/// Which hosts get an adaptive concurrency limit, and its bounds (`adaptive_concurrency:`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveHosts {
    /// Host names, or `*` for every host a call goes to.
    pub hosts: Vec<String>,
    /// Where a host's limit starts (default 4).
    #[serde(default = "default_initial")]
    pub initial: f64,
    #[serde(default = "default_min")]
    pub min: f64,
    #[serde(default = "default_max")]
    pub max: f64,
}

fn default_initial() -> f64 {
    4.0
}
fn default_min() -> f64 {
    1.0
}
fn default_max() -> f64 {
    256.0
}

/// The host of an item (its `host:NAME` rate key).
fn host_of(item: &Item) -> Option<&str> {
    item.rate_keys.iter().find_map(|k| k.strip_prefix("host:"))
}

/// Whether every bucket of `keys` has a token now (refilling them first).
fn rate_ok(
    limits: &HashMap<String, f64>,
    buckets: &mut HashMap<String, (f64, i64)>,
    keys: &[String],
    now: i64,
) -> bool {
    let mut ok = true;
    for k in keys {
        let Some(rate) = limits.get(k).copied() else {
            continue;
        };
        let b = buckets.entry(k.clone()).or_insert((rate.max(1.0), now));
        let refill = (now - b.1).max(0) as f64 / 1000.0 * rate;
        b.0 = (b.0 + refill).min(rate.max(1.0));
        b.1 = now;
        if b.0 < 1.0 {
            ok = false;
        }
    }
    ok
}

/// Microseconds on a monotonic clock (for latencies only; never persisted).
pub fn mono_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// Why an item is still waiting, for `kflow explain`.
pub fn why_waiting(q: &Queue, item: &Item) -> String {
    if let Some(k) = q.limited_by(&item.rate_keys) {
        return format!(
            "rate limited by '{k}' ({}/s)",
            q.limits.get(&k).copied().unwrap_or(0.0)
        );
    }
    let serving: Vec<&Worker> = q
        .workers
        .values()
        .filter(|w| w.queues.iter().any(|x| *x == item.queue))
        .collect();
    if serving.is_empty() {
        return format!("no worker serves queue '{}'", item.queue);
    }
    let labelled: Vec<&&Worker> = serving
        .iter()
        .filter(|w| item.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
        .collect();
    if labelled.is_empty() {
        let want: Vec<String> = item
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!(
            "no worker of queue '{}' has the labels {}",
            item.queue,
            want.join(",")
        );
    }
    let big_enough = labelled.iter().any(|w| {
        item.needs
            .iter()
            .all(|(k, n)| w.capacity.get(k).copied().unwrap_or(0.0) >= *n)
    });
    if !big_enough {
        return format!(
            "no worker of queue '{}' is large enough for {}",
            item.queue,
            fmt_resources(&item.needs)
        );
    }
    format!(
        "waiting for a free slot on a worker of queue '{}' (needs {})",
        item.queue,
        fmt_resources(&item.needs)
    )
}

pub fn fmt_resources(r: &Resources) -> String {
    r.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Queue {
    /// The rate limit of a bucket (`queue:NAME`, `host:NAME`), tasks per second.
    pub fn limit_of(&self, key: &str) -> Option<f64> {
        self.limits.get(key).copied()
    }

    /// Sets the rate limits: bucket key (`queue:NAME`, `host:NAME`) to tasks per second.
    /// Which queues order ready work critical-path-first (by `Item::rank_ms` within equal
    /// effective priority); the others stay first come, first served.
    pub fn set_critical_path(&mut self, queues: HashSet<String>) {
        self.critical_path = queues;
    }

    /// Turns adaptive concurrency toward hosts on (or off).
    pub fn set_adaptive(&mut self, adaptive: Option<AdaptiveHosts>) {
        self.adaptive = adaptive;
        self.hosts.clear();
    }

    /// The limiter of an item's host, when adaptive concurrency applies to it.
    fn limiter(&mut self, item: &Item) -> Option<&mut crate::adaptive::limit::Aimd> {
        let a = self.adaptive.as_ref()?;
        let host = host_of(item)?;
        if !a.hosts.iter().any(|h| h == "*" || h == host) {
            return None;
        }
        let (initial, min, max) = (a.initial, a.min, a.max);
        Some(
            self.hosts
                .entry(host.to_string())
                .or_insert_with(|| crate::adaptive::limit::Aimd::new(initial, min, max)),
        )
    }

    /// A call to an adaptively limited host answered after `ms`, `ok` or not.
    pub fn answered(&mut self, lease: &Lease, ms: f64, ok: bool) {
        let at_start = lease.host_in_flight;
        if let Some(l) = self.limiter(&lease.item) {
            l.answered(ms, ok, at_start);
        }
    }

    /// Every adaptively limited host: (host, limit, calls in flight).
    pub fn host_limits(&self) -> Vec<(String, f64, usize)> {
        let mut v: Vec<(String, f64, usize)> = self
            .hosts
            .iter()
            .map(|(h, l)| (h.clone(), l.limit, l.in_flight))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn set_limits(&mut self, limits: HashMap<String, f64>) {
        self.limits = limits.into_iter().filter(|(_, r)| *r > 0.0).collect();
        self.buckets.clear();
    }

    fn consume(&mut self, keys: &[String]) {
        for k in keys {
            if let Some(b) = self.buckets.get_mut(k) {
                b.0 -= 1.0;
            }
        }
    }

    /// The first of `keys` whose bucket is empty, if any (for `kflow explain`).
    pub fn limited_by(&self, keys: &[String]) -> Option<String> {
        keys.iter()
            .find(|k| self.buckets.get(*k).is_some_and(|b| b.0 < 1.0))
            .cloned()
    }

    pub fn push(&mut self, item: Item) {
        let key = (item.instance.clone(), item.effect_id);
        if self.by_effect.contains_key(&key)
            || self
                .items
                .iter()
                .any(|i| i.instance == key.0 && i.effect_id == key.1)
        {
            return; // already queued or leased
        }
        self.items.push(item);
    }

    /// Removes a queued item or revokes its lease (the effect was cancelled); returns the
    /// worker that held it, if leased.
    pub fn cancel(&mut self, instance: &str, effect_id: u64) -> Option<String> {
        self.items
            .retain(|i| !(i.instance == instance && i.effect_id == effect_id));
        let lease_id = self.by_effect.remove(&(instance.to_string(), effect_id))?;
        let lease = self.leases.remove(&lease_id)?;
        self.release(&lease);
        Some(lease.worker)
    }

    fn release(&mut self, lease: &Lease) {
        if let Some(n) = self.ns_leases.get_mut(&lease.item.namespace) {
            *n = n.saturating_sub(1);
        }
        if let Some(l) = self.limiter(&lease.item) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
        if let Some(w) = self.workers.get_mut(&lease.worker) {
            w.leases.remove(&lease.id);
            for (k, n) in &lease.item.needs {
                if let Some(u) = w.used.get_mut(k) {
                    *u = (*u - n).max(0.0);
                }
            }
        }
    }

    pub fn register(&mut self, w: Worker) {
        match self.workers.get_mut(&w.id) {
            // Re-registration keeps the leases and their use.
            Some(old) => {
                old.queues = w.queues;
                old.labels = w.labels;
                old.capacity = w.capacity;
                old.last_seen_ms = w.last_seen_ms;
                old.draining = w.draining;
            }
            None => {
                self.workers.insert(w.id.clone(), w);
            }
        }
    }

    pub fn worker(&self, id: &str) -> Option<&Worker> {
        self.workers.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// The leases held now (tasks running on a worker).
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    pub fn lease_of(&self, instance: &str, effect_id: u64) -> Option<&Lease> {
        self.by_effect
            .get(&(instance.to_string(), effect_id))
            .and_then(|l| self.leases.get(l))
    }

    pub fn set_waiting(&mut self, worker: &str, waiting: bool) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.waiting = waiting;
        }
    }

    pub fn set_draining(&mut self, worker: &str) -> bool {
        match self.workers.get_mut(worker) {
            Some(w) => {
                w.draining = true;
                true
            }
            None => false,
        }
    }

    /// Renews every lease of `worker`; returns the lease ids it reported that are no longer
    /// its (cancelled or expired): the worker should stop them.
    pub fn heartbeat(
        &mut self,
        worker: &str,
        reported: &[String],
        now: i64,
        ttl_ms: i64,
    ) -> Option<Vec<String>> {
        let w = self.workers.get_mut(worker)?;
        w.last_seen_ms = now;
        let held: Vec<String> = w.leases.iter().cloned().collect();
        for id in &held {
            if let Some(l) = self.leases.get_mut(id) {
                l.expires_ms = now + ttl_ms;
            }
        }
        Some(
            reported
                .iter()
                .filter(|id| !held.contains(id))
                .cloned()
                .collect(),
        )
    }

    /// Takes up to `max` items for `worker`, leasing them until `now + ttl_ms`.
    pub fn take(&mut self, worker: &str, max: usize, now: i64, ttl_ms: i64) -> Vec<Lease> {
        let mut out = Vec::new();
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_ms = now;
        }
        while out.len() < max {
            let Some(i) = self.pick(worker, now, ttl_ms) else {
                break;
            };
            let item = self.items.remove(i);
            self.consume(&item.rate_keys);
            let host_in_flight = match self.limiter(&item) {
                Some(l) => {
                    l.in_flight += 1;
                    l.in_flight
                }
                None => 0,
            };
            *self.ns_leases.entry(item.namespace.clone()).or_insert(0) += 1;
            let waited = mono_us().saturating_sub(item.ready_us);
            if self.latencies.len() < 10_000 {
                self.latencies.push(waited);
            } else {
                self.latencies[self.latency_next] = waited;
                self.latency_next = (self.latency_next + 1) % 10_000;
            }
            self.next_lease += 1;
            let lease = Lease {
                id: format!("{}-{}", worker, self.next_lease),
                worker: worker.to_string(),
                leased_ms: now,
                expires_ms: now + ttl_ms,
                attempt: item.attempt,
                item,
                host_in_flight,
            };
            if let Some(w) = self.workers.get_mut(worker) {
                w.leases.insert(lease.id.clone());
                for (k, n) in &lease.item.needs {
                    *w.used.entry(k.clone()).or_insert(0.0) += n;
                }
            }
            self.by_effect.insert(
                (lease.item.instance.clone(), lease.item.effect_id),
                lease.id.clone(),
            );
            self.leases.insert(lease.id.clone(), lease.clone());
            out.push(lease);
        }
        out
    }

    /// The item `worker` should take now: the best it can take (priority with aging, then the
    /// least served namespace), unless a less loaded worker waiting in a poll can take it too.
    fn pick(&mut self, worker: &str, now: i64, ttl_ms: i64) -> Option<usize> {
        let cp_all = self.critical_path.contains("*");
        let Queue {
            items,
            workers,
            limits,
            buckets,
            ns_leases,
            critical_path,
            ..
        } = self;
        let w = workers.get(worker)?;
        let my_load = w.load();
        // Hosts whose adaptive limit is reached take nothing more now.
        let full_hosts: HashSet<&str> = match &self.adaptive {
            Some(a) => self
                .hosts
                .iter()
                .filter(|(h, l)| {
                    !l.has_room() && a.hosts.iter().any(|x| x == "*" || x == h.as_str())
                })
                .map(|(h, _)| h.as_str())
                .collect(),
            None => HashSet::new(),
        };
        let mut best: Option<(usize, i64, f64, usize)> = None;
        for (i, item) in items.iter().enumerate() {
            if !w.fits(item) || !rate_ok(limits, buckets, &item.rate_keys, now) {
                continue;
            }
            if host_of(item).is_some_and(|h| full_hosts.contains(h)) {
                continue;
            }
            // Only workers parked in a poll right now, and heard from recently, count.
            let other_better = workers.values().any(|o| {
                o.id != w.id
                    && o.waiting
                    && now - o.last_seen_ms < ttl_ms
                    && o.fits(item)
                    && o.load() + 1e-9 < my_load
            });
            if other_better {
                continue;
            }
            let s = item.score(now);
            // Critical-path-first: within an equal effective priority (priority and aging
            // still come first, so nothing starves), the longest expected remaining path.
            let r = if cp_all || critical_path.contains(&item.queue) {
                item.rank_ms
            } else {
                0.0
            };
            let ns_load = ns_leases.get(&item.namespace).copied().unwrap_or(0);
            if best.is_none_or(|(_, bs, br, bl)| {
                s > bs || (s == bs && (r > br || (r == br && ns_load < bl)))
            }) {
                best = Some((i, s, r, ns_load));
            }
        }
        best.map(|(i, _, _, _)| i)
    }

    /// Ends a lease with its result; `Err` says why the result is refused.
    pub fn complete(&mut self, lease_id: &str, worker: &str) -> Result<Lease, String> {
        let Some(lease) = self.leases.get(lease_id) else {
            return Err(format!(
                "lease {lease_id} is not held: it expired, was cancelled, or never existed"
            ));
        };
        if lease.worker != worker {
            return Err(format!(
                "lease {lease_id} belongs to worker {}, not {worker}",
                lease.worker
            ));
        }
        let lease = self
            .leases
            .remove(lease_id)
            .ok_or_else(|| format!("lease {lease_id} is not held"))?;
        self.by_effect
            .remove(&(lease.item.instance.clone(), lease.item.effect_id));
        self.release(&lease);
        Ok(lease)
    }

    /// Expires leases of workers that stopped heartbeating (their items go back to the queue,
    /// to be counted as a new attempt) and forgets dead workers. Returns the expired leases.
    pub fn expire(&mut self, now: i64, ttl_ms: i64) -> Vec<Lease> {
        let expired: Vec<String> = self
            .leases
            .values()
            .filter(|l| l.expires_ms < now && !self.is_builtin(&l.worker))
            .map(|l| l.id.clone())
            .collect();
        let mut out = Vec::new();
        for id in expired {
            if let Some(lease) = self.leases.remove(&id) {
                self.by_effect
                    .remove(&(lease.item.instance.clone(), lease.item.effect_id));
                self.release(&lease);
                let mut item = lease.item.clone();
                item.attempt = None;
                self.items.push(item);
                out.push(lease);
            }
        }
        self.workers
            .retain(|_, w| w.builtin || !w.leases.is_empty() || now - w.last_seen_ms < ttl_ms * 5);
        out
    }

    fn is_builtin(&self, worker: &str) -> bool {
        self.workers.get(worker).is_some_and(|w| w.builtin)
    }

    /// Dispatch latency (ready → leased) over the recent dispatches: (count, p50 µs, p99 µs).
    pub fn latency(&self) -> (usize, u64, u64) {
        let mut v = self.latencies.clone();
        if v.is_empty() {
            return (0, 0, 0);
        }
        v.sort_unstable();
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        (v.len(), at(0.5), at(0.99))
    }

    /// Forgets the recorded latencies (benchmarks measure one phase at a time).
    pub fn reset_latency(&mut self) {
        self.latencies.clear();
        self.latency_next = 0;
    }

    /// Queue depth and oldest waiting item per queue.
    pub fn depths(&self, now: i64) -> BTreeMap<String, (usize, i64)> {
        let mut m: BTreeMap<String, (usize, i64)> = BTreeMap::new();
        for i in &self.items {
            let e = m.entry(i.queue.clone()).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(now - i.enqueued_ms);
        }
        for w in self.workers.values() {
            for q in &w.queues {
                m.entry(q.clone()).or_insert((0, 0));
            }
        }
        m
    }
}

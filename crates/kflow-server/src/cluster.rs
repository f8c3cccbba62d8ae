//! Several nodes on one PostgreSQL database, all active (see `kflow_store_pg::lease`).
//!
//! Every node drives its own instances: the ones started through it, and the ones it adopted.
//! Each term of a node (a start, or a new start after it lost its lease in the same process)
//! joins with a **new node id** and a lease of its own, renewed every quarter of its time to live
//! together with its heartbeat; every commit checks that lease and that the instances it writes
//! are this node's. A node whose lease lapsed (killed, paused, cut off) is dead for good: the
//! first live node to see it adopts all its unfinished instances in one transaction and brings
//! them back from their work rows; a drained node gives its lease up and tells the others, who
//! adopt at once. One node also holds the database's leader lease: it does the duties of one
//! node for all (retention, alert deliveries).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kflow_store_pg::{Fence, PgStore};

use crate::engine::Engine;

/// This node in the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub store: Arc<PgStore>,
    pub host: String,
    /// The address other nodes forward requests to (`http://host:port`).
    pub api: Option<String>,
    pub lease_ms: i64,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a database call panicked: {e}"))
}

/// What the lease keeper of a term is given.
pub struct Term {
    pub fence: Fence,
    /// Set once the engine of the term is open.
    pub engine: Arc<std::sync::OnceLock<Engine>>,
    /// Set when the node drains: it adopts nothing more.
    pub draining: Arc<AtomicBool>,
    pub stop: Arc<tokio::sync::Notify>,
}

impl Node {
    pub fn new(store: Arc<PgStore>, api: Option<String>, lease_ms: i64) -> Node {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_string());
        Node {
            store,
            host,
            api,
            lease_ms: lease_ms.max(1_000),
        }
    }

    /// Joins the cluster for a new term: a new node id and a lease of its own. Retries (with a
    /// second between tries) while the database cannot be reached.
    pub async fn join(&self) -> Fence {
        let mut said = false;
        loop {
            let id = format!("{}-{}", self.host, uuid::Uuid::now_v7().simple());
            let (store, host, api, ttl) = (
                self.store.clone(),
                self.host.clone(),
                self.api.clone(),
                self.lease_ms,
            );
            let i2 = id.clone();
            match blocking(move || store.join(&i2, &host, api.as_deref(), ttl)).await {
                Ok(Ok(fence)) => {
                    tracing::info!(node = %id, "joined the cluster: driving the instances started here and those adopted");
                    self.store.set_fence(Some(fence.clone()));
                    // Nodes gone for a week are forgotten (`kflow nodes` shows the last hour).
                    let store = self.store.clone();
                    if let Ok(Err(e)) =
                        blocking(move || store.forget_nodes(7 * 24 * 3_600_000)).await
                    {
                        tracing::warn!(error = %e, "forgetting old nodes failed");
                    }
                    return fence;
                }
                Ok(Err(e)) if !said => {
                    said = true;
                    tracing::warn!(error = %e, "joining the cluster failed; trying again every second")
                }
                Err(e) if !said => {
                    said = true;
                    tracing::warn!(error = %e, "joining the cluster failed; trying again every second")
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Keeps this node's lease until it is lost (returns why) or `stop` is notified (None);
    /// meanwhile takes or keeps the leader lease, and adopts the instances of nodes whose lease
    /// lapsed (at once when a node says it left). `valid_until` is told, after every renewal,
    /// until when (monotonic ms) the lease surely holds: the time the renewal was sent plus the
    /// time to live. `refresh` runs after every renewal (tokens and secrets another node may
    /// have changed).
    pub async fn keep(
        &self,
        term: Term,
        valid_until: impl Fn(i64),
        refresh: impl Fn(),
    ) -> Option<String> {
        let every = Duration::from_millis((self.lease_ms / 4).max(100) as u64);
        let fence = term.fence.clone();
        let mut renewed = Instant::now();
        let mut leader: Option<Fence> = None;
        // Adopted in the database but not yet brought into the engine (it failed): retried.
        let mut pending: Vec<kflow_store_pg::Adopted> = Vec::new();
        let mut listener: Option<kflow_store_pg::Listener> = None;
        loop {
            if listener.is_none() {
                let store = self.store.clone();
                listener = blocking(move || store.listen_lease())
                    .await
                    .ok()
                    .and_then(|r| r.ok());
            }
            let told = async {
                match listener.as_mut() {
                    Some(l) => l.notifications.recv().await,
                    None => std::future::pending().await,
                }
            };
            let mut heard = false;
            tokio::select! {
                _ = term.stop.notified() => {
                    self.give_up_leader(leader.take(), term.engine.get()).await;
                    return None;
                }
                _ = tokio::time::sleep(every) => {}
                n = told => {
                    heard = true;
                    if n.is_none() {
                        listener = None;
                    }
                }
            }
            if !heard || renewed.elapsed() >= every {
                let draining = term.draining.load(Ordering::SeqCst);
                let state = if draining { "draining" } else { "active" };
                let running = term
                    .engine
                    .get()
                    .map_or(0, |e| e.running_tasks().len() as i64);
                let (store, f, ttl) = (self.store.clone(), fence.clone(), self.lease_ms);
                let sent = crate::engine::mono_ms();
                let failed = match blocking(move || store.renew_node(&f, ttl, state, running)).await
                {
                    Ok(Ok(true)) => {
                        renewed = Instant::now();
                        valid_until(sent + self.lease_ms);
                        None
                    }
                    Ok(Ok(false)) => {
                        self.give_up_leader(leader.take(), term.engine.get()).await;
                        return Some(format!(
                            "this node ({}) lost its database lease of epoch {}: it lapsed \
                                 and its instances were adopted by another node",
                            fence.node, fence.epoch
                        ));
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e),
                };
                if let Some(e) = failed {
                    if let Some(engine) = term.engine.get() {
                        engine.count_renewal_failure();
                    }
                    tracing::warn!(error = %e, "renewing this node's database lease failed; retrying");
                    if renewed.elapsed() >= Duration::from_millis(self.lease_ms as u64) {
                        self.give_up_leader(leader.take(), term.engine.get()).await;
                        return Some(format!(
                            "this node ({}) could not renew its database lease for {} ms: its \
                             instances may have been adopted ({e})",
                            fence.node, self.lease_ms
                        ));
                    }
                    continue;
                }
                leader = self.lead(leader, &fence, term.engine.get()).await;
                if let Some(engine) = term.engine.get() {
                    let store = self.store.clone();
                    if let Ok(Ok(n)) = blocking(move || store.live_nodes()).await {
                        engine.set_live_nodes(n);
                    }
                }
                refresh();
            }
            if let Some(engine) = term.engine.get()
                && !term.draining.load(Ordering::SeqCst)
            {
                self.adopt(&fence, engine, &mut pending).await;
            }
        }
    }

    /// Takes the leader lease when it is free, or keeps it; the fence held after.
    async fn lead(
        &self,
        held: Option<Fence>,
        me: &Fence,
        engine: Option<&Engine>,
    ) -> Option<Fence> {
        let store = self.store.clone();
        let ttl = self.lease_ms;
        let now = match held {
            Some(f) => {
                let f2 = f.clone();
                match blocking(move || store.renew_lease(&f2, ttl)).await {
                    Ok(Ok(true)) => Some(f),
                    Ok(Ok(false)) => {
                        tracing::warn!(node = %me.node, "this node is no longer the leader");
                        None
                    }
                    // Not renewed this time: still held until it lapses; tried again.
                    _ => Some(f),
                }
            }
            None => {
                let id = me.node.clone();
                match blocking(move || store.try_acquire_lease(&id, ttl)).await {
                    Ok(Ok(Some(f))) => {
                        tracing::info!(node = %me.node, epoch = f.epoch, "this node is the leader (retention, alert deliveries)");
                        Some(f)
                    }
                    _ => None,
                }
            }
        };
        if let Some(e) = engine {
            e.set_leader(now.is_some());
        }
        now
    }

    async fn give_up_leader(&self, held: Option<Fence>, engine: Option<&Engine>) {
        if let Some(e) = engine {
            e.set_leader(false);
        }
        if let Some(f) = held {
            let store = self.store.clone();
            let _ = blocking(move || store.release_lease(&f)).await;
        }
    }

    /// Adopts what nodes whose lease lapsed left, one node at a time, and brings it into the
    /// engine.
    async fn adopt(
        &self,
        fence: &Fence,
        engine: &Engine,
        pending: &mut Vec<kflow_store_pg::Adopted>,
    ) {
        loop {
            let (store, f, ttl) = (self.store.clone(), fence.clone(), self.lease_ms);
            match blocking(move || store.adopt(&f, ttl)).await {
                Ok(Ok(Some(a))) => {
                    tracing::info!(
                        node = %fence.node,
                        from = %a.from.as_deref().unwrap_or("(no owner)"),
                        instances = a.ids.len(),
                        "adopted (a share of) the instances of a node whose lease lapsed"
                    );
                    pending.push(a);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "adopting failed; trying again");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "adopting failed; trying again");
                    break;
                }
            }
        }
        while let Some(a) = pending.first() {
            match engine.adopt(a.ids.clone(), a.event_cursor).await {
                Ok(_) => {
                    pending.remove(0);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bringing adopted instances back failed; trying again");
                    return;
                }
            }
        }
    }

    /// Gives this node's lease up (after a drain): the other nodes adopt its instances at once.
    pub async fn leave(&self, fence: &Fence) {
        let (store, f) = (self.store.clone(), fence.clone());
        match blocking(move || store.release_node(&f)).await {
            Ok(Ok(_)) => {
                tracing::info!(node = %fence.node, "gave this node's lease up: its instances are adopted by the others")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "giving this node's lease up failed"),
            Err(e) => tracing::warn!(error = %e, "giving this node's lease up failed"),
        }
    }
}

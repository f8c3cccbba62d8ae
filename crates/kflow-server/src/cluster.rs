//! Several nodes on one PostgreSQL database: the database lease (see `kflow_store_pg::lease`).
//!
//! A node starts as a **standby**: it registers in the `nodes` table and tries to take the
//! lease every quarter second. The node that holds it is **active**: it opens the engine (which
//! recovers every instance from the database, as after a restart), serves the API, and renews
//! the lease every quarter of its time to live. Every commit of the active node checks its fence
//! in the same transaction, so a node that lost the lease (paused past it, cut off) writes
//! nothing more; when its renewal finds the lease gone it stops, and a supervisor restarts it as
//! a standby. A drained node gives the lease up once its engine has stopped, so a standby takes
//! over at once instead of after the time to live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kflow_store_pg::{Fence, PgStore};

/// How long a standby waits before trying again when it cannot read the lease.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// This node in the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub store: Arc<PgStore>,
    pub id: String,
    pub host: String,
    pub api: Option<String>,
    pub lease_ms: i64,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a database call panicked: {e}"))
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
            id: format!("{host}-{}", uuid::Uuid::now_v7().simple()),
            host,
            api,
            lease_ms: lease_ms.max(1_000),
        }
    }

    async fn beat(&self, state: &'static str, running: i64) {
        let (store, id, host, api) = (
            self.store.clone(),
            self.id.clone(),
            self.host.clone(),
            self.api.clone(),
        );
        match blocking(move || store.heartbeat(&id, &host, api.as_deref(), state, running)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "recording this node's heartbeat failed"),
            Err(e) => tracing::warn!(error = %e, "recording this node's heartbeat failed"),
        }
    }

    /// Waits as a standby until this node holds the lease; its fence.
    ///
    /// No busy polling: a standby listens for the holder giving the lease up (a drain) and
    /// otherwise sleeps until the lease would expire by the database's clock, at most a
    /// second (the safety net), then tries to take it.
    pub async fn acquire(&self) -> Fence {
        let mut said = None::<String>;
        let mut last_beat = Instant::now() - Duration::from_secs(10);
        let mut listener: Option<kflow_store_pg::Listener> = None;
        loop {
            if listener.is_none() {
                let store = self.store.clone();
                listener = blocking(move || store.listen_lease())
                    .await
                    .ok()
                    .and_then(|r| r.ok());
            }
            let (store, id, ttl) = (self.store.clone(), self.id.clone(), self.lease_ms);
            let mut wait = STANDBY_POLL;
            match blocking(move || store.try_acquire_lease(&id, ttl)).await {
                Ok(Ok(Some(fence))) => {
                    tracing::info!(node = %self.id, epoch = fence.epoch, "this node holds the database lease: active");
                    self.store.set_fence(Some(fence.clone()));
                    self.beat("active", 0).await;
                    // Nodes gone for a week are forgotten (`kflow nodes` shows the last hour).
                    let store = self.store.clone();
                    if let Ok(Err(e)) =
                        blocking(move || store.forget_nodes(7 * 24 * 3_600_000)).await
                    {
                        tracing::warn!(error = %e, "forgetting old nodes failed");
                    }
                    return fence;
                }
                Ok(Ok(None)) => {
                    let store = self.store.clone();
                    if let Ok(Ok(Some(l))) = blocking(move || store.lease()).await {
                        wait =
                            Duration::from_millis((l.expires_in_ms + 10).clamp(10, 1_000) as u64);
                        if said.as_deref() != Some(l.node.as_str()) {
                            tracing::info!(
                                node = %self.id,
                                holder = %l.node,
                                epoch = l.epoch,
                                "standby: another node holds the database lease; taking over if it lapses"
                            );
                            said = Some(l.node);
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "trying to take the database lease failed")
                }
                Err(e) => tracing::warn!(error = %e, "trying to take the database lease failed"),
            }
            if last_beat.elapsed() >= Duration::from_secs(1) {
                last_beat = Instant::now();
                self.beat("standby", 0).await;
            }
            let told = async {
                match listener.as_mut() {
                    Some(l) => l.notifications.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                heard = told => {
                    if heard.is_none() {
                        // The listening connection closed: listen again next time round.
                        listener = None;
                    }
                }
            }
        }
    }

    /// Renews the lease until it is lost (returns why) or `stop` is notified (returns None).
    /// `running` says how many instances this node drives (shown by `kflow nodes`).
    /// `valid_until` is told, after every renewal, until when (monotonic ms) the lease surely
    /// holds: the time the renewal was sent plus the time to live.
    pub async fn keep(
        &self,
        fence: Fence,
        running: impl Fn() -> i64,
        valid_until: impl Fn(i64),
        stop: Arc<tokio::sync::Notify>,
    ) -> Option<String> {
        let every = Duration::from_millis((self.lease_ms / 4).max(100) as u64);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = stop.notified() => return None,
                _ = tokio::time::sleep(every) => {}
            }
            let (store, f, ttl) = (self.store.clone(), fence.clone(), self.lease_ms);
            let sent = crate::engine::mono_ms();
            let failed = match blocking(move || store.renew_lease(&f, ttl)).await {
                Ok(Ok(true)) => {
                    renewed = Instant::now();
                    valid_until(sent + self.lease_ms);
                    None
                }
                Ok(Ok(false)) => {
                    return Some(format!(
                        "this node ({}) lost the database lease of epoch {}: another node took over",
                        self.id, fence.epoch
                    ));
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                tracing::warn!(error = %e, "renewing the database lease failed; retrying");
                if renewed.elapsed() >= Duration::from_millis(self.lease_ms as u64) {
                    return Some(format!(
                        "this node ({}) could not renew the database lease for {} ms: it may \
                         have been taken over ({e})",
                        self.id, self.lease_ms
                    ));
                }
            }
            self.beat("active", running()).await;
        }
    }

    /// Records a standby that stops.
    pub async fn stopped(&self) {
        self.beat("stopped", 0).await;
    }

    /// Gives the lease up (after a drain) and records the node as stopped.
    pub async fn leave(&self, fence: &Fence) {
        let (store, f) = (self.store.clone(), fence.clone());
        match blocking(move || store.release_lease(&f)).await {
            Ok(Ok(_)) => tracing::info!(node = %self.id, "gave the database lease up"),
            Ok(Err(e)) => tracing::warn!(error = %e, "giving the database lease up failed"),
            Err(e) => tracing::warn!(error = %e, "giving the database lease up failed"),
        }
        self.beat("stopped", 0).await;
    }
}

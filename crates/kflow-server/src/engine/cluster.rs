//! The engine's side of several nodes on one PostgreSQL database (the node's lease, adoption
//! and the lease keeper are `crate::cluster`): taking over another node's instances, offering
//! posted events from this node's cursor, and the leader's duties.
//!
//! Posted events: every node offers every event to its own instances, in the order of their ids
//! (`kflow_store_pg::lease::EVENTS_LOCK` makes ids commit in order), from its own cursor, which
//! moves on in the commit of the deliveries. One task per node (the pump) reads what is new when
//! told (`LISTEN`) or once a second, and offers it through the driver one event at a time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::driver::Msg;
use super::{Engine, EngineError, Result};

/// How many offered events the pump remembers the count of (for the node that took the POST).
const COUNTS: usize = 4096;

/// The pump's state, shared with `publish_event`.
pub(crate) struct Pump {
    /// The last event id offered and committed by this node.
    mark: watch::Sender<i64>,
    /// (event id, instances that took it), the newest last.
    counts: Mutex<VecDeque<(i64, usize)>>,
    wake: Notify,
}

impl Pump {
    pub(crate) fn new() -> Pump {
        Pump {
            mark: watch::channel(0).0,
            counts: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        }
    }
}

/// Whether this node does the duties one node does for all (retention, alert deliveries):
/// the holder of the database's leader lease. True on a single node.
pub(crate) struct Leader(AtomicBool);

impl Leader {
    pub(crate) fn new(on: bool) -> Leader {
        Leader(AtomicBool::new(on))
    }
}

impl Engine {
    /// Whether this node is on a database shared by several nodes.
    pub fn clustered(&self) -> bool {
        self.shared.pump.is_some()
    }

    /// Whether this node does the duties of one node for all (see [`Leader`]).
    pub fn is_leader(&self) -> bool {
        self.shared.leader.0.load(Ordering::SeqCst)
    }

    pub fn set_leader(&self, on: bool) {
        self.shared.leader.0.store(on, Ordering::SeqCst);
        self.shared.metrics.cluster_leader.set(i64::from(on));
    }

    /// Counts a request forwarded to another node, or a failed renewal of this node's lease.
    pub fn count_forwarded(&self) {
        self.shared.metrics.cluster_forwarded.inc();
    }

    pub fn count_renewal_failure(&self) {
        self.shared.metrics.cluster_renewal_failures.inc();
    }

    /// This node's id in the cluster (None on one node).
    pub fn node_id(&self) -> Option<String> {
        self.shared.config.database.as_ref().and_then(|d| d.node())
    }

    /// `n` nodes share the work now: each takes its share of the configured rate limits (the
    /// rate divided by `n`), so that the cluster as a whole keeps to them.
    pub fn set_live_nodes(&self, n: i64) {
        let n = n.max(1);
        self.shared.metrics.cluster_nodes.set(n);
        let prev = self.shared.live_nodes.swap(n, Ordering::SeqCst);
        if prev == n || self.shared.config.rate_limits.is_empty() {
            return;
        }
        let share = self
            .shared
            .config
            .rate_limits
            .iter()
            .map(|(k, r)| (k.clone(), r / n as f64))
            .collect();
        self.shared.queue.lock().set_limits(share);
        tracing::info!(nodes = n, "rate limits shared among the live nodes");
    }

    /// Reads the namespaces' secrets again (another node may have changed them).
    pub fn reload_secrets(&self) -> std::result::Result<(), String> {
        self.shared.vault.reload()
    }

    /// Where a request about instance `id` (or an unambiguous prefix of one) must be served.
    pub async fn route(&self, id: &str) -> Result<Route> {
        let Some(db) = self
            .shared
            .config
            .database
            .clone()
            .filter(|_| self.clustered())
        else {
            return Ok(Route::Here);
        };
        let id = id.to_string();
        let owner = tokio::task::spawn_blocking(
            move || -> kflow_store::Result<Option<kflow_store_pg::Owner>> {
                if let Some(o) = db.owner_of(&id)? {
                    return Ok(Some(o));
                }
                use kflow_store::Store;
                match db.instance_ids_matching(&id, 2)?.as_slice() {
                    [one] => db.owner_of(one),
                    _ => Ok(None),
                }
            },
        )
        .await
        .map_err(|_| EngineError::Unavailable)??;
        let me = self.shared.config.database.as_ref().and_then(|d| d.node());
        Ok(match owner {
            // Unknown here: the handler says so (or it is being created).
            None => Route::Here,
            Some(o) if o.node.is_none() || o.node == me => Route::Here,
            Some(o) => match (o.live, o.api) {
                (true, Some(api)) => Route::Node(api),
                _ => Route::Moving(o.node.unwrap_or_default()),
            },
        })
    }

    /// Takes over instances of a node whose lease lapsed (see `Msg::Adopt`); how many.
    pub async fn adopt(&self, ids: Vec<String>, since: Option<i64>) -> Result<usize> {
        let n = self.ask(|reply| Msg::Adopt { ids, since, reply }).await?;
        self.shared.metrics.cluster_adopted.inc_by(n as u64);
        Ok(n)
    }

    /// Offers the events posted since this node's cursor to its instances, one at a time, in
    /// order; false when there were none. Stops at the first that fails (tried again later).
    pub async fn pump_events(&self) -> Result<bool> {
        let Some(pump) = self.shared.pump.as_ref() else {
            return Ok(false);
        };
        let events = self.blocking(|s| s.pending_events(500)).await?;
        if events.is_empty() {
            return Ok(false);
        }
        for (id, event) in events {
            let n = self
                .ask(|reply| Msg::Event {
                    event,
                    event_id: Some(id),
                    reply,
                })
                .await?;
            {
                let mut counts = pump.counts.lock().unwrap_or_else(|p| p.into_inner());
                counts.push_back((id, n));
                while counts.len() > COUNTS {
                    counts.pop_front();
                }
            }
            pump.mark.send_replace(id);
            self.shared.metrics.cluster_events_offered.inc();
        }
        Ok(true)
    }

    /// Runs the pump until the engine stops: wakes when another node posts an event
    /// (`LISTEN`), when one is posted here, and once a second (the safety net).
    pub async fn run_event_pump(&self) {
        let (Some(pump), Some(db)) = (
            self.shared.pump.clone(),
            self.shared.config.database.clone(),
        ) else {
            return;
        };
        let mut listener: Option<kflow_store_pg::Listener> = None;
        loop {
            if listener.is_none() {
                let db = db.clone();
                listener = tokio::task::spawn_blocking(move || db.listen_events())
                    .await
                    .ok()
                    .and_then(|r| r.ok());
            }
            match self.pump_events().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(EngineError::Unavailable) => return,
                Err(e) => tracing::warn!(error = %e, "offering posted events failed; trying again"),
            }
            let told = async {
                match listener.as_mut() {
                    Some(l) => l.notifications.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                n = told => {
                    if n.is_none() {
                        listener = None;
                    }
                }
                _ = pump.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// In a cluster, a posted event (stored as `event_id`) reaches this node's instances through
    /// the pump, like every other node's: waits for it (at most 10 s) and answers how many
    /// instances of this node took it.
    pub(crate) async fn offered_here(&self, event_id: i64) -> Option<usize> {
        let pump = self.shared.pump.as_ref()?;
        pump.wake.notify_one();
        let mut mark = pump.mark.subscribe();
        let reached =
            tokio::time::timeout(Duration::from_secs(10), mark.wait_for(|m| *m >= event_id)).await;
        if !matches!(reached, Ok(Ok(_))) {
            tracing::warn!(
                event = event_id,
                "a posted event was not offered within 10 s; it stays recorded and will be"
            );
            return Some(0);
        }
        let counts = pump.counts.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            counts
                .iter()
                .find(|(id, _)| *id == event_id)
                .map_or(0, |(_, n)| *n),
        )
    }

    /// The events of this node's cursor are offered by the pump (never directly).
    pub(crate) fn offers_by_pump(&self) -> bool {
        self.shared.pump.is_some()
    }
}

/// Where a request about an instance is served (see [`Engine::route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node drives it (or nobody does: it is finished, or unknown).
    Here,
    /// Another live node drives it: its API.
    Node(String),
    /// Its node's lease lapsed and its instances are being adopted: try again in a moment.
    Moving(String),
}

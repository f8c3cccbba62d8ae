//! Live updates, routed: each watched instance has its own channel, so a committed event
//! reaches only the watchers of its instance (2,000 idle watchers of other instances cost the
//! driver one map lookup per event, not 2,000 wake-ups). A channel lives while it has
//! watchers and is freed with the last one. Watchers are capped per server and per client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::LiveEvent;

/// Events buffered per watched instance; a watcher that falls further behind is told it
/// lagged and repairs its feed from the store.
const PER_INSTANCE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Open watchers at most, over the whole server.
    pub total: usize,
    /// Open watchers at most per client (by address).
    pub per_client: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            total: 10_000,
            per_client: 100,
        }
    }
}

/// Why a watcher was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchRefused {
    #[error("too many live watchers on this server (at most {0}); try again later")]
    Server(usize),
    #[error("too many live watchers from this client (at most {0}); close some first")]
    Client(usize),
}

#[derive(Default)]
struct State {
    channels: HashMap<String, broadcast::Sender<LiveEvent>>,
    total: usize,
    by_client: HashMap<String, usize>,
}

pub(crate) struct LiveHub {
    state: Mutex<State>,
    limits: WatchLimits,
}

impl LiveHub {
    pub fn new(limits: WatchLimits) -> LiveHub {
        LiveHub {
            state: Mutex::new(State::default()),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a committed event to the watchers of its instance, if any.
    pub fn publish(&self, ev: LiveEvent) {
        let s = self.lock();
        if s.total == 0 {
            return;
        }
        if let Some(tx) = s.channels.get(&ev.instance_id) {
            let _ = tx.send(ev);
        }
    }

    /// Watchers open now (all instances).
    pub fn watchers(&self) -> usize {
        self.lock().total
    }

    /// Opens a watcher of `instance` for `client`: its feed, and the guard that holds its
    /// place (drop the feed first, then the guard, so that the channel can be freed).
    pub fn subscribe(
        self: &Arc<Self>,
        instance: &str,
        client: &str,
    ) -> Result<(broadcast::Receiver<LiveEvent>, WatchGuard), WatchRefused> {
        let mut s = self.lock();
        if s.total >= self.limits.total {
            return Err(WatchRefused::Server(self.limits.total));
        }
        let mine = s.by_client.get(client).copied().unwrap_or(0);
        if mine >= self.limits.per_client {
            return Err(WatchRefused::Client(self.limits.per_client));
        }
        let rx = s
            .channels
            .entry(instance.to_string())
            .or_insert_with(|| broadcast::channel(PER_INSTANCE).0)
            .subscribe();
        s.total += 1;
        *s.by_client.entry(client.to_string()).or_default() += 1;
        Ok((
            rx,
            WatchGuard {
                hub: self.clone(),
                instance: instance.to_string(),
                client: client.to_string(),
            },
        ))
    }
}

/// An open watcher's place; dropping it frees the place, and the instance's channel once no
/// feed of it is left.
pub struct WatchGuard {
    hub: Arc<LiveHub>,
    instance: String,
    client: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut s = self.hub.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.by_client.remove(&self.client);
            }
        }
        if s.channels
            .get(&self.instance)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            s.channels.remove(&self.instance);
        }
        if s.channels.is_empty() {
            s.channels.shrink_to_fit();
            s.by_client.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kflow_store::HistoryEvent;

    fn ev(instance: &str, seq: i64) -> LiveEvent {
        LiveEvent {
            instance_id: instance.into(),
            event: HistoryEvent {
                seq,
                time_ms: 0,
                kind: "resumed".into(),
                data: serde_json::Value::Null,
            },
        }
    }

    #[tokio::test]
    async fn events_reach_only_their_instance_and_channels_are_freed() {
        let hub = Arc::new(LiveHub::new(WatchLimits::default()));
        let (mut a, ga) = hub.subscribe("a", "c1").expect("a");
        let (mut b, gb) = hub.subscribe("b", "c1").expect("b");
        hub.publish(ev("b", 1));
        hub.publish(ev("a", 2));
        assert_eq!(a.recv().await.expect("a").event.seq, 2);
        assert_eq!(b.recv().await.expect("b").event.seq, 1);
        assert!(a.try_recv().is_err(), "nothing of b reached a");
        assert_eq!(hub.watchers(), 2);
        drop((a, ga));
        drop((b, gb));
        let s = hub.lock();
        assert_eq!((s.total, s.channels.len(), s.by_client.len()), (0, 0, 0));
    }

    #[test]
    fn watchers_are_capped_per_server_and_per_client() {
        let hub = Arc::new(LiveHub::new(WatchLimits {
            total: 3,
            per_client: 2,
        }));
        let _a = hub.subscribe("x", "c1").expect("1");
        let b = hub.subscribe("x", "c1").expect("2");
        assert_eq!(
            hub.subscribe("y", "c1").err().map(|e| e.to_string()),
            Some(WatchRefused::Client(2).to_string())
        );
        let _c = hub.subscribe("y", "c2").expect("3");
        assert_eq!(
            hub.subscribe("z", "c3").err().map(|e| e.to_string()),
            Some(WatchRefused::Server(3).to_string())
        );
        drop(b);
        hub.subscribe("z", "c3").expect("room again");
    }
}

//! The audit writer: entries go to one task that appends them to the store's chain in batches
//! (group commit). A change is acknowledged to its client only once its entry is committed
//! ([`AuditLog::record`] waits); denials are queued without waiting ([`AuditLog::denied`]),
//! into a bounded queue: a flood of bad requests cannot grow memory, and what it drops is
//! counted in an `audit.dropped` entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use kflow_store::{AuditEntry, Store};

/// Denials waiting to be written, at most.
const QUEUE: usize = 10_000;
/// Entries per transaction, at most.
const BATCH: usize = 1_000;

type Job = (AuditEntry, Option<oneshot::Sender<bool>>);

pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    dropped: Arc<AtomicU64>,
}

/// An entry stamped now.
pub fn entry(
    actor: &str,
    action: &str,
    resource: &str,
    namespace: Option<String>,
    source: &str,
    result: String,
) -> AuditEntry {
    AuditEntry {
        at_ms: crate::engine::now_ms(),
        actor: actor.to_string(),
        action: action.to_string(),
        resource: resource.to_string(),
        namespace,
        source: source.to_string(),
        result,
    }
}

impl AuditLog {
    /// Starts the writer (on the current tokio runtime).
    pub fn start(store: Arc<dyn Store>) -> Arc<AuditLog> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped2 = dropped.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let lost = dropped2.swap(0, Ordering::Relaxed);
                let mut entries: Vec<AuditEntry> = Vec::with_capacity(jobs.len() + 1);
                if lost > 0 {
                    entries.push(entry(
                        "server",
                        "audit.dropped",
                        "audit",
                        None,
                        "server",
                        format!(
                            "{lost} denied requests were not recorded: the audit queue was full"
                        ),
                    ));
                }
                let mut acks = Vec::new();
                for (e, ack) in jobs {
                    entries.push(e);
                    acks.extend(ack);
                }
                let s = store.clone();
                let ok = match tokio::task::spawn_blocking(move || s.append_audit(&entries)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "writing the audit trail failed");
                        false
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "writing the audit trail failed");
                        false
                    }
                };
                for a in acks {
                    let _ = a.send(ok);
                }
            }
        });
        Arc::new(AuditLog { tx, dropped })
    }

    /// Records an entry and waits until it is committed (false when it could not be).
    pub async fn record(&self, e: AuditEntry) -> bool {
        let (ack, done) = oneshot::channel();
        if self.tx.send((e, Some(ack))).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    /// Queues an entry without waiting; counted as dropped when the queue is full.
    pub fn denied(&self, e: AuditEntry) {
        if self.tx.try_send((e, None)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

//! Performing effects outside the driver: calls and processes on tokio tasks, bounded by a
//! semaphore, each answering the driver with a [`Msg::Deliver`].

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use kflow_core::{Delivery, Effect, WfError};
use kflow_tasks::{EffectCtx, Executor};

use super::driver::Msg;
use super::{Shared, now_ms};

pub struct Dispatcher {
    pub executor: Executor,
    pub permits: Arc<Semaphore>,
    pub tx: mpsc::UnboundedSender<Msg>,
}

impl Dispatcher {
    /// Runs an http, openapi or process effect; the attempt number comes from the store so that
    /// a re-run after a crash sees `KFLOW_ATTEMPT` > 1 (with the same idempotency key).
    /// `attempt` is known (1) for a first run, whose row was committed with attempts = 1; a
    /// re-run after a restart (`None`) counts its attempt in the store first.
    pub fn spawn(&self, shared: Arc<Shared>, instance: String, effect_id: u64, task: String, effect: Effect, attempt: Option<u32>) -> JoinHandle<()> {
        let exec = self.executor.clone();
        let permits = self.permits.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let attempt = match attempt {
                Some(a) => a,
                None => {
                    let (i2, s2) = (instance.clone(), shared.clone());
                    let counted = tokio::task::spawn_blocking(move || s2.store.mark_attempt(&i2, effect_id))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten();
                    let Some(a) = counted else { return }; // the row is gone: answered or cancelled
                    a
                }
            };
            let ctx = EffectCtx { instance_id: instance.clone(), effect_id, task, attempt };
            let result = exec.perform(&ctx, &effect).await;
            let _ = tx.send(Msg::Deliver { instance, effect: effect_id, delivery: Delivery::Result(result) });
        })
    }
}

/// Fills the CloudEvent attributes an `emit` left out.
pub fn complete_event(event: Value, instance_id: &str) -> Value {
    kflow_tasks::emit::complete_event(event, instance_id, now_ms())
}

/// The error a parent sees when its sub-workflow cannot start.
pub fn child_error(detail: String) -> Delivery {
    Delivery::Result(Err(WfError::configuration(detail)))
}

//! Small effect helpers for the driver: emitted events, sub-workflow errors.

use serde_json::Value;

use kflow_core::{Delivery, WfError};

/// Fills the CloudEvent attributes an `emit` left out (`time` from the engine's clock).
pub fn complete_event(event: Value, instance_id: &str, now_ms: i64) -> Value {
    kflow_tasks::emit::complete_event(event, instance_id, now_ms)
}

/// The error a parent sees when its sub-workflow cannot start.
pub fn child_error(detail: String) -> Delivery {
    Delivery::Result(Err(WfError::configuration(detail)))
}

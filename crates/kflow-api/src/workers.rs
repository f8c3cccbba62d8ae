//! The remote-worker protocol (`/api/v1/workers`, `/api/v1/leases`) and the views of workers
//! and queues.
//!
//! A worker registers, long-polls for tasks, heartbeats the leases it runs, and reports each
//! result. A lease lives while the worker heartbeats (every `heartbeat_ms`, well within
//! `lease_ttl_ms`); the late result of an expired lease is refused with 409.

use std::collections::BTreeMap;

use kflow_effects::effect::Effect;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /api/v1/workers`: registers a worker (again, with the same id, after a restart of
/// the server).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// A stable id; generated when absent.
    pub id: Option<String>,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Labels a task may require (`metadata.kflow.labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// e.g. `cpu=4,memory=8Gi,gpu=1` (a `tasks` slot count defaults to 16).
    pub capacity: Option<String>,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub id: String,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl_ms: i64,
    /// How often to heartbeat.
    pub heartbeat_ms: i64,
}

/// `POST /api/v1/workers/{id}/poll`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// How many tasks at most (default 1).
    pub max: Option<usize>,
    /// How long to wait for work, in ms (default 20000, at most 60000).
    pub wait_ms: Option<u64>,
}

/// A task leased to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// The lease's id: the key to report the result with.
    pub lease: String,
    pub instance: String,
    /// The effect's id within the instance.
    pub effect: u64,
    /// The task's reference in the document.
    pub task: String,
    /// The effect to perform (http, openapi, grpc or process), fully resolved.
    #[schema(value_type = Object)]
    pub effect_def: Effect,
    /// The attempt number (1 for a first run); with `instance` and `effect`, what makes
    /// the idempotency key.
    pub attempt: u32,
    pub expires_ms: i64,
}

/// The leases a poll hands out (maybe none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PollResponse {
    pub leases: Vec<Lease>,
}

/// `POST /api/v1/workers/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The leases the worker is running now.
    #[serde(default)]
    pub running: Vec<String>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// Leases the worker must stop (cancelled, or expired before this heartbeat).
    pub stop: Vec<String>,
    /// The worker is draining: it takes no new tasks.
    pub draining: bool,
}

/// `POST /api/v1/leases/{lease}/complete`: a lease's result, `output` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub worker: String,
    /// The effect's output, when it succeeded.
    #[schema(value_type = Object)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The workflow error ({type, status, title, detail}), when it failed.
    #[schema(value_type = Object)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// A result accepted: committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub accepted: bool,
}

/// `POST /api/v1/workers/{id}/drain`: the worker takes no new tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Draining {
    pub id: String,
    pub draining: bool,
}

/// One worker as `GET /api/v1/workers` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub queues: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// What it can hold at once, by resource (`tasks`, `cpu`, `memory`, named slots).
    pub capacity: BTreeMap<String, f64>,
    /// What its leases hold now.
    pub used: BTreeMap<String, f64>,
    /// Its leases (their ids are the keys to report results).
    pub leases: Vec<String>,
    /// When it was last heard from (epoch ms).
    pub last_seen_ms: i64,
    pub draining: bool,
    /// The server's own worker.
    pub builtin: bool,
    /// Who registered it (a token's name); only that token, or a global admin, may act as it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The namespaces whose tasks it may take (its token's); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

/// `GET /api/v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    pub items: Vec<WorkerView>,
}

/// One work queue as `GET /api/v1/queues` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// The queue's name.
    pub queue: String,
    /// Tasks waiting in it (not leased).
    pub depth: usize,
    /// How long its oldest waiting task has waited (ms; 0 when none waits).
    pub oldest_wait_ms: i64,
    /// The workers serving it.
    pub workers: Vec<String>,
    /// Its rate limit (`rate_limits: {queue:NAME: N}` in the config), tasks per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
}

/// `GET /api/v1/queues`: the queues and the dispatch latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueuesResponse {
    pub items: Vec<QueueView>,
    pub dispatch_latency: DispatchLatency,
    /// Hosts with an adaptive concurrency limit (`adaptive_concurrency:`).
    #[serde(default)]
    pub hosts: Vec<HostLimit>,
}

/// The adaptive concurrency limit toward one host, now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct HostLimit {
    pub host: String,
    /// Calls that may be in flight at once (its floor).
    pub limit: f64,
    pub in_flight: usize,
}

/// Time from ready to leased to a worker, over recent dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DispatchLatency {
    /// Dispatches measured.
    pub count: usize,
    /// Median, in microseconds.
    pub p50_us: u64,
    /// 99th percentile, in microseconds.
    pub p99_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kflow_effects::effect::Effect;

    fn lease() -> Lease {
        Lease {
            lease: "w1-7".into(),
            instance: "i".into(),
            effect: 3,
            task: "/do/0/build".into(),
            effect_def: Effect::Emit {
                event: serde_json::json!({"type": "built"}),
            },
            attempt: 2,
            expires_ms: 10,
        }
    }

    #[test]
    fn a_lease_carries_a_typed_effect_both_ways() {
        let text = serde_json::to_string(&PollResponse {
            leases: vec![lease()],
        })
        .unwrap();
        let back: PollResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(back.leases, vec![lease()]);
        assert!(matches!(back.leases[0].effect_def, Effect::Emit { .. }));
    }

    #[test]
    fn a_missing_field_is_an_error_not_a_default() {
        let mut v = serde_json::to_value(lease()).unwrap();
        v.as_object_mut().unwrap().remove("attempt");
        let e = serde_json::from_value::<Lease>(v).unwrap_err();
        assert!(e.to_string().contains("attempt"), "{e}");
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let e = serde_json::from_str::<PollRequest>(r#"{"max": 1, "wait": 5}"#).unwrap_err();
        assert!(e.to_string().contains("wait"), "{e}");
        let e =
            serde_json::from_str::<CompleteRequest>(r#"{"worker": "w", "result": 1}"#).unwrap_err();
        assert!(e.to_string().contains("result"), "{e}");
    }
}

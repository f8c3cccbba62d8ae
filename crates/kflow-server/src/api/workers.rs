//! Remote workers and queues: register, long-poll for tasks, heartbeat, report results, drain;
//! list workers and queues; explain why an instance is waiting.
//!
//! A worker holds a lease per task; the lease lives while the worker heartbeats (every
//! `heartbeat_ms`, well within `lease_ttl_ms`). A worker that stops heartbeating loses its
//! leases and its tasks go back to the queue; the late result of an expired lease is refused
//! with 409.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use kflow_api::workers::{
    Accepted, CompleteRequest, DispatchLatency, Draining, HeartbeatRequest, HeartbeatResponse,
    Lease, PollRequest, PollResponse, QueuesResponse, RegisterRequest, Registered, WorkerList,
    WorkerView,
};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiPath, ApiQuery, JsonBody};
use crate::auth::{AuthMode, Caller, Role, Scope};
use crate::engine::{Explanation, WorkerSpec};

/// The worker `id` must have been registered by this caller's token (a global admin may act
/// for any worker). An unknown worker is left to the engine (404: register again).
fn owns(st: &AppState, caller: &Caller, id: &str) -> ApiResult<()> {
    match st.engine.worker_owner(id) {
        None => Ok(()),
        Some(_) if caller.role == Role::Admin && caller.scope == Scope::All => Ok(()),
        Some(owner) if owner.as_deref() == owner_of(st, caller).as_deref() => Ok(()),
        Some(_) => Err(ApiError::forbidden(format!(
            "worker {id:?} was registered by another token"
        ))),
    }
}

/// The owner recorded for workers this caller registers (none without authentication).
fn owner_of(st: &AppState, caller: &Caller) -> Option<String> {
    match st.auth {
        AuthMode::Off => None,
        AuthMode::Tokens(_) => Some(caller.name.clone()),
    }
}

/// Registers a worker (again, with the same id, after a restart of the server).
#[utoipa::path(post, path = "/api/v1/workers", tag = "workers", request_body = RegisterRequest,
    responses((status = 200, description = "OK", body = Registered), (status = 400, description = "The request is invalid (the error says where)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn register_worker(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<Json<Registered>> {
    let spec = WorkerSpec {
        id: req.id,
        queues: req.queues,
        labels: req.labels,
        capacity: req.capacity,
        owner: owner_of(&st, &caller),
        namespaces: caller.scope.list(),
    };
    let id = st.engine.register_worker(spec)?;
    let ttl = st.engine.lease_ttl_ms();
    Ok(Json(Registered {
        id,
        lease_ttl_ms: ttl,
        heartbeat_ms: (ttl / 4).max(50),
    }))
}

/// Long-polls for tasks this worker can take (queue, labels, free capacity).
#[utoipa::path(post, path = "/api/v1/workers/{id}/poll", tag = "workers", request_body = PollRequest,
    params(("id" = String, Path, description = "Worker id")),
    responses((status = 200, description = "OK", body = PollResponse), (status = 401, description = "No valid token", body = ErrorBody), (status = 404, description = "Unknown worker: register again", body = ErrorBody)))]
pub async fn poll_work(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    JsonBody(req): JsonBody<PollRequest>,
) -> ApiResult<Json<PollResponse>> {
    owns(&st, &caller, &id)?;
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(20_000));
    let leases = st.engine.poll_work(&id, req.max.unwrap_or(1), wait).await?;
    let leases = leases
        .into_iter()
        .map(|l| Lease {
            lease: l.lease,
            instance: l.instance,
            effect: l.effect,
            task: l.task,
            effect_def: l.effect_def,
            attempt: l.attempt,
            expires_ms: l.expires_ms,
        })
        .collect();
    Ok(Json(PollResponse { leases }))
}

/// Renews the worker's leases.
#[utoipa::path(post, path = "/api/v1/workers/{id}/heartbeat", tag = "workers", request_body = HeartbeatRequest,
    params(("id" = String, Path, description = "Worker id")),
    responses((status = 200, description = "OK", body = HeartbeatResponse), (status = 401, description = "No valid token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn heartbeat(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    owns(&st, &caller, &id)?;
    let stop = st.engine.heartbeat(&id, &req.running)?;
    let draining = st.engine.workers().iter().any(|w| w.id == id && w.draining);
    Ok(Json(HeartbeatResponse { stop, draining }))
}

/// Reports a lease's result. Refused (409) when the lease is no longer held by this worker.
#[utoipa::path(post, path = "/api/v1/leases/{lease}/complete", tag = "workers", request_body = CompleteRequest,
    params(("lease" = String, Path, description = "Lease id")),
    responses((status = 200, description = "Accepted: committed", body = Accepted), (status = 400, description = "The request is invalid (the error says where)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 409, description = "Lease expired or not held", body = ErrorBody)))]
pub async fn complete_lease(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(lease): ApiPath<String>,
    JsonBody(req): JsonBody<CompleteRequest>,
) -> ApiResult<Json<Accepted>> {
    owns(&st, &caller, &req.worker)?;
    let result = match (req.output, req.error) {
        (_, Some(e)) => Err(kflow_core::WfError::from_value(&e)
            .map_err(|m| ApiError::invalid(format!("'error' is not a workflow error: {m}")))?),
        (Some(v), None) => Ok(v),
        (None, None) => Ok(Value::Null),
    };
    // Answered after the commit, like every other acknowledgement.
    st.engine
        .complete_lease(&req.worker, &lease, result)
        .await?;
    Ok(Json(Accepted { accepted: true }))
}

/// Stops a worker taking new tasks; it finishes those it has.
#[utoipa::path(post, path = "/api/v1/workers/{id}/drain", tag = "workers",
    params(("id" = String, Path, description = "Worker id")),
    responses((status = 200, description = "Draining", body = Draining), (status = 401, description = "No valid token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn drain_worker(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Draining>> {
    owns(&st, &caller, &id)?;
    st.engine.drain_worker(&id)?;
    Ok(Json(Draining { id, draining: true }))
}

/// Workers: queues, labels, capacity, what they use, their leases, when last seen.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", responses((status = 200, description = "Workers", body = WorkerList)))]
pub async fn list_workers(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<WorkerList>> {
    // Leases are the keys to report results: only a global admin sees them.
    caller.must_be_global()?;
    let items = st
        .engine
        .workers()
        .into_iter()
        .map(|w| {
            let mut leases: Vec<String> = w.leases.into_iter().collect();
            leases.sort();
            WorkerView {
                id: w.id,
                queues: w.queues,
                labels: w.labels,
                capacity: w.capacity,
                used: w.used,
                leases,
                last_seen_ms: w.last_seen_ms,
                draining: w.draining,
                builtin: w.builtin,
                owner: w.owner,
                namespaces: w.namespaces,
            }
        })
        .collect();
    Ok(Json(WorkerList { items }))
}

/// Queues: depth, the oldest waiting task's age, the workers serving each; the dispatch
/// latency (ready → leased to a worker) over recent dispatches.
#[utoipa::path(get, path = "/api/v1/queues", tag = "workers", params(QueuesQuery), responses((status = 200, description = "Queues", body = QueuesResponse)))]
pub async fn list_queues(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<QueuesQuery>,
) -> ApiResult<Json<QueuesResponse>> {
    let (count, p50, p99) = st.engine.dispatch_latency(q.reset_latency.unwrap_or(false));
    Ok(Json(QueuesResponse {
        items: st.engine.queues(),
        dispatch_latency: DispatchLatency {
            count,
            p50_us: p50,
            p99_us: p99,
        },
        hosts: st
            .engine
            .host_limits()
            .into_iter()
            .map(|(host, limit, in_flight)| kflow_api::workers::HostLimit {
                host,
                limit: (limit * 100.0).round() / 100.0,
                in_flight,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueuesQuery {
    /// Start a new dispatch-latency measurement after this read.
    pub reset_latency: Option<bool>,
}

/// What an instance is waiting for: timers, events, sub-workflows, a worker or a free slot.
#[utoipa::path(get, path = "/api/v1/instances/{id}/explain", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Reasons", body = kflow_api::instances::Explanation), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn explain(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<kflow_api::instances::Explanation>> {
    let id = super::instances::visible(&st, &caller, &id).await?;
    let e: Explanation = st.engine.explain(&id).await?;
    Ok(Json(kflow_api::instances::Explanation {
        id: e.id,
        status: super::types::status(e.status),
        waiting: e
            .waiting
            .into_iter()
            .map(|w| kflow_api::instances::WaitReason {
                task: w.task,
                effect: w.effect,
                kind: w.kind,
                reason: w.reason,
            })
            .collect(),
        isolation: e.isolation,
    }))
}

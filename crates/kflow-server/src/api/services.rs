//! `GET /api/v1/services`: the named services with their endpoints' health, latency and load,
//! circuit and bulkhead; `PUT`/`DELETE /api/v1/services/{name}/endpoints`: endpoints that
//! register themselves with a time to live and renew it (a heartbeat).

use axum::Json;
use axum::extract::State;
use kflow_api::services::{
    RegisterEndpoint, RemoveEndpoint, ServiceEndpoint, ServiceList, ServiceState,
};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiPath, JsonBody};
use crate::auth::Caller;

/// A unit enum's serialized name (`round-robin`, `config`).
fn word(s: &impl serde::Serialize) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn state_of(v: kflow_tasks::services::ServiceView) -> ServiceState {
    ServiceState {
        balance: word(&v.balance),
        circuit: v.circuit.to_string(),
        open_for_s: v.open_for_s,
        bulkhead: v.bulkhead,
        in_flight: v.in_flight,
        error_rate: v.error_rate,
        endpoints: v
            .endpoints
            .into_iter()
            .map(|e| ServiceEndpoint {
                source: word(&e.source),
                url: e.url,
                healthy: e.healthy,
                outstanding: e.outstanding,
                latency_ms: e.latency_ms,
                calls: e.calls,
                failures: e.failures,
                expires_in_s: e.expires_in_s,
            })
            .collect(),
        calls: v.totals.calls,
        failures: v.totals.failures,
        failovers: v.totals.failovers,
        rejected_open: v.totals.rejected_open,
        rejected_budget: v.totals.rejected_budget,
        rejected_bulkhead: v.totals.rejected_bulkhead,
        circuit_opened: v.totals.circuit_opened,
        name: v.name,
    }
}

/// The services of this node's config, as this node sees them (each node keeps its own health
/// and circuits).
#[utoipa::path(get, path = "/api/v1/services", tag = "workers",
    responses((status = 200, description = "The services", body = ServiceList),
        (status = 403, description = "A token limited to some namespaces", body = ErrorBody)))]
pub async fn list_services(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<ServiceList>> {
    // Server-wide, like the nodes: a token over every namespace.
    caller.must_be_global()?;
    let items = st
        .engine
        .services()
        .views()
        .into_iter()
        .map(state_of)
        .collect();
    Ok(Json(ServiceList { items }))
}

/// Registers an endpoint of a configured service for `ttl_seconds` (default 30), or renews it.
#[utoipa::path(put, path = "/api/v1/services/{name}/endpoints", tag = "workers",
    request_body = RegisterEndpoint,
    params(("name" = String, Path, description = "A service of the server's config")),
    responses((status = 204, description = "Registered until its time to live runs out"),
        (status = 400, description = "Not an http(s) URL, or a time to live out of range", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody)))]
pub async fn register_endpoint(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    JsonBody(req): JsonBody<RegisterEndpoint>,
) -> ApiResult<axum::http::StatusCode> {
    caller.must_be_global()?;
    let services = st.engine.services();
    if !services.contains(&name) {
        return Err(ApiError::not_found(format!(
            "no service {name:?} in the server's config (services:)"
        )));
    }
    let ttl = req.ttl_seconds.unwrap_or(30);
    if !(1..=3600).contains(&ttl) {
        return Err(ApiError::invalid(format!(
            "ttl_seconds: {ttl} is out of range (1 to 3600)"
        )));
    }
    services
        .register(&name, &req.url, std::time::Duration::from_secs(ttl))
        .map_err(|m| ApiError::invalid(format!("url: {m}")))?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Removes a registered endpoint at once.
#[utoipa::path(delete, path = "/api/v1/services/{name}/endpoints", tag = "workers",
    request_body = RemoveEndpoint,
    params(("name" = String, Path, description = "A service of the server's config")),
    responses((status = 204, description = "Removed"),
        (status = 404, description = "No such service or registered endpoint", body = ErrorBody)))]
pub async fn remove_endpoint(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    JsonBody(req): JsonBody<RemoveEndpoint>,
) -> ApiResult<axum::http::StatusCode> {
    caller.must_be_global()?;
    if st.engine.services().deregister(&name, &req.url) {
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "{} is not a registered endpoint of service {name:?}",
            req.url
        )))
    }
}

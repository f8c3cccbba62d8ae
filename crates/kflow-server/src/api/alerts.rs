//! `GET /api/v1/alerts`: the alerts the rules fired, newest first, with their delivery state.
//! `GET /api/v1/nodes`: the server nodes sharing the database.

use axum::Json;
use axum::extract::State;
use kflow_api::security::{AlertList, AlertView};
use kflow_core::time::iso8601;
use kflow_store::AlertRow;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::ApiQuery;
use crate::auth::Caller;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// Fired before this time (epoch ms): the `fired_ms` of the last alert of a page.
    pub before: Option<i64>,
    /// At most this many, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

pub fn alert_view(a: AlertRow) -> AlertView {
    let delivery = if a.delivered_ms.is_some() {
        "delivered"
    } else if a.next_ms.is_some() {
        "pending"
    } else if a.attempts > 0 {
        "failed"
    } else {
        "recorded"
    };
    AlertView {
        id: a.id,
        on: a.data["on"].as_str().unwrap_or("").to_string(),
        details: a.data["details"].clone(),
        rule: a.rule,
        key: a.key,
        namespace: a.namespace,
        fired: iso8601(a.fired_ms),
        fired_ms: a.fired_ms,
        summary: a.summary,
        delivery: delivery.into(),
        attempts: a.attempts,
        last_error: a.last_error,
        resolved_ms: a.resolved_ms,
    }
}

/// The alerts fired, newest first. A token limited to some namespaces sees the alerts of those
/// namespaces; the server-wide ones (queues, workers) need a token over every namespace.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "health", params(AlertQuery),
    responses((status = 200, description = "The alerts", body = AlertList), (status = 400, description = "The request is invalid (the error says where)", body = ErrorBody)))]
pub async fn list_alerts(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AlertQuery>,
) -> ApiResult<Json<AlertList>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 1000"));
    }
    let store = st.engine.store();
    let before = q.before;
    let rows = tokio::task::spawn_blocking(move || store.alerts(before, limit))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("the store failed: {e}")))?;
    let global = caller.scope == crate::auth::Scope::All;
    Ok(Json(AlertList {
        items: rows
            .into_iter()
            .filter(|a| match &a.namespace {
                Some(ns) => caller.sees(ns),
                None => global,
            })
            .map(alert_view)
            .collect(),
    }))
}

/// The nodes on this database: on PostgreSQL every node seen in the last hour (which one holds
/// the lease, the others' heartbeats); on SQLite, this one.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "health",
    responses((status = 200, description = "The nodes", body = kflow_api::security::NodeList),
        (status = 403, description = "A token limited to some namespaces", body = ErrorBody)))]
pub async fn list_nodes(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<kflow_api::security::NodeList>> {
    // Server-wide, like the metrics: a token over every namespace.
    caller.must_be_global()?;
    let engine = st.engine.clone();
    let list = tokio::task::spawn_blocking(move || engine.nodes())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("the store failed: {e}")))?;
    Ok(Json(list))
}

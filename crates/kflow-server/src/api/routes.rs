//! The routes: every handler is registered through utoipa-axum's [`OpenApiRouter`], so the
//! OpenAPI document is generated from the same list that routes the requests.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{self, ErrorBody};
use super::{
    ApiConfig, AppState, alerts, definitions, documents, events, instances, schedules, security,
    services, watch, workers,
};
use crate::engine::Engine;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kflow",
        description = "A durable workflow engine for the CNCF Serverless Workflow DSL. \
                       Every error is `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    tags(
        (name = "definitions", description = "Workflow definitions: registered once per version, never changed"),
        (name = "instances", description = "Workflow instances: start, inspect, control, history, live updates"),
        (name = "events", description = "CloudEvents for waiting `listen` tasks"),
        (name = "schedules", description = "Schedules of the registered workflows: next fire times, pause, resume"),
        (name = "workers", description = "Remote workers: register, long-poll for tasks, heartbeat, results; queues"),
        (name = "health", description = "Liveness"),
        (name = "security", description = "Tokens, roles and the hash-chained audit trail"),
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// How long the engine's driver may go without a turn before the server is unhealthy (it
/// wakes at least once a second when idle).
const DRIVER_STALE_MS: i64 = 10_000;

/// Liveness: 200 `ok` while the process serves requests and the engine's driver goes round
/// its loop; 503 when the driver has been stuck for more than 10 s.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "Alive", body = String, content_type = "text/plain"),
        (status = 503, description = "The engine's driver is stuck", body = String, content_type = "text/plain"),
    )
)]
pub async fn healthz(State(st): State<AppState>) -> (StatusCode, String) {
    match st.engine.driver_alive(DRIVER_STALE_MS) {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(ms) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: the engine's driver has not gone round its loop for {ms} ms"),
        ),
    }
}

/// Prometheus metrics (text format): instances started and ended, task run times and queue
/// waits, queues, workers, lease expiries, store commits, API latency. Over every namespace:
/// a viewer token for all namespaces (`*`) reads it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "The token may not do this", body = super::error::ErrorBody),
    )
)]
pub async fn metrics(
    State(st): State<AppState>,
    caller: crate::auth::Caller,
) -> super::error::ApiResult<axum::response::Response> {
    caller.must_be_global()?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.engine.metrics_text(),
    )
        .into_response())
}

/// Times every request of a known route (by its template: bounded labels).
async fn track(
    State(st): State<AppState>,
    path: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let t0 = std::time::Instant::now();
    let method = req.method().clone();
    let resp = next.run(req).await;
    if let Some(route) = path {
        let took = t0.elapsed().as_secs_f64();
        st.engine.observe_request(
            method.as_str(),
            route.as_str(),
            resp.status().as_u16(),
            took,
        );
        tracing::debug!(
            method = %method,
            route = route.as_str(),
            status = resp.status().as_u16(),
            ms = took * 1e3,
            "request"
        );
    }
    resp
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            definitions::register_definition,
            definitions::list_definitions
        ))
        .routes(routes!(definitions::get_latest_definition))
        .routes(routes!(definitions::get_definition_version))
        .routes(routes!(definitions::deprecate_definition))
        .routes(routes!(documents::validate_definition))
        .routes(routes!(documents::definition_graph))
        .routes(routes!(documents::diff_definitions))
        .routes(routes!(documents::analyze_definition))
        .routes(routes!(
            instances::start_instance,
            instances::list_instances
        ))
        .routes(routes!(instances::get_instance))
        .routes(routes!(instances::cancel_instance))
        .routes(routes!(instances::suspend_instance))
        .routes(routes!(instances::resume_instance))
        .routes(routes!(instances::retry_instance))
        .routes(routes!(instances::get_history))
        .routes(routes!(watch::watch_instance))
        .routes(routes!(events::publish_event))
        .routes(routes!(schedules::list_schedules))
        .routes(routes!(schedules::pause_schedule))
        .routes(routes!(schedules::resume_schedule))
        .routes(routes!(workers::register_worker, workers::list_workers))
        .routes(routes!(workers::poll_work))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(workers::complete_lease))
        .routes(routes!(workers::drain_worker))
        .routes(routes!(workers::list_queues))
        .routes(routes!(workers::explain))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(alerts::list_alerts))
        .routes(routes!(alerts::list_nodes))
        .routes(routes!(services::list_services))
        .routes(routes!(
            services::register_endpoint,
            services::remove_endpoint
        ))
        .routes(routes!(security::whoami))
        .routes(routes!(security::create_token, security::list_tokens))
        .routes(routes!(security::revoke_token))
        .routes(routes!(security::list_audit))
        .routes(routes!(security::verify_audit))
        .routes(routes!(security::list_secrets))
        .routes(routes!(security::put_secret, security::delete_secret))
        .routes(routes!(security::rotate_key))
}

/// The OpenAPI document of the API (also served at `/api/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().into_openapi();
    doc.paths.paths.insert(
        "/api/v1/openapi.json".into(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .operation_id(Some("openapi"))
                .summary(Some("This document"))
                .response(
                    "200",
                    utoipa::openapi::ResponseBuilder::new()
                        .description("The OpenAPI document")
                        .content(
                            "application/json",
                            utoipa::openapi::content::Content::new(
                                None::<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
                            ),
                        ),
                ),
        ),
    );
    doc
}

pub fn build(engine: Engine, config: ApiConfig) -> Router {
    let (router, _) = api().split_for_parts();
    let doc: Arc<str> = openapi().to_json().unwrap_or_else(|_| "{}".into()).into();
    let limit = config.max_body_bytes;
    let state = AppState {
        audit: crate::auth::audit::AuditLog::start(engine.store()),
        auth: config.auth.clone(),
        hosts: config.hosts.clone(),
        limiter: (config.rate_limit_per_token > 0.0)
            .then(|| Arc::new(crate::auth::RateLimiter::new(config.rate_limit_per_token))),
        engine,
        config,
    };
    let api = router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                        .into_response()
                }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::forward::forward,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard,
        ))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .with_state(state);
    // The web UI calls the API in-process (the same router, rules and audit) and answers the
    // pages under /ui (and / → /ui); what it does not route falls to the API's JSON 404.
    kflow_ui::router(api.clone())
        .layer(CatchPanicLayer::custom(error::panic_response))
        .merge(api)
}

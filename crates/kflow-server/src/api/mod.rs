//! The REST API: `/api/v1` over an [`Engine`], plus `/healthz`.
//!
//! - [`routes`] lists the routes (and generates the OpenAPI document from them);
//! - one module of handlers per resource: [`definitions`], [`instances`], [`watch`] (live
//!   updates as server-sent events), [`events`] (CloudEvents in);
//! - [`types`] holds what goes over the wire, converted from the engine's and the store's types;
//! - [`error`] is the one place where engine errors become responses;
//! - `extract` wraps axum's extractors so that every rejection is a JSON error too.

pub mod definitions;
pub mod error;
pub mod events;
mod extract;
pub mod instances;
pub mod routes;
pub mod schedules;
pub mod types;
pub mod watch;
pub mod workers;

use crate::engine::Engine;

pub use routes::openapi;

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The largest request body accepted (413 past it). Default 1 MiB.
    pub max_body_bytes: usize,
    /// When set, the worker routes require `Authorization: Bearer <token>`.
    pub worker_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1024 * 1024,
            worker_token: None,
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub config: ApiConfig,
}

/// The whole HTTP API as an axum router (state applied): serve it, or call it in-process.
pub fn router(engine: Engine, cfg: ApiConfig) -> axum::Router {
    routes::build(engine, cfg)
}

//! The REST API: `/api/v1` over an [`Engine`], plus `/healthz`.
//!
//! - [`routes`] lists the routes (and generates the OpenAPI document from them);
//! - one module of handlers per resource: [`definitions`], [`instances`], [`watch`] (live
//!   updates as server-sent events), [`events`] (CloudEvents in);
//! - [`types`] holds what goes over the wire, converted from the engine's and the store's types;
//! - [`error`] is the one place where engine errors become responses;
//! - `extract` wraps axum's extractors so that every rejection is a JSON error too.

pub mod alerts;
pub mod definitions;
pub mod documents;
pub mod error;
pub mod events;
mod extract;
mod forward;
pub mod instances;
pub mod routes;
pub mod schedules;
pub mod security;
pub mod services;
pub mod types;
pub mod watch;
pub mod workers;

use std::sync::Arc;

use crate::auth::AuthMode;
use crate::auth::audit::AuditLog;
use crate::auth::hosts::Hosts;
use crate::engine::Engine;

pub use routes::openapi;

/// Settings of the API.
#[derive(Clone)]
pub struct ApiConfig {
    /// The largest request body accepted (413 past it). Default 1 MiB.
    pub max_body_bytes: usize,
    /// How callers authenticate. The default is [`AuthMode::Off`], for in-process use: the
    /// server (`serve`) always chooses explicitly.
    pub auth: AuthMode,
    /// Which `Host` names are answered (all by default; loopback names for a server on a
    /// loopback address).
    pub hosts: Hosts,
    /// Requests per second per token (burst twice that); 0: unlimited.
    pub rate_limit_per_token: f64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1024 * 1024,
            auth: AuthMode::Off,
            hosts: Hosts::any(),
            rate_limit_per_token: 0.0,
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub config: ApiConfig,
    pub auth: AuthMode,
    pub hosts: Hosts,
    pub audit: Arc<AuditLog>,
    pub limiter: Option<Arc<crate::auth::RateLimiter>>,
}

/// The whole HTTP API as an axum router (state applied): serve it, or call it in-process.
/// Starts the audit writer: call it inside a tokio runtime.
pub fn router(engine: Engine, cfg: ApiConfig) -> axum::Router {
    routes::build(engine, cfg)
}

//! Named services (`services:` in the server's config): `GET /api/v1/services` and the
//! registration of endpoints at run time (`PUT`/`DELETE /api/v1/services/{name}/endpoints`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /api/v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub items: Vec<ServiceState>,
}

/// A service: its endpoints, circuit, bulkhead and what it has seen.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceState {
    pub name: String,
    /// `round-robin`, `least-outstanding` or `peak-ewma`.
    pub balance: String,
    /// `closed`, `open` (calls fail fast) or `half-open` (one probe call at a time).
    pub circuit: String,
    /// Seconds until an open circuit lets a probe through.
    pub open_for_s: Option<f64>,
    /// Calls in flight at most (none: no bulkhead).
    pub bulkhead: Option<usize>,
    pub in_flight: usize,
    /// Failures over calls in the circuit's current window.
    pub error_rate: f64,
    pub endpoints: Vec<ServiceEndpoint>,
    pub calls: u64,
    pub failures: u64,
    /// Connections that failed and went on to another endpoint (no retry spent).
    pub failovers: u64,
    pub rejected_open: u64,
    pub rejected_budget: u64,
    pub rejected_bulkhead: u64,
    pub circuit_opened: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceEndpoint {
    pub url: String,
    /// `config`, `dns` or `registered`.
    pub source: String,
    pub healthy: bool,
    pub outstanding: usize,
    /// Peak EWMA latency (ms).
    pub latency_ms: f64,
    pub calls: u64,
    pub failures: u64,
    /// A registered endpoint: seconds until it is dropped unless renewed.
    pub expires_in_s: Option<f64>,
}

/// `PUT /api/v1/services/{name}/endpoints`: registers an endpoint, or renews it (a heartbeat).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterEndpoint {
    /// The endpoint's base URL (`http://10.0.0.7:8080`).
    pub url: String,
    /// Dropped after this many seconds unless registered again (1 to 3600, default 30).
    pub ttl_seconds: Option<u64>,
}

/// `DELETE /api/v1/services/{name}/endpoints`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveEndpoint {
    pub url: String,
}

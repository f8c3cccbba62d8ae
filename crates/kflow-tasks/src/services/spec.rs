//! The shape of `services:` in the config (checked by [`super::Registry::new`]).

use serde::{Deserialize, Serialize};

/// How endpoints are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastOutstanding,
    PeakEwma,
}

/// One service of `services:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServiceSpec {
    /// Base URLs (`http://10.0.0.5:8080`, `https://billing.internal/api`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `http://NAME:PORT[/base]`: every address NAME resolves to is an endpoint.
    /// `srv+http://_SERVICE._tcp.NAME[/base]`: every target of NAME's SRV records of the
    /// lowest priority, at its port, is.
    pub dns: Option<String>,
    /// The DNS server SRV queries go to (`IP:PORT`); default: the first `nameserver` of
    /// /etc/resolv.conf.
    pub dns_server: Option<String>,
    #[serde(default)]
    pub balance: Balance,
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub circuit: CircuitSpec,
    /// Calls in flight at most.
    pub bulkhead: Option<usize>,
    #[serde(default)]
    pub retry_budget: RetryBudgetSpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct HealthSpec {
    /// An HTTP path that answers 2xx or 3xx when the endpoint is well (else a TCP connect).
    pub path: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
}

fn default_interval() -> u64 {
    1_000
}

fn default_health_timeout() -> u64 {
    500
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct CircuitSpec {
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window_seconds: f64,
    pub open_seconds: f64,
}

impl Default for CircuitSpec {
    fn default() -> Self {
        CircuitSpec {
            failure_rate: 0.5,
            min_calls: 10,
            window_seconds: 10.0,
            open_seconds: 5.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct RetryBudgetSpec {
    pub ratio: f64,
    pub min_per_second: f64,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        RetryBudgetSpec {
            ratio: 0.2,
            min_per_second: 5.0,
        }
    }
}

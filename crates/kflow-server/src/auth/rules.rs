//! The access rule of every route: one table, read by the [`guard`](super::guard) middleware
//! and walked by a test against the OpenAPI document (a route without a rule fails it, and is
//! refused at run time).

use axum::http::Method;

/// What a route needs from the caller's role (namespaces are checked by the handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No token: liveness and the API's description.
    Public,
    /// Any valid token (e.g. "who am I").
    Authenticated,
    /// viewer and up.
    Read,
    /// operator and up: start, cancel, suspend, resume, send events.
    Operate,
    /// editor and up: definitions and schedules.
    Edit,
    /// admin: tokens, audit, workers' list.
    Admin,
    /// worker or admin: register, poll, heartbeat, report, drain.
    Work,
}

impl Need {
    pub fn describe(self) -> &'static str {
        match self {
            Need::Public => "nothing",
            Need::Authenticated => "a valid token",
            Need::Read => "viewer or above",
            Need::Operate => "operator or above",
            Need::Edit => "editor or above",
            Need::Admin => "admin",
            Need::Work => "worker or admin",
        }
    }
}

/// One route's rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    /// The route as registered (`{param}` placeholders).
    pub path: &'static str,
    pub need: Need,
    /// The audit's name for what the route does.
    pub action: &'static str,
    /// Whether a successful call is recorded in the audit trail (changes are; long-polls and
    /// heartbeats are not: they change nothing a person decided).
    pub audited: bool,
}

const fn r(
    method: &'static str,
    path: &'static str,
    need: Need,
    action: &'static str,
    audited: bool,
) -> Rule {
    Rule {
        method,
        path,
        need,
        action,
        audited,
    }
}

use Need::*;

/// Every route of the API.
pub const RULES: &[Rule] = &[
    r("GET", "/healthz", Public, "health", false),
    r("GET", "/metrics", Read, "metrics", false),
    r("GET", "/api/v1/alerts", Read, "alerts.list", false),
    r("GET", "/api/v1/nodes", Read, "nodes.list", false),
    r("GET", "/api/v1/openapi.json", Public, "openapi", false),
    r("GET", "/api/v1/whoami", Authenticated, "auth.whoami", false),
    // definitions
    r(
        "POST",
        "/api/v1/definitions",
        Edit,
        "definitions.register",
        true,
    ),
    r(
        "GET",
        "/api/v1/definitions",
        Read,
        "definitions.list",
        false,
    ),
    r(
        "GET",
        "/api/v1/definitions/{namespace}/{name}",
        Read,
        "definitions.get",
        false,
    ),
    r(
        "GET",
        "/api/v1/definitions/{namespace}/{name}/versions/{version}",
        Read,
        "definitions.get",
        false,
    ),
    r(
        "POST",
        "/api/v1/definitions/validate",
        Read,
        "definitions.validate",
        false,
    ),
    r(
        "GET",
        "/api/v1/definitions/{namespace}/{name}/versions/{version}/graph",
        Read,
        "definitions.graph",
        false,
    ),
    r(
        "GET",
        "/api/v1/definitions/{namespace}/{name}/diff",
        Read,
        "definitions.diff",
        false,
    ),
    r(
        "GET",
        "/api/v1/definitions/{namespace}/{name}/analysis",
        Read,
        "definitions.analysis",
        false,
    ),
    r(
        "POST",
        "/api/v1/definitions/{namespace}/{name}/versions/{version}/deprecate",
        Edit,
        "definitions.deprecate",
        true,
    ),
    // instances
    r(
        "POST",
        "/api/v1/instances",
        Operate,
        "instances.start",
        true,
    ),
    r("GET", "/api/v1/instances", Read, "instances.list", false),
    r(
        "GET",
        "/api/v1/instances/{id}",
        Read,
        "instances.get",
        false,
    ),
    r(
        "POST",
        "/api/v1/instances/{id}/retry",
        Operate,
        "instances.retry",
        true,
    ),
    r(
        "POST",
        "/api/v1/instances/{id}/cancel",
        Operate,
        "instances.cancel",
        true,
    ),
    r(
        "POST",
        "/api/v1/instances/{id}/suspend",
        Operate,
        "instances.suspend",
        true,
    ),
    r(
        "POST",
        "/api/v1/instances/{id}/resume",
        Operate,
        "instances.resume",
        true,
    ),
    r(
        "GET",
        "/api/v1/instances/{id}/history",
        Read,
        "instances.history",
        false,
    ),
    r(
        "GET",
        "/api/v1/instances/{id}/watch",
        Read,
        "instances.watch",
        false,
    ),
    r(
        "GET",
        "/api/v1/instances/{id}/explain",
        Read,
        "instances.explain",
        false,
    ),
    // events
    r("POST", "/api/v1/events", Operate, "events.publish", true),
    // schedules
    r("GET", "/api/v1/schedules", Read, "schedules.list", false),
    r(
        "POST",
        "/api/v1/schedules/{namespace}/{name}/pause",
        Edit,
        "schedules.pause",
        true,
    ),
    r(
        "POST",
        "/api/v1/schedules/{namespace}/{name}/resume",
        Edit,
        "schedules.resume",
        true,
    ),
    // workers and queues
    r("POST", "/api/v1/workers", Work, "workers.register", true),
    r("GET", "/api/v1/workers", Admin, "workers.list", false),
    r(
        "POST",
        "/api/v1/workers/{id}/poll",
        Work,
        "workers.poll",
        false,
    ),
    r(
        "POST",
        "/api/v1/workers/{id}/heartbeat",
        Work,
        "workers.heartbeat",
        false,
    ),
    r(
        "POST",
        "/api/v1/leases/{lease}/complete",
        Work,
        "workers.complete",
        false,
    ),
    r(
        "POST",
        "/api/v1/workers/{id}/drain",
        Work,
        "workers.drain",
        true,
    ),
    r("GET", "/api/v1/queues", Read, "queues.list", false),
    r("GET", "/api/v1/services", Read, "services.list", false),
    // An endpoint's heartbeat: a machine's, not recorded each time.
    r(
        "PUT",
        "/api/v1/services/{name}/endpoints",
        Work,
        "services.register",
        false,
    ),
    r(
        "DELETE",
        "/api/v1/services/{name}/endpoints",
        Work,
        "services.deregister",
        true,
    ),
    // access control
    r("POST", "/api/v1/tokens", Admin, "tokens.create", true),
    r("GET", "/api/v1/tokens", Admin, "tokens.list", false),
    r(
        "POST",
        "/api/v1/tokens/{id}/revoke",
        Admin,
        "tokens.revoke",
        true,
    ),
    r("GET", "/api/v1/audit", Admin, "audit.list", false),
    r("GET", "/api/v1/audit/verify", Admin, "audit.verify", false),
    r("GET", "/api/v1/secrets", Admin, "secrets.list", false),
    r(
        "PUT",
        "/api/v1/secrets/{namespace}/{name}",
        Admin,
        "secrets.set",
        true,
    ),
    r(
        "DELETE",
        "/api/v1/secrets/{namespace}/{name}",
        Admin,
        "secrets.remove",
        true,
    ),
    r(
        "POST",
        "/api/v1/secrets/rotate-key",
        Admin,
        "secrets.rotate_key",
        true,
    ),
];

/// The rule of a routed request (`path` as matched, with its placeholders).
pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
}

//! Who may do what: bearer tokens, roles per namespace, the access rule of every route, and the
//! audit trail.
//!
//! - [`tokens`]: tokens are `kf_<id>_<secret>`; the store keeps only the secret's SHA-256 and
//!   the server compares hashes in constant time. A token has one [`Role`] and a set of
//!   namespaces (`*`: all).
//! - [`rules`]: the table that gives every route its [`Need`]; the [`guard`] middleware
//!   authenticates, checks the role against the rule, and records the audit entry. A route
//!   without a rule is refused (fail closed), and a test walks the route table.
//! - Namespaces are checked where the namespace is known: in the handlers, through [`Caller`].
//!   A resource of a namespace the caller cannot see answers 404 (ids do not leak), lists are
//!   filtered.
//! - [`audit`]: the writer of the hash-chained audit trail.
//! - [`hosts`]: `Host`/`Origin` checks against DNS rebinding and cross-site requests.

pub mod audit;
pub mod hosts;
pub mod rules;
pub mod tokens;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::api::error::ApiError;

pub use rules::{Need, Rule, rule_for};
pub use tokens::{TokenError, Tokens};

/// A token's role. Each includes the ones before it in `viewer < operator < editor < admin`;
/// `worker` is apart: it can only poll, heartbeat and report results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Editor,
    Admin,
    Worker,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::Editor,
        Role::Admin,
        Role::Worker,
    ];

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "editor" => Role::Editor,
            "admin" => Role::Admin,
            "worker" => Role::Worker,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    /// Whether this role meets a route's need (namespaces apart).
    pub fn allows(self, need: Need) -> bool {
        let rank = |r: Role| match r {
            Role::Viewer => 1,
            Role::Operator => 2,
            Role::Editor => 3,
            Role::Admin => 4,
            Role::Worker => 0,
        };
        match need {
            Need::Public | Need::Authenticated => true,
            Need::Read => rank(self) >= 1,
            Need::Operate => rank(self) >= 2,
            Need::Edit => rank(self) >= 3,
            Need::Admin => self == Role::Admin,
            Need::Work => matches!(self, Role::Worker | Role::Admin),
        }
    }
}

/// The namespaces a token may act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(BTreeSet<String>),
}

impl Scope {
    pub fn from_list(list: &[String]) -> Scope {
        if list.iter().any(|n| n == "*") {
            Scope::All
        } else {
            Scope::Only(list.iter().cloned().collect())
        }
    }

    pub fn contains(&self, ns: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(set) => set.contains(ns),
        }
    }

    /// `None` for all, else the list (for store filters).
    pub fn list(&self) -> Option<Vec<String>> {
        match self {
            Scope::All => None,
            Scope::Only(set) => Some(set.iter().cloned().collect()),
        }
    }

    /// Whether `other` is within this scope.
    pub fn covers(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::All, _) => true,
            (Scope::Only(_), Scope::All) => false,
            (Scope::Only(a), Scope::Only(b)) => b.is_subset(a),
        }
    }
}

/// Who is calling: set by [`guard`] on every routed request, read by handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name (`anonymous` when authentication is off).
    pub name: String,
    /// The token's id (None when authentication is off or for the environment's admin token).
    pub token_id: Option<String>,
    pub role: Role,
    pub scope: Scope,
}

impl Caller {
    /// The caller when authentication is off (an explicit `--insecure-no-auth`).
    pub fn unauthenticated() -> Caller {
        Caller {
            name: "anonymous".into(),
            token_id: None,
            role: Role::Admin,
            scope: Scope::All,
        }
    }

    pub fn sees(&self, ns: &str) -> bool {
        self.scope.contains(ns)
    }

    /// 404 (as if it did not exist) when the caller cannot see the namespace.
    pub fn must_see(&self, ns: &str, what: impl FnOnce() -> String) -> Result<(), ApiError> {
        if self.sees(ns) {
            Ok(())
        } else {
            Err(ApiError::not_found(what()))
        }
    }

    /// 403 when the caller may not create something in this namespace.
    pub fn may_act_in(&self, ns: &str) -> Result<(), ApiError> {
        if self.sees(ns) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token {:?} may not act in namespace {ns:?}",
                self.name
            )))
        }
    }

    /// Only a token over every namespace.
    pub fn must_be_global(&self) -> Result<(), ApiError> {
        if self.scope == Scope::All {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token {:?} is limited to some namespaces; this needs a token over all (\"*\")",
                self.name
            )))
        }
    }

    /// The audit's name for this caller.
    pub fn actor(&self) -> String {
        self.name.clone()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("no caller on this request (no access rule ran)"))
    }
}

/// How the API authenticates.
#[derive(Clone)]
pub enum AuthMode {
    /// Every request is the unauthenticated admin: only with `--insecure-no-auth` on loopback,
    /// and for in-process use.
    Off,
    /// Bearer tokens.
    Tokens(Arc<Tokens>),
}

/// Requests per second per token: a token bucket per token (`rate_limit_per_token`, burst of
/// twice the rate). Without authentication there is no token to charge.
pub struct RateLimiter {
    rate: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, i64)>>,
}

impl RateLimiter {
    pub fn new(rate: f64) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Default::default(),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(ms until one is available)` when empty.
    pub fn take(&self, key: &str, now_ms: i64) -> Result<(), i64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let burst = (self.rate * 2.0).max(1.0);
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            b.retain(|_, (_, at)| now_ms - *at < 60_000);
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((burst, now_ms));
        *tokens = (*tokens + (now_ms - *at).max(0) as f64 * self.rate / 1000.0).min(burst);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) * 1000.0 / self.rate).ceil() as i64).max(1))
        }
    }
}

/// A note a handler leaves on its response for the audit entry: the resource and namespace it
/// acted on, when the path does not say.
#[derive(Debug, Clone)]
pub struct Audited {
    pub resource: String,
    pub namespace: Option<String>,
    /// Already in the trail (written with the change itself): nothing more to record.
    pub recorded: bool,
}

/// Where a request came from (the peer's address), for handlers that write their own audit
/// entry.
#[derive(Debug, Clone)]
pub struct Source(pub String);

/// Checks `Host`/`Origin`, authenticates, applies the route's rule, runs the handler, records the
/// audit entry (changes and denials), in that order.
pub async fn guard(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "in-process".into());
    let method = req.method().clone();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let uri_path = req.uri().path().to_string();
    let audit = st.audit.clone();
    let deny = |caller: &str, action: &str, e: ApiError| {
        audit.denied(audit::entry(
            caller,
            action,
            &uri_path,
            None,
            &source,
            format!("{} {}", e.status.as_u16(), e.message),
        ));
        e.into_response()
    };
    if let Err(e) = st.hosts.check(req.headers()) {
        return deny("anonymous", "auth.host", e);
    }
    let Some(rule) = rule_for(&method, &path) else {
        return deny(
            "anonymous",
            "auth.no_rule",
            ApiError::forbidden(format!("no access rule for {method} {path}: refused")),
        );
    };
    if rule.need == Need::Public {
        return next.run(req).await;
    }
    let caller = match &st.auth {
        AuthMode::Off => Caller::unauthenticated(),
        AuthMode::Tokens(tokens) => {
            // A browser signed in to the web UI sends its token in the `kflow_token` cookie
            // (HttpOnly, SameSite=Strict); cross-site requests are refused above by `Origin`.
            let cookie = kflow_ui::api::cookie(req.headers(), kflow_ui::api::COOKIE)
                .and_then(|t| header::HeaderValue::from_str(&format!("Bearer {t}")).ok());
            let presented = req.headers().get(header::AUTHORIZATION).or(cookie.as_ref());
            match tokens.authenticate(presented, st.engine.now_ms()) {
                Ok(c) => c,
                Err(e) => {
                    let mut r = deny(
                        "anonymous",
                        rule.action,
                        ApiError::unauthorized(e.to_string()),
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer realm=\"kflow\""),
                    );
                    return r;
                }
            }
        }
    };
    if !caller.role.allows(rule.need) {
        let msg = format!(
            "token {:?} has role {} and {} needs {}",
            caller.name,
            caller.role.as_str(),
            rule.action,
            rule.need.describe()
        );
        return deny(&caller.name, rule.action, ApiError::forbidden(msg));
    }
    if let (Some(id), Some(limiter)) = (&caller.token_id, &st.limiter)
        && let Err(wait_ms) = limiter.take(id, st.engine.now_ms())
    {
        let mut r = ApiError::too_many(format!(
            "token {:?} is over its request rate (rate_limit_per_token: {} per second): retry \
             in {wait_ms} ms",
            caller.name, limiter.rate
        ))
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&((wait_ms + 999) / 1000).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    req.extensions_mut().insert(caller.clone());
    req.extensions_mut().insert(Source(source.clone()));
    let mut resp = next.run(req).await;
    let status = resp.status();
    let changes = method != Method::GET && method != Method::HEAD && rule.audited;
    let refused = status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED;
    if changes || refused {
        let note = resp.extensions_mut().remove::<Audited>();
        if note.as_ref().is_some_and(|a| a.recorded) {
            return resp;
        }
        let (resource, ns) = match note {
            Some(a) => (a.resource, a.namespace),
            None => (uri_path.clone(), None),
        };
        let e = audit::entry(
            &caller.name,
            rule.action,
            &resource,
            ns,
            &source,
            status.as_u16().to_string(),
        );
        if status.is_success() && changes {
            // An acknowledged change has its entry on disk first.
            audit.record(e).await;
        } else {
            audit.denied(e);
        }
    }
    resp
}

//! Named services (`services:` in the server's config): a call to `service://NAME/path` goes to
//! one of the service's healthy endpoints, chosen by the service's balancing rule, through its
//! circuit breaker, bulkhead and retry budget.
//!
//! - **Endpoints** come from the config (`endpoints:` base URLs), from DNS (`dns:`, every A/AAAA
//!   address of a name, looked up again every health interval), or are registered at run time
//!   with a time to live that heartbeats renew ([`Registry::register`]).
//! - **Health**: an endpoint whose connection fails is out of rotation at once, and the call
//!   goes on to another endpoint without spending one of the task's retries. It comes back when
//!   its health check (an HTTP path answering 2xx/3xx, or a TCP connect) passes; without a
//!   health check, after a cool-down, on probation.
//! - **Balancing**: round robin, least outstanding requests, or peak EWMA (the latency, its
//!   peaks taken at once and forgotten over 10 s, times the requests in flight).
//! - **Circuit breaker**: once `min_calls` calls in the last `window_seconds` (a window of ten
//!   sliding buckets) have run and `failure_rate` of them failed (a transport error or a 5xx), calls fail fast for `open_seconds` with a
//!   `Circuit Open` communication error (status 503) a workflow can `catch`; then one probe
//!   call is let through, whose success closes the circuit.
//! - **Bulkhead**: at most `bulkhead` calls in flight to the service; the others wait (up to
//!   the HTTP timeout) for a seat.
//! - **Retry budget**: a call of a task that failed against the service in the last minute is
//!   a retry; retries may be at most `ratio` of first calls (plus `min_per_second`), so retries
//!   cannot multiply the load on a failing service. Past it, a retry fails fast.
//!
//! `spec.rs` holds the config's shape, `call.rs` one call's journey through a service, this
//! file the registry and each service's live state.

mod call;
mod health;
mod spec;
mod srv;
#[cfg(test)]
mod tests;

pub use call::Call;
pub use spec::{Balance, CircuitSpec, HealthSpec, RetryBudgetSpec, ServiceSpec};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Serialize;

use kflow_effects::WfError;
use kflow_effects::errors;

/// A call refused before it is sent: a communication error (503) whose title says why, so a
/// `try` can catch it by title.
fn refused(title: &str, detail: String) -> WfError {
    WfError::standard(errors::COMMUNICATION, 503, title, detail)
}

/// Without a health check, how long an endpoint whose connection failed stays out.
const COOL_DOWN: Duration = Duration::from_secs(5);
/// How long a task's failure against a service makes its next call there a retry.
const RETRY_MEMORY: Duration = Duration::from_secs(60);
/// Tasks remembered per service for the retry budget.
const MAX_REMEMBERED: usize = 10_000;
/// Peak EWMA forgets over this time constant.
const EWMA_TAU_MS: f64 = 10_000.0;

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Dns,
    Registered,
}

#[derive(Debug)]
struct Endpoint {
    base: Url,
    source: Source,
    healthy: bool,
    /// When it went out of rotation (a failed connect or health check).
    down_since: Option<Instant>,
    /// Registered endpoints: gone after this unless renewed.
    expires: Option<Instant>,
    outstanding: usize,
    ewma_ms: f64,
    last: Instant,
    calls: u64,
    failures: u64,
}

impl Endpoint {
    fn new(base: Url, source: Source) -> Endpoint {
        Endpoint {
            base,
            source,
            healthy: true,
            down_since: None,
            expires: None,
            outstanding: 0,
            ewma_ms: 0.0,
            last: Instant::now(),
            calls: 0,
            failures: 0,
        }
    }

    /// In rotation now: healthy, or (without a health check) past its cool-down.
    fn usable(&self, checked: bool, now: Instant) -> bool {
        self.healthy
            || (!checked
                && self
                    .down_since
                    .is_some_and(|d| now.duration_since(d) >= COOL_DOWN))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct State {
    endpoints: Vec<Endpoint>,
    rr: usize,
    circuit: Circuit,
    window: Window,
    /// Retry budget: tokens (a first call adds `ratio`, time adds `min_per_second`).
    tokens: f64,
    tokens_at: Instant,
    failed_tasks: HashMap<(String, String), Instant>,
    totals: Totals,
}

/// Calls and failures over the last `window_seconds`, in ten buckets that slide.
#[derive(Debug)]
struct Window {
    buckets: [(u32, u32); 10],
    /// When the current bucket began.
    at: Instant,
    current: usize,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            buckets: [(0, 0); 10],
            at: now,
            current: 0,
        }
    }

    /// Moves on to `now`, clearing the buckets that slid out.
    fn slide(&mut self, now: Instant, window: Duration) {
        let width = window / 10;
        let mut passed = 0;
        while now.duration_since(self.at) >= width && passed < 10 {
            self.current = (self.current + 1) % 10;
            self.buckets[self.current] = (0, 0);
            self.at += width;
            passed += 1;
        }
        if passed == 10 {
            self.at = now;
        }
    }

    fn add(&mut self, failed: bool) {
        let b = &mut self.buckets[self.current];
        b.0 += 1;
        b.1 += failed as u32;
    }

    /// (calls, failures) in the window.
    fn sums(&self) -> (u32, u32) {
        self.buckets
            .iter()
            .fold((0, 0), |(c, f), b| (c + b.0, f + b.1))
    }

    fn clear(&mut self, now: Instant) {
        *self = Window::new(now);
    }
}

/// What a service has seen since the server started.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub calls: u64,
    pub failures: u64,
    /// Connections that failed and went on to another endpoint.
    pub failovers: u64,
    pub rejected_open: u64,
    pub rejected_budget: u64,
    pub rejected_bulkhead: u64,
    pub circuit_opened: u64,
}

/// One service: its spec and its live state.
pub struct Service {
    name: String,
    spec: ServiceSpec,
    state: Mutex<State>,
    bulkhead: Option<Arc<tokio::sync::Semaphore>>,
    checker: AtomicBool,
    /// The last DNS lookup's failure (told on stderr when it changes).
    dns_error: Mutex<Option<String>>,
}

/// The services of a server (empty: no `services:`).
#[derive(Default)]
pub struct Registry {
    services: BTreeMap<String, Arc<Service>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.services.keys()).finish()
    }
}

/// A service as `kflow services` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub balance: Balance,
    /// `closed`, `open` or `half-open`.
    pub circuit: &'static str,
    /// Seconds until an open circuit lets a probe through.
    pub open_for_s: Option<f64>,
    pub bulkhead: Option<usize>,
    pub in_flight: usize,
    pub endpoints: Vec<EndpointView>,
    pub totals: Totals,
    /// Failures over calls in the current window.
    pub error_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub url: String,
    pub source: Source,
    pub healthy: bool,
    pub outstanding: usize,
    pub latency_ms: f64,
    pub calls: u64,
    pub failures: u64,
    pub expires_in_s: Option<f64>,
}

fn parse_base(s: &str) -> Result<Url, String> {
    let u = Url::parse(s.trim()).map_err(|e| format!("{s:?} is not an absolute URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{s:?}: only http and https endpoints"));
    }
    if u.host_str().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    Ok(u)
}

impl Registry {
    /// The registry of `specs`; every mistake named (`services.NAME.field: ...`).
    pub fn new(specs: BTreeMap<String, ServiceSpec>) -> Result<Registry, String> {
        let mut errors = Vec::new();
        let mut services = BTreeMap::new();
        for (name, spec) in specs {
            let at = format!("services.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                errors.push(format!("{at}: a name is letters, digits, '-', '_' and '.'"));
            }
            let mut endpoints = Vec::new();
            for e in &spec.endpoints {
                match parse_base(e) {
                    Ok(u) => endpoints.push(Endpoint::new(u, Source::Config)),
                    Err(m) => errors.push(format!("{at}.endpoints: {m}")),
                }
            }
            if let Some(d) = spec.dns.as_deref().filter(|d| d.starts_with("srv+")) {
                match Url::parse(d) {
                    Ok(u) if u.scheme() != "srv+http" => errors.push(format!(
                        "{at}.dns: {d:?}: SRV endpoints are srv+http:// (https ones cannot be \
                         reached by address)"
                    )),
                    Ok(u) if u.port().is_some() || u.host_str().is_none_or(|h| !h.starts_with('_')) => {
                        errors.push(format!(
                            "{at}.dns: {d:?}: name the SRV records (srv+http://_SERVICE._tcp.NAME), \
                             without a port: each record has its own"
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(format!("{at}.dns: {d:?}: {e}")),
                }
            } else if let Some(d) = &spec.dns {
                match parse_base(d) {
                    Ok(u) if u.scheme() == "https" => errors.push(format!(
                        "{at}.dns: https endpoints cannot be reached by address (the certificate \
                         names the host): list them under endpoints"
                    )),
                    Ok(u) if u.port_or_known_default().is_none() => {
                        errors.push(format!("{at}.dns: {d:?} needs a port"))
                    }
                    Ok(_) => {}
                    Err(m) => errors.push(format!("{at}.dns: {m}")),
                }
            }
            if let Some(s) = &spec.dns_server
                && s.parse::<std::net::SocketAddr>().is_err()
            {
                errors.push(format!("{at}.dns_server: {s:?} is not IP:PORT"));
            }
            let c = &spec.circuit;
            if !(c.failure_rate > 0.0 && c.failure_rate <= 1.0) {
                errors.push(format!(
                    "{at}.circuit.failure_rate: between 0 (excluded) and 1"
                ));
            }
            if !(c.window_seconds > 0.0 && c.window_seconds.is_finite())
                || !(c.open_seconds > 0.0 && c.open_seconds.is_finite())
            {
                errors.push(format!(
                    "{at}.circuit: window_seconds and open_seconds must be positive"
                ));
            }
            if c.min_calls == 0 {
                errors.push(format!("{at}.circuit.min_calls: at least 1"));
            }
            let b = &spec.retry_budget;
            if !(b.ratio >= 0.0 && b.ratio.is_finite())
                || !(b.min_per_second >= 0.0 && b.min_per_second.is_finite())
            {
                errors.push(format!(
                    "{at}.retry_budget: ratio and min_per_second must be 0 or more"
                ));
            }
            if spec.bulkhead == Some(0) {
                errors.push(format!("{at}.bulkhead: at least 1"));
            }
            if let Some(h) = &spec.health {
                if h.interval_ms < 10 || h.timeout_ms == 0 {
                    errors.push(format!(
                        "{at}.health: interval_ms at least 10, timeout_ms at least 1"
                    ));
                }
                if h.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                    errors.push(format!("{at}.health.path: starts with '/'"));
                }
            }
            let now = Instant::now();
            let tokens = b.min_per_second.max(1.0);
            let bulkhead = spec
                .bulkhead
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
            services.insert(
                name.clone(),
                Arc::new(Service {
                    dns_error: Mutex::new(None),
                    name,
                    state: Mutex::new(State {
                        endpoints,
                        rr: 0,
                        circuit: Circuit::Closed,
                        window: Window::new(now),
                        tokens,
                        tokens_at: now,
                        failed_tasks: HashMap::new(),
                        totals: Totals::default(),
                    }),
                    bulkhead,
                    checker: AtomicBool::new(false),
                    spec,
                }),
            );
        }
        if errors.is_empty() {
            Ok(Registry { services })
        } else {
            Err(errors.join("; "))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// The names of the services, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.services.keys().map(String::as_str).collect()
    }

    fn get(&self, name: &str) -> Result<&Arc<Service>, WfError> {
        self.services.get(name).ok_or_else(|| {
            let known = self.names();
            WfError::configuration(if known.is_empty() {
                format!("service://{name}: no services are configured here (services: in the server's config)")
            } else {
                format!(
                    "service://{name}: no such service (configured: {})",
                    known.join(", ")
                )
            })
        })
    }

    /// Registers (or renews) an endpoint of `name` for `ttl`; `Err` says why not.
    pub fn register(&self, name: &str, url: &str, ttl: Duration) -> Result<(), String> {
        let s = self.get(name).map_err(|e| e.detail.unwrap_or_default())?;
        let base = parse_base(url)?;
        let mut st = s.lock();
        let expires = Some(Instant::now() + ttl);
        match st.endpoints.iter_mut().find(|e| e.base == base) {
            Some(e) if e.source == Source::Registered => e.expires = expires,
            Some(_) => {
                return Err(format!(
                    "{url} is already an endpoint of {name} (config or DNS)"
                ));
            }
            None => {
                let mut e = Endpoint::new(base, Source::Registered);
                e.expires = expires;
                st.endpoints.push(e);
            }
        }
        Ok(())
    }

    /// Removes a registered endpoint; false when there was none.
    pub fn deregister(&self, name: &str, url: &str) -> bool {
        let (Ok(s), Ok(base)) = (self.get(name), parse_base(url)) else {
            return false;
        };
        let mut st = s.lock();
        let before = st.endpoints.len();
        st.endpoints
            .retain(|e| !(e.source == Source::Registered && e.base == base));
        st.endpoints.len() != before
    }

    /// Every service as it is now.
    pub fn views(&self) -> Vec<ServiceView> {
        self.services.values().map(|s| s.view()).collect()
    }

    /// Starts a call to `name` for the task `(instance, task)`: the circuit, the retry budget
    /// and the bulkhead are passed (or the call fails fast with why).
    pub(crate) async fn begin(
        &self,
        name: &str,
        instance: &str,
        task: &str,
        timeout: Duration,
    ) -> Result<Call, WfError> {
        let s = self.get(name)?.clone();
        s.ensure_checker();
        let probe = s.admit(instance, task)?;
        let permit = match &s.bulkhead {
            Some(b) => match tokio::time::timeout(timeout, b.clone().acquire_owned()).await {
                Ok(Ok(p)) => Some(p),
                _ => {
                    let mut st = s.lock();
                    st.totals.rejected_bulkhead += 1;
                    if probe {
                        st.circuit = Circuit::HalfOpen { probing: false };
                    }
                    return Err(refused(
                        "Bulkhead Full",
                        format!(
                            "service://{name}: all {} seats were taken for {} s",
                            s.spec.bulkhead.unwrap_or(0),
                            timeout.as_secs_f64()
                        ),
                    ));
                }
            },
            None => None,
        };
        Ok(Call::new(s, permit, probe, instance, task))
    }
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The circuit and the retry budget: Ok(probe) when the call may go.
    fn admit(&self, instance: &str, task: &str) -> Result<bool, WfError> {
        let now = Instant::now();
        let mut st = self.lock();
        let name = &self.name;
        let probe = match st.circuit {
            Circuit::Closed => false,
            Circuit::Open { until } if now < until => {
                st.totals.rejected_open += 1;
                return Err(refused(
                    "Circuit Open",
                    format!(
                        "service://{name}: the circuit is open after too many failures; calls fail \
                         fast for {:.1} s more",
                        until.duration_since(now).as_secs_f64()
                    ),
                ));
            }
            Circuit::Open { .. } | Circuit::HalfOpen { probing: false } => {
                st.circuit = Circuit::HalfOpen { probing: true };
                true
            }
            Circuit::HalfOpen { probing: true } => {
                st.totals.rejected_open += 1;
                return Err(refused(
                    "Circuit Open",
                    format!(
                        "service://{name}: the circuit is half open and its probe call is still \
                         running; calls fail fast until it answers"
                    ),
                ));
            }
        };
        // The retry budget.
        let b = &self.spec.retry_budget;
        let cap = (b.min_per_second * 10.0).max(b.ratio * 100.0).max(1.0);
        let dt = now.duration_since(st.tokens_at).as_secs_f64();
        st.tokens = (st.tokens + dt * b.min_per_second).min(cap);
        st.tokens_at = now;
        let key = (instance.to_string(), task.to_string());
        let retry = st
            .failed_tasks
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < RETRY_MEMORY);
        if retry {
            if st.tokens < 1.0 {
                st.totals.rejected_budget += 1;
                if probe {
                    st.circuit = Circuit::HalfOpen { probing: false };
                }
                return Err(refused(
                    "Retry Budget Spent",
                    format!(
                        "service://{name}: retries are at most {:.0}% of calls (plus {} a \
                         second), and that budget is spent: this retry is not sent",
                        b.ratio * 100.0,
                        b.min_per_second
                    ),
                ));
            }
            st.tokens -= 1.0;
        } else {
            st.tokens = (st.tokens + b.ratio).min(cap);
        }
        Ok(probe)
    }

    /// The next endpoint by the balancing rule, among usable ones not in `tried`.
    fn pick(&self, tried: &[Url]) -> Option<(Url, usize)> {
        let now = Instant::now();
        let checked = self.spec.health.is_some() || self.spec.dns.is_some();
        let mut st = self.lock();
        st.endpoints.retain(|e| e.expires.is_none_or(|x| x > now));
        let n = st.endpoints.len();
        if n == 0 {
            return None;
        }
        let ok = |e: &Endpoint| e.usable(checked, now) && !tried.contains(&e.base);
        let start = st.rr % n;
        let order = (0..n).map(|i| (start + i) % n);
        let i = match self.spec.balance {
            Balance::RoundRobin => order.clone().find(|&i| ok(&st.endpoints[i])),
            Balance::LeastOutstanding => order
                .clone()
                .filter(|&i| ok(&st.endpoints[i]))
                .min_by_key(|&i| st.endpoints[i].outstanding),
            Balance::PeakEwma => {
                order
                    .clone()
                    .filter(|&i| ok(&st.endpoints[i]))
                    .min_by(|&a, &b| {
                        let cost =
                            |e: &Endpoint| (decayed(e, now) + 1.0) * (e.outstanding + 1) as f64;
                        cost(&st.endpoints[a]).total_cmp(&cost(&st.endpoints[b]))
                    })
            }
        }?;
        st.rr = i + 1;
        let e = &mut st.endpoints[i];
        // A cooled-down endpoint is on probation: in rotation until it fails again.
        e.healthy = true;
        e.down_since = None;
        e.outstanding += 1;
        e.calls += 1;
        Some((e.base.clone(), i))
    }

    fn with_endpoint(&self, base: &Url, f: impl FnOnce(&mut Endpoint)) {
        let mut st = self.lock();
        if let Some(e) = st.endpoints.iter_mut().find(|e| &e.base == base) {
            f(e);
        }
    }

    /// A call ended: `failed` (transport error or 5xx), after `ms`.
    fn ended(&self, probe: bool, failed: bool, instance: &str, task: &str) {
        let now = Instant::now();
        let mut st = self.lock();
        st.totals.calls += 1;
        let key = (instance.to_string(), task.to_string());
        if failed {
            st.totals.failures += 1;
            if st.failed_tasks.len() >= MAX_REMEMBERED {
                st.failed_tasks
                    .retain(|_, t| now.duration_since(*t) < RETRY_MEMORY);
                if st.failed_tasks.len() >= MAX_REMEMBERED {
                    st.failed_tasks.clear();
                }
            }
            st.failed_tasks.insert(key, now);
        } else {
            st.failed_tasks.remove(&key);
        }
        let c = self.spec.circuit.clone();
        if probe {
            st.circuit = if failed {
                st.totals.circuit_opened += 1;
                Circuit::Open {
                    until: now + Duration::from_secs_f64(c.open_seconds),
                }
            } else {
                Circuit::Closed
            };
            st.window.clear(now);
            return;
        }
        st.window
            .slide(now, Duration::from_secs_f64(c.window_seconds));
        st.window.add(failed);
        let (calls, failures) = st.window.sums();
        if st.circuit == Circuit::Closed
            && calls >= c.min_calls
            && failures as f64 >= c.failure_rate * calls as f64
        {
            st.totals.circuit_opened += 1;
            st.circuit = Circuit::Open {
                until: now + Duration::from_secs_f64(c.open_seconds),
            };
            st.window.clear(now);
        }
    }

    fn view(&self) -> ServiceView {
        let now = Instant::now();
        let mut st = self.lock();
        st.window.slide(
            now,
            Duration::from_secs_f64(self.spec.circuit.window_seconds),
        );
        let (calls, failures) = st.window.sums();
        let (circuit, open_for_s) = match st.circuit {
            Circuit::Closed => ("closed", None),
            Circuit::Open { until } if until > now => {
                ("open", Some(until.duration_since(now).as_secs_f64()))
            }
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => ("half-open", None),
        };
        ServiceView {
            name: self.name.clone(),
            balance: self.spec.balance,
            circuit,
            open_for_s,
            bulkhead: self.spec.bulkhead,
            in_flight: st.endpoints.iter().map(|e| e.outstanding).sum(),
            endpoints: st
                .endpoints
                .iter()
                .filter(|e| e.expires.is_none_or(|x| x > now))
                .map(|e| EndpointView {
                    url: e.base.to_string(),
                    source: e.source,
                    healthy: e.healthy,
                    outstanding: e.outstanding,
                    latency_ms: decayed(e, now),
                    calls: e.calls,
                    failures: e.failures,
                    expires_in_s: e.expires.map(|x| x.duration_since(now).as_secs_f64()),
                })
                .collect(),
            totals: st.totals,
            error_rate: if calls == 0 {
                0.0
            } else {
                failures as f64 / calls as f64
            },
        }
    }
}

/// The peak EWMA latency of an endpoint now (decayed since its last answer).
fn decayed(e: &Endpoint, now: Instant) -> f64 {
    let dt = now.duration_since(e.last).as_secs_f64() * 1e3;
    e.ewma_ms * (-dt / EWMA_TAU_MS).exp()
}

/// `base` with `path_and_query` (a `service://` URL's path and query) appended to its path.
fn join(base: &Url, path_and_query: &str) -> Url {
    let mut u = base.clone();
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    u.set_path(&joined);
    u.set_query(query);
    u
}

/// A `service://NAME/path` URL, checked (for benches and tools).
pub fn parse_target(s: &str) -> Result<Url, String> {
    let u = Url::parse(s).map_err(|e| e.to_string())?;
    if u.scheme() != "service" || u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} is not a service://NAME/path URL"));
    }
    Ok(u)
}

impl Registry {
    /// [`Registry::begin`] for benches: a call's whole admission and accounting, no I/O.
    #[doc(hidden)]
    pub async fn begin_for_bench(
        &self,
        name: &str,
        instance: &str,
        task: &str,
    ) -> Result<Call, WfError> {
        self.begin(name, instance, task, Duration::from_secs(1))
            .await
    }
}

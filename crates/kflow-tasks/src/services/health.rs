//! Each service's health checks and DNS lookups: one task per service, started at its first
//! call, with a plain client (the config is the operator's, not a workflow's).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Url;

use super::{Endpoint, Service, Source, join};

impl Service {
    /// Starts the health checker (and DNS lookups) once, on the current runtime.
    pub(super) fn ensure_checker(self: &Arc<Self>) {
        if (self.spec.health.is_none() && self.spec.dns.is_none())
            || self.checker.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.checker.store(false, Ordering::SeqCst);
            return;
        };
        let weak = Arc::downgrade(self);
        let interval =
            Duration::from_millis(self.spec.health.as_ref().map_or(5_000, |h| h.interval_ms));
        rt.spawn(async move {
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok();
            loop {
                let Some(s) = weak.upgrade() else { return };
                s.check_once(http.as_ref()).await;
                drop(s);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// The endpoints DNS gives now (`None`: the lookup failed; the last ones stay).
    pub(super) async fn dns_bases(&self) -> Option<Vec<Url>> {
        let u = Url::parse(self.spec.dns.as_deref()?).ok()?;
        let host = u.host_str()?;
        // (host, port) pairs to resolve, and the URL each address goes into.
        let mut targets: Vec<(String, u16)> = Vec::new();
        let template = if u.scheme() == "srv+http" {
            let server = match &self.spec.dns_server {
                Some(s) => s.parse().ok()?,
                None => super::srv::system_nameserver()?,
            };
            let records = super::srv::lookup(host, server).await;
            let error = records.as_ref().err().cloned();
            let mut last = self.dns_error.lock().unwrap_or_else(|p| p.into_inner());
            if *last != error {
                if let Some(e) = &error {
                    eprintln!("kflow: service {}: {e}; its last endpoints stay", self.name);
                }
                *last = error;
            }
            drop(last);
            let records = records.ok()?;
            let best = records.first().map(|r| r.priority);
            targets.extend(
                records
                    .into_iter()
                    .filter(|r| Some(r.priority) == best && !r.target.is_empty())
                    .map(|r| (r.target, r.port)),
            );
            let mut t = Url::parse(&format!("http://x{}", u.path())).ok()?;
            t.set_query(u.query());
            t
        } else {
            targets.push((host.to_string(), u.port_or_known_default()?));
            u.clone()
        };
        let mut found = Vec::new();
        for (host, port) in targets {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await.ok()?;
            for a in addrs {
                let mut b = template.clone();
                if b.set_ip_host(a.ip()).is_ok()
                    && b.set_port(Some(port)).is_ok()
                    && !found.contains(&b)
                {
                    found.push(b);
                }
            }
        }
        Some(found)
    }

    /// One round of DNS lookups and health checks.
    async fn check_once(&self, http: Option<&reqwest::Client>) {
        if let Some(found) = self.dns_bases().await {
            let mut st = self.lock();
            st.endpoints
                .retain(|e| e.source != Source::Dns || found.contains(&e.base));
            for b in found {
                if !st.endpoints.iter().any(|e| e.base == b) {
                    st.endpoints.push(Endpoint::new(b, Source::Dns));
                }
            }
        }
        let Some(h) = &self.spec.health else { return };
        let bases: Vec<Url> = self
            .lock()
            .endpoints
            .iter()
            .map(|e| e.base.clone())
            .collect();
        let timeout = Duration::from_millis(h.timeout_ms);
        let mut checks = tokio::task::JoinSet::new();
        for base in bases {
            let (path, http) = (h.path.clone(), http.cloned());
            checks.spawn(async move {
                let ok = match (path, http) {
                    (Some(p), Some(c)) => matches!(
                        tokio::time::timeout(timeout, c.get(join(&base, &p)).send()).await,
                        Ok(Ok(r)) if r.status().as_u16() < 400
                    ),
                    _ => match (base.host_str(), base.port_or_known_default()) {
                        (Some(host), Some(port)) => matches!(
                            tokio::time::timeout(
                                timeout,
                                tokio::net::TcpStream::connect((
                                    host.trim_matches(['[', ']']),
                                    port
                                ))
                            )
                            .await,
                            Ok(Ok(_))
                        ),
                        _ => false,
                    },
                };
                (base, ok)
            });
        }
        let results = checks.join_all().await;
        let now = Instant::now();
        let mut st = self.lock();
        for (base, ok) in results {
            if let Some(e) = st.endpoints.iter_mut().find(|e| e.base == base) {
                e.healthy = ok;
                e.down_since = if ok { None } else { e.down_since.or(Some(now)) };
            }
        }
    }
}

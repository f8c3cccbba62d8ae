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

    /// One round of DNS lookups and health checks.
    async fn check_once(&self, http: Option<&reqwest::Client>) {
        if let Some(d) = &self.spec.dns
            && let Ok(u) = Url::parse(d)
            && let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default())
            && let Ok(addrs) = tokio::net::lookup_host((host, port)).await
        {
            let found: Vec<Url> = addrs
                .filter_map(|a| {
                    let mut b = u.clone();
                    b.set_ip_host(a.ip()).ok()?;
                    Some(b)
                })
                .collect();
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

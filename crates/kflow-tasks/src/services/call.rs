//! One call to a service: the endpoint it went to, failover, and its end.

use std::time::Instant;

use reqwest::Url;

use kflow_effects::WfError;

use super::{EWMA_TAU_MS, Service, decayed, join};
use std::sync::Arc;

/// One call to a service: where it went, until it ends (dropping it ends it as failed if it
/// was not ended: a cancelled task frees its seat and its endpoint's count).
pub struct Call {
    service: Arc<Service>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    probe: bool,
    instance: String,
    task: String,
    tried: Vec<Url>,
    current: Option<(Url, Instant)>,
    ended: bool,
}

impl Call {
    pub(super) fn new(
        service: Arc<Service>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        probe: bool,
        instance: &str,
        task: &str,
    ) -> Call {
        Call {
            service,
            _permit: permit,
            probe,
            instance: instance.to_string(),
            task: task.to_string(),
            tried: Vec::new(),
            current: None,
            ended: false,
        }
    }

    /// The URL to send to next for `target` (a `service://NAME/...` URL), or why there is none.
    pub fn next_url(&mut self, target: &Url) -> Result<Url, WfError> {
        let Some((base, _)) = self.service.pick(&self.tried) else {
            let name = &self.service.name;
            return Err(WfError::communication(
                503,
                if self.tried.is_empty() {
                    format!("service://{name}: no endpoint is healthy now")
                } else {
                    let tried: Vec<String> = self.tried.iter().map(Url::to_string).collect();
                    format!(
                        "service://{name}: no endpoint answered (tried {})",
                        tried.join(", ")
                    )
                },
            ));
        };
        let mut pq = target.path().to_string();
        if let Some(q) = target.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let url = join(&base, &pq);
        self.tried.push(base.clone());
        self.current = Some((base, Instant::now()));
        Ok(url)
    }

    /// The connection to the current endpoint failed: it leaves the rotation, and the call may
    /// go on to another endpoint.
    pub(crate) fn connect_failed(&mut self) {
        if let Some((base, _)) = self.current.take() {
            self.service.with_endpoint(&base, |e| {
                e.outstanding = e.outstanding.saturating_sub(1);
                e.failures += 1;
                e.healthy = false;
                e.down_since = Some(Instant::now());
            });
            self.service.lock().totals.failovers += 1;
        }
    }

    /// The call ended with an answer (`failed`: a 5xx or a transport error).
    pub fn finish(mut self, failed: bool) {
        self.end(failed);
    }

    fn end(&mut self, failed: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Some((base, t0)) = self.current.take() {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let now = Instant::now();
            self.service.with_endpoint(&base, |e| {
                e.outstanding = e.outstanding.saturating_sub(1);
                e.failures += failed as u64;
                let cur = decayed(e, now);
                e.ewma_ms = if ms > cur {
                    ms
                } else {
                    let w = (-(now.duration_since(e.last).as_secs_f64() * 1e3) / EWMA_TAU_MS).exp();
                    e.ewma_ms * w + ms * (1.0 - w)
                };
                e.last = now;
            });
        }
        self.service
            .ended(self.probe, failed, &self.instance, &self.task);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.end(true);
    }
}

//! Taking a broker's message: a CloudEvent checked, recorded once and offered; what the
//! consumer then tells the broker.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Brokers, Stats, TAKEN, bump};
use crate::engine::Engine;

/// What a consumer does with a message: the outcome tells it to acknowledge, refuse, or
/// leave it for the broker to deliver again.
pub(crate) struct Intake {
    pub(super) engine: Engine,
    pub(super) brokers: Arc<Brokers>,
    pub(super) index: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Recorded and offered, or recorded before: acknowledge.
    Ack,
    /// Not a CloudEvent: refuse without redelivery.
    Refuse,
}

impl Intake {
    fn stats(&self) -> &Stats {
        &self.brokers.brokers[self.index].stats
    }

    fn name(&self) -> &str {
        &self.brokers.brokers[self.index].endpoint.name
    }

    /// The consumer is connected and subscribed (or not any more).
    pub(crate) fn connected(&self, yes: bool) {
        let was = self
            .stats()
            .connected
            .swap(yes, std::sync::atomic::Ordering::Relaxed);
        if yes && !was {
            tracing::info!(broker = %self.name(), "consuming");
        }
    }

    /// Records and offers one message's event, trying again while the engine cannot take it
    /// (a store error); `Err` only when the engine is shutting down (nothing acknowledged: the
    /// broker delivers it again to the next start).
    pub(crate) async fn take(&self, payload: &[u8]) -> Result<Outcome, String> {
        let event = match parse_event(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(broker = %self.name(), error = %e, "a message that is not a CloudEvent was refused");
                bump(&self.stats().taken, TAKEN, "refused");
                return Ok(Outcome::Refuse);
            }
        };
        let mut pause = Duration::from_millis(100);
        loop {
            match self
                .engine
                .publish_event_once(Value::Object(event.clone()))
                .await
            {
                Ok(found) => {
                    let outcome = if found.is_some() {
                        "delivered"
                    } else {
                        "duplicate"
                    };
                    bump(&self.stats().taken, TAKEN, outcome);
                    failpoint("broker-after-record");
                    return Ok(Outcome::Ack);
                }
                Err(crate::engine::EngineError::Unavailable) => {
                    return Err("the engine is shutting down".into());
                }
                Err(e) => {
                    tracing::warn!(broker = %self.name(), error = %e, "recording a broker's event failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A crash injected by the kill -9 tests at a named point (`KFLOW_FAILPOINT`); never set in
/// production.
pub(crate) fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if POINT
        .get_or_init(|| std::env::var("KFLOW_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("kflow: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// The largest message taken as an event (a posted event's default limit too).
pub(super) const MAX_MESSAGE: usize = 1 << 20;

/// A message's body as a CloudEvent (structured mode): a JSON object with `specversion` 1.0,
/// `id`, `source` and `type` as non-empty strings.
pub(super) fn parse_event(payload: &[u8]) -> Result<Map<String, Value>, String> {
    if payload.len() > MAX_MESSAGE {
        return Err(format!(
            "the message is {} bytes, more than the {MAX_MESSAGE} an event may be",
            payload.len()
        ));
    }
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(m) = v else {
        return Err("the body is not a JSON object".into());
    };
    for k in ["specversion", "id", "source", "type"] {
        match m.get(k) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return Err(format!("the CloudEvent has no {k}")),
        }
    }
    if m["specversion"] != "1.0" {
        return Err(format!("specversion {} is not 1.0", m["specversion"]));
    }
    Ok(m)
}

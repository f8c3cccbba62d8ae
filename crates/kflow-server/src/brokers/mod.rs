//! Message brokers (`brokers:` in the config): CloudEvents taken from NATS JetStream, RabbitMQ
//! (AMQP 0-9-1) or MQTT 3.1.1 into kflow's event intake, and the events `emit` tasks publish
//! sent out to them.
//!
//! Taking: a message is the CloudEvent in structured mode (its JSON). It is recorded once by
//! its `source` and `id` (`Engine::publish_event_once`), offered to every `listen` and
//! `schedule.on` like a posted event, and acknowledged to the broker only after that commit. A
//! crash before the acknowledgement makes the broker deliver it again; the second copy finds
//! its record and is acknowledged without being offered again. A message that is not a
//! CloudEvent is refused (NATS: terminated, AMQP: rejected without requeue, MQTT:
//! acknowledged and dropped), logged and counted; it is never retried forever.
//!
//! Publishing: an emitted event whose type a broker's `publish.types` takes is published after
//! the commit that records the emit, from its work row, with the event's `id` as the message id
//! (JetStream de-duplicates by it; AMQP carries it as `message-id`; consumers of any broker
//! can de-duplicate by the CloudEvent's `source` and `id`). The `emit` task completes when the
//! broker confirmed the message (JetStream's ack, a publisher confirm, MQTT's PUBACK). A broker
//! that is down is retried with back-off for as long as it takes; a broker that refuses the
//! message (no stream for the subject, a nack) fails the task with a communication error.
//! After a crash the emit's row is still there: the same event, same id, is published again.

mod amqp;
mod intake;
mod mqtt;
mod nats;
mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::engine::Engine;
pub(crate) use intake::{Intake, Outcome, failpoint};
use spec::{Address, Endpoint, Kind, parse_url};
pub use spec::{BrokerSpec, ConsumeSpec, PublishSpec, check};

/// Every broker of the config, connected lazily: the publishers emits use, the consumers
/// [`Brokers::spawn`] starts.
#[derive(Default)]
pub struct Brokers {
    brokers: Vec<Broker>,
    /// Publishers to the servers of AsyncAPI documents (`call asyncapi`), by address and user.
    adhoc: std::sync::Mutex<std::collections::HashMap<String, Arc<Publisher>>>,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_list()
            .entries(self.brokers.iter().map(|b| b.endpoint.label()))
            .finish()
    }
}

struct Broker {
    endpoint: Endpoint,
    consume: Option<ConsumeSpec>,
    publish: Option<PublishSpec>,
    publisher: Publisher,
    stats: Stats,
}

/// A broker's counts, read into `/metrics` at the scrape.
#[derive(Default)]
pub(super) struct Stats {
    connected: std::sync::atomic::AtomicBool,
    /// delivered, duplicate, refused.
    taken: [std::sync::atomic::AtomicU64; 3],
    /// published, unreachable, refused.
    published: [std::sync::atomic::AtomicU64; 3],
}

pub(super) const TAKEN: [&str; 3] = ["delivered", "duplicate", "refused"];
const PUBLISHED: [&str; 3] = ["published", "unreachable", "refused"];

pub(super) fn bump(counts: &[std::sync::atomic::AtomicU64; 3], names: [&str; 3], outcome: &str) {
    if let Some(i) = names.iter().position(|n| *n == outcome) {
        counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Publisher {
    Nats(nats::Publisher),
    Amqp(amqp::Publisher),
    Mqtt(mqtt::Publisher),
}

/// One message to publish.
struct Message<'a> {
    /// AMQP only.
    exchange: &'a str,
    /// The subject, routing key or topic.
    address: &'a str,
    id: &'a str,
    body: &'a [u8],
    /// NATS only.
    headers: &'a Map<String, Value>,
}

impl Publisher {
    /// Publishes until the broker confirms (`Ok(true)`), refuses (`Err`, its reason), or
    /// cannot be reached and `wanted` says to stop (`Ok(false)`); tries again with back-off
    /// (100 ms doubling to 5 s). `counted` hears each outcome (published, refused,
    /// unreachable).
    async fn send_until_confirmed(
        &self,
        endpoint: &Endpoint,
        m: &Message<'_>,
        wanted: &impl Fn() -> bool,
        counted: impl Fn(&str),
    ) -> Result<bool, String> {
        let mut pause = Duration::from_millis(100);
        loop {
            let r = match self {
                Publisher::Nats(n) => n.publish(m.address, m.id, m.body, m.headers).await,
                Publisher::Amqp(a) => a.publish(m.exchange, m.address, m.id, m.body).await,
                Publisher::Mqtt(q) => q.publish(m.address, m.body).await,
            };
            match r {
                Ok(()) => {
                    counted("published");
                    return Ok(true);
                }
                Err(PublishError::Refused(e)) => {
                    counted("refused");
                    return Err(e);
                }
                Err(PublishError::Unreachable(e)) => {
                    counted("unreachable");
                    tracing::warn!(broker = %endpoint.label(), error = %e, "publishing failed; trying again");
                    if !wanted() {
                        return Ok(false);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Why a publish did not happen.
#[derive(Debug)]
pub enum PublishError {
    /// The broker cannot be reached (tried again later).
    Unreachable(String),
    /// The broker refused the message (the task fails).
    Refused(String),
}

impl Brokers {
    /// The brokers of a checked config; passwords are read from `secrets` by name.
    pub fn new(specs: &BTreeMap<String, BrokerSpec>, secrets: &Value) -> Result<Brokers, String> {
        check(specs)?;
        let mut brokers = Vec::new();
        for (name, spec) in specs {
            let password = match &spec.password_secret {
                None => None,
                Some(s) => Some(
                    secrets
                        .get(s)
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            format!(
                                "brokers.{name}.password_secret: the secrets file has no text secret {s:?}"
                            )
                        })?
                        .to_string(),
                ),
            };
            let endpoint = Endpoint {
                name: name.clone(),
                address: parse_url(&spec.url)?,
                username: spec.username.clone(),
                password,
            };
            let publisher = match endpoint.address.kind {
                Kind::Nats => Publisher::Nats(nats::Publisher::new(endpoint.clone())),
                Kind::Amqp => Publisher::Amqp(amqp::Publisher::new(endpoint.clone())),
                Kind::Mqtt => Publisher::Mqtt(mqtt::Publisher::new(endpoint.clone())),
            };
            brokers.push(Broker {
                endpoint,
                consume: spec.consume.clone(),
                publish: spec.publish.clone(),
                publisher,
                stats: Stats::default(),
            });
        }
        Ok(Brokers {
            brokers,
            adhoc: Default::default(),
        })
    }

    /// Publishes one `call asyncapi` message to `target` (JSON payload; headers over NATS),
    /// trying again with back-off while the broker cannot be reached and `wanted` says so.
    /// `Ok(false)`: given up.
    pub async fn publish_to(
        &self,
        target: &kflow_tasks::asyncapi::Target,
        auth: Option<&kflow_core::effect::Auth>,
        id: &str,
        payload: &Value,
        headers: &Map<String, Value>,
        wanted: impl Fn() -> bool,
    ) -> Result<bool, kflow_core::WfError> {
        use kflow_core::WfError;
        let bad = |m: String| WfError::configuration(format!("call asyncapi: {m}"));
        let kind = match target.protocol.as_str() {
            "nats" => Kind::Nats,
            "amqp" => Kind::Amqp,
            _ => Kind::Mqtt,
        };
        if kind != Kind::Nats && !headers.is_empty() {
            return Err(bad(format!(
                "message headers are sent over nats only; server {} is {}",
                target.server, target.protocol
            )));
        }
        let (username, password) = match auth {
            None => (None, None),
            Some(kflow_core::effect::Auth::Basic { username, password }) => {
                (Some(username.clone()), Some(password.clone()))
            }
            Some(_) => {
                return Err(bad(
                    "only basic authentication reaches a broker (its user and password)".into(),
                ));
            }
        };
        let endpoint = Endpoint {
            name: format!("asyncapi:{}", target.server),
            address: Address {
                kind,
                host: target.host.clone(),
                port: target.port.unwrap_or(match kind {
                    Kind::Nats => 4222,
                    Kind::Amqp => 5672,
                    Kind::Mqtt => 1883,
                }),
                vhost: if target.pathname.is_empty() {
                    "/".into()
                } else {
                    target.pathname.clone()
                },
            },
            username,
            password,
        };
        let key = format!(
            "{}|{}|{}",
            endpoint.label(),
            endpoint.address.vhost,
            endpoint.username.as_deref().unwrap_or_default()
        );
        let publisher = self
            .adhoc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| {
                Arc::new(match kind {
                    Kind::Nats => Publisher::Nats(nats::Publisher::new(endpoint.clone())),
                    Kind::Amqp => Publisher::Amqp(amqp::Publisher::new(endpoint.clone())),
                    Kind::Mqtt => Publisher::Mqtt(mqtt::Publisher::new(endpoint.clone())),
                })
            })
            .clone();
        let body = serde_json::to_vec(payload).unwrap_or_default();
        let message = Message {
            exchange: "",
            address: &target.address,
            id,
            body: &body,
            headers,
        };
        publisher
            .send_until_confirmed(&endpoint, &message, &wanted, |_| {})
            .await
            .map_err(|e| {
                WfError::communication(
                    502,
                    format!(
                        "call asyncapi: {} refused the message for {}: {e}",
                        endpoint.label(),
                        target.address
                    ),
                )
            })
    }

    pub fn is_empty(&self) -> bool {
        self.brokers.is_empty()
    }

    /// The counts into `/metrics` (called at the scrape).
    pub(crate) fn render_metrics(&self, m: &crate::metrics::Metrics) {
        use std::sync::atomic::Ordering::Relaxed;
        for b in &self.brokers {
            let broker = b.endpoint.name.clone();
            if b.consume.is_some() {
                m.broker_connected
                    .get_or_create(&crate::metrics::BrokerLabels {
                        broker: broker.clone(),
                    })
                    .set(i64::from(b.stats.connected.load(Relaxed)));
            }
            for (family, counts, names) in [
                (&m.broker_messages, &b.stats.taken, TAKEN),
                (&m.broker_published, &b.stats.published, PUBLISHED),
            ] {
                for (i, outcome) in names.into_iter().enumerate() {
                    let c = family.get_or_create(&crate::metrics::BrokerOutcomeLabels {
                        broker: broker.clone(),
                        outcome,
                    });
                    c.inc_by(counts[i].load(Relaxed).saturating_sub(c.get()));
                }
            }
        }
    }

    /// Whether an emitted event goes to at least one broker.
    pub fn publishes(&self, event: &Value) -> bool {
        self.brokers.iter().any(|b| b.takes(event))
    }

    /// Publishes `event` to every broker that takes it, each until it confirms; a broker that
    /// cannot be reached is tried again with back-off (up to 5 s apart) while `keep_trying`
    /// says so. `Ok(false)`: given up (not every broker confirmed); `Err`: a broker refused it.
    pub async fn publish(
        &self,
        event: &Value,
        keep_trying: impl Fn() -> bool,
    ) -> Result<bool, String> {
        let payload = serde_json::to_vec(event).unwrap_or_default();
        let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
        for b in self.brokers.iter().filter(|b| b.takes(event)) {
            let Some(p) = &b.publish else { continue };
            let ty = event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let subject = p.subject.replace("{type}", ty);
            let message = Message {
                exchange: p.exchange.as_deref().unwrap_or(""),
                address: &subject,
                id,
                body: &payload,
                headers: &Map::new(),
            };
            let sent = b
                .publisher
                .send_until_confirmed(&b.endpoint, &message, &keep_trying, |outcome| {
                    bump(&b.stats.published, PUBLISHED, outcome)
                })
                .await
                .map_err(|e| {
                    format!(
                        "emit: {} refused the event for {subject}: {e}",
                        b.endpoint.label()
                    )
                })?;
            if !sent {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Starts a consumer for every broker with `consume:`; each reconnects with back-off.
    pub fn spawn(self: &Arc<Self>, engine: Engine) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (i, b) in self.brokers.iter().enumerate() {
            let Some(c) = b.consume.clone() else { continue };
            let (brokers, engine) = (self.clone(), engine.clone());
            tasks.push(tokio::spawn(async move {
                let endpoint = brokers.brokers[i].endpoint.clone();
                let intake = Intake {
                    engine,
                    brokers: brokers.clone(),
                    index: i,
                };
                let mut pause = Duration::from_millis(200);
                loop {
                    let started = std::time::Instant::now();
                    let r = match endpoint.address.kind {
                        Kind::Nats => nats::consume(&endpoint, &c, &intake).await,
                        Kind::Amqp => amqp::consume(&endpoint, &c, &intake).await,
                        Kind::Mqtt => mqtt::consume(&endpoint, &c, &intake).await,
                    };
                    intake.connected(false);
                    if let Err(e) = r {
                        tracing::warn!(broker = %endpoint.label(), error = %e, "consuming stopped; connecting again");
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        pause = Duration::from_millis(200);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }));
        }
        tasks
    }
}

impl Broker {
    fn takes(&self, event: &Value) -> bool {
        let Some(p) = &self.publish else { return false };
        let ty = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        p.types.is_empty()
            || p.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => ty.starts_with(prefix),
                None => t == ty,
            })
    }
}

#[cfg(test)]
mod tests;

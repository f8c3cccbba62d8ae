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
mod mqtt;
mod nats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::Engine;

/// One broker of `brokers:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// `nats://HOST:PORT`, `amqp://HOST:PORT[/VHOST]` or `mqtt://HOST:PORT`: the scheme picks
    /// the protocol. Never a password: name it with `password_secret`.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    /// The name of the password in the server's secrets file.
    #[serde(default)]
    pub password_secret: Option<String>,
    #[serde(default)]
    pub consume: Option<ConsumeSpec>,
    #[serde(default)]
    pub publish: Option<PublishSpec>,
}

/// Where kflow takes CloudEvents from.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumeSpec {
    /// NATS: the JetStream stream (created with `subjects` when it does not exist).
    #[serde(default)]
    pub stream: Option<String>,
    /// NATS: the stream's subjects; MQTT: the topic filters subscribed to (QoS 1).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// AMQP: the queue (declared durable).
    #[serde(default)]
    pub queue: Option<String>,
    /// NATS: the durable consumer's name; MQTT: the client id of the persistent session;
    /// AMQP: the consumer tag. Default `kflow`.
    #[serde(default)]
    pub durable: Option<String>,
}

/// Where emitted events go.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// NATS subject, MQTT topic or AMQP routing key; `{type}` is replaced by the event's type.
    pub subject: String,
    /// AMQP: the exchange (default: the default exchange, routing to the queue named by the key).
    #[serde(default)]
    pub exchange: Option<String>,
    /// The event types published here (`*` at the end matches a prefix); default: all.
    #[serde(default)]
    pub types: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nats,
    Amqp,
    Mqtt,
}

/// A broker's place, checked: host, port and, for AMQP, the virtual host.
#[derive(Debug, Clone)]
struct Address {
    kind: Kind,
    host: String,
    port: u16,
    vhost: String,
}

/// What connecting needs: the address, the credentials (the password read from the secrets).
#[derive(Debug, Clone)]
struct Endpoint {
    name: String,
    address: Address,
    username: Option<String>,
    password: Option<String>,
}

impl Endpoint {
    fn label(&self) -> String {
        let scheme = match self.address.kind {
            Kind::Nats => "nats",
            Kind::Amqp => "amqp",
            Kind::Mqtt => "mqtt",
        };
        format!(
            "{scheme}://{}:{} ({})",
            self.address.host, self.address.port, self.name
        )
    }
}

/// Checks `brokers:` of a config file; every message names the broker and the field.
pub fn check(brokers: &BTreeMap<String, BrokerSpec>) -> Result<(), String> {
    for (name, spec) in brokers {
        check_one(name, spec).map_err(|e| format!("brokers.{name}.{e}"))?;
    }
    Ok(())
}

fn check_one(name: &str, spec: &BrokerSpec) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("name: use letters, digits, '-' and '_'".into());
    }
    let address = parse_url(&spec.url).map_err(|e| format!("url: {e}"))?;
    if spec.consume.is_none() && spec.publish.is_none() {
        return Err("consume: give consume:, publish: or both".into());
    }
    if let Some(c) = &spec.consume {
        match address.kind {
            Kind::Nats => {
                let stream = c.stream.as_deref().unwrap_or_default();
                if stream.is_empty() || stream.contains(['.', '*', '>', ' ']) {
                    return Err(
                        "consume.stream: name the JetStream stream (no '.', '*', '>' or spaces)"
                            .into(),
                    );
                }
                if c.subjects.is_empty() {
                    return Err("consume.subjects: name the stream's subjects".into());
                }
            }
            Kind::Amqp => {
                if c.queue.as_deref().unwrap_or_default().is_empty() {
                    return Err("consume.queue: name the queue".into());
                }
            }
            Kind::Mqtt => {
                if c.subjects.is_empty() {
                    return Err("consume.subjects: name the topic filters".into());
                }
            }
        }
        if let Some(s) = c.subjects.iter().find(|s| s.trim().is_empty()) {
            return Err(format!("consume.subjects: {s:?} is empty"));
        }
    }
    if let Some(p) = &spec.publish {
        if p.subject.trim().is_empty() {
            return Err("publish.subject: name where events go".into());
        }
        if p.exchange.is_some() && address.kind != Kind::Amqp {
            return Err("publish.exchange: only AMQP brokers have exchanges".into());
        }
        // kflow's own emits already reach its listeners: taking them back from the broker
        // would offer them twice.
        if let Some(c) = &spec.consume {
            let loops = match address.kind {
                Kind::Nats | Kind::Mqtt => c
                    .subjects
                    .iter()
                    .any(|f| subject_matches(f, &p.subject, address.kind)),
                Kind::Amqp => {
                    p.exchange.as_deref().unwrap_or_default().is_empty()
                        && c.queue.as_deref() == Some(p.subject.as_str())
                }
            };
            if loops {
                return Err(format!(
                    "publish.subject: {:?} is also consumed here: emitted events already reach this server's listeners, and would be taken back a second time",
                    p.subject
                ));
            }
        }
    }
    Ok(())
}

fn parse_url(url: &str) -> Result<Address, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (nats://, amqp:// or mqtt://)"))?;
    let (kind, default_port) = match scheme {
        "nats" => (Kind::Nats, 4222),
        "amqp" => (Kind::Amqp, 5672),
        "mqtt" => (Kind::Mqtt, 1883),
        other => {
            return Err(format!(
                "{other}:// is not a broker kflow speaks (nats://, amqp:// or mqtt://; TLS is not supported yet)"
            ));
        }
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(
            "credentials do not belong in the URL: give username: and password_secret: (the password's name in the secrets file)"
                .into(),
        );
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port"))?,
        ),
        None => (authority, default_port),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if path.contains(['?', '#']) || (kind != Kind::Amqp && !path.is_empty()) {
        return Err(format!(
            "{url:?}: only an AMQP URL has a path (its virtual host)"
        ));
    }
    Ok(Address {
        kind,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        vhost: if path.is_empty() {
            "/".into()
        } else {
            path.replace("%2f", "/").replace("%2F", "/")
        },
    })
}

/// Whether a NATS subject filter (`*` one token, `>` the rest) or an MQTT topic filter (`+`,
/// `#`) takes `subject`; `{type}` in the subject counts as any one token.
fn subject_matches(filter: &str, subject: &str, kind: Kind) -> bool {
    let (sep, one, rest) = match kind {
        Kind::Mqtt => ('/', "+", "#"),
        _ => ('.', "*", ">"),
    };
    let mut f = filter.split(sep);
    let mut s = subject.split(sep);
    loop {
        match (f.next(), s.next()) {
            (Some(x), Some(_)) if x == rest => return true,
            (Some(x), Some(y)) if x == one || x == y || y.contains("{type}") => {}
            (None, None) => return true,
            (Some(x), None) if kind == Kind::Mqtt && x == rest => return true,
            _ => return false,
        }
    }
}

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
struct Stats {
    connected: std::sync::atomic::AtomicBool,
    /// delivered, duplicate, refused.
    taken: [std::sync::atomic::AtomicU64; 3],
    /// published, unreachable, refused.
    published: [std::sync::atomic::AtomicU64; 3],
}

const TAKEN: [&str; 3] = ["delivered", "duplicate", "refused"];
const PUBLISHED: [&str; 3] = ["published", "unreachable", "refused"];

fn bump(counts: &[std::sync::atomic::AtomicU64; 3], names: [&str; 3], outcome: &str) {
    if let Some(i) = names.iter().position(|n| *n == outcome) {
        counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Publisher {
    Nats(nats::Publisher),
    Amqp(amqp::Publisher),
    Mqtt(mqtt::Publisher),
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
        let mut pause = Duration::from_millis(100);
        loop {
            let r = match &*publisher {
                Publisher::Nats(n) => n.publish(&target.address, id, &body, headers).await,
                Publisher::Amqp(a) => a.publish("", &target.address, id, &body).await,
                Publisher::Mqtt(m) => m.publish(&target.address, &body).await,
            };
            match r {
                Ok(()) => return Ok(true),
                Err(PublishError::Refused(e)) => {
                    return Err(WfError::communication(
                        502,
                        format!(
                            "call asyncapi: {} refused the message for {}: {e}",
                            endpoint.label(),
                            target.address
                        ),
                    ));
                }
                Err(PublishError::Unreachable(e)) => {
                    tracing::warn!(broker = %endpoint.label(), error = %e, "publishing a call asyncapi message failed; trying again");
                    if !wanted() {
                        return Ok(false);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
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
            let mut pause = Duration::from_millis(100);
            loop {
                let r = match &b.publisher {
                    Publisher::Nats(n) => n.publish(&subject, id, &payload, &Map::new()).await,
                    Publisher::Amqp(a) => {
                        a.publish(p.exchange.as_deref().unwrap_or(""), &subject, id, &payload)
                            .await
                    }
                    Publisher::Mqtt(m) => m.publish(&subject, &payload).await,
                };
                match r {
                    Ok(()) => {
                        bump(&b.stats.published, PUBLISHED, "published");
                        break;
                    }
                    Err(PublishError::Refused(e)) => {
                        bump(&b.stats.published, PUBLISHED, "refused");
                        return Err(format!(
                            "emit: {} refused the event for {subject}: {e}",
                            b.endpoint.label()
                        ));
                    }
                    Err(PublishError::Unreachable(e)) => {
                        bump(&b.stats.published, PUBLISHED, "unreachable");
                        tracing::warn!(broker = %b.endpoint.label(), error = %e, "publishing an emitted event failed; trying again");
                        if !keep_trying() {
                            return Ok(false);
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
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

/// What a consumer does with a message: the outcome tells it to acknowledge, refuse, or
/// leave it for the broker to deliver again.
pub(crate) struct Intake {
    engine: Engine,
    brokers: Arc<Brokers>,
    index: usize,
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
const MAX_MESSAGE: usize = 1 << 20;

/// A message's body as a CloudEvent (structured mode): a JSON object with `specversion` 1.0,
/// `id`, `source` and `type` as non-empty strings.
fn parse_event(payload: &[u8]) -> Result<Map<String, Value>, String> {
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

#[cfg(test)]
mod tests;

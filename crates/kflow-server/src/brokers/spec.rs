//! The `brokers:` config: its shape, its checks (every mistake named by broker and field),
//! the broker's address, and subject matching.

use std::collections::BTreeMap;

use serde::Deserialize;

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
pub(super) enum Kind {
    Nats,
    Amqp,
    Mqtt,
}

/// A broker's place, checked: host, port and, for AMQP, the virtual host.
#[derive(Debug, Clone)]
pub(super) struct Address {
    pub(super) kind: Kind,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) vhost: String,
}

/// What connecting needs: the address, the credentials (the password read from the secrets).
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) name: String,
    pub(super) address: Address,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
}

impl Endpoint {
    pub(super) fn label(&self) -> String {
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

pub(super) fn parse_url(url: &str) -> Result<Address, String> {
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
pub(super) fn subject_matches(filter: &str, subject: &str, kind: Kind) -> bool {
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

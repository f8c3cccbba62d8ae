//! NATS JetStream: a durable pull consumer on a stream (created when missing), and publishes
//! with the event's id as `Nats-Msg-Id` (JetStream drops a second copy inside its duplicate
//! window) and the stream's ack awaited.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, context::PublishErrorKind, stream};
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::{ConsumeSpec, Endpoint, Intake, Outcome, PublishError};

async fn connect(e: &Endpoint) -> Result<async_nats::Client, String> {
    let mut o = async_nats::ConnectOptions::new()
        .name("kflow")
        .connection_timeout(Duration::from_secs(5));
    if let Some(u) = &e.username {
        o = o.user_and_password(u.clone(), e.password.clone().unwrap_or_default());
    }
    o.connect(format!("{}:{}", e.address.host, e.address.port))
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", e.label()))
}

pub(super) struct Publisher {
    endpoint: Endpoint,
    /// Connected on first use; the client reconnects by itself after that.
    context: Mutex<Option<jetstream::Context>>,
}

impl Publisher {
    pub(super) fn new(endpoint: Endpoint) -> Publisher {
        Publisher {
            endpoint,
            context: Mutex::new(None),
        }
    }

    pub(super) async fn publish(
        &self,
        subject: &str,
        id: &str,
        payload: &[u8],
        headers: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), PublishError> {
        let js = {
            let mut slot = self.context.lock().await;
            match &*slot {
                Some(js) => js.clone(),
                None => {
                    let client = connect(&self.endpoint)
                        .await
                        .map_err(PublishError::Unreachable)?;
                    let mut js = jetstream::new(client);
                    js.set_timeout(Duration::from_secs(5));
                    slot.insert(js).clone()
                }
            }
        };
        let mut message = jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(payload))
            .message_id(id);
        for (k, v) in headers {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            message = message.header(k.as_str(), v.as_str());
        }
        let sent = js.send_publish(subject.to_string(), message).await;
        let acked = match sent {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        acked.map_err(|e| match e.kind() {
            PublishErrorKind::StreamNotFound => {
                PublishError::Refused(format!("no JetStream stream takes the subject {subject}"))
            }
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => PublishError::Unreachable(e.to_string()),
            _ => PublishError::Refused(e.to_string()),
        })
    }
}

/// Consumes until the connection or the consumer fails.
pub(super) async fn consume(e: &Endpoint, c: &ConsumeSpec, intake: &Intake) -> Result<(), String> {
    let client = connect(e).await?;
    let js = jetstream::new(client);
    let name = c.stream.clone().unwrap_or_default();
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: c.subjects.clone(),
            ..Default::default()
        })
        .await
        .map_err(|err| format!("stream {name}: {err}"))?;
    let durable = c.durable.clone().unwrap_or_else(|| "kflow".into());
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|err| format!("consumer {durable} of {name}: {err}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| format!("consumer {durable} of {name}: {err}"))?;
    intake.connected(true);
    while let Some(m) = messages.next().await {
        let m = m.map_err(|err| format!("receiving: {err}"))?;
        let ack = match intake.take(&m.payload).await? {
            Outcome::Ack => AckKind::Ack,
            Outcome::Refuse => AckKind::Term,
        };
        // After the commit: a crash before this point makes JetStream deliver it again.
        m.double_ack_with(ack)
            .await
            .map_err(|err| format!("acknowledging: {err}"))?;
    }
    Err("the message stream ended".into())
}

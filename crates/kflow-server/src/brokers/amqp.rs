//! RabbitMQ (AMQP 0-9-1): a durable queue consumed with manual acknowledgements (a prefetch of
//! 32), and publishes that are persistent, mandatory (an unroutable message is refused, not
//! dropped) and confirmed by the broker (publisher confirms).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments,
    BasicRejectArguments, Channel, ConfirmSelectArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use tokio::sync::{Mutex, oneshot};

type AmqpResult<T> = std::result::Result<T, amqprs::error::Error>;

use super::{ConsumeSpec, Endpoint, Intake, Outcome, PublishError};

async fn open(e: &Endpoint) -> Result<(Connection, Channel), String> {
    let mut args = OpenConnectionArguments::new(
        &e.address.host,
        e.address.port,
        e.username.as_deref().unwrap_or("guest"),
        e.password.as_deref().unwrap_or("guest"),
    );
    args.virtual_host(&e.address.vhost)
        .connection_name("kflow")
        .heartbeat(10);
    let connect = Connection::open(&args);
    let connection = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| format!("cannot connect to {}: no answer within 5 s", e.label()))?
        .map_err(|err| format!("cannot connect to {}: {err}", e.label()))?;
    let channel = connection
        .open_channel(None)
        .await
        .map_err(|err| format!("{}: opening a channel: {err}", e.label()))?;
    Ok((connection, channel))
}

type Done = oneshot::Sender<Result<(), PublishError>>;

/// Confirms not yet received, by delivery tag, with the message's id; ids the broker returned
/// as unroutable (a return comes before its confirm).
#[derive(Default)]
struct Confirms {
    pending: BTreeMap<u64, (String, Done)>,
    returned: HashSet<String>,
}

struct Callback(Arc<std::sync::Mutex<Confirms>>);

impl Callback {
    fn settle(&self, tag: u64, multiple: bool, nacked: bool) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let tags: Vec<u64> = if multiple {
            c.pending.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        for t in tags {
            let Some((id, done)) = c.pending.remove(&t) else {
                continue;
            };
            let r = if c.returned.remove(&id) {
                Err(PublishError::Refused(
                    "no queue is bound for this routing key (the message was returned)".into(),
                ))
            } else if nacked {
                Err(PublishError::Refused(
                    "the broker did not take it (nack)".into(),
                ))
            } else {
                Ok(())
            };
            let _ = done.send(r);
        }
    }
}

#[async_trait::async_trait]
impl ChannelCallback for Callback {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> AmqpResult<()> {
        tracing::debug!(reason = %close, "AMQP publishing channel closed");
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> AmqpResult<()> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> AmqpResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.settle(ack.delivery_tag(), ack.mutiple(), false);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.settle(nack.delivery_tag(), nack.multiple(), true);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, p: BasicProperties, _: Vec<u8>) {
        if let Some(id) = p.message_id() {
            let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
            c.returned.insert(id.clone());
        }
    }
}

struct Open {
    _connection: Connection,
    channel: Channel,
    next_tag: u64,
    confirms: Arc<std::sync::Mutex<Confirms>>,
}

pub(super) struct Publisher {
    endpoint: Endpoint,
    open: Mutex<Option<Open>>,
}

impl Publisher {
    pub(super) fn new(endpoint: Endpoint) -> Publisher {
        Publisher {
            endpoint,
            open: Mutex::new(None),
        }
    }

    pub(super) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let wait = {
            let mut slot = self.open.lock().await;
            if !slot.as_ref().is_some_and(|o| o.channel.is_open()) {
                *slot = None;
                let (connection, channel) = open(&self.endpoint)
                    .await
                    .map_err(PublishError::Unreachable)?;
                let confirms = Arc::new(std::sync::Mutex::new(Confirms::default()));
                channel
                    .register_callback(Callback(confirms.clone()))
                    .await
                    .map_err(|e| PublishError::Unreachable(e.to_string()))?;
                channel
                    .confirm_select(ConfirmSelectArguments::default())
                    .await
                    .map_err(|e| PublishError::Unreachable(e.to_string()))?;
                *slot = Some(Open {
                    _connection: connection,
                    channel,
                    next_tag: 0,
                    confirms,
                });
            }
            let Some(o) = slot.as_mut() else {
                return Err(PublishError::Unreachable("not connected".into()));
            };
            o.next_tag += 1;
            let (done, wait) = oneshot::channel();
            o.confirms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending
                .insert(o.next_tag, (id.to_string(), done));
            let props = BasicProperties::default()
                .with_message_id(id)
                .with_content_type("application/cloudevents+json")
                .with_persistence(true)
                .finish();
            let mut args = BasicPublishArguments::new(exchange, routing_key);
            args.mandatory(true);
            if let Err(e) = o.channel.basic_publish(props, payload.to_vec(), args).await {
                *slot = None;
                return Err(PublishError::Unreachable(e.to_string()));
            }
            wait
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PublishError::Unreachable("the channel closed".into())),
            Err(_) => {
                // A lost confirm: start afresh (the message may be published twice; its id
                // tells the copies apart).
                *self.open.lock().await = None;
                Err(PublishError::Unreachable("no confirm within 10 s".into()))
            }
        }
    }
}

/// Consumes until the connection or the channel closes.
pub(super) async fn consume(e: &Endpoint, c: &ConsumeSpec, intake: &Intake) -> Result<(), String> {
    let (_connection, channel) = open(e).await?;
    let queue = c.queue.clone().unwrap_or_default();
    channel
        .queue_declare(QueueDeclareArguments::durable_client_named(&queue))
        .await
        .map_err(|err| format!("declaring the queue {queue}: {err}"))?;
    channel
        .basic_qos(BasicQosArguments::new(0, 32, false))
        .await
        .map_err(|err| err.to_string())?;
    let tag = c.durable.clone().unwrap_or_else(|| "kflow".into());
    let mut args = BasicConsumeArguments::new(&queue, &tag);
    args.manual_ack(true);
    let (_, mut rx) = channel
        .basic_consume_rx(args)
        .await
        .map_err(|err| format!("consuming {queue}: {err}"))?;
    intake.connected(true);
    while let Some(m) = rx.recv().await {
        let (Some(deliver), Some(content)) = (m.deliver, m.content) else {
            continue;
        };
        let tag = deliver.delivery_tag();
        // After the commit: a crash before this point makes the broker deliver it again.
        let r = match intake.take(&content).await? {
            Outcome::Ack => channel.basic_ack(BasicAckArguments::new(tag, false)).await,
            Outcome::Refuse => {
                channel
                    .basic_reject(BasicRejectArguments::new(tag, false))
                    .await
            }
        };
        r.map_err(|err| format!("acknowledging: {err}"))?;
    }
    Err(format!("{}: the channel closed", e.label()))
}

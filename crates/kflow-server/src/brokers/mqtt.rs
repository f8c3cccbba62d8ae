//! MQTT 3.1.1: a persistent session (`clean_session` false, a fixed client id) subscribed at
//! QoS 1 with manual acknowledgements, so a message whose PUBACK was never sent comes again;
//! publishes at QoS 1, confirmed by the broker's PUBACK.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{ConsumeSpec, Endpoint, Intake, Outcome, PublishError};

/// Largest message either way (the library's default is 10 KiB).
const MAX_PACKET: usize = 1 << 20;

fn options(e: &Endpoint, client_id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, e.address.host.clone(), e.address.port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(clean)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(u) = &e.username {
        o.set_credentials(u.clone(), e.password.clone().unwrap_or_default());
    }
    o
}

type Done = oneshot::Sender<Result<(), PublishError>>;

struct Request {
    topic: String,
    payload: Vec<u8>,
    done: Done,
}

pub(super) struct Publisher {
    endpoint: Endpoint,
    /// The connection task's queue, started on first use.
    tx: Mutex<Option<mpsc::Sender<Request>>>,
}

impl Publisher {
    pub(super) fn new(endpoint: Endpoint) -> Publisher {
        Publisher {
            endpoint,
            tx: Mutex::new(None),
        }
    }

    pub(super) async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), PublishError> {
        let tx = {
            let mut slot = self.tx.lock().await;
            match &*slot {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(64);
                    tokio::spawn(publishing(self.endpoint.clone(), rx));
                    slot.insert(tx).clone()
                }
            }
        };
        let (done, wait) = oneshot::channel();
        let unreachable =
            |m: &str| PublishError::Unreachable(format!("{}: {m}", self.endpoint.label()));
        tx.send(Request {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            done,
        })
        .await
        .map_err(|_| unreachable("the connection task ended"))?;
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(unreachable("the connection was lost")),
            Err(_) => Err(unreachable("no PUBACK within 10 s")),
        }
    }
}

/// One connection at a time; a failed one fails what it holds (the callers try again) and a
/// new one is made.
async fn publishing(e: Endpoint, mut rx: mpsc::Receiver<Request>) {
    let id = format!(
        "kflow-pub-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    loop {
        let (client, events) = AsyncClient::new(options(&e, &id, true), 64);
        let failed = publish_on(&client, events, &mut rx).await;
        match failed {
            None => return,
            Some(err) => {
                tracing::debug!(broker = %e.label(), error = %err, "MQTT publishing connection lost");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `None`: every sender is gone; `Some`: the connection failed.
async fn publish_on(
    client: &AsyncClient,
    mut events: EventLoop,
    rx: &mut mpsc::Receiver<Request>,
) -> Option<String> {
    // Publishes are numbered by the broker's packet ids in the order they go out.
    let mut queued: VecDeque<Done> = VecDeque::new();
    let mut sent: HashMap<u16, Done> = HashMap::new();
    let error = loop {
        tokio::select! {
            req = rx.recv() => {
                let Some(r) = req else { return None };
                match client.try_publish(r.topic, QoS::AtLeastOnce, false, r.payload) {
                    Ok(()) => queued.push_back(r.done),
                    Err(err) => {
                        let _ = r.done.send(Err(PublishError::Unreachable(err.to_string())));
                    }
                }
            }
            ev = events.poll() => match ev {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(d) = queued.pop_front() {
                        sent.insert(pkid, d);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    if let Some(d) = sent.remove(&a.pkid) {
                        let _ = d.send(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(err) => break err.to_string(),
            }
        }
    };
    for d in queued.into_iter().chain(sent.into_values()) {
        let _ = d.send(Err(PublishError::Unreachable(error.clone())));
    }
    Some(error)
}

/// Consumes until the connection fails.
pub(super) async fn consume(e: &Endpoint, c: &ConsumeSpec, intake: &Intake) -> Result<(), String> {
    let id = c
        .durable
        .clone()
        .unwrap_or_else(|| format!("kflow-{}", e.name));
    let mut o = options(e, &id, false);
    o.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(o, 64);
    let (tx, mut rx) = mpsc::channel::<rumqttc::Publish>(64);
    let polling = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let topics = c
                        .subjects
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    client
                        .try_subscribe_many(topics)
                        .map_err(|err| err.to_string())?;
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    if s.return_codes
                        .iter()
                        .any(|r| matches!(r, rumqttc::SubscribeReasonCode::Failure))
                    {
                        return Err(format!(
                            "the broker refused the subscription to {:?}",
                            c.subjects
                        ));
                    }
                    intake.connected(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).await.is_err() {
                        return Err("the intake stopped".to_string());
                    }
                }
                Ok(_) => {}
                Err(err) => return Err(format!("{}: {err}", e.label())),
            }
        }
    };
    let taking = async {
        while let Some(p) = rx.recv().await {
            // A refused message is acknowledged too: MQTT has no other way to drop it.
            let _: Outcome = intake.take(&p.payload).await?;
            // After the commit: a crash before this point makes the broker send it again.
            client.ack(&p).await.map_err(|err| err.to_string())?;
        }
        Ok::<(), String>(())
    };
    tokio::select! {
        r = polling => r,
        r = taking => r.and(Err("the intake stopped".into())),
    }
}

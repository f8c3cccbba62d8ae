//! Brokers on the real server (issue 12), against the NATS JetStream, RabbitMQ and Mosquitto
//! servers of this machine: CloudEvents taken from a broker start workflows (`schedule.on`),
//! their `emit`s are published back out; a message that is not a CloudEvent is refused without
//! stalling the rest, a redelivered one is recorded once; a `kill -9` between taking a message
//! and acknowledging it, and between publishing an emit and committing it, loses nothing and
//! runs nothing twice.
//!
//! Each test uses names of its own (a random suffix), so runs never see each other's messages.
//! A broker that does not answer is skipped on a developer's machine and fails under `CI=true`.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{ServerProcess, TempDir, get_json, poll_until};

/// The test's own side of a broker: it publishes to where kflow consumes and collects what
/// kflow publishes.
trait Wire {
    fn publish(&self, payload: &[u8]);
    fn received(&self) -> Vec<Value>;
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn up(port: u16, name: &str) -> bool {
    if std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
    {
        return true;
    }
    support::missing(&format!("{name} on 127.0.0.1:{port}"));
    false
}

fn uniq() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", n, std::process::id())
}

// --- NATS ---------------------------------------------------------------------------------

struct Nats {
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
    u: String,
}

impl Nats {
    fn new(u: &str) -> Nats {
        let rt = rt();
        let js = rt.block_on(async {
            let c = async_nats::connect("127.0.0.1:4222").await.expect("NATS");
            let js = async_nats::jetstream::new(c);
            // Where kflow publishes: a stream of the test's own.
            js.create_stream(async_nats::jetstream::stream::Config {
                name: format!("OUT_{u}"),
                subjects: vec![format!("out.{u}.>")],
                ..Default::default()
            })
            .await
            .expect("the out stream");
            js
        });
        Nats {
            rt,
            js,
            u: u.to_string(),
        }
    }
}

impl Wire for Nats {
    fn publish(&self, payload: &[u8]) {
        self.rt.block_on(async {
            self.js
                .publish(
                    format!("in.{}.order", self.u),
                    bytes::Bytes::copy_from_slice(payload),
                )
                .await
                .expect("publish")
                .await
                .expect("the stream's ack");
        })
    }

    fn received(&self) -> Vec<Value> {
        self.rt.block_on(async {
            let stream = self
                .js
                .get_stream(format!("OUT_{}", self.u))
                .await
                .expect("the out stream");
            let consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
                .await
                .expect("a consumer");
            let mut batch = consumer
                .fetch()
                .max_messages(100)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("fetch");
            let mut out = Vec::new();
            while let Some(Ok(m)) = batch.next().await {
                out.push(serde_json::from_slice(&m.payload).unwrap_or(Value::Null));
            }
            out
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.rt.block_on(async {
            let _ = self.js.delete_stream(format!("OUT_{}", self.u)).await;
            self.js.delete_stream(format!("IN_{}", self.u)).await
        });
    }
}

// --- RabbitMQ -----------------------------------------------------------------------------

struct Amqp {
    rt: tokio::runtime::Runtime,
    channel: Option<amqprs::channel::Channel>,
    /// Both closed in the runtime's context (see `Drop`).
    connection: Option<amqprs::connection::Connection>,
    /// Every message taken off the out queue so far (a get takes it away).
    got: Mutex<Vec<Value>>,
    u: String,
}

impl Amqp {
    fn new(u: &str) -> Amqp {
        use amqprs::channel::QueueDeclareArguments;
        use amqprs::connection::{Connection, OpenConnectionArguments};
        let rt = rt();
        let (connection, channel) = rt.block_on(async {
            let c = Connection::open(&OpenConnectionArguments::new(
                "127.0.0.1",
                5672,
                "guest",
                "guest",
            ))
            .await
            .expect("RabbitMQ");
            let ch = c.open_channel(None).await.expect("a channel");
            ch.queue_declare(QueueDeclareArguments::durable_client_named(&format!(
                "out.{u}"
            )))
            .await
            .expect("the out queue");
            (c, ch)
        });
        Amqp {
            rt,
            channel: Some(channel),
            connection: Some(connection),
            got: Mutex::new(Vec::new()),
            u: u.to_string(),
        }
    }
}

impl Amqp {
    fn ch(&self) -> &amqprs::channel::Channel {
        self.channel.as_ref().expect("open until dropped")
    }
}

impl Wire for Amqp {
    fn publish(&self, payload: &[u8]) {
        use amqprs::BasicProperties;
        use amqprs::channel::BasicPublishArguments;
        self.rt.block_on(async {
            self.ch()
                .basic_publish(
                    BasicProperties::default().with_persistence(true).finish(),
                    payload.to_vec(),
                    BasicPublishArguments::new("", &format!("in.{}", self.u)),
                )
                .await
                .expect("publish");
        })
    }

    fn received(&self) -> Vec<Value> {
        use amqprs::channel::BasicGetArguments;
        self.rt.block_on(async {
            let mut got = self.got.lock().unwrap();
            let mut args = BasicGetArguments::new(&format!("out.{}", self.u));
            args.no_ack(true);
            while let Ok(Some((_, _, body))) = self.ch().basic_get(args.clone()).await {
                got.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            got.clone()
        })
    }
}

impl Drop for Amqp {
    fn drop(&mut self) {
        use amqprs::channel::QueueDeleteArguments;
        self.rt.block_on(async {
            for q in [format!("out.{}", self.u), format!("in.{}", self.u)] {
                let _ = self.ch().queue_delete(QueueDeleteArguments::new(&q)).await;
            }
        });
        let _in_runtime = self.rt.enter();
        drop(self.channel.take());
        drop(self.connection.take());
    }
}

// --- MQTT ---------------------------------------------------------------------------------

struct Mqtt {
    rt: tokio::runtime::Runtime,
    client: rumqttc::AsyncClient,
    got: Arc<Mutex<Vec<Value>>>,
    u: String,
}

impl Mqtt {
    fn new(u: &str) -> Mqtt {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let rt = rt();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut o = MqttOptions::new(format!("test-{u}"), "127.0.0.1", 1883);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(o, 64);
        let (g, subscribed) = (got.clone(), Arc::new(tokio::sync::Notify::new()));
        let s2 = subscribed.clone();
        rt.spawn(async move {
            while let Ok(ev) = events.poll().await {
                match ev {
                    Event::Incoming(Packet::SubAck(_)) => s2.notify_one(),
                    Event::Incoming(Packet::Publish(p)) => g
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&p.payload).unwrap_or(Value::Null)),
                    _ => {}
                }
            }
        });
        rt.block_on(async {
            client
                .subscribe(format!("out/{u}/#"), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            tokio::time::timeout(Duration::from_secs(10), subscribed.notified())
                .await
                .expect("subscribed");
        });
        Mqtt {
            rt,
            client,
            got,
            u: u.to_string(),
        }
    }
}

impl Wire for Mqtt {
    fn publish(&self, payload: &[u8]) {
        self.rt.block_on(async {
            self.client
                .publish(
                    format!("in/{}/order", self.u),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload.to_vec(),
                )
                .await
                .expect("publish");
        });
        // The event loop sends it (and gets the PUBACK) in the background.
        std::thread::sleep(Duration::from_millis(100));
    }

    fn received(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
}

// --- the scenario -------------------------------------------------------------------------

fn order(u: &str, id: &str, n: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0",
        "id": id,
        "source": "urn:test:shop",
        "type": format!("com.test.order.{u}"),
        "data": {"order": n}
    }))
    .unwrap_or_default()
}

/// `kflow_broker_*` samples of the server's metrics, by their labels.
fn metrics(base: &str) -> BTreeMap<String, f64> {
    let text = support::http_request("GET", base, "/metrics", None, Duration::from_secs(10))
        .map(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("kflow_broker_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The instances of the test's workflow by the order number they were started for.
fn orders(base: &str) -> BTreeMap<u64, Vec<String>> {
    let (_, v) = get_json(base, "/api/v1/instances?namespace=brk&limit=1000").unwrap_or_default();
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for i in v["items"].as_array().into_iter().flatten() {
        if let Some(n) = i["input"][0]["order"].as_u64() {
            out.entry(n)
                .or_default()
                .push(i["status"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

fn wait_for(what: &str, server: &ServerProcess, mut f: impl FnMut() -> bool) {
    if poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        f().then_some(())
    })
    .is_none()
    {
        panic!("{what}\n{}", server.log_tail(3000));
    }
}

/// The shipped events by order number: every copy's id.
fn shipped(wire: &dyn Wire, u: &str) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for e in wire.received() {
        assert_eq!(e["type"], format!("com.test.shipped.{u}"), "{e}");
        if let Some(n) = e["data"]["order"].as_u64() {
            out.entry(n)
                .or_default()
                .push(e["id"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

/// A config file naming one broker, `bus`; its path.
fn config_with(dir: &TempDir, broker: Value) -> String {
    let path = dir.write(
        "kflow.yaml",
        serde_json::to_string(&json!({ "brokers": { "bus": broker } })).unwrap_or_default(),
    );
    path.to_string_lossy().into_owned()
}

/// `brk/ship`: started by each order event (`schedule.on`), it emits a shipped event with the
/// order's data.
fn register_ship(base: &str, u: &str) {
    support::register(
        base,
        &format!(
            "document:\n  dsl: '1.0.3'\n  namespace: brk\n  name: ship\n  version: '1.0.0'\n\
             schedule:\n  on:\n    one:\n      with:\n        type: com.test.order.{u}\n\
             do:\n  - ship:\n      emit:\n        event:\n          with:\n\
             \x20           type: com.test.shipped.{u}\n            source: urn:test:kflow\n\
             \x20           data: ${{ .[0] }}\n"
        ),
    );
}

fn scenario(kind: &str, broker: Value, wire: &dyn Wire, u: &str) {
    let dir = TempDir::new(&format!("brokers-{kind}"));
    let config = config_with(&dir, broker);
    let mut server = ServerProcess::start(&dir.path().join("data"), &["--config", &config]);
    let base = server.base();
    register_ship(&base, u);
    let connected = "kflow_broker_connected{broker=\"bus\"}";
    wait_for("the consumer connects", &server, || {
        metrics(&base).get(connected) == Some(&1.0)
    });

    // Garbage first: refused, and the orders behind it still go through. Order 1 twice (a
    // redelivery, as a broker does after a lost acknowledgement): one instance.
    wire.publish(b"this is not a CloudEvent");
    wire.publish(&order(u, "o1", 1));
    wire.publish(&order(u, "o1", 1));
    wire.publish(&order(u, "o2", 2));
    wait_for("orders 1 and 2 shipped", &server, || {
        let s = shipped(wire, u);
        s.contains_key(&1) && s.contains_key(&2)
    });
    let m = metrics(&base);
    let count = |what: &str, outcome: &str| {
        m.get(&format!(
            "kflow_broker_{what}_total{{broker=\"bus\",outcome=\"{outcome}\"}}"
        ))
        .copied()
        .unwrap_or(-1.0)
    };
    assert_eq!(
        (
            count("messages", "refused"),
            count("messages", "duplicate"),
            count("messages", "delivered"),
            count("published", "published"),
        ),
        (1.0, 1.0, 2.0, 2.0),
        "{m:?}"
    );

    // kill -9 after an event is recorded and offered, before the broker hears the ack.
    server.kill9();
    server.set_env("KFLOW_FAILPOINT", Some("broker-after-record"));
    server.restart();
    wire.publish(&order(u, "o3", 3));
    if server.wait_exit(Duration::from_secs(30)).is_none() {
        panic!("the failpoint did not fire\n{}", server.log_tail(3000));
    }
    server.set_env("KFLOW_FAILPOINT", None);
    server.restart();
    let base = server.base();
    wait_for("order 3 shipped after the redelivery", &server, || {
        shipped(wire, u).contains_key(&3)
            && orders(&base)
                .get(&3)
                .is_some_and(|s| s.iter().all(|s| s == "completed"))
    });
    // kill -9 after an emit is published, before its result is committed.
    server.kill9();
    server.set_env("KFLOW_FAILPOINT", Some("emit-after-publish"));
    server.restart();
    wire.publish(&order(u, "o4", 4));
    if server.wait_exit(Duration::from_secs(30)).is_none() {
        panic!("the emit failpoint did not fire\n{}", server.log_tail(3000));
    }
    server.set_env("KFLOW_FAILPOINT", None);
    server.restart();
    let base = server.base();
    wait_for("every order's instance completed", &server, || {
        let o = orders(&base);
        (1..=4).all(|n| {
            o.get(&n)
                .is_some_and(|s| s.iter().all(|s| s == "completed"))
        })
    });

    // Once each: one instance per order, one event id per order (copies of a republished emit
    // carry the same id; JetStream keeps one).
    let o = orders(&base);
    assert_eq!(
        o.values().map(Vec::len).collect::<Vec<_>>(),
        [1, 1, 1, 1],
        "{o:?}"
    );
    let s = shipped(wire, u);
    for (n, ids) in &s {
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "order {n} was shipped as different events: {ids:?}"
        );
    }
    assert_eq!(s.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4], "{s:?}");
    if kind == "nats" {
        assert!(s.values().all(|ids| ids.len() == 1), "{s:?}");
    }
}

#[test]
fn nats_jetstream_events_in_and_out_once_across_kill_9() {
    if !up(4222, "NATS") {
        return;
    }
    let u = uniq();
    let wire = Nats::new(&u);
    scenario(
        "nats",
        json!({
            "url": "nats://127.0.0.1:4222",
            "consume": {"stream": format!("IN_{u}"), "subjects": [format!("in.{u}.>")]},
            "publish": {"subject": format!("out.{u}.{{type}}")},
        }),
        &wire,
        &u,
    );
}

#[test]
fn rabbitmq_events_in_and_out_once_across_kill_9() {
    if !up(5672, "RabbitMQ") {
        return;
    }
    let u = uniq();
    let wire = Amqp::new(&u);
    scenario(
        "amqp",
        json!({
            "url": "amqp://127.0.0.1:5672",
            "consume": {"queue": format!("in.{u}")},
            "publish": {"subject": format!("out.{u}")},
        }),
        &wire,
        &u,
    );
}

#[test]
fn mqtt_events_in_and_out_once_across_kill_9() {
    if !up(1883, "Mosquitto") {
        return;
    }
    let u = uniq();
    let wire = Mqtt::new(&u);
    scenario(
        "mqtt",
        json!({
            "url": "mqtt://127.0.0.1:1883",
            "consume": {"subjects": [format!("in/{u}/#")], "durable": format!("kflow-{u}")},
            "publish": {"subject": format!("out/{u}/shipped")},
        }),
        &wire,
        &u,
    );
}

/// A TCP forwarder to a broker that can be cut: while cut, every connection is closed at once
/// (and those open are cut), as when the broker is down.
struct Cuttable {
    port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Cuttable {
    fn new(target: u16) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        c.lock().unwrap().push(s);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cuttable { port, open, conns }
    }

    fn set_open(&self, yes: bool) {
        self.open.store(yes, std::sync::atomic::Ordering::SeqCst);
        if !yes {
            for s in self.conns.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// A broker down when the server starts, then up, then gone mid-run and back: the emit waits
/// for it and is published once it answers, and an event sent while kflow was cut off is taken
/// when it reconnects. Nothing is lost.
#[test]
fn nats_down_at_start_and_mid_run_loses_nothing() {
    if !up(4222, "NATS") {
        return;
    }
    let u = uniq();
    let wire = Nats::new(&u);
    let cut = Cuttable::new(4222);
    let dir = TempDir::new("brokers-down");
    let broker = json!({
        "url": format!("nats://127.0.0.1:{}", cut.port),
        "consume": {"stream": format!("IN_{u}"), "subjects": [format!("in.{u}.>")]},
        "publish": {"subject": format!("out.{u}.{{type}}")},
    });
    let config = config_with(&dir, broker);
    // The stream kflow consumes exists already (the broker is down for kflow only).
    wire.rt.block_on(async {
        wire.js
            .create_stream(async_nats::jetstream::stream::Config {
                name: format!("IN_{u}"),
                subjects: vec![format!("in.{u}.>")],
                ..Default::default()
            })
            .await
            .expect("the in stream");
    });
    let server = ServerProcess::start(&dir.path().join("data"), &["--config", &config]);
    let base = server.base();
    register_ship(&base, &u);
    // Down: an instance started over the API emits, and waits for the broker.
    let (code, v) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "brk", "name": "ship", "input": [{"order": 1}]}),
    )
    .expect("start");
    assert!(code < 300, "{v}");
    wait_for("publishing is retried", &server, || {
        metrics(&base)
            .get("kflow_broker_published_total{broker=\"bus\",outcome=\"unreachable\"}")
            .is_some_and(|n| *n >= 2.0)
    });
    assert_eq!(
        orders(&base).get(&1).cloned(),
        Some(vec!["running".to_string()])
    );
    assert!(shipped(&wire, &u).is_empty());
    // Up: published, the instance completes; the consumer connects.
    cut.set_open(true);
    wait_for("order 1 shipped", &server, || {
        orders(&base)
            .get(&1)
            .is_some_and(|s| s == &["completed".to_string()])
    });
    let connected = "kflow_broker_connected{broker=\"bus\"}";
    wait_for("the consumer connects", &server, || {
        metrics(&base).get(connected) == Some(&1.0)
    });
    // Gone mid-run: an order sent meanwhile waits in the stream and is taken on reconnection.
    cut.set_open(false);
    wire.publish(&order(&u, "o2", 2));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!orders(&base).contains_key(&2));
    cut.set_open(true);
    wait_for(
        "order 2 taken and shipped after the reconnection",
        &server,
        || shipped(&wire, &u).contains_key(&2),
    );
    let s = shipped(&wire, &u);
    assert_eq!(
        s.iter().map(|(n, ids)| (*n, ids.len())).collect::<Vec<_>>(),
        [(1, 1), (2, 1)],
        "{s:?}"
    );
}

/// `call asyncapi` publishes through an AsyncAPI 3.0 document's `send` operations to NATS,
/// RabbitMQ and Mosquitto (and through a 2.6 document's channel), with the server's variables
/// filled; an operation the document lacks fails with the ones it has.
#[test]
fn asyncapi_calls_publish_to_the_documents_servers() {
    if !(up(4222, "NATS") && up(5672, "RabbitMQ") && up(1883, "Mosquitto")) {
        return;
    }
    let u = uniq();
    let (nats, amqp, mqtt) = (Nats::new(&u), Amqp::new(&u), Mqtt::new(&u));
    let dir = TempDir::new("asyncapi");
    let v3 = json!({
        "asyncapi": "3.0.0",
        "info": {"title": "shop", "version": "1.0.0"},
        "servers": {
            "bus": {"host": "{host}:4222", "protocol": "nats",
                    "variables": {"host": {"default": "localhost"}}},
            "rabbit": {"host": "127.0.0.1:5672", "protocol": "amqp"},
            "mosquitto": {"host": "127.0.0.1:1883", "protocol": "mqtt"}
        },
        "channels": {
            "shippedNats": {"address": format!("out.{u}.asyncapi"), "servers": [{"$ref": "#/servers/bus"}]},
            "shippedAmqp": {"address": format!("out.{u}"), "servers": [{"$ref": "#/servers/rabbit"}]},
            "shippedMqtt": {"address": format!("out/{u}/asyncapi"), "servers": [{"$ref": "#/servers/mosquitto"}]}
        },
        "operations": {
            "shipNats": {"action": "send", "channel": {"$ref": "#/channels/shippedNats"}},
            "shipAmqp": {"action": "send", "channel": {"$ref": "#/channels/shippedAmqp"}},
            "shipMqtt": {"action": "send", "channel": {"$ref": "#/channels/shippedMqtt"}},
            "inbox": {"action": "receive", "channel": {"$ref": "#/channels/shippedNats"}}
        }
    });
    let v2 = json!({
        "asyncapi": "2.6.0",
        "info": {"title": "shop", "version": "1.0.0"},
        "servers": {"bus": {"url": "nats://127.0.0.1:4222", "protocol": "nats"}},
        "channels": {format!("out.{u}.v2"): {"publish": {"message": {"payload": {"type": "object"}}}}}
    });
    let p3 = dir.write("v3.json", v3.to_string());
    let p2 = dir.write("v2.json", v2.to_string());
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let base = server.base();
    let call = |op: &str, doc: &std::path::Path, extra: &str| {
        format!(
            "      call: asyncapi\n      with:\n        document:\n          endpoint: 'file://{}'\n\
             \x20       {op}\n{extra}        message:\n          payload:\n            order: ${{ $workflow.input.order }}\n",
            doc.display()
        )
    };
    support::register(
        &base,
        &format!(
            "document:\n  dsl: '1.0.3'\n  namespace: aapi\n  name: ship\n  version: '1.0.0'\n\
             do:\n  - nats:\n{}  - amqp:\n{}  - mqtt:\n{}  - v2:\n{}",
            call(
                "operation: shipNats",
                &p3,
                "        server:\n          name: bus\n          variables:\n            host: 127.0.0.1\n"
            )
            .replace(
                "            order: ${ $workflow.input.order }\n",
                "            order: ${ $workflow.input.order }\n          headers:\n            tenant: acme\n"
            ),
            call("operation: shipAmqp", &p3, ""),
            call("operation: shipMqtt", &p3, "        protocol: mqtt\n"),
            call("channel: 'out.U.v2'".replace('U', &u).as_str(), &p2, ""),
        ),
    );
    let (code, v) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "aapi", "name": "ship", "input": {"order": 5}, "wait": true}),
    )
    .expect("start");
    assert!(code < 300, "{v}");
    assert_eq!(v["status"], "completed", "{v}\n{}", server.log_tail(2000));
    // The last call's output: where its message went.
    assert_eq!(
        (
            &v["output"]["server"],
            &v["output"]["protocol"],
            &v["output"]["address"]
        ),
        (&json!("bus"), &json!("nats"), &json!(format!("out.{u}.v2"))),
        "{v}"
    );
    assert!(
        v["output"]["messageId"]
            .as_str()
            .is_some_and(|id| id.starts_with(v["id"].as_str().unwrap_or("?"))),
        "{v}"
    );
    let payloads = |w: &dyn Wire| w.received();
    let want = json!({"order": 5});
    wait_for("every broker got the message", &server, || {
        let n = payloads(&nats);
        n.iter().filter(|p| **p == want).count() == 2
            && payloads(&amqp).contains(&want)
            && payloads(&mqtt).contains(&want)
    });
    // An operation the document does not have is named with the ones it has.
    support::register(
        &base,
        &format!(
            "document:\n  dsl: '1.0.3'\n  namespace: aapi\n  name: bad\n  version: '1.0.0'\n\
             do:\n  - a:\n{}",
            call("operation: ${ .op }", &p3, "")
                .replace("operation: ${ .op }", "operation: shipFax")
        ),
    );
    let (_, v) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "aapi", "name": "bad", "input": {"order": 1}, "wait": true}),
    )
    .expect("start");
    assert_eq!(v["status"], "faulted", "{v}");
    assert_eq!(
        v["error"]["detail"],
        "call asyncapi: the document has no operation shipFax (it has: shipNats, shipAmqp, shipMqtt, inbox)",
        "{v}"
    );
}

use super::intake::{MAX_MESSAGE, parse_event};
use super::spec::subject_matches;
use super::*;

fn spec(yaml: &str) -> Result<(), String> {
    let v: BTreeMap<String, BrokerSpec> = serde_json::from_value(
        kflow_dsl::node::parse_value(yaml.as_bytes(), &Default::default())
            .map_err(|d| d.to_string())?
            .to_json(),
    )
    .map_err(|e| e.to_string())?;
    check(&v)
}

#[test]
fn config_mistakes_are_named() {
    let cases = [
        (
            "b: {url: 'nats://127.0.0.1:4222', consume: {subjects: [a.>]}}",
            "brokers.b.consume.stream: name the JetStream stream (no '.', '*', '>' or spaces)",
        ),
        (
            "b: {url: 'kafka://h:9092', publish: {subject: x}}",
            "brokers.b.url: kafka:// is not a broker kflow speaks (nats://, amqp:// or mqtt://; TLS is not supported yet)",
        ),
        (
            "b: {url: 'amqp://guest:guest@h/', consume: {queue: q}}",
            "brokers.b.url: credentials do not belong in the URL: give username: and password_secret: (the password's name in the secrets file)",
        ),
        (
            "b: {url: 'amqp://h:99999', consume: {queue: q}}",
            "brokers.b.url: \"99999\" is not a port",
        ),
        (
            "b: {url: 'mqtt://h'}",
            "brokers.b.consume: give consume:, publish: or both",
        ),
        (
            "b: {url: 'mqtt://h', consume: {subjects: ['orders/#']}, publish: {subject: 'orders/{type}'}}",
            "brokers.b.publish.subject: \"orders/{type}\" is also consumed here: emitted events already reach this server's listeners, and would be taken back a second time",
        ),
        (
            "b: {url: 'nats://h', consume: {stream: S, subjects: ['in.*']}, publish: {subject: 'in.x'}}",
            "brokers.b.publish.subject: \"in.x\" is also consumed here: emitted events already reach this server's listeners, and would be taken back a second time",
        ),
        (
            "b: {url: 'nats://h', publish: {subject: 'x', exchange: e}}",
            "brokers.b.publish.exchange: only AMQP brokers have exchanges",
        ),
        (
            "b: {url: 'amqp://h', consume: {queue: q}, publish: {subject: q}}",
            "brokers.b.publish.subject: \"q\" is also consumed here: emitted events already reach this server's listeners, and would be taken back a second time",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(spec(yaml).unwrap_err(), want, "{yaml}");
    }
    assert!(spec("b: {url: 'nats://h', consume: {stream: S, subjects: ['in.>']}, publish: {subject: 'out.{type}'}}").is_ok());
    assert!(spec("b: {url: 'amqp://h:5672/%2f', consume: {queue: q}, publish: {subject: r, exchange: ''}}").is_ok());
    assert!(
        spec("b: {url: 'mqtt://h', consume: {subjects: ['a/+/c']}, publish: {subject: 'a/b'}}")
            .is_ok()
    );
}

#[test]
fn subjects_match_like_the_brokers() {
    for (f, s, kind, want) in [
        ("a.*.c", "a.b.c", Kind::Nats, true),
        ("a.>", "a.b.c", Kind::Nats, true),
        ("a.>", "a", Kind::Nats, false),
        ("a.*", "a.b.c", Kind::Nats, false),
        ("a.b", "a.{type}", Kind::Nats, true),
        ("a/#", "a", Kind::Mqtt, true),
        ("a/+/c", "a/b/c", Kind::Mqtt, true),
        ("a/+", "a/b/c", Kind::Mqtt, false),
    ] {
        assert_eq!(subject_matches(f, s, kind), want, "{f} {s}");
    }
}

#[test]
fn passwords_come_from_the_secrets_and_never_show() {
    let specs: BTreeMap<String, BrokerSpec> = serde_json::from_value(serde_json::json!({
        "b": {"url": "amqp://h", "username": "u", "password_secret": "mq", "consume": {"queue": "q"}}
    }))
    .unwrap();
    let err = Brokers::new(&specs, &serde_json::json!({})).unwrap_err();
    assert_eq!(
        err,
        "brokers.b.password_secret: the secrets file has no text secret \"mq\""
    );
    let b = Brokers::new(&specs, &serde_json::json!({"mq": "s3cret"})).unwrap();
    assert_eq!(b.brokers[0].endpoint.password.as_deref(), Some("s3cret"));
    assert!(!format!("{b:?}").contains("s3cret"));
}

#[test]
fn only_cloudevents_are_taken() {
    assert!(parse_event(br#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#).is_ok());
    for (body, want) in [
        (
            &b"nope"[..],
            "the body is not JSON: expected ident at line 1 column 2",
        ),
        (b"[1]", "the body is not a JSON object"),
        (
            br#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#,
            "the CloudEvent has no id",
        ),
        (
            br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
            "specversion \"0.3\" is not 1.0",
        ),
    ] {
        assert_eq!(parse_event(body).unwrap_err(), want);
    }
    let big = vec![b' '; MAX_MESSAGE + 1];
    assert!(
        parse_event(&big)
            .unwrap_err()
            .starts_with("the message is 1048577 bytes")
    );
}

#[test]
fn publish_types_select_events() {
    let specs: BTreeMap<String, BrokerSpec> = serde_json::from_value(serde_json::json!({
        "b": {"url": "nats://h", "publish": {"subject": "x", "types": ["com.acme.*", "exact"]}}
    }))
    .unwrap();
    let b = Brokers::new(&specs, &Value::Null).unwrap();
    let ev = |t: &str| serde_json::json!({"type": t});
    assert!(b.publishes(&ev("com.acme.order")));
    assert!(b.publishes(&ev("exact")));
    assert!(!b.publishes(&ev("exactly")));
    assert!(!b.publishes(&ev("org.other")));
}

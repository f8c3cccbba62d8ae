//! The registry's rules, without I/O.

use super::*;

fn registry(yaml: serde_json::Value) -> Registry {
    let specs: BTreeMap<String, ServiceSpec> = serde_json::from_value(yaml).expect("spec");
    Registry::new(specs).expect("valid")
}

/// One call of service `s` for `instance`: admitted, sent to an endpoint, finished.
async fn call(r: &Registry, instance: &str, target: &Url, failed: bool) {
    let mut c = r
        .begin("s", instance, "t", Duration::from_secs(1))
        .await
        .unwrap();
    c.next_url(target).unwrap();
    c.finish(failed);
}

#[test]
fn a_path_joins_the_endpoints_base() {
    let b = Url::parse("http://h:1/api/").unwrap();
    assert_eq!(join(&b, "/v1/x?a=1").as_str(), "http://h:1/api/v1/x?a=1");
    let b = Url::parse("http://h:1").unwrap();
    assert_eq!(join(&b, "/x").as_str(), "http://h:1/x");
}

#[test]
fn mistakes_are_named() {
    let specs: BTreeMap<String, ServiceSpec> = serde_json::from_value(serde_json::json!({
        "a b": {"endpoints": ["ftp://x", "nope"], "bulkhead": 0,
                 "circuit": {"failure_rate": 2.0, "min_calls": 0}},
        "d": {"dns": "https://svc:443"},
    }))
    .unwrap();
    let e = Registry::new(specs).unwrap_err();
    for want in [
        "services.a b: a name is",
        "services.a b.endpoints: \"ftp://x\": only http and https",
        "services.a b.endpoints: \"nope\" is not an absolute URL",
        "services.a b.bulkhead: at least 1",
        "services.a b.circuit.failure_rate",
        "services.a b.circuit.min_calls",
        "services.d.dns: https endpoints cannot be reached by address",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
}

#[tokio::test]
async fn round_robin_skips_an_endpoint_whose_connection_failed() {
    let r = registry(
        serde_json::json!({"s": {"endpoints": ["http://a:1", "http://b:1", "http://c:1"]}}),
    );
    let target = Url::parse("service://s/x").unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut c = r
            .begin("s", "i", "t", Duration::from_secs(1))
            .await
            .unwrap();
        seen.push(c.next_url(&target).unwrap().host_str().unwrap().to_string());
        c.finish(false);
    }
    assert_eq!(seen, ["a", "b", "c"]);
    // b's connection fails: the call goes on to c, and b is out of rotation.
    let mut c = r
        .begin("s", "i", "t", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(c.next_url(&target).unwrap().host_str(), Some("a"));
    c.finish(false);
    let mut c = r
        .begin("s", "i", "t", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(c.next_url(&target).unwrap().host_str(), Some("b"));
    c.connect_failed();
    assert_eq!(c.next_url(&target).unwrap().host_str(), Some("c"));
    c.finish(false);
    let hosts: Vec<String> = futures_hosts(&r, &target, 4).await;
    assert!(!hosts.contains(&"b".to_string()), "{hosts:?}");
    assert_eq!(r.views()[0].totals.failovers, 1);
}

async fn futures_hosts(r: &Registry, target: &Url, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = r
            .begin("s", "i", "t", Duration::from_secs(1))
            .await
            .unwrap();
        out.push(c.next_url(target).unwrap().host_str().unwrap().to_string());
        c.finish(false);
    }
    out
}

#[tokio::test]
async fn the_circuit_opens_on_failures_and_a_probe_closes_it() {
    let r = registry(serde_json::json!({"s": {"endpoints": ["http://a:1"],
        "circuit": {"failure_rate": 0.5, "min_calls": 4, "window_seconds": 60, "open_seconds": 0.05}}}));
    let target = Url::parse("service://s/x").unwrap();
    for i in 0..4 {
        call(&r, &format!("i{i}"), &target, i % 2 == 0).await;
    }
    let e = r
        .begin("s", "j", "t", Duration::from_secs(1))
        .await
        .err()
        .expect("open");
    assert_eq!(e.title.as_deref(), Some("Circuit Open"));
    assert_eq!(e.status, 503);
    assert_eq!(r.views()[0].circuit, "open");
    tokio::time::sleep(Duration::from_millis(60)).await;
    // One probe goes; a second call meanwhile fails fast.
    let mut probe = r
        .begin("s", "k", "t", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        r.begin("s", "l", "t", Duration::from_secs(1))
            .await
            .is_err()
    );
    probe.next_url(&target).unwrap();
    probe.finish(false);
    assert_eq!(r.views()[0].circuit, "closed");
    assert!(r.begin("s", "m", "t", Duration::from_secs(1)).await.is_ok());
}

#[tokio::test]
async fn retries_past_the_budget_fail_fast() {
    let r = registry(serde_json::json!({"s": {"endpoints": ["http://a:1"],
        "circuit": {"min_calls": 1000},
        "retry_budget": {"ratio": 0.1, "min_per_second": 0.0}}}));
    let target = Url::parse("service://s/x").unwrap();
    // 20 tasks fail once each: 20 first calls earn 2 retries (plus the 1 to start with).
    for i in 0..20 {
        call(&r, &format!("i{i}"), &target, true).await;
    }
    let mut sent = 0;
    let mut refused = 0;
    for i in 0..20 {
        match r
            .begin("s", &format!("i{i}"), "t", Duration::from_secs(1))
            .await
        {
            Ok(mut c) => {
                c.next_url(&target).unwrap();
                c.finish(true);
                sent += 1;
            }
            Err(e) => {
                assert_eq!(e.title.as_deref(), Some("Retry Budget Spent"));
                refused += 1;
            }
        }
    }
    assert_eq!((sent, refused), (3, 17));
    assert_eq!(r.views()[0].totals.rejected_budget, 17);
}

#[tokio::test]
async fn least_outstanding_and_peak_ewma_avoid_the_busy_or_slow_endpoint() {
    let r = registry(
        serde_json::json!({"s": {"endpoints": ["http://a:1", "http://b:1"],
        "balance": "least-outstanding"}}),
    );
    let target = Url::parse("service://s/x").unwrap();
    let mut held = r
        .begin("s", "i", "t", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(held.next_url(&target).unwrap().host_str(), Some("a"));
    for _ in 0..3 {
        let mut c = r
            .begin("s", "i", "t", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(c.next_url(&target).unwrap().host_str(), Some("b"));
        c.finish(false);
    }
    held.finish(false);
    let r = registry(
        serde_json::json!({"s": {"endpoints": ["http://a:1", "http://b:1"],
        "balance": "peak-ewma"}}),
    );
    // a answers slowly once: its peak counts at once.
    let mut c = r
        .begin("s", "i", "t", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(c.next_url(&target).unwrap().host_str(), Some("a"));
    std::thread::sleep(Duration::from_millis(30));
    c.finish(false);
    let mut c = r
        .begin("s", "i", "t", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(c.next_url(&target).unwrap().host_str(), Some("b"));
    c.finish(false);
    for _ in 0..3 {
        let mut c = r
            .begin("s", "i", "t", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            c.next_url(&target).unwrap().host_str(),
            Some("b"),
            "{:?}",
            r.views()
        );
        c.finish(false);
    }
}

#[tokio::test]
async fn registered_endpoints_expire_unless_renewed() {
    let r = registry(serde_json::json!({"s": {}}));
    let target = Url::parse("service://s/x").unwrap();
    assert!(
        r.begin("s", "i", "t", Duration::from_secs(1))
            .await
            .unwrap()
            .next_url(&target)
            .is_err()
    );
    r.register("s", "http://r:1", Duration::from_millis(40))
        .unwrap();
    let mut c = r
        .begin("s", "i", "t", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(c.next_url(&target).unwrap().host_str(), Some("r"));
    c.finish(false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = r
        .begin("s", "i", "t", Duration::from_secs(1))
        .await
        .unwrap()
        .next_url(&target);
    assert!(e.is_err(), "expired");
    assert!(
        r.register("nope", "http://r:1", Duration::from_secs(1))
            .is_err()
    );
    assert!(
        r.register("s", "ftp://r:1", Duration::from_secs(1))
            .is_err()
    );
}

/// A DNS server on loopback that answers every SRV query with `records` (priority, weight,
/// port, target), names compressed against the question.
async fn fake_dns(records: Vec<(u16, u16, u16, &'static str)>) -> std::net::SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let q = &buf[..n];
            let mut a = Vec::new();
            a.extend_from_slice(&q[..2]);
            a.extend_from_slice(&[0x81, 0x80, 0, 1]);
            a.extend_from_slice(&(records.len() as u16).to_be_bytes());
            a.extend_from_slice(&[0, 0, 0, 0]);
            a.extend_from_slice(&q[12..]); // the question
            for (p, w, port, target) in &records {
                a.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
                let mut rdata = Vec::new();
                for v in [p, w, port] {
                    rdata.extend_from_slice(&v.to_be_bytes());
                }
                for l in target.split('.').filter(|l| !l.is_empty()) {
                    rdata.push(l.len() as u8);
                    rdata.extend_from_slice(l.as_bytes());
                }
                rdata.push(0);
                a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                a.extend_from_slice(&rdata);
            }
            let _ = sock.send_to(&a, from).await;
        }
    });
    addr
}

#[tokio::test]
async fn srv_records_of_the_lowest_priority_are_the_endpoints() {
    let dns = fake_dns(vec![
        (20, 1, 7003, "127.0.0.1"),
        (10, 5, 7001, "127.0.0.1"),
        (10, 1, 7002, "127.0.0.1."),
    ])
    .await;
    let r = registry(serde_json::json!({
        "api": {"dns": "srv+http://_api._tcp.test.internal/v1", "dns_server": dns.to_string()}
    }));
    let s = r.services["api"].clone();
    let found = s.dns_bases().await.expect("a lookup");
    let found: Vec<&str> = found.iter().map(Url::as_str).collect();
    assert_eq!(
        found,
        ["http://127.0.0.1:7001/v1", "http://127.0.0.1:7002/v1"]
    );
    // A server that does not answer keeps the endpoints as they were (and says so once).
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = registry(serde_json::json!({
        "api": {"dns": "srv+http://_api._tcp.x", "dns_server": silent.local_addr().unwrap().to_string()}
    }));
    assert_eq!(r.services["api"].dns_bases().await, None);
}

#[test]
fn srv_answers_are_read_with_care() {
    let q = srv::encode_query(7, "_a._tcp.x").unwrap();
    // NXDOMAIN: no endpoints.
    let mut nx = q.clone();
    nx[2..4].copy_from_slice(&[0x81, 0x83]);
    assert_eq!(srv::parse_answer(&nx), Ok(Vec::new()));
    // Truncated, or a compression loop: errors, never a hang.
    let mut tc = q.clone();
    tc[2..4].copy_from_slice(&[0x83, 0x80]);
    assert!(srv::parse_answer(&tc).unwrap_err().contains("truncated"));
    let mut lp = q.clone();
    lp[6..8].copy_from_slice(&[0, 1]);
    lp.extend_from_slice(&[0xC0, lp.len() as u8]); // a name pointing at itself
    assert!(srv::parse_answer(&lp).unwrap_err().contains("loop"));
    assert!(srv::parse_answer(&[1, 2, 3]).is_err());
    assert!(srv::encode_query(1, "a..b").is_err());
    let bad: BTreeMap<String, ServiceSpec> = serde_json::from_value(serde_json::json!({
        "a": {"dns": "srv+http://_a._tcp.x:80"},
        "b": {"dns": "srv+https://_b._tcp.x"},
        "c": {"dns": "srv+http://_c._tcp.x", "dns_server": "nameserver"},
    }))
    .unwrap();
    let e = Registry::new(bad).unwrap_err();
    for want in [
        "services.a.dns: \"srv+http://_a._tcp.x:80\": name the SRV records",
        "services.b.dns: \"srv+https://_b._tcp.x\": SRV endpoints are srv+http://",
        "services.c.dns_server: \"nameserver\" is not IP:PORT",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
}

//! Alert rules against a real webhook receiver on loopback: a faulted instance is delivered as
//! a CloudEvent, retried after the receiver fails, never twice once delivered; a long-running
//! instance fires a duration alert that resolves when it ends; alerts are listed by the API.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};

use kflow_server::alerts::{Alerts, AlertsConfig};
use support::{Api, wf};

/// A webhook receiver: records every body; answers 500 to the first `fail_first` requests.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<(Value, String)>>>) {
    let got: Arc<Mutex<Vec<(Value, String)>>> = Arc::default();
    let g = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let g = g.clone();
            async move {
                let mut v = g.lock().unwrap();
                let ct = headers
                    .get("content-type")
                    .and_then(|c| c.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                v.push((serde_json::from_str(&body).unwrap_or(Value::Null), ct));
                if v.len() <= fail_first {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

fn config(url: &str, rules: Value) -> AlertsConfig {
    serde_json::from_value(json!({
        "webhooks": {"ops": {"url": url, "headers": {"x-team": "ops"}}},
        "rules": rules,
    }))
    .expect("alerts config")
}

async fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulted_instance_is_delivered_once_after_a_retry() {
    let api = Api::new().await;
    let (url, got) = receiver(1).await;
    let alerts = Alerts::new(
        api.engine.clone(),
        config(
            &url,
            json!([{"name": "faults", "on": "instance_faulted", "namespace": "team"}]),
        ),
    )
    .expect("alerts");
    let task = alerts.spawn();
    api.register(&wf(
        "team",
        "boom",
        "1.0.0",
        "do:\n  - fail:\n      raise:\n        error: {type: 'https://example.com/broken', status: 500, title: 'it broke', detail: 'secret detail'}\n",
    ))
    .await;
    api.register(&wf(
        "other",
        "boom",
        "1.0.0",
        "do:\n  - fail:\n      raise:\n        error: {type: x, status: 500}\n",
    ))
    .await;
    let id = api.start("team", "boom", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.wait_status(&id, "faulted").await;
    let other = api.start("other", "boom", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.wait_status(&other, "faulted").await;
    // The first attempt is refused (500), the second, about 2 s later, delivered.
    let events = until("two deliveries", 15, || {
        let v = got.lock().unwrap();
        (v.len() >= 2).then(|| v.clone())
    })
    .await;
    let (a, b) = (&events[0].0, &events[1].0);
    assert_eq!(events[0].1, "application/cloudevents+json");
    assert_eq!(a["id"], b["id"], "a retried delivery keeps its id");
    assert_eq!(a["specversion"], "1.0");
    assert_eq!(a["type"], "io.kflow.alert.instance_faulted");
    assert_eq!(a["subject"], id.as_str());
    assert_eq!(a["data"]["rule"], "faults");
    assert_eq!(a["data"]["details"]["error"]["title"], "it broke");
    assert!(
        !a.to_string().contains("secret detail"),
        "the error's detail stays out: {a}"
    );
    // Nothing more: the other namespace's fault matches no rule, the delivered one is done.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        2,
        "no duplicate, no alert for another namespace"
    );
    let list = api.get("/api/v1/alerts").await.json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["delivery"], "delivered");
    assert_eq!(items[0]["attempts"], 2);
    assert_eq!(items[0]["on"], "instance_faulted");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_instance_fires_once_and_resolves_when_it_ends() {
    let api = Api::new().await;
    let (url, got) = receiver(0).await;
    let alerts = Alerts::new(
        api.engine.clone(),
        config(
            &url,
            json!([{"name": "slow", "on": "instance_duration", "seconds": 0.5}]),
        ),
    )
    .expect("alerts");
    let task = alerts.spawn();
    api.register(&wf(
        "team",
        "sleepy",
        "1.0.0",
        "do:\n  - nap:\n      wait: {minutes: 5}\n",
    ))
    .await;
    let id = api.start("team", "sleepy", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = until("the duration alert", 10, || {
        got.lock().unwrap().first().cloned()
    })
    .await
    .0;
    assert_eq!(ev["type"], "io.kflow.alert.instance_duration");
    assert_eq!(ev["subject"], id.as_str());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        1,
        "a lasting condition fires once"
    );
    api.post(&format!("/api/v1/instances/{id}/cancel")).await;
    let resolved = until("the alert resolved", 10, || {
        let store = api.engine.store();
        let rows = store.alerts(None, 10).ok()?;
        rows.first().and_then(|a| a.resolved_ms)
    })
    .await;
    assert!(resolved > 0);
    task.abort();
}

#[test]
fn bad_rules_are_refused_with_their_place() {
    let bad: AlertsConfig = serde_json::from_value(json!({
        "webhooks": {"ops": {"url": "ftp://nope"}},
        "rules": [
            {"name": "a", "on": "queue_wait"},
            {"name": "a", "on": "instance_faulted", "seconds": 3, "webhooks": ["pager"]},
            {"name": "d", "on": "version_drift", "factor": 0.5},
            {"name": "q", "on": "queue_wait", "seconds": 1, "factor": 2},
        ],
    }))
    .unwrap();
    let e = bad.check().unwrap_err();
    for want in [
        "alerts.webhooks.ops.url",
        "`queue_wait` needs `seconds`",
        "rule names must be unique",
        "`instance_faulted` takes no `seconds`",
        "no webhook named \"pager\"",
        "alerts.rules[2] (\"d\"): `factor` applies to task_anomaly and version_drift only, and must be at least 1",
        "alerts.rules[3] (\"q\"): `factor`",
    ] {
        assert!(e.contains(want), "missing {want:?} in {e}");
    }
    let unknown =
        serde_json::from_value::<AlertsConfig>(json!({"rules": [{"name": "x", "on": "sunrise"}]}));
    assert!(unknown.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_fires_a_task_duration_alert() {
    let api = Api::new().await;
    let (url, got) = receiver(0).await;
    let slow = Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(json!({"ok": true}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_url = format!("http://{}/slow", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, slow).await });
    let alerts = Alerts::new(
        api.engine.clone(),
        config(
            &url,
            json!([{"name": "slow-task", "on": "task_duration", "seconds": 0.5}]),
        ),
    )
    .expect("alerts");
    let task = alerts.spawn();
    api.register(&wf(
        "team",
        "caller",
        "1.0.0",
        &format!("do:\n  - fetch:\n      call: http\n      with: {{method: get, endpoint: '{slow_url}'}}\n"),
    ))
    .await;
    let id = api.start("team", "caller", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = until("the task alert", 10, || {
        got.lock().unwrap().first().cloned()
    })
    .await
    .0;
    assert_eq!(ev["type"], "io.kflow.alert.task_duration");
    assert_eq!(ev["data"]["details"]["task"], "/do/0/fetch");
    assert_eq!(ev["data"]["details"]["instance"], id.as_str());
    api.wait_status(&id, "completed").await;
    let resolved = until("the alert resolved", 10, || {
        let rows = api.engine.store().alerts(None, 10).ok()?;
        rows.first().and_then(|a| a.resolved_ms)
    })
    .await;
    assert!(resolved > 0);
    assert_eq!(got.lock().unwrap().len(), 1, "fired once");
    task.abort();
}

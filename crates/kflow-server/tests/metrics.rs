//! `GET /metrics` after a known workload: the counters and histogram counts match it, read with
//! a Prometheus text-format parser, and no label carries an instance id.

mod support;

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::json;

use support::{Api, wf};

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.last().map(|b| b.count).unwrap_or(0.0),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .collect();
    found.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let api = Api::new().await;
    api.register(&wf(
        "m",
        "ok",
        "1.0.0",
        "do:\n  - sh:\n      run:\n        shell:\n          command: echo hi\n",
    ))
    .await;
    api.register(&wf(
        "m",
        "bad",
        "1.0.0",
        "do:\n  - boom:\n      raise:\n        error: {type: 'https://x/e', status: 400}\n",
    ))
    .await;
    api.register(&wf(
        "m",
        "slow",
        "1.0.0",
        "do:\n  - nap:\n      wait: PT1H\n",
    ))
    .await;
    let mut ids = Vec::new();
    for (name, n, end) in [("ok", 3, "completed"), ("bad", 2, "faulted")] {
        for _ in 0..n {
            let id = api.start("m", name, json!({})).await["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            api.wait_status(&id, end).await;
            ids.push(id);
        }
    }
    let slow = api.start("m", "slow", json!({})).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.post(&format!("/api/v1/instances/{slow}/cancel"))
        .await
        .expect(StatusCode::OK);
    ids.push(slow);

    let r = api.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let wfl = |w: &'static str| [("namespace", "m"), ("workflow", w)];
    for (w, n) in [("ok", 3.0), ("bad", 2.0), ("slow", 1.0)] {
        assert_eq!(
            value(&scrape, "kflow_instances_started_total", &wfl(w)),
            n,
            "started {w}:\n{text}"
        );
    }
    for (w, status, n) in [
        ("ok", "completed", 3.0),
        ("bad", "faulted", 2.0),
        ("slow", "cancelled", 1.0),
    ] {
        let mut l = wfl(w).to_vec();
        l.push(("status", status));
        assert_eq!(
            value(&scrape, "kflow_instances_finished_total", &l),
            n,
            "{w} {status}:\n{text}"
        );
    }
    // Three processes ran on the built-in worker, after waiting in the default queue.
    assert_eq!(
        value(
            &scrape,
            "kflow_task_duration_seconds_count",
            &[("kind", "process")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(
            &scrape,
            "kflow_queue_wait_seconds_count",
            &[("queue", "default")]
        ),
        3.0,
        "{text}"
    );
    assert!(
        value(&scrape, "kflow_store_commit_seconds_count", &[]) >= 6.0,
        "{text}"
    );
    // Six starts answered 201, by the route's template.
    assert_eq!(
        value(
            &scrape,
            "kflow_http_request_duration_seconds_count",
            &[
                ("method", "POST"),
                ("route", "/api/v1/instances"),
                ("status", "2xx")
            ]
        ),
        6.0,
        "{text}"
    );
    assert_eq!(
        value(&scrape, "kflow_queue_depth", &[("queue", "default")]),
        0.0
    );
    assert_eq!(
        value(&scrape, "kflow_workers", &[]),
        1.0,
        "the built-in worker"
    );
    // Bounded labels: never an instance id.
    let mut labels: HashMap<String, usize> = HashMap::new();
    for s in &scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(
                !ids.iter().any(|id| v.contains(id.as_str())),
                "{}: label {k}={v} carries an instance id",
                s.metric
            );
            *labels.entry(k.to_string()).or_default() += 1;
        }
    }
    assert!(
        labels.contains_key("route") && !labels.contains_key("id"),
        "{labels:?}"
    );
}

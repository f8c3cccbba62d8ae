//! Schedules end to end, on virtual time: the engine and the API are real (in-memory SQLite),
//! the scheduler's clock is a [`ManualClock`] and every tick is called by the test.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use kflow_server::schedule::{ManualClock, Scheduler, SchedulerConfig};
use kflow_server::{Engine, EngineConfig};
use kflow_store::{Instance, InstanceFilter, InstanceStatus};
use support::Api;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis()
}

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// A workflow document with a schedule, kflow settings (YAML lines under
/// `metadata.kflow.schedule`, may be empty) and a body.
fn doc(name: &str, version: &str, schedule: &str, settings: &str, body: &str) -> String {
    let meta = if settings.is_empty() {
        String::new()
    } else {
        let lines: String = settings.lines().map(|l| format!("        {l}\n")).collect();
        format!("  metadata:\n    kflow:\n      schedule:\n{lines}")
    };
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: sched\n  name: {name}\n  version: '{version}'\n{meta}schedule:\n{schedule}{body}"
    )
}

const QUICK: &str = "do:\n  - only:\n      set:\n        ran: true\n";
const LONG: &str = "do:\n  - nap:\n      wait: PT1H\n";

struct H {
    api: Api,
    sched: Scheduler,
    clock: Arc<ManualClock>,
}

impl H {
    async fn new(now_ms: i64) -> H {
        let api = Api::new().await;
        H::over(api, now_ms).await
    }

    async fn over(api: Api, now_ms: i64) -> H {
        let clock = Arc::new(ManualClock::new(now_ms));
        let sched = Scheduler::new(
            api.engine.clone(),
            SchedulerConfig::default(),
            clock.clone(),
        )
        .await
        .expect("scheduler");
        H { api, sched, clock }
    }

    /// Ticks at `ms` (and moves the clock there); returns how many instances it started.
    async fn tick(&self, ms: i64) -> usize {
        self.clock.set(ms);
        let fired = self.sched.tick(ms).await.expect("tick");
        fired.iter().filter(|f| f.outcome.is_ok()).count()
    }

    async fn register(&self, doc: &str) {
        self.api.register(doc).await;
    }

    async fn schedule(&self, name: &str) -> Value {
        let all = self
            .api
            .get("/api/v1/schedules")
            .await
            .expect(StatusCode::OK);
        all["items"]
            .as_array()
            .and_then(|items| items.iter().find(|s| s["name"] == json!(name)).cloned())
            .unwrap_or_else(|| panic!("no schedule {name} in {all}"))
    }
}

async fn instances(engine: &Engine, name: &str) -> Vec<Instance> {
    let filter = InstanceFilter {
        namespace: Some("sched".into()),
        name: Some(name.into()),
        ..Default::default()
    };
    let mut items = engine
        .instances(filter, None, 1000)
        .await
        .expect("instances")
        .items;
    items.reverse(); // oldest first
    items
}

async fn running(engine: &Engine, name: &str) -> usize {
    instances(engine, name)
        .await
        .iter()
        .filter(|i| i.status == InstanceStatus::Running)
        .count()
}

async fn finish_all(engine: &Engine, name: &str) {
    for i in instances(engine, name).await {
        let v = engine
            .wait_finished(&i.id, Duration::from_secs(20))
            .await
            .expect("wait");
        assert!(
            v.instance.status.is_finished(),
            "{} still {:?}",
            i.id,
            v.instance.status
        );
    }
}

// ---------------------------------------------------------------------------------------------
// cron, every, after

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_each_tick_once() {
    let t0 = utc(2026, 3, 27, 12, 0, 0);
    let h = H::new(t0).await;
    h.register(&doc(
        "hourly",
        "1.0.0",
        "  cron: '0 * * * *'\n",
        "timezone: Europe/Paris",
        QUICK,
    ))
    .await;
    let s = h.schedule("hourly").await;
    assert_eq!(s["kind"], "cron");
    assert_eq!(s["expression"], "0 * * * *");
    assert_eq!(s["timezone"], "Europe/Paris");
    assert_eq!(s["next_fire"], "2026-03-27T14:00:00+01:00");
    assert_eq!(s["next_fire_ms"], json!(utc(2026, 3, 27, 13, 0, 0)));
    assert_eq!(s["last_fire"], Value::Null);

    let t1 = utc(2026, 3, 27, 13, 0, 0);
    assert_eq!(h.tick(t1 - 1).await, 0, "not yet");
    assert_eq!(h.tick(t1).await, 1);
    assert_eq!(h.tick(t1).await, 0, "the same instant again");
    assert_eq!(h.tick(t1 + 500).await, 0);
    assert_eq!(instances(&h.api.engine, "hourly").await.len(), 1);
    let s = h.schedule("hourly").await;
    assert_eq!(s["last_fire"], "2026-03-27T14:00:00+01:00");
    assert_eq!(s["next_fire"], "2026-03-27T15:00:00+01:00");
    assert_eq!(s["fired"], 1);
    // The instance got the empty input.
    assert_eq!(instances(&h.api.engine, "hourly").await[0].input, json!({}));

    // A restart: a new scheduler over the same engine and store fires nothing twice.
    let again = H::over(h.api, t1 + 1_000).await;
    assert_eq!(again.tick(t1 + 1_000).await, 0);
    assert_eq!(again.tick(t1 + HOUR).await, 1);
    assert_eq!(again.tick(t1 + HOUR).await, 0);
    assert_eq!(instances(&again.api.engine, "hourly").await.len(), 2);
    // Counted in the metrics as they were written: two fires, none skipped.
    let text = again.api.engine.metrics_text();
    assert!(
        text.contains("kflow_schedule_fires_total{namespace=\"sched\",workflow=\"hourly\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_six_fields_and_the_dst_switch_through_the_api() {
    let h = H::new(utc(2026, 3, 28, 12, 0, 0)).await;
    // 02:30 Paris time does not exist on 2026-03-29.
    h.register(&doc(
        "night",
        "1.0.0",
        "  cron: '0 30 2 * * *'\n",
        "timezone: Europe/Paris",
        QUICK,
    ))
    .await;
    let s = h.schedule("night").await;
    assert_eq!(s["expression"], "0 30 2 * * *");
    let first = s["next_fire_ms"].as_i64().unwrap();
    assert!(
        s["next_fire"]
            .as_str()
            .unwrap()
            .starts_with("2026-03-29T03:"),
        "{s}"
    );
    assert_eq!(h.tick(first).await, 1);
    let s = h.schedule("night").await;
    assert_eq!(s["next_fire"], "2026-03-30T02:30:00+02:00", "{s}");
    assert_eq!(s["next_fire_ms"], json!(utc(2026, 3, 30, 0, 30, 0)));
    // New York, 5 fields, the server's default zone is UTC when none is given.
    h.register(&doc("utc", "1.0.0", "  cron: '15 9 * * *'\n", "", QUICK))
        .await;
    assert_eq!(h.schedule("utc").await["next_fire"], "2026-03-29T09:15:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counts_from_the_schedule_creation() {
    let t0 = utc(2026, 5, 1, 8, 3, 7);
    let h = H::new(t0).await;
    h.register(&doc("tenmin", "1.0.0", "  every: PT10M\n", "", QUICK))
        .await;
    let s = h.schedule("tenmin").await;
    assert_eq!(
        (s["kind"].as_str(), s["expression"].as_str()),
        (Some("every"), Some("PT10M"))
    );
    assert_eq!(s["next_fire_ms"], json!(t0 + 10 * MIN));
    assert_eq!(h.tick(t0 + 10 * MIN).await, 1);
    assert_eq!(h.tick(t0 + 15 * MIN).await, 0);
    assert_eq!(h.tick(t0 + 20 * MIN + 30).await, 1);
    assert_eq!(
        h.schedule("tenmin").await["next_fire_ms"],
        json!(t0 + 30 * MIN)
    );
    assert_eq!(instances(&h.api.engine, "tenmin").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_restarts_once_the_previous_run_finished() {
    // `after` counts from when the instance finished (wall-clock time): start the virtual
    // clock at the real time.
    let t0 = Utc::now().timestamp_millis();
    let h = H::new(t0).await;
    h.register(&doc("again", "1.0.0", "  after: PT1M\n", "", QUICK))
        .await;
    let s = h.schedule("again").await;
    assert_eq!(s["kind"], "after");
    assert_eq!(s["next_fire_ms"], json!(t0), "the first run is at creation");
    assert_eq!(h.tick(t0).await, 1);
    assert_eq!(
        h.schedule("again").await["next_fire_ms"],
        Value::Null,
        "waiting for the run"
    );
    finish_all(&h.api.engine, "again").await;
    let finished = instances(&h.api.engine, "again").await[0].updated_ms;
    assert_eq!(h.tick(t0 + 1).await, 0);
    assert_eq!(
        h.schedule("again").await["next_fire_ms"],
        json!(finished + MIN)
    );
    assert_eq!(h.tick(finished + MIN - 1).await, 0);
    assert_eq!(h.tick(finished + MIN).await, 1);
    assert_eq!(h.tick(finished + MIN).await, 0);
    finish_all(&h.api.engine, "again").await;
    let runs = instances(&h.api.engine, "again").await;
    assert_eq!(runs.len(), 2);
    // The next one counts from the second run's end.
    let second = runs[1].updated_ms.max(finished + MIN);
    assert_eq!(h.tick(second).await, 0);
    assert_eq!(
        h.schedule("again").await["next_fire_ms"],
        json!(runs[1].updated_ms + MIN)
    );
}

// ---------------------------------------------------------------------------------------------
// exactly once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_decided_before_a_crash_runs_once_after_it() {
    let t0 = utc(2026, 1, 1, 0, 0, 0);
    let h = H::new(t0).await;
    h.register(&doc("min", "1.0.0", "  every: PT1M\n", "", QUICK))
        .await;
    // The fire is decided and durable, then the process dies before starting the instance.
    h.sched.decide(t0 + MIN).await.expect("decide");
    assert_eq!(instances(&h.api.engine, "min").await.len(), 0);
    assert_eq!(h.schedule("min").await["next_fire_ms"], json!(t0 + 2 * MIN));
    let H { api, sched, .. } = h;
    drop(sched);
    let after = H::over(api, t0 + MIN + 5_000).await;
    assert_eq!(
        after.tick(t0 + MIN + 5_000).await,
        1,
        "the recorded fire runs"
    );
    assert_eq!(after.tick(t0 + MIN + 6_000).await, 0);
    assert_eq!(instances(&after.api.engine, "min").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_on_one_store_fire_each_tick_once() {
    let t0 = utc(2026, 1, 1, 0, 0, 0);
    let a = H::new(t0).await;
    a.register(&doc("race", "1.0.0", "  every: PT1M\n", "", QUICK))
        .await;
    let b = Scheduler::new(
        a.api.engine.clone(),
        SchedulerConfig::default(),
        a.clock.clone(),
    )
    .await
    .unwrap();
    for k in 1..=5 {
        let t = t0 + k * MIN;
        let (x, y) = tokio::join!(a.sched.tick(t), b.tick(t));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x.len() + y.len() >= 1, "tick {k}");
    }
    // Each tick was decided once...
    assert_eq!(a.schedule("race").await["fired"], 5);
    assert_eq!(
        a.schedule("race").await["last_fire_ms"],
        json!(t0 + 5 * MIN)
    );
    // ...and both schedulers may have executed it: the instance id makes the second start a
    // no-op, once the driver creates instances with the ids it is given.
    if driver_honours_ids(&a.api.engine).await {
        assert_eq!(instances(&a.api.engine, "race").await.len(), 5);
    }
}

/// Whether `Engine::start_with_id` creates the instance with that id (a driver change).
async fn driver_honours_ids(engine: &Engine) -> bool {
    engine
        .register(QUICK_PROBE.as_bytes())
        .await
        .expect("probe");
    let id = uuid::Uuid::now_v7().to_string();
    let inst = engine
        .start_with_id(&id, "sched", "probe", "1.0.0", json!({}))
        .await
        .expect("probe start");
    inst.id == id
}

const QUICK_PROBE: &str = "document:\n  dsl: '1.0.3'\n  namespace: sched\n  name: probe\n  version: '1.0.0'\ndo:\n  - only:\n      set:\n        ran: true\n";

/// The crash window between an instance's commit and the fire leaving the row: the second
/// start must find the instance by its id. Needs the driver to create instances with the id
/// given by `Engine::start_with_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_repeated_after_a_crash_is_refused_by_id() {
    let h = H::new(utc(2026, 1, 1, 0, 0, 0)).await;
    h.register(&doc("dup", "1.0.0", "  every: PT1M\n", "", QUICK))
        .await;
    let a = h
        .api
        .engine
        .start_with_id(
            "0190a6f2-0000-7000-8000-000000000001",
            "sched",
            "dup",
            "1.0.0",
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(a.id, "0190a6f2-0000-7000-8000-000000000001");
    let b = h
        .api
        .engine
        .start_with_id(&a.id, "sched", "dup", "1.0.0", json!({}))
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(instances(&h.api.engine, "dup").await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// missed ticks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_skip_or_catch_up_at_most_n_after_downtime() {
    let t0 = utc(2026, 2, 1, 9, 30, 0);
    let h = H::new(t0).await;
    h.register(&doc(
        "skipper",
        "1.0.0",
        "  cron: '0 * * * *'\n",
        "missed: skip",
        QUICK,
    ))
    .await;
    h.register(&doc(
        "catcher",
        "1.0.0",
        "  cron: '0 * * * *'\n",
        "missed: catchup\ncatchupMax: 2",
        QUICK,
    ))
    .await;
    h.register(&doc(
        "one",
        "1.0.0",
        "  cron: '0 * * * *'\n",
        "missed: catchup",
        QUICK,
    ))
    .await;
    assert_eq!(
        h.tick(utc(2026, 2, 1, 10, 0, 0)).await,
        3,
        "on time: everyone fires"
    );
    // Down from 10:00:01 to 13:30: 11:00, 12:00 and 13:00 were missed.
    let H { api, .. } = h;
    let h = H::over(api, utc(2026, 2, 1, 13, 30, 0)).await;
    h.tick(utc(2026, 2, 1, 13, 30, 0)).await;
    let engine = &h.api.engine;
    assert_eq!(
        instances(engine, "skipper").await.len(),
        1,
        "skip: nothing more"
    );
    assert_eq!(
        instances(engine, "catcher").await.len(),
        3,
        "catchup 2: 12:00 and 13:00"
    );
    assert_eq!(
        instances(engine, "one").await.len(),
        2,
        "catchupMax defaults to 1"
    );
    // The ticks dropped by the missed policy are counted.
    let text = engine.metrics_text();
    for (name, n) in [("skipper", 3), ("one", 2), ("catcher", 1)] {
        let line =
            format!("kflow_schedule_missed_total{{namespace=\"sched\",workflow=\"{name}\"}} {n}");
        assert!(text.contains(&line), "{line}\n{text}");
    }
    for name in ["skipper", "catcher", "one"] {
        assert_eq!(
            h.schedule(name).await["next_fire_ms"],
            json!(utc(2026, 2, 1, 14, 0, 0)),
            "{name}"
        );
    }
    assert_eq!(
        h.schedule("catcher").await["last_fire_ms"],
        json!(utc(2026, 2, 1, 13, 0, 0))
    );
    // A restart shorter than the grace period misses nothing.
    let t = utc(2026, 2, 1, 14, 0, 40);
    assert_eq!(h.tick(t).await, 3);
}

// ---------------------------------------------------------------------------------------------
// overlap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_allow_skip_queue_cancel() {
    let t0 = utc(2026, 4, 1, 0, 0, 0);
    let h = H::new(t0).await;
    for policy in ["allow", "skip", "queue", "cancel"] {
        h.register(&doc(
            policy,
            "1.0.0",
            "  every: PT1M\n",
            &format!("overlap: {policy}"),
            LONG,
        ))
        .await;
    }
    let e = &h.api.engine;
    assert_eq!(h.tick(t0 + MIN).await, 4);
    h.tick(t0 + 2 * MIN).await;
    assert_eq!(
        (instances(e, "allow").await.len(), running(e, "allow").await),
        (2, 2)
    );
    assert_eq!(
        (instances(e, "skip").await.len(), running(e, "skip").await),
        (1, 1)
    );
    assert_eq!(h.schedule("skip").await["skipped"], 1);
    let text = e.metrics_text();
    assert!(
        text.contains("kflow_schedule_skips_total{namespace=\"sched\",workflow=\"skip\"} 1"),
        "{text}"
    );
    assert_eq!(
        (instances(e, "queue").await.len(), running(e, "queue").await),
        (1, 1)
    );
    assert_eq!(h.schedule("queue").await["queued"], 1);
    let cancel = instances(e, "cancel").await;
    assert_eq!(cancel.len(), 2);
    assert_eq!(
        cancel[0].status,
        InstanceStatus::Cancelled,
        "the previous one was cancelled"
    );
    assert_eq!(cancel[1].status, InstanceStatus::Running);
    assert_eq!(h.schedule("cancel").await["running"], json!([cancel[1].id]));

    // Queue: a third tick waits too; when the running one finishes, the queue moves, one at
    // a time.
    h.tick(t0 + 3 * MIN).await;
    assert_eq!(h.schedule("queue").await["queued"], 2);
    let first = instances(e, "queue").await.remove(0);
    e.cancel(&first.id).await.unwrap();
    h.tick(t0 + 3 * MIN + 1_000).await;
    let q = instances(e, "queue").await;
    assert_eq!((q.len(), running(e, "queue").await), (2, 1));
    assert_eq!(h.schedule("queue").await["queued"], 1);
    // Skip: once the running one is gone, the next tick starts again.
    let first = instances(e, "skip").await.remove(0);
    e.cancel(&first.id).await.unwrap();
    h.tick(t0 + 4 * MIN).await;
    assert_eq!(
        (instances(e, "skip").await.len(), running(e, "skip").await),
        (2, 1)
    );
}

// ---------------------------------------------------------------------------------------------
// pause and resume

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_the_api() {
    let t0 = utc(2026, 6, 1, 0, 0, 0);
    let h = H::new(t0).await;
    h.register(&doc(
        "p",
        "1.0.0",
        "  every: PT1M\n",
        "missed: catchup",
        QUICK,
    ))
    .await;
    let v = h
        .api
        .post("/api/v1/schedules/sched/p/pause")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["paused"], true);
    assert_eq!(h.schedule("p").await["paused"], true);
    for k in 1..=5 {
        assert_eq!(h.tick(t0 + k * MIN).await, 0, "paused");
    }
    let v = h
        .api
        .post("/api/v1/schedules/sched/p/resume")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["paused"], false);
    // Resumed at 5 min: that tick is on time, and one missed tick (4 min) is caught up.
    assert_eq!(h.tick(t0 + 5 * MIN).await, 2);
    assert_eq!(h.schedule("p").await["next_fire_ms"], json!(t0 + 6 * MIN));
    // Pausing twice is fine; an unknown workflow or one without a schedule is a 404.
    h.api
        .post("/api/v1/schedules/sched/p/pause")
        .await
        .expect(StatusCode::OK);
    h.api
        .post("/api/v1/schedules/sched/p/pause")
        .await
        .expect(StatusCode::OK);
    let e = h
        .api
        .post("/api/v1/schedules/sched/nope/pause")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        e["message"].as_str().unwrap().contains("not registered"),
        "{e}"
    );
    h.register(&support::wf("sched", "plain", "1.0.0", QUICK))
        .await;
    let e = h
        .api
        .post("/api/v1/schedules/sched/plain/resume")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        e["message"].as_str().unwrap().contains("has no schedule"),
        "{e}"
    );
    h.api
        .get("/api/v1/schedules/sched/p/pause")
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

// ---------------------------------------------------------------------------------------------
// events

fn event(ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": uuid::Uuid::now_v7().to_string(), "source": "test", "type": ty, "data": data})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_events_start_instances_with_the_events_as_input() {
    let h = H::new(Utc::now().timestamp_millis()).await;
    h.register(&doc(
        "onone",
        "1.0.0",
        "  on:\n    one:\n      with:\n        type: com.example.order\n",
        "",
        QUICK,
    ))
    .await;
    h.register(&doc(
        "onenv",
        "1.0.0",
        "  on:\n    any:\n      - with:\n          type: com.example.order\n      - with:\n          type: com.example.refund\n  read: envelope\n",
        "",
        QUICK,
    ))
    .await;
    let s = h.schedule("onone").await;
    assert_eq!(
        (s["kind"].as_str(), s["next_fire"].clone()),
        (Some("on"), Value::Null)
    );

    let order = event("com.example.order", json!({"id": 7}));
    let r = h
        .api
        .post_json("/api/v1/events", &order)
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(r["matched"], 2, "two schedules started an instance");
    let e = &h.api.engine;
    let one = instances(e, "onone").await;
    assert_eq!(one.len(), 1);
    assert_eq!(
        one[0].input,
        json!([{"id": 7}]),
        "read: data (the default), as an array"
    );
    assert_eq!(
        instances(e, "onenv").await[0].input,
        json!([order]),
        "read: envelope"
    );
    // Other events start nothing.
    let r = h
        .api
        .post_json("/api/v1/events", &event("com.example.other", json!({})))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(r["matched"], 0);
    let r = h
        .api
        .post_json("/api/v1/events", &event("com.example.refund", json!(1)))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(r["matched"], 1);
    assert_eq!(instances(e, "onone").await.len(), 1);
    assert_eq!(instances(e, "onenv").await.len(), 2);
    // Paused: events are ignored.
    h.api
        .post("/api/v1/schedules/sched/onone/pause")
        .await
        .expect(StatusCode::OK);
    let r = h
        .api
        .post_json(
            "/api/v1/events",
            &event("com.example.order", json!({"id": 8})),
        )
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(r["matched"], 1, "only onenv");
    assert_eq!(instances(e, "onone").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_all_waits_for_every_filter_per_correlation_key() {
    let h = H::new(Utc::now().timestamp_millis()).await;
    h.register(&doc(
        "paidshipped",
        "1.0.0",
        "  on:\n    all:\n      - with:\n          type: paid\n        correlate:\n          order:\n            from: ${ .data.order }\n      - with:\n          type: shipped\n        correlate:\n          order:\n            from: ${ .data.order }\n",
        "",
        QUICK,
    ))
    .await;
    let post = |e: Value| {
        let api = &h.api;
        async move {
            api.post_json("/api/v1/events", &e)
                .await
                .expect(StatusCode::ACCEPTED)["matched"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(post(event("paid", json!({"order": 1}))).await, 0);
    assert_eq!(post(event("shipped", json!({"order": 2}))).await, 0);
    assert_eq!(post(event("shipped", json!({"order": 1}))).await, 1);
    let got = instances(&h.api.engine, "paidshipped").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].input, json!([{"order": 1}, {"order": 1}]));
    assert_eq!(post(event("paid", json!({"order": 2}))).await, 1);
    assert_eq!(instances(&h.api.engine, "paidshipped").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_filters_evaluate_their_runtime_expressions_on_each_event() {
    // dsl-reference.md's example filter, `data: ${ .temperature > 38 }`: evaluated on each
    // posted event's data, by the function `listen` uses.
    let h = H::new(Utc::now().timestamp_millis()).await;
    h.register(&doc(
        "fever",
        "1.0.0",
        "  on:\n    one:\n      with:\n        type: com.fake-hospital.vitals.measurements.temperature\n        data: ${ .temperature > 38 }\n",
        "",
        QUICK,
    ))
    .await;
    let s = h.schedule("fever").await;
    assert!(
        s["expression"]
            .as_str()
            .is_some_and(|e| e.contains("${ .temperature > 38 }")),
        "the filter as written: {s}"
    );
    let ty = "com.fake-hospital.vitals.measurements.temperature";
    let post = |e: Value| {
        let api = &h.api;
        async move {
            api.post_json("/api/v1/events", &e)
                .await
                .expect(StatusCode::ACCEPTED)["matched"]
                .as_u64()
                .unwrap()
        }
    };
    // The non-matching event first: had it started an instance, there would be two below.
    assert_eq!(post(event(ty, json!({"temperature": 20}))).await, 0);
    assert_eq!(post(event(ty, json!({"temperature": 40}))).await, 1);
    let got = instances(&h.api.engine, "fever").await;
    assert_eq!(got.len(), 1, "only the matching event started one");
    assert_eq!(got[0].input, json!([{"temperature": 40}]));
}

// ---------------------------------------------------------------------------------------------
// the schedule follows the newest version; bad schedules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_follows_the_newest_non_deprecated_version() {
    let t0 = utc(2026, 7, 1, 0, 0, 0);
    let h = H::new(t0).await;
    h.register(&doc("wf", "1.0.0", "  cron: '0 0 * * *'\n", "", QUICK))
        .await;
    h.register(&doc(
        "wf",
        "2.0.0",
        "  every: PT5M\n",
        "overlap: skip",
        QUICK,
    ))
    .await;
    let s = h.schedule("wf").await;
    assert_eq!(
        (
            s["version"].as_str(),
            s["kind"].as_str(),
            s["overlap"].as_str()
        ),
        (Some("2.0.0"), Some("every"), Some("skip"))
    );
    // An older version registered later changes nothing.
    h.register(&doc("wf", "1.5.0", "  after: PT1M\n", "", QUICK))
        .await;
    assert_eq!(h.schedule("wf").await["version"], "2.0.0");
    h.api
        .post("/api/v1/definitions/sched/wf/versions/2.0.0/deprecate")
        .await
        .expect(StatusCode::OK);
    let s = h.schedule("wf").await;
    assert_eq!(
        (s["version"].as_str(), s["kind"].as_str()),
        (Some("1.5.0"), Some("after"))
    );
    // A newest version without a schedule removes it.
    h.register(&support::wf("sched", "wf", "3.0.0", QUICK))
        .await;
    let all = h.api.get("/api/v1/schedules").await.expect(StatusCode::OK);
    assert_eq!(all["items"], json!([]), "{all}");
    let e = h
        .api
        .post("/api/v1/schedules/sched/wf/pause")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(
        e["message"].as_str().unwrap().contains("has no schedule"),
        "{e}"
    );
    // A started scheduler picks up what was registered before it.
    let later = H::over(h.api, t0).await;
    later
        .register(&doc("wf", "4.0.0", "  every: PT1M\n", "", QUICK))
        .await;
    assert_eq!(later.schedule("wf").await["version"], "4.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_at_registration() {
    let h = H::new(utc(2026, 1, 1, 0, 0, 0)).await;
    let post = |d: String| {
        let api = &h.api;
        async move {
            api.post_raw("/api/v1/definitions", "application/yaml", d)
                .await
        }
    };
    let e = post(doc(
        "bad",
        "1.0.0",
        "  every: PT1M\n",
        "overlap: sometimes\ncatchupMax: -1",
        QUICK,
    ))
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    // kflow's settings are part of the document's checks: refused as the definition, at their
    // line and column
    assert_eq!(e["message"], "the workflow definition is invalid");
    let details = e["details"].to_string();
    assert!(details.contains("invalid value 'sometimes' for 'document.metadata.kflow.schedule.overlap' (expected one of: allow, skip, queue, cancel)"), "{details}");
    assert!(
        details.contains("'document.metadata.kflow.schedule.catchupMax' must be from 1 to 1000"),
        "{details}"
    );
    let e = post(doc("feb30", "1.0.0", "  cron: '0 0 30 2 *'\n", "", QUICK))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(e["details"].to_string().contains("never fires"), "{e}");
    assert_eq!(e["message"], "the workflow's schedule is invalid");
    // A document with wrong settings is refused before its schedule is worked out.
    let e = post(doc(
        "both",
        "1.0.0",
        "  cron: '0 0 30 2 *'\n",
        "missed: sometimes",
        QUICK,
    ))
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert_eq!(e["details"].as_array().map(Vec::len), Some(1), "{e}");
    assert!(
        e["details"]
            .to_string()
            .contains("invalid value 'sometimes'"),
        "{e}"
    );
    let e = post(doc(
        "tz",
        "1.0.0",
        "  cron: '0 0 * * *'\n",
        "timezone: Nowhere/Land",
        QUICK,
    ))
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid");
    assert!(
        e["details"]
            .to_string()
            .contains("unknown time zone 'Nowhere/Land'"),
        "{e}"
    );
    // Nothing was registered, nothing is scheduled.
    assert_eq!(
        h.api.get("/api/v1/schedules").await.expect(StatusCode::OK)["items"],
        json!([])
    );
    h.api
        .get("/api/v1/definitions/sched/bad")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_list_has_every_field() {
    let h = H::new(utc(2026, 1, 1, 0, 0, 0)).await;
    h.register(&doc(
        "b",
        "1.0.0",
        "  every: PT1H\n",
        "overlap: queue\nmissed: catchup\ncatchupMax: 4",
        QUICK,
    ))
    .await;
    h.register(&doc(
        "a",
        "1.0.0",
        "  cron: '@daily'\n",
        "timezone: Asia/Tokyo",
        QUICK,
    ))
    .await;
    let all = h.api.get("/api/v1/schedules").await.expect(StatusCode::OK);
    let items = all["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let a = &items[0];
    assert_eq!(a["next_fire"], "2026-01-02T00:00:00+09:00", "{a}");
    let b = &items[1];
    for (k, v) in [
        ("namespace", json!("sched")),
        ("name", json!("b")),
        ("version", json!("1.0.0")),
        ("kind", json!("every")),
        ("expression", json!("PT1H")),
        ("timezone", json!("UTC")),
        ("next_fire", json!("2026-01-01T01:00:00Z")),
        ("last_fire", Value::Null),
        ("paused", json!(false)),
        ("overlap", json!("queue")),
        ("missed", json!("catchup")),
        ("catchup_max", json!(4)),
        ("error", Value::Null),
        ("running", json!([])),
        ("queued", json!(0)),
    ] {
        assert_eq!(b[k], v, "{k} in {b}");
    }
    // In the OpenAPI document.
    let doc = h
        .api
        .get("/api/v1/openapi.json")
        .await
        .expect(StatusCode::OK);
    for p in [
        "/api/v1/schedules",
        "/api/v1/schedules/{namespace}/{name}/pause",
        "/api/v1/schedules/{namespace}/{name}/resume",
    ] {
        assert!(doc["paths"][p].is_object(), "{p}");
    }
    assert!(doc["components"]["schemas"]["ScheduleView"].is_object());
}

// ---------------------------------------------------------------------------------------------
// a real restart: the engine and the scheduler reopen a file store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_a_file_store_keeps_schedules_and_fires_once() {
    let dir = std::env::temp_dir().join(format!("kflow-sched-{}", uuid::Uuid::now_v7()));
    let config = || EngineConfig {
        data_dir: dir.clone(),
        ..EngineConfig::default()
    };
    let t0 = utc(2026, 8, 1, 0, 0, 0);
    {
        let engine = Engine::open(config()).await.unwrap();
        let h = H::over(
            Api {
                router: kflow_server::api::router(engine.clone(), Default::default()),
                engine,
            },
            t0,
        )
        .await;
        h.register(&doc("file", "1.0.0", "  every: PT1M\n", "", QUICK))
            .await;
        h.api
            .post("/api/v1/schedules/sched/file/pause")
            .await
            .expect(StatusCode::OK);
        h.api
            .post("/api/v1/schedules/sched/file/resume")
            .await
            .expect(StatusCode::OK);
        assert_eq!(h.tick(t0 + MIN).await, 1);
        h.sched.decide(t0 + 2 * MIN).await.unwrap(); // decided, not started: then "crash"
        h.api.engine.shutdown(Duration::from_secs(5)).await;
    }
    {
        let engine = Engine::open(config()).await.unwrap();
        let h = H::over(
            Api {
                router: kflow_server::api::router(engine.clone(), Default::default()),
                engine,
            },
            t0 + 2 * MIN,
        )
        .await;
        assert_eq!(
            h.schedule("file").await["next_fire_ms"],
            json!(t0 + 3 * MIN)
        );
        assert_eq!(h.tick(t0 + 2 * MIN).await, 1, "the decided fire");
        assert_eq!(h.tick(t0 + 2 * MIN).await, 0);
        assert_eq!(h.tick(t0 + 3 * MIN).await, 1);
        assert_eq!(instances(&h.api.engine, "file").await.len(), 3);
        h.api.engine.shutdown(Duration::from_secs(5)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// the background loop on the system clock (the only test here that takes real time: < 1 s)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_fires_on_the_system_clock() {
    let api = Api::new().await;
    let sched = Scheduler::new(
        api.engine.clone(),
        SchedulerConfig::default(),
        Arc::new(kflow_server::schedule::SystemClock),
    )
    .await
    .unwrap();
    let task = sched.spawn();
    // Registered after the loop went to sleep: the registration wakes it.
    api.register(&doc("loop", "1.0.0", "  every: PT0.3S\n", "", QUICK))
        .await;
    let start = std::time::Instant::now();
    while instances(&api.engine, "loop").await.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the loop did not fire twice in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Paused through the API: nothing fires any more, however late it is (the loop decides
    // with the same tick, so checking the tick an hour ahead needs no sleeping).
    api.post("/api/v1/schedules/sched/loop/pause")
        .await
        .expect(StatusCode::OK);
    let an_hour_later =
        kflow_server::schedule::Clock::now_ms(&kflow_server::schedule::SystemClock) + 3_600_000;
    let fired = sched.tick(an_hour_later).await.expect("tick");
    assert!(fired.is_empty(), "a paused schedule fired: {fired:?}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_keeps_a_due_tick_for_the_missed_policy() {
    let t0 = utc(2026, 9, 1, 0, 0, 0);
    let h = H::new(t0).await;
    h.register(&doc("v", "1.0.0", "  every: PT1M\n", "", QUICK))
        .await;
    // Down for 5 minutes; the first thing after the restart is a new version.
    h.clock.set(t0 + 5 * MIN + 30_000);
    h.register(&doc(
        "v",
        "2.0.0",
        "  every: PT1M\n",
        "missed: catchup\ncatchupMax: 2",
        QUICK,
    ))
    .await;
    assert_eq!(
        h.schedule("v").await["next_fire_ms"],
        json!(t0 + MIN),
        "still due"
    );
    assert_eq!(
        h.tick(t0 + 5 * MIN + 30_000).await,
        3,
        "5 min on time, 3 and 4 min caught up"
    );
    assert!(
        instances(&h.api.engine, "v")
            .await
            .iter()
            .all(|i| i.version == "2.0.0")
    );
    // A version registered while nothing is due starts from now.
    h.clock.set(t0 + 5 * MIN + 40_000);
    h.register(&doc("v", "3.0.0", "  cron: '0 0 * * *'\n", "", QUICK))
        .await;
    assert_eq!(
        h.schedule("v").await["next_fire_ms"],
        json!(utc(2026, 9, 2, 0, 0, 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_emitted_by_instances_start_on_schedules() {
    let h = H::new(Utc::now().timestamp_millis()).await;
    h.register(&doc(
        "onemit",
        "1.0.0",
        "  on:\n    one:\n      with:\n        type: com.example.shipped\n",
        "",
        QUICK,
    ))
    .await;
    let emitter = "document:\n  dsl: '1.0.3'\n  namespace: sched\n  name: emitter\n  version: '1.0.0'\ndo:\n  - tell:\n      emit:\n        event:\n          with:\n            source: https://kflow.test\n            type: com.example.shipped\n            data:\n              parcel: 42\n";
    h.api
        .engine
        .register(emitter.as_bytes())
        .await
        .expect("register emitter");
    let started = h
        .api
        .engine
        .start("sched", "emitter", None, json!({}))
        .await
        .expect("start emitter");
    h.api
        .engine
        .wait_finished(&started.id, std::time::Duration::from_secs(10))
        .await
        .expect("emitter done");
    // The scheduler's loop takes emitted events on its next turn.
    let looping = h.sched.spawn();
    let t0 = std::time::Instant::now();
    loop {
        let got = instances(&h.api.engine, "onemit").await;
        if let Some(i) = got.first() {
            assert_eq!(got.len(), 1);
            assert_eq!(i.input, json!([{"parcel": 42}]));
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "the emitted event never started the on-schedule"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    looping.abort();
}

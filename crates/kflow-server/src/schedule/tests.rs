//! The pure parts: plans (settings, cron in time zones, durations), tick arithmetic, missed and
//! overlap policies, `on` matching.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::plan::{self, Missed, Overlap, Plan, Settings, Trigger};
use super::state::{self, Fire, State, Ticks};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis()
}

fn show(ms: i64, tz: &str) -> String {
    plan::rfc3339_in(ms, tz)
}

fn doc(schedule: &str, metadata: &str) -> String {
    format!(
        "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: s\n  version: '1.0.0'\n{metadata}schedule:\n{schedule}do:\n  - a:\n      set:\n        x: 1\n"
    )
}

fn load(schedule: &str, metadata: &str) -> kflow_dsl::Workflow {
    kflow_dsl::load(doc(schedule, metadata).as_bytes()).unwrap_or_else(|d| panic!("{d:?}"))
}

fn plan_of(schedule: &str, metadata: &str) -> Plan {
    Plan::build(&load(schedule, metadata), "UTC")
        .expect("valid")
        .expect("scheduled")
}

fn cron_of(expr: &str, tz: &str) -> plan::CronSpec {
    let p = plan_of(
        &format!("  cron: '{expr}'\n"),
        &format!("  metadata:\n    kflow:\n      schedule:\n        timezone: {tz}\n"),
    );
    match p.trigger {
        Trigger::Cron(c) => *c,
        other => panic!("{other:?}"),
    }
}

/// The next `n` ticks after `from`, shown in the zone.
fn next_n(c: &plan::CronSpec, from: i64, n: usize, tz: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = from;
    for _ in 0..n {
        t = c.next_after(t).unwrap().expect("a next tick");
        out.push(show(t, tz));
    }
    out
}

#[test]
fn cron_five_fields_in_a_time_zone_across_spring_forward() {
    // Europe/Paris goes from 02:00 to 03:00 on 2026-03-29.
    let c = cron_of("30 1 * * *", "Europe/Paris");
    let from = utc(2026, 3, 27, 12, 0, 0);
    assert_eq!(
        next_n(&c, from, 3, "Europe/Paris"),
        [
            "2026-03-28T01:30:00+01:00",
            "2026-03-29T01:30:00+01:00",
            "2026-03-30T01:30:00+02:00"
        ]
    );
    // In UTC the same wall-clock time moves by one hour.
    assert_eq!(
        c.next_after(from).unwrap(),
        Some(utc(2026, 3, 28, 0, 30, 0))
    );
    assert_eq!(
        c.next_after(utc(2026, 3, 29, 12, 0, 0)).unwrap(),
        Some(utc(2026, 3, 29, 23, 30, 0))
    );
    // An hour that does not exist that day: every hour-ly tick still fires once per real hour.
    let hourly = cron_of("0 * * * *", "Europe/Paris");
    assert_eq!(
        next_n(&hourly, utc(2026, 3, 28, 23, 30, 0), 3, "Europe/Paris"),
        [
            "2026-03-29T01:00:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-29T04:00:00+02:00"
        ]
    );
}

#[test]
fn cron_in_the_skipped_hour_and_the_repeated_hour() {
    // 02:30 does not exist in Paris on 2026-03-29: that day's tick comes at 03:00 (croner moves
    // a fixed-time job out of the gap), once.
    let c = cron_of("30 2 * * *", "Europe/Paris");
    let ticks = next_n(&c, utc(2026, 3, 27, 12, 0, 0), 3, "Europe/Paris");
    assert_eq!(ticks[0], "2026-03-28T02:30:00+01:00");
    assert!(ticks[1].starts_with("2026-03-29T03:"), "{ticks:?}");
    assert_eq!(ticks[2], "2026-03-30T02:30:00+02:00");
    // 02:30 happens twice on 2026-10-25 (03:00 back to 02:00): a fixed-time job fires once.
    let ticks = next_n(&c, utc(2026, 10, 24, 12, 0, 0), 2, "Europe/Paris");
    assert_eq!(
        ticks,
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    );
    // An interval job fires in both copies of the repeated hour.
    let c = cron_of("*/30 * * * *", "Europe/Paris");
    let ticks = next_n(&c, utc(2026, 10, 24, 23, 45, 0), 5, "Europe/Paris");
    assert_eq!(
        ticks,
        [
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T02:30:00+01:00",
            "2026-10-25T03:00:00+01:00"
        ]
    );
}

#[test]
fn cron_six_fields_has_seconds_first() {
    let c = cron_of("15 0 9 * * MON-FRI", "America/New_York");
    // Friday 2026-03-06, then Monday 2026-03-09 — after the US switch on 2026-03-08.
    let ticks = next_n(&c, utc(2026, 3, 6, 0, 0, 0), 2, "America/New_York");
    assert_eq!(
        ticks,
        ["2026-03-06T09:00:15-05:00", "2026-03-09T09:00:15-04:00"]
    );
    let every_10s = cron_of("*/10 * * * * *", "UTC");
    let t0 = utc(2026, 1, 1, 0, 0, 3);
    assert_eq!(
        every_10s.next_after(t0).unwrap(),
        Some(utc(2026, 1, 1, 0, 0, 10))
    );
    assert_eq!(
        every_10s.latest_at_or_before(t0 + 7_000),
        Some(utc(2026, 1, 1, 0, 0, 10))
    );
    assert_eq!(
        every_10s.before(utc(2026, 1, 1, 0, 0, 10)),
        Some(utc(2026, 1, 1, 0, 0, 0))
    );
    // A fraction of a second past a tick: that tick is not "after".
    assert_eq!(
        every_10s
            .next_after(utc(2026, 1, 1, 0, 0, 10) + 500)
            .unwrap(),
        Some(utc(2026, 1, 1, 0, 0, 20))
    );
}

#[test]
fn default_time_zone_comes_from_the_server() {
    let wf = load("  cron: '0 9 * * *'\n", "");
    let p = Plan::build(&wf, "Asia/Tokyo").unwrap().unwrap();
    assert_eq!(p.timezone, "Asia/Tokyo");
    let Trigger::Cron(c) = &p.trigger else {
        panic!()
    };
    assert_eq!(
        c.next_after(utc(2026, 1, 1, 0, 0, 0)).unwrap(),
        Some(utc(2026, 1, 1, 0, 0, 0) + 24 * 3_600_000)
    );
    // The metadata wins.
    let wf = load(
        "  cron: '0 9 * * *'\n",
        "  metadata:\n    kflow:\n      schedule:\n        timezone: UTC\n",
    );
    assert_eq!(
        Plan::build(&wf, "Asia/Tokyo").unwrap().unwrap().timezone,
        "UTC"
    );
}

#[test]
fn settings_are_read_and_checked() {
    let p = plan_of(
        "  every: PT1M\n",
        "  metadata:\n    kflow:\n      schedule:\n        missed: catchup\n        catchupMax: 3\n        overlap: queue\n",
    );
    assert_eq!(
        p.settings,
        Settings {
            timezone: None,
            missed: Missed::Catchup,
            catchup_max: 3,
            overlap: Overlap::Queue
        }
    );
    assert!(matches!(p.trigger, Trigger::Every { ms: 60_000 }));
    // Defaults.
    let p = plan_of("  every: PT1M\n", "");
    assert_eq!(p.settings, Settings::default());
    assert_eq!(
        (
            p.settings.missed,
            p.settings.catchup_max,
            p.settings.overlap
        ),
        (Missed::Skip, 1, Overlap::Allow)
    );

    // Wrong settings are refused when the workflow is loaded, each at its line and column (the
    // cases are in kflow-dsl's tests/diagnostics).
    let bad = |meta: &str| -> Vec<String> {
        match kflow_dsl::load(doc("  every: PT1M\n", meta).as_bytes()) {
            Ok(_) => panic!("{meta:?} should be refused"),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    };
    let e = bad(
        "  metadata:\n    kflow:\n      schedule:\n        overlap: sometimes\n        missed: never\n        catchupMax: 0\n        timezone: Mars/Olympus\n        colour: red\n",
    );
    let all = e.join("\n");
    for want in [
        "9:18: invalid value 'sometimes' for 'document.metadata.kflow.schedule.overlap' (expected one of: allow, skip, queue, cancel)",
        "10:17: invalid value 'never' for 'document.metadata.kflow.schedule.missed' (expected one of: skip, catchup)",
        "11:21: 'document.metadata.kflow.schedule.catchupMax' must be from 1 to 1000, got 0",
        "12:19: unknown time zone 'Mars/Olympus'",
        "13:9: unknown property 'colour' in 'document.metadata.kflow.schedule'",
    ] {
        assert!(all.contains(want), "{want} not in:\n{all}");
    }
    assert_eq!(e.len(), 5, "{all}");
    assert!(
        bad("  metadata:\n    kflow: 3\n")[0]
            .contains("expected a mapping for 'document.metadata.kflow', got a number")
    );
    assert!(
        bad("  metadata:\n    kflow:\n      schedule: daily\n")[0]
            .contains("expected a mapping for 'document.metadata.kflow.schedule'")
    );
    // Other keys under metadata.kflow are mistakes too; the allowed ones are listed.
    assert!(
        bad("  metadata:\n    kflow:\n      other: 1\n")[0].contains(
            "unknown property 'other' in 'document.metadata.kflow' (expected one of: queue, priority, schedule, concurrency)"
        )
    );
    // Settings without a schedule are a mistake.
    let e = kflow_dsl::load(
        b"document:\n  dsl: '1.0.3'\n  namespace: t\n  name: s\n  version: '1.0.0'\n  metadata:\n    kflow:\n      schedule:\n        overlap: skip\ndo:\n  - a:\n      set:\n        x: 1\n",
    )
    .unwrap_err();
    assert!(e[0].to_string().contains("has no 'schedule'"), "{e:?}");
}

#[test]
fn schedules_kflow_cannot_run_are_refused() {
    let e = Plan::build(&load("  cron: '0 0 30 2 *'\n", ""), "UTC").unwrap_err();
    assert!(e[0].contains("'0 0 30 2 *' never fires"), "{e:?}");
    let e = Plan::build(&load("  every: PT0S\n", ""), "UTC").unwrap_err();
    assert!(e[0].contains("longer than zero"), "{e:?}");
    let e = Plan::build(&load("  every: PT1M\n  cron: '* * * * *'\n", ""), "UTC").unwrap_err();
    assert!(
        e[0].contains("exactly one of every, cron, after, on (found every, cron)"),
        "{e:?}"
    );
    assert!(
        super::check(&load("  after: PT0S\n", "")).is_ok(),
        "after: PT0S restarts at once"
    );
}

#[test]
fn durations_show_as_iso_8601() {
    for (ms, text) in [
        (0, "PT0S"),
        (1000, "PT1S"),
        (90_000, "PT1M30S"),
        (3_600_000, "PT1H"),
        (93_784_250, "P1DT2H3M4.25S"),
        (86_400_000, "P1D"),
    ] {
        assert_eq!(plan::iso_duration(ms), text);
    }
    let p = plan_of("  every:\n    minutes: 90\n", "");
    assert_eq!(
        (p.trigger.kind(), p.trigger.expression()),
        ("every", "PT1H30M".to_string())
    );
}

// --- ticks and the missed policy -----------------------------------------------------------

fn settings(missed: Missed, catchup_max: u32) -> Settings {
    Settings {
        missed,
        catchup_max,
        ..Settings::default()
    }
}

#[test]
fn every_ticks_count_from_the_origin() {
    let t = Ticks::Every {
        origin: 1_000,
        ms: 100,
    };
    assert_eq!(t.next_after(0).unwrap(), Some(1_100));
    assert_eq!(t.next_after(1_000).unwrap(), Some(1_100));
    assert_eq!(t.next_after(1_100).unwrap(), Some(1_200));
    assert_eq!(t.next_after(1_150).unwrap(), Some(1_200));
    assert_eq!(t.latest_at_or_before(1_099), None);
    assert_eq!(t.latest_at_or_before(1_250), Some(1_200));
    assert_eq!(t.before(1_200), Some(1_100));
    assert_eq!(t.before(1_100), None);
}

#[test]
fn due_fires_the_tick_on_time_and_nothing_early() {
    let t = Ticks::Every {
        origin: 0,
        ms: 1_000,
    };
    let s = settings(Missed::Skip, 1);
    let d = state::due(&t, &s, 1_000, 999, 500).unwrap();
    assert_eq!((d.fires, d.next), (vec![], Some(1_000)));
    let d = state::due(&t, &s, 1_000, 1_000, 500).unwrap();
    assert_eq!((d.fires, d.next), (vec![1_000], Some(2_000)));
    // A little late is still on time.
    let d = state::due(&t, &s, 1_000, 1_400, 500).unwrap();
    assert_eq!((d.fires, d.next), (vec![1_000], Some(2_000)));
}

#[test]
fn missed_ticks_skip_or_catch_up_at_most_n() {
    let t = Ticks::Every {
        origin: 0,
        ms: 1_000,
    };
    // Down from before 1_000 until 5_200: 1_000..=4_000 missed, 5_000 on time (grace 500).
    let skip = state::due(&t, &settings(Missed::Skip, 1), 1_000, 5_200, 500).unwrap();
    assert_eq!((skip.fires, skip.next), (vec![5_000], Some(6_000)));
    let c2 = state::due(&t, &settings(Missed::Catchup, 2), 1_000, 5_200, 500).unwrap();
    assert_eq!(
        c2.fires,
        vec![3_000, 4_000, 5_000],
        "the two most recent missed, then the one on time"
    );
    let c10 = state::due(&t, &settings(Missed::Catchup, 10), 1_000, 5_200, 500).unwrap();
    assert_eq!(
        c10.fires,
        vec![1_000, 2_000, 3_000, 4_000, 5_000],
        "never before next_fire"
    );
    // Back at 5_700: 5_000 too is late now.
    let skip = state::due(&t, &settings(Missed::Skip, 1), 1_000, 5_700, 500).unwrap();
    assert_eq!((skip.fires, skip.next), (vec![], Some(6_000)));
    let c1 = state::due(&t, &settings(Missed::Catchup, 1), 1_000, 5_700, 500).unwrap();
    assert_eq!(c1.fires, vec![5_000]);
    // With cron: hourly, down for three hours and a half.
    let c = cron_of("0 * * * *", "UTC");
    let ticks = Ticks::Cron(&c);
    let from = utc(2026, 1, 1, 10, 0, 0);
    let now = utc(2026, 1, 1, 13, 30, 0);
    let skip = state::due(&ticks, &settings(Missed::Skip, 1), from, now, 60_000).unwrap();
    assert_eq!(
        (skip.fires, skip.next),
        (vec![], Some(utc(2026, 1, 1, 14, 0, 0)))
    );
    let c2 = state::due(&ticks, &settings(Missed::Catchup, 2), from, now, 60_000).unwrap();
    assert_eq!(
        c2.fires,
        vec![utc(2026, 1, 1, 12, 0, 0), utc(2026, 1, 1, 13, 0, 0)]
    );
}

// --- overlap --------------------------------------------------------------------------------

fn fire(id: &str) -> Fire {
    Fire {
        id: id.into(),
        fire_ms: 0,
        input: json!({}),
        cancel: vec![],
    }
}

#[test]
fn overlap_policies() {
    // Idle: every policy starts.
    for o in [
        Overlap::Allow,
        Overlap::Skip,
        Overlap::Queue,
        Overlap::Cancel,
    ] {
        let mut s = State::default();
        s.offer(o, fire("a"));
        assert_eq!(
            s.outbox.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["a"],
            "{o:?}"
        );
    }
    let busy = || State {
        running: vec!["r".into()],
        ..State::default()
    };
    let mut s = busy();
    s.offer(Overlap::Allow, fire("a"));
    assert_eq!((s.outbox.len(), s.skipped), (1, 0));
    let mut s = busy();
    s.offer(Overlap::Skip, fire("a"));
    assert_eq!((s.outbox.len(), s.skipped), (0, 1));
    let mut s = busy();
    s.offer(Overlap::Queue, fire("a"));
    s.offer(Overlap::Queue, fire("b"));
    assert_eq!(
        (
            s.outbox.len(),
            s.queue.iter().map(|f| f.id.as_str()).collect::<Vec<_>>()
        ),
        (0, vec!["a", "b"])
    );
    let mut s = busy();
    s.outbox.push(fire("pending"));
    s.offer(Overlap::Cancel, fire("a"));
    assert_eq!(s.outbox.len(), 1);
    assert_eq!(s.outbox[0].id, "a");
    assert_eq!(s.outbox[0].cancel, ["r", "pending"]);
    assert!(s.running.is_empty());
    // A full queue drops (and counts) the newest.
    let mut s = busy();
    for i in 0..state::MAX_QUEUE + 3 {
        s.offer(Overlap::Queue, fire(&i.to_string()));
    }
    assert_eq!((s.queue.len(), s.skipped), (state::MAX_QUEUE, 3));
}

#[test]
fn reconcile_forgets_finished_instances() {
    let mut s = State {
        running: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        ..State::default()
    };
    let status: HashMap<String, Option<(bool, i64)>> = [
        ("a".to_string(), Some((true, 50))),
        ("b".to_string(), Some((false, 0))),
        ("c".to_string(), None),
    ]
    .into_iter()
    .collect();
    s.reconcile(&status);
    assert_eq!(s.running, ["b", "d"]);
    assert_eq!(s.finished_ms, Some(50));
}

#[test]
fn tick_ids_are_stable_uuid_v7_of_the_tick() {
    let a = state::tick_id("ns", "wf", 1_767_225_600_000);
    assert_eq!(a, state::tick_id("ns", "wf", 1_767_225_600_000));
    assert_ne!(a, state::tick_id("ns", "wf", 1_767_225_601_000));
    assert_ne!(a, state::tick_id("ns", "wf2", 1_767_225_600_000));
    let u = uuid::Uuid::parse_str(&a).unwrap();
    assert_eq!(u.get_version_num(), 7);
    let (secs, _) = u.get_timestamp().unwrap().to_unix();
    assert_eq!(secs, 1_767_225_600);
    assert!(!a.contains('.'), "never looks like a sub-workflow id");
}

// --- on events ------------------------------------------------------------------------------

fn on_plan(on: &str, read: Option<&str>) -> plan::OnSpec {
    let read = read.map(|r| format!("  read: {r}\n")).unwrap_or_default();
    match plan_of(&format!("  on:\n{on}{read}"), "").trigger {
        Trigger::On(s) => s,
        other => panic!("{other:?}"),
    }
}

fn ev(ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": "1", "source": "test", "type": ty, "data": data})
}

#[test]
fn on_one_and_any_fire_per_matching_event_with_the_read_mode() {
    let spec = on_plan("    one:\n      with:\n        type: order.placed\n", None);
    let mut s = State::default();
    assert_eq!(
        state::on_event(&spec, &mut s, &ev("order.placed", json!({"n": 1}))),
        vec![json!([{"n": 1}])]
    );
    assert!(state::on_event(&spec, &mut s, &ev("order.other", json!({}))).is_empty());
    let spec = on_plan(
        "    any:\n      - with:\n          type: a\n      - with:\n          type: b\n",
        Some("envelope"),
    );
    let e = ev("b", json!(2));
    assert_eq!(state::on_event(&spec, &mut s, &e), vec![json!([e])]);
    assert!(state::on_event(&spec, &mut s, &ev("c", json!(2))).is_empty());
    let spec = on_plan("    any: []\n", None);
    assert_eq!(
        state::on_event(&spec, &mut s, &ev("whatever", json!(3))),
        vec![json!([3])]
    );
}

#[test]
fn on_all_collects_one_event_per_filter_by_correlation() {
    let spec = on_plan(
        "    all:\n      - with:\n          type: paid\n        correlate:\n          order:\n            from: ${ .data.order }\n      - with:\n          type: shipped\n        correlate:\n          order:\n            from: ${ .data.order }\n",
        None,
    );
    let mut s = State::default();
    assert!(state::on_event(&spec, &mut s, &ev("paid", json!({"order": 1}))).is_empty());
    assert!(state::on_event(&spec, &mut s, &ev("paid", json!({"order": 2}))).is_empty());
    assert!(state::on_event(&spec, &mut s, &ev("shipped", json!({"order": 3}))).is_empty());
    assert_eq!(s.groups.len(), 3);
    // Order 2 completes: its two events, in filter order.
    let out = state::on_event(&spec, &mut s, &ev("shipped", json!({"order": 2})));
    assert_eq!(out, vec![json!([{"order": 2}, {"order": 2}])]);
    assert_eq!(s.groups.len(), 2);
    let out = state::on_event(&spec, &mut s, &ev("paid", json!({"order": 3})));
    assert_eq!(out, vec![json!([{"order": 3}, {"order": 3}])]);
    assert_eq!(s.groups.len(), 1);
    // Durable: the groups are in the state's JSON.
    let back = State::from_value(&s.to_value());
    assert_eq!(back.groups, s.groups);
}

#[test]
fn on_all_without_correlation_pairs_in_arrival_order() {
    let spec = on_plan(
        "    all:\n      - with:\n          type: a\n      - with:\n          type: b\n",
        None,
    );
    let mut s = State::default();
    assert!(state::on_event(&spec, &mut s, &ev("a", json!(1))).is_empty());
    assert!(state::on_event(&spec, &mut s, &ev("a", json!(2))).is_empty());
    assert_eq!(
        state::on_event(&spec, &mut s, &ev("b", json!(3))),
        vec![json!([1, 3])]
    );
    assert_eq!(
        state::on_event(&spec, &mut s, &ev("b", json!(4))),
        vec![json!([2, 4])]
    );
    assert!(s.groups.is_empty());
}

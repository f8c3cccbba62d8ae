//! Turning the server's JSON into text for people: aligned tables, times, the instance
//! summary of `kflow get`, and history lines.
//!
//! Everything here is pure and forgiving about the exact shape of the server's answers: a
//! time may be an RFC 3339 string or milliseconds since the epoch, a task reference a string
//! or an object, and unknown shapes fall back to compact JSON.

use chrono::{DateTime, Local, TimeZone, Utc};
use serde_json::Value;

use kflow_api::instances::{HistoryEventDto, InstanceDto, InstanceViewDto, WaitingDto};

/// At most `max` characters of `s`, with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Columns padded to their widest cell, two spaces apart; no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A time from the server: RFC 3339 text, or milliseconds since the epoch.
pub fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => s
                .parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis),
        },
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

/// `v` formatted with `fmt` in `tz`; the raw value when it is not a time.
pub fn fmt_time_in<Tz: TimeZone>(v: &Value, tz: &Tz, fmt: &str) -> String
where
    Tz::Offset: std::fmt::Display,
{
    match parse_time(v) {
        Some(t) => t.with_timezone(tz).format(fmt).to_string(),
        None => scalar(v),
    }
}

/// Every date and time the CLI shows: local time with its offset from UTC, so that a time read
/// on one machine means the same on another.
pub const DATETIME: &str = "%Y-%m-%d %H:%M:%S%:z";
/// The same, to the millisecond (history and timers).
pub const DATETIME_MS: &str = "%Y-%m-%d %H:%M:%S%.3f%:z";

/// A date and time in local time with its offset, to the second.
pub fn fmt_datetime(v: &Value) -> String {
    fmt_time_in(v, &Local, DATETIME)
}

/// A time of day in local time, to the millisecond.
pub fn fmt_clock(v: &Value) -> String {
    fmt_time_in(v, &Local, "%H:%M:%S%.3f")
}

/// A string as is, anything else as compact JSON (null as empty).
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `namespace/name@version`.
pub fn workflow_label(namespace: &str, name: &str, version: &str) -> String {
    let mut out = format!("{namespace}/{name}");
    if !version.is_empty() {
        out.push('@');
        out.push_str(version);
    }
    out
}

/// The `kflow ls` table.
pub fn instance_table(items: &[InstanceDto]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                format!("{}/{}", i.namespace, i.name),
                i.version.clone(),
                i.status.as_str().to_string(),
                fmt_datetime(&Value::from(i.created_ms)),
            ]
        })
        .collect();
    table(&["ID", "WORKFLOW", "VERSION", "STATUS", "CREATED"], &rows)
}

/// JSON pretty-printed with every line after the first indented by `indent` spaces.
fn indented_json(v: &Value, indent: usize) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let pad = " ".repeat(indent);
    text.lines().collect::<Vec<_>>().join(&format!("\n{pad}"))
}

/// The readable summary of `kflow get`.
pub fn instance_summary(view: &InstanceViewDto) -> String {
    const W: usize = 10;
    let inst = &view.instance;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        out.push_str(&format!("{:<W$} {value}\n", format!("{name}:")));
    };
    field("ID", &inst.id);
    field(
        "Workflow",
        &workflow_label(&inst.namespace, &inst.name, &inst.version),
    );
    field("Status", inst.status.as_str());
    if let Some(why) = &inst.attention {
        field("Attention", why);
    }
    field("Created", &fmt_datetime(&Value::from(inst.created_ms)));
    let pad = " ".repeat(W + 1);
    if !view.running.is_empty() {
        field("Running", &view.running.join(&format!("\n{pad}")));
    }
    if !view.queued.is_empty() {
        let lines: Vec<String> = view
            .queued
            .iter()
            .map(|t| format!("{t} (waiting for a worker: see `kflow explain`)"))
            .collect();
        field("Queued", &lines.join(&format!("\n{pad}")));
    }
    if !view.waiting.is_empty() {
        let lines: Vec<String> = view.waiting.iter().map(waiting_line).collect();
        field("Waiting", &lines.join(&format!("\n{pad}")));
    }
    if let Some(eta) = &view.eta {
        field(
            "ETA",
            &format!(
                "about {} (up to {} at p95), from learned run times",
                fmt_ms(eta.remaining_ms_p50),
                fmt_ms(eta.remaining_ms_p95)
            ),
        );
    }
    for (name, v) in [("Output", &inst.output), ("Error", &inst.error)] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
            field(name, &indented_json(v, W + 1));
        }
    }
    out
}

/// `TASK on WHAT [until TIME]` for one waiting entry.
pub fn waiting_line(w: &WaitingDto) -> String {
    let mut line = w.task.clone();
    line.push_str(" on ");
    line.push_str(&clip(&w.on, 80));
    if let Some(until) = w.until_ms {
        line.push_str(" until ");
        line.push_str(&fmt_time_in(&Value::from(until), &Local, DATETIME_MS));
    }
    line
}

/// What one history item says, without its time: the notice type and task for notices,
/// a short rendering of the data otherwise.
pub fn history_summary(item: &HistoryEventDto) -> String {
    let data = &item.data;
    match item.kind.as_str() {
        "notice" => notice_summary(data),
        "started" => match data.get("input") {
            Some(input) => format!("input {}", clip(&input.to_string(), 100)),
            None => clip(&scalar(data), 100),
        },
        _ => clip(&scalar(data), 100),
    }
}

/// `task.faulted /do/0/x: <error title>` and the like.
pub fn notice_summary(data: &Value) -> String {
    let ty = data.get("type").and_then(Value::as_str).unwrap_or("notice");
    let mut s = ty.to_owned();
    let r = data
        .get("reference")
        .or_else(|| data.get("task"))
        .map(scalar)
        .unwrap_or_default();
    if !r.is_empty() {
        s.push(' ');
        s.push_str(&r);
    }
    if let Some(e) = data.get("error").filter(|e| !e.is_null()) {
        let what = ["title", "detail", "type"]
            .iter()
            .find_map(|k| e.get(*k).and_then(Value::as_str));
        s.push_str(": ");
        s.push_str(&clip(
            &what.map(str::to_owned).unwrap_or_else(|| e.to_string()),
            100,
        ));
    }
    if let Some(a) = data.get("attempt").filter(|a| !a.is_null()) {
        s.push_str(&format!(" (attempt {})", scalar(a)));
    }
    s
}

/// One line per history item: `SEQ  TIME  KIND  SUMMARY`.
pub fn history_lines<Tz: TimeZone>(items: &[HistoryEventDto], tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.seq.to_string(),
                fmt_time_in(&Value::from(i.time_ms), tz, DATETIME_MS),
                i.kind.clone(),
                history_summary(i),
            ]
        })
        .collect();
    table(&["SEQ", "TIME", "KIND", "SUMMARY"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_pads_columns_and_trims_lines() {
        let rows = vec![
            vec!["a".into(), "long value".into(), "x".into()],
            vec!["bbbb".into(), "é".into(), "".into()],
        ];
        assert_eq!(
            table(&["ID", "NAME", "S"], &rows),
            "ID    NAME        S\na     long value  x\nbbbb  é\n"
        );
        assert_eq!(table(&["ID", "NAME"], &[]), "ID  NAME\n");
    }

    fn instance(extra: Value) -> Value {
        let mut v = json!({"id": "01H", "namespace": "ns", "name": "wf", "version": "1.0.0",
            "status": "running", "input": {}, "created": "", "created_ms": 0, "updated": "",
            "updated_ms": 0, "running": [], "waiting": []});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn instance_table_reads_the_fields() {
        let items: Vec<InstanceDto> = vec![serde_json::from_value(instance(json!({}))).unwrap()];
        let t = instance_table(&items);
        assert!(
            t.starts_with(
                "ID   WORKFLOW  VERSION  STATUS   CREATED\n01H  ns/wf     1.0.0    running  19"
            ),
            "{t}"
        );
    }

    #[test]
    fn times_from_text_or_millis() {
        let want = "2024-05-01 12:00:01.250";
        let f = "%Y-%m-%d %H:%M:%S%.3f";
        assert_eq!(
            fmt_time_in(&json!("2024-05-01T14:00:01.25+02:00"), &Utc, f),
            want
        );
        assert_eq!(fmt_time_in(&json!(1714564801250i64), &Utc, f), want);
        assert_eq!(fmt_time_in(&json!("yesterday"), &Utc, f), "yesterday");
        assert_eq!(fmt_time_in(&Value::Null, &Utc, f), "");
    }

    #[test]
    fn clip_counts_chars() {
        assert_eq!(clip("héllo", 5), "héllo");
        assert_eq!(clip("héllo world", 5), "héll…");
    }

    #[test]
    fn summary_of_a_faulted_instance() {
        let inst: InstanceViewDto = serde_json::from_value(instance(json!({"id": "i1",
            "status": "faulted", "waiting": [{"task": "/do/1/wait", "on": "event"}],
            "error": {"type": "https://x/errors/runtime", "status": 500}})))
        .unwrap();
        let text = instance_summary(&inst);
        // Times carry their offset from UTC (`+01:00`), whatever the local zone.
        let created = text.lines().find(|l| l.starts_with("Created:")).unwrap();
        let offset = &created[created.len() - 6..];
        assert!(
            (offset.starts_with('+') || offset.starts_with('-')) && offset.as_bytes()[3] == b':',
            "{created}"
        );
        assert!(
            text.starts_with(
                "ID:        i1\nWorkflow:  ns/wf@1.0.0\nStatus:    faulted\nCreated:   19"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("Waiting:   /do/1/wait on event\n\
             Error:     {\n             \"type\": \"https://x/errors/runtime\",\n             \"status\": 500\n           }\n"),
            "{text}"
        );
    }

    #[test]
    fn history_lines_summarise_each_kind() {
        let items: Vec<HistoryEventDto> = serde_json::from_value(json!([
            {"seq": 1, "time": "", "time_ms": 0, "kind": "started", "data": {"input": {"a": 1}}},
            {"seq": 2, "time": "", "time_ms": 5, "kind": "notice",
                   "data": {"type": "task.started", "task": "x", "reference": "/do/0/x", "time": "t"}},
            {"seq": 3, "time": "", "time_ms": 9, "kind": "notice",
                   "data": {"type": "task.faulted", "reference": "/do/0/x", "error": {"title": "boom"}}},
            {"seq": 4, "time": "", "time_ms": 10, "kind": "cancelled", "data": null},
        ]))
        .unwrap();
        assert_eq!(
            history_lines(&items, &Utc),
            "SEQ  TIME                           KIND       SUMMARY\n\
             1    1970-01-01 00:00:00.000+00:00  started    input {\"a\":1}\n\
             2    1970-01-01 00:00:00.005+00:00  notice     task.started /do/0/x\n\
             3    1970-01-01 00:00:00.009+00:00  notice     task.faulted /do/0/x: boom\n\
             4    1970-01-01 00:00:00.010+00:00  cancelled\n"
        );
    }
}

/// Milliseconds as a short duration: `850 ms`, `12.4 s`, `3 min 5 s`.
fn fmt_ms(ms: f64) -> String {
    if ms < 1_000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1e3)
    } else {
        let s = (ms / 1e3).round() as u64;
        format!("{} min {} s", s / 60, s % 60)
    }
}

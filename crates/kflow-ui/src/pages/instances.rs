//! Instances: the filterable list, and one instance live (graph by task state, timeline,
//! input/output/error, what it waits for, its history).

use std::collections::HashMap;

use kflow_api::definitions::Graph;
use kflow_api::instances::{
    Explanation, HistoryEventDto, HistoryList, InstanceDto, InstanceList, InstanceViewDto,
};
use maud::{Markup, html};

use super::workflows::workflow_url;
use crate::api::{Api, UiError, enc};
use crate::graph::{self, Marks};
use crate::render::{Viewer, duration, json_block, raw, status_badge};

/// History events shown per page of an instance.
pub const HISTORY_PAGE: usize = 1000;
/// Rows of the timeline drawn at most.
const TIMELINE_ROWS: usize = 1000;

pub fn instance_url(id: &str) -> String {
    format!("/ui/instances/{}", enc(id))
}

/// A table of instances.
pub fn instance_rows(items: &[InstanceDto]) -> Markup {
    html! {
        @if items.is_empty() {
            p.note { "No instance." }
        } @else {
            div.scroll { table.list.instances {
                thead { tr { th { "Instance" } th { "Workflow" } th { "Status" } th { "Created" } th { "Took" } } }
                tbody {
                    @for i in items {
                        tr {
                            td { a.mono href=(instance_url(&i.id)) { (i.id) } }
                            td { a href=(workflow_url(&i.namespace, &i.name)) { (i.namespace) "/" (i.name) } " @" (i.version) }
                            td { (status_badge(i.status.as_str())) }
                            td.time { (i.created) }
                            td { @if i.status.is_finished() { (duration(i.updated_ms - i.created_ms)) } }
                        }
                    }
                }
            } }
        }
    }
}

const STATUSES: [&str; 7] = [
    "",
    "queued",
    "running",
    "suspended",
    "completed",
    "faulted",
    "cancelled",
];

pub async fn list(
    api: &Api,
    _v: &Viewer,
    q: &HashMap<String, String>,
) -> Result<(String, Markup), UiError> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let mut query = vec![format!("limit={}", 50)];
    for k in ["namespace", "name", "status", "from", "to", "cursor", "q"] {
        if !get(k).is_empty() {
            query.push(format!("{k}={}", enc(get(k))));
        }
    }
    let list: InstanceList = api
        .get(&format!("/api/v1/instances?{}", query.join("&")))
        .await?;
    let next_url = list.next.as_ref().map(|c| {
        let mut params: Vec<String> = ["namespace", "name", "status", "from", "to", "q"]
            .iter()
            .filter(|k| !get(k).is_empty())
            .map(|k| format!("{k}={}", enc(get(k))))
            .collect();
        params.push(format!("cursor={}", enc(c)));
        format!("/ui/instances?{}", params.join("&"))
    });
    let body = html! {
        h1 { "Instances" }
        form.filters method="get" action="/ui/instances" {
            label { "Namespace" input name="namespace" value=(get("namespace")) placeholder="all"; }
            label { "Workflow" input name="name" value=(get("name")) placeholder="all"; }
            label { "Status" select name="status" {
                @for s in STATUSES { option value=(s) selected[get("status") == s] { @if s.is_empty() { "any" } @else { (s) } } }
            } }
            label { "From" input name="from" value=(get("from")) placeholder="2026-12-01T00:00:00Z"; }
            label { "To" input name="to" value=(get("to")) placeholder="RFC 3339 or ms"; }
            label { "Input contains" input name="q" value=(get("q")) placeholder="text in the input"; }
            button type="submit" { "Filter" }
        }
        // Refreshed in place every few seconds while the page is visible.
        div #rows data-refresh="5" { (instance_rows(&list.items)) }
        @if let Some(n) = next_url { p { a href=(n) { "Older →" } } }
    };
    Ok(("Instances".into(), body))
}

/// What a task's notices say about it, in history order.
#[derive(Debug, Clone, Default)]
struct Span {
    reference: String,
    name: String,
    start_ms: i64,
    /// When a worker took its call or process: before, it waited in a queue.
    run_ms: Option<i64>,
    end_ms: Option<i64>,
    outcome: &'static str,
}

/// The states of tasks and the spans of the timeline, read from history events.
fn read_history(events: &[HistoryEventDto]) -> (HashMap<String, &'static str>, Vec<Span>) {
    let mut state: HashMap<String, &'static str> = HashMap::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut open: HashMap<String, Vec<usize>> = HashMap::new();
    for ev in events {
        if ev.kind == "delivery"
            && let (Some(task), Some(leased)) = (
                ev.data.get("task").and_then(|t| t.as_str()),
                ev.data.get("leased_ms").and_then(|t| t.as_i64()),
            )
            && let Some(&i) = open.get(task).and_then(|v| v.last())
        {
            spans[i].run_ms = Some(leased.max(spans[i].start_ms));
        }
        let Some(kind) = ev.data.get("type").and_then(|t| t.as_str()) else {
            continue;
        };
        let Some(reference) = ev.data.get("reference").and_then(|r| r.as_str()) else {
            continue;
        };
        let name = ev.data.get("task").and_then(|t| t.as_str()).unwrap_or("");
        let s = match kind {
            "task.started" => "running",
            "task.completed" => "completed",
            "task.faulted" => "faulted",
            "task.skipped" => "skipped",
            "task.cancelled" => "cancelled",
            "task.retried" => "retrying",
            _ => continue,
        };
        state.insert(reference.to_string(), s);
        match kind {
            "task.started" => {
                open.entry(reference.to_string())
                    .or_default()
                    .push(spans.len());
                spans.push(Span {
                    reference: reference.into(),
                    name: name.into(),
                    start_ms: ev.time_ms,
                    run_ms: None,
                    end_ms: None,
                    outcome: "running",
                });
            }
            "task.completed" | "task.faulted" | "task.cancelled" | "task.retried" => {
                if let Some(i) = open.get_mut(reference).and_then(|v| v.pop()) {
                    spans[i].end_ms = Some(ev.time_ms);
                    spans[i].outcome = s;
                }
            }
            _ => {}
        }
    }
    (state, spans)
}

/// The timeline (Gantt) of an instance's tasks, as SVG: one row per run of a task.
fn timeline(spans: &[Span], t0: i64, now: i64) -> Markup {
    if spans.is_empty() {
        return html! { p.note { "No task has started yet." } };
    }
    let shown = &spans[..spans.len().min(TIMELINE_ROWS)];
    let end = shown
        .iter()
        .map(|s| s.end_ms.unwrap_or(now))
        .max()
        .unwrap_or(now)
        .max(t0 + 1);
    let total = (end - t0) as f64;
    let (label_w, bar_w, row_h) = (180.0, 620.0, 20.0);
    let h = shown.len() as f64 * row_h + 24.0;
    let x = |ms: i64| label_w + (ms - t0) as f64 / total * bar_w;
    html! {
        div.timeline-wrap {
            svg.timeline xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (label_w + bar_w + 90.0) " " (h) } width=(label_w + bar_w + 90.0) height=(h) {
                @for (i, s) in shown.iter().enumerate() {
                    @let y = i as f64 * row_h + 4.0;
                    @let x0 = x(s.start_ms);
                    @let x1 = x(s.end_ms.unwrap_or(now)).max(x0 + 2.0);
                    @let end = s.end_ms.unwrap_or(now);
                    @let xr = s.run_ms.map(|r| x(r.min(end)).clamp(x0, x1));
                    g class={ "bar o-" (s.outcome) } data-id=(s.reference) {
                        title {
                            (s.name) " · " (s.outcome) " · " (duration(end - s.start_ms))
                            @if let Some(r) = s.run_ms { " (queued " (duration(r.min(end) - s.start_ms)) ", ran " (duration(end - r.min(end))) ")" }
                        }
                        text.tl-label x="4" y=(y + 13.0) { (truncate(&s.name, 24)) }
                        @match xr {
                            Some(xr) => {
                                rect.wait x=(format!("{x0:.1}")) y=(y) width=(format!("{:.1}", (xr - x0).max(0.0))) height="14" rx="3" {}
                                rect x=(format!("{xr:.1}")) y=(y) width=(format!("{:.1}", (x1 - xr).max(1.0))) height="14" rx="3" {}
                            }
                            None => {
                                rect x=(format!("{x0:.1}")) y=(y) width=(format!("{:.1}", x1 - x0)) height="14" rx="3" {}
                            }
                        }
                        text.tl-time x=(format!("{:.1}", x1 + 4.0)) y=(y + 12.0) { (duration(s.end_ms.unwrap_or(now) - s.start_ms)) }
                    }
                }
                text.tl-axis x=(label_w) y=(h - 4.0) { "0" }
                text.tl-axis x=(label_w + bar_w - 40.0) y=(h - 4.0) { (duration(end - t0)) }
            }
            @if spans.len() > TIMELINE_ROWS { p.note { "The first " (TIMELINE_ROWS) " of " (spans.len()) " task runs are shown." } }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.into()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

pub async fn detail(
    api: &Api,
    v: &Viewer,
    id: &str,
    q: &HashMap<String, String>,
) -> Result<(String, Markup), UiError> {
    let base = format!("/api/v1/instances/{}", enc(id));
    let view: InstanceViewDto = api.get(&base).await?;
    let inst = &view.instance;
    // A short id resolves to the whole one: the rest of the page uses it.
    let base = format!("/api/v1/instances/{}", enc(&inst.id));
    let after: i64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let history: HistoryList = api
        .get(&format!(
            "{base}/history?after={after}&limit={HISTORY_PAGE}"
        ))
        .await?;
    let more = history.items.len() >= HISTORY_PAGE;
    let last_seq = history.items.last().map_or(after, |e| e.seq);
    let g: Graph = api
        .get(&format!(
            "/api/v1/definitions/{}/{}/versions/{}/graph",
            enc(&inst.namespace),
            enc(&inst.name),
            enc(&inst.version)
        ))
        .await
        .unwrap_or_default();
    let explanation: Option<Explanation> = if inst.status.is_finished() {
        None
    } else {
        api.get(&format!("{base}/explain")).await.ok()
    };
    let (states, spans) = read_history(&history.items);
    // The tasks that faulted, innermost (first to fault) first: each a place to retry from.
    let mut faulted: Vec<(String, String)> = Vec::new();
    for ev in &history.items {
        if ev.data.get("type").and_then(|t| t.as_str()) == Some("task.faulted")
            && let (Some(r), Some(n)) = (
                ev.data.get("reference").and_then(|r| r.as_str()),
                ev.data.get("task").and_then(|t| t.as_str()),
            )
            && !faulted.iter().any(|(x, _)| x == r)
        {
            faulted.push((r.to_string(), n.to_string()));
        }
    }
    faulted.truncate(3);
    let retried_from = history.items.iter().find_map(|ev| {
        (ev.data.get("type").and_then(|t| t.as_str()) == Some("instance.retried"))
            .then(|| {
                ev.data
                    .get("from")
                    .and_then(|f| f.as_str())
                    .map(str::to_string)
            })
            .flatten()
    });
    let mut marks: Marks = Marks::new();
    for (r, s) in &states {
        marks.entry(r.clone()).or_default().push(s);
    }
    for r in &view.queued {
        marks.entry(r.clone()).or_default().push("queued");
    }
    for w in &view.waiting {
        marks.entry(w.task.clone()).or_default().push("waiting");
    }
    if inst.status.as_str() == "completed" {
        marks.entry("end".into()).or_default().push("completed");
    }
    marks.entry("start".into()).or_default().push("completed");
    let status = inst.status.as_str();
    let finished = inst.status.is_finished();
    let now = if finished { inst.updated_ms } else { now_ms() };
    let body = html! {
        div.titlebar {
            h1 { "Instance " span.mono { (inst.id) } }
            div.actions #actions data-id=(inst.id) {
                @if v.may_operate() && !finished {
                    @if status == "suspended" {
                        button.action data-action="resume" { "Resume" }
                    } @else {
                        button.action.secondary data-action="suspend" { "Suspend" }
                    }
                    button.action.danger data-action="cancel" data-confirm="Cancel this instance?" { "Cancel" }
                }
                @if v.may_operate() && status == "faulted" {
                    @for (reference, name) in &faulted {
                        button.action data-retry=(reference) title={ "A new instance that reuses what ran before " (name) } { "Retry from " (name) }
                    }
                }
            }
        }
        p.meta {
            a href=(workflow_url(&inst.namespace, &inst.name)) { (inst.namespace) "/" (inst.name) } " @" (inst.version)
            " · " span #status { (status_badge(status)) }
            " · created " span.time { (inst.created) }
            " · updated " span.time #updated { (inst.updated) }
            @if finished { " · took " (duration(inst.updated_ms - inst.created_ms)) }
            @if let Some(eta) = &view.eta {
                " · ETA about " span #eta { (duration(eta.remaining_ms_p50 as i64)) }
                " (p95 " (duration(eta.remaining_ms_p95 as i64)) ")"
            }
        }
        @if let Some(a) = &inst.attention { p.note.warn { (a) } }
        @if let Some(f) = &retried_from { p.note { "A retry of " a.mono href=(instance_url(f)) { (f) } ": what ran before the retried task was reused, not run again." } }
        p.error-line #action-error hidden {}
        // The live stream resumes after the last event rendered here.
        div #live data-watch={ (base) "/watch" } data-last=(last_seq) data-finished=(finished) {}
        div.split {
            section.graphbox {
                h2 { "Graph" }
                div.legend { @for s in ["running", "queued", "waiting", "completed", "faulted", "cancelled", "skipped"] { span class={ "chip st-" (s) } { (s) } } }
                div.graph-wrap #graph { (raw(graph::svg(&g, &marks))) }
            }
            section {
                @if let Some(e) = &explanation {
                    h2 { "Waiting for" }
                    @if e.waiting.is_empty() { p.note { "Nothing: the engine is working on it." } }
                    ul.reasons { @for r in &e.waiting { li { @if let Some(t) = &r.task { code { (t) } ": " } (r.reason) } } }
                }
                h2 { "Input" } (json_block(&inst.input))
                @if let Some(o) = &inst.output { h2 { "Output" } (json_block(o)) }
                @if let Some(e) = &inst.error { h2 { "Error" } (json_block(e)) }
            }
        }
        section {
            h2 { "Timeline" }
            p.meta { "Each bar is a run of a task; for calls and processes, the pale part is the wait in a queue, the rest the run on a worker." }
            div #timeline { (timeline(&spans, inst.created_ms, now)) }
        }
        section {
            h2 { "History" }
            div.scroll { table.list.history {
                thead { tr { th { "#" } th { "Time" } th { "Event" } th { "Task" } th { "Data" } } }
                tbody #history { @for ev in &history.items { (history_row(ev)) } }
            } }
            @if more { p { a href={ (instance_url(id)) "?after=" (last_seq) } { "Next " (HISTORY_PAGE) " events →" } } }
            @if after > 0 { p { a href=(instance_url(id)) { "← First events" } } }
        }
    };
    Ok((format!("Instance {}", inst.id), body))
}

/// One history row (the page's script builds the same from live events).
pub fn history_row(ev: &HistoryEventDto) -> Markup {
    let kind = ev
        .data
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or(&ev.kind)
        .to_string();
    let task = ev.data.get("task").and_then(|t| t.as_str()).unwrap_or("");
    let mut rest = ev.data.clone();
    if let Some(m) = rest.as_object_mut() {
        for k in ["type", "task", "reference", "time"] {
            m.remove(k);
        }
    }
    let data = match &rest {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        v => truncate(&v.to_string(), 400),
    };
    html! {
        tr {
            td { (ev.seq) }
            td.time { (ev.time) }
            td { (kind) }
            td { (task) }
            td.mono.data { (data) }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

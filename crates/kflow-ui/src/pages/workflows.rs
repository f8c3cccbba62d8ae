//! Workflows: every definition and version, one version's graph and source, the diff of two.

use std::collections::{BTreeMap, HashMap};

use kflow_api::definitions::{Analysis, DefinitionDetail, DefinitionDiff, DefinitionList, Graph};
use kflow_api::instances::InstanceList;
use maud::{Markup, html};

use super::instances::instance_rows;
use crate::api::{Api, UiError, enc};
use crate::graph::{self, Marks};
use crate::render::{Viewer, raw};

pub fn workflow_url(ns: &str, name: &str) -> String {
    format!("/ui/workflows/{}/{}", enc(ns), enc(name))
}

pub async fn list(api: &Api, _v: &Viewer) -> Result<(String, Markup), UiError> {
    let defs: DefinitionList = api.get("/api/v1/definitions").await?;
    let mut by_name: BTreeMap<(String, String), Vec<_>> = BTreeMap::new();
    for d in defs.items {
        by_name
            .entry((d.namespace.clone(), d.name.clone()))
            .or_default()
            .push(d);
    }
    let body = html! {
        h1 { "Workflows" }
        @if by_name.is_empty() {
            p.note { "No workflow is registered yet. Write one in the " a href="/ui/editor" { "editor" } ", or run " code { "kflow register FILE" } "." }
        } @else {
            div.scroll { table.list {
                thead { tr { th { "Namespace" } th { "Workflow" } th { "Latest" } th { "Versions" } th { "Registered" } } }
                tbody {
                    @for ((ns, name), versions) in &by_name {
                        @let latest = versions.iter().max_by(|a, b| version_cmp(&a.version, &b.version));
                        tr {
                            td { (ns) }
                            td { a href=(workflow_url(ns, name)) { (name) } }
                            td { @if let Some(l) = latest { (l.version) @if l.deprecated { " " span.badge.s-deprecated { "deprecated" } } } }
                            td { (versions.len()) }
                            td.time { @if let Some(l) = latest { (l.created) } }
                        }
                    }
                }
            } }
        }
    };
    Ok(("Workflows".into(), body))
}

/// Semantic-version order, enough for sorting lists (numeric parts compared as numbers).
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |v: &str| -> (Vec<u64>, bool, String) {
        let (core, pre) = v.split_once('-').map_or((v, None), |(c, p)| (c, Some(p)));
        (
            core.split('.').map(|p| p.parse().unwrap_or(0)).collect(),
            pre.is_none(),
            pre.unwrap_or("").to_string(),
        )
    };
    key(a).cmp(&key(b))
}

pub async fn detail(
    api: &Api,
    v: &Viewer,
    ns: &str,
    name: &str,
    version: Option<&str>,
) -> Result<(String, Markup), UiError> {
    let version = version.filter(|s| !s.is_empty()).unwrap_or("latest");
    let base = format!("/api/v1/definitions/{}/{}", enc(ns), enc(name));
    let def: DefinitionDetail = api
        .get(&format!("{base}/versions/{}", enc(version)))
        .await?;
    let v_enc = enc(&def.summary.version);
    let g: Graph = api.get(&format!("{base}/versions/{v_enc}/graph")).await?;
    let all: DefinitionList = api
        .get(&format!("/api/v1/definitions?namespace={}", enc(ns)))
        .await?;
    let mut versions: Vec<_> = all.items.into_iter().filter(|d| d.name == name).collect();
    versions.sort_by(|a, b| version_cmp(&b.version, &a.version));
    let recent: InstanceList = api
        .get(&format!(
            "/api/v1/instances?namespace={}&name={}&limit=20",
            enc(ns),
            enc(name)
        ))
        .await?;
    let url = workflow_url(ns, name);
    let body = html! {
        div.titlebar {
            h1 { (ns) "/" (name) " " span.version { "@" (def.summary.version) } }
            div.actions {
                @if v.may_operate() && !def.summary.deprecated {
                    a.button href={ (url) "/start?version=" (v_enc) } { "Start" }
                }
                @if v.may_edit() {
                    a.button.secondary href={ "/ui/editor?namespace=" (enc(ns)) "&name=" (enc(name)) "&version=" (v_enc) } { "Edit" }
                }
            }
        }
        @if def.summary.deprecated { p.note { "This version is deprecated: it starts no new instances." } }
        p.meta { "Registered " span.time { (def.summary.created) } " · hash " code { (def.summary.hash.get(..12).unwrap_or(&def.summary.hash)) } " · " a href={ (url) "/analysis" } { "analysis" } }
        div.split {
            section.graphbox {
                h2 { "Graph" }
                div.graph-wrap { (raw(graph::svg(&g, &Marks::new()))) }
            }
            section.sourcebox {
                h2 { "Source" }
                (source_view(&def.source))
            }
        }
        section {
            h2 { "Versions" }
            div.scroll { table.list {
                thead { tr { th { "Version" } th { "Registered" } th { "" } th { "" } } }
                tbody {
                    @for (i, d) in versions.iter().enumerate() {
                        tr {
                            td { a href={ (url) "?version=" (enc(&d.version)) } { (d.version) } @if d.deprecated { " " span.badge.s-deprecated { "deprecated" } } }
                            td.time { (d.created) }
                            td { @if let Some(prev) = versions.get(i + 1) {
                                a href={ (url) "/diff?from=" (enc(&prev.version)) "&to=" (enc(&d.version)) } { "diff with " (prev.version) }
                            } }
                            td { @if d.version != def.summary.version {
                                a href={ (url) "/diff?from=" (enc(&d.version)) "&to=" (v_enc) } { "diff with this one" }
                            } }
                        }
                    }
                }
            } }
        }
        section {
            h2 { "Recent instances" }
            (instance_rows(&recent.items))
        }
    };
    Ok((format!("{ns}/{name}"), body))
}

/// A document with line numbers; each line is an anchor (`#L12`) the graph links to.
pub fn source_view(src: &str) -> Markup {
    html! {
        div.source {
            table.code {
                tbody {
                    @for (i, line) in src.lines().enumerate() {
                        tr id={ "L" (i + 1) } {
                            td.ln { (i + 1) }
                            td.tx { (line) }
                        }
                    }
                }
            }
        }
    }
}

/// The node id of every task path of a graph (`guard/risky` → `/do/1/guard/try/0/risky`).
fn name_paths(g: &Graph) -> HashMap<String, String> {
    g.nodes
        .iter()
        .map(|n| (n.path.clone(), n.id.clone()))
        .collect()
}

pub async fn diff(
    api: &Api,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<(String, Markup), UiError> {
    let base = format!("/api/v1/definitions/{}/{}", enc(ns), enc(name));
    let mut query = Vec::new();
    for k in ["from", "to"] {
        if let Some(v) = q.get(k).filter(|v| !v.is_empty()) {
            query.push(format!("{k}={}", enc(v)));
        }
    }
    let d: DefinitionDiff = api.get(&format!("{base}/diff?{}", query.join("&"))).await?;
    let g_from: Graph = api
        .get(&format!("{base}/versions/{}/graph", enc(&d.from)))
        .await?;
    let g_to: Graph = api
        .get(&format!("{base}/versions/{}/graph", enc(&d.to)))
        .await?;
    let mark = |g: &Graph, names: &[String], class: &'static str, marks: &mut Marks| {
        let paths = name_paths(g);
        for n in names {
            if let Some(id) = paths.get(n) {
                marks.entry(id.clone()).or_default().push(class);
            }
        }
    };
    let mut from_marks = Marks::new();
    mark(&g_from, &d.removed, "removed", &mut from_marks);
    mark(&g_from, &d.changed, "changed", &mut from_marks);
    let mut to_marks = Marks::new();
    mark(&g_to, &d.added, "added", &mut to_marks);
    mark(&g_to, &d.changed, "changed", &mut to_marks);
    let url = workflow_url(ns, name);
    let body = html! {
        h1 { a href=(url) { (ns) "/" (name) } " · " (d.from) " → " (d.to) }
        div.changes {
            span.chip.added { (d.added.len()) " added" }
            span.chip.removed { (d.removed.len()) " removed" }
            span.chip.changed { (d.changed.len()) " changed" }
        }
        ul.tasklist {
            @for t in &d.added { li.added { "+ " (t) } }
            @for t in &d.removed { li.removed { "− " (t) } }
            @for t in &d.changed { li.changed { "~ " (t) } }
        }
        div.split {
            section.graphbox { h2 { (d.from) } div.graph-wrap { (raw(graph::svg(&g_from, &from_marks))) } }
            section.graphbox { h2 { (d.to) } div.graph-wrap { (raw(graph::svg(&g_to, &to_marks))) } }
        }
        section {
            h2 { "Text" }
            @if d.lines.is_empty() {
                p.note { "The two versions have the same text." }
            } @else {
                div.source { table.code.diff { tbody {
                    @for l in &d.lines {
                        @let cls = match l.op.as_str() { "+" => "add", "-" => "del", "@" => "hunk", _ => "ctx" };
                        tr class=(cls) {
                            td.ln { @if let Some(n) = l.old { (n) } }
                            td.ln { @if let Some(n) = l.new { (n) } }
                            td.op { (l.op) }
                            td.tx { (l.text) }
                        }
                    }
                } } }
            }
        }
    };
    Ok((format!("{ns}/{name} {} → {}", d.from, d.to), body))
}

/// What kflow learned from a workflow's runs: per version, per task, run time and wait
/// quantiles, failures and retries; then the recommendations with their evidence and line.
pub async fn analysis(api: &Api, ns: &str, name: &str) -> Result<(String, Markup), UiError> {
    let a: Analysis = api
        .get(&format!(
            "/api/v1/definitions/{}/{}/analysis",
            enc(ns),
            enc(name)
        ))
        .await?;
    let url = workflow_url(ns, name);
    let ms = |v: f64| format!("{v:.1}");
    let body = html! {
        h1 { a href=(url) { (ns) "/" (name) } " · analysis" }
        @if a.versions.is_empty() {
            p.note { "No runs learned yet: run times are learned as tasks finish. Until then dispatch is first come, first served, and timeouts are as configured." }
        }
        @for v in &a.versions {
            section {
                h2 { a href={ (url) "?version=" (enc(&v.version)) } { (v.version) } }
                div.scroll { table.list {
                    thead { tr { th { "Task" } th { "Runs" } th { "Run ms p50 / p95 / p99" } th { "Wait ms p50 / p95 / p99" } th { "Failed" } th { "Retries" } } }
                    tbody {
                        @for t in &v.tasks {
                            tr {
                                td.mono { (t.task) @if v.critical_path.contains(&t.task) { " " span.badge { "critical path" } } }
                                td { (t.runs) @if !t.confident { " " span.badge { "few" } } }
                                td { (ms(t.run_ms.p50)) " / " (ms(t.run_ms.p95)) " / " (ms(t.run_ms.p99)) }
                                td { (ms(t.wait_ms.p50)) " / " (ms(t.wait_ms.p95)) " / " (ms(t.wait_ms.p99)) }
                                td { (format!("{:.0}%", t.failure_rate * 100.0)) }
                                td { (format!("{:.0}%", t.retry_rate * 100.0)) }
                            }
                        }
                    }
                } }
                @if !v.critical_path.is_empty() && v.task_time_ms > 0.0 {
                    p { "Critical path (p50): " strong { (ms(v.critical_path_ms)) " ms" } ", "
                        (format!("{:.0}%", v.critical_path_ms / v.task_time_ms * 100.0))
                        " of " (ms(v.task_time_ms)) " ms of task time: "
                        span.mono { (v.critical_path.join(" → ")) } }
                }
                @if !v.hot_spots.is_empty() {
                    p { "Hot spots (failures and retries): "
                        @for (i, h) in v.hot_spots.iter().enumerate() {
                            @if i > 0 { ", " }
                            span.mono { (h) }
                        }
                    }
                }
                @if !v.recommendations.is_empty() {
                    h2 { "Recommendations" }
                    ul.recommendations {
                        @for r in &v.recommendations {
                            li {
                                @if let Some(l) = r.line { span.mono { "line " (l) } ": " }
                                (r.message) " " span.note { "(" (r.evidence) ")" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok((format!("{ns}/{name} analysis"), body))
}

//! Operations: schedules (next fires, pause and resume) and workers with their queues.

use kflow_api::schedules::ScheduleList;
use kflow_api::workers::{QueuesResponse, WorkerList};
use maud::{Markup, html};

use super::workflows::workflow_url;
use crate::api::{Api, UiError, enc};
use crate::render::{Viewer, duration};

pub async fn schedules(api: &Api, v: &Viewer) -> Result<(String, Markup), UiError> {
    let list: ScheduleList = api.get("/api/v1/schedules").await?;
    let body = html! {
        h1 { "Schedules" }
        p.error-line #action-error hidden {}
        @if list.items.is_empty() {
            p.note { "No registered workflow has a schedule." }
        } @else {
            div.scroll { table.list {
                thead { tr { th { "Workflow" } th { "When" } th { "Next fire" } th { "Last fire" } th { "Fired" } th { "State" } th { "" } } }
                tbody {
                    @for s in &list.items {
                        tr {
                            td { a href=(workflow_url(&s.namespace, &s.name)) { (s.namespace) "/" (s.name) } " @" (s.version) }
                            td { (s.kind) " " code { (s.expression) } @if !s.timezone.is_empty() { " (" (s.timezone) ")" } }
                            td.time { (s.next_fire.as_deref().unwrap_or("—")) }
                            td.time { (s.last_fire.as_deref().unwrap_or("—")) }
                            td { (s.fired) @if s.skipped > 0 { " (" (s.skipped) " skipped)" } }
                            td {
                                @if s.paused { span.badge.s-suspended { "paused" } } @else { span.badge.s-running { "active" } }
                                @if let Some(e) = s.error.as_ref().or(s.last_error.as_ref()) { " " span.warn { (e) } }
                            }
                            td { @if v.may_operate() {
                                @let path = format!("/api/v1/schedules/{}/{}", enc(&s.namespace), enc(&s.name));
                                @if s.paused {
                                    button.action data-post={ (path) "/resume" } { "Resume" }
                                } @else {
                                    button.action.secondary data-post={ (path) "/pause" } { "Pause" }
                                }
                            } }
                        }
                    }
                }
            } }
        }
    };
    Ok(("Schedules".into(), body))
}

fn amounts(m: &std::collections::BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| {
            if v.fract() == 0.0 {
                format!("{k}={v:.0}")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn workers(api: &Api) -> Result<(String, Markup), UiError> {
    let workers: WorkerList = api.get("/api/v1/workers").await?;
    let queues: QueuesResponse = api.get("/api/v1/queues").await?;
    // Server-wide: a token limited to some namespaces does not see the nodes.
    let nodes: Option<kflow_api::security::NodeList> = api.get("/api/v1/nodes").await.ok();
    let body = html! {
        @if let Some(n) = nodes.as_ref().filter(|n| n.backend == "postgres") {
            h1 { "Nodes" }
            p.note { "PostgreSQL: every node drives the instances started through it; a node that dies or drains has its instances adopted by another. The leader also prunes and delivers alerts." }
            div.scroll { table.list {
                thead { tr { th { "Node" } th { "State" } th { "Host" } th { "API" } th { "Instances" } th { "Tasks" } th { "Heartbeat" } } }
                tbody {
                    @for node in &n.items {
                        tr {
                            td.mono { (node.id) }
                            td {
                                span.badge.(format!("s-{}", match node.state.as_str() {
                                    "active" => "running",
                                    "draining" => "suspended",
                                    "stopped" | "gone" => "completed",
                                    _ => "faulted",
                                })) { (node.state) }
                                @if n.lease_holder.as_deref() == Some(node.id.as_str()) && node.state == "active" {
                                    " leader"
                                }
                                @if let Some(by) = &node.adopted_by {
                                    " adopted by " span.mono { (by) }
                                }
                            }
                            td { (node.host) }
                            td.mono { (node.api.clone().unwrap_or_default()) }
                            td { (node.owned) }
                            td { (node.running) }
                            td.time { (duration(node.silent_ms)) " ago" }
                        }
                    }
                }
            } }
        }
        h1 { "Workers" }
        div.scroll { table.list {
            thead { tr { th { "Worker" } th { "Queues" } th { "Labels" } th { "Capacity" } th { "In use" } th { "Leases" } th { "Last seen" } th { "" } } }
            tbody {
                @for w in &workers.items {
                    tr {
                        td.mono { (w.id) @if w.builtin { " " span.badge { "built-in" } } }
                        td { (w.queues.join(", ")) }
                        td { @for (k, v) in &w.labels { span.chip { (k) "=" (v) } " " } }
                        td { (amounts(&w.capacity)) }
                        td { (amounts(&w.used)) }
                        td { (w.leases.len()) }
                        td.time { @if w.builtin { "—" } @else { (duration(now_ms() - w.last_seen_ms)) " ago" } }
                        td { @if w.draining { span.badge.s-suspended { "draining" } } }
                    }
                }
            }
        } }
        h2 { "Queues" }
        div.scroll { table.list {
            thead { tr { th { "Queue" } th { "Waiting" } th { "Oldest wait" } th { "Workers" } th { "Rate limit" } } }
            tbody {
                @for q in &queues.items {
                    tr {
                        td { (q.queue) }
                        td { (q.depth) }
                        td { @if q.depth > 0 { (duration(q.oldest_wait_ms)) } }
                        td { (q.workers.len()) }
                        td { @if let Some(r) = q.rate_per_second { (r) " / s" } @else { "—" } }
                    }
                }
            }
        } }
    };
    Ok(("Workers".into(), body))
}

pub async fn alerts(api: &Api) -> Result<(String, Markup), UiError> {
    let list: kflow_api::security::AlertList = api.get("/api/v1/alerts?limit=200").await?;
    let body = html! {
        h1 { "Alerts" }
        p.meta { "What the alert rules of the server's config fired, newest first. Each fires once per rule and subject, and again only after its condition cleared." }
        @if list.items.is_empty() {
            p.note { "No alert has fired." }
        } @else {
            div.scroll { table.list {
                thead { tr { th { "Fired" } th { "Rule" } th { "On" } th { "Subject" } th { "Delivery" } th { "Summary" } } }
                tbody {
                    @for a in &list.items {
                        tr {
                            td.time { (a.fired) }
                            td { (a.rule) }
                            td { code { (a.on) } }
                            td.mono {
                                @if a.on.starts_with("instance") {
                                    a href=(super::instances::instance_url(&a.key)) { (a.key) }
                                } @else { (a.key) }
                            }
                            td {
                                span class={ "badge " (match a.delivery.as_str() { "delivered" => "s-completed", "failed" => "s-faulted", "pending" => "s-suspended", _ => "" }) } { (a.delivery) }
                                @if a.attempts > 1 { " (" (a.attempts) " attempts)" }
                                @if a.resolved_ms.is_some() { " " span.badge { "resolved" } }
                                @if let Some(e) = &a.last_error { br; small.warn { (e) } }
                            }
                            td { (a.summary) }
                        }
                    }
                }
            } }
        }
    };
    Ok(("Alerts".into(), body))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

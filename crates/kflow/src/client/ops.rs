//! What runs where, as the CLI shows it: `kflow workers`, `kflow queues`, `kflow alerts`,
//! `kflow nodes` and `kflow explain`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kflow_api::instances::Explanation;
use kflow_api::workers::{QueuesResponse, WorkerList};

use super::Format;
use super::http::{Api, Failure, typed};

/// Amounts as `cpu=2,memory=512` (whole numbers without a fraction).
fn amounts(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{k}={}", *v as i64)
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn workers(api: &Api, out: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["workers"], &[]).await?;
    if out.is_data() {
        super::print_data(out, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let list: WorkerList = typed(&v, "workers")?;
    let rows: Vec<Vec<String>> = list
        .items
        .into_iter()
        .map(|w| {
            let mut id = w.id;
            if w.builtin {
                id.push_str(" (built-in)");
            }
            if w.draining {
                id.push_str(" (draining)");
            }
            vec![
                id,
                w.queues.join(","),
                w.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                amounts(&w.capacity),
                amounts(&w.used),
                w.leases.len().to_string(),
                super::render::fmt_datetime(&serde_json::Value::from(w.last_seen_ms)),
            ]
        })
        .collect();
    print!(
        "{}",
        super::render::table(
            &[
                "ID",
                "QUEUES",
                "LABELS",
                "CAPACITY",
                "USED",
                "LEASES",
                "LAST SEEN"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn queues(api: &Api, out: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["queues"], &[]).await?;
    if out.is_data() {
        super::print_data(out, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let list: QueuesResponse = typed(&v, "queues")?;
    let hosts = list.hosts.clone();
    let rows: Vec<Vec<String>> = list
        .items
        .into_iter()
        .map(|q| {
            vec![
                q.queue,
                q.depth.to_string(),
                if q.depth > 0 {
                    format!("{} ms", q.oldest_wait_ms)
                } else {
                    "-".into()
                },
                q.workers.join(","),
                q.rate_per_second
                    .map_or_else(|| "-".into(), |r| format!("{r}/s")),
            ]
        })
        .collect();
    print!(
        "{}",
        super::render::table(
            &["QUEUE", "DEPTH", "OLDEST WAIT", "WORKERS", "RATE LIMIT"],
            &rows
        )
    );
    if !hosts.is_empty() {
        let rows: Vec<Vec<String>> = hosts
            .into_iter()
            .map(|h| {
                vec![
                    h.host,
                    format!("{:.0}", h.limit.floor()),
                    h.in_flight.to_string(),
                ]
            })
            .collect();
        print!(
            "\n{}",
            super::render::table(&["HOST (ADAPTIVE)", "LIMIT", "IN FLIGHT"], &rows)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kflow services`: per service its circuit, bulkhead and counts, then its endpoints.
pub async fn services(api: &Api, out: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["services"], &[]).await?;
    if out.is_data() {
        super::print_data(out, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let list: kflow_api::services::ServiceList = typed(&v, "services")?;
    if list.items.is_empty() {
        println!("no services (add them under services: in the server's config)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                match s.open_for_s {
                    Some(t) => format!("{} ({t:.1} s)", s.circuit),
                    None => s.circuit.clone(),
                },
                s.balance.clone(),
                match s.bulkhead {
                    Some(b) => format!("{}/{b}", s.in_flight),
                    None => s.in_flight.to_string(),
                },
                format!("{:.0}%", s.error_rate * 100.0),
                format!("{}/{}", s.failures, s.calls),
                s.failovers.to_string(),
                format!(
                    "{}/{}/{}",
                    s.rejected_open, s.rejected_budget, s.rejected_bulkhead
                ),
            ]
        })
        .collect();
    print!(
        "{}",
        super::render::table(
            &[
                "SERVICE",
                "CIRCUIT",
                "BALANCE",
                "IN FLIGHT",
                "ERROR RATE",
                "FAILED/CALLS",
                "FAILOVERS",
                "REFUSED OPEN/BUDGET/BULKHEAD"
            ],
            &rows
        )
    );
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .flat_map(|s| {
            s.endpoints.iter().map(|e| {
                vec![
                    s.name.clone(),
                    e.url.clone(),
                    if e.healthy { "up" } else { "down" }.to_string(),
                    format!("{:.1} ms", e.latency_ms),
                    e.outstanding.to_string(),
                    format!("{}/{}", e.failures, e.calls),
                    match e.expires_in_s {
                        Some(t) => format!("{} ({t:.0} s left)", e.source),
                        None => e.source.clone(),
                    },
                ]
            })
        })
        .collect();
    print!(
        "\n{}",
        super::render::table(
            &[
                "SERVICE",
                "ENDPOINT",
                "HEALTH",
                "LATENCY",
                "OUTSTANDING",
                "FAILED/CALLS",
                "SOURCE"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// `kflow alerts`: the alerts fired, newest first.
pub async fn alerts(api: &Api, out: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["alerts"], &[]).await?;
    if out.is_data() {
        super::print_data(out, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let list: kflow_api::security::AlertList = typed(&v, "alerts")?;
    let rows: Vec<Vec<String>> = list
        .items
        .into_iter()
        .map(|a| {
            vec![
                super::render::fmt_datetime(&serde_json::Value::from(a.fired_ms)),
                a.rule,
                a.on,
                a.key,
                match (a.delivery.as_str(), a.resolved_ms) {
                    (d, Some(_)) => format!("{d}, resolved"),
                    (d, None) => d.to_string(),
                },
                a.summary,
            ]
        })
        .collect();
    print!(
        "{}",
        super::render::table(
            &["FIRED", "RULE", "ON", "SUBJECT", "DELIVERY", "SUMMARY"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// `kflow nodes`: the server nodes on the database.
pub async fn nodes(api: &Api, out: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["nodes"], &[]).await?;
    if out.is_data() {
        super::print_data(out, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let list: kflow_api::security::NodeList = typed(&v, "nodes")?;
    let rows: Vec<Vec<String>> = list
        .items
        .into_iter()
        .map(|n| {
            let leads = list.lease_holder.as_deref() == Some(n.id.as_str()) && n.state == "active";
            vec![
                n.id,
                match (leads, &n.adopted_by) {
                    (true, _) => format!("{} (leader)", n.state),
                    (false, Some(by)) => format!("{} (adopted by {by})", n.state),
                    (false, None) => n.state,
                },
                n.host,
                n.api.unwrap_or_default(),
                n.owned.to_string(),
                n.running.to_string(),
                format!("{:.1}s ago", n.silent_ms as f64 / 1000.0),
            ]
        })
        .collect();
    println!("backend: {}", list.backend);
    print!(
        "{}",
        super::render::table(
            &[
                "NODE",
                "STATE",
                "HOST",
                "API",
                "INSTANCES",
                "TASKS",
                "HEARTBEAT"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn explain(api: &Api, id: &str, out: Format) -> Result<ExitCode, Failure> {
    let v = api.get(&["instances", id, "explain"], &[]).await?;
    if out.is_data() {
        super::print_data(out, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let e: Explanation = typed(&v, "why the instance waits")?;
    println!("{} is {}", e.id, e.status.as_str());
    if e.waiting.is_empty() {
        println!("  nothing pending");
    }
    for w in e.waiting {
        println!(
            "  {}: {}",
            w.task.as_deref().unwrap_or("(the instance)"),
            w.reason
        );
    }
    println!("  isolation: {}", e.isolation);
    Ok(ExitCode::SUCCESS)
}

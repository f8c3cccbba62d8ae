//! What a task asks of the queue: its queue, priority, resources and labels (from the
//! workflow's checked `metadata.kflow` settings), and worker capacity strings
//! (`cpu=4,memory=8Gi,gpu=1`).

use std::collections::BTreeMap;

use serde_json::Value;

use kflow_dsl::Workflow;

use super::Resources;

/// The engine hints of the call or process started by the task at `task` (its reference, a
/// JSON pointer such as `/do/0/getPet`), from the workflow's checked settings: the task's own
/// `metadata.kflow` queue, priority, resources (plus one `tasks` slot) and labels. A task that
/// names no queue takes the workflow's (`document.metadata.kflow.queue`), else `default`; one
/// that gives no priority takes the instance's (when not 0), else the workflow's, else 0.
pub fn task_hints(
    wf: &Workflow,
    task: &str,
    instance_priority: i64,
) -> (String, i64, Resources, BTreeMap<String, String>) {
    let settings = &wf.kflow;
    let own = settings.task(task);
    let queue = own
        .queue
        .clone()
        .or_else(|| settings.queue.clone())
        .unwrap_or_else(|| "default".to_string());
    let priority = own.priority.unwrap_or(if instance_priority != 0 {
        instance_priority
    } else {
        settings.priority.unwrap_or(0)
    });
    let mut needs = Resources::new();
    needs.insert("tasks".into(), 1.0);
    needs.extend(own.resources.iter().map(|(k, v)| (k.clone(), *v)));
    (queue, priority, needs, own.labels.clone())
}

/// Reads the engine hints of a task from its raw `metadata` JSON (queue, priority, resources,
/// labels; a value of the wrong type is ignored). Kept for callers that still hold the JSON;
/// [`task_hints`] reads the settings checked when the workflow was loaded.
pub fn hints(task_metadata: Option<&Value>) -> (String, i64, Resources, BTreeMap<String, String>) {
    let k = task_metadata.and_then(|m| m.get("kflow"));
    let queue = k
        .and_then(|k| k.get("queue"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let priority = k
        .and_then(|k| k.get("priority"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut needs = Resources::new();
    needs.insert("tasks".into(), 1.0);
    if let Some(r) = k
        .and_then(|k| k.get("resources"))
        .and_then(Value::as_object)
    {
        for (name, v) in r {
            let amount = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => parse_amount(s).ok(),
                _ => None,
            };
            if let Some(a) = amount {
                needs.insert(name.clone(), a);
            }
        }
    }
    let labels = k
        .and_then(|k| k.get("labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(a, b)| {
                    (
                        a.clone(),
                        b.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| b.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (queue, priority, needs, labels)
}

/// Parses `4`, `0.5`, `8Gi`, `512Mi`, `2G`, `100k` into a number (binary suffixes Ki/Mi/Gi/Ti,
/// decimal k/M/G/T): the same amounts as a task's `metadata.kflow.resources`.
pub use kflow_dsl::settings::parse_amount;

/// Parses a capacity string `cpu=4,memory=8Gi,gpu=1` (a `tasks` slot count defaults to 16).
pub fn parse_capacity(s: &str) -> Result<Resources, String> {
    let mut r = Resources::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' in the capacity is not name=amount"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("'{part}' in the capacity has no name"));
        }
        r.insert(
            k.to_string(),
            parse_amount(v).map_err(|e| format!("'{part}': {e}"))?,
        );
    }
    r.entry("tasks".into()).or_insert(16.0);
    Ok(r)
}

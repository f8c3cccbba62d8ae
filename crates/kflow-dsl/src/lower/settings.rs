//! kflow's own settings in `metadata.kflow` (see [`crate::settings`]): the document's (default
//! queue and priority, schedule policies, concurrency limits) and each task's (queue, priority,
//! resources, labels). Checked like the rest of the document: a wrong type, an unknown key or a
//! bad value is a diagnostic at the offending node. The DSL's `metadata` is free-form, so only
//! the `kflow` entry is read, and strict mode accepts it (it is portable).

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::node::{Node, NodeKind};
use crate::settings::{
    Concurrency, KflowSettings, Missed, OnLimit, Overlap, ScheduleSettings, TaskHints, parse_amount,
};

use super::Cx;
use super::common::{self, Obj, key_str};

const DOCUMENT_KEYS: [&str; 4] = ["queue", "priority", "schedule", "concurrency"];
const TASK_KEYS: [&str; 5] = ["queue", "priority", "resources", "labels", "limits"];
const LIMIT_KEYS: [&str; 6] = [
    "cpuSeconds",
    "memoryMb",
    "processes",
    "fileSizeMb",
    "openFiles",
    "network",
];
const SCHEDULE_KEYS: [&str; 4] = ["timezone", "missed", "catchupMax", "overlap"];
const CONCURRENCY_KEYS: [&str; 3] = ["limit", "key", "onLimit"];
/// Most ticks `missed: catchup` fires after downtime.
const MAX_CATCHUP: i64 = 1000;

/// The `kflow` entry of a `metadata` node, when it has one (a `metadata` that is not a
/// mapping is reported where it is read).
fn kflow_node(metadata: &Node) -> Option<&Node> {
    metadata
        .as_map()?
        .iter()
        .find(|(k, _)| key_str(k) == "kflow")
        .map(|(_, v)| v)
}

/// `document.metadata.kflow`; `schedule` is the workflow's top-level `schedule`, if any.
pub(super) fn document(cx: &mut Cx, document: &Node, schedule: Option<&Node>) -> KflowSettings {
    let mut out = KflowSettings::default();
    let Some(kflow) = document
        .as_map()
        .and_then(|d| d.iter().find(|(k, _)| key_str(k) == "metadata"))
        .and_then(|(_, m)| kflow_node(m))
    else {
        return out;
    };
    let Some(obj) = Obj::new(
        cx,
        kflow,
        "'document.metadata.kflow'",
        "document.metadata.kflow",
    ) else {
        return out;
    };
    obj.check(cx, &DOCUMENT_KEYS);
    out.queue = obj
        .get("queue")
        .and_then(|n| queue(cx, n, &obj.field("queue")));
    out.priority = obj
        .get("priority")
        .and_then(|n| common::integer(cx, n, &obj.field("priority")));
    if let Some(n) = obj.get("schedule") {
        out.schedule = schedule_settings(cx, &obj, n);
        if schedule.is_none()
            && let Some(k) = obj.key("schedule")
        {
            cx.at(
                k,
                "'document.metadata.kflow.schedule' is set but the workflow has no 'schedule'",
            );
        }
    }
    out.concurrency = obj
        .get("concurrency")
        .and_then(|n| concurrency(cx, &obj, n));
    out
}

/// A task's `metadata.kflow` (`metadata` is the task's `metadata` node).
pub(super) fn task(cx: &mut Cx, metadata: &Node) -> TaskHints {
    let mut out = TaskHints::default();
    let Some(kflow) = kflow_node(metadata) else {
        return out;
    };
    let Some(obj) = Obj::new(cx, kflow, "'metadata.kflow'", "metadata.kflow") else {
        return out;
    };
    obj.check(cx, &TASK_KEYS);
    out.queue = obj
        .get("queue")
        .and_then(|n| queue(cx, n, &obj.field("queue")));
    out.priority = obj
        .get("priority")
        .and_then(|n| common::integer(cx, n, &obj.field("priority")));
    if let Some(n) = obj.get("resources")
        && let Some(res) = obj.sub(cx, "resources", n)
    {
        out.resources = resources(cx, &res);
    }
    if let Some(n) = obj.get("labels")
        && let Some(labels) = obj.sub(cx, "labels", n)
    {
        out.labels = label_values(cx, &labels);
    }
    if let Some(n) = obj.get("limits")
        && let Some(limits) = obj.sub(cx, "limits", n)
    {
        out.limits = process_limits(cx, &limits);
    }
    out
}

/// `limits: {cpuSeconds, memoryMb, processes, fileSizeMb, openFiles, network}`.
fn process_limits(cx: &mut Cx, obj: &Obj) -> crate::settings::ProcessLimits {
    obj.check(cx, &LIMIT_KEYS);
    let mut out = crate::settings::ProcessLimits::default();
    let positive = |cx: &mut Cx, key: &str| -> Option<u64> {
        let n = obj.get(key)?;
        let what = obj.field(key);
        match common::integer(cx, n, &what)? {
            i if i >= 1 => Some(i as u64),
            i => {
                cx.at(n, format!("{what} must be 1 or more, got {i}"));
                None
            }
        }
    };
    out.cpu_seconds = positive(cx, "cpuSeconds");
    out.memory_mb = positive(cx, "memoryMb");
    out.processes = positive(cx, "processes");
    out.file_size_mb = positive(cx, "fileSizeMb");
    out.open_files = positive(cx, "openFiles");
    out.network = obj
        .get("network")
        .and_then(|n| common::boolean(cx, n, &obj.field("network")));
    out
}

fn queue(cx: &mut Cx, node: &Node, what: &str) -> Option<String> {
    let s = common::string(cx, node, what)?;
    if s.trim().is_empty() {
        cx.at(node, format!("{what} must name a queue (it is empty)"));
        return None;
    }
    Some(s.to_string())
}

fn schedule_settings(cx: &mut Cx, kflow: &Obj, node: &Node) -> Option<ScheduleSettings> {
    let obj = kflow.sub(cx, "schedule", node)?;
    obj.check(cx, &SCHEDULE_KEYS);
    let mut s = ScheduleSettings::default();
    let mut ok = true;
    if let Some(n) = obj.get("timezone") {
        match timezone(cx, n, &obj.field("timezone")) {
            Some(tz) => s.timezone = Some(tz),
            None => ok = false,
        }
    }
    if let Some(n) = obj.get("missed") {
        match common::one_of(cx, n, &obj.field("missed"), &Missed::ALL) {
            Some("catchup") => s.missed = Missed::Catchup,
            Some(_) => s.missed = Missed::Skip,
            None => ok = false,
        }
    }
    if let Some(n) = obj.get("catchupMax") {
        match n.kind {
            NodeKind::Int(i) if (1..=MAX_CATCHUP).contains(&i) => s.catchup_max = i as u32,
            NodeKind::Int(i) => {
                cx.at(
                    n,
                    format!(
                        "{} must be from 1 to {MAX_CATCHUP}, got {i}",
                        obj.field("catchupMax")
                    ),
                );
                ok = false;
            }
            _ => {
                let what = obj.field("catchupMax");
                common::type_error(cx, n, &format!("an integer from 1 to {MAX_CATCHUP}"), &what);
                ok = false;
            }
        }
    }
    if let Some(n) = obj.get("overlap") {
        s.overlap = match common::one_of(cx, n, &obj.field("overlap"), &Overlap::ALL) {
            Some("skip") => Overlap::Skip,
            Some("queue") => Overlap::Queue,
            Some("cancel") => Overlap::Cancel,
            Some(_) => Overlap::Allow,
            None => {
                ok = false;
                Overlap::Allow
            }
        };
    }
    ok.then_some(s)
}

/// An IANA time zone name, checked against the time zone database kflow is built with.
fn timezone(cx: &mut Cx, node: &Node, what: &str) -> Option<String> {
    let name = common::string(cx, node, what)?;
    match chrono_tz::Tz::from_str(name) {
        Ok(_) => Some(name.to_string()),
        Err(_) => {
            cx.at(
                node,
                format!(
                    "unknown time zone '{name}' for {what} (expected an IANA name such as Europe/Paris or UTC)"
                ),
            );
            None
        }
    }
}

fn concurrency(cx: &mut Cx, kflow: &Obj, node: &Node) -> Option<Concurrency> {
    let obj = kflow.sub(cx, "concurrency", node)?;
    obj.check(cx, &CONCURRENCY_KEYS);
    let limit = obj.req(cx, "limit").and_then(|n| match n.kind {
        NodeKind::Int(i) if i >= 1 && i <= i64::from(u32::MAX) => Some(i as u32),
        NodeKind::Int(i) if i >= 1 => {
            cx.at(
                n,
                format!(
                    "{} is too large: {i} (at most {})",
                    obj.field("limit"),
                    u32::MAX
                ),
            );
            None
        }
        NodeKind::Int(i) => {
            cx.at(
                n,
                format!(
                    "{} must be at least 1, got {i} (remove the setting for no limit)",
                    obj.field("limit")
                ),
            );
            None
        }
        _ => {
            common::type_error(cx, n, "an integer of at least 1", &obj.field("limit"));
            None
        }
    });
    let key = match obj.get("key") {
        None => Some(None),
        Some(n) => concurrency_key(cx, n, &obj.field("key")).map(Some),
    };
    let on_limit = match obj.get("onLimit") {
        None => Some(OnLimit::Queue),
        Some(n) => match common::one_of(cx, n, &obj.field("onLimit"), &OnLimit::ALL) {
            Some("skip") => Some(OnLimit::Skip),
            Some("cancelOldest") => Some(OnLimit::CancelOldest),
            Some(_) => Some(OnLimit::Queue),
            None => None,
        },
    };
    Some(Concurrency {
        limit: limit?,
        key: key?,
        on_limit: on_limit?,
    })
}

/// `concurrency.key`: jq (bare or `${ }`) evaluated on the instance input.
fn concurrency_key(cx: &mut Cx, node: &Node, what: &str) -> Option<crate::expr::Expr> {
    let Some(s) = node.as_str() else {
        common::type_error(cx, node, "a runtime expression (a string)", what);
        return None;
    };
    let source = crate::expr::strip_dollar_braces(s).unwrap_or(s);
    if source.trim().is_empty() {
        cx.at(node, format!("empty runtime expression for {what}"));
        return None;
    }
    match crate::expr::Expr::compile(source) {
        Ok(e) => Some(e),
        Err(e) => {
            cx.at(node, format!("{e} (in {what})"));
            None
        }
    }
}

/// `resources: {name: amount}`: a number of at least 0, or a string such as `8Gi`.
fn resources(cx: &mut Cx, obj: &Obj) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in obj.entries {
        let name = key_str(k);
        let what = obj.field(name);
        if name.trim().is_empty() {
            cx.at(k, format!("a resource in {} needs a name", obj.label));
            continue;
        }
        let amount = match &v.kind {
            NodeKind::Int(i) => Ok(*i as f64),
            NodeKind::Float(f) => Ok(*f),
            NodeKind::Str(s) => parse_amount(s),
            _ => {
                let expected = "an amount (a number, or a string such as 8Gi or 512Mi)";
                common::type_error(cx, v, expected, &what);
                continue;
            }
        };
        match amount {
            Ok(a) if a.is_finite() && a >= 0.0 => {
                out.insert(name.to_string(), a);
            }
            Ok(a) if a < 0.0 => cx.at(v, format!("{what} must not be negative, got {a}")),
            Ok(_) => cx.at(v, format!("{what} must be a finite amount")),
            Err(e) => cx.at(v, format!("invalid amount for {what}: {e}")),
        }
    }
    out
}

/// `labels: {name: value}`: scalar values, kept as text.
fn label_values(cx: &mut Cx, obj: &Obj) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in obj.entries {
        let name = key_str(k);
        let text = match &v.kind {
            NodeKind::Str(s) => s.clone(),
            NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_) => v.to_json().to_string(),
            _ => {
                let expected = "a string (or a number or a boolean)";
                common::type_error(cx, v, expected, &obj.field(name));
                continue;
            }
        };
        out.insert(name.to_string(), text);
    }
    out
}

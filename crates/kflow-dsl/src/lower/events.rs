//! Events: the `emit` and `listen` tasks, event filters and consumption strategies, and the
//! workflow's `schedule` (which may be driven by events or by cron).

use std::collections::BTreeMap;

use croner::parser::{CronParser, Seconds, Year};

use crate::model::{
    Consumption, Correlation, EmitDef, EventFilter, ForEachEvent, ListenDef, ReadMode, Schedule,
    Until,
};
use crate::node::{Node, NodeKind};

use super::Cx;
use super::common::{self, Obj, key_str};
use super::tasks;

pub(super) fn emit(cx: &mut Cx, node: &Node) -> Option<EmitDef> {
    let obj = Obj::new(cx, node, "'emit'", "emit")?;
    obj.check(cx, &["event"]);
    let event = obj.req(cx, "event").and_then(|n| obj.sub(cx, "event", n))?;
    event.check(cx, &["with"]);
    let with = event
        .req(cx, "with")
        .and_then(|n| event.sub(cx, "with", n))?;
    let mut ok = with
        .req(cx, "type")
        .and_then(|n| common::string(cx, n, &with.field("type")))
        .is_some();
    for key in [
        "id",
        "source",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
    ] {
        if let Some(n) = with.get(key) {
            ok &= common::string(cx, n, &with.field(key)).is_some();
        }
    }
    if let Some(n) = with.get("source")
        && n.as_str().is_some_and(|s| !common::is_dollar_expr(s))
    {
        ok &= common::uri_or_expr(cx, n, &with.field("source")).is_some();
    }
    let event = common::template(cx, with.node);
    if ok {
        event.map(|event| EmitDef { event })
    } else {
        None
    }
}

/// The `listen` task (`task` is the task mapping, which holds `foreach`).
pub(super) fn listen(cx: &mut Cx, task: &Obj, node: &Node, reference: &str) -> Option<ListenDef> {
    let obj = Obj::new(cx, node, "'listen'", "listen")?;
    obj.check(cx, &["to", "read"]);
    let to = obj
        .req(cx, "to")
        .and_then(|n| consumption(cx, n, "listen.to", true));
    let read = obj
        .get("read")
        .map(|n| read_mode(cx, n, &obj.field("read")));
    let foreach = task.get("foreach").map(|n| foreach(cx, n, reference));
    let foreach = match foreach {
        Some(None) => return None,
        Some(f) => f,
        None => None,
    };
    Some(ListenDef {
        to: to?,
        read: read.flatten().unwrap_or_default(),
        foreach,
    })
}

fn read_mode(cx: &mut Cx, node: &Node, what: &str) -> Option<ReadMode> {
    match common::one_of(cx, node, what, &["data", "envelope", "raw"])? {
        "envelope" => Some(ReadMode::Envelope),
        "raw" => Some(ReadMode::Raw),
        _ => Some(ReadMode::Data),
    }
}

fn foreach(cx: &mut Cx, node: &Node, reference: &str) -> Option<ForEachEvent> {
    let obj = Obj::new(cx, node, "'foreach'", "foreach")?;
    obj.check(cx, &["item", "at", "do", "output", "export"]);
    let item = obj
        .get("item")
        .map(|n| common::var_name(cx, n, &obj.field("item")));
    let at = obj
        .get("at")
        .map(|n| common::var_name(cx, n, &obj.field("at")));
    let do_ = obj
        .get("do")
        .map(|n| tasks::task_list(cx, n, &format!("{reference}/foreach/do"), &obj.field("do")));
    let output = obj
        .get("output")
        .map(|n| common::data_out(cx, n, "foreach.output"));
    let export = obj
        .get("export")
        .map(|n| common::data_out(cx, n, "foreach.export"));
    let do_ = match do_ {
        Some(list) => list?,
        None => Vec::new().into(),
    };
    Some(ForEachEvent {
        item: item.flatten().unwrap_or_else(|| "item".to_string()),
        at: at.flatten().unwrap_or_else(|| "index".to_string()),
        do_,
        output: output.flatten(),
        export: export.flatten(),
    })
}

/// An event consumption strategy: exactly one of `all`, `any`, `one`; `until` only with `any`,
/// and not inside another `until`.
fn consumption(cx: &mut Cx, node: &Node, path: &str, allow_until: bool) -> Option<Consumption> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &["all", "any", "one", "until"]);
    let present: Vec<&str> = ["all", "any", "one"]
        .into_iter()
        .filter(|k| obj.has(k))
        .collect();
    let until = match obj.entries.iter().find(|(k, _)| key_str(k) == "until") {
        None => None,
        Some((key, _)) if !allow_until => {
            cx.at(
                key,
                format!(
                    "an 'until' strategy cannot have its own 'until' (in {})",
                    obj.label
                ),
            );
            return None;
        }
        Some((key, _)) if present.as_slice() != ["any"] => {
            cx.at(
                key,
                format!(
                    "'until' only applies to an 'any' strategy (in {})",
                    obj.label
                ),
            );
            return None;
        }
        Some((_, value)) => Some(match &value.kind {
            NodeKind::Str(_) => {
                common::runtime_expr(cx, value, &obj.field("until")).map(Until::Expr)
            }
            NodeKind::Map(_) => consumption(cx, value, &obj.child("until"), false)
                .map(|c| Until::Events(Box::new(c))),
            _ => {
                common::type_error(
                    cx,
                    value,
                    "a runtime expression or a consumption strategy",
                    &obj.field("until"),
                );
                None
            }
        }),
    };
    let until = match until {
        Some(None) => return None,
        Some(u) => u,
        None => None,
    };
    match present.as_slice() {
        ["all"] => filters(cx, &obj, "all").map(Consumption::All),
        ["any"] => filters(cx, &obj, "any").map(|filters| Consumption::Any { filters, until }),
        ["one"] => obj
            .get("one")
            .and_then(|n| event_filter(cx, n, &obj.child("one")))
            .map(Consumption::One),
        [] => {
            cx.at(node, format!("{} needs one of: all, any, one", obj.label));
            None
        }
        many => {
            cx.at(
                node,
                format!(
                    "{} must have exactly one of all, any, one (found {})",
                    obj.label,
                    many.join(", ")
                ),
            );
            None
        }
    }
}

fn filters(cx: &mut Cx, obj: &Obj, key: &str) -> Option<Vec<EventFilter>> {
    let items = common::list(cx, obj.get(key)?, &obj.field(key))?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match event_filter(cx, item, &format!("{}[{i}]", obj.child(key))) {
            Some(f) => out.push(f),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn event_filter(cx: &mut Cx, node: &Node, path: &str) -> Option<EventFilter> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &["with", "correlate"]);
    let with = obj.req(cx, "with").and_then(|n| {
        let entries = common::mapping(cx, n, &obj.field("with"))?;
        if entries.is_empty() {
            cx.at(
                n,
                format!("{} needs at least one event attribute", obj.field("with")),
            );
            return None;
        }
        let template = common::template(cx, n);
        let patterns_ok = check_patterns(cx, n, &obj.child("with"));
        template.filter(|_| patterns_ok)
    });
    let mut correlate = BTreeMap::new();
    let mut ok = true;
    if let Some(c) = obj
        .get("correlate")
        .and_then(|n| obj.sub(cx, "correlate", n))
    {
        for (k, v) in c.entries {
            let name = key_str(k);
            let Some(corr) = c.sub(cx, name, v) else {
                ok = false;
                continue;
            };
            corr.check(cx, &["from", "expect"]);
            let from = corr
                .req(cx, "from")
                .and_then(|n| common::runtime_expr(cx, n, &corr.field("from")));
            let expect = corr
                .get("expect")
                .map(|n| common::string_template(cx, n, &corr.field("expect")));
            match (from, expect) {
                (Some(from), Some(Some(expect))) => {
                    correlate.insert(
                        name.to_string(),
                        Correlation {
                            from,
                            expect: Some(expect),
                        },
                    );
                }
                (Some(from), None) => {
                    correlate.insert(name.to_string(), Correlation { from, expect: None });
                }
                _ => ok = false,
            }
        }
    }
    let with = with?;
    ok.then_some(EventFilter { with, correlate })
}

/// dsl-reference.md, Event Filter: `with` "supports both regular expressions and runtime
/// expressions"; kflow reads every literal string of it as a regular expression too (see
/// [`crate::pattern`]), so each must compile. Reports every one that does not, at its node.
fn check_patterns(cx: &mut Cx, node: &Node, path: &str) -> bool {
    match &node.kind {
        NodeKind::Str(s) if !common::is_dollar_expr(s) => match crate::pattern::check(s) {
            Ok(()) => true,
            Err(e) => {
                cx.at(
                    node,
                    format!(
                        "'{path}' is not a valid regular expression ({e}); a literal event filter \
                         value is matched as itself or as a regular expression: escape the special \
                         character, or compare exactly with an expression such as ${{ \"...\" }}"
                    ),
                );
                false
            }
        },
        NodeKind::Map(entries) => {
            let mut ok = true;
            for (k, v) in entries {
                ok &= check_patterns(cx, v, &format!("{path}.{}", key_str(k)));
            }
            ok
        }
        NodeKind::Seq(items) => {
            let mut ok = true;
            for (i, v) in items.iter().enumerate() {
                ok &= check_patterns(cx, v, &format!("{path}[{i}]"));
            }
            ok
        }
        _ => true,
    }
}

/// The workflow's `schedule`.
pub(super) fn schedule(cx: &mut Cx, node: &Node) -> Option<Schedule> {
    let obj = Obj::new(cx, node, "'schedule'", "schedule")?;
    obj.check(cx, &["every", "cron", "after", "on", "read"]);
    if !["every", "cron", "after", "on"].iter().any(|k| obj.has(k)) {
        cx.at(node, "'schedule' needs one of: every, cron, after, on");
    }
    let every = obj
        .get("every")
        .map(|n| common::duration(cx, n, &obj.field("every")));
    let after = obj
        .get("after")
        .map(|n| common::duration(cx, n, &obj.field("after")));
    let cron = obj.get("cron").map(|n| cron(cx, n, &obj.field("cron")));
    let on = obj
        .get("on")
        .map(|n| consumption(cx, n, "schedule.on", true));
    let read = obj
        .get("read")
        .map(|n| read_mode(cx, n, &obj.field("read")));
    if read.is_some()
        && !obj.has("on")
        && let Some((k, _)) = obj.entries.iter().find(|(k, _)| key_str(k) == "read")
    {
        cx.at(
            k,
            "'schedule.read' only applies together with 'schedule.on'",
        );
    }
    Some(Schedule {
        every: every.flatten(),
        cron: cron.flatten(),
        after: after.flatten(),
        on: on.flatten(),
        read: read.flatten().unwrap_or_default(),
    })
}

/// A cron expression of 5 fields (minute first) or 6 (seconds first), or a nickname (`@daily`).
fn cron(cx: &mut Cx, node: &Node, what: &str) -> Option<String> {
    let s = common::string(cx, node, what)?;
    let fields = s.split_whitespace().count();
    let nickname = s.trim_start().starts_with('@');
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let problem = if !nickname && fields != 5 && fields != 6 {
        Some(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), found {fields}"
        ))
    } else {
        parser
            .parse(s)
            .err()
            .map(|e| lowercase_first(&e.to_string()))
    };
    match problem {
        None => Some(s.to_string()),
        Some(p) => {
            cx.at(node, format!("invalid cron expression '{s}': {p}"));
            None
        }
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

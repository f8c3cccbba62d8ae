//! Task lists and tasks: the one-task-per-item rule, unique names, `then:` resolution, the
//! properties every task shares, dispatch on the task keyword, and the control-flow tasks (`do`,
//! `for`, `fork`, `raise`, `set`, `switch`, `try`, `wait`). Each task's `reference` is its JSON
//! pointer in the document (`/do/0/tryGetPet/try/0/getPet`).

use std::collections::HashMap;

use crate::model::{
    Catch, Flow, ForDef, ForkDef, NamedTask, Parallelism, RaiseDef, SwitchCase, Task, TaskKind,
    TaskList, TryDef,
};
use crate::node::{Node, NodeKind};
use crate::template::Template;

use super::common::{self, Obj, key_str, pointer_token};
use super::{Cx, calls, dag, events, list_names, run, settings};

/// The task names of the list a task belongs to, for resolving `then:`.
pub(super) struct Scope {
    names: Vec<String>,
    /// Index of the first task of each name.
    index: HashMap<String, usize>,
    /// Set for a lone task (a function), which has no siblings to jump to.
    single: bool,
    /// Set for the subtasks of a `dag` (kflow extension): they may carry `needs` and
    /// `trigger`, and no flow directive.
    dag: bool,
}

impl Scope {
    pub(super) fn single() -> Scope {
        Scope {
            names: Vec::new(),
            index: HashMap::new(),
            single: true,
            dag: false,
        }
    }

    fn of(names: Vec<String>, dag: bool) -> Scope {
        let mut index = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            index.entry(n.clone()).or_insert(i);
        }
        Scope {
            names,
            index,
            single: false,
            dag,
        }
    }
}

/// A flow directive: `continue`, `exit`, `end`, or the name of a task of the same list.
fn flow(cx: &mut Cx, node: &Node, scope: &Scope, what: &str) -> Option<Flow> {
    let name = common::string(cx, node, what)?;
    match name {
        "continue" => Some(Flow::Continue),
        "exit" => Some(Flow::Exit),
        "end" => Some(Flow::End),
        _ => match scope.index.get(name) {
            Some(&i) => Some(Flow::Goto(i)),
            None => {
                let here = if scope.single {
                    "a function is a single task; use continue, exit or end".to_string()
                } else {
                    format!("tasks here: {}", list_names(scope.names.iter()))
                };
                cx.at(
                    node,
                    format!("'then: {name}' names no task in the same list ({here})"),
                );
                None
            }
        },
    }
}

/// A list of named tasks; `reference` is the JSON pointer of the list itself.
pub(super) fn task_list(cx: &mut Cx, node: &Node, reference: &str, what: &str) -> Option<TaskList> {
    task_list_in(cx, node, reference, what, false)
}

/// [`task_list`], for the subtasks of a dag when `dag` is set (`needs` and `trigger` allowed,
/// flow directives refused).
pub(super) fn task_list_in(
    cx: &mut Cx,
    node: &Node,
    reference: &str,
    what: &str,
    dag: bool,
) -> Option<TaskList> {
    let Some(items) = node.as_seq() else {
        common::type_error(cx, node, "a list of tasks", what);
        return None;
    };
    let mut entries: Vec<(usize, &Node, &Node)> = Vec::with_capacity(items.len());
    let mut ok = true;
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let map = match &item.kind {
            NodeKind::Map(m) if !m.is_empty() => m,
            _ => {
                cx.at(
                    item,
                    format!("expected a task (a mapping 'name: definition') for item {} of {what}, got {}", i + 1, describe_item(item)),
                );
                ok = false;
                continue;
            }
        };
        let (key, value) = &map[0];
        let name = key_str(key);
        for (extra, _) in &map[1..] {
            let second = key_str(extra);
            cx.at(
                extra,
                format!("a task list item holds exactly one task, but '{second}' is a second key next to '{name}' (is a '-' missing before '{second}'?)"),
            );
            ok = false;
        }
        if name.is_empty() {
            cx.at(key, "a task name cannot be empty");
            ok = false;
        }
        match seen.get(name) {
            Some(first) => {
                cx.at(
                    key,
                    format!("duplicate task name '{name}' in this list (first at line {first})"),
                );
                ok = false;
            }
            None => {
                seen.insert(name, key.pos.line);
            }
        }
        entries.push((i, key, value));
    }
    let scope = Scope::of(
        entries
            .iter()
            .map(|(_, k, _)| key_str(k).to_string())
            .collect(),
        dag,
    );
    let mut tasks = Vec::with_capacity(entries.len());
    for (i, key, value) in entries {
        let name = key_str(key);
        let reference = format!("{reference}/{i}/{}", pointer_token(name));
        match task(cx, name, value, &reference, &scope) {
            Some(t) => tasks.push(NamedTask {
                name: name.to_string(),
                reference,
                task: t,
            }),
            None => ok = false,
        }
    }
    ok.then(|| TaskList::from(tasks))
}

fn describe_item(item: &Node) -> &'static str {
    match item.kind {
        NodeKind::Map(_) => "an empty mapping",
        _ => item.describe(),
    }
}

const KINDS: [&str; 12] = [
    "call", "do", "emit", "for", "fork", "listen", "raise", "run", "set", "switch", "try", "wait",
];
const BASE: [&str; 7] = [
    "if", "input", "output", "export", "timeout", "then", "metadata",
];
/// Task types that are kflow extensions (refused in strict mode).
const EXTENSION_KINDS: [&str; 1] = ["dag"];
/// Properties of a dag subtask (kflow extension).
const DAG_PROPERTIES: [&str; 2] = ["needs", "trigger"];

/// One task: the shared properties, then the kind-specific ones.
pub(super) fn task(
    cx: &mut Cx,
    name: &str,
    node: &Node,
    reference: &str,
    scope: &Scope,
) -> Option<Task> {
    let obj = Obj::new(cx, node, format!("task '{name}'"), "")?;
    // `for` tasks carry a `do` list too; only a `do` without `for` makes a do task.
    let kinds: Vec<&str> = KINDS
        .into_iter()
        .chain(EXTENSION_KINDS)
        .filter(|k| obj.has(k) && !(*k == "do" && obj.has("for")))
        .collect();
    let kind = match kinds.as_slice() {
        [k] => *k,
        [] if obj.has("<<") => {
            obj.check(cx, &BASE);
            return None;
        }
        [] => {
            let found = list_names(
                obj.entries
                    .iter()
                    .map(|(k, _)| key_str(k))
                    .filter(|k| !BASE.contains(k)),
            );
            let found = if found.is_empty() {
                String::new()
            } else {
                format!(" (found: {found})")
            };
            cx.at(
                node,
                format!(
                    "unknown task type in task '{name}': expected one of {}{found}",
                    KINDS.join(", ")
                ),
            );
            return None;
        }
        many => {
            cx.at(
                node,
                format!(
                    "task '{name}' has more than one task type: {} (a task has exactly one)",
                    many.join(", ")
                ),
            );
            return None;
        }
    };
    let extra: &[&str] = match kind {
        "call" => &["call", "with"],
        "for" => &["for", "while", "do"],
        "listen" => &["listen", "foreach"],
        "try" => &["try", "catch"],
        k => &[k][..],
    };
    let mut allowed: Vec<&str> = BASE.iter().chain(extra).copied().collect();
    extension_properties(cx, &obj, name, kind, scope, &mut allowed);
    obj.check(cx, &allowed);

    let if_ = obj
        .get("if")
        .map(|n| common::runtime_expr(cx, n, &obj.field("if")));
    let input = obj.get("input").map(|n| common::data_in(cx, n, "input"));
    let output = obj.get("output").map(|n| common::data_out(cx, n, "output"));
    let export = obj.get("export").map(|n| common::data_out(cx, n, "export"));
    let timeout = obj
        .get("timeout")
        .map(|n| common::timeout(cx, n, &obj.field("timeout"), "timeout"));
    let then = obj
        .get("then")
        .filter(|_| !scope.dag)
        .map(|n| flow(cx, n, scope, &obj.field("then")));
    let metadata = obj
        .get("metadata")
        .map(|n| common::json_object(cx, n, &obj.field("metadata")));
    let hints = obj
        .get("metadata")
        .map(|n| settings::task(cx, n))
        .unwrap_or_default();
    if !hints.is_empty() {
        cx.task_hints.insert(reference.to_string(), hints.clone());
    }
    let kind = task_kind(cx, kind, &obj, reference, scope);
    Some(Task {
        if_: if_.flatten(),
        input: input.flatten(),
        output: output.flatten(),
        export: export.flatten(),
        timeout: timeout.flatten(),
        then: then.flatten().unwrap_or(Flow::Continue),
        metadata: metadata.flatten().unwrap_or_default(),
        kflow: hints,
        kind: kind?,
    })
}

/// The kflow extensions a task may carry: the `dag` task type, `needs`/`trigger` on a dag
/// subtask, `parallel` on a for task. Adds the ones allowed here to `allowed`; reports them in
/// strict mode, and misplaced ones (`needs` outside a dag, flow directives inside one).
fn extension_properties<'a>(
    cx: &mut Cx,
    obj: &Obj<'a>,
    name: &str,
    kind: &'a str,
    scope: &Scope,
    allowed: &mut Vec<&'a str>,
) {
    if EXTENSION_KINDS.contains(&kind)
        && let Some(k) = obj.key(kind)
    {
        cx.refuse_extension(k, kind);
    }
    if kind == "for" {
        match obj.key("parallel") {
            Some(k) => {
                cx.refuse_extension(k, "parallel");
                allowed.push("parallel");
            }
            None if !cx.strict => allowed.push("parallel"),
            None => {}
        }
    }
    for prop in DAG_PROPERTIES {
        match obj.key(prop) {
            Some(k) => {
                allowed.push(prop);
                // Inside a dag, the `dag` key itself was reported in strict mode.
                if !scope.dag && !cx.refuse_extension(k, prop) {
                    cx.at(k, format!("'{prop}' is only allowed on a task directly inside a 'dag' task (a kflow extension); task '{name}' is not"));
                }
            }
            None if scope.dag && !cx.strict => allowed.push(prop),
            None => {}
        }
    }
    if scope.dag {
        if let Some(k) = obj.key("then") {
            cx.at(k, format!("'then' is not allowed on task '{name}' inside a dag: the dag's 'needs' decide the order"));
        }
        if kind == "switch"
            && let Some(k) = obj.key("switch")
        {
            cx.at(k, format!("a switch task ('{name}') cannot be a direct subtask of a dag: the dag's 'needs' decide the order (wrap it in a 'do' task)"));
        }
    }
}

fn task_kind(
    cx: &mut Cx,
    kind: &str,
    obj: &Obj,
    reference: &str,
    scope: &Scope,
) -> Option<TaskKind> {
    let value = obj.get(kind)?;
    match kind {
        "call" => calls::call(cx, obj, value).map(TaskKind::Call),
        "do" => {
            task_list(cx, value, &format!("{reference}/do"), &obj.field("do")).map(TaskKind::Do)
        }
        "emit" => events::emit(cx, value).map(TaskKind::Emit),
        "for" => for_task(cx, obj, value, reference).map(TaskKind::For),
        "fork" => fork(cx, value, reference).map(TaskKind::Fork),
        "listen" => events::listen(cx, obj, value, reference).map(TaskKind::Listen),
        "raise" => raise(cx, value).map(TaskKind::Raise),
        "run" => run::run(cx, value).map(TaskKind::Run),
        "set" => set(cx, value).map(TaskKind::Set),
        "switch" => switch(cx, value, scope).map(TaskKind::Switch),
        "try" => try_task(cx, obj, value, reference, scope).map(TaskKind::Try),
        "wait" => common::duration(cx, value, &obj.field("wait")).map(TaskKind::Wait),
        "dag" => dag::dag(cx, value, reference).map(TaskKind::Dag),
        _ => None,
    }
}

fn for_task(cx: &mut Cx, task: &Obj, node: &Node, reference: &str) -> Option<ForDef> {
    let obj = Obj::new(cx, node, "'for'", "for")?;
    obj.check(cx, &["each", "in", "at"]);
    let each = obj
        .get("each")
        .map(|n| common::var_name(cx, n, &obj.field("each")));
    let at = obj
        .get("at")
        .map(|n| common::var_name(cx, n, &obj.field("at")));
    let in_ = obj.req(cx, "in").and_then(|n| match &n.kind {
        NodeKind::Seq(items) => {
            // An inline array: every item an object, enumerated as a jq literal.
            let mut ok = true;
            for item in items {
                if item.as_map().is_none() {
                    common::type_error(
                        cx,
                        item,
                        "a mapping",
                        "an item of the inline 'for.in' list",
                    );
                    ok = false;
                }
            }
            let json = serde_json::to_string(&n.to_json()).ok()?;
            if ok {
                common::compile(cx, n, &json, &obj.field("in"))
            } else {
                None
            }
        }
        _ => common::runtime_expr(cx, n, &obj.field("in")),
    });
    let while_ = task
        .get("while")
        .map(|n| common::runtime_expr(cx, n, &task.field("while")));
    let parallel = task
        .get("parallel")
        .map(|n| parallelism(cx, n, &task.field("parallel")));
    if let (Some(Some(Some(_))), Some(k)) = (&parallel, task.key("while")) {
        cx.at(k, format!("'while' cannot be combined with 'parallel' in {}: the iterations of a parallel for do not run one after another", task.label));
    }
    let do_ = task
        .req(cx, "do")
        .and_then(|n| task_list(cx, n, &format!("{reference}/do"), "'do' of a for task"));
    Some(ForDef {
        each: each.flatten().unwrap_or_else(|| "item".to_string()),
        in_: in_?,
        at: at.flatten().unwrap_or_else(|| "index".to_string()),
        while_: while_.flatten(),
        do_: do_?,
        parallel: match parallel {
            None => None,
            Some(p) => p?,
        },
    })
}

/// `parallel:` of a for task (kflow extension): `true` (unbounded), `false` (sequential, the
/// default) or the maximum number of iterations in progress at once (an integer ≥ 1).
fn parallelism(cx: &mut Cx, node: &Node, what: &str) -> Option<Option<Parallelism>> {
    match node.kind {
        NodeKind::Bool(true) => Some(Some(Parallelism::Unbounded)),
        NodeKind::Bool(false) => Some(None),
        NodeKind::Int(n) if n >= 1 => Some(Some(Parallelism::Max(
            usize::try_from(n).unwrap_or(usize::MAX),
        ))),
        NodeKind::Int(n) => {
            cx.at(
                node,
                format!("invalid value {n} for {what}: expected at least 1 (or true for no limit)"),
            );
            None
        }
        _ => {
            common::type_error(cx, node, "an integer ≥ 1 or true", what);
            None
        }
    }
}

fn fork(cx: &mut Cx, node: &Node, reference: &str) -> Option<ForkDef> {
    let obj = Obj::new(cx, node, "'fork'", "fork")?;
    obj.check(cx, &["branches", "compete"]);
    let branches = obj.req(cx, "branches").and_then(|n| {
        task_list(
            cx,
            n,
            &format!("{reference}/fork/branches"),
            &obj.field("branches"),
        )
    });
    let compete = obj
        .get("compete")
        .map(|n| common::boolean(cx, n, &obj.field("compete")));
    Some(ForkDef {
        branches: branches?,
        compete: compete.flatten().unwrap_or(false),
    })
}

fn raise(cx: &mut Cx, node: &Node) -> Option<RaiseDef> {
    let obj = Obj::new(cx, node, "'raise'", "raise")?;
    obj.check(cx, &["error"]);
    let error = obj.req(cx, "error")?;
    let def = match &error.kind {
        NodeKind::Str(name) => match cx.errors.get(name.as_str()) {
            Some(def) => def.clone(),
            None => {
                cx.at(
                    error,
                    format!(
                        "error '{name}' is not defined in use.errors{}",
                        cx.known("errors")
                    ),
                );
                None
            }
        },
        NodeKind::Map(_) => common::error_def(cx, error, "'raise.error'", "raise.error"),
        _ => {
            common::type_error(
                cx,
                error,
                "an error mapping or the name of an error in use.errors",
                &obj.field("error"),
            );
            None
        }
    };
    def.map(|error| RaiseDef { error })
}

fn set(cx: &mut Cx, node: &Node) -> Option<Template> {
    match &node.kind {
        NodeKind::Map(entries) if entries.is_empty() => {
            cx.at(
                node,
                "'set' needs at least one property (or a runtime expression)",
            );
            None
        }
        NodeKind::Map(_) => common::template(cx, node),
        NodeKind::Str(_) => common::runtime_expr(cx, node, "'set'").map(Template::expr),
        _ => {
            common::type_error(cx, node, "a mapping or a runtime expression", "'set'");
            None
        }
    }
}

fn switch(cx: &mut Cx, node: &Node, scope: &Scope) -> Option<Vec<SwitchCase>> {
    let items = common::list(cx, node, "'switch'")?;
    if items.is_empty() {
        cx.at(node, "'switch' needs at least one case");
        return None;
    }
    let mut cases = Vec::with_capacity(items.len());
    let mut ok = true;
    let mut default: Option<&str> = None;
    for (i, item) in items.iter().enumerate() {
        let Some(entries) = item.as_map().filter(|m| m.len() == 1) else {
            cx.at(
                item,
                format!(
                    "expected a case (a mapping 'name: {{when, then}}') for item {} of 'switch'",
                    i + 1
                ),
            );
            ok = false;
            continue;
        };
        let (key, value) = &entries[0];
        let name = key_str(key);
        let Some(case) = Obj::new(
            cx,
            value,
            format!("switch case '{name}'"),
            format!("switch.{name}"),
        ) else {
            ok = false;
            continue;
        };
        case.check(cx, &["when", "then"]);
        let when = case
            .get("when")
            .map(|n| common::runtime_expr(cx, n, &case.field("when")));
        let then = case
            .req(cx, "then")
            .and_then(|n| flow(cx, n, scope, &case.field("then")));
        if !case.has("when") {
            if let Some(first) = default {
                cx.at(key, format!("only one switch case may omit 'when' (the default case); '{first}' already does"));
                ok = false;
            }
            default = Some(name);
        }
        match (when, then) {
            (Some(None), _) | (_, None) => ok = false,
            (when, Some(then)) => cases.push(SwitchCase {
                name: name.to_string(),
                when: when.flatten(),
                then,
            }),
        }
    }
    ok.then_some(cases)
}

fn try_task(
    cx: &mut Cx,
    task: &Obj,
    node: &Node,
    reference: &str,
    scope: &Scope,
) -> Option<TryDef> {
    let try_ = task_list(cx, node, &format!("{reference}/try"), "'try'");
    let catch = task
        .req(cx, "catch")
        .and_then(|n| catch(cx, n, reference, scope));
    Some(TryDef {
        try_: try_?,
        catch: catch?,
    })
}

fn catch(cx: &mut Cx, node: &Node, reference: &str, scope: &Scope) -> Option<Catch> {
    let obj = Obj::new(cx, node, "'catch'", "catch")?;
    obj.check(
        cx,
        &["errors", "as", "when", "exceptWhen", "retry", "do", "then"],
    );
    let mut errors = None;
    if let Some(e) = obj.get("errors").and_then(|n| obj.sub(cx, "errors", n)) {
        e.check(cx, &["with"]);
        errors = e
            .get("with")
            .and_then(|n| common::error_filter(cx, n, &e.child("with")));
    }
    let as_ = obj
        .get("as")
        .map(|n| common::var_name(cx, n, &obj.field("as")));
    let when = obj
        .get("when")
        .map(|n| common::runtime_expr(cx, n, &obj.field("when")));
    let except_when = obj
        .get("exceptWhen")
        .map(|n| common::runtime_expr(cx, n, &obj.field("exceptWhen")));
    let retry = obj.get("retry").map(|n| match &n.kind {
        NodeKind::Str(name) => match cx.retries.get(name.as_str()) {
            Some(policy) => policy.clone(),
            None => {
                cx.at(
                    n,
                    format!(
                        "retry policy '{name}' is not defined in use.retries{}",
                        cx.known("retries")
                    ),
                );
                None
            }
        },
        NodeKind::Map(_) => common::retry_policy(cx, n, "'catch.retry'", "catch.retry"),
        _ => {
            common::type_error(
                cx,
                n,
                "a retry policy mapping or the name of one in use.retries",
                &obj.field("retry"),
            );
            None
        }
    });
    let do_ = obj
        .get("do")
        .map(|n| task_list(cx, n, &format!("{reference}/catch/do"), &obj.field("do")));
    // `catch.then` (DSL 1.0.3+): where to go after a handled error, in the try task's own list.
    // A dag has no list order to go to.
    if scope.dag
        && let Some(k) = obj.key("then")
    {
        cx.at(k, "'catch.then' is not allowed on a task inside a dag: the dag's 'needs' decide the order");
    }
    let then = obj
        .get("then")
        .filter(|_| !scope.dag)
        .and_then(|n| flow(cx, n, scope, &obj.field("then")));
    Some(Catch {
        errors,
        as_: as_.flatten().unwrap_or_else(|| "error".to_string()),
        when: when.flatten(),
        except_when: except_when.flatten(),
        retry: retry.flatten(),
        do_: do_.flatten(),
        then,
    })
}

/// `use.extensions`: checked (their tasks included), not kept: kflow does not run extensions.
pub(super) fn extensions(cx: &mut Cx, node: &Node) {
    const TARGETS: [&str; 12] = [
        "call",
        "composite",
        "emit",
        "for",
        "listen",
        "raise",
        "run",
        "set",
        "switch",
        "try",
        "wait",
        "all",
    ];
    let Some(items) = common::list(cx, node, "'use.extensions'") else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let Some(entries) = item.as_map().filter(|m| m.len() == 1) else {
            cx.at(item, format!("expected an extension (a mapping 'name: definition') for item {} of 'use.extensions'", i + 1));
            continue;
        };
        let (key, value) = &entries[0];
        let name = key_str(key);
        let path = format!("use.extensions.{name}");
        let Some(obj) = Obj::new(cx, value, format!("extension '{name}'"), path) else {
            continue;
        };
        obj.check(cx, &["extend", "when", "before", "after"]);
        if let Some(n) = obj.req(cx, "extend") {
            common::one_of(cx, n, &obj.field("extend"), &TARGETS);
        }
        if let Some(n) = obj.get("when") {
            common::runtime_expr(cx, n, &obj.field("when"));
        }
        let reference = format!("/use/extensions/{i}/{}", pointer_token(name));
        for list in ["before", "after"] {
            if let Some(n) = obj.get(list) {
                task_list(cx, n, &format!("{reference}/{list}"), &obj.field(list));
            }
        }
    }
}

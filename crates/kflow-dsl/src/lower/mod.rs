//! Lowering: a parsed [`Node`] tree to a validated [`Workflow`], collecting every problem.
//!
//! The walk follows the DSL's JSON schema (`schema/workflow.yaml` of the spec): every mapping is
//! checked for unknown and missing properties, every scalar for its type and enum, every
//! expression is compiled, and every name (`then:` targets, `use:` references) is resolved. A
//! problem is recorded as a [`Diagnostic`] at the offending node (an unknown property at its key,
//! a missing one at the mapping that lacks it) and the walk goes on, so one run reports them all.
//! Diagnostics come back sorted by position.
//!
//! Module map: [`common`] holds the readers shared by everything (types, expressions, durations,
//! schemas, errors, retries), `tasks` the task lists and the control-flow tasks, `calls` the
//! `call` task with endpoints and authentication, `run` the `run` task, `events` `emit`,
//! `listen` and the workflow `schedule`, `dag` the kflow `dag` extension task (dependencies,
//! trigger rules, cycles), `settings` kflow's own settings in `metadata.kflow`.

mod calls;
mod common;
mod dag;
mod events;
mod run;
mod settings;
mod tasks;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diag::Diagnostic;
use crate::duration::DurationSpec;
use crate::model::{AuthPolicy, Document, ErrorDef, RetryPolicy, Task, TaskHints, Use, Workflow};
use crate::node::Node;

use common::{Obj, key_str};

/// Everything lowering needs along the way: the diagnostics so far and the `use:` components
/// that references resolve to. A component that failed to lower is stored as `None`, so that
/// references to it are not reported a second time.
pub(crate) struct Cx<'a> {
    diags: Vec<Diagnostic>,
    errors: BTreeMap<String, Option<ErrorDef>>,
    retries: BTreeMap<String, Option<Arc<RetryPolicy>>>,
    timeouts: BTreeMap<String, Option<DurationSpec>>,
    auths: BTreeMap<String, Option<Arc<AuthPolicy>>>,
    secrets: Vec<String>,
    catalogs: Vec<String>,
    /// Definitions of `use.functions`, lowered on first use (a function may call another).
    function_nodes: BTreeMap<String, &'a Node>,
    functions: BTreeMap<String, Option<Arc<Task>>>,
    /// Functions being lowered right now, to detect a function that calls itself.
    function_stack: Vec<String>,
    /// `LoadOptions::strict`: kflow's extensions (`dag`, `needs`, `trigger`, `parallel`) are
    /// refused.
    strict: bool,
    /// The engine hints of the tasks lowered so far, by task reference.
    task_hints: BTreeMap<String, TaskHints>,
}

impl<'a> Cx<'a> {
    fn new(strict: bool) -> Self {
        Cx {
            strict,
            diags: Vec::new(),
            errors: BTreeMap::new(),
            retries: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            auths: BTreeMap::new(),
            secrets: Vec::new(),
            catalogs: Vec::new(),
            function_nodes: BTreeMap::new(),
            functions: BTreeMap::new(),
            function_stack: Vec::new(),
            task_hints: BTreeMap::new(),
        }
    }

    /// Records a problem at `node`.
    pub(crate) fn at(&mut self, node: &Node, message: impl Into<String>) {
        self.diags
            .push(Diagnostic::new(node.pos.line, node.pos.col, message));
    }

    /// In strict mode, reports the kflow extension property `key` (at its key node) and returns
    /// true; otherwise returns false.
    pub(crate) fn refuse_extension(&mut self, key: &Node, name: &str) -> bool {
        if self.strict {
            self.at(
                key,
                format!("'{name}' is a kflow extension, not part of the Serverless Workflow DSL; remove --strict to allow it"),
            );
        }
        self.strict
    }

    /// " (defined: a, b)" or " (use.x is empty)" for messages about an unresolved name.
    pub(crate) fn known(&self, section: &str) -> String {
        let names: Box<dyn Iterator<Item = &String>> = match section {
            "errors" => Box::new(self.errors.keys()),
            "retries" => Box::new(self.retries.keys()),
            "timeouts" => Box::new(self.timeouts.keys()),
            "authentications" => Box::new(self.auths.keys()),
            "secrets" => Box::new(self.secrets.iter()),
            "functions" => Box::new(self.function_nodes.keys()),
            "catalogs" => Box::new(self.catalogs.iter()),
            _ => Box::new(std::iter::empty()),
        };
        let names = list_names(names);
        if names.is_empty() {
            String::new()
        } else {
            format!(" (defined: {names})")
        }
    }

    /// The function `name` of `use.functions`, lowering it on first use. `None` when it does not
    /// exist (`Some(None)` when it exists but is invalid or recursive).
    pub(crate) fn function(&mut self, name: &str, at: &Node) -> Option<Option<Arc<Task>>> {
        if let Some(done) = self.functions.get(name) {
            return Some(done.clone());
        }
        let node = *self.function_nodes.get(name)?;
        if let Some(start) = self.function_stack.iter().position(|n| n == name) {
            let mut cycle: Vec<&str> = self.function_stack[start..]
                .iter()
                .map(String::as_str)
                .collect();
            cycle.push(name);
            self.at(
                at,
                format!("function '{name}' calls itself ({})", cycle.join(" → ")),
            );
            return Some(None);
        }
        self.function_stack.push(name.to_string());
        let reference = format!("/use/functions/{}", common::pointer_token(name));
        let task = tasks::task(self, name, node, &reference, &tasks::Scope::single()).map(Arc::new);
        self.function_stack.pop();
        self.functions.insert(name.to_string(), task.clone());
        Some(task)
    }
}

/// "a, b, c", shortened when long (and without walking a long list to the end).
pub(crate) fn list_names<S: AsRef<str>>(names: impl Iterator<Item = S>) -> String {
    const MAX: usize = 12;
    let mut shown = Vec::with_capacity(MAX);
    let mut more = false;
    for name in names {
        if shown.len() == MAX {
            more = true;
            break;
        }
        shown.push(name.as_ref().to_string());
    }
    if more {
        format!("{}, ...", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// At most this many diagnostics are returned; a last one says how many more there were.
const MAX_DIAGNOSTICS: usize = 200;

/// Lowers a parsed document to a workflow, or returns every problem found, sorted by position.
pub fn lower(root: &Node) -> Result<Workflow, Vec<Diagnostic>> {
    lower_with(root, &crate::LoadOptions::default())
}

/// [`lower`] with options (strict mode refuses kflow's extensions).
pub fn lower_with(root: &Node, options: &crate::LoadOptions) -> Result<Workflow, Vec<Diagnostic>> {
    let mut cx = Cx::new(options.strict);
    let workflow = workflow(&mut cx, root);
    let mut diags = cx.diags;
    match workflow {
        Some(w) if diags.is_empty() => Ok(w),
        _ => {
            if diags.is_empty() {
                diags.push(Diagnostic::new(
                    root.pos.line,
                    root.pos.col,
                    "the workflow is invalid",
                ));
            }
            diags.sort_by_key(|d| (d.line, d.col));
            diags.dedup();
            if diags.len() > MAX_DIAGNOSTICS {
                let more = diags.len() - MAX_DIAGNOSTICS;
                let next = &diags[MAX_DIAGNOSTICS];
                let last = Diagnostic::new(
                    next.line,
                    next.col,
                    format!(
                        "... and {more} more problems (only the first {MAX_DIAGNOSTICS} are listed)"
                    ),
                );
                diags.truncate(MAX_DIAGNOSTICS);
                diags.push(last);
            }
            Err(diags)
        }
    }
}

const TOP_LEVEL: [&str; 8] = [
    "document", "input", "use", "do", "timeout", "output", "schedule", "evaluate",
];

fn workflow<'a>(cx: &mut Cx<'a>, root: &'a Node) -> Option<Workflow> {
    let obj = Obj::new(cx, root, "the workflow", "")?;
    obj.check(cx, &TOP_LEVEL);
    let document = obj.req(cx, "document").and_then(|n| document(cx, n));
    let kflow = obj
        .get("document")
        .map(|n| settings::document(cx, n, obj.get("schedule")));
    // `use:` first: everything below may refer to its components.
    let use_ = obj.get("use").map(|n| use_section(cx, n));
    let evaluate_loose = obj.get("evaluate").map(|n| evaluate(cx, n));
    let input = obj.get("input").map(|n| common::data_in(cx, n, "input"));
    let output = obj.get("output").map(|n| common::data_out(cx, n, "output"));
    let timeout = obj
        .get("timeout")
        .map(|n| common::timeout(cx, n, "'timeout'", "timeout"));
    let schedule = obj.get("schedule").map(|n| events::schedule(cx, n));
    let do_ = obj
        .req(cx, "do")
        .and_then(|n| tasks::task_list(cx, n, "/do", "'do'"));
    let use_ = match use_ {
        None => Some(Use::default()),
        Some(u) => u,
    };
    let mut kflow = kflow.unwrap_or_default();
    kflow.tasks = std::mem::take(&mut cx.task_hints);
    Some(Workflow {
        document: document?,
        input: input.flatten(),
        output: output.flatten(),
        use_: use_?,
        do_: do_?,
        timeout: timeout.flatten(),
        schedule: schedule.flatten(),
        evaluate_loose: evaluate_loose.flatten().unwrap_or(false),
        kflow,
        definition: Arc::new(root.to_json()),
    })
}

fn document(cx: &mut Cx, node: &Node) -> Option<Document> {
    let obj = Obj::new(cx, node, "'document'", "document")?;
    obj.check(
        cx,
        &[
            "dsl",
            "namespace",
            "name",
            "version",
            "title",
            "summary",
            "tags",
            "metadata",
        ],
    );
    let text = |cx: &mut Cx, key: &str, required: bool| {
        let n = if required {
            obj.req(cx, key)
        } else {
            obj.get(key)
        };
        n.and_then(|n| common::string(cx, n, &obj.field(key)).map(|s| (n, s.to_string())))
    };
    let dsl = text(cx, "dsl", true);
    let namespace = text(cx, "namespace", true);
    let name = text(cx, "name", true);
    let version = text(cx, "version", true);
    let title = text(cx, "title", false).map(|(_, s)| s);
    let summary = text(cx, "summary", false).map(|(_, s)| s);
    if let Some((n, dsl)) = &dsl {
        check_dsl_version(cx, n, dsl);
    }
    for (field, value) in [("namespace", &namespace), ("name", &name)] {
        if let Some((n, s)) = value
            && !is_dns_label(s)
        {
            cx.at(
                n,
                format!("'{s}' is not a valid document.{field}: use 1 to 63 letters, digits and '-', starting and ending with a letter or digit"),
            );
        }
    }
    if let Some((n, v)) = &version
        && !is_semver(v)
    {
        cx.at(
            n,
            format!(
                "'{v}' is not a valid document.version: expected a semantic version such as 1.0.0"
            ),
        );
    }
    let tags = obj
        .get("tags")
        .and_then(|n| common::json_object(cx, n, &obj.field("tags")));
    let metadata = obj
        .get("metadata")
        .and_then(|n| common::json_object(cx, n, &obj.field("metadata")));
    Some(Document {
        dsl: dsl?.1,
        namespace: namespace?.1,
        name: name?.1,
        version: version?.1,
        title,
        summary,
        tags: tags.unwrap_or_default().into_iter().collect(),
        metadata: metadata.unwrap_or_default(),
    })
}

/// kflow runs DSL 1.x documents (1.0.0 to 1.0.3 and later 1.x revisions).
fn check_dsl_version(cx: &mut Cx, node: &Node, dsl: &str) {
    if !is_semver(dsl) {
        cx.at(
            node,
            format!(
                "'{dsl}' is not a valid document.dsl: expected a semantic version such as 1.0.0"
            ),
        );
        return;
    }
    let major = dsl.split('.').next().unwrap_or("");
    if major != "1" {
        let hint = if major == "0" {
            "; 0.x documents use a different format"
        } else {
            ""
        };
        cx.at(
            node,
            format!("unsupported DSL version '{dsl}': kflow runs DSL 1.x documents{hint}"),
        );
    }
}

/// `^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Semantic version 2.0.0: `MAJOR.MINOR.PATCH[-pre.release][+build.meta]`.
pub(crate) fn is_semver(s: &str) -> bool {
    let (rest, build) = match s.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (s, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numeric = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
    };
    let ident =
        |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|p| {
            p.split('.')
                .all(|id| ident(id) && (numeric(id) || !id.bytes().all(|b| b.is_ascii_digit())))
        })
        && build.is_none_or(|b| b.split('.').all(ident))
}

fn evaluate(cx: &mut Cx, node: &Node) -> Option<bool> {
    let obj = Obj::new(cx, node, "'evaluate'", "evaluate")?;
    obj.check(cx, &["language", "mode"]);
    if let Some(n) = obj.get("language")
        && let Some(lang) = common::string(cx, n, &obj.field("language"))
        && lang != "jq"
    {
        cx.at(
            n,
            format!("expression language '{lang}' is not supported (only jq)"),
        );
    }
    let mode = obj
        .get("mode")
        .and_then(|n| common::one_of(cx, n, &obj.field("mode"), &["strict", "loose"]));
    Some(mode == Some("loose"))
}

/// `use:`. Secrets, authentications, errors, retries and timeouts are read first, functions
/// (which may refer to all of them, and to each other) last.
fn use_section<'a>(cx: &mut Cx<'a>, node: &'a Node) -> Option<Use> {
    let obj = Obj::new(cx, node, "'use'", "use")?;
    obj.check(
        cx,
        &[
            "authentications",
            "errors",
            "extensions",
            "functions",
            "retries",
            "secrets",
            "timeouts",
            "catalogs",
        ],
    );
    if let Some(n) = obj.get("secrets") {
        cx.secrets = common::string_list(cx, n, &obj.field("secrets")).unwrap_or_default();
    }
    if let Some(n) = obj.get("catalogs") {
        for (k, v) in named(cx, n, &obj.field("catalogs")) {
            let path = format!("use.catalogs.{k}");
            if let Some(cat) = Obj::new(cx, v, format!("'{path}'"), path) {
                cat.check(cx, &["endpoint"]);
                if let Some(e) = cat.req(cx, "endpoint") {
                    calls::endpoint(cx, e, &cat.child("endpoint"));
                }
            }
            cx.catalogs.push(k.to_string());
        }
    }
    if let Some(n) = obj.get("authentications") {
        for (k, v) in named(cx, n, &obj.field("authentications")) {
            let policy =
                calls::auth_policy(cx, v, &format!("use.authentications.{k}"), true).map(Arc::new);
            cx.auths.insert(k.to_string(), policy);
        }
    }
    if let Some(n) = obj.get("errors") {
        for (k, v) in named(cx, n, &obj.field("errors")) {
            let path = format!("use.errors.{k}");
            let def = common::error_def(cx, v, &format!("'{path}'"), &path);
            cx.errors.insert(k.to_string(), def);
        }
    }
    if let Some(n) = obj.get("retries") {
        for (k, v) in named(cx, n, &obj.field("retries")) {
            let path = format!("use.retries.{k}");
            let policy = common::retry_policy(cx, v, &format!("'{path}'"), &path);
            cx.retries.insert(k.to_string(), policy);
        }
    }
    if let Some(n) = obj.get("timeouts") {
        for (k, v) in named(cx, n, &obj.field("timeouts")) {
            let path = format!("use.timeouts.{k}");
            let t = common::timeout_def(cx, v, &format!("'{path}'"), &path);
            cx.timeouts.insert(k.to_string(), t);
        }
    }
    let mut function_names = Vec::new();
    if let Some(n) = obj.get("functions") {
        for (k, v) in named(cx, n, &obj.field("functions")) {
            cx.function_nodes.insert(k.to_string(), v);
            function_names.push((k.to_string(), v));
        }
    }
    for (name, node) in &function_names {
        cx.function(name, node);
    }
    if let Some(n) = obj.get("extensions") {
        tasks::extensions(cx, n);
    }
    let mut functions = BTreeMap::new();
    for (name, _) in function_names {
        if let Some(Some(task)) = cx.functions.get(&name) {
            functions.insert(name, task.clone());
        }
    }
    let errors = cx
        .errors
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    Some(Use {
        errors,
        secrets: cx.secrets.clone(),
        functions,
    })
}

/// The entries of a name → definition mapping (`use.errors`, ...).
fn named<'n>(cx: &mut Cx, node: &'n Node, what: &str) -> Vec<(&'n str, &'n Node)> {
    match common::mapping(cx, node, what) {
        Some(entries) => entries.iter().map(|(k, v)| (key_str(k), v)).collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests;

//! Building blocks shared by every part of lowering: checked access to mappings ([`Obj`]), typed
//! reads of scalars, and the DSL's recurring shapes (runtime expressions, templates, durations,
//! timeouts, schemas, input/output/export, errors, retry policies).
//!
//! Every reader reports its own problems to the [`Cx`] and returns `None` on failure, so callers
//! can keep going and collect every problem of the document in one pass.

use std::sync::Arc;

use crate::duration::{self, DurationSpec};
use crate::expr::{self, Expr};
use crate::model::{Backoff, DataIn, DataOut, ErrorDef, ErrorFilter, RetryPolicy};
use crate::node::{Node, NodeKind};
use crate::schema::Schema;
use crate::template::Template;

use super::Cx;

/// The text of a mapping key (keys are always strings after parsing).
pub(super) fn key_str(key: &Node) -> &str {
    key.as_str().unwrap_or("")
}

/// A mapping of the document, with the words used to name it in messages.
pub(super) struct Obj<'a> {
    pub node: &'a Node,
    pub entries: &'a [(Node, Node)],
    /// How messages name this mapping: `'document'`, `task 'getPet'`, `call http 'with'`.
    pub label: String,
    /// Dotted path of this mapping relative to its task (or to the document root), used to name
    /// its fields: `with` gives `'with.method'`. Empty for a task itself.
    pub path: String,
}

impl<'a> Obj<'a> {
    /// Views `node` as a mapping, or reports that it is not one.
    pub fn new(
        cx: &mut Cx,
        node: &'a Node,
        label: impl Into<String>,
        path: impl Into<String>,
    ) -> Option<Obj<'a>> {
        let label = label.into();
        match node.as_map() {
            Some(entries) => Some(Obj {
                node,
                entries,
                label,
                path: path.into(),
            }),
            None => {
                cx.at(
                    node,
                    format!("expected a mapping for {label}, got {}", node.describe()),
                );
                None
            }
        }
    }

    /// A field of this mapping, named in a [`Obj::field`]-style label.
    pub fn sub(&self, cx: &mut Cx, key: &str, node: &'a Node) -> Option<Obj<'a>> {
        Obj::new(cx, node, format!("'{}'", self.child(key)), self.child(key))
    }

    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| key_str(k) == key)
            .map(|(_, v)| v)
    }

    /// The key node of `key` (for diagnostics about the property itself).
    pub fn key(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| key_str(k) == key)
            .map(|(k, _)| k)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value under `key`; reports it missing (at this mapping) when absent.
    pub fn req(&self, cx: &mut Cx, key: &str) -> Option<&'a Node> {
        let found = self.get(key);
        if found.is_none() {
            cx.at(
                self.node,
                format!("missing required property '{key}' in {}", self.label),
            );
        }
        found
    }

    /// Reports every key not in `allowed`, at the key.
    pub fn check(&self, cx: &mut Cx, allowed: &[&str]) {
        for (k, _) in self.entries {
            let name = key_str(k);
            if name == "<<" {
                cx.at(k, "YAML merge keys ('<<') are not supported (YAML 1.2 has none); write the properties out");
            } else if !allowed.contains(&name) {
                cx.at(
                    k,
                    format!(
                        "unknown property '{name}' in {} (expected one of: {})",
                        self.label,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    /// Dotted path of a field: `with.method`.
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// How messages name a field: `'with.method'`, or `'if' in task 'x'` on a task itself.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            format!("'{key}' in {}", self.label)
        } else {
            format!("'{}'", self.child(key))
        }
    }
}

/// Reports "expected X for Y, got Z" at `node`.
pub(super) fn type_error(cx: &mut Cx, node: &Node, expected: &str, what: &str) {
    let hint = match (&node.kind, expected) {
        (NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_), "a string") => {
            " (quote it to make it a string)"
        }
        _ => "",
    };
    cx.at(
        node,
        format!(
            "expected {expected} for {what}, got {}{hint}",
            node.describe()
        ),
    );
}

pub(super) fn string<'n>(cx: &mut Cx, node: &'n Node, what: &str) -> Option<&'n str> {
    let s = node.as_str();
    if s.is_none() {
        type_error(cx, node, "a string", what);
    }
    s
}

pub(super) fn boolean(cx: &mut Cx, node: &Node, what: &str) -> Option<bool> {
    match node.kind {
        NodeKind::Bool(b) => Some(b),
        _ => {
            type_error(cx, node, "a boolean (true or false)", what);
            None
        }
    }
}

pub(super) fn integer(cx: &mut Cx, node: &Node, what: &str) -> Option<i64> {
    match node.kind {
        NodeKind::Int(i) => Some(i),
        _ => {
            type_error(cx, node, "an integer", what);
            None
        }
    }
}

pub(super) fn mapping<'n>(cx: &mut Cx, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
    let m = node.as_map();
    if m.is_none() {
        type_error(cx, node, "a mapping", what);
    }
    m
}

pub(super) fn list<'n>(cx: &mut Cx, node: &'n Node, what: &str) -> Option<&'n [Node]> {
    let s = node.as_seq();
    if s.is_none() {
        type_error(cx, node, "a list", what);
    }
    s
}

/// A list of strings (`arguments`, `scopes`, `use.secrets`).
pub(super) fn string_list(cx: &mut Cx, node: &Node, what: &str) -> Option<Vec<String>> {
    let items = list(cx, node, what)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match string(cx, item, &format!("an item of {what}")) {
            Some(s) => out.push(s.to_string()),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A string that must be one of `allowed`.
pub(super) fn one_of<'n>(
    cx: &mut Cx,
    node: &'n Node,
    what: &str,
    allowed: &[&str],
) -> Option<&'n str> {
    let s = string(cx, node, what)?;
    if allowed.contains(&s) {
        Some(s)
    } else {
        cx.at(
            node,
            format!(
                "invalid value '{s}' for {what} (expected one of: {})",
                allowed.join(", ")
            ),
        );
        None
    }
}

/// A jq variable name (`for.each`, `catch.as`): `$name` must be valid jq.
pub(super) fn var_name(cx: &mut Cx, node: &Node, what: &str) -> Option<String> {
    let s = string(cx, node, what)?;
    let mut chars = s.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Some(s.to_string())
    } else {
        cx.at(
            node,
            format!("'{s}' is not a valid variable name for {what} (use letters, digits and '_', not starting with a digit)"),
        );
        None
    }
}

/// Compiles jq source found at `node`, reporting a compile error there.
pub(super) fn compile(cx: &mut Cx, node: &Node, source: &str, what: &str) -> Option<Expr> {
    if source.trim().is_empty() {
        cx.at(node, format!("empty runtime expression for {what}"));
        return None;
    }
    match Expr::compile(source) {
        Ok(e) => Some(e),
        Err(e) => {
            cx.at(node, e.to_string());
            None
        }
    }
}

/// A field typed as a runtime expression (`if`, `when`, `for.in`, ...): a string holding bare jq
/// or `${ jq }`.
pub(super) fn runtime_expr(cx: &mut Cx, node: &Node, what: &str) -> Option<Expr> {
    let s = match &node.kind {
        NodeKind::Str(s) => s,
        _ => {
            type_error(cx, node, "a runtime expression (a string)", what);
            return None;
        }
    };
    let source = expr::strip_dollar_braces(s).unwrap_or(s);
    compile(cx, node, source, what)
}

/// Whether `s` is written as a `${ }` runtime expression.
pub(super) fn is_dollar_expr(s: &str) -> bool {
    expr::strip_dollar_braces(s).is_some()
}

/// Any value as a template: `${ }` strings inside it are expressions, the rest literal.
pub(super) fn template(cx: &mut Cx, node: &Node) -> Option<Template> {
    match Template::from_value(&node.to_json()) {
        Ok(t) => Some(t),
        Err((pointer, e)) => {
            cx.at(node.at_pointer(&pointer), e.to_string());
            None
        }
    }
}

/// A string field that may be a literal or a `${ }` expression.
pub(super) fn string_template(cx: &mut Cx, node: &Node, what: &str) -> Option<Template> {
    string(cx, node, what)?;
    template(cx, node)
}

/// A mapping field whose values may hold `${ }` expressions.
pub(super) fn mapping_template(cx: &mut Cx, node: &Node, what: &str) -> Option<Template> {
    mapping(cx, node, what)?;
    template(cx, node)
}

/// `input.from`, `output.as`, `export.as`: a string is a runtime expression (bare or `${ }`), a
/// mapping or list is a template.
pub(super) fn transform(cx: &mut Cx, node: &Node, what: &str) -> Option<Template> {
    match &node.kind {
        NodeKind::Str(_) => runtime_expr(cx, node, what).map(Template::expr),
        NodeKind::Map(_) | NodeKind::Seq(_) => template(cx, node),
        _ => {
            type_error(
                cx,
                node,
                "a runtime expression (a string) or a mapping",
                what,
            );
            None
        }
    }
}

/// A duration: an ISO 8601 string, an inline `{ minutes: 1 }` mapping, or a `${ }` expression.
pub(super) fn duration(cx: &mut Cx, node: &Node, what: &str) -> Option<DurationSpec> {
    match &node.kind {
        NodeKind::Str(s) => {
            if let Some(src) = expr::strip_dollar_braces(s) {
                return compile(cx, node, src, what).map(DurationSpec::Expr);
            }
            match duration::parse_iso8601(s) {
                Ok(ms) => Some(DurationSpec::Millis(ms)),
                Err(e) => {
                    cx.at(node, e);
                    None
                }
            }
        }
        NodeKind::Map(entries) => {
            const UNITS: [&str; 5] = ["days", "hours", "minutes", "seconds", "milliseconds"];
            let mut ok = true;
            for (k, v) in entries {
                let unit = key_str(k);
                if !UNITS.contains(&unit) {
                    cx.at(
                        k,
                        format!(
                            "unknown duration property '{unit}' in {what} (expected one of: {})",
                            UNITS.join(", ")
                        ),
                    );
                    ok = false;
                } else if !matches!(v.kind, NodeKind::Int(i) if i >= 0) {
                    type_error(
                        cx,
                        v,
                        "a non-negative integer",
                        &format!("'{unit}' of {what}"),
                    );
                    ok = false;
                }
            }
            if !ok {
                return None;
            }
            match duration::duration_from_value(&node.to_json()) {
                Ok(ms) => Some(DurationSpec::Millis(ms)),
                Err(e) => {
                    cx.at(node, format!("invalid duration for {what}: {e}"));
                    None
                }
            }
        }
        _ => {
            type_error(
                cx,
                node,
                "a duration (an ISO 8601 string such as PT30S, or a mapping such as {seconds: 30})",
                what,
            );
            None
        }
    }
}

/// `timeout:` of the workflow or a task: `{ after: <duration> }`, or the name of one of
/// `use.timeouts`.
pub(super) fn timeout(cx: &mut Cx, node: &Node, what: &str, path: &str) -> Option<DurationSpec> {
    match &node.kind {
        NodeKind::Str(name) => match cx.timeouts.get(name.as_str()) {
            Some(t) => t.clone(),
            None => {
                cx.at(
                    node,
                    format!(
                        "timeout '{name}' is not defined in use.timeouts{}",
                        cx.known("timeouts")
                    ),
                );
                None
            }
        },
        NodeKind::Map(_) => timeout_def(cx, node, &format!("'{path}'"), path),
        _ => {
            type_error(
                cx,
                node,
                "a timeout mapping ({after: ...}) or the name of a timeout in use.timeouts",
                what,
            );
            None
        }
    }
}

/// A timeout definition: `{ after: <duration> }`.
pub(super) fn timeout_def(
    cx: &mut Cx,
    node: &Node,
    label: &str,
    path: &str,
) -> Option<DurationSpec> {
    let obj = Obj::new(cx, node, label, path)?;
    obj.check(cx, &["after"]);
    let after = obj.req(cx, "after")?;
    duration(cx, after, &obj.field("after"))
}

/// `schema:` of input, output or export.
pub(super) fn schema(cx: &mut Cx, node: &Node, path: &str) -> Option<Schema> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &["format", "document", "resource"]);
    if let Some(f) = obj.get("format")
        && let Some(format) = string(cx, f, &obj.field("format"))
        && format != "json"
        && !format.starts_with("json:")
    {
        cx.at(
            f,
            format!("schema format '{format}' is not supported (only json)"),
        );
    }
    match (obj.get("document"), obj.get("resource")) {
        (Some(_), Some(r)) => {
            cx.at(
                r,
                format!("{} has both 'document' and 'resource'; use one", obj.label),
            );
            None
        }
        (Some(doc), None) => match Schema::compile(&doc.to_json()) {
            Ok(s) => Some(s),
            Err(e) => {
                cx.at(doc, e);
                None
            }
        },
        (None, Some(r)) => {
            cx.at(r, "external schemas ('resource') are not supported yet; put the schema inline under 'document'");
            None
        }
        (None, None) => {
            cx.at(
                node,
                format!("missing required property 'document' in {}", obj.label),
            );
            None
        }
    }
}

/// `input:` of the workflow or a task.
pub(super) fn data_in(cx: &mut Cx, node: &Node, path: &str) -> Option<DataIn> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &["schema", "from"]);
    let schema = obj
        .get("schema")
        .map(|n| schema(cx, n, &obj.child("schema")));
    let from = obj
        .get("from")
        .map(|n| transform(cx, n, &obj.field("from")));
    Some(DataIn {
        schema: schema.flatten(),
        from: from.flatten(),
    })
}

/// `output:` or `export:` of the workflow or a task.
pub(super) fn data_out(cx: &mut Cx, node: &Node, path: &str) -> Option<DataOut> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &["schema", "as"]);
    let schema = obj
        .get("schema")
        .map(|n| schema(cx, n, &obj.child("schema")));
    let as_ = obj.get("as").map(|n| transform(cx, n, &obj.field("as")));
    Some(DataOut {
        schema: schema.flatten(),
        as_: as_.flatten(),
    })
}

/// A literal URI (or URI template) with no whitespace, or a `${ }` expression.
pub(super) fn uri_or_expr(cx: &mut Cx, node: &Node, what: &str) -> Option<Template> {
    let s = string(cx, node, what)?;
    if !is_dollar_expr(s) {
        check_uri(cx, node, s, what)?;
    }
    template(cx, node)
}

/// Checks the literal URI (template) `s`: not empty, no whitespace, `{name}` placeholders closed.
pub(super) fn check_uri(cx: &mut Cx, node: &Node, s: &str, what: &str) -> Option<()> {
    let problem = if s.trim().is_empty() {
        Some("it is empty".to_string())
    } else if s.chars().any(char::is_whitespace) {
        Some("it contains whitespace".to_string())
    } else {
        let mut open = false;
        let mut bad = None;
        for c in s.chars() {
            match (c, open) {
                ('{', false) => open = true,
                ('}', true) => open = false,
                ('{', true) => bad = Some("a '{' inside a '{...}' placeholder".to_string()),
                ('}', false) => bad = Some("a '}' without a matching '{'".to_string()),
                _ => {}
            }
        }
        if open {
            Some("a '{' placeholder is not closed".to_string())
        } else {
            bad
        }
    };
    match problem {
        None => Some(()),
        Some(p) => {
            cx.at(node, format!("'{s}' is not a valid URI for {what}: {p}"));
            None
        }
    }
}

/// An error definition (inline in `raise`, or in `use.errors`).
pub(super) fn error_def(cx: &mut Cx, node: &Node, label: &str, path: &str) -> Option<ErrorDef> {
    let obj = Obj::new(cx, node, label, path)?;
    obj.check(
        cx,
        &["type", "status", "instance", "title", "detail", "details"],
    );
    if let Some((k, _)) = obj.entries.iter().find(|(k, _)| key_str(k) == "details") {
        cx.at(
            k,
            format!(
                "unknown property 'details' in {} (the property is spelled 'detail')",
                obj.label
            ),
        );
    }
    let type_ = obj
        .req(cx, "type")
        .and_then(|n| uri_or_expr(cx, n, &obj.field("type")));
    let status = obj.req(cx, "status").and_then(|n| match &n.kind {
        NodeKind::Int(_) => template(cx, n),
        NodeKind::Str(s) if is_dollar_expr(s) => template(cx, n),
        _ => {
            type_error(
                cx,
                n,
                "an integer (or a ${ } expression)",
                &obj.field("status"),
            );
            None
        }
    });
    let instance = obj
        .get("instance")
        .map(|n| string_template(cx, n, &obj.field("instance")));
    let title = obj
        .get("title")
        .map(|n| string_template(cx, n, &obj.field("title")));
    let detail = obj
        .get("detail")
        .map(|n| string_template(cx, n, &obj.field("detail")));
    Some(ErrorDef {
        type_: type_?,
        status: status?,
        title: title.flatten(),
        detail: detail.flatten(),
        instance: instance.flatten(),
    })
}

/// `catch.errors.with`: a static filter on error properties.
pub(super) fn error_filter(cx: &mut Cx, node: &Node, path: &str) -> Option<ErrorFilter> {
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &["type", "status", "instance", "title", "detail"]);
    if obj.entries.is_empty() {
        cx.at(
            node,
            format!(
                "{} needs at least one of type, status, instance, title, detail",
                obj.label
            ),
        );
    }
    let mut text = |key: &str| {
        obj.get(key)
            .and_then(|n| string(cx, n, &obj.field(key)).map(str::to_string))
    };
    let (type_, instance, title, detail) = (
        text("type"),
        text("instance"),
        text("title"),
        text("detail"),
    );
    let status = obj
        .get("status")
        .and_then(|n| integer(cx, n, &obj.field("status")));
    Some(ErrorFilter {
        type_,
        status,
        instance,
        title,
        detail,
    })
}

/// A retry policy (inline in `catch.retry`, or in `use.retries`).
pub(super) fn retry_policy(
    cx: &mut Cx,
    node: &Node,
    label: &str,
    path: &str,
) -> Option<Arc<RetryPolicy>> {
    let obj = Obj::new(cx, node, label, path)?;
    obj.check(
        cx,
        &["when", "exceptWhen", "delay", "backoff", "limit", "jitter"],
    );
    let when = obj
        .get("when")
        .map(|n| runtime_expr(cx, n, &obj.field("when")));
    let except_when = obj
        .get("exceptWhen")
        .map(|n| runtime_expr(cx, n, &obj.field("exceptWhen")));
    let delay = obj
        .get("delay")
        .map(|n| duration(cx, n, &obj.field("delay")));
    let backoff = obj
        .get("backoff")
        .map(|n| backoff(cx, n, &obj.child("backoff")));
    let (mut attempts, mut attempt_duration, mut limit_duration) = (None, None, None);
    if let Some(limit) = obj.get("limit").and_then(|n| obj.sub(cx, "limit", n)) {
        limit.check(cx, &["attempt", "duration"]);
        if let Some(attempt) = limit
            .get("attempt")
            .and_then(|n| limit.sub(cx, "attempt", n))
        {
            attempt.check(cx, &["count", "duration"]);
            attempts = attempt.get("count").and_then(|n| match n.kind {
                NodeKind::Int(i) if i >= 0 => u64::try_from(i).ok(),
                _ => {
                    type_error(cx, n, "a non-negative integer", &attempt.field("count"));
                    None
                }
            });
            attempt_duration = attempt
                .get("duration")
                .and_then(|n| duration(cx, n, &attempt.field("duration")));
        }
        limit_duration = limit
            .get("duration")
            .and_then(|n| duration(cx, n, &limit.field("duration")));
    }
    let mut jitter = None;
    if let Some(j) = obj.get("jitter").and_then(|n| obj.sub(cx, "jitter", n)) {
        j.check(cx, &["from", "to"]);
        let from = j
            .req(cx, "from")
            .and_then(|n| duration(cx, n, &j.field("from")));
        let to = j
            .req(cx, "to")
            .and_then(|n| duration(cx, n, &j.field("to")));
        jitter = from.zip(to);
    }
    Some(Arc::new(RetryPolicy {
        when: when.flatten(),
        except_when: except_when.flatten(),
        delay: delay.flatten(),
        backoff: backoff.flatten().unwrap_or_default(),
        limit_attempts: attempts,
        limit_attempt_duration: attempt_duration,
        limit_duration,
        jitter,
    }))
}

/// `backoff: { constant | linear | exponential: {} }`.
fn backoff(cx: &mut Cx, node: &Node, path: &str) -> Option<Backoff> {
    const KINDS: [&str; 3] = ["constant", "linear", "exponential"];
    let obj = Obj::new(cx, node, format!("'{path}'"), path)?;
    obj.check(cx, &KINDS);
    let present: Vec<&str> = KINDS.into_iter().filter(|k| obj.has(k)).collect();
    for k in &present {
        if let Some(n) = obj.get(k) {
            mapping(cx, n, &obj.field(k));
        }
    }
    match present.as_slice() {
        ["constant"] => Some(Backoff::Constant),
        ["linear"] => Some(Backoff::Linear),
        ["exponential"] => Some(Backoff::Exponential),
        [] => {
            // An unknown key was reported already; say what is missing only for `{}`.
            if obj.entries.is_empty() {
                cx.at(
                    node,
                    format!("{} needs one of: constant, linear, exponential", obj.label),
                );
            }
            None
        }
        _ => {
            cx.at(
                node,
                format!(
                    "{} must have exactly one of constant, linear, exponential (found {})",
                    obj.label,
                    present.join(", ")
                ),
            );
            None
        }
    }
}

/// A JSON object from a mapping (`metadata`, `tags`).
pub(super) fn json_object(
    cx: &mut Cx,
    node: &Node,
    what: &str,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    mapping(cx, node, what)?;
    match node.to_json() {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Escapes a JSON pointer token.
pub(super) fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

//! Event matching for `listen` and `schedule.on`: pure functions the hosts use too.
//!
//! dsl-reference.md, Event Filter: `with` is "a name/value mapping of the attributes filtered
//! events must define. Supports both regular expressions and runtime expressions." kflow reads
//! each value of the mapping, at every depth, by what it is in the definition:
//!
//! - a **literal string** matches a text equal to it or, read as a regular expression, matched
//!   by it as a whole ([`kflow_dsl::pattern`]);
//! - another **literal** (number, boolean, null) matches an equal value; a literal **object**
//!   matches an object that has every listed property, each matching (other properties may be
//!   there: `data: {kind: order}` matches `{"kind": "order", "id": 7}`); a literal **array**
//!   matches an array of the same length, item by item; `null` also matches an absent
//!   attribute. Context attributes other than `data` (`type`, `source`, extensions, ...)
//!   compare by their text, as CloudEvents attributes travel as text (`5` matches `"5"`);
//!   inside `data` JSON types count (`"5"` does not match `5`, no pattern matches a number);
//! - a **runtime expression** is evaluated on the event's value at the same place (the whole
//!   payload for `data: ${ .temperature > 38 }`, the type for `type: ${ startswith("com.") }`),
//!   with the task's arguments (`$input`, `$context`, ...) as they were when listening started.
//!   A boolean result is the verdict; any other result is the value the attribute must have,
//!   compared exactly (never as a pattern: a computed value is data, and dsl.md forbids
//!   evaluating syntax found in data). An expression that fails on an event (it indexes a
//!   string, say) does not match it: events come from outside, and an odd one must not fault
//!   the workflow. A read the runtime refuses (a secret the workflow may not see) is an error
//!   when listening starts ([`bind`]).
//!
//! **Hosts and the interpreter make the same decision with the same function.** A `listen`
//! task starts an [`Effect::Listen`] that carries its filters as written (expressions as their
//! `${ … }` source, [`source`]) and the values of the `$variables` those expressions read
//! ([`Args`], taken by [`bind`] when listening starts). A host compiles them once into a
//! [`Subscription`] and offers each event to [`Subscription::matches`]; the interpreter decides
//! with [`accepts`] on the same filters and the same [`Args`], which is what
//! `Subscription::matches` calls. So a host delivers exactly the events the interpreter takes
//! (correlation aside: `correlate` is checked by the interpreter, which keeps its state), and
//! no rejected event reaches a history. Effects stored by an earlier kflow carry only the
//! literal part of their filters and no `args`: their filters are read as literal mappings.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use kflow_dsl::expr::{Expr, ExprError, Limits, Vars};
use kflow_dsl::pattern;
use kflow_dsl::template::Template;

use crate::effect::Effect;

/// The values of the `$variables` (names without the `$`) the runtime expressions of a
/// subscription's filters read, as they were when listening started: the `args` of
/// [`Effect::Listen`]. A variable without a value is absent (and reads as `null`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args(pub Map<String, Value>);

impl Vars for Args {
    fn var(&self, name: &str) -> Option<Cow<'_, Value>> {
        self.0.get(name).map(Cow::Borrowed)
    }
}

/// Whether `event` passes the filter `with` (`EventFilter::with`), its expressions reading
/// `args`: the one decision hosts ([`Subscription::matches`]) and the interpreter make.
pub fn accepts(with: &Template, event: &Value, args: &Args) -> bool {
    // `Args` refuses no read, so there is no error to report here.
    filter_matches(with, event, args).unwrap_or(false)
}

/// Takes, from `vars`, the values of the variables the expressions in `filters` read (the
/// [`Args`] of a subscription); `Err` when `vars` refuses a read one of them makes
/// ([`ExprError::Refused`]: a secret the workflow may not see), before anything runs.
pub fn bind<'a>(
    filters: impl IntoIterator<Item = &'a Template>,
    vars: &dyn Vars,
) -> Result<Args, ExprError> {
    let mut exprs = Vec::new();
    for t in filters {
        collect_exprs(t, &mut exprs);
    }
    let mut names = BTreeSet::new();
    for e in exprs {
        for (name, key) in e.literal_keys() {
            vars.check_key(name, key)
                .map_err(|message| ExprError::Refused {
                    expr: e.source().to_string(),
                    message,
                })?;
        }
        names.extend(e.variables());
    }
    let mut args = Map::new();
    for name in names {
        if let Some(v) = vars.var(name) {
            args.insert(name.to_string(), v.into_owned());
        }
    }
    Ok(Args(args))
}

fn collect_exprs<'a>(t: &'a Template, out: &mut Vec<&'a Expr>) {
    match t {
        Template::Literal(_) => {}
        Template::Expr(e) => out.push(e),
        Template::Object(fields) => fields.iter().for_each(|(_, t)| collect_exprs(t, out)),
        Template::Array(items) => items.iter().for_each(|t| collect_exprs(t, out)),
    }
}

/// A filter as written: its literal values, and its expressions as `${ <source> }` strings
/// ([`Template::from_value`] reads it back to the same template).
pub fn source(with: &Template) -> Value {
    match with {
        Template::Literal(v) => v.clone(),
        Template::Expr(e) => Value::String(format!("${{ {} }}", e.source())),
        Template::Object(fields) => {
            Value::Object(fields.iter().map(|(k, t)| (k.clone(), source(t))).collect())
        }
        Template::Array(items) => Value::Array(items.iter().map(source).collect()),
    }
}

/// The `listen` effect for `filters` (as written, see [`source`]; any of them) with `args`.
pub fn listen_effect(filters: Vec<Value>, args: Args) -> Effect {
    Effect::Listen {
        filters,
        args: Some(args.0),
    }
}

/// A `listen` subscription as a host keeps it: the filters of its effect, compiled once, and
/// their arguments. [`Subscription::matches`] is exactly the interpreter's decision.
#[derive(Debug, Clone)]
pub struct Subscription {
    filters: Vec<Template>,
    args: Args,
}

/// Filters compiled per thread and kept for reuse (the instances of one workflow listen with
/// the same filters); the cache is emptied when it is full.
const COMPILED_ENTRIES: usize = 256;

thread_local! {
    static COMPILED: RefCell<HashMap<String, Template>> = RefCell::new(HashMap::new());
}

impl Subscription {
    /// The subscription of a `Listen` effect's `filters` and `args`. Without `args` (an effect
    /// stored by an earlier kflow) the filters are literal mappings, as that kflow wrote them.
    pub fn new(filters: &[Value], args: Option<&Map<String, Value>>) -> Subscription {
        let filters = match args {
            None => filters.iter().cloned().map(Template::Literal).collect(),
            Some(_) => filters.iter().map(compile_filter).collect(),
        };
        Subscription {
            filters,
            args: Args(args.cloned().unwrap_or_default()),
        }
    }

    /// The subscription of `effect` when it is a `listen`.
    pub fn of(effect: &Effect) -> Option<Subscription> {
        match effect {
            Effect::Listen { filters, args } => Some(Subscription::new(filters, args.as_ref())),
            _ => None,
        }
    }

    /// Whether `event` matches any of the filters (the interpreter takes it).
    pub fn matches(&self, event: &Value) -> bool {
        self.filters.iter().any(|f| accepts(f, event, &self.args))
    }
}

/// A filter of a `Listen` effect compiled. One that does not compile (it cannot come from the
/// interpreter, which compiled it first) matches every event: a host may hand over more events
/// than match, never fewer.
fn compile_filter(filter: &Value) -> Template {
    let key = filter.to_string();
    COMPILED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(t) = cache.get(&key) {
            return t.clone();
        }
        let t = Template::from_value(filter)
            .unwrap_or_else(|_| Template::Literal(Value::Object(Map::new())));
        if cache.len() >= COMPILED_ENTRIES {
            cache.clear();
        }
        cache.insert(key, t.clone());
        t
    })
}

/// Whether `event` (a CloudEvent envelope) matches the literal filter `with` (a mapping of
/// attribute name to literal value; anything else matches every event).
pub fn event_matches(with: &Value, event: &Value) -> bool {
    let Some(filter) = with.as_object() else {
        return true;
    };
    filter
        .iter()
        .all(|(k, want)| literal(want, event.get(k), k != "data"))
}

/// Whether `event` matches the filter as written in the definition (`EventFilter::with`),
/// runtime expressions evaluated with `vars`; `Err` only for a refused read
/// ([`ExprError::Refused`]). Everyone outside goes through [`accepts`].
fn filter_matches(with: &Template, event: &Value, vars: &dyn Vars) -> Result<bool, ExprError> {
    match with {
        Template::Literal(v) => Ok(event_matches(v, event)),
        Template::Object(fields) => {
            for (k, t) in fields {
                if !matches(t, event.get(k), k != "data", vars)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        // Lowering only builds mappings; any other shape filters nothing.
        Template::Expr(_) | Template::Array(_) => Ok(true),
    }
}

/// A literal filter value against the event's value (`None`: absent); `attr`: a context
/// attribute (compared as text), not a part of `data`.
fn literal(want: &Value, have: Option<&Value>, attr: bool) -> bool {
    let Some(have) = have else {
        return want.is_null();
    };
    match (want, have) {
        (Value::Null, _) => have.is_null(),
        (Value::String(p), Value::String(s)) => pattern::matches(p, s),
        (Value::String(p), Value::Number(_) | Value::Bool(_)) if attr => {
            attr_text(have).is_some_and(|s| pattern::matches(p, &s))
        }
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| literal(v, h.get(k), false)),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(w, h)| literal(w, Some(h), false))
        }
        _ => same(want, have, attr),
    }
}

/// A template part against the event's value at the same place.
fn matches(
    t: &Template,
    have: Option<&Value>,
    attr: bool,
    vars: &dyn Vars,
) -> Result<bool, ExprError> {
    match t {
        Template::Literal(v) => Ok(literal(v, have, attr)),
        Template::Expr(e) => expr_matches(e, have, attr, vars),
        Template::Object(fields) => {
            let Some(Value::Object(h)) = have else {
                return Ok(false);
            };
            for (k, t) in fields {
                if !matches(t, h.get(k), false, vars)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Template::Array(items) => {
            let Some(Value::Array(h)) = have else {
                return Ok(false);
            };
            if items.len() != h.len() {
                return Ok(false);
            }
            for (t, h) in items.iter().zip(h) {
                if !matches(t, Some(h), false, vars)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

fn expr_matches(
    e: &Expr,
    have: Option<&Value>,
    attr: bool,
    vars: &dyn Vars,
) -> Result<bool, ExprError> {
    let on = have.cloned().unwrap_or(Value::Null);
    match e.eval_with_limits(&on, vars, &Limits::deterministic()) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(Value::Null) => Ok(on.is_null()),
        Ok(want) => Ok(have.is_some_and(|h| same(&want, h, attr))),
        Err(e @ ExprError::Refused { .. }) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Exact equality (numbers by value: `1` equals `1.0`); for context attributes, scalars also
/// equal when their texts are.
fn same(a: &Value, b: &Value, attr: bool) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if x == y)
        }
        _ if a == b => true,
        _ if attr => matches!((attr_text(a), attr_text(b)), (Some(x), Some(y)) if x == y),
        _ => false,
    }
}

fn attr_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(v: Value) -> Template {
        Template::from_value(&v).unwrap_or_else(|(p, e)| panic!("{p}: {e}"))
    }

    fn precise(with: Value, ev: &Value) -> bool {
        filter_matches(&template(with), ev, &()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn matches_attributes_and_data_subset() {
        let ev = json!({"type": "a.b", "source": "s", "data": {"x": 1, "y": {"z": 2}}});
        assert!(event_matches(&json!({"type": "a.b"}), &ev));
        assert!(event_matches(
            &json!({"type": "a.b", "data": {"y": {"z": 2}}}),
            &ev
        ));
        assert!(!event_matches(&json!({"type": "a.c"}), &ev));
        assert!(!event_matches(&json!({"data": {"x": 2}}), &ev));
        assert!(!event_matches(&json!({"subject": "q"}), &ev));
        assert!(event_matches(&json!({}), &ev));
    }

    #[test]
    fn a_subscription_decides_as_the_interpreter_does() {
        let with = template(json!({
            "type": "t",
            "source": "${ $input.s }",
            "data": {"kind": "k", "n": "${ . > $input.min }"},
            "list": [1, "${ . }"],
        }));
        let input = json!({"s": "src", "min": 1, "unused": [1, 2, 3]});
        let vars = Args(Map::from_iter([("input".to_string(), input)]));
        let args = bind([&with], &vars).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args, vars, "the variables the expressions read");
        // The effect's form reads back to the same filter.
        let written = source(&with);
        assert_eq!(
            written,
            json!({
                "type": "t",
                "source": "${ $input.s }",
                "data": {"kind": "k", "n": "${ . > $input.min }"},
                "list": [1, "${ . }"],
            })
        );
        assert_eq!(source(&template(written.clone())), written);
        let sub = Subscription::new(std::slice::from_ref(&written), Some(&args.0));
        let events = [
            json!({"type": "t", "source": "src", "data": {"kind": "k", "n": 2}, "list": [1, 5]}),
            json!({"type": "t", "source": "src", "data": {"kind": "k", "n": 1}, "list": [1, 5]}),
            json!({"type": "t", "source": "other", "data": {"kind": "k", "n": 2}, "list": [1, 5]}),
            json!({"type": "t", "source": "src", "data": {"kind": "k", "n": 2}, "list": [1, false]}),
            json!({"type": "t", "source": "src", "data": "text", "list": [1, 5]}),
        ];
        let verdicts: Vec<bool> = events.iter().map(|e| sub.matches(e)).collect();
        assert_eq!(verdicts, [true, false, false, false, false]);
        for e in &events {
            assert_eq!(sub.matches(e), accepts(&with, e, &args), "{e}");
        }
    }

    #[test]
    fn effects_stored_without_args_hold_literal_filters() {
        // Rows written before filters carried expressions: `${ }` there is text.
        let sub = Subscription::new(&[json!({"type": "${ . }"})], None);
        assert!(sub.matches(&json!({"type": "${ . }"})));
        assert!(!sub.matches(&json!({"type": "t"})));
        let effect: Effect =
            serde_json::from_value(json!({"kind": "listen", "filters": [{"type": "a"}]}))
                .unwrap_or_else(|e| panic!("{e}"));
        let sub = Subscription::of(&effect).unwrap_or_else(|| panic!("a listen"));
        assert!(sub.matches(&json!({"type": "a"})));
        assert!(!sub.matches(&json!({"type": "b"})));
        // A filter that does not compile hands over every event rather than lose one.
        let sub = Subscription::new(&[json!({"data": "${ ]] }"})], Some(&Map::new()));
        assert!(sub.matches(&json!({"data": 1})));
    }

    #[test]
    fn binding_refuses_what_the_variables_refuse() {
        struct NoSecrets;
        impl Vars for NoSecrets {
            fn var(&self, name: &str) -> Option<Cow<'_, Value>> {
                (name == "secrets").then(|| Cow::Owned(json!({"k": "v"})))
            }
            fn check_key(&self, name: &str, key: &str) -> Result<(), String> {
                if name == "secrets" && key == "hidden" {
                    Err("no".into())
                } else {
                    Ok(())
                }
            }
        }
        let ok = template(json!({"source": "${ $secrets.k }"}));
        let args = bind([&ok], &NoSecrets).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.0.get("secrets"), Some(&json!({"k": "v"})));
        let refused = template(json!({"source": "${ $secrets.hidden }"}));
        assert!(matches!(
            bind([&ok, &refused], &NoSecrets),
            Err(ExprError::Refused { .. })
        ));
        // Literal filters read nothing.
        let args =
            bind([&template(json!({"type": "t"}))], &NoSecrets).unwrap_or_else(|e| panic!("{e}"));
        assert!(args.0.is_empty());
    }

    #[test]
    fn expression_results_are_verdicts_or_exact_values() {
        let ev = json!({"type": "a.b", "data": {"n": 5, "s": "x.y"}});
        assert!(precise(json!({"data": "${ .n > 4 }"}), &ev));
        assert!(!precise(json!({"data": "${ .n > 5 }"}), &ev));
        // A computed string is compared exactly, never as a pattern.
        assert!(precise(json!({"type": "${ \"a.b\" }"}), &ev));
        assert!(!precise(json!({"type": "${ \"a..\" }"}), &ev));
        assert!(precise(json!({"data": {"s": "${ \"x.y\" }"}}), &ev));
        // An expression that fails on the event does not match it.
        assert!(!precise(json!({"type": "${ .foo > 1 }"}), &ev));
        // Null: the attribute is absent or null.
        assert!(precise(json!({"subject": "${ null }"}), &ev));
        assert!(!precise(json!({"type": "${ null }"}), &ev));
    }
}

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
//!   with the task's arguments (`$input`, `$context`, ...). A boolean result is the verdict; any
//!   other result is the value the attribute must have, compared exactly (never as a pattern:
//!   a computed value is data, and dsl.md forbids evaluating syntax found in data). An
//!   expression that fails on an event (it indexes a string, say) does not match it: events
//!   come from outside, and an odd one must not fault the workflow. A read the runtime refuses
//!   (a secret the workflow may not see) is an error.
//!
//! Hosts route events to subscriptions with [`event_matches`] and the literal part of the
//! filters ([`host_filter`]); the interpreter then decides with [`filter_matches`], so a host
//! may hand over more events than match, never fewer.

use serde_json::{Map, Value};

use kflow_dsl::expr::{Expr, ExprError, Limits, Vars};
use kflow_dsl::pattern;
use kflow_dsl::template::Template;

/// Whether `event` (a CloudEvent envelope) matches the literal filter `with` (a mapping of
/// attribute name to literal value, as [`host_filter`] produces; anything else matches every
/// event).
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
/// ([`ExprError::Refused`]).
pub fn filter_matches(with: &Template, event: &Value, vars: &dyn Vars) -> Result<bool, ExprError> {
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

/// The part of a filter a host can check without evaluating anything: its literal attributes
/// (runtime expressions left out, so the result matches at least every event `with` does).
pub fn host_filter(with: &Template) -> Value {
    match with {
        Template::Object(_) | Template::Literal(Value::Object(_)) => {
            literal_part(with).unwrap_or_else(|| Value::Object(Map::new()))
        }
        _ => Value::Object(Map::new()),
    }
}

fn literal_part(t: &Template) -> Option<Value> {
    match t {
        Template::Literal(v) => Some(v.clone()),
        Template::Expr(_) => None,
        Template::Object(fields) => Some(Value::Object(
            fields
                .iter()
                .filter_map(|(k, t)| literal_part(t).map(|v| (k.clone(), v)))
                .collect(),
        )),
        Template::Array(items) => items
            .iter()
            .map(literal_part)
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
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
    fn host_filter_keeps_only_literals_and_never_refuses_a_match() {
        let with = template(json!({
            "type": "t",
            "source": "${ $input.s }",
            "data": {"kind": "k", "n": "${ . > 1 }"},
            "list": [1, "${ . }"],
        }));
        assert_eq!(
            host_filter(&with),
            json!({"type": "t", "data": {"kind": "k"}})
        );
        let ev = json!({"type": "t", "source": "x", "data": {"kind": "k", "n": 0}});
        assert!(event_matches(&host_filter(&with), &ev));
        assert!(!filter_matches(&with, &ev, &()).unwrap_or(true));
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

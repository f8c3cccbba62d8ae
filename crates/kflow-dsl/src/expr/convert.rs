//! Conversions between `serde_json::Value` and jaq's [`Val`].

use jaq_json::{Num, Val};
use serde_json::{Map, Number, Value};

/// Converts a JSON value for jaq.
pub(super) fn to_val(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Val::Num(Num::from_integral(i))
            } else if let Some(u) = n.as_u64() {
                Val::Num(Num::from_integral(u))
            } else {
                Val::Num(Num::Float(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(to_val).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::from(k.clone()), to_val(v)))
                .collect(),
        ),
    }
}

/// Why a jaq value could not be converted back.
#[derive(Debug)]
pub(super) enum Oversize {
    /// More than the byte budget (estimated serialized size).
    Bytes,
    /// Nested deeper than allowed.
    Depth,
}

/// Converts a jaq value back to JSON, counting its estimated serialized size against `budget`
/// and refusing nesting deeper than `max_depth` (keeps the recursive conversion, and whatever
/// the caller later does with the value, off the end of the stack).
pub(super) fn from_val(v: &Val, budget: &mut u64, max_depth: usize) -> Result<Value, Oversize> {
    let mut spend = |n: u64| {
        if *budget < n {
            Err(Oversize::Bytes)
        } else {
            *budget -= n;
            Ok(())
        }
    };
    Ok(match v {
        Val::Null => {
            spend(4)?;
            Value::Null
        }
        Val::Bool(b) => {
            spend(5)?;
            Value::Bool(*b)
        }
        Val::Num(n) => {
            spend(8)?;
            num_value(n)
        }
        Val::TStr(b) | Val::BStr(b) => {
            spend(b.len() as u64 + 2)?;
            Value::String(String::from_utf8_lossy(b).into_owned())
        }
        Val::Arr(a) => {
            spend(2 + a.len() as u64)?;
            let depth = max_depth.checked_sub(1).ok_or(Oversize::Depth)?;
            let mut out = Vec::with_capacity(a.len());
            for x in a.iter() {
                out.push(from_val(x, budget, depth)?);
            }
            Value::Array(out)
        }
        Val::Obj(o) => {
            spend(2)?;
            let depth = max_depth.checked_sub(1).ok_or(Oversize::Depth)?;
            let mut out = Map::with_capacity(o.len());
            for (k, x) in o.iter() {
                let key = match k {
                    Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                    other => other.to_string(),
                };
                if *budget < key.len() as u64 + 4 {
                    return Err(Oversize::Bytes);
                }
                *budget -= key.len() as u64 + 4;
                let x = from_val(x, budget, depth)?;
                out.insert(key, x);
            }
            Value::Object(out)
        }
    })
}

/// Largest integer below which every integer is exactly representable as `f64`.
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

fn num_value(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => float_value(*f),
        // big integers and decimal literals: through their text
        other => {
            let s = other.to_string();
            if let Ok(i) = s.parse::<i64>() {
                Value::from(i)
            } else if let Ok(u) = s.parse::<u64>() {
                Value::from(u)
            } else {
                float_value(s.parse::<f64>().unwrap_or(f64::NAN))
            }
        }
    }
}

/// Non-finite → `null`; integral values within ±2^53 → integers (as jq prints them, and so
/// that `4 / 2` compares equal to `json!(2)`); anything else stays a float.
fn float_value(f: f64) -> Value {
    if !f.is_finite() {
        Value::Null
    } else if f.fract() == 0.0 && f.abs() < EXACT {
        Value::from(f as i64)
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

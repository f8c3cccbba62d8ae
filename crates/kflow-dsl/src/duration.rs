//! Durations: ISO 8601 strings (`PT1M30S`), inline objects (`{ minutes: 1, seconds: 30 }`), or
//! runtime expressions that evaluate to either.
//!
//! Years and months have no fixed length; kflow reads `Y` as 365 days and `M` (before `T`) as
//! 30 days, and says so in the README. Everything is kept in whole milliseconds.

use serde_json::Value;

use crate::expr::{Expr, ExprError, Limits, Vars};

#[derive(Debug, Clone)]
pub enum DurationSpec {
    /// A literal duration, in milliseconds.
    Millis(u64),
    /// An expression producing an ISO 8601 string or an inline duration object.
    Expr(Expr),
}

impl DurationSpec {
    /// The duration in milliseconds, evaluated with the default (deterministic) budgets.
    pub fn millis(&self, input: &Value, vars: &dyn Vars) -> Result<u64, DurationError> {
        self.millis_with_limits(input, vars, &Limits::default())
    }

    /// [`DurationSpec::millis`] with explicit expression budgets.
    pub fn millis_with_limits(
        &self,
        input: &Value,
        vars: &dyn Vars,
        limits: &Limits,
    ) -> Result<u64, DurationError> {
        match self {
            DurationSpec::Millis(ms) => Ok(*ms),
            DurationSpec::Expr(e) => {
                let v = e
                    .eval_with_limits(input, vars, limits)
                    .map_err(DurationError::Expr)?;
                duration_from_value(&v).map_err(DurationError::Invalid)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    #[error("{0}")]
    Expr(ExprError),
    #[error("invalid duration: {0}")]
    Invalid(String),
}

/// Reads a duration from a JSON value: an ISO 8601 string or an inline object.
pub fn duration_from_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_iso8601(s),
        Value::Object(map) => {
            if map.is_empty() {
                return Err("an inline duration needs at least one of days, hours, minutes, seconds, milliseconds".into());
            }
            let mut total: u64 = 0;
            for (k, v) in map {
                let unit: u64 = match k.as_str() {
                    "days" => 86_400_000,
                    "hours" => 3_600_000,
                    "minutes" => 60_000,
                    "seconds" => 1_000,
                    "milliseconds" => 1,
                    other => {
                        return Err(format!(
                            "unknown duration property '{other}' (expected days, hours, minutes, seconds, milliseconds)"
                        ));
                    }
                };
                let n = v.as_u64().ok_or_else(|| {
                    format!("duration property '{k}' must be a non-negative integer, got {v}")
                })?;
                total = n
                    .checked_mul(unit)
                    .and_then(|x| total.checked_add(x))
                    .ok_or_else(|| "duration is too large".to_string())?;
            }
            Ok(total)
        }
        other => Err(format!(
            "expected an ISO 8601 duration string or a duration object, got {other}"
        )),
    }
}

/// Parses an ISO 8601 duration such as `P1DT2H`, `PT0.25S`, `P2W`.
pub fn parse_iso8601(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not an ISO 8601 duration (e.g. PT30S, PT1H30M, P1D)");
    let rest = s.strip_prefix('P').ok_or_else(bad)?;
    if rest.is_empty() || rest == "T" {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut in_time = false;
    let mut num = String::new();
    let mut seen_any = false;
    let mut last_rank = 0u8;
    for c in rest.chars() {
        match c {
            'T' if !in_time && num.is_empty() => {
                in_time = true;
                last_rank = 10;
            }
            '0'..='9' | '.' | ',' => num.push(if c == ',' { '.' } else { c }),
            unit => {
                if num.is_empty() {
                    return Err(bad());
                }
                let n: f64 = num.parse().map_err(|_| bad())?;
                num.clear();
                let (rank, ms) = match (in_time, unit) {
                    (false, 'Y') => (1, 365.0 * 86_400_000.0),
                    (false, 'M') => (2, 30.0 * 86_400_000.0),
                    (false, 'W') => (3, 7.0 * 86_400_000.0),
                    (false, 'D') => (4, 86_400_000.0),
                    (true, 'H') => (11, 3_600_000.0),
                    (true, 'M') => (12, 60_000.0),
                    (true, 'S') => (13, 1_000.0),
                    _ => return Err(bad()),
                };
                if rank <= last_rank {
                    return Err(bad());
                }
                last_rank = rank;
                total += n * ms;
                seen_any = true;
            }
        }
    }
    if !num.is_empty() || !seen_any || !total.is_finite() || total > 1e15 {
        return Err(bad());
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_forms() {
        assert_eq!(parse_iso8601("PT30S").unwrap(), 30_000);
        assert_eq!(parse_iso8601("PT1H30M").unwrap(), 5_400_000);
        assert_eq!(parse_iso8601("P1DT1S").unwrap(), 86_401_000);
        assert_eq!(parse_iso8601("PT0.25S").unwrap(), 250);
        assert_eq!(parse_iso8601("P2W").unwrap(), 14 * 86_400_000);
        for bad in ["", "P", "PT", "1H", "PT1X", "P1H", "PT1M1H", "PTS", "P1D2"] {
            assert!(parse_iso8601(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn inline_objects() {
        let v = serde_json::json!({"minutes": 1, "seconds": 30, "milliseconds": 5});
        assert_eq!(duration_from_value(&v).unwrap(), 90_005);
        assert!(duration_from_value(&serde_json::json!({"weeks": 1})).is_err());
        assert!(duration_from_value(&serde_json::json!({"seconds": -1})).is_err());
        assert!(duration_from_value(&serde_json::json!({})).is_err());
    }
}

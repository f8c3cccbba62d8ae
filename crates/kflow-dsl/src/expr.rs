//! Runtime expressions (jq, evaluated with jaq), compiled once per definition.
//!
//! INTERFACE FILE — the implementation is being written; keep these signatures.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

/// Supplies the values of `$name` variables (name given without the `$`).
pub trait Vars {
    fn var(&self, name: &str) -> Option<Cow<'_, Value>>;
}

impl Vars for () {
    fn var(&self, _name: &str) -> Option<Cow<'_, Value>> {
        None
    }
}

/// A compiled jq filter plus the `$variables` it references.
#[derive(Clone)]
pub struct Expr {
    inner: Arc<ExprInner>,
}

struct ExprInner {
    source: String,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.inner.source)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExprError {
    /// The filter does not compile; the message says where in the expression.
    #[error("invalid jq expression '{expr}': {message}")]
    Compile { expr: String, message: String },
    /// Evaluation failed (jq error, runaway evaluation, too large a result).
    #[error("expression '{expr}' failed: {message}")]
    Eval { expr: String, message: String },
}

impl Expr {
    /// Compiles a jq filter (the text inside `${ }`, or a bare expression).
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        Ok(Expr { inner: Arc::new(ExprInner { source: source.to_string() }) })
    }

    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Runs the filter on `input`; the first output is the result (`null` when there is none).
    pub fn eval(&self, _input: &Value, _vars: &dyn Vars) -> Result<Value, ExprError> {
        todo!()
    }

    /// Like [`Expr::eval`] but the result must be a boolean (`when`, `if`, `while`, `until`).
    pub fn eval_bool(&self, input: &Value, vars: &dyn Vars) -> Result<bool, ExprError> {
        match self.eval(input, vars)? {
            Value::Bool(b) => Ok(b),
            Value::Null => Ok(false),
            other => Err(ExprError::Eval {
                expr: self.inner.source.clone(),
                message: format!("expected a boolean, got {other}"),
            }),
        }
    }
}

/// `Some(inner)` when `s` is a `${ ... }` runtime expression, with the braces stripped.
pub fn strip_dollar_braces(s: &str) -> Option<&str> {
    let t = s.trim();
    t.strip_prefix("${").and_then(|r| r.strip_suffix('}')).map(str::trim)
}

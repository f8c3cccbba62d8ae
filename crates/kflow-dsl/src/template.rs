//! Value templates: a JSON value whose strings may be `${ jq }` runtime expressions.
//!
//! Lowering turns every literal-or-expression field of the DSL into a [`Template`] once; the
//! interpreter evaluates it against the task input and the scope's variables. A template with no
//! expression inside is stored as one literal, so evaluating it is a clone.

use serde_json::{Map, Value};

use crate::expr::{Expr, ExprError, Limits, Vars};

#[derive(Debug, Clone)]
pub enum Template {
    Literal(Value),
    Expr(Expr),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

impl Template {
    /// Builds a template from a JSON value, compiling `${ }` strings; `Err` carries the JSON
    /// pointer (relative to `value`) of the first bad expression and its error.
    pub fn from_value(value: &Value) -> Result<Template, (String, ExprError)> {
        Self::build(value, &mut String::new())
    }

    fn build(value: &Value, path: &mut String) -> Result<Template, (String, ExprError)> {
        match value {
            Value::String(s) => match crate::expr::strip_dollar_braces(s) {
                Some(src) => Expr::compile(src)
                    .map(Template::Expr)
                    .map_err(|e| (path.clone(), e)),
                None => Ok(Template::Literal(value.clone())),
            },
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("/{i}"));
                    out.push(Self::build(item, path)?);
                    path.truncate(len);
                }
                Ok(Self::collapse_array(out))
            }
            Value::Object(map) => {
                let mut out = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    out.push((k.clone(), Self::build(v, path)?));
                    path.truncate(len);
                }
                Ok(Self::collapse_object(out))
            }
            _ => Ok(Template::Literal(value.clone())),
        }
    }

    fn collapse_array(items: Vec<Template>) -> Template {
        if items.iter().all(|t| matches!(t, Template::Literal(_))) {
            Template::Literal(Value::Array(
                items
                    .into_iter()
                    .map(|t| match t {
                        Template::Literal(v) => v,
                        _ => unreachable!(),
                    })
                    .collect(),
            ))
        } else {
            Template::Array(items)
        }
    }

    fn collapse_object(fields: Vec<(String, Template)>) -> Template {
        if fields
            .iter()
            .all(|(_, t)| matches!(t, Template::Literal(_)))
        {
            let mut map = Map::with_capacity(fields.len());
            for (k, t) in fields {
                if let Template::Literal(v) = t {
                    map.insert(k, v);
                }
            }
            Template::Literal(Value::Object(map))
        } else {
            Template::Object(fields)
        }
    }

    /// A template that is one runtime expression.
    pub fn expr(expr: Expr) -> Template {
        Template::Expr(expr)
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, Template::Literal(_))
    }

    /// Evaluates the template against `input` with the given variables and the default
    /// (deterministic) budgets.
    pub fn eval(&self, input: &Value, vars: &dyn Vars) -> Result<Value, ExprError> {
        self.eval_with_limits(input, vars, &Limits::default())
    }

    /// [`Template::eval`] with explicit budgets (for each expression in the template).
    pub fn eval_with_limits(
        &self,
        input: &Value,
        vars: &dyn Vars,
        limits: &Limits,
    ) -> Result<Value, ExprError> {
        match self {
            Template::Literal(v) => Ok(v.clone()),
            Template::Expr(e) => e.eval_with_limits(input, vars, limits),
            Template::Array(items) => items
                .iter()
                .map(|t| t.eval_with_limits(input, vars, limits))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Template::Object(fields) => {
                let mut map = Map::with_capacity(fields.len());
                for (k, t) in fields {
                    map.insert(k.clone(), t.eval_with_limits(input, vars, limits)?);
                }
                Ok(Value::Object(map))
            }
        }
    }
}

//! The workflow error: the spec's Problem-Details error object.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::errors;

/// An error raised while running a workflow (`type`, `status`, `title`, `detail`, `instance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WfError {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub instance: Option<String>,
}

impl WfError {
    /// A standard error (`kind` is one of [`crate::errors`]' constants).
    pub fn standard(kind: &str, status: i64, title: &str, detail: impl Into<String>) -> WfError {
        WfError {
            type_: errors::type_uri(kind),
            status,
            title: Some(title.to_string()),
            detail: Some(detail.into()),
            instance: None,
        }
    }

    pub fn expression(detail: impl Into<String>) -> WfError {
        Self::standard(errors::EXPRESSION, 400, "Expression Error", detail)
    }

    pub fn validation(detail: impl Into<String>) -> WfError {
        Self::standard(errors::VALIDATION, 400, "Validation Error", detail)
    }

    pub fn runtime(detail: impl Into<String>) -> WfError {
        Self::standard(errors::RUNTIME, 500, "Runtime Error", detail)
    }

    pub fn timeout(detail: impl Into<String>) -> WfError {
        Self::standard(errors::TIMEOUT, 408, "Timeout", detail)
    }

    pub fn communication(status: i64, detail: impl Into<String>) -> WfError {
        Self::standard(errors::COMMUNICATION, status, "Communication Error", detail)
    }

    pub fn configuration(detail: impl Into<String>) -> WfError {
        Self::standard(errors::CONFIGURATION, 400, "Configuration Error", detail)
    }

    /// Sets `instance` unless it is already set (the innermost task that raised wins).
    pub fn at(mut self, reference: &str) -> WfError {
        if self.instance.is_none() {
            self.instance = Some(reference.to_string());
        }
        self
    }

    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.type_.clone()));
        m.insert("status".into(), Value::from(self.status));
        if let Some(t) = &self.title {
            m.insert("title".into(), Value::String(t.clone()));
        }
        if let Some(d) = &self.detail {
            m.insert("detail".into(), Value::String(d.clone()));
        }
        if let Some(i) = &self.instance {
            m.insert("instance".into(), Value::String(i.clone()));
        }
        Value::Object(m)
    }

    /// Reads an error object produced by a `raise` task's templates.
    pub fn from_value(v: &Value) -> Result<WfError, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("an error must be an object, got {v}"))?;
        let type_ = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or("an error needs a string 'type'")?
            .to_string();
        let status = match obj.get("status") {
            Some(Value::Number(n)) => n.as_i64().ok_or("an error 'status' must be an integer")?,
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| format!("an error 'status' must be an integer, got '{s}'"))?,
            _ => return Err("an error needs an integer 'status'".into()),
        };
        let text = |k: &str| {
            obj.get(k).and_then(|v| match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            })
        };
        Ok(WfError {
            type_,
            status,
            title: text("title"),
            detail: text("detail"),
            instance: text("instance"),
        })
    }
}

impl std::fmt::Display for WfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.title.as_deref().unwrap_or(&self.type_),
            self.status
        )?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if let Some(i) = &self.instance {
            write!(f, " at {i}")?;
        }
        Ok(())
    }
}

//! Lifecycle notices: what happened, for traces, histories and live views.

use serde_json::{Map, Value};

use crate::time::iso8601;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    WorkflowStarted,
    WorkflowCompleted,
    WorkflowFaulted,
    WorkflowCancelled,
    TaskStarted,
    TaskCompleted,
    TaskFaulted,
    TaskSkipped,
    TaskRetried,
    TaskCancelled,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::WorkflowStarted => "workflow.started",
            NoticeKind::WorkflowCompleted => "workflow.completed",
            NoticeKind::WorkflowFaulted => "workflow.faulted",
            NoticeKind::WorkflowCancelled => "workflow.cancelled",
            NoticeKind::TaskStarted => "task.started",
            NoticeKind::TaskCompleted => "task.completed",
            NoticeKind::TaskFaulted => "task.faulted",
            NoticeKind::TaskSkipped => "task.skipped",
            NoticeKind::TaskRetried => "task.retried",
            NoticeKind::TaskCancelled => "task.cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// Task name and reference (JSON pointer); `None` for workflow notices.
    pub task: Option<(String, String)>,
    pub time_ms: i64,
    /// The error of a faulted notice, the attempt of a retried one.
    pub detail: Option<Value>,
}

impl Notice {
    /// The notice as one JSON trace line: `{"type","task","reference","time",...}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.kind.as_str().into()));
        if let Some((name, reference)) = &self.task {
            m.insert("task".into(), Value::String(name.clone()));
            m.insert("reference".into(), Value::String(reference.clone()));
        }
        m.insert("time".into(), Value::String(iso8601(self.time_ms)));
        if let Some(d) = &self.detail {
            let key = match self.kind {
                NoticeKind::TaskFaulted | NoticeKind::WorkflowFaulted => "error",
                NoticeKind::TaskRetried => "attempt",
                NoticeKind::TaskStarted => "input",
                NoticeKind::TaskCompleted => "output",
                _ => "detail",
            };
            m.insert(key.into(), d.clone());
        }
        Value::Object(m)
    }
}

//! The journal: what an instance's history rows mean, as one type.
//!
//! Every history row the engine writes is a [`Record`] encoded here, and every reader (replay
//! in the driver, admission, explain, the history API, live streams) decodes it here. A row
//! that does not decode is a [`JournalError`] naming the instance and the row: never skipped,
//! never read as a default.
//!
//! Format versions: the `started` record carries `format` ([`FORMAT`]). Rows written before
//! the format was recorded (kflow 0.1, schema v3) have none and are format 1; they decode the
//! same way (a fixture of them is replayed by `tests/journal.rs`). A history whose format is
//! newer than this build's is refused with an error that says so, so that a downgrade cannot
//! misread it.

use serde_json::{Map, Value, json};

use kflow_core::Delivery;
use kflow_store::HistoryEvent;

/// The journal format this build writes (and the newest it reads).
pub const FORMAT: u64 = 2;

/// One history record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The instance started (its first step follows): the raw input and its priority.
    Started {
        input: Value,
        priority: i64,
        format: u64,
        /// The W3C `traceparent` the start request came with: the instance's trace continues
        /// the caller's.
        trace: Option<String>,
    },
    /// The instance waits for a slot under a concurrency limit (no `Started` yet).
    Queued {
        reason: String,
        priority: i64,
    },
    /// An effect's result or event, handed to the core.
    Delivery {
        effect: u64,
        delivery: Delivery,
    },
    /// A lifecycle notice (`task.started`, ...) as its JSON trace line; see [`NoticeView`].
    Notice(Map<String, Value>),
    Cancelled,
    Suspended,
    Resumed,
    /// The engine faulted the instance from outside its core (a limit it enforces, a panic):
    /// the error as a workflow error object.
    Faulted {
        error: Value,
    },
}

/// A history row that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("instance {instance}: history record #{seq} ({kind}) cannot be read: {reason}")]
pub struct JournalError {
    pub instance: String,
    pub seq: i64,
    pub kind: String,
    pub reason: String,
}

impl Record {
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Started { .. } => "started",
            Record::Queued { .. } => "queued",
            Record::Delivery { .. } => "delivery",
            Record::Notice(_) => "notice",
            Record::Cancelled => "cancelled",
            Record::Suspended => "suspended",
            Record::Resumed => "resumed",
            Record::Faulted { .. } => "faulted",
        }
    }

    /// A new `started` record in this build's format.
    pub fn started(input: Value, priority: i64) -> Record {
        Record::Started {
            input,
            priority,
            format: FORMAT,
            trace: None,
        }
    }

    /// The history row for this record.
    pub fn encode(&self, seq: i64, time_ms: i64) -> HistoryEvent {
        let data = match self {
            Record::Started {
                input,
                priority,
                format,
                trace,
            } => {
                let mut v = json!({ "input": input, "priority": priority, "format": format });
                if let Some(t) = trace {
                    v["traceparent"] = Value::String(t.clone());
                }
                v
            }
            Record::Queued { reason, priority } => {
                json!({ "reason": reason, "priority": priority })
            }
            Record::Delivery { effect, delivery } => {
                json!({ "effect": effect, "delivery": delivery })
            }
            Record::Notice(m) => Value::Object(m.clone()),
            Record::Cancelled | Record::Suspended | Record::Resumed => Value::Null,
            Record::Faulted { error } => json!({ "error": error }),
        };
        HistoryEvent {
            seq,
            time_ms,
            kind: self.kind().to_string(),
            data,
        }
    }

    /// Reads one history row of instance `instance`.
    pub fn decode(instance: &str, ev: &HistoryEvent) -> Result<Record, JournalError> {
        let err = |reason: String| JournalError {
            instance: instance.to_string(),
            seq: ev.seq,
            kind: ev.kind.clone(),
            reason,
        };
        let d = &ev.data;
        let field = |k: &str| -> Result<&Value, JournalError> {
            d.get(k).ok_or_else(|| err(format!("`{k}` is missing")))
        };
        let int = |k: &str, default: Option<i64>| -> Result<i64, JournalError> {
            match d.get(k) {
                None | Some(Value::Null) => default.ok_or_else(|| err(format!("`{k}` is missing"))),
                Some(v) => v
                    .as_i64()
                    .ok_or_else(|| err(format!("`{k}` is not an integer: {v}"))),
            }
        };
        Ok(match ev.kind.as_str() {
            "started" => {
                let format = match d.get("format") {
                    None => 1,
                    Some(v) => v
                        .as_u64()
                        .ok_or_else(|| err(format!("`format` is not a version number: {v}")))?,
                };
                if format > FORMAT {
                    return Err(err(format!(
                        "written in journal format {format}, newer than this kflow reads \
                         (up to {FORMAT}); run a newer kflow"
                    )));
                }
                Record::Started {
                    input: field("input")?.clone(),
                    priority: int("priority", Some(0))?,
                    format,
                    trace: d
                        .get("traceparent")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                }
            }
            "queued" => Record::Queued {
                reason: d
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("concurrency limit")
                    .to_string(),
                priority: int("priority", Some(0))?,
            },
            "delivery" => {
                let effect = field("effect")?;
                let effect = effect
                    .as_u64()
                    .ok_or_else(|| err(format!("`effect` is not an effect id: {effect}")))?;
                let delivery = serde_json::from_value::<Delivery>(field("delivery")?.clone())
                    .map_err(|e| err(format!("`delivery` is not a result or an event: {e}")))?;
                Record::Delivery { effect, delivery }
            }
            "notice" => match d {
                Value::Object(m) if m.get("type").is_some_and(Value::is_string) => {
                    Record::Notice(m.clone())
                }
                _ => return Err(err("a notice must be an object with a string `type`".into())),
            },
            "cancelled" => Record::Cancelled,
            "suspended" => Record::Suspended,
            "resumed" => Record::Resumed,
            "faulted" => Record::Faulted {
                error: field("error")?.clone(),
            },
            other => return Err(err(format!("unknown record kind `{other}`"))),
        })
    }

    /// The notice, when this is one.
    pub fn notice(&self) -> Option<NoticeView<'_>> {
        match self {
            Record::Notice(m) => Some(NoticeView(m)),
            _ => None,
        }
    }

    /// Whether the instance has ended with this record (`workflow.completed`,
    /// `workflow.faulted`, `workflow.cancelled`, a cancellation or an engine fault).
    pub fn ends(&self) -> bool {
        match self {
            Record::Cancelled | Record::Faulted { .. } => true,
            Record::Notice(m) => matches!(
                NoticeView(m).kind(),
                "workflow.completed" | "workflow.faulted" | "workflow.cancelled"
            ),
            _ => false,
        }
    }
}

/// Read access to a notice record.
#[derive(Debug, Clone, Copy)]
pub struct NoticeView<'a>(&'a Map<String, Value>);

impl<'a> NoticeView<'a> {
    /// `task.started`, `workflow.completed`, ...
    pub fn kind(&self) -> &'a str {
        self.0.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// The task's reference (JSON pointer), for task notices.
    pub fn reference(&self) -> Option<&'a str> {
        self.0.get("reference").and_then(Value::as_str)
    }
}

/// Decodes a whole history; the first unreadable row is the error.
pub fn decode_all(instance: &str, history: &[HistoryEvent]) -> Result<Vec<Record>, JournalError> {
    history
        .iter()
        .map(|ev| Record::decode(instance, ev))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kflow_core::WfError;

    fn roundtrip(r: Record) {
        let ev = r.encode(7, 1_000);
        assert_eq!(Record::decode("i", &ev).expect("decodes"), r, "{ev:?}");
    }

    #[test]
    fn every_record_round_trips() {
        roundtrip(Record::started(json!({"a": 1}), 5));
        roundtrip(Record::Queued {
            reason: "concurrency limit".into(),
            priority: -2,
        });
        roundtrip(Record::Delivery {
            effect: u64::MAX,
            delivery: Delivery::Result(Ok(json!([1, 2]))),
        });
        roundtrip(Record::Delivery {
            effect: 3,
            delivery: Delivery::Result(Err(WfError::runtime("boom"))),
        });
        roundtrip(Record::Delivery {
            effect: 4,
            delivery: Delivery::Event(json!({"type": "t"})),
        });
        let mut m = Map::new();
        m.insert("type".into(), json!("task.started"));
        m.insert("reference".into(), json!("/do/0/a"));
        roundtrip(Record::Notice(m));
        roundtrip(Record::Cancelled);
        roundtrip(Record::Suspended);
        roundtrip(Record::Resumed);
        roundtrip(Record::Faulted {
            error: json!({"type": "x", "status": 500}),
        });
    }

    fn decode(kind: &str, data: Value) -> Result<Record, JournalError> {
        Record::decode(
            "inst-1",
            &HistoryEvent {
                seq: 9,
                time_ms: 0,
                kind: kind.into(),
                data,
            },
        )
    }

    #[test]
    fn unreadable_rows_are_errors_naming_the_instance_and_row() {
        let cases = [
            (
                "delivery",
                json!({"delivery": {"result": null}}),
                "`effect` is missing",
            ),
            (
                "delivery",
                json!({"effect": "x", "delivery": {}}),
                "not an effect id",
            ),
            (
                "delivery",
                json!({"effect": 1, "delivery": 42}),
                "not a result or an event",
            ),
            ("started", json!({"priority": 1}), "`input` is missing"),
            (
                "started",
                json!({"input": 1, "priority": "high"}),
                "not an integer",
            ),
            (
                "started",
                json!({"input": 1, "format": 99}),
                "newer than this kflow reads",
            ),
            ("notice", json!("task.started"), "string `type`"),
            ("faulted", json!({}), "`error` is missing"),
            ("teleported", json!({}), "unknown record kind `teleported`"),
        ];
        for (kind, data, want) in cases {
            let e = decode(kind, data.clone()).expect_err(kind);
            let msg = e.to_string();
            assert!(msg.contains("instance inst-1"), "{msg}");
            assert!(msg.contains("record #9"), "{msg}");
            assert!(msg.contains(want), "{kind} {data}: {msg}");
        }
    }

    #[test]
    fn format_1_rows_read_as_before() {
        // A `started` row of kflow 0.1: no format, priority null.
        let r = decode("started", json!({"input": {"x": 1}, "priority": null})).expect("v1");
        assert_eq!(
            r,
            Record::Started {
                input: json!({"x": 1}),
                priority: 0,
                format: 1,
                trace: None,
            }
        );
    }

    #[test]
    fn a_traceparent_rides_in_the_started_record() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = Record::Started {
            input: json!({}),
            priority: 2,
            format: FORMAT,
            trace: Some(tp.into()),
        };
        let ev = r.encode(1, 5);
        assert_eq!(ev.data["traceparent"], tp);
        assert_eq!(Record::decode("i", &ev).expect("reads back"), r);
        // Without one, the row is as before.
        assert!(
            Record::started(json!({}), 0)
                .encode(1, 5)
                .data
                .get("traceparent")
                .is_none()
        );
    }
}

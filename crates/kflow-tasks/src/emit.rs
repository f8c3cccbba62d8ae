//! What both hosts (the one-shot `kflow run` and the server) fill in the same way: the
//! CloudEvent attributes an `emit` leaves out, and the `$runtime` descriptor.

use serde_json::{Value, json};

/// `$runtime`: this engine's name and version, the same for every host.
pub fn runtime_descriptor() -> Value {
    json!({ "name": "kflow", "version": env!("CARGO_PKG_VERSION"), "metadata": {} })
}

/// Fills `specversion`, `id`, `time` and `source` when the event does not set them.
pub fn complete_event(mut event: Value, instance_id: &str, now_ms: i64) -> Value {
    if let Value::Object(m) = &mut event {
        m.entry("specversion").or_insert_with(|| json!("1.0"));
        m.entry("id")
            .or_insert_with(|| json!(uuid::Uuid::now_v7().to_string()));
        m.entry("time")
            .or_insert_with(|| json!(kflow_effects::time::iso8601(now_ms)));
        m.entry("source")
            .or_insert_with(|| json!(format!("urn:kflow:instance:{instance_id}")));
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_only_what_is_missing() {
        let e = complete_event(json!({"type": "t", "source": "s"}), "i1", 0);
        assert_eq!(
            (
                e["type"].as_str(),
                e["source"].as_str(),
                e["specversion"].as_str()
            ),
            (Some("t"), Some("s"), Some("1.0"))
        );
        assert_eq!(e["time"], "1970-01-01T00:00:00.000Z");
        assert!(e["id"].as_str().is_some_and(|id| id.len() == 36));
        let e = complete_event(json!({"type": "t"}), "i1", 0);
        assert_eq!(e["source"], "urn:kflow:instance:i1");
    }
}

//! Event matching for `listen` and `schedule.on`: pure functions the host uses too.

use serde_json::Value;

/// Whether `event` (a CloudEvent envelope) has every attribute of `with`. Attribute values
/// compare by equality, except `data`, whose object fields must be a subset of the event's.
pub fn event_matches(with: &Value, event: &Value) -> bool {
    let Some(filter) = with.as_object() else {
        return true;
    };
    filter.iter().all(|(k, want)| match event.get(k) {
        None => want.is_null(),
        Some(have) if k == "data" => subset(want, have),
        Some(have) => have == want || attr_text(have) == attr_text(want),
    })
}

fn attr_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| subset(v, hv))),
        _ => want == have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}

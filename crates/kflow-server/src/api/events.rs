//! `POST /api/v1/events`: a CloudEvent (HTTP binding 1.0), offered to every waiting `listen`.
//!
//! Structured mode: the body is the whole event as a JSON object (`application/cloudevents+json`,
//! or `application/json` holding an object with `specversion`, `id`, `source`, `type`).
//! Binary mode (any `ce-` header): the attributes are the `ce-*` headers (percent-decoded), the
//! `Content-Type` is `datacontenttype` and the body is `data` (parsed when it is JSON, text
//! when UTF-8, else `data_base64`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use serde_json::{Map, Value};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{Body, is_json_media_type, media_type};
use super::types::EventAccepted;
use crate::auth::Caller;

const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];

/// Publishes a CloudEvent to the waiting `listen` tasks.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    request_body(
        description = "A CloudEvent: structured mode (the event as JSON) or binary mode (`ce-*` headers, the body is the data)",
        content(("application/cloudevents+json"), ("application/json"))
    ),
    responses(
        (status = 202, description = "Accepted: the deliveries are committed", body = EventAccepted),
        (status = 400, description = "Missing or bad attributes, or malformed JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Neither structured nor binary mode", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
pub async fn publish_event(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<EventAccepted>)> {
    // An event reaches every namespace's listeners and schedules.
    caller.must_be_global()?;
    let event = if headers.keys().any(|k| k.as_str().starts_with("ce-")) {
        binary(&headers, &body)?
    } else {
        structured(&headers, &body)?
    };
    validate(&event)?;
    let matched = st.engine.publish_event(Value::Object(event)).await?;
    Ok((StatusCode::ACCEPTED, Json(EventAccepted { matched })))
}

fn structured(headers: &HeaderMap, body: &[u8]) -> ApiResult<Map<String, Value>> {
    match media_type(headers).as_deref() {
        Some("application/cloudevents-batch+json") => {
            return Err(ApiError::unsupported_media_type(
                "batched CloudEvents are not supported: send one event per request",
            ));
        }
        Some(m) if !is_json_media_type(m) => {
            return Err(ApiError::unsupported_media_type(format!(
                "{m} is not a CloudEvent: send application/cloudevents+json (structured mode) or ce-* headers (binary mode)"
            )));
        }
        _ => {}
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty: a CloudEvent is expected",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::invalid(format!(
            "a structured CloudEvent must be a JSON object, not {}",
            kind_of(&other)
        ))),
    }
}

fn binary(headers: &HeaderMap, body: &[u8]) -> ApiResult<Map<String, Value>> {
    let mut event = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attr.is_empty()
            || !attr
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(ApiError::invalid(format!(
                "invalid CloudEvent attribute header {name}: attribute names are lower-case letters and digits"
            )));
        }
        if attr == "data" || attr == "data_base64" || attr == "datacontenttype" {
            return Err(ApiError::invalid(format!(
                "{name} is not allowed in binary mode: the body is the data, Content-Type its type"
            )));
        }
        let text = String::from_utf8(percent_decode(value.as_bytes())).map_err(|_| {
            ApiError::invalid(format!("header {name} is not UTF-8 once percent-decoded"))
        })?;
        event.insert(attr.to_string(), Value::String(text));
    }
    let media = media_type(headers);
    if let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE) {
        event.insert(
            "datacontenttype".into(),
            Value::String(String::from_utf8_lossy(ct.as_bytes()).into_owned()),
        );
    }
    if !body.is_empty() {
        if media.as_deref().is_some_and(is_json_media_type) {
            let data: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::invalid(format!("the event data is not valid JSON: {e}")))?;
            event.insert("data".into(), data);
        } else {
            match std::str::from_utf8(body) {
                Ok(text) => {
                    event.insert("data".into(), Value::String(text.to_string()));
                }
                Err(_) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
                    event.insert("data_base64".into(), Value::String(b64));
                }
            }
        }
    }
    Ok(event)
}

/// The required attributes are there, strings, not empty; `specversion` is 1.0.
fn validate(event: &Map<String, Value>) -> ApiResult<()> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|a| match event.get(*a) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        })
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::invalid(format!(
            "the CloudEvent is missing required attribute{}: {}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        ))
        .with_details(missing.iter().map(|a| format!("{a}: required")).collect()));
    }
    let not_strings: Vec<String> = REQUIRED
        .iter()
        .filter(|a| !event.get(**a).is_some_and(Value::is_string))
        .map(|a| format!("{a}: must be a string"))
        .collect();
    if !not_strings.is_empty() {
        return Err(
            ApiError::invalid("CloudEvent attributes of the wrong type").with_details(not_strings)
        );
    }
    if let Some(v) = event
        .get("specversion")
        .and_then(Value::as_str)
        .filter(|v| *v != "1.0")
    {
        return Err(ApiError::invalid(format!(
            "unsupported CloudEvents specversion {v}: only 1.0 is supported"
        )));
    }
    if event.contains_key("data") && event.contains_key("data_base64") {
        return Err(ApiError::invalid(
            "a CloudEvent has data or data_base64, not both",
        ));
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `%XX` sequences to bytes; anything else (including a malformed `%`) as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b"), b"a b");
        assert_eq!(percent_decode(b"%C3%A9"), "é".as_bytes());
        assert_eq!(percent_decode(b"100%"), b"100%");
        assert_eq!(percent_decode(b"%4"), b"%4");
        assert_eq!(percent_decode(b"%zz"), b"%zz");
        assert_eq!(percent_decode(b"%41"), b"A");
    }
}

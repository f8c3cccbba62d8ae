//! Start a run from a form generated from the workflow's input schema.
//!
//! Objects become fieldsets, strings text fields (enums a choice), numbers and integers number
//! fields, booleans checkboxes; arrays and anything the form cannot express take JSON. Every
//! field names its JSON pointer (`data-path`); the page's script builds the input from them,
//! posts it to the API, and shows each error of the answer at the field it names.

use kflow_api::definitions::DefinitionDetail;
use maud::{Markup, html};
use serde_json::Value;

use super::workflows::workflow_url;
use crate::api::{Api, UiError, enc};
use crate::render::Viewer;

/// How deep the form follows nested objects before it takes JSON.
const MAX_DEPTH: usize = 6;

pub async fn form(
    api: &Api,
    v: &Viewer,
    ns: &str,
    name: &str,
    version: Option<&str>,
) -> Result<(String, Markup), UiError> {
    let version = version.filter(|s| !s.is_empty()).unwrap_or("latest");
    let def: DefinitionDetail = api
        .get(&format!(
            "/api/v1/definitions/{}/{}/versions/{}",
            enc(ns),
            enc(name),
            enc(version)
        ))
        .await?;
    if !v.may_operate() {
        return Err(UiError::Forbidden(format!(
            "token {:?} has role {}: starting an instance needs operator or above",
            v.me.name, v.me.role
        )));
    }
    let body = html! {
        h1 { "Start " a href=(workflow_url(ns, name)) { (ns) "/" (name) } " @" (def.summary.version) }
        form #start-form novalidate data-namespace=(ns) data-name=(name) data-version=(def.summary.version) {
            @match &def.input_schema {
                Some(schema) => {
                    p.meta { "The fields follow the workflow's input schema." }
                    (field("", "input", schema, false, 0))
                }
                None => {
                    p.meta { "This workflow declares no input schema: give the input as JSON." }
                    (json_field("", "input", &Value::Object(Default::default())))
                }
            }
            p.error-line #form-error hidden {}
            button type="submit" { "Start" }
        }
    };
    Ok((format!("Start {ns}/{name}"), body))
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => Vec::new(),
    }
}

fn label_of<'a>(schema: &'a Value, key: &'a str) -> &'a str {
    schema.get("title").and_then(|t| t.as_str()).unwrap_or(key)
}

fn help(schema: &Value) -> Markup {
    html! { @if let Some(d) = schema.get("description").and_then(|d| d.as_str()) { small.help { (d) } } }
}

fn error_slot(path: &str) -> Markup {
    html! { span.field-error data-for=(path) {} }
}

/// One field (and its children) for the value at `path`.
fn field(path: &str, key: &str, schema: &Value, required: bool, depth: usize) -> Markup {
    let t = types(schema);
    let default = schema.get("default");
    let req = html! { @if required { span.req title="required" { "*" } } };
    if let Some(options) = schema.get("enum").and_then(|e| e.as_array()) {
        return html! {
            label.field {
                span.lbl { (label_of(schema, key)) (req) }
                select data-path=(path) data-kind="enum" {
                    @if !required { option value="" { "—" } }
                    @for o in options {
                        @let text = o.as_str().map_or_else(|| o.to_string(), str::to_string);
                        option value=(o.to_string()) selected[default == Some(o)] { (text) }
                    }
                }
                (help(schema)) (error_slot(path))
            }
        };
    }
    if t.first() == Some(&"object") && depth < MAX_DEPTH {
        let required_keys: Vec<&str> = schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            return html! {
                fieldset data-path=(path) data-kind="object" {
                    legend { (label_of(schema, key)) (req) }
                    (help(schema))
                    @for (k, s) in props {
                        (field(&format!("{path}/{}", pointer_escape(k)), k, s, required_keys.contains(&k.as_str()), depth + 1))
                    }
                    (error_slot(if path.is_empty() { "/" } else { path }))
                }
            };
        }
    }
    let default_text = |d: Option<&Value>| match d {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    match t.first().copied() {
        Some("string") => {
            let input_type = match schema.get("format").and_then(|f| f.as_str()) {
                Some("date") => "date",
                Some("email") => "email",
                Some("uri") => "url",
                _ => "text",
            };
            html! {
                label.field {
                    span.lbl { (label_of(schema, key)) (req) }
                    input type=(input_type) data-path=(path) data-kind="string" value=(default_text(default));
                    (help(schema)) (error_slot(path))
                }
            }
        }
        Some(kind @ ("integer" | "number")) => html! {
            label.field {
                span.lbl { (label_of(schema, key)) (req) }
                input type="number" step=(if kind == "integer" { "1" } else { "any" }) data-path=(path) data-kind=(kind) value=(default_text(default));
                (help(schema)) (error_slot(path))
            }
        },
        Some("boolean") => html! {
            label.field.check {
                input type="checkbox" data-path=(path) data-kind="boolean" checked[default == Some(&Value::Bool(true))];
                span.lbl { (label_of(schema, key)) (req) }
                (help(schema)) (error_slot(path))
            }
        },
        _ => json_field(path, label_of(schema, key), default.unwrap_or(&Value::Null)),
    }
}

fn json_field(path: &str, label: &str, default: &Value) -> Markup {
    let text = if default.is_null() {
        String::new()
    } else {
        serde_json::to_string_pretty(default).unwrap_or_default()
    };
    html! {
        label.field {
            span.lbl { (label) " (JSON)" }
            textarea data-path=(path) data-kind="json" rows="4" spellcheck="false" { (text) }
            (error_slot(if path.is_empty() { "/" } else { path }))
        }
    }
}

fn pointer_escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_schema_becomes_fields_with_pointers() {
        let schema = json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "description": "who to greet"},
                "times": {"type": "integer", "default": 2},
                "mood": {"enum": ["happy", "grumpy"], "default": "happy"},
                "loud": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {"type": "object", "properties": {"city/town": {"type": "string"}}}
            }
        });
        let html = field("", "input", &schema, false, 0).into_string();
        for want in [
            r#"data-path="/name" data-kind="string""#,
            r#"data-path="/times" data-kind="integer" value="2""#,
            r#"data-path="/mood" data-kind="enum""#,
            r#"value="&quot;happy&quot;" selected"#,
            r#"data-path="/loud" data-kind="boolean""#,
            r#"data-path="/tags" data-kind="json""#,
            r#"data-path="/where/city~1town""#,
            r#"<span class="req" title="required">*</span>"#,
        ] {
            assert!(html.contains(want), "missing {want} in {html}");
        }
    }

    #[test]
    fn text_from_the_schema_is_escaped() {
        let schema = json!({"type": "object", "properties": {"<b>x</b>": {"type": "string", "description": "<script>alert(1)</script>"}}});
        let html = field("", "input", &schema, false, 0).into_string();
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
    }
}

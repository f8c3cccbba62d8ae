//! The editor: a definition with line numbers, the server's diagnostics at their lines while
//! typing, the graph redrawn beside it, and saving as a new version.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kflow_api::definitions::{DefinitionDetail, ValidateResponse};
use maud::{Markup, html};

use crate::Ui;
use crate::api::{Api, UiError, enc};
use crate::graph::{self, Marks};
use crate::render::{Viewer, harden, raw};

/// What a new document starts from.
const TEMPLATE: &str = "document:
  dsl: '1.0.0'
  namespace: default
  name: my-workflow
  version: '0.1.0'
input:
  schema:
    format: json
    document:
      type: object
      required: [name]
      properties:
        name:
          type: string
do:
  - greet:
      set:
        greeting: '${ \"Hello, \" + .name + \"!\" }'
";

/// The largest document the editor checks (the API's own body limit applies too).
const MAX_DOC: usize = 1024 * 1024;

pub async fn page(
    api: &Api,
    v: &Viewer,
    q: &HashMap<String, String>,
) -> Result<(String, Markup), UiError> {
    let get = |k: &str| q.get(k).map(String::as_str).filter(|s| !s.is_empty());
    let source = match (get("namespace"), get("name")) {
        (Some(ns), Some(name)) => {
            let version = get("version").unwrap_or("latest");
            let d: DefinitionDetail = api
                .get(&format!(
                    "/api/v1/definitions/{}/{}/versions/{}",
                    enc(ns),
                    enc(name),
                    enc(version)
                ))
                .await?;
            d.source
        }
        _ => TEMPLATE.to_string(),
    };
    let lines = source.lines().count().max(1);
    let body = html! {
        div.titlebar {
            h1 { "Editor" }
            div.actions {
                @if v.may_edit() {
                    button #save type="button" { "Save as a new version" }
                } @else {
                    span.note { "Your role (" (v.me.role) ") may check documents, not register them." }
                }
            }
        }
        p.meta { "Checked by the server as you type: the same diagnostics as " code { "kflow validate" } ". A saved version never changes: raise " code { "document.version" } " for each change." }
        p #save-result.error-line hidden {}
        div.split.editor {
            section {
                div.editor-box {
                    pre.gutter #gutter aria-hidden="true" { @for i in 1..=lines { (i) "\n" } }
                    textarea #doc spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off" aria-label="workflow document" { (source) }
                }
                div #diagnostics aria-live="polite" {}
            }
            section.graphbox {
                h2 { "Graph" span #graph-state {} }
                div.graph-wrap #editor-graph {}
            }
        }
    };
    Ok(("Editor".into(), body))
}

/// The check of the editor's text: diagnostics (each at its line) and, for a valid document,
/// its graph, as an HTML fragment the script puts in place.
pub async fn check(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> Response {
    if !super::login::same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    if body.len() > MAX_DOC {
        return fragment(html! { ul.diags { li.diag { "The document is larger than 1 MiB." } } });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return fragment(html! { ul.diags { li.diag { "The document is empty." } } });
    }
    let api = Api::new(ui.api.clone(), &headers);
    let v: ValidateResponse = match api
        .post(
            "/api/v1/definitions/validate",
            "application/yaml",
            body.to_vec(),
        )
        .await
    {
        Ok(v) => v,
        Err(UiError::Unauthorized(m)) => return (StatusCode::UNAUTHORIZED, m).into_response(),
        Err(e) => return fragment(html! { ul.diags { li.diag { (e.message()) } } }),
    };
    let title = match (&v.namespace, &v.name, &v.version) {
        (Some(ns), Some(n), Some(ver)) => format!("{ns}/{n}@{ver}"),
        _ => String::new(),
    };
    fragment(html! {
        div #check data-valid=(v.valid) data-title=(title) {
            @if v.valid {
                p.ok { "Valid: " (title) }
            } @else {
                ul.diags {
                    @for d in &v.diagnostics {
                        li.diag data-line=(d.line) data-col=(d.col) {
                            a href="#" data-line=(d.line) data-col=(d.col) { (d.line) ":" (d.col) } " " (d.message)
                        }
                    }
                }
            }
            @if let Some(g) = &v.graph {
                template #check-graph { (raw(graph::svg(g, &Marks::new()))) }
            }
        }
    })
}

fn fragment(m: Markup) -> Response {
    harden(m.into_response())
}

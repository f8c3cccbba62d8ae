//! What a document says and how versions differ: validation without registering (the editor's
//! diagnostics), a version's control-flow graph (the UI's pictures), and the diff between two
//! versions (`kflow diff`, the UI's diff page).

use axum::Json;
use axum::extract::State;

use kflow_api::definitions::{Analysis, DefinitionDiff, DiffLine, Graph, ValidateResponse};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiPath, ApiQuery, Body};
use super::types::{diagnostic, graph};
use crate::auth::Caller;

/// Checks a document as registering would (same diagnostics, each with its line and column),
/// and gives its graph when it is valid. Registers nothing.
#[utoipa::path(
    post,
    path = "/api/v1/definitions/validate",
    tag = "definitions",
    request_body(
        description = "A workflow document (Serverless Workflow DSL 1.0), YAML or JSON",
        content(("application/yaml"), ("application/json"))
    ),
    responses(
        (status = 200, description = "The verdict: `valid`, the diagnostics, the graph", body = ValidateResponse),
        (status = 400, description = "Empty body", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    )
)]
pub async fn validate_definition(Body(body): Body) -> ApiResult<Json<ValidateResponse>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty: a workflow document (YAML or JSON) is expected",
        ));
    }
    // Parsing and lowering are CPU work bounded by the document limits: off the runtime.
    let verdict = tokio::task::spawn_blocking(move || {
        let root = kflow_dsl::node::parse(&body, &kflow_dsl::node::Limits::default()).ok();
        let field = |k: &str| {
            root.as_ref()
                .and_then(|r| r.get("document")?.get(k)?.as_str())
                .map(str::to_string)
        };
        let (namespace, name, version) = (field("namespace"), field("name"), field("version"));
        match crate::engine::check(&body) {
            Ok(wf) => ValidateResponse {
                valid: true,
                diagnostics: Vec::new(),
                namespace,
                name,
                version,
                graph: Some(graph(kflow_dsl::graph::graph(&wf, root.as_ref()))),
            },
            Err(r) => ValidateResponse {
                valid: false,
                diagnostics: r.diagnostics.iter().map(diagnostic).collect(),
                namespace,
                name,
                version,
                graph: None,
            },
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("validation failed: {e}")))?;
    Ok(Json(verdict))
}

/// The control-flow graph of one version (`latest` accepted): a node per task, identified by
/// the JSON pointer that history events name, with its line; edges follow the flow.
#[utoipa::path(
    get,
    path = "/api/v1/definitions/{namespace}/{name}/versions/{version}/graph",
    tag = "definitions",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
        ("version" = String, Path, description = "Semantic version, or `latest`"),
    ),
    responses(
        (status = 200, description = "The graph", body = Graph),
        (status = 404, description = "Not registered", body = ErrorBody),
    )
)]
pub async fn definition_graph(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name, version)): ApiPath<(String, String, String)>,
) -> ApiResult<Json<Graph>> {
    caller.must_see(&ns, || format!("no workflow {ns}/{name}"))?;
    let def = st.engine.definition(&ns, &name, Some(&version)).await?;
    let g = tokio::task::spawn_blocking(move || {
        let src = def.source.as_bytes();
        let wf = kflow_dsl::load(src).ok()?;
        let root = kflow_dsl::node::parse(src, &kflow_dsl::node::Limits::default()).ok();
        Some(graph(kflow_dsl::graph::graph(&wf, root.as_ref())))
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| ApiError::internal("a registered definition no longer loads"))?;
    Ok(Json(g))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The older version (default: the version before `to`).
    pub from: Option<String>,
    /// The newer version (default: the latest).
    pub to: Option<String>,
}

/// How two versions of a workflow differ: the text (unified diff with 3 lines of context,
/// line numbers on both sides) and the tasks added, removed and changed.
#[utoipa::path(
    get,
    path = "/api/v1/definitions/{namespace}/{name}/diff",
    tag = "definitions",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
        DiffQuery,
    ),
    responses(
        (status = 200, description = "The differences", body = DefinitionDiff),
        (status = 404, description = "A version is not registered", body = ErrorBody),
    )
)]
pub async fn diff_definitions(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<DiffQuery>,
) -> ApiResult<Json<DefinitionDiff>> {
    caller.must_see(&ns, || format!("no workflow {ns}/{name}"))?;
    let to = st.engine.definition(&ns, &name, q.to.as_deref()).await?;
    let from = match q.from {
        Some(v) => st.engine.definition(&ns, &name, Some(&v)).await?,
        None => {
            let mut older: Vec<_> = st
                .engine
                .definitions(Some(ns.clone()))
                .await?
                .into_iter()
                .filter(|d| {
                    d.name == name && kflow_store::semver::compare(&d.version, &to.version).is_lt()
                })
                .collect();
            older.sort_by(|a, b| kflow_store::semver::compare(&a.version, &b.version));
            older.pop().ok_or_else(|| {
                ApiError::not_found(format!(
                    "{ns}/{name} has no version before {}: name one with ?from=",
                    to.version
                ))
            })?
        }
    };
    let diff = tokio::task::spawn_blocking(move || {
        let lines = text_diff(&from.source, &to.source);
        let (a, b) = (
            kflow_dsl::load(from.source.as_bytes()).ok(),
            kflow_dsl::load(to.source.as_bytes()).ok(),
        );
        let changes = match (a, b) {
            (Some(a), Some(b)) => kflow_dsl::graph::task_changes(&a, &b),
            _ => Default::default(),
        };
        DefinitionDiff {
            namespace: to.namespace,
            name: to.name,
            from: from.version,
            to: to.version,
            lines,
            added: changes.added,
            removed: changes.removed,
            changed: changes.changed,
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("diff failed: {e}")))?;
    Ok(Json(diff))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalysisQuery {
    /// Only this version (default: every version with runs).
    pub version: Option<String>,
}

/// What kflow learned from a workflow's runs, per version and task: run time and queue wait
/// (p50, p95, p99, within 1%), failure and retry rates, and whether there are enough runs to
/// rely on them. Nothing learned yet: no versions.
#[utoipa::path(
    get,
    path = "/api/v1/definitions/{namespace}/{name}/analysis",
    tag = "definitions",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
        AnalysisQuery,
    ),
    responses(
        (status = 200, description = "The analysis", body = Analysis),
        (status = 404, description = "The workflow is not registered", body = ErrorBody),
    )
)]
pub async fn analyze_definition(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<AnalysisQuery>,
) -> ApiResult<Json<Analysis>> {
    caller.must_see(&ns, || format!("no workflow {ns}/{name}"))?;
    // Registered (a typo gets the usual "did you mean"), in the version asked for if any.
    st.engine
        .definition(&ns, &name, q.version.as_deref())
        .await?;
    Ok(Json(
        st.engine.analysis(&ns, &name, q.version.as_deref()).await?,
    ))
}

/// A unified diff of two texts, 3 lines of context; `@` lines separate the hunks.
pub fn text_diff(a: &str, b: &str) -> Vec<DiffLine> {
    use similar::{ChangeTag, TextDiff};
    let diff = TextDiff::from_lines(a, b);
    let mut out = Vec::new();
    for (i, group) in diff.grouped_ops(3).iter().enumerate() {
        if i > 0 {
            out.push(DiffLine {
                op: "@".into(),
                old: None,
                new: None,
                text: "…".into(),
            });
        }
        for op in group {
            for change in diff.iter_changes(op) {
                let n = |i: Option<usize>| i.map(|i| i as u32 + 1);
                out.push(DiffLine {
                    op: match change.tag() {
                        ChangeTag::Equal => " ",
                        ChangeTag::Delete => "-",
                        ChangeTag::Insert => "+",
                    }
                    .into(),
                    old: n(change.old_index()),
                    new: n(change.new_index()),
                    text: change.value().trim_end_matches(['\n', '\r']).to_string(),
                });
            }
        }
    }
    out
}

//! `/api/v1/definitions`: register, list, read and deprecate workflow definitions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use axum::response::Response;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiPath, ApiQuery, Body, is_json_media_type, parse_json};
use super::types::{
    DefinitionDetail, DefinitionList, DefinitionQuery, DefinitionSummary, DeprecateRequest,
    RegisterResponse, definition_detail, definition_summary,
};
use crate::auth::{Audited, Caller};

/// Registers a workflow definition.
///
/// The body is the workflow document, YAML or JSON, whatever the content type. Registered
/// versions never change: the same version with the same content is `unchanged` (200), with
/// other content a conflict (409).
#[utoipa::path(
    post,
    path = "/api/v1/definitions",
    tag = "definitions",
    request_body(
        description = "A workflow document (Serverless Workflow DSL 1.0), YAML or JSON",
        content(("application/yaml"), ("application/json"))
    ),
    responses(
        (status = 201, description = "Registered", body = RegisterResponse),
        (status = 200, description = "Already registered with the same content", body = RegisterResponse),
        (status = 400, description = "Invalid document; `details` holds the diagnostics (`LINE:COL: message`)", body = ErrorBody),
        (status = 409, description = "This version is registered with other content: bump the version", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    )
)]
pub async fn register_definition(
    State(st): State<AppState>,
    caller: Caller,
    Body(body): Body,
) -> ApiResult<Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty: a workflow document (YAML or JSON) is expected",
        ));
    }
    let r = st.engine.register_in(&body, |ns| caller.sees(ns)).await?;
    let status = if r.outcome == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let note = Audited {
        resource: format!(
            "definition {}/{}@{} ({})",
            r.namespace, r.name, r.version, r.outcome
        ),
        namespace: Some(r.namespace.clone()),
        recorded: false,
    };
    Ok(super::instances::with_note(
        (status, Json(RegisterResponse::from(r))),
        note,
    ))
}

/// Lists registered definitions (every version, without sources).
#[utoipa::path(
    get,
    path = "/api/v1/definitions",
    tag = "definitions",
    params(DefinitionQuery),
    responses(
        (status = 200, description = "The definitions", body = DefinitionList),
        (status = 400, description = "Bad query", body = ErrorBody),
    )
)]
pub async fn list_definitions(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DefinitionQuery>,
) -> ApiResult<Json<DefinitionList>> {
    let namespace = q.namespace.filter(|n| !n.is_empty());
    let defs = st.engine.definitions(namespace).await?;
    Ok(Json(DefinitionList {
        items: defs
            .iter()
            .filter(|d| caller.sees(&d.namespace))
            .map(definition_summary)
            .collect(),
    }))
}

/// The latest version (the highest semantic version) of a workflow, with its source.
#[utoipa::path(
    get,
    path = "/api/v1/definitions/{namespace}/{name}",
    tag = "definitions",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
    ),
    responses(
        (status = 200, description = "The latest version", body = DefinitionDetail),
        (status = 404, description = "Not registered", body = ErrorBody),
    )
)]
pub async fn get_latest_definition(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<DefinitionDetail>> {
    caller.must_see(&ns, || format!("no workflow {ns}/{name}"))?;
    Ok(Json(definition_detail(
        st.engine.definition(&ns, &name, None).await?,
    )))
}

/// One version of a workflow, with its source (`latest` is accepted as the version).
#[utoipa::path(
    get,
    path = "/api/v1/definitions/{namespace}/{name}/versions/{version}",
    tag = "definitions",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
        ("version" = String, Path, description = "Semantic version, or `latest`"),
    ),
    responses(
        (status = 200, description = "That version", body = DefinitionDetail),
        (status = 404, description = "Not registered", body = ErrorBody),
    )
)]
pub async fn get_definition_version(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name, version)): ApiPath<(String, String, String)>,
) -> ApiResult<Json<DefinitionDetail>> {
    caller.must_see(&ns, || format!("no workflow {ns}/{name}"))?;
    Ok(Json(definition_detail(
        st.engine.definition(&ns, &name, Some(&version)).await?,
    )))
}

/// Deprecates a version (no new instances start from it; running ones go on), or undoes it
/// with `{"deprecated": false}`. The body is optional.
#[utoipa::path(
    post,
    path = "/api/v1/definitions/{namespace}/{name}/versions/{version}/deprecate",
    tag = "definitions",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
        ("version" = String, Path, description = "Semantic version, or `latest`"),
    ),
    request_body(content = Option<DeprecateRequest>, description = "Optional; `deprecated` defaults to true", content_type = "application/json"),
    responses(
        (status = 200, description = "The version, as it is now", body = DefinitionSummary),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn deprecate_definition(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name, version)): ApiPath<(String, String, String)>,
    headers: axum::http::HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<DefinitionSummary>> {
    caller.must_see(&ns, || format!("no workflow {ns}/{name}"))?;
    let req: DeprecateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeprecateRequest::default()
    } else {
        if let Some(m) = super::extract::media_type(&headers).filter(|m| !is_json_media_type(m)) {
            return Err(ApiError::unsupported_media_type(format!(
                "expected a JSON body (application/json), not {m}"
            )));
        }
        parse_json(&body)?
    };
    let deprecated = req.deprecated.unwrap_or(true);
    // `latest` names the highest version at the time of the call.
    let def = st.engine.definition(&ns, &name, Some(&version)).await?;
    st.engine
        .deprecate(&ns, &name, &def.version, deprecated)
        .await?;
    let def = st.engine.definition(&ns, &name, Some(&def.version)).await?;
    Ok(Json(definition_summary(&def)))
}

//! `/api/v1/instances`: start, list, read, control (cancel, suspend, resume) and history.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use kflow_store::{InstanceFilter, InstanceStatus};

use crate::auth::{Audited, Caller, Scope};
use crate::engine::StartSpec;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiPath, ApiQuery, Body, JsonBody};
use super::types::{
    HistoryList, HistoryQuery, InstanceDto, InstanceList, InstanceQuery, InstanceViewDto,
    StartRequest, history_event, instance_dto,
};

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_HISTORY: u32 = 1000;
pub const MAX_HISTORY: u32 = 10_000;

/// Starts an instance of a registered workflow.
#[utoipa::path(
    post,
    path = "/api/v1/instances",
    tag = "instances",
    request_body = StartRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Starts at most one instance per key (in the namespace, for `idempotency_ttl` after the first use, 24 h by default): the same request again answers that instance with 200; another request with the same key is refused with 409"),
    ),
    responses(
        (status = 201, description = "Started (committed); with `wait`, the finished instance (an InstanceView)", body = InstanceDto),
        (status = 200, description = "A repeated request (same `id` or `Idempotency-Key`, same request): the instance it started", body = InstanceDto),
        (status = 400, description = "Malformed body, a bad id or key, or the input does not match the workflow's input schema (`details` names the failing paths)", body = ErrorBody),
        (status = 404, description = "Unknown workflow or version", body = ErrorBody),
        (status = 409, description = "The version is deprecated, or the id or key was used for another request", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
pub async fn start_instance(
    State(st): State<AppState>,
    caller: Caller,
    source: Option<axum::Extension<crate::auth::Source>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<StartRequest>,
) -> ApiResult<Response> {
    caller.must_see(&req.namespace, || {
        format!("no workflow {}/{}", req.namespace, req.name)
    })?;
    let version = req.version.filter(|v| !v.is_empty() && v != "latest");
    let input = req
        .input
        .unwrap_or_else(|| Value::Object(Default::default()));
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("the Idempotency-Key header must be visible ASCII"))?
                .to_string(),
        ),
    };
    let started = st
        .engine
        .start_request(StartSpec {
            namespace: req.namespace,
            name: req.name,
            version,
            input,
            priority: req.priority,
            id: req.id,
            idempotency_key,
            // A malformed traceparent is ignored, as W3C Trace Context asks: a new trace starts.
            trace: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .filter(|v| crate::traces::parse_traceparent(v).is_some())
                .map(str::to_string),
            audit: Some(crate::auth::audit::entry(
                &caller.name,
                "instances.start",
                "",
                None,
                &source.map(|s| s.0.0).unwrap_or_default(),
                StatusCode::CREATED.as_u16().to_string(),
            )),
        })
        .await?;
    let code = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let inst = started.instance;
    let audited = Audited {
        resource: format!(
            "instance {} of {}/{}@{}",
            inst.id, inst.namespace, inst.name, inst.version
        ),
        namespace: Some(inst.namespace.clone()),
        // A new instance's entry was committed with it; a repeated request's is written now.
        recorded: started.created,
    };
    if req.wait {
        let timeout = std::time::Duration::from_secs(req.wait_seconds.unwrap_or(60).min(3600));
        let view = st.engine.wait_finished(&inst.id, timeout).await?;
        let body = serde_json::to_value(InstanceViewDto::from(view))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok(with_note((code, Json(body)), audited));
    }
    let body =
        serde_json::to_value(instance_dto(inst)).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(with_note((code, Json(body)), audited))
}

/// A response carrying its audit note.
pub fn with_note(r: impl IntoResponse, note: Audited) -> Response {
    let mut r = r.into_response();
    r.extensions_mut().insert(note);
    r
}

/// 404 unless the instance exists in a namespace the caller sees (no lookup for a caller who
/// sees every namespace: the handler's own lookup answers 404 for a missing one).
pub async fn visible(st: &AppState, caller: &Caller, id: &str) -> ApiResult<String> {
    let full = id.len() == 36;
    if caller.scope == Scope::All && full {
        return Ok(id.to_string());
    }
    let not_found = || ApiError::not_found(format!("instance {id} does not exist"));
    let store = st.engine.store();
    let read = |i: String| {
        let store = store.clone();
        async move {
            tokio::task::spawn_blocking(move || store.get_instance(&i))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("the store failed: {e}")))
        }
    };
    if let Some(r) = read(id.to_string()).await? {
        return if caller.sees(&r.namespace) {
            Ok(id.to_string())
        } else {
            Err(not_found())
        };
    }
    // A short id: a unique prefix or suffix (of at least 4 characters) of the id of an instance
    // this caller sees.
    let prefix_like =
        (4..36).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !prefix_like {
        return Err(not_found());
    }
    let (s, p) = (store.clone(), id.to_string());
    let ids = tokio::task::spawn_blocking(move || s.instance_ids_matching(&p, 50))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("the store failed: {e}")))?;
    let mut seen = Vec::new();
    for i in ids {
        let sees = caller.scope == Scope::All
            || read(i.clone())
                .await?
                .is_some_and(|r| caller.sees(&r.namespace));
        if sees {
            seen.push(i);
        }
    }
    match seen.len() {
        0 => Err(not_found()),
        1 => Ok(seen.remove(0)),
        n => Err(ApiError::conflict(format!(
            "the short id {id} names {}{} instances: {}; give more of the id",
            if n >= 50 { "at least " } else { "" },
            n,
            seen.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Lists instances, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/instances",
    tag = "instances",
    params(InstanceQuery),
    responses(
        (status = 200, description = "A page of instances", body = InstanceList),
        (status = 400, description = "Bad status, time, cursor or limit", body = ErrorBody),
    )
)]
pub async fn list_instances(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<InstanceQuery>,
) -> ApiResult<Json<InstanceList>> {
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let wanted = nonempty(q.status);
    // `queued` instances are `running` in the store: listed from those, then kept.
    let only_queued = wanted.as_deref() == Some("queued");
    let status = match wanted {
        None => None,
        Some(_) if only_queued => Some(InstanceStatus::Running),
        Some(s) => Some(InstanceStatus::parse(&s).ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid status `{s}`: expected queued, running, suspended, completed, faulted \
                 or cancelled"
            ))
        })?),
    };
    let filter = InstanceFilter {
        namespace: nonempty(q.namespace),
        name: nonempty(q.name),
        version: nonempty(q.version),
        status,
        from_ms: nonempty(q.from)
            .map(|t| parse_time("from", &t))
            .transpose()?,
        to_ms: nonempty(q.to).map(|t| parse_time("to", &t)).transpose()?,
        within: caller.scope.list(),
    };
    let limit = parse_count("limit", q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let mut list = match nonempty(q.q) {
        Some(text) => search_inputs(&st, filter, &text, nonempty(q.cursor), limit).await?,
        None => {
            let page = st
                .engine
                .instances(filter, nonempty(q.cursor), limit)
                .await?;
            InstanceList {
                items: page.items.into_iter().map(instance_dto).collect(),
                next: page.next,
            }
        }
    };
    mark_queued(&st, &mut list.items).await?;
    if only_queued {
        list.items
            .retain(|i| i.status == kflow_api::instances::Status::Queued);
    }
    Ok(Json(list))
}

/// Marks the instances of `items` that wait for a concurrency slot as `queued` (the store keeps
/// them `running`: a queued instance has a `queued` record and no `started` one yet). Reads the
/// first two history records of each running one.
pub async fn mark_queued(st: &AppState, items: &mut [InstanceDto]) -> ApiResult<()> {
    let running: Vec<String> = items
        .iter()
        .filter(|i| i.status == kflow_api::instances::Status::Running)
        .map(|i| i.id.clone())
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    let store = st.engine.store();
    let queued = tokio::task::spawn_blocking(move || {
        let mut q = std::collections::HashSet::new();
        for id in running {
            let head = store.history(&id, 0, 2)?;
            if head.iter().any(|e| e.kind == "queued") && !head.iter().any(|e| e.kind == "started")
            {
                q.insert(id);
            }
        }
        Ok::<_, kflow_store::StoreError>(q)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("the store failed: {e}")))?;
    for i in items.iter_mut() {
        if queued.contains(&i.id) {
            i.status = kflow_api::instances::Status::Queued;
        }
    }
    Ok(())
}

/// How many instances one search request reads at most; past it the answer holds what was
/// found so far and a `next` cursor to go on from.
const SEARCH_SCAN: usize = 20_000;

/// The instances whose input contains `text` (case-insensitive, in its JSON text), newest
/// first. Reads pages of the filtered list until `limit` match or [`SEARCH_SCAN`] were read; the
/// `next` cursor resumes right after the last instance read, so no match is skipped.
async fn search_inputs(
    st: &AppState,
    filter: InstanceFilter,
    text: &str,
    mut cursor: Option<String>,
    limit: u32,
) -> ApiResult<InstanceList> {
    let limit = limit as usize;
    if text.chars().count() > 200 {
        return Err(ApiError::invalid(
            "the search text (q) is longer than 200 characters",
        ));
    }
    let needle = text.to_lowercase();
    let mut items = Vec::new();
    let mut scanned = 0;
    loop {
        let page = st
            .engine
            .instances(filter.clone(), cursor.clone(), 500)
            .await?;
        for inst in page.items {
            scanned += 1;
            let at = kflow_store::cursor::encode(inst.created_ms, &inst.id);
            if inst.input.to_string().to_lowercase().contains(&needle) {
                items.push(instance_dto(inst));
            }
            if items.len() == limit || scanned >= SEARCH_SCAN {
                return Ok(InstanceList {
                    items,
                    next: Some(at),
                });
            }
        }
        cursor = page.next;
        if cursor.is_none() {
            return Ok(InstanceList { items, next: None });
        }
    }
}

/// An instance: status, input, output or error, and the tasks running or waiting now.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "The instance", body = InstanceViewDto),
        (status = 404, description = "No such instance", body = ErrorBody),
    )
)]
pub async fn get_instance(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<InstanceViewDto>> {
    let id = visible(&st, &caller, &id).await?;
    let mut view: InstanceViewDto = st.engine.instance(&id).await?.into();
    mark_queued(&st, std::slice::from_mut(&mut view.instance)).await?;
    Ok(Json(view))
}

/// Cancels an instance that has not finished.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/cancel",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "The instance, cancelled", body = InstanceDto),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody),
    )
)]
pub async fn cancel_instance(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<InstanceDto>> {
    let id = visible(&st, &caller, &id).await?;
    Ok(Json(instance_dto(st.engine.cancel(&id).await?)))
}

/// Body of a retry (optional).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// The task to retry from, by its JSON pointer (`/do/1/charge`); default: the first task
    /// that faulted.
    pub task: Option<String>,
}

/// Retries a faulted instance from one of its tasks: a new instance (same version, same input)
/// that reuses the journaled results of everything before that task and runs the task and what
/// follows again. The new instance's history starts with the reused records and an
/// `instance.retried` notice naming the original.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/retry",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id (faulted)")),
    request_body(content = Option<RetryRequest>, description = "Optional: the task to retry from", content_type = "application/json"),
    responses(
        (status = 201, description = "The new instance", body = InstanceDto),
        (status = 400, description = "The task never started in this instance", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not faulted, or the failure would repeat, or the workflow has a concurrency limit", body = ErrorBody),
    )
)]
pub async fn retry_instance(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    Body(body): Body,
) -> ApiResult<Response> {
    let id = visible(&st, &caller, &id).await?;
    let req: RetryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RetryRequest::default()
    } else {
        super::extract::parse_json(&body)?
    };
    let started = st.engine.retry(&id, req.task.as_deref()).await?;
    let inst = started.instance;
    let note = Audited {
        resource: format!("instance {} (a retry of {id})", inst.id),
        namespace: Some(inst.namespace.clone()),
        recorded: false,
    };
    Ok(with_note(
        (StatusCode::CREATED, Json(instance_dto(inst))),
        note,
    ))
}

/// Suspends a running instance: results and events that arrive meanwhile are held.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/suspend",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "The instance, suspended", body = InstanceDto),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
    )
)]
pub async fn suspend_instance(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<InstanceDto>> {
    let id = visible(&st, &caller, &id).await?;
    Ok(Json(instance_dto(st.engine.suspend(&id).await?)))
}

/// Resumes a suspended instance.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/resume",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "The instance, running again", body = InstanceDto),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not suspended", body = ErrorBody),
    )
)]
pub async fn resume_instance(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<InstanceDto>> {
    let id = visible(&st, &caller, &id).await?;
    Ok(Json(instance_dto(st.engine.resume(&id).await?)))
}

/// The history of an instance: what happened, in order.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/history",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id"), HistoryQuery),
    responses(
        (status = 200, description = "History events with `seq > after`", body = HistoryList),
        (status = 400, description = "Bad `after` or `limit`", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
    )
)]
pub async fn get_history(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<HistoryList>> {
    let after = match q.after.filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid `after` `{s}`: expected a history seq (0 or more)"
                ))
            })?,
    };
    let limit = parse_count("limit", q.limit, DEFAULT_HISTORY, MAX_HISTORY)?;
    let id = visible(&st, &caller, &id).await?;
    let events = st.engine.history(&id, after, limit).await?;
    Ok(Json(HistoryList {
        items: events
            .into_iter()
            .map(|mut ev| {
                st.engine.redact(&mut ev.data);
                history_event(ev)
            })
            .collect(),
    }))
}

/// A count parameter: 1 to `max`, `default` when absent.
fn parse_count(name: &str, value: Option<String>, default: u32, max: u32) -> ApiResult<u32> {
    match value.filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid `{name}` `{s}`: expected a number from 1 to {max}"
                ))
            }),
    }
}

/// A time parameter: epoch milliseconds or RFC 3339 (a `+` offset that arrived as a space,
/// because it was not percent-encoded in the query, is read as `+`).
pub fn parse_time(name: &str, s: &str) -> ApiResult<i64> {
    let t = s.trim();
    let digits = t.strip_prefix('-').unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|_| ApiError::invalid(format!("invalid `{name}` `{s}`: out of range")));
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(t).or_else(|e| {
        if s.contains(' ') {
            chrono::DateTime::parse_from_rfc3339(&s.trim_start().replace(' ', "+"))
        } else {
            Err(e)
        }
    });
    parsed.map(|d| d.timestamp_millis()).map_err(|e| {
        ApiError::invalid(format!(
            "invalid `{name}` `{s}`: expected RFC 3339 (e.g. 2026-01-02T03:04:05Z) or epoch milliseconds ({e})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("from", "0").ok(), Some(0));
        assert_eq!(
            parse_time("from", "1700000000000").ok(),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_time("from", "1970-01-01T00:00:01Z").ok(), Some(1000));
        assert_eq!(
            parse_time("from", "1970-01-01T02:00:01.5+02:00").ok(),
            Some(1500)
        );
        assert_eq!(
            parse_time("from", "1970-01-01T02:00:01.5 02:00").ok(),
            Some(1500)
        );
        assert!(parse_time("from", "yesterday").is_err());
        assert!(parse_time("from", "99999999999999999999999").is_err());
        assert!(parse_time("from", "-").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("limit", None, 50, 1000).ok(), Some(50));
        assert_eq!(
            parse_count("limit", Some("7".into()), 50, 1000).ok(),
            Some(7)
        );
        assert!(parse_count("limit", Some("0".into()), 50, 1000).is_err());
        assert!(parse_count("limit", Some("1001".into()), 50, 1000).is_err());
        assert!(parse_count("limit", Some("ten".into()), 50, 1000).is_err());
    }
}

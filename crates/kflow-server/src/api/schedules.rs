//! `/api/v1/schedules`: the schedules of the registered workflows (from their `schedule`), their
//! next fire times, pause and resume.

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::error::{ApiResult, ErrorBody};
use super::extract::ApiPath;
use crate::auth::Caller;
use crate::schedule::{self, ScheduleView};

pub use kflow_api::schedules::ScheduleList;

/// Lists the schedules (one per workflow whose newest non-deprecated version has a
/// `schedule`), with their next fire times. A schedule that cannot fire shows why in `error`.
#[utoipa::path(
    get,
    path = "/api/v1/schedules",
    tag = "schedules",
    responses((status = 200, description = "The schedules, by namespace and name", body = ScheduleList))
)]
pub async fn list_schedules(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<ScheduleList>> {
    let mut items = schedule::list(&st.engine).await?;
    items.retain(|s| caller.sees(&s.namespace));
    Ok(Json(ScheduleList { items }))
}

/// Pauses a workflow's schedule: no tick fires and no event starts it until it is resumed.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{namespace}/{name}/pause",
    tag = "schedules",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
    ),
    responses(
        (status = 200, description = "The schedule, paused", body = ScheduleView),
        (status = 404, description = "No such workflow, or it has no schedule", body = ErrorBody),
    )
)]
pub async fn pause_schedule(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    caller.must_see(&ns, || format!("no schedule for {ns}/{name}"))?;
    Ok(Json(
        schedule::set_paused(&st.engine, &ns, &name, true).await?,
    ))
}

/// Resumes a paused schedule; the ticks missed meanwhile follow its missed policy
/// (`document.metadata.kflow.schedule.missed`).
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{namespace}/{name}/resume",
    tag = "schedules",
    params(
        ("namespace" = String, Path, description = "Namespace"),
        ("name" = String, Path, description = "Workflow name"),
    ),
    responses(
        (status = 200, description = "The schedule, resumed", body = ScheduleView),
        (status = 404, description = "No such workflow, or it has no schedule", body = ErrorBody),
    )
)]
pub async fn resume_schedule(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    caller.must_see(&ns, || format!("no schedule for {ns}/{name}"))?;
    Ok(Json(
        schedule::set_paused(&st.engine, &ns, &name, false).await?,
    ))
}

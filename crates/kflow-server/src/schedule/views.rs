//! Schedules as the API shows and controls them: a row read as a [`ScheduleView`] (a wire type,
//! shared with the CLI), the list, pause and resume.

use kflow_store::ScheduleRow;

use super::state::State;
use super::{plan, run_blocking};
use crate::engine::{Engine, EngineError, Result};

pub use kflow_api::schedules::ScheduleView;

/// A stored schedule as the API shows it.
pub fn view_of(row: &ScheduleRow) -> ScheduleView {
    let s = State::from_value(&row.state);
    let tz = if s.timezone.is_empty() {
        "UTC".to_string()
    } else {
        s.timezone.clone()
    };
    ScheduleView {
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        version: row.version.clone(),
        kind: s.kind.clone(),
        expression: s.expression.clone(),
        next_fire: row.next_fire_ms.map(|ms| plan::rfc3339_in(ms, &tz)),
        next_fire_ms: row.next_fire_ms,
        last_fire: row.last_fire_ms.map(|ms| plan::rfc3339_in(ms, &tz)),
        last_fire_ms: row.last_fire_ms,
        timezone: tz,
        paused: row.paused,
        overlap: s.overlap.as_str().into(),
        missed: s.missed.as_str().into(),
        catchup_max: s.catchup_max,
        error: s.error,
        last_error: s.last_error,
        running: s.running,
        queued: s.queue.len() + s.outbox.len(),
        fired: s.fired,
        skipped: s.skipped,
        missed_ticks: s.missed_ticks,
    }
}

/// Every schedule, by namespace and name.
pub async fn list(engine: &Engine) -> Result<Vec<ScheduleView>> {
    let store = engine.store();
    let rows = run_blocking(move || store.list_schedules()).await?;
    Ok(rows.iter().map(view_of).collect())
}

/// Pauses or resumes a workflow's schedule. On resume the ticks missed meanwhile follow the
/// missed policy.
pub async fn set_paused(
    engine: &Engine,
    ns: &str,
    name: &str,
    paused: bool,
) -> Result<ScheduleView> {
    let store = engine.store();
    let (n, m) = (ns.to_string(), name.to_string());
    let now = crate::engine::now_ms();
    let row = run_blocking(move || store.set_schedule_paused(&n, &m, paused, now)).await?;
    let Some(row) = row else {
        // Which one is it: no such workflow, or no schedule?
        engine.definition(ns, name, None).await?;
        return Err(EngineError::NotFound(format!(
            "workflow {ns}/{name} has no schedule (its newest non-deprecated version has no 'schedule')"
        )));
    };
    if let Some(o) = engine.observer() {
        o.nudge();
    }
    Ok(view_of(&row))
}

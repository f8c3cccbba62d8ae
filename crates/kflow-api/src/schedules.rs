//! Schedules (`/api/v1/schedules`): the schedules of the registered workflows, their next
//! fire times, pause and resume.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub namespace: String,
    pub name: String,
    /// The workflow version it starts: the newest that is not deprecated.
    pub version: String,
    /// `cron`, `every`, `after` or `on` (empty when the schedule is in error).
    #[schema(example = "cron")]
    pub kind: String,
    /// The cron expression, the duration (ISO 8601), or the event filters.
    #[schema(example = "0 9 * * MON-FRI")]
    pub expression: String,
    /// The IANA time zone of a cron schedule.
    #[schema(example = "Europe/Paris")]
    pub timezone: String,
    /// The next fire (RFC 3339, in the schedule's time zone); null when nothing timed is due.
    pub next_fire: Option<String>,
    pub next_fire_ms: Option<i64>,
    /// The last tick that fired (RFC 3339).
    pub last_fire: Option<String>,
    pub last_fire_ms: Option<i64>,
    pub paused: bool,
    /// `allow`, `skip`, `queue` or `cancel`.
    pub overlap: String,
    /// `skip` or `catchup`.
    pub missed: String,
    pub catchup_max: u32,
    /// Why the schedule cannot fire (it stays in the list, firing nothing).
    pub error: Option<String>,
    /// Why the last start failed.
    pub last_error: Option<String>,
    /// Instances started by the schedule that are still running (tracked with `after` and the
    /// overlap policies other than `allow`).
    pub running: Vec<String>,
    /// Fires waiting for the running instance (overlap `queue`).
    pub queued: usize,
    /// Instances started so far.
    pub fired: u64,
    /// Fires dropped by the overlap policy.
    pub skipped: u64,
    /// Ticks missed while the server was down and not caught up (the missed policy).
    #[serde(default)]
    pub missed_ticks: u64,
}

/// `GET /api/v1/schedules`: every schedule the caller may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub items: Vec<ScheduleView>,
}

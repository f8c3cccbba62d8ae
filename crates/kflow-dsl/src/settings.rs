//! kflow's own settings: the engine hints a document gives in `metadata.kflow`.
//!
//! `metadata` is free-form in the DSL, so a document carrying them stays portable (other
//! runtimes ignore them, and `--strict` accepts them). kflow reads them while lowering
//! ([`crate::lower`]), with the same diagnostics as everything else, into these types:
//!
//! ```yaml
//! document:
//!   metadata:
//!     kflow:
//!       queue: default              # default queue of the workflow's calls and processes
//!       priority: 0                 # their default priority
//!       schedule:                   # only with a top-level `schedule`
//!         timezone: Europe/Paris    # an IANA time zone (default: the server's)
//!         missed: skip              # skip | catchup
//!         catchupMax: 1             # 1 to 1000 ticks caught up after downtime
//!         overlap: allow            # allow | skip | queue | cancel
//!       concurrency:
//!         limit: 1                  # running instances at most (per key value)
//!         key: ${ .customerId }     # optional jq on the instance input
//!         onLimit: queue            # queue | skip | cancelOldest
//! do:
//!   - getPet:
//!       metadata:
//!         kflow:
//!           queue: gpu              # the task's queue, priority, resources and labels
//!           priority: 5
//!           resources: { cpu: 2, memory: 8Gi, gpu: 1 }
//!           labels: { zone: eu }
//! ```

use std::collections::BTreeMap;

use crate::expr::Expr;

/// `document.metadata.kflow`, plus the tasks' own hints.
#[derive(Debug, Clone, Default)]
pub struct KflowSettings {
    /// Queue of the workflow's calls and processes that name none.
    pub queue: Option<String>,
    /// Priority of the workflow's calls and processes that give none.
    pub priority: Option<i64>,
    pub schedule: Option<ScheduleSettings>,
    pub concurrency: Option<Concurrency>,
    /// The hints of every task that has some, by task reference (its JSON pointer, such as
    /// `/do/0/getPet`).
    pub tasks: BTreeMap<String, TaskHints>,
}

impl KflowSettings {
    /// The hints of the task at `reference` (empty when it has none).
    pub fn task(&self, reference: &str) -> &TaskHints {
        static NONE: TaskHints = TaskHints {
            queue: None,
            priority: None,
            resources: BTreeMap::new(),
            labels: BTreeMap::new(),
            limits: ProcessLimits {
                cpu_seconds: None,
                memory_mb: None,
                processes: None,
                file_size_mb: None,
                open_files: None,
                network: None,
            },
        };
        self.tasks.get(reference).unwrap_or(&NONE)
    }
}

/// A task's `metadata.kflow`: where and how its call or process runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskHints {
    pub queue: Option<String>,
    pub priority: Option<i64>,
    /// Amounts by resource name (`cpu` in cores, `memory` in bytes, named slots such as `gpu`).
    pub resources: BTreeMap<String, f64>,
    /// Labels a worker must have (values given as numbers or booleans are kept as text).
    pub labels: BTreeMap<String, String>,
    /// Limits of a shell or script task's processes (within the server's).
    pub limits: ProcessLimits,
}

/// `metadata.kflow.limits` of a shell or script task: each lowers the server's limit of the
/// same name for this task (a higher value is capped at the server's); `network: false` takes
/// the network away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessLimits {
    pub cpu_seconds: Option<u64>,
    pub memory_mb: Option<u64>,
    pub processes: Option<u64>,
    pub file_size_mb: Option<u64>,
    pub open_files: Option<u64>,
    pub network: Option<bool>,
}

impl TaskHints {
    pub fn is_empty(&self) -> bool {
        *self == TaskHints::default()
    }
}

/// `document.metadata.kflow.schedule`: how the server runs the workflow's `schedule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// An IANA time zone name; `None`: the server's default.
    pub timezone: Option<String>,
    pub missed: Missed,
    /// Ticks caught up at most (`missed: catchup`).
    pub catchup_max: u32,
    pub overlap: Overlap,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            timezone: None,
            missed: Missed::Skip,
            catchup_max: 1,
            overlap: Overlap::Allow,
        }
    }
}

/// What happens to ticks that came and went while the server was down or the schedule paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Fire none of them; go on with the next tick to come.
    #[default]
    Skip,
    /// Fire the most recent ones, at most `catchupMax`.
    Catchup,
}

impl Missed {
    pub const ALL: [&'static str; 2] = ["skip", "catchup"];

    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Catchup => "catchup",
        }
    }
}

/// What a tick does while an instance started by the schedule is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Start another one anyway.
    #[default]
    Allow,
    /// Start nothing for this tick.
    Skip,
    /// Start it once the running one has finished (in order).
    Queue,
    /// Cancel the running one, then start.
    Cancel,
}

impl Overlap {
    pub const ALL: [&'static str; 4] = ["allow", "skip", "queue", "cancel"];

    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Cancel => "cancel",
        }
    }
}

/// `document.metadata.kflow.concurrency`: at most `limit` running instances of the workflow,
/// or of each value of `key`.
#[derive(Debug, Clone)]
pub struct Concurrency {
    pub limit: u32,
    /// jq on the instance input; its value names the group.
    pub key: Option<Expr>,
    pub on_limit: OnLimit,
}

/// What a start does when its group is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLimit {
    /// Commit the instance, start it when a slot frees (oldest first).
    #[default]
    Queue,
    /// Refuse the start.
    Skip,
    /// Cancel the oldest running instance of the group, then start.
    CancelOldest,
}

impl OnLimit {
    pub const ALL: [&'static str; 3] = ["queue", "skip", "cancelOldest"];

    pub fn as_str(self) -> &'static str {
        match self {
            OnLimit::Queue => "queue",
            OnLimit::Skip => "skip",
            OnLimit::CancelOldest => "cancelOldest",
        }
    }
}

/// Parses a resource amount: `4`, `0.5`, `8Gi`, `512Mi`, `2G`, `100k` (binary suffixes
/// Ki/Mi/Gi/Ti, decimal k/K/M/G/T). Refuses negative and non-finite amounts.
pub fn parse_amount(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1.0));
    let bad = || format!("'{s}' is not an amount (e.g. 4, 0.5, 8Gi, 512Mi)");
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    let amount = n * mult;
    if !amount.is_finite() || amount < 0.0 {
        return Err(bad());
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("4"), Ok(4.0));
        assert_eq!(parse_amount(" 0.5 "), Ok(0.5));
        assert_eq!(parse_amount("8Gi"), Ok(8.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_amount("512Mi"), Ok(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_amount("2G"), Ok(2e9));
        assert_eq!(parse_amount("100k"), Ok(1e5));
        for bad in ["", "lots", "-1", "-2Gi", "inf", "NaN", "1e400", "Gi"] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_task_without_hints_has_empty_ones() {
        let s = KflowSettings::default();
        assert!(s.task("/do/0/a").is_empty());
    }
}

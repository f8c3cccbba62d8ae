//! What a workflow's `schedule` means, worked out once per definition: the trigger (cron in a
//! time zone, every, after, on events) and kflow's policies from
//! `document.metadata.kflow.schedule` (checked by `kflow_dsl` when the workflow is loaded).
//! Everything here is pure: times come in as arguments.

use std::str::FromStr;

use chrono::{SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use serde_json::{Map, Value};

use kflow_core::events::{self, Args};
use kflow_dsl::Workflow;
use kflow_dsl::duration::DurationSpec;
use kflow_dsl::expr::Expr;
use kflow_dsl::model::{Consumption, EventFilter, ReadMode, Schedule};
use kflow_dsl::template::Template;

/// `document.metadata.kflow.schedule`, checked when the workflow was loaded (see
/// `kflow_dsl::settings`): time zone, missed and overlap policies.
pub use kflow_dsl::model::ScheduleSettings as Settings;
pub use kflow_dsl::model::{Missed, Overlap};

pub fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("unknown time zone '{name}' (expected an IANA name such as Europe/Paris or UTC)")
    })
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Trigger {
    Cron(Box<CronSpec>),
    /// Every `ms` from the schedule's creation.
    Every {
        ms: i64,
    },
    /// `ms` after the previous run finished (the first run at creation).
    After {
        ms: i64,
    },
    On(OnSpec),
}

impl Trigger {
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Cron(_) => "cron",
            Trigger::Every { .. } => "every",
            Trigger::After { .. } => "after",
            Trigger::On(_) => "on",
        }
    }

    /// The expression as shown: the cron text, an ISO 8601 duration, or the event filters.
    pub fn expression(&self) -> String {
        match self {
            Trigger::Cron(c) => c.text.clone(),
            Trigger::Every { ms } | Trigger::After { ms } => iso_duration(*ms),
            Trigger::On(on) => {
                let filters: Vec<Value> =
                    on.filters.iter().map(|f| events::source(&f.with)).collect();
                format!("{} {}", on.mode.as_str(), Value::Array(filters))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct CronSpec {
    pub text: String,
    pub cron: Cron,
    pub tz: Tz,
}

/// A cron expression: 5 fields (minute first) or 6 (seconds first), or a nickname.
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    parser
        .parse(text)
        .map_err(|e| format!("invalid cron expression '{text}': {e}"))
}

impl CronSpec {
    fn at(&self, ms: i64) -> Option<chrono::DateTime<Tz>> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&self.tz))
    }

    /// The first tick strictly after `ms`; Ok(None) when there is none (ever).
    pub fn next_after(&self, ms: i64) -> Result<Option<i64>, String> {
        let start = self
            .at(ms)
            .ok_or_else(|| format!("time {ms} is out of range"))?;
        match self.cron.find_next_occurrence(&start, false) {
            Ok(t) => Ok(Some(t.timestamp_millis())),
            Err(CronError::TimeSearchLimitExceeded) => Ok(None),
            Err(e) => Err(format!("cron '{}': {e}", self.text)),
        }
    }

    /// The last tick at or before `ms`.
    pub fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        let start = self.at(ms)?;
        self.cron
            .find_previous_occurrence(&start, true)
            .ok()
            .map(|t| t.timestamp_millis())
            .filter(|t| *t <= ms)
    }

    /// The last tick strictly before `ms`.
    pub fn before(&self, ms: i64) -> Option<i64> {
        // `ms` is a tick (whole seconds); exclusive steps back one second.
        let start = self.at(ms)?;
        self.cron
            .find_previous_occurrence(&start, false)
            .ok()
            .map(|t| t.timestamp_millis())
            .filter(|t| *t < ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMode {
    One,
    Any,
    All,
}

impl OnMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OnMode::One => "one",
            OnMode::Any => "any",
            OnMode::All => "all",
        }
    }
}

/// `schedule.on`: the filters, their `correlate.expect` evaluated once.
#[derive(Debug, Clone)]
pub struct OnSpec {
    pub mode: OnMode,
    pub filters: Vec<OnFilter>,
    pub read: ReadMode,
}

#[derive(Debug, Clone)]
pub struct OnFilter {
    /// The filter as written: its runtime expressions are evaluated on each event
    /// (`data: ${ .temperature > 38 }`), by the function `listen` uses
    /// ([`events::accepts`]). No workflow runs yet, so they have no arguments (`$input` is
    /// null).
    pub with: Template,
    /// Correlation keys: `from` evaluated on the event, compared with `expect` when given.
    pub correlate: Vec<(String, Expr, Option<Value>)>,
}

impl OnFilter {
    /// Whether the event matches, and its correlation values.
    pub fn matches(&self, event: &Value) -> Option<Map<String, Value>> {
        if !events::accepts(&self.with, event, &Args::default()) {
            return None;
        }
        let mut keys = Map::new();
        for (key, from, expect) in &self.correlate {
            let v = from.eval(event, &()).ok()?;
            if expect.as_ref().is_some_and(|e| *e != v) {
                return None;
            }
            keys.insert(key.clone(), v);
        }
        Some(keys)
    }
}

impl OnSpec {
    /// How an event becomes (part of) the input.
    pub fn read(&self, event: &Value) -> Value {
        match self.read {
            ReadMode::Envelope => event.clone(),
            ReadMode::Data => event.get("data").cloned().unwrap_or(Value::Null),
            ReadMode::Raw => event
                .get("data")
                .or_else(|| event.get("data_base64"))
                .cloned()
                .unwrap_or(Value::Null),
        }
    }
}

/// A workflow's schedule, worked out.
#[derive(Debug, Clone)]
pub struct Plan {
    pub trigger: Trigger,
    pub settings: Settings,
    /// The time zone in effect (the settings', or the server's default).
    pub timezone: String,
}

impl Plan {
    /// Builds the plan of a workflow that has a `schedule`; Err lists what is wrong.
    pub fn build(wf: &Workflow, default_tz: &str) -> Result<Option<Plan>, Vec<String>> {
        // Settings without a schedule are refused when the workflow is loaded.
        let Some(schedule) = &wf.schedule else {
            return Ok(None);
        };
        let settings = wf.kflow.schedule.clone().unwrap_or_default();
        let mut errors = Vec::new();
        let timezone = settings
            .timezone
            .clone()
            .unwrap_or_else(|| default_tz.to_string());
        let tz = match parse_tz(&timezone) {
            Ok(tz) => tz,
            Err(e) => {
                errors.push(e);
                Tz::UTC
            }
        };
        match trigger(schedule, tz) {
            Ok(trigger) if errors.is_empty() => Ok(Some(Plan {
                trigger,
                settings,
                timezone,
            })),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }
}

fn trigger(s: &Schedule, tz: Tz) -> Result<Trigger, Vec<String>> {
    let set: Vec<&str> = [
        ("every", s.every.is_some()),
        ("cron", s.cron.is_some()),
        ("after", s.after.is_some()),
        ("on", s.on.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if set.len() != 1 {
        return Err(vec![format!(
            "schedule: kflow runs a schedule with exactly one of every, cron, after, on (found {})",
            if set.is_empty() {
                "none".to_string()
            } else {
                set.join(", ")
            }
        )]);
    }
    if let Some(text) = &s.cron {
        let cron = parse_cron(text).map_err(|e| vec![format!("schedule.cron: {e}")])?;
        let spec = CronSpec {
            text: text.clone(),
            cron,
            tz,
        };
        // A pattern that matches no date at all (e.g. February 30th) never fires.
        let now = Utc::now().timestamp_millis();
        match spec.next_after(now) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(vec![format!(
                    "schedule.cron: '{text}' never fires (no date matches it)"
                )]);
            }
            Err(e) => return Err(vec![format!("schedule.cron: {e}")]),
        }
        return Ok(Trigger::Cron(Box::new(spec)));
    }
    if let Some(d) = &s.every {
        let ms = duration(d, "schedule.every")?;
        if ms <= 0 {
            return Err(vec![
                "schedule.every: the interval must be longer than zero".into(),
            ]);
        }
        return Ok(Trigger::Every { ms });
    }
    if let Some(d) = &s.after {
        return Ok(Trigger::After {
            ms: duration(d, "schedule.after")?,
        });
    }
    let Some(on) = &s.on else {
        unreachable!("one of the four is set")
    };
    Ok(Trigger::On(on_spec(on, s.read)?))
}

fn duration(d: &DurationSpec, what: &str) -> Result<i64, Vec<String>> {
    let ms = d
        .millis(&Value::Null, &())
        .map_err(|e| vec![format!("{what}: {e}")])?;
    i64::try_from(ms).map_err(|_| vec![format!("{what}: the duration is too long")])
}

fn on_spec(c: &Consumption, read: ReadMode) -> Result<OnSpec, Vec<String>> {
    let (mode, defs): (OnMode, Vec<&EventFilter>) = match c {
        Consumption::One(f) => (OnMode::One, vec![f]),
        Consumption::Any { filters, .. } => (OnMode::Any, filters.iter().collect()),
        Consumption::All(filters) => (OnMode::All, filters.iter().collect()),
    };
    let mut errors = Vec::new();
    let mut filters = Vec::new();
    for (i, def) in defs.into_iter().enumerate() {
        let with = def.with.clone();
        let mut correlate = Vec::new();
        for (key, corr) in &def.correlate {
            let expect = match &corr.expect {
                Some(t) => match t.eval(&Value::Null, &()) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(format!(
                            "schedule.on: filter {i}: correlate.{key}.expect: {e}"
                        ));
                        continue;
                    }
                },
                None => None,
            };
            correlate.push((key.clone(), corr.from.clone(), expect));
        }
        filters.push(OnFilter { with, correlate });
    }
    if mode == OnMode::All && filters.is_empty() && errors.is_empty() {
        errors.push("schedule.on: 'all' needs at least one filter".into());
    }
    if errors.is_empty() {
        Ok(OnSpec {
            mode,
            filters,
            read,
        })
    } else {
        Err(errors)
    }
}

/// The registration-time check: a schedule kflow cannot run is refused with the reasons.
pub fn check(wf: &Workflow) -> Result<(), Vec<String>> {
    Plan::build(wf, "UTC").map(|_| ())
}

/// Milliseconds as an ISO 8601 duration (`PT1H30M`, `P1DT2H`, `PT0.25S`).
pub fn iso_duration(ms: i64) -> String {
    if ms <= 0 {
        return "PT0S".into();
    }
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (h, rest) = (rest / 3_600_000, rest % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if h > 0 || m > 0 || s > 0 || milli > 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if milli > 0 {
            let frac = format!("{milli:03}");
            out.push_str(&format!("{s}.{}S", frac.trim_end_matches('0')));
        } else if s > 0 {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

/// Epoch milliseconds as RFC 3339 in a time zone (`2026-03-29T03:30:00+02:00`).
pub fn rfc3339_in(ms: i64, timezone: &str) -> String {
    let Some(t) = Utc.timestamp_millis_opt(ms).single() else {
        return String::new();
    };
    match parse_tz(timezone) {
        Ok(tz) => t
            .with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        Err(_) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

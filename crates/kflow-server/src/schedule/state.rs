//! The scheduler's state in a schedule row (`ScheduleRow::state`) and the decisions taken on it.
//! Pure: the caller reads the store (instance statuses) and passes the time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::plan::{CronSpec, Missed, OnMode, OnSpec, Overlap, Plan, Settings, Trigger};

/// One fire of a schedule: an instance to start (at most once: `id` is its instance id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fire {
    pub id: String,
    /// The tick (or the event's arrival) it stands for.
    pub fire_ms: i64,
    pub input: Value,
    /// Instances to cancel first (overlap `cancel`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<String>,
}

/// `on: all` progress: events collected so far, one slot per filter, and the correlation
/// values they fixed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Group {
    pub keys: Map<String, Value>,
    pub events: Vec<Option<Value>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// cron, every, after or on (empty while the plan is in error).
    pub kind: String,
    pub expression: String,
    pub timezone: String,
    pub overlap: Overlap,
    pub missed: Missed,
    pub catchup_max: u32,
    /// The definition's hash and the time zone in effect: a change rebuilds the schedule.
    pub fingerprint: String,
    /// When the schedule was created (the origin of `every`).
    pub created_ms: i64,
    /// Why the schedule cannot fire (bad settings, a cron that never fires, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the last start failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Instances it started that were not seen finished yet (tracked for `after` and for
    /// overlap policies other than `allow`).
    pub running: Vec<String>,
    /// When the last tracked instance finished (`after` counts from there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// Fires waiting for the running instance to finish (overlap `queue`).
    pub queue: Vec<Fire>,
    /// Fires decided and durable, whose instances may not be started yet.
    pub outbox: Vec<Fire>,
    /// `on: all` progress.
    pub groups: Vec<Group>,
    /// Instances started.
    pub fired: u64,
    /// Fires dropped by the overlap policy (`skip`, or a full queue).
    pub skipped: u64,
    /// Ticks missed while the scheduler was not running, and not caught up (`missed: skip`, or
    /// past `catchupMax`); counted up to 100,000 per downtime.
    pub missed_ticks: u64,
}

/// Fires waiting in a queue, at most; more are dropped (and counted in `skipped`).
pub const MAX_QUEUE: usize = 100;
/// `on: all` groups waiting for their other events, at most; the oldest goes first.
pub const MAX_GROUPS: usize = 1000;

impl State {
    pub fn from_value(v: &Value) -> State {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Copies what a plan says (shown by the API) into the state.
    pub fn describe(&mut self, plan: &Plan) {
        self.kind = plan.trigger.kind().to_string();
        self.expression = plan.trigger.expression();
        self.timezone = plan.timezone.clone();
        self.overlap = plan.settings.overlap;
        self.missed = plan.settings.missed;
        self.catchup_max = plan.settings.catchup_max;
        self.error = None;
    }

    pub fn busy(&self) -> bool {
        !self.running.is_empty() || !self.outbox.is_empty()
    }

    /// Applies the overlap policy to a new fire.
    pub fn offer(&mut self, overlap: Overlap, mut fire: Fire) {
        match overlap {
            Overlap::Allow => self.outbox.push(fire),
            Overlap::Skip if self.busy() => self.skipped += 1,
            Overlap::Queue if self.busy() => {
                if self.queue.len() < MAX_QUEUE {
                    self.queue.push(fire);
                } else {
                    self.skipped += 1;
                }
            }
            Overlap::Cancel => {
                // Fires not started yet are dropped; their ids are cancelled too in case they
                // were started just before a crash.
                let mut cancel: Vec<String> = std::mem::take(&mut self.running);
                for f in std::mem::take(&mut self.outbox) {
                    cancel.extend(f.cancel);
                    cancel.push(f.id);
                }
                cancel.dedup();
                fire.cancel = cancel;
                self.outbox.push(fire);
            }
            Overlap::Skip | Overlap::Queue => self.outbox.push(fire),
        }
    }

    /// Forgets tracked instances that finished; `status(id)` is None for an unknown instance,
    /// else Some((finished, updated_ms)).
    pub fn reconcile(&mut self, status: &HashMap<String, Option<(bool, i64)>>) {
        let mut finished_ms = self.finished_ms;
        self.running.retain(|id| match status.get(id) {
            Some(Some((false, _))) => true,
            Some(Some((true, at))) => {
                finished_ms = Some(finished_ms.map_or(*at, |f| f.max(*at)));
                false
            }
            Some(None) => false,
            None => true, // not looked up: keep
        });
        self.finished_ms = finished_ms;
    }
}

/// Whether the schedule keeps track of the instances it started.
pub fn tracks(plan: &Plan) -> bool {
    plan.settings.overlap != Overlap::Allow || matches!(plan.trigger, Trigger::After { .. })
}

/// The instance id of a tick: a UUID v7 whose time is the tick's, the rest a hash of the
/// workflow and the tick, so that the same tick always names the same instance.
pub fn tick_id(ns: &str, name: &str, fire_ms: i64) -> String {
    let digest = Sha256::digest(format!("kflow-schedule\0{ns}\0{name}\0{fire_ms}").as_bytes());
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(fire_ms.max(0) as u64, &bytes)
        .into_uuid()
        .to_string()
}

/// The ticks of a timed trigger.
pub enum Ticks<'a> {
    Cron(&'a CronSpec),
    /// `origin + k * ms`, k >= 1.
    Every {
        origin: i64,
        ms: i64,
    },
}

impl Ticks<'_> {
    pub fn of(trigger: &Trigger, origin: i64) -> Option<Ticks<'_>> {
        match trigger {
            Trigger::Cron(c) => Some(Ticks::Cron(c)),
            Trigger::Every { ms } => Some(Ticks::Every { origin, ms: *ms }),
            _ => None,
        }
    }

    pub fn next_after(&self, t: i64) -> Result<Option<i64>, String> {
        match self {
            Ticks::Cron(c) => c.next_after(t),
            Ticks::Every { origin, ms } => {
                let k = if t < *origin {
                    1
                } else {
                    (t - origin) / ms + 1
                };
                Ok(origin.checked_add(k.saturating_mul(*ms)))
            }
        }
    }

    pub fn latest_at_or_before(&self, t: i64) -> Option<i64> {
        match self {
            Ticks::Cron(c) => c.latest_at_or_before(t),
            Ticks::Every { origin, ms } => {
                if t < origin + ms {
                    None
                } else {
                    Some(origin + (t - origin) / ms * ms)
                }
            }
        }
    }

    pub fn before(&self, t: i64) -> Option<i64> {
        match self {
            Ticks::Cron(c) => c.before(t),
            Ticks::Every { .. } => self.latest_at_or_before(t - 1),
        }
    }
}

/// The ticks to fire now, oldest first, and the next tick to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub fires: Vec<i64>,
    pub next: Option<i64>,
    /// Ticks due and not fired (the missed policy dropped them), at most 100,000 counted.
    pub missed: u64,
}

/// Which ticks fire at `now` when `next_fire` was due: the latest tick fires if it is at most
/// `grace_ms` late; the earlier ones (and the latest, if later than that) were missed, and
/// follow the missed policy.
pub fn due(
    ticks: &Ticks<'_>,
    settings: &Settings,
    next_fire: i64,
    now: i64,
    grace_ms: i64,
) -> Result<Due, String> {
    let next = ticks.next_after(now)?;
    if next_fire > now {
        return Ok(Due {
            fires: Vec::new(),
            next: Some(next_fire),
            missed: 0,
        });
    }
    let Some(latest) = ticks.latest_at_or_before(now).filter(|t| *t >= next_fire) else {
        return Ok(Due {
            fires: Vec::new(),
            next,
            missed: 0,
        });
    };
    let on_time = now - latest <= grace_ms;
    let catchup = match settings.missed {
        Missed::Skip => 0,
        Missed::Catchup => settings.catchup_max as usize,
    };
    let mut fires = Vec::new();
    let mut t = if on_time {
        fires.push(latest);
        ticks.before(latest)
    } else {
        Some(latest)
    };
    let mut caught = 0;
    while caught < catchup {
        match t {
            Some(x) if x >= next_fire => {
                fires.push(x);
                caught += 1;
                t = ticks.before(x);
            }
            _ => break,
        }
    }
    // The ticks left, back to the one that was due: missed.
    let mut missed = 0u64;
    while let Some(x) = t.filter(|x| *x >= next_fire) {
        missed += 1;
        if missed >= 100_000 {
            break;
        }
        t = ticks.before(x);
    }
    fires.reverse();
    Ok(Due {
        fires,
        next,
        missed,
    })
}

/// What an event does to an `on` schedule: the inputs of the fires it completes (usually
/// zero or one). Mutates the `all` groups.
pub fn on_event(spec: &OnSpec, state: &mut State, event: &Value) -> Vec<Value> {
    match spec.mode {
        OnMode::One | OnMode::Any => {
            let hit = (spec.mode == OnMode::Any && spec.filters.is_empty())
                || spec.filters.iter().any(|f| f.matches(event).is_some());
            if hit {
                vec![Value::Array(vec![spec.read(event)])]
            } else {
                Vec::new()
            }
        }
        OnMode::All => {
            let n = spec.filters.len();
            let mut first_match: Option<(usize, Map<String, Value>)> = None;
            for (i, f) in spec.filters.iter().enumerate() {
                let Some(keys) = f.matches(event) else {
                    continue;
                };
                // The oldest group that still waits for this filter and agrees on the keys.
                let slot = state.groups.iter().position(|g| {
                    g.events.get(i).is_some_and(Option::is_none)
                        && keys
                            .iter()
                            .all(|(k, v)| g.keys.get(k).is_none_or(|have| have == v))
                });
                if let Some(gi) = slot {
                    let g = &mut state.groups[gi];
                    g.events[i] = Some(event.clone());
                    g.keys.extend(keys);
                    if g.events.iter().all(Option::is_some) {
                        let g = state.groups.remove(gi);
                        let input = g
                            .events
                            .into_iter()
                            .map(|e| spec.read(&e.unwrap_or(Value::Null)))
                            .collect();
                        return vec![Value::Array(input)];
                    }
                    return Vec::new();
                }
                if first_match.is_none() {
                    first_match = Some((i, keys));
                }
            }
            let Some((i, keys)) = first_match else {
                return Vec::new();
            };
            let mut events = vec![None; n];
            events[i] = Some(event.clone());
            if n == 1 {
                return vec![Value::Array(vec![spec.read(event)])];
            }
            if state.groups.len() >= MAX_GROUPS {
                state.groups.remove(0);
            }
            state.groups.push(Group { keys, events });
            Vec::new()
        }
    }
}

//! `emit` and `listen` tasks.

use serde_json::Value;

use kflow_dsl::model::{Consumption, EmitDef, EventFilter, ListenDef, NamedTask, ReadMode, Until};

use kflow_dsl::expr::ExprError;

use super::{Cx, KindResult, Outcome, Scope, expr_err, run_list};
use crate::effect::Effect;
use crate::error::WfError;
use crate::events::{self, Args, accepts};

pub(super) async fn emit(
    cx: &Cx,
    named: &NamedTask,
    e: &EmitDef,
    input: &Value,
    scope: &Scope<'_>,
) -> KindResult {
    let event = cx.eval(&e.event, input, scope)?;
    if !event.is_object() {
        return Err(WfError::validation(format!(
            "emit: the event must be an object, got {event}"
        )));
    }
    let out = cx
        .sh
        .effect(&named.reference, Effect::Emit { event })
        .await?;
    Ok((out, None, None))
}

/// A filter, with its correlation expectations evaluated.
struct Filter<'a> {
    def: &'a EventFilter,
    /// `correlate.<key>.expect`, evaluated once when listening starts.
    expect: Vec<Option<Value>>,
}

/// Progress of one consumption strategy over the events seen so far.
struct Progress<'a> {
    kind: Kind,
    filters: Vec<Filter<'a>>,
    /// For `all`: which filters have been satisfied.
    hit: Vec<bool>,
    /// Correlation values fixed by the first correlated event.
    correlation: serde_json::Map<String, Value>,
}

#[derive(PartialEq, Clone, Copy)]
enum Kind {
    All,
    Any,
    One,
}

impl<'a> Progress<'a> {
    fn new(
        cx: &Cx,
        c: &'a Consumption,
        input: &Value,
        scope: &Scope<'_>,
    ) -> Result<Progress<'a>, WfError> {
        let (kind, defs): (Kind, Vec<&EventFilter>) = match c {
            Consumption::All(f) => (Kind::All, f.iter().collect()),
            Consumption::Any { filters, .. } => (Kind::Any, filters.iter().collect()),
            Consumption::One(f) => (Kind::One, vec![f]),
        };
        let filters = defs
            .into_iter()
            .map(|def| {
                // dsl-reference.md, Correlation: `expect` is "a constant or a runtime
                // expression": a task expression, evaluated on the task input.
                let expect = def
                    .correlate
                    .values()
                    .map(|c| {
                        c.expect
                            .as_ref()
                            .map(|t| cx.eval(t, input, scope))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>, WfError>>()?;
                Ok(Filter { def, expect })
            })
            .collect::<Result<Vec<_>, WfError>>()?;
        let hit = vec![false; filters.len()];
        Ok(Progress {
            kind,
            filters,
            hit,
            correlation: Default::default(),
        })
    }

    /// Offers an event; returns whether it was consumed. The filters read `args`, the values
    /// the host has too (see `events`), so the host hands over exactly the events they take.
    fn offer(&mut self, scope: &Scope<'_>, args: &Args, ev: &Value) -> Result<bool, WfError> {
        if self.kind == Kind::Any && self.filters.is_empty() {
            // "If empty, listens to all incoming events."
            return Ok(true);
        }
        for i in 0..self.filters.len() {
            if self.kind == Kind::All && self.hit[i] {
                continue;
            }
            if !accepts(&self.filters[i].def.with, ev, args) || !self.correlates(scope, i, ev)? {
                continue;
            }
            self.hit[i] = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// dsl-reference.md, Correlation: `from` extracts the value from the event; it must equal
    /// `expect` when set, else the first extracted value becomes the expectation.
    fn correlates(&mut self, scope: &Scope<'_>, i: usize, ev: &Value) -> Result<bool, WfError> {
        let f = &self.filters[i];
        let mut fixed = Vec::new();
        for ((key, corr), expect) in f.def.correlate.iter().zip(&f.expect) {
            let value = match corr.from.eval_with_limits(ev, scope, &super::EXPR_LIMITS) {
                Ok(v) => v,
                // An event the expression cannot read does not correlate.
                Err(e @ ExprError::Refused { .. }) => return Err(expr_err(e)),
                Err(_) => return Ok(false),
            };
            if let Some(expect) = expect
                && *expect != value
            {
                return Ok(false);
            }
            match self.correlation.get(key) {
                Some(v) if *v != value => return Ok(false),
                Some(_) => {}
                None => fixed.push((key.clone(), value)),
            }
        }
        self.correlation.extend(fixed);
        Ok(true)
    }

    fn satisfied(&self) -> bool {
        match self.kind {
            Kind::All => self.hit.iter().all(|h| *h),
            Kind::Any | Kind::One => {
                self.hit.iter().any(|h| *h) || (self.kind == Kind::Any && self.filters.is_empty())
            }
        }
    }
}

fn read(mode: ReadMode, ev: &Value) -> Value {
    match mode {
        ReadMode::Envelope => ev.clone(),
        ReadMode::Data | ReadMode::Raw => ev.get("data").cloned().unwrap_or(Value::Null),
    }
}

pub(super) async fn listen(
    cx: &Cx,
    named: &NamedTask,
    l: &ListenDef,
    input: &Value,
    scope: &Scope<'_>,
) -> KindResult {
    let mut main = Progress::new(cx, &l.to, input, scope)?;
    let (until_expr, mut until_events) = match &l.to {
        Consumption::Any {
            until: Some(Until::Expr(e)),
            ..
        } => (Some(e), None),
        Consumption::Any {
            until: Some(Until::Events(c)),
            ..
        } => (None, Some(Progress::new(cx, c, input, scope)?)),
        _ => (None, None),
    };
    // The filters as written and the values their expressions read, taken now: the host
    // decides with them what to deliver, and so does `offer` below (`events`). A read of a
    // secret the workflow may not see is refused here, before anything is subscribed.
    let defs = || {
        let until = until_events.iter().flat_map(|u| u.filters.iter());
        main.filters.iter().chain(until).map(|f| &f.def.with)
    };
    let args = events::bind(defs(), scope).map_err(expr_err)?;
    let mut filters: Vec<Value> = main
        .filters
        .iter()
        .map(|f| events::source(&f.def.with))
        .collect();
    if main.filters.is_empty() {
        filters.push(Value::Object(Default::default()));
    }
    if let Some(u) = &until_events {
        filters.extend(u.filters.iter().map(|f| events::source(&f.def.with)));
    }
    let effect = events::listen_effect(filters, args.clone());
    let mut sub = cx.sh.effect(&named.reference, effect);
    let mut consumed: Vec<Value> = Vec::new();
    let mut outputs: Vec<Value> = Vec::new();
    let bounded_until = until_expr.is_some() || until_events.is_some();
    loop {
        let ev = sub.next_event().await?;
        // dsl-reference.md, Listen: "Events consumed by an until clause should not be
        // included in the task's output."
        if let Some(u) = until_events.as_mut()
            && u.offer(scope, &args, &ev)?
        {
            if u.satisfied() {
                break;
            }
            continue;
        }
        if !main.offer(scope, &args, &ev)? {
            continue;
        }
        let item = read(l.read, &ev);
        if let Some(fe) = &l.foreach {
            // Each event is processed before the next is taken (FIFO). The task's output holds
            // the events, each transformed by `foreach.output.as` when that is set.
            let icx = cx
                .with_var(&fe.item, item.clone())
                .with_var(&fe.at, Value::from(consumed.len()));
            let result = match run_list(icx.clone(), fe.do_.clone(), item.clone()).await? {
                Outcome::Done(v) | Outcome::End(v) => v,
            };
            let scope = icx.scope(&item, None);
            let out = match fe.output.as_ref().and_then(|o| o.as_.as_ref()) {
                Some(t) => icx.eval(t, &result, &scope)?,
                None => item.clone(),
            };
            if let Some(t) = fe.export.as_ref().and_then(|e| e.as_.as_ref()) {
                let ctx = icx.eval(t, &out, &scope)?;
                cx.sh.lock().context = ctx;
            }
            outputs.push(out);
        }
        consumed.push(item);
        if let Some(e) = until_expr {
            let arr = Value::Array(consumed.clone());
            if cx.eval_bool(e, &arr, scope)? {
                break;
            }
            continue;
        }
        if !bounded_until && main.satisfied() {
            break;
        }
    }
    drop(sub);
    let out = if l.foreach.is_some() {
        outputs
    } else {
        consumed
    };
    Ok((Value::Array(out), None, None))
}

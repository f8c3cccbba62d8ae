//! Control-flow task kinds: do, for, fork, switch, try (with retries), raise.

use std::collections::BTreeMap;
use std::task::Poll;

use serde_json::{Value, json};

use kflow_dsl::errors;
use kflow_dsl::model::{
    Backoff, Catch, ErrorDef, Flow, ForDef, ForkDef, NamedTask, Parallelism, RetryPolicy,
    SwitchCase, TryDef,
};

use super::{Cx, KindResult, Outcome, Scope, run_list};
use crate::error::WfError;
use crate::exec::{BoxFut, first_ok, join_all};
use crate::notice::NoticeKind;

/// A nested list's outcome as a task result: `then: end` inside it ends the workflow.
pub(super) fn nested(o: Outcome) -> KindResult {
    Ok(match o {
        Outcome::Done(v) => (v, None, None),
        Outcome::End(v) => (v, Some(Flow::End), None),
    })
}

pub(super) async fn for_(cx: &Cx, f: &ForDef, input: &Value, scope: &Scope<'_>) -> KindResult {
    let items = match cx.eval_expr(&f.in_, input, scope)? {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        Value::Object(m) => m.into_iter().map(|(_, v)| v).collect(),
        other => {
            return Err(WfError::expression(format!(
                "'for.in' ({}) must produce an array, got {other}",
                f.in_.source()
            )));
        }
    };
    if let Some(p) = f.parallel {
        return for_parallel(cx, f, items, input, p).await;
    }
    let mut data = input.clone();
    for (i, item) in items.into_iter().enumerate() {
        let icx = cx.with_var(&f.each, item).with_var(&f.at, Value::from(i));
        if let Some(w) = &f.while_ {
            let scope = Scope {
                cx: &icx,
                input: scope.input,
                output: None,
                task: scope.task,
                authorization: None,
            };
            if !icx.eval_bool(w, &data, &scope)? {
                break;
            }
        }
        match run_list(icx, f.do_.clone(), data).await? {
            Outcome::Done(v) => data = v,
            Outcome::End(v) => return Ok((v, Some(Flow::End), None)),
        }
    }
    Ok((data, None, None))
}

/// A `for` with `parallel:` (kflow extension): every iteration runs the `do` list on the for
/// task's input; at most `limit` iterations are in progress, polled in item order, and when
/// one finishes the next item starts. The output is the array of the iterations' outputs in
/// item order. The first iteration to fault (in poll order) drops the others, which cancels
/// their effects, and faults the task. A `then: end` inside an iteration ends that iteration
/// only.
async fn for_parallel(
    cx: &Cx,
    f: &ForDef,
    items: Vec<Value>,
    input: &Value,
    p: Parallelism,
) -> KindResult {
    let n = items.len();
    let limit = match p {
        Parallelism::Unbounded => n,
        Parallelism::Max(m) => m.max(1),
    };
    let mut items = items.into_iter().enumerate();
    let mut outs: Vec<Value> = vec![Value::Null; n];
    let mut active: BTreeMap<usize, BoxFut<Result<super::Outcome, WfError>>> = BTreeMap::new();
    let mut started = 0usize;
    let outputs = std::future::poll_fn(move |pcx| {
        loop {
            while active.len() < limit {
                let Some((i, item)) = items.next() else { break };
                let icx = cx.with_var(&f.each, item).with_var(&f.at, Value::from(i));
                active.insert(i, run_list(icx, f.do_.clone(), input.clone()));
                started += 1;
            }
            let mut finished = false;
            let order: Vec<usize> = active.keys().copied().collect();
            for i in order {
                let Some(fut) = active.get_mut(&i) else {
                    continue;
                };
                match fut.as_mut().poll(pcx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(o)) => {
                        outs[i] = o.into_value();
                        active.remove(&i);
                        finished = true;
                    }
                    Poll::Ready(Err(e)) => {
                        active.clear();
                        return Poll::Ready(Err(e));
                    }
                }
            }
            if active.is_empty() && started == n {
                return Poll::Ready(Ok(std::mem::take(&mut outs)));
            }
            // A finished iteration frees a slot for the next item.
            if !finished || started == n {
                return Poll::Pending;
            }
        }
    })
    .await?;
    Ok((Value::Array(outputs), None, None))
}

pub(super) async fn fork(cx: &Cx, f: &ForkDef, input: &Value) -> KindResult {
    let branches: Vec<BoxFut<Result<Value, WfError>>> = (0..f.branches.len())
        .map(|i| {
            let (cx, list, input) = (cx.clone(), f.branches.clone(), input.clone());
            // A branch's own `then:` cannot leave the branch: its flow is ignored.
            let fut: BoxFut<Result<Value, WfError>> =
                Box::pin(async move { Ok(super::run_task(cx, list, i, input).await?.0) });
            fut
        })
        .collect();
    if f.compete {
        Ok((first_ok(branches).await?, None, None))
    } else {
        Ok((Value::Array(join_all(branches).await?), None, None))
    }
}

pub(super) fn switch(
    cx: &Cx,
    cases: &[SwitchCase],
    input: &Value,
    scope: &Scope<'_>,
) -> KindResult {
    // dsl-reference.md, Switch Case: a case without `when` "will be matched by default if no
    // other case match", wherever it is written; the cases with a condition are tried in
    // order, the first that holds wins. When none holds and there is no default case, the
    // switch task goes on with its own `then` (the task's flow directive, `continue` if unset).
    for case in cases {
        if let Some(w) = &case.when
            && cx.eval_bool(w, input, scope)?
        {
            return Ok((input.clone(), Some(case.then.clone()), None));
        }
    }
    let default = cases.iter().find(|c| c.when.is_none());
    Ok((input.clone(), default.map(|c| c.then.clone()), None))
}

pub(super) fn raise(
    cx: &Cx,
    named: &NamedTask,
    def: &ErrorDef,
    input: &Value,
    scope: &Scope<'_>,
) -> Result<WfError, WfError> {
    let text = |t: &Option<kflow_dsl::template::Template>| -> Result<Option<String>, WfError> {
        Ok(match t {
            None => None,
            Some(t) => match cx.eval(t, input, scope)? {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            },
        })
    };
    let type_ = text(&Some(def.type_.clone()))?.unwrap_or_default();
    let status = match cx.eval(&def.status, input, scope)? {
        Value::Number(n) if n.as_i64().is_some() => n.as_i64().unwrap_or_default(),
        Value::String(s) if s.parse::<i64>().is_ok() => s.parse().unwrap_or_default(),
        other => {
            return Err(WfError::validation(format!(
                "raise: error 'status' must be an integer, got {other}"
            )));
        }
    };
    Ok(WfError {
        type_,
        status,
        title: text(&def.title)?,
        detail: text(&def.detail)?,
        instance: Some(text(&def.instance)?.unwrap_or_else(|| named.reference.clone())),
    })
}

/// Whether `catch` applies to `err` (static filter, then `when` / `exceptWhen`).
fn catches(cx: &Cx, c: &Catch, err: &WfError, input: &Value) -> Result<bool, WfError> {
    if let Some(f) = &c.errors
        && (f
            .type_
            .as_deref()
            .is_some_and(|t| !errors::same_type(t, &err.type_))
            || f.status.is_some_and(|s| s != err.status)
            || f.instance
                .as_ref()
                .is_some_and(|i| Some(i) != err.instance.as_ref())
            || f.title
                .as_ref()
                .is_some_and(|t| Some(t) != err.title.as_ref())
            || f.detail
                .as_ref()
                .is_some_and(|d| Some(d) != err.detail.as_ref()))
    {
        return Ok(false);
    }
    let ev = err.to_value();
    let ecx = cx.with_var(&c.as_, ev.clone());
    let scope = ecx.scope(input, None);
    if let Some(w) = &c.when
        && !ecx.eval_bool(w, &ev, &scope)?
    {
        return Ok(false);
    }
    if let Some(w) = &c.except_when
        && ecx.eval_bool(w, &ev, &scope)?
    {
        return Ok(false);
    }
    Ok(true)
}

/// The delay before retry number `attempt` (1-based), in ms; `None` when the policy says stop.
fn retry_delay(
    cx: &Cx,
    r: &RetryPolicy,
    err: &WfError,
    attempt: u64,
    elapsed_ms: i64,
    input: &Value,
) -> Result<Option<u64>, WfError> {
    if r.limit_attempts.is_some_and(|max| attempt > max) {
        return Ok(None);
    }
    let ev = err.to_value();
    let ecx = cx.with_var("error", ev.clone());
    let scope = ecx.scope(input, None);
    if let Some(w) = &r.when
        && !ecx.eval_bool(w, &ev, &scope)?
    {
        return Ok(None);
    }
    if let Some(w) = &r.except_when
        && ecx.eval_bool(w, &ev, &scope)?
    {
        return Ok(None);
    }
    let ms = |d: &kflow_dsl::duration::DurationSpec| cx.millis(d, input, &scope);
    let base = match &r.delay {
        Some(d) => ms(d)?,
        None => 0,
    };
    let mut delay = match r.backoff {
        Backoff::Constant => base,
        Backoff::Linear => base.saturating_mul(attempt),
        Backoff::Exponential => base.saturating_mul(
            1u64.checked_shl((attempt - 1).min(62) as u32)
                .unwrap_or(u64::MAX),
        ),
    };
    if let Some((from, to)) = &r.jitter {
        let (lo, hi) = (ms(from)?, ms(to)?);
        if hi > lo {
            delay = delay.saturating_add(lo + ((hi - lo) as f64 * cx.sh.random()) as u64);
        } else {
            delay = delay.saturating_add(lo);
        }
    }
    if let Some(limit) = &r.limit_duration
        && elapsed_ms.max(0) as u64 + delay > ms(limit)?
    {
        return Ok(None);
    }
    Ok(Some(delay))
}

pub(super) async fn try_(cx: &Cx, named: &NamedTask, t: &TryDef, input: &Value) -> KindResult {
    let started = cx.sh.now();
    let mut attempt: u64 = 0;
    loop {
        let attempt_run = run_list(cx.clone(), t.try_.clone(), input.clone());
        let result = match t
            .catch
            .retry
            .as_ref()
            .and_then(|r| r.limit_attempt_duration.as_ref())
        {
            None => attempt_run.await,
            Some(d) => {
                let ms = cx.millis(d, input, &cx.scope(input, None))?;
                match crate::exec::race(attempt_run, cx.sleep(&named.reference, ms)).await {
                    crate::exec::Either::Left(r) => r,
                    crate::exec::Either::Right(_) => Err(WfError::timeout(format!(
                        "attempt did not finish within {ms} ms"
                    ))
                    .at(&named.reference)),
                }
            }
        };
        let err = match result {
            Ok(o) => return nested(o),
            Err(e) => e,
        };
        if !catches(cx, &t.catch, &err, input)? {
            return Err(err);
        }
        if let Some(r) = &t.catch.retry {
            attempt += 1;
            let elapsed = cx.sh.now() - started;
            if let Some(delay) = retry_delay(cx, r, &err, attempt, elapsed, input)? {
                cx.notice(NoticeKind::TaskRetried, Some(named), Some(json!(attempt)));
                if delay > 0 {
                    cx.sleep(&named.reference, delay).await?;
                }
                continue;
            }
            // Retries exhausted: the error is handled only when the catch has a `do`.
            if t.catch.do_.is_none() {
                return Err(err);
            }
        }
        let (out, flow, auth) = match &t.catch.do_ {
            None => (input.clone(), None, None),
            Some(list) => {
                let ecx = cx.with_var(&t.catch.as_, err.to_value());
                nested(run_list(ecx, list.clone(), input.clone()).await?)?
            }
        };
        // `then: end` inside catch.do wins; otherwise catch.then, if any, says where to go.
        return Ok((out, flow.or_else(|| t.catch.then.clone()), auth));
    }
}

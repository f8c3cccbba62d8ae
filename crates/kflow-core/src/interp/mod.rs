//! The interpreter: runs task lists the way dsl.md's "Task Flow" and "Data Flow" say.
//!
//! Each task goes through the same steps (`run_task`): `if`, input schema, `input.from`, the
//! task's own work (one module per task kind), `output.as`, output schema, `export.as`, export
//! schema. Task kinds that need the outside world await effects from [`crate::exec`]; nothing
//! here reads a clock or performs IO.

mod call;
mod dag;
mod flow;
mod listen;
mod run;

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use kflow_dsl::duration::{DurationError, DurationSpec};
use kflow_dsl::expr::{Expr, ExprError, Limits, Vars};
use kflow_dsl::model::{DataIn, DataOut, Flow, NamedTask, TaskKind, TaskList, Workflow};
use kflow_dsl::schema::Schema;
use kflow_dsl::template::Template;

use crate::effect::Effect;
use crate::error::WfError;
use crate::exec::{BoxFut, Charge, Either, Sh, race};
use crate::notice::{Notice, NoticeKind};
use crate::time;

/// What stays the same for the whole life of an instance.
pub(crate) struct Env {
    pub wf: Arc<Workflow>,
    pub secrets: Value,
    pub runtime: Value,
    /// `$workflow`: id, definition, raw input, startedAt.
    pub workflow_desc: Value,
}

/// A variable scope: `for` items, caught errors, listen items. Persistent linked frames.
pub(crate) struct Frame {
    name: String,
    value: Value,
    parent: Option<Arc<Frame>>,
}

/// The interpreter's context: shared state, constants, and the current variable scope.
#[derive(Clone)]
pub(crate) struct Cx {
    pub sh: Sh,
    pub env: Arc<Env>,
    frames: Option<Arc<Frame>>,
}

/// How a task list ended.
pub(crate) enum Outcome {
    /// Ran to its end, or a task said `exit`.
    Done(Value),
    /// A task said `then: end`: the workflow ends gracefully with this output.
    End(Value),
}

impl Outcome {
    pub fn into_value(self) -> Value {
        match self {
            Outcome::Done(v) | Outcome::End(v) => v,
        }
    }
}

/// Per-task information for expression arguments.
pub(crate) struct TaskInfo<'a> {
    pub named: &'a NamedTask,
    pub raw_input: &'a Value,
    pub raw_output: Option<&'a Value>,
    pub started_ms: i64,
}

/// The variables visible to one evaluation.
pub(crate) struct Scope<'a> {
    pub cx: &'a Cx,
    pub input: Option<&'a Value>,
    pub output: Option<&'a Value>,
    pub task: Option<&'a TaskInfo<'a>>,
    pub authorization: Option<&'a Value>,
}

impl Vars for Scope<'_> {
    fn var(&self, name: &str) -> Option<Cow<'_, Value>> {
        let env = &self.cx.env;
        match name {
            "context" => Some(Cow::Owned(self.cx.sh.lock().context.clone())),
            "input" => self.input.map(Cow::Borrowed),
            "output" => self.output.map(Cow::Borrowed),
            "secrets" => Some(Cow::Owned(visible_secrets(env))),
            "workflow" => Some(Cow::Borrowed(&env.workflow_desc)),
            "runtime" => Some(Cow::Borrowed(&env.runtime)),
            "authorization" => self.authorization.map(Cow::Borrowed),
            "task" => self.task.map(|t| {
                let definition = env
                    .wf
                    .definition
                    .pointer(&t.named.reference)
                    .cloned()
                    .unwrap_or(Value::Null);
                Cow::Owned(json!({
                    "name": t.named.name,
                    "reference": t.named.reference,
                    "definition": definition,
                    "input": t.raw_input,
                    "output": t.raw_output,
                    "startedAt": time::descriptor(t.started_ms),
                }))
            }),
            other => {
                let mut f = self.cx.frames.as_deref();
                while let Some(frame) = f {
                    if frame.name == other {
                        return Some(Cow::Borrowed(&frame.value));
                    }
                    f = frame.parent.as_deref();
                }
                None
            }
        }
    }

    /// dsl.md, Secret: "If a workflow attempts to access a secret to which it does not have
    /// access rights or which does not exist, runtimes must raise an error with type
    /// .../errors/authorization and status 403." An expression that reads `$secrets.NAME`
    /// (a literal name) is refused before it runs when NAME is not declared in `use.secrets`
    /// or has no value on this host; see [`expr_err`].
    fn check_key(&self, name: &str, key: &str) -> Result<(), String> {
        if name == "secrets" {
            check_secret(&self.cx.env, key)?;
        }
        Ok(())
    }
}

/// `$secrets`: the configured values of the secrets the workflow declares in `use.secrets`,
/// and nothing else (a workflow never sees a secret it did not declare).
fn visible_secrets(env: &Env) -> Value {
    let mut out = Map::new();
    for name in &env.wf.use_.secrets {
        if let Some(v) = env.secrets.get(name) {
            out.insert(name.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// Whether the workflow may read secret `name`, and the host has a value for it.
pub(crate) fn check_secret(env: &Env, name: &str) -> Result<(), String> {
    if !env.wf.use_.secrets.iter().any(|s| s == name) {
        return Err(format!(
            "the workflow reads secret '{name}', which it does not declare in use.secrets"
        ));
    }
    if env.secrets.get(name).is_none() {
        return Err(format!(
            "secret '{name}' is declared in use.secrets but has no value on this host (not configured)"
        ));
    }
    Ok(())
}

/// The error for a secret the workflow may not read or that does not exist (dsl.md, Secret).
pub(crate) fn secret_error(detail: impl Into<String>) -> WfError {
    WfError::standard(
        kflow_dsl::errors::AUTHORIZATION,
        403,
        "Authorization Error",
        detail,
    )
}

/// The budgets of every expression the interpreter evaluates: deterministic ones only (steps,
/// nesting, sizes; no wall clock), so that an evaluation that fails, fails again in a replay.
pub(crate) const EXPR_LIMITS: Limits = Limits::deterministic();

/// An evaluation's failure as a workflow error: a refused read (only secrets are refused,
/// see `Scope::check_key`) is an authorization error, anything else an expression error.
pub(crate) fn expr_err(e: ExprError) -> WfError {
    match e {
        ExprError::Refused { message, .. } => secret_error(message),
        e => WfError::expression(e.to_string()),
    }
}

/// A duration's failure as a workflow error (as [`expr_err`] for its expression).
pub(crate) fn duration_err(e: DurationError) -> WfError {
    match e {
        DurationError::Expr(e) => expr_err(e),
        e => WfError::expression(e.to_string()),
    }
}

impl Cx {
    pub fn new(sh: Sh, env: Arc<Env>) -> Cx {
        Cx {
            sh,
            env,
            frames: None,
        }
    }

    /// A child scope with `$name` bound to `value`.
    pub fn with_var(&self, name: &str, value: Value) -> Cx {
        Cx {
            sh: self.sh.clone(),
            env: self.env.clone(),
            frames: Some(Arc::new(Frame {
                name: name.to_string(),
                value,
                parent: self.frames.clone(),
            })),
        }
    }

    pub fn scope<'a>(&'a self, input: &'a Value, task: Option<&'a TaskInfo<'a>>) -> Scope<'a> {
        Scope {
            cx: self,
            input: Some(input),
            output: None,
            task,
            authorization: None,
        }
    }

    // Every evaluation of the interpreter goes through these four, with [`EXPR_LIMITS`].

    pub fn eval(&self, t: &Template, on: &Value, scope: &Scope<'_>) -> Result<Value, WfError> {
        t.eval_with_limits(on, scope, &EXPR_LIMITS)
            .map_err(expr_err)
    }

    pub fn eval_expr(&self, e: &Expr, on: &Value, scope: &Scope<'_>) -> Result<Value, WfError> {
        e.eval_with_limits(on, scope, &EXPR_LIMITS)
            .map_err(expr_err)
    }

    pub fn eval_bool(&self, e: &Expr, on: &Value, scope: &Scope<'_>) -> Result<bool, WfError> {
        e.eval_bool_with_limits(on, scope, &EXPR_LIMITS)
            .map_err(expr_err)
    }

    /// A duration, in milliseconds (a timeout, a wait, a retry delay).
    pub fn millis(&self, d: &DurationSpec, on: &Value, scope: &Scope<'_>) -> Result<u64, WfError> {
        d.millis_with_limits(on, scope, &EXPR_LIMITS)
            .map_err(duration_err)
    }

    pub fn notice(&self, kind: NoticeKind, task: Option<&NamedTask>, detail: Option<Value>) {
        let time_ms = self.sh.now();
        self.sh.notice(Notice {
            kind,
            task: task.map(|t| (t.name.clone(), t.reference.clone())),
            time_ms,
            detail,
        });
    }

    /// Counts a task start against the instance's budgets: yields to the host when the turn's
    /// budget is used up; never returns when the life budget is (the instance then faults as
    /// a whole, see `Instance::poll`).
    pub async fn charge(&self, task: &str) -> Result<(), WfError> {
        match self.sh.charge() {
            Charge::Go => Ok(()),
            Charge::Yield => {
                self.sh.effect(task, Effect::Yield).await?;
                // The task that yielded starts in the new turn: it counts there.
                self.sh.lock().turn_tasks += 1;
                Ok(())
            }
            Charge::Exhausted => std::future::pending().await,
        }
    }

    /// Waits `ms` milliseconds of workflow time, durably (a timer effect).
    pub async fn sleep(&self, task: &str, ms: u64) -> Result<(), WfError> {
        let at_ms = self.sh.now().saturating_add(ms.min(i64::MAX as u64) as i64);
        self.sh
            .effect(task, Effect::Timer { at_ms })
            .await
            .map(|_| ())
    }
}

fn check_schema(schema: &Option<Schema>, value: &Value, what: &str) -> Result<(), WfError> {
    if let Some(s) = schema {
        s.check(value).map_err(|errs| {
            WfError::validation(format!(
                "{what} does not match its schema: {}",
                errs.join("; ")
            ))
        })?;
    }
    Ok(())
}

/// Runs the workflow: input validation and transformation, the task list, the output steps.
pub(crate) async fn run_workflow(cx: Cx, raw_input: Value) -> Result<Value, WfError> {
    let wf = cx.env.wf.clone();
    let body = async {
        let input = apply_in(&cx, wf.input.as_ref(), raw_input, None, "workflow input")?;
        cx.sh.lock().context = Value::Object(Map::new());
        let out = run_list(cx.clone(), wf.do_.clone(), input)
            .await?
            .into_value();
        apply_out(&cx, wf.output.as_ref(), out, None, "workflow output")
    };
    match &wf.timeout {
        None => body.await,
        Some(d) => {
            let ms = cx.millis(d, &Value::Null, &cx.scope(&Value::Null, None))?;
            match race(body, cx.sleep("/", ms)).await {
                Either::Left(r) => r,
                Either::Right(_) => Err(WfError::timeout(format!(
                    "the workflow did not finish within {ms} ms"
                ))
                .at("/")),
            }
        }
    }
}

/// `input.schema` then `input.from`.
fn apply_in(
    cx: &Cx,
    d: Option<&DataIn>,
    raw: Value,
    task: Option<&TaskInfo<'_>>,
    what: &str,
) -> Result<Value, WfError> {
    let Some(d) = d else { return Ok(raw) };
    check_schema(&d.schema, &raw, what)?;
    match &d.from {
        None => Ok(raw),
        Some(t) => {
            let scope = Scope {
                cx,
                input: None,
                output: None,
                task,
                authorization: None,
            };
            cx.eval(t, &raw, &scope)
        }
    }
}

/// `output.as` then `output.schema`.
fn apply_out(
    cx: &Cx,
    d: Option<&DataOut>,
    raw: Value,
    scope_input: Option<&Value>,
    what: &str,
) -> Result<Value, WfError> {
    let Some(d) = d else { return Ok(raw) };
    let out = match &d.as_ {
        None => raw,
        Some(t) => {
            let scope = Scope {
                cx,
                input: scope_input,
                output: None,
                task: None,
                authorization: None,
            };
            cx.eval(t, &raw, &scope)?
        }
    };
    check_schema(&d.schema, &out, what)?;
    Ok(out)
}

/// Runs a task list from its first task, following flow directives.
pub(crate) fn run_list(cx: Cx, list: TaskList, input: Value) -> BoxFut<Result<Outcome, WfError>> {
    Box::pin(async move {
        let mut data = input;
        let mut i = 0usize;
        // A `then:` cycle with no exit is bounded by the task budgets (`Cx::charge` in
        // `run_task`): it yields to the host every `tasks_per_turn` tasks and faults the
        // instance past `max_tasks`.
        while i < list.len() {
            let (out, flow) = run_task(cx.clone(), list.clone(), i, data).await?;
            data = out;
            match flow {
                Flow::Continue => i += 1,
                Flow::Goto(j) => i = j,
                Flow::Exit => break,
                Flow::End => return Ok(Outcome::End(data)),
            }
        }
        Ok(Outcome::Done(data))
    })
}

/// Runs one task through all data-flow steps; returns its transformed output and where to go.
pub(crate) fn run_task(
    cx: Cx,
    list: TaskList,
    idx: usize,
    raw_input: Value,
) -> BoxFut<Result<(Value, Flow), WfError>> {
    Box::pin(async move {
        let named = &list[idx];
        cx.charge(&named.reference).await?;
        let task = &named.task;
        let started_ms = cx.sh.now();
        let info = TaskInfo {
            named,
            raw_input: &raw_input,
            raw_output: None,
            started_ms,
        };
        if let Some(cond) = &task.if_ {
            let scope = Scope {
                cx: &cx,
                input: None,
                output: None,
                task: Some(&info),
                authorization: None,
            };
            let run = cx
                .eval_bool(cond, &raw_input, &scope)
                .map_err(|e| e.at(&named.reference))?;
            if !run {
                cx.notice(NoticeKind::TaskSkipped, Some(named), None);
                return Ok((raw_input, Flow::Continue));
            }
        }
        cx.notice(
            NoticeKind::TaskStarted,
            Some(named),
            Some(shown(&raw_input)),
        );
        // A task whose future is dropped before it ends (a fork's losing branch, a timeout, a
        // cancelled or faulted instance) ends with `task.cancelled`: no run stays open.
        let mut open = OpenTask {
            sh: cx.sh.clone(),
            task: Some((named.name.clone(), named.reference.clone())),
        };
        let result = async {
            let input = apply_in(
                &cx,
                task.input.as_ref(),
                raw_input.clone(),
                Some(&info),
                "task input",
            )?;
            let work = run_kind(&cx, named, &input, &info);
            let (raw_out, flow, authorization) = match &task.timeout {
                None => work.await?,
                Some(d) => {
                    let ms = cx.millis(d, &input, &cx.scope(&input, Some(&info)))?;
                    match race(work, cx.sleep(&named.reference, ms)).await {
                        Either::Left(r) => r?,
                        Either::Right(_) => {
                            return Err(WfError::timeout(format!(
                                "task '{}' did not finish within {ms} ms",
                                named.name
                            )));
                        }
                    }
                }
            };
            let info = TaskInfo {
                named,
                raw_input: &raw_input,
                raw_output: Some(&raw_out),
                started_ms,
            };
            let out = match task.output.as_ref().and_then(|o| o.as_.as_ref()) {
                None => raw_out.clone(),
                Some(t) => {
                    let scope = Scope {
                        cx: &cx,
                        input: Some(&input),
                        output: None,
                        task: Some(&info),
                        authorization: authorization.as_ref(),
                    };
                    cx.eval(t, &raw_out, &scope)?
                }
            };
            if let Some(o) = &task.output {
                check_schema(&o.schema, &out, "task output")?;
            }
            if let Some(ex) = &task.export {
                if let Some(t) = &ex.as_ {
                    let scope = Scope {
                        cx: &cx,
                        input: Some(&input),
                        output: Some(&out),
                        task: Some(&info),
                        authorization: authorization.as_ref(),
                    };
                    let ctx = cx.eval(t, &out, &scope)?;
                    check_schema(&ex.schema, &ctx, "exported context")?;
                    cx.sh.lock().context = ctx;
                } else if ex.schema.is_some() {
                    let ctx = cx.sh.lock().context.clone();
                    check_schema(&ex.schema, &ctx, "exported context")?;
                }
            }
            let flow = match flow {
                Some(f) => f,
                None => task.then.clone(),
            };
            Ok((out, flow))
        }
        .await;
        open.task = None;
        match result {
            Ok(v) => {
                cx.notice(NoticeKind::TaskCompleted, Some(named), Some(shown(&v.0)));
                Ok(v)
            }
            Err(e) => {
                let e = e.at(&named.reference);
                cx.notice(NoticeKind::TaskFaulted, Some(named), Some(e.to_value()));
                Err(e)
            }
        }
    })
}

/// What a task kind produced: raw output, an overriding flow directive (switch, `end` from a
/// nested list), and the resolved authorization for `$authorization`.
pub(crate) type KindResult = Result<(Value, Option<Flow>, Option<Value>), WfError>;

async fn run_kind(cx: &Cx, named: &NamedTask, input: &Value, info: &TaskInfo<'_>) -> KindResult {
    let scope = Scope {
        cx,
        input: Some(input),
        output: None,
        task: Some(info),
        authorization: None,
    };
    match &named.task.kind {
        TaskKind::Set(t) => Ok((cx.eval(t, input, &scope)?, None, None)),
        TaskKind::Do(list) => {
            flow::nested(run_list(cx.clone(), list.clone(), input.clone()).await?)
        }
        TaskKind::For(f) => flow::for_(cx, f, input, &scope).await,
        TaskKind::Fork(f) => flow::fork(cx, f, input).await,
        TaskKind::Switch(cases) => flow::switch(cx, cases, input, &scope),
        TaskKind::Try(t) => flow::try_(cx, named, t, input).await,
        TaskKind::Raise(r) => Err(flow::raise(cx, named, &r.error, input, &scope)?),
        TaskKind::Wait(d) => {
            let ms = cx.millis(d, input, &scope)?;
            cx.sleep(&named.reference, ms).await?;
            Ok((input.clone(), None, None))
        }
        TaskKind::Emit(e) => listen::emit(cx, named, e, input, &scope).await,
        TaskKind::Listen(l) => listen::listen(cx, named, l, input, &scope).await,
        TaskKind::Call(c) => call::call(cx, named, c, input, &scope).await,
        TaskKind::Run(r) => run::run(cx, named, r, input, &scope).await,
        TaskKind::Dag(d) => dag::dag(cx, named, d, input).await,
    }
}

/// A task run that has started and not ended: dropped unfinished, it records `task.cancelled`.
struct OpenTask {
    sh: Sh,
    /// (name, reference); `None` once the run ended normally.
    task: Option<(String, String)>,
}

impl Drop for OpenTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let time_ms = self.sh.now();
            self.sh.notice(crate::notice::Notice {
                kind: NoticeKind::TaskCancelled,
                task: Some(task),
                time_ms,
                detail: None,
            });
        }
    }
}

/// The largest task input or output kept whole in a history notice (its JSON text, in bytes).
pub const SHOWN_BYTES: usize = 2048;

/// A task's input or output as its history notice keeps it: whole up to [`SHOWN_BYTES`], else
/// a marker with its size (the history stays small; the value itself flows on).
fn shown(v: &Value) -> Value {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
        _ => {
            let text = v.to_string();
            if text.len() <= SHOWN_BYTES {
                v.clone()
            } else {
                json!({ "$kflow": "too large to keep in history", "bytes": text.len() })
            }
        }
    }
}

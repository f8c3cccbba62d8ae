//! Runtime expressions (jq, evaluated with jaq), compiled once per definition.
//!
//! # Compiling
//!
//! [`Expr::compile`] lexes and parses the filter with jaq's parser, rewrites the syntax tree
//! (see *Runaway protection*), and compiles it, together with the jaq core/std/json
//! definitions it actually calls, into one jaq filter that is `Send + Sync` and shared through
//! an `Arc`. Every `$name` appearing in the filter (found on the syntax tree, so string contents
//! never count) is declared as a global variable; at evaluation each is bound to
//! `vars.var("name")`, or `null` when absent.
//!
//! Builtins that reach the host are removed, so filters using them fail to compile with a
//! "not available" message: `env`/`$ENV`, `input`/`inputs`, `debug`/`stderr`, `halt`/
//! `halt_error`, `$__loc__`/`$__prog_args`, and everything reading the clock or the host time
//! zone (`now`, `localtime`, `strflocaltime`): evaluation is deterministic, a function of the
//! input and the variables only. (jaq has no file access, and module `import`/`include` is
//! not supported.)
//!
//! # Evaluating
//!
//! [`Expr::eval`] converts the input and the variables to jaq values, runs the filter, takes
//! the first output (`null` when there is none) and converts it back: integers stay integers,
//! integral floats within ±2^53 become integers (as jq prints them), non-finite numbers become
//! `null`. A jq error becomes [`ExprError::Eval`] carrying the error message.
//!
//! # Runaway protection
//!
//! jaq has no limits of its own: `def f: 1+f; f` overflows the stack (which aborts the whole
//! process), `[repeat(1)]` or `[range(1e18)]` run until memory is gone. kflow meters
//! evaluation *cooperatively*, from inside the interpreter:
//!
//! * **Ticks.** The compiler rewrites the syntax tree so that a native filter,
//!   `__kflow_tick`, runs at the entry of every user-defined function, of every prelude
//!   definition that can recurse (found by a call-graph analysis: `repeat`, `recurse`,
//!   `while`, `until`, `flatten/1`, …; `map`, `select`, … stay untouched), and at every
//!   `reduce`/`foreach` step; kflow's own `range/3` ticks for every item. The tick is inserted
//!   as `__kflow_tick | body`, which keeps recursive calls in tail position, so jaq's tail-call
//!   optimisation still turns `until`/`while`/`repeat` loops into iterations.
//! * **Nesting.** Every call of a user-defined function (or of a recursive prelude definition)
//!   in *non-tail* position becomes `__kflow_nest(call)`, a native that counts the calls in
//!   progress around running the call and around every pull of one of its outputs. A tail
//!   call does not grow the stack (jaq turns it into a loop), and every recursion that does
//!   grow it passes a non-tail call at each level, so this count is the recursion depth.
//! * **What is checked.** At a tick: the step counter (budget [`Limits::max_steps`]), the stack
//!   (the address of a local variable compared with the one at the start of the run) and,
//!   only when the limits have one, the wall clock every 64 steps ([`Limits::time_budget`]).
//!   At a nested call: the depth (budget [`Limits::max_depth`]). Every unbounded recursion in
//!   jq goes through a function definition, so every recursion level passes both.
//! * **Deterministic budgets.** Steps, depth, result bytes and outputs count what the
//!   evaluation does, so a failing evaluation fails at the same point for the same input on
//!   every machine, under any load, in every replay ([`Limits::deterministic`], the default,
//!   which workflow execution uses). The wall-clock budget does not; it exists for tooling
//!   only. The stack guard measures bytes, which differ between builds (an unoptimised build
//!   takes ~30–55 KiB per recursion level of a small function, an optimised one far less); it
//!   stays as the last resort against a process abort, with a budget that the depth budget
//!   reaches first in every build for recursion through functions of ordinary size (2,000
//!   levels of the heaviest measured function, recursion through `map`, take ~108 MiB of its
//!   128 MiB in an unoptimised build). Only a recursion through an enormous function body can
//!   reach the stack budget first, and then where it fails depends on the build.
//! * **Sticky stop.** A tripped guard fails every later tick and nested call as well, and the
//!   evaluator reports the trip whatever the filter produced afterwards, so `try … catch`
//!   cannot swallow it.
//! * **Inline first, big stack when needed.** A run starts inline on the caller's thread with a
//!   small allowance: 256 KiB of stack growth and 1024 steps. Most expressions never tick at
//!   all, and pay only for the value conversions (and one clock read with a time budget). When the allowance runs
//!   out, the run is abandoned and repeated from the start (jq is pure here, so that is safe)
//!   on a worker thread with a 256 MiB stack (reserved, committed by the OS only as it is
//!   touched) and the full budgets: 128 MiB of stack for recursion, the rest as headroom for the
//!   unmetered recursion over deep values (drop, comparison, `tojson`). Up to two idle workers
//!   are kept for reuse ([`worker`]); one whose stack grew past 8 MiB is let go so that its
//!   memory returns to the system. The caller waits for the worker's reply; no worker is ever
//!   abandoned, since every run ends by itself by checking its budgets. After an evaluation of
//!   an [`Expr`] had to move, the next 15 evaluations of that `Expr` go to a worker directly
//!   instead of repeating the inline attempt.
//! * **Deep syntax.** jaq's parser, compiler and evaluator recurse along the syntax tree, by
//!   several KiB of stack per level in unoptimised builds, without passing a tick. Expressions
//!   longer than 512 bytes or nested deeper than 24 brackets are therefore compiled on a
//!   big-stack thread, and those (or any whose syntax tree is deeper than 40 levels) are always
//!   evaluated on a worker.
//! * **Sizes.** `l * r` is rewritten to a native that refuses to build a string larger than
//!   [`Limits::max_result_bytes`] before allocating it (jaq would abort the process on
//!   `"x" * 1000000000000`). The result conversion counts the estimated serialized size against
//!   the same limit and refuses nesting deeper than 1024 levels; [`Expr::eval_all`] also caps
//!   the number of outputs ([`Limits::max_outputs`]).
//! * **Panics** inside jaq are caught and reported as [`ExprError::Eval`].
//!
//! The rewriting keeps jq semantics: the tests run ~120 filters (paths, updates, folds,
//! `limit`, `label`, `*=`, …) through both plain jaq and kflow and compare the results.
//!
//! What is *not* metered: work between ticks that involves no function call, fold or `range`,
//! i.e. nested iteration over data (`.[] as $a | .[] as $b | …`), and the size of intermediate
//! values built by doubling (`[., .]`, `. + .` in a loop: the loop ticks, but one step can
//! double the memory), or nested deeply on purpose (`reduce range(1e6) as $x (0; [[[.]]])`
//! builds a value whose drop recurses 3 million levels). Such filters are bounded by their
//! input, their length and the step budget, not by a memory budget; expressions are written by
//! workflow authors, and the guards aim at their mistakes (runaway recursion, endless
//! generators, huge ranges, huge repetitions), not at a hostile author.
//!
//! # Cost (see `benches/expr.rs`)
//!
//! Measured in the unoptimised test profile (dependencies at `opt-level = 1`, this crate at 0),
//! so optimised builds are several times faster:
//!
//! * compiling a small filter: 70–90 µs (the prelude is parsed and analysed once per process,
//!   ~1.3 ms);
//! * evaluating `.colors + ["red"]` on a small object: ~6–7 µs in all, of which plain jaq's
//!   run takes ~2.7 µs; the rest is the two conversions (jaq ships no conversion from
//!   `serde_json::Value`, its serde path takes 3.4 µs for the same input) and the guard (a
//!   few stores);
//! * a tick: one native call, 10–30 % on recursion-heavy loops (`until` over 1000 steps:
//!   2.0 ms against 1.6 ms for plain jaq);
//! * a nested call: one native call and one boxed iterator, plus a counter update per output;
//! * moving to a worker: a channel round trip (tens of µs when a worker is idle, a thread
//!   spawn otherwise) plus the abandoned inline part.
//!
//! # For callers
//!
//! * Evaluation is synchronous and can block the calling thread until a budget runs out (a
//!   runaway loop uses up its million steps in 0.1–2.5 s in an unoptimised build); from async
//!   code, consider `spawn_blocking` for expressions that may loop.
//! * The inline part assumes the calling thread has at least ~1 MiB of stack left (the 2 MiB
//!   default of Rust and tokio threads is enough, also in unoptimised builds).
//! * Evaluations of the same [`Expr`] can run concurrently from any number of threads.
//! * [`Expr::eval_with_limits`] / [`Limits`] set the budgets per call.

mod convert;
mod program;
mod runtime;
#[cfg(test)]
mod tests;
mod walk;
mod worker;

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use jaq_core::{Ctx, Exn};
use jaq_json::Val;
use serde_json::Value;

use self::convert::{Oversize, from_val, to_val};
use self::program::Program;
use self::runtime::{Env, Guard, Trip};

/// Supplies the values of `$name` variables (name given without the `$`).
pub trait Vars {
    fn var(&self, name: &str) -> Option<Cow<'_, Value>>;

    /// Asked before an evaluation, for every `$name.key` (or `$name["key"]`) the filter reads
    /// with a literal key, once per pair (see [`Expr::literal_keys`]): `Err(message)` refuses
    /// the evaluation, which then fails with [`ExprError::Refused`] without running. The
    /// interpreter uses it to refuse reads of secrets the workflow may not see.
    fn check_key(&self, _name: &str, _key: &str) -> Result<(), String> {
        Ok(())
    }
}

impl Vars for () {
    fn var(&self, _name: &str) -> Option<Cow<'_, Value>> {
        None
    }
}

/// A compiled jq filter plus the `$variables` it references.
#[derive(Clone)]
pub struct Expr {
    inner: Arc<ExprInner>,
}

struct ExprInner {
    source: String,
    program: Program,
    /// Evaluate on a big stack only (long or deeply nested source).
    big: bool,
    /// Evaluations still to start on a big stack directly because a recent one had to move
    /// there (a hint, updated without synchronisation).
    skip_inline: AtomicU8,
}

/// After an evaluation had to move to a big stack, that many more go there directly before
/// an inline run is tried again.
const SKIP_INLINE_AFTER_ESCALATION: u8 = 15;

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.inner.source)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExprError {
    /// The filter does not compile; the message says where in the expression.
    #[error("invalid jq expression '{expr}': {message}")]
    Compile { expr: String, message: String },
    /// Evaluation failed (jq error, runaway evaluation, too large a result).
    #[error("expression '{expr}' failed: {message}")]
    Eval { expr: String, message: String },
    /// The variables refused a read the filter makes ([`Vars::check_key`]); nothing ran.
    #[error("expression '{expr}' was refused: {message}")]
    Refused { expr: String, message: String },
}

/// Budgets of one evaluation.
///
/// [`Limits::default`] is [`Limits::deterministic`]: every budget counts something the
/// evaluation does (steps, nesting, bytes, outputs), so an evaluation that fails on one machine
/// fails at the same point on every machine and in every replay. Only tooling that never
/// feeds a result into an execution (a linter, a REPL) may add a wall-clock budget with
/// [`Limits::with_time_budget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time an evaluation may take (checked every 64 steps); `None`: no time budget.
    pub time_budget: Option<Duration>,
    /// Steps (function entries of recursion-capable definitions, fold steps, `range` items).
    pub max_steps: u64,
    /// Calls in progress in non-tail position (the recursion depth).
    pub max_depth: u32,
    /// Estimated serialized size of the result, and largest string a `*` may build.
    pub max_result_bytes: usize,
    /// Outputs [`Expr::eval_all`] may collect.
    pub max_outputs: usize,
}

impl Limits {
    /// The budgets of workflow execution: no wall-clock budget, everything else counted.
    pub const fn deterministic() -> Limits {
        Limits {
            time_budget: None,
            max_steps: 1_000_000,
            max_depth: 2_000,
            max_result_bytes: 64 << 20,
            max_outputs: 10_000,
        }
    }

    /// These limits plus a wall-clock budget (tooling only: the outcome then depends on the
    /// machine's speed and load).
    pub const fn with_time_budget(self, budget: Duration) -> Limits {
        Limits {
            time_budget: Some(budget),
            ..self
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::deterministic()
    }
}

/// Longest accepted expression.
const MAX_SOURCE_LEN: usize = 64 << 10;
/// Stack growth and steps allowed inline, on the caller's thread.
const INLINE_STACK_BUDGET: usize = 256 << 10;
const INLINE_STEPS: u64 = 1024;
/// Stack of the big-stack thread, and the part of it recursion may use.
const BIG_STACK: usize = 256 << 20;
const BIG_STACK_BUDGET: usize = 128 << 20;
/// Deepest result accepted.
const MAX_RESULT_DEPTH: usize = 1024;

impl Expr {
    /// Compiles a jq filter (the text inside `${ }`, or a bare expression).
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        let fail = |message: String| ExprError::Compile {
            expr: source.to_string(),
            message,
        };
        if source.len() > MAX_SOURCE_LEN {
            return Err(fail(format!(
                "expression longer than {MAX_SOURCE_LEN} bytes"
            )));
        }
        let big = program::is_big(source);
        let program = if big {
            on_big_stack(|| program::compile(source)).map_err(fail)?
        } else {
            program::compile(source)
        };
        let program = program.map_err(fail)?;
        let big = big || program.deep;
        let skip_inline = AtomicU8::new(0);
        Ok(Expr {
            inner: Arc::new(ExprInner {
                source: source.to_string(),
                program,
                big,
                skip_inline,
            }),
        })
    }

    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Whether the filter may observe its input (`.`, or a filter that runs on it): false
    /// only when it reads nothing but variables and literals. Conservative: unsure is true.
    pub fn reads_input(&self) -> bool {
        self.inner.program.reads_input
    }

    /// Names (without `$`) of the variables the filter references.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.inner.program.globals.iter().map(String::as_str)
    }

    /// The `$name.key` / `$name["key"]` reads with a literal key, as `(name, key)` without
    /// the `$`, in order of first appearance (only for variables the filter does not bind
    /// itself). Reads with a computed key (`$name[$k]`) or of the whole variable are not here.
    pub fn literal_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner
            .program
            .keys
            .iter()
            .map(|(n, k)| (n.as_str(), k.as_str()))
    }

    /// Runs the filter on `input`; the first output is the result (`null` when there is none).
    pub fn eval(&self, input: &Value, vars: &dyn Vars) -> Result<Value, ExprError> {
        self.eval_with_limits(input, vars, &Limits::default())
    }

    /// [`Expr::eval`] with explicit budgets.
    pub fn eval_with_limits(
        &self,
        input: &Value,
        vars: &dyn Vars,
        limits: &Limits,
    ) -> Result<Value, ExprError> {
        let mut out = self.run(input, vars, limits, true)?;
        Ok(out.pop().unwrap_or(Value::Null))
    }

    /// Runs the filter on `input` and collects all its outputs (at most
    /// [`Limits::max_outputs`] with the default limits).
    pub fn eval_all(&self, input: &Value, vars: &dyn Vars) -> Result<Vec<Value>, ExprError> {
        self.eval_all_with_limits(input, vars, &Limits::default())
    }

    /// [`Expr::eval_all`] with explicit budgets.
    pub fn eval_all_with_limits(
        &self,
        input: &Value,
        vars: &dyn Vars,
        limits: &Limits,
    ) -> Result<Vec<Value>, ExprError> {
        self.run(input, vars, limits, false)
    }

    /// Like [`Expr::eval`] but the result must be a boolean (`when`, `if`, `while`, `until`).
    pub fn eval_bool(&self, input: &Value, vars: &dyn Vars) -> Result<bool, ExprError> {
        self.eval_bool_with_limits(input, vars, &Limits::default())
    }

    /// [`Expr::eval_bool`] with explicit budgets.
    pub fn eval_bool_with_limits(
        &self,
        input: &Value,
        vars: &dyn Vars,
        limits: &Limits,
    ) -> Result<bool, ExprError> {
        match self.eval_with_limits(input, vars, limits)? {
            Value::Bool(b) => Ok(b),
            Value::Null => Ok(false),
            other => Err(ExprError::Eval {
                expr: self.inner.source.clone(),
                message: format!("expected a boolean, got {other}"),
            }),
        }
    }

    fn run(
        &self,
        input: &Value,
        vars: &dyn Vars,
        limits: &Limits,
        first_only: bool,
    ) -> Result<Vec<Value>, ExprError> {
        let program = &self.inner.program;
        for (name, key) in &program.keys {
            vars.check_key(name, key)
                .map_err(|message| ExprError::Refused {
                    expr: self.inner.source.clone(),
                    message,
                })?;
        }
        let deadline = limits.time_budget.map(|budget| Instant::now() + budget);
        let input = to_val(input);
        let globals: Vec<Val> = program
            .globals
            .iter()
            .map(|name| vars.var(name).map_or(Val::Null, |v| to_val(&v)))
            .collect();
        let inner = &self.inner;
        let inline = !inner.big && {
            let skip = inner.skip_inline.load(Ordering::Relaxed);
            if skip > 0 {
                inner.skip_inline.store(skip - 1, Ordering::Relaxed);
            }
            skip == 0
        };
        if inline {
            let job = Job {
                program,
                input: &input,
                globals: &globals,
                limits,
                deadline,
                first_only,
            };
            match job.run(true).0 {
                Err(Fail::Trip(Trip::Escalate)) => {
                    inner
                        .skip_inline
                        .store(SKIP_INLINE_AFTER_ESCALATION, Ordering::Relaxed);
                }
                done => return done.map_err(|f| self.error(f, limits)),
            }
        }
        let (shared, owned_limits) = (Arc::clone(inner), limits.clone());
        let done = worker::run(move || {
            let limits = &owned_limits;
            let job = Job {
                program: &shared.program,
                input: &input,
                globals: &globals,
                limits,
                deadline,
                first_only,
            };
            job.run(false)
        });
        match done {
            Ok(done) => done.map_err(|f| self.error(f, limits)),
            Err(message) => Err(ExprError::Eval {
                expr: inner.source.clone(),
                message,
            }),
        }
    }

    fn error(&self, fail: Fail, limits: &Limits) -> ExprError {
        let message = match fail {
            Fail::Jq(m) => m,
            Fail::Trip(Trip::Time) => {
                let ms = limits.time_budget.unwrap_or_default().as_millis();
                format!("expression exceeded its time budget of {ms} ms")
            }
            Fail::Trip(Trip::Steps) => {
                format!(
                    "expression exceeded its step budget of {} evaluation steps",
                    limits.max_steps
                )
            }
            Fail::Trip(Trip::Depth) => {
                format!(
                    "expression recursion too deep (more than {} nested calls)",
                    limits.max_depth
                )
            }
            Fail::Trip(Trip::Stack | Trip::Escalate) => {
                format!(
                    "expression recursion too deep (used up its {} MiB stack budget)",
                    BIG_STACK_BUDGET >> 20
                )
            }
            Fail::Trip(Trip::TooLarge(bytes)) => {
                let size = if bytes == u64::MAX {
                    "an unbounded number of".to_string()
                } else {
                    bytes.to_string()
                };
                format!(
                    "expression result too large: an operation would build a string of {size} bytes \
                     (limit {} bytes)",
                    limits.max_result_bytes
                )
            }
            Fail::Size(Oversize::Bytes) => {
                format!(
                    "expression result too large (more than {} bytes)",
                    limits.max_result_bytes
                )
            }
            Fail::Size(Oversize::Depth) => {
                format!("expression result too deeply nested (more than {MAX_RESULT_DEPTH} levels)")
            }
            Fail::TooMany => format!(
                "expression produced more than {} results",
                limits.max_outputs
            ),
            Fail::Internal(m) => format!("internal error in the jq interpreter: {m}"),
        };
        ExprError::Eval {
            expr: self.inner.source.clone(),
            message,
        }
    }
}

/// Why a run failed.
enum Fail {
    Jq(String),
    Trip(Trip),
    Size(Oversize),
    TooMany,
    Internal(String),
}

/// One evaluation, runnable inline or on the big-stack thread.
struct Job<'j> {
    program: &'j Program,
    input: &'j Val,
    globals: &'j [Val],
    limits: &'j Limits,
    deadline: Option<Instant>,
    first_only: bool,
}

impl Job<'_> {
    /// Runs the filter; also returns the stack growth seen by the guard.
    fn run(&self, inline: bool) -> (Result<Vec<Value>, Fail>, usize) {
        let max_bytes = self.limits.max_result_bytes as u64;
        let guard = if inline {
            let steps = self.limits.max_steps.min(INLINE_STEPS);
            Guard::new(
                INLINE_STACK_BUDGET,
                steps,
                true,
                self.limits.max_depth,
                self.deadline,
                max_bytes,
            )
        } else {
            Guard::new(
                BIG_STACK_BUDGET,
                self.limits.max_steps,
                false,
                self.limits.max_depth,
                self.deadline,
                max_bytes,
            )
        };
        let result = catch_unwind(AssertUnwindSafe(|| self.pull(&guard))).unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(Fail::Internal(text))
        });
        (result, guard.usage().1)
    }

    fn pull(&self, guard: &Guard) -> Result<Vec<Value>, Fail> {
        let filter = &self.program.filter;
        let env = Env {
            lut: &filter.lut,
            guard,
        };
        let ctx = Ctx::<runtime::Kd>::new(env, jaq_core::Vars::new(self.globals.iter().cloned()));
        let mut outputs = filter.id.run((ctx, self.input.clone()));
        let mut budget = self.limits.max_result_bytes as u64;
        let mut values = Vec::new();
        loop {
            let next = outputs.next();
            if let Some(trip) = guard.tripped() {
                return Err(Fail::Trip(trip));
            }
            match next {
                None => break,
                Some(Ok(v)) => {
                    if values.len() >= self.limits.max_outputs {
                        return Err(Fail::TooMany);
                    }
                    values.push(from_val(&v, &mut budget, MAX_RESULT_DEPTH).map_err(Fail::Size)?);
                    if self.first_only {
                        break;
                    }
                }
                Some(Err(e)) => return Err(exn_fail(e)),
            }
        }
        Ok(values)
    }
}

fn exn_fail(e: Exn<'_, Val>) -> Fail {
    match e.get_err() {
        Ok(err) => Fail::Jq(match err.into_val() {
            Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(&b).into_owned(),
            other => other.to_string(),
        }),
        Err(_) => Fail::Internal("unexpected control flow escaped the filter".to_string()),
    }
}

/// Runs `f` on a fresh, scoped thread with a [`BIG_STACK`] stack (used for compiling large
/// expressions, which is rare enough not to need [`worker`]).
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("kflow-expr".to_string())
            .stack_size(BIG_STACK)
            .spawn_scoped(scope, f)
            .map_err(|e| format!("cannot start an evaluation thread: {e}"))?;
        handle
            .join()
            .map_err(|_| "the evaluation thread panicked".to_string())
    })
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Expr>();
    send_sync::<ExprError>();
};

/// `Some(inner)` when `s` is a `${ ... }` runtime expression, with the braces stripped.
pub fn strip_dollar_braces(s: &str) -> Option<&str> {
    let t = s.trim();
    t.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .map(str::trim)
}

//! Evaluation-time support: the jaq data kind carrying the [`Guard`], the guard itself, and the
//! native filters kflow adds or replaces (`__kflow_tick`, `__kflow_nest`, `__kflow_mul`,
//! `range/3`).

use std::cell::Cell;
use std::cmp::Ordering;
use std::time::Instant;

use jaq_core::box_iter::box_once;
use jaq_core::data::HasLut;
use jaq_core::native::{Fun, v};
use jaq_core::{Bind, Cv, DataT, Error, Exn, Native, ValX, ValXs};
use jaq_json::Val;

/// Name of the native filter that [`Guard::tick`]s (inserted by the program rewriter).
pub(super) const TICK: &str = "__kflow_tick";
/// Name of the native filter wrapping a call in non-tail position (counts the nesting depth).
pub(super) const NEST: &str = "__kflow_nest";
/// Name of the native filter replacing `l * r` (refuses huge string repetitions).
pub(super) const MUL: &str = "__kflow_mul";

/// The jaq data kind: values are [`Val`]s, and natives can reach the [`Guard`].
pub(super) struct Kd;

/// jaq's value type as seen through [`Kd`] (spelled like this so that the native filters'
/// signatures match jaq's higher-ranked function pointer types).
type V<'a> = <Kd as DataT>::V<'a>;

impl DataT for Kd {
    type V<'a> = Val;
    type Data<'a> = Env<'a>;
}

/// Global data of one evaluation.
#[derive(Clone, Copy)]
pub(super) struct Env<'a> {
    pub lut: &'a jaq_core::Lut<Kd>,
    pub guard: &'a Guard,
}

impl<'a> HasLut<'a, Kd> for Env<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Kd> {
        self.lut
    }
}

/// Why an evaluation was stopped by its [`Guard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trip {
    /// The inline (caller's thread) budget of stack or steps ran out: retry on a big stack.
    Escalate,
    /// The wall-clock budget ran out.
    Time,
    /// The step budget ran out.
    Steps,
    /// The nesting budget ran out (runaway recursion).
    Depth,
    /// The stack budget ran out (runaway recursion through very large definitions).
    Stack,
    /// A single operation would have produced a value larger than allowed (bytes).
    TooLarge(u64),
}

impl Trip {
    /// Short text seen by a jq `catch` (the evaluation is aborted anyway).
    fn text(self) -> &'static str {
        match self {
            Trip::Escalate => "evaluation moved to a larger stack",
            Trip::Time => "time budget exceeded",
            Trip::Steps => "step budget exceeded",
            Trip::Depth | Trip::Stack => "recursion too deep",
            Trip::TooLarge(_) => "value too large",
        }
    }
}

/// Budget keeper of one evaluation run, consulted by the `__kflow_tick` native at every entry
/// of a recursion-capable definition, every `reduce`/`foreach` step and every `range` item, and
/// by `__kflow_nest` around every call in non-tail position.
///
/// Once tripped it stays tripped: every later tick fails again, so a jq `try` cannot swallow
/// the stop, and the evaluator reports the trip whatever the filter produced afterwards.
pub(super) struct Guard {
    /// Stack address at the start of the run.
    base: usize,
    /// Bytes of stack the run may grow by (measured at ticks).
    stack_budget: usize,
    /// Ticks allowed for this run.
    step_limit: u64,
    /// Inline run: exhausting stack or steps asks for a retry on a big stack.
    inline: bool,
    /// Nested non-tail calls allowed.
    depth_limit: u32,
    /// Wall-clock deadline, when the evaluation has a time budget.
    deadline: Option<Instant>,
    /// Largest string a `*` may build.
    pub(super) max_value_bytes: u64,
    steps: Cell<u64>,
    /// Calls in non-tail position in progress.
    depth: Cell<u32>,
    /// Deepest stack growth seen at a tick.
    max_stack: Cell<usize>,
    tripped: Cell<Option<Trip>>,
}

/// Ticks between two clock reads (a clock read costs ~20 ns).
const CLOCK_EVERY: u64 = 64;

impl Guard {
    pub(super) fn new(
        stack_budget: usize,
        step_limit: u64,
        inline: bool,
        depth_limit: u32,
        deadline: Option<Instant>,
        max_value_bytes: u64,
    ) -> Guard {
        Guard {
            base: stack_addr(),
            stack_budget,
            step_limit,
            inline,
            depth_limit,
            deadline,
            max_value_bytes,
            steps: Cell::new(0),
            depth: Cell::new(0),
            max_stack: Cell::new(0),
            tripped: Cell::new(None),
        }
    }

    pub(super) fn tripped(&self) -> Option<Trip> {
        self.tripped.get()
    }

    /// Steps taken and deepest stack growth seen so far.
    pub(super) fn usage(&self) -> (u64, usize) {
        (self.steps.get(), self.max_stack.get())
    }

    pub(super) fn trip(&self, t: Trip) -> Trip {
        if self.tripped.get().is_none() {
            self.tripped.set(Some(t));
        }
        self.tripped.get().unwrap_or(t)
    }

    /// Counts one step and checks every budget.
    pub(super) fn tick(&self) -> Result<(), Trip> {
        if let Some(t) = self.tripped.get() {
            return Err(t);
        }
        let n = self.steps.get() + 1;
        self.steps.set(n);
        if n > self.step_limit {
            return Err(self.trip(if self.inline {
                Trip::Escalate
            } else {
                Trip::Steps
            }));
        }
        let stack = stack_addr().abs_diff(self.base);
        if stack > self.max_stack.get() {
            self.max_stack.set(stack);
        }
        if stack > self.stack_budget {
            return Err(self.trip(if self.inline {
                Trip::Escalate
            } else {
                Trip::Stack
            }));
        }
        if n % CLOCK_EVERY == 0
            && let Some(deadline) = self.deadline
            && Instant::now() >= deadline
        {
            return Err(self.trip(Trip::Time));
        }
        Ok(())
    }

    /// Enters a call in non-tail position: one more level of nesting. The depth counts what
    /// jaq does, not how much stack it takes, so it trips at the same point in every build.
    /// Every `enter` that succeeds is followed by one [`Guard::leave`].
    fn enter(&self) -> Result<(), Trip> {
        if let Some(t) = self.tripped.get() {
            return Err(t);
        }
        let d = self.depth.get() + 1;
        if d > self.depth_limit {
            return Err(self.trip(Trip::Depth));
        }
        self.depth.set(d);
        Ok(())
    }

    fn leave(&self) {
        self.depth.set(self.depth.get().saturating_sub(1));
    }

    /// Runs `f` one nesting level deeper.
    fn nested<T>(&self, f: impl FnOnce() -> T) -> Result<T, Trip> {
        self.enter()?;
        let out = f();
        self.leave();
        Ok(out)
    }
}

/// Approximate current stack pointer: the address of a local of a non-inlined function.
#[inline(never)]
fn stack_addr() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

fn exn<'a>(t: Trip) -> Exn<'a, Val> {
    Exn::from(Error::str(t.text()))
}

fn tick_run<'a>(cv: Cv<'a, Kd>) -> ValXs<'a, V<'a>> {
    match cv.0.data().guard.tick() {
        Ok(()) => box_once(Ok(cv.1)),
        Err(t) => box_once(Err(exn(t))),
    }
}

/// Iterator of a nested call: each pull of an output is one nesting level deeper.
struct Nested<'a, I> {
    inner: Option<I>,
    guard: &'a Guard,
}

impl<'a, T, I: Iterator<Item = Result<T, Exn<'a, Val>>>> Iterator for Nested<'a, I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<Self::Item> {
        let inner = self.inner.as_mut()?;
        match self.guard.nested(|| inner.next()) {
            Ok(next) => next,
            Err(t) => {
                // the guard stays tripped; end here so that no consumer pulls forever
                self.inner = None;
                Some(Err(exn(t)))
            }
        }
    }
}

fn nested<'a, T: 'a, I: Iterator<Item = Result<T, Exn<'a, Val>>> + 'a>(
    guard: &'a Guard,
    start: impl FnOnce() -> I,
) -> Box<dyn Iterator<Item = Result<T, Exn<'a, Val>>> + 'a> {
    match guard.nested(start) {
        Ok(inner) => Box::new(Nested {
            inner: Some(inner),
            guard,
        }),
        Err(t) => box_once(Err(exn(t))),
    }
}

/// `__kflow_nest(f)`: runs `f` (a call in non-tail position) one nesting level deeper.
fn nest_run<'a>(mut cv: Cv<'a, Kd>) -> ValXs<'a, V<'a>> {
    let guard = cv.0.data().guard;
    let (f, fc) = cv.0.pop_fun();
    nested(guard, move || f.run((fc, cv.1)))
}

/// `l * r`, refusing string repetitions beyond the value size budget before allocating.
fn mul_run<'a>(mut cv: Cv<'a, Kd>) -> ValXs<'a, V<'a>> {
    let r = cv.0.pop_var();
    let l = cv.0.pop_var();
    let guard = cv.0.data().guard;
    let rep = match (&l, &r) {
        (Val::TStr(s) | Val::BStr(s), Val::Num(n)) | (Val::Num(n), Val::TStr(s) | Val::BStr(s)) => {
            Some((
                s.len() as u64,
                n.as_isize(),
                Val::Num(n.clone()) > Val::from(0isize),
            ))
        }
        _ => None,
    };
    if let Some((len, times, positive)) = rep
        && positive
        && len > 0
    {
        let bytes = match times {
            Some(t) => len.saturating_mul(t as u64),
            None => u64::MAX,
        };
        if bytes > guard.max_value_bytes {
            return box_once(Err(exn(guard.trip(Trip::TooLarge(bytes)))));
        }
    }
    box_once((l * r).map_err(Exn::from))
}

/// `range($from; $to; $by)`: like jaq's, but ticking the guard for every item.
fn range_run<'a>(mut cv: Cv<'a, Kd>) -> ValXs<'a, V<'a>> {
    let by = cv.0.pop_var();
    let to = cv.0.pop_var();
    let from = cv.0.pop_var();
    let guard = cv.0.data().guard;
    if ![&from, &to, &by].iter().all(|x| matches!(x, Val::Num(_))) {
        let msg = format!("range bounds must be numbers, got {from}, {to}, {by}");
        return box_once(Err(Exn::from(Error::str(msg))));
    }
    let dir = by.cmp(&Val::from(0isize));
    Box::new(RangeIter {
        next: Some(from),
        to,
        by,
        dir,
        guard,
    })
}

struct RangeIter<'a> {
    next: Option<Val>,
    to: Val,
    by: Val,
    dir: Ordering,
    guard: &'a Guard,
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = ValX<'a, Val>;

    fn next(&mut self) -> Option<Self::Item> {
        let cur = self.next.take()?;
        let more = match self.dir {
            Ordering::Greater => cur < self.to,
            Ordering::Less => cur > self.to,
            Ordering::Equal => cur != self.to,
        };
        if !more {
            return None;
        }
        if let Err(t) = self.guard.tick() {
            return Some(Err(exn(t)));
        }
        // numbers only (checked in `range_run`), so the sum cannot fail
        self.next = (cur.clone() + self.by.clone()).ok();
        Some(Ok(cur))
    }
}

/// Native filters of jaq that reach the host (environment, clock, time zone, process exit,
/// logging): left out, so filters using them do not compile.
pub(super) const REMOVED_NATIVES: &[&str] = &[
    "env",
    "now",
    "halt",
    "debug_empty",
    "stderr_empty",
    "localtime",
    "strflocaltime",
    "input",
    "inputs",
];

/// All native filters available to kflow expressions.
pub(super) fn natives() -> Vec<Fun<Kd>> {
    let core = jaq_core::funs::<Kd>().filter(|(name, ..)| *name != "range");
    let std = jaq_std::funs::<Kd>().filter(|(name, ..)| !REMOVED_NATIVES.contains(name));
    let json = jaq_json::funs::<Kd>();
    let tick = Native::<Kd>::new(tick_run)
        .with_paths(|cv| match cv.0.data().guard.tick() {
            Ok(()) => box_once(Ok(cv.1)),
            Err(t) => box_once(Err(exn(t))),
        })
        .with_update(|cv, f| match cv.0.data().guard.tick() {
            Ok(()) => f(cv.1),
            Err(t) => box_once(Err(exn(t))),
        });
    let nest = Native::<Kd>::new(nest_run)
        .with_paths(|mut cv| {
            let guard = cv.0.data().guard;
            let (f, fc) = cv.0.pop_fun();
            nested(guard, move || f.paths((fc, cv.1)))
        })
        .with_update(|mut cv, u| {
            let guard = cv.0.data().guard;
            let (f, fc) = cv.0.pop_fun();
            nested(guard, move || f.update((fc, cv.1), u))
        });
    let own: [Fun<Kd>; 4] = [
        (TICK, v(0), tick),
        (NEST, [Bind::Fun(())].into(), nest),
        (MUL, v(2), Native::<Kd>::new(mul_run)),
        ("range", v(3), Native::<Kd>::new(range_run)),
    ];
    core.chain(std).chain(json).chain(own).collect()
}

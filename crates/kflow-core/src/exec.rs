//! A tiny deterministic executor for the interpreter's async code.
//!
//! The interpreter is written as ordinary `async` Rust (recursion, loops, `try`), which the
//! compiler turns into a state machine. Nothing here touches a runtime: an effect future, when
//! first polled, records a [`Command::Start`] in the shared outbox and stays pending until the
//! host delivers its result. The instance re-polls the root future after every delivery; since
//! effect ids are allocated in poll order and branches are polled in declaration order, the same
//! deliveries always produce the same commands — which is what makes replay work.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use serde_json::Value;

use crate::effect::{Command, Effect, EffectId};
use crate::error::WfError;
use crate::notice::Notice;

pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// State shared between the instance and every future of the interpreter.
#[derive(Default)]
pub(crate) struct Shared {
    /// The time of the delivery being processed, in ms since the Unix epoch.
    pub now: i64,
    next_id: EffectId,
    pub commands: Vec<Command>,
    pub notices: Vec<Notice>,
    results: HashMap<EffectId, Result<Value, WfError>>,
    events: HashMap<EffectId, VecDeque<Value>>,
    /// Effects started and not yet finished, with the task that started them.
    pub pending: BTreeMap<EffectId, (String, Effect)>,
    /// `$context`.
    pub context: Value,
    /// Deterministic pseudo-random state (jitter), seeded from the instance id.
    pub rng: u64,
    /// The instance's work budgets.
    pub limits: crate::instance::Limits,
    /// Tasks started during the current call into the instance (reset by every poll).
    pub turn_tasks: u32,
    /// Tasks started over the instance's life (replay counts them again, identically).
    pub total_tasks: u64,
    /// Set when a budget that ends the instance ran out: the instance faults with it.
    pub exhausted: Option<WfError>,
}

/// What [`Sh::charge`] decided for the task about to start.
pub(crate) enum Charge {
    Go,
    /// The turn's budget is used up: yield to the host first.
    Yield,
    /// The instance's life budget is used up: it faults (not catchable by the workflow).
    Exhausted,
}

#[derive(Clone, Default)]
pub(crate) struct Sh(Arc<Mutex<Shared>>);

impl Sh {
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        // A poisoned lock means a panic inside the interpreter; the data is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now(&self) -> i64 {
        self.lock().now
    }

    pub fn notice(&self, n: Notice) {
        self.lock().notices.push(n);
    }

    /// Records a delivery; returns false when the effect is not pending (stale or cancelled).
    pub fn deliver_result(&self, id: EffectId, r: Result<Value, WfError>) -> bool {
        let mut s = self.lock();
        if !s.pending.contains_key(&id) {
            return false;
        }
        s.results.insert(id, r);
        true
    }

    pub fn deliver_event(&self, id: EffectId, ev: Value) -> bool {
        let mut s = self.lock();
        if !s.pending.contains_key(&id) {
            return false;
        }
        s.events.entry(id).or_default().push_back(ev);
        true
    }

    /// Counts one task start against the budgets. Counting is deterministic (a function of the
    /// history), so a replay yields and faults at exactly the same tasks.
    pub fn charge(&self) -> Charge {
        let mut s = self.lock();
        if s.exhausted.is_some() {
            return Charge::Exhausted;
        }
        s.total_tasks += 1;
        if s.total_tasks > s.limits.max_tasks {
            let max = s.limits.max_tasks;
            s.exhausted = Some(WfError::runtime(format!(
                "the instance exceeded its limit of {max} task executions (limits.max_tasks); \
                 a loop that never ends?"
            )));
            return Charge::Exhausted;
        }
        s.turn_tasks += 1;
        if s.turn_tasks > s.limits.tasks_per_turn {
            s.turn_tasks = 0;
            return Charge::Yield;
        }
        Charge::Go
    }

    /// Next pseudo-random number in [0, 1) (splitmix64).
    pub fn random(&self) -> f64 {
        let mut s = self.lock();
        s.rng = s.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An effect: started when first polled, resolved by the host's delivery.
    pub fn effect(&self, task: &str, effect: Effect) -> EffectFut {
        EffectFut {
            sh: self.clone(),
            task: task.to_string(),
            effect: Some(effect),
            id: None,
            done: false,
        }
    }
}

pub(crate) struct EffectFut {
    sh: Sh,
    task: String,
    effect: Option<Effect>,
    id: Option<EffectId>,
    done: bool,
}

impl EffectFut {
    fn ensure_started(&mut self, s: &mut Shared) -> EffectId {
        match self.id {
            Some(id) => id,
            None => {
                let id = s.next_id;
                s.next_id += 1;
                let effect = self.effect.take().unwrap_or(Effect::Timer { at_ms: 0 });
                s.pending.insert(id, (self.task.clone(), effect.clone()));
                s.commands.push(Command::Start {
                    id,
                    task: self.task.clone(),
                    effect,
                });
                self.id = Some(id);
                id
            }
        }
    }

    /// Waits for the next event of a `Listen` effect (or its error result).
    pub fn poll_event(&mut self) -> Poll<Result<Value, WfError>> {
        let sh = self.sh.clone();
        let mut s = sh.lock();
        let id = self.ensure_started(&mut s);
        if let Some(r) = s.results.remove(&id) {
            self.done = true;
            s.pending.remove(&id);
            return Poll::Ready(r.and(Ok(Value::Null)));
        }
        match s.events.get_mut(&id).and_then(VecDeque::pop_front) {
            Some(ev) => Poll::Ready(Ok(ev)),
            None => Poll::Pending,
        }
    }

    /// Lets the effect run on without this future: dropping it no longer cancels the effect,
    /// and its result, when it comes, is ignored.
    pub fn detach(&mut self) {
        if let Some(id) = self.id {
            self.done = true;
            self.sh.lock().pending.remove(&id);
        }
    }

    pub async fn next_event(&mut self) -> Result<Value, WfError> {
        std::future::poll_fn(|_| self.poll_event()).await
    }
}

impl Future for EffectFut {
    type Output = Result<Value, WfError>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        let sh = self.sh.clone();
        let mut s = sh.lock();
        let id = self.ensure_started(&mut s);
        match s.results.remove(&id) {
            Some(r) => {
                self.done = true;
                s.pending.remove(&id);
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for EffectFut {
    fn drop(&mut self) {
        if let (Some(id), false) = (self.id, self.done) {
            let mut s = self.sh.lock();
            s.pending.remove(&id);
            s.results.remove(&id);
            s.events.remove(&id);
            s.commands.push(Command::Cancel { id });
        }
    }
}

/// Runs all futures, polling them in order; resolves to their outputs in order. With
/// `fail_fast`, the first error drops (cancels) the others.
pub(crate) async fn join_all<T: Send + 'static>(
    futs: Vec<BoxFut<Result<T, WfError>>>,
) -> Result<Vec<T>, WfError> {
    let mut slots: Vec<Option<BoxFut<Result<T, WfError>>>> = futs.into_iter().map(Some).collect();
    let mut outs: Vec<Option<T>> = slots.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut all_done = true;
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(v)) => {
                        outs[i] = Some(v);
                        *slot = None;
                    }
                    Poll::Ready(Err(e)) => {
                        slots.iter_mut().for_each(|s| *s = None);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(Ok(outs
                .iter_mut()
                .map(|o| o.take().expect("every branch finished"))
                .collect()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Resolves to the first future that succeeds (by poll order), dropping the rest; when all
/// fail, to the first error.
pub(crate) async fn first_ok<T: Send + 'static>(
    futs: Vec<BoxFut<Result<T, WfError>>>,
) -> Result<T, WfError> {
    let mut slots: Vec<Option<BoxFut<Result<T, WfError>>>> = futs.into_iter().map(Some).collect();
    let mut first_err: Option<WfError> = None;
    std::future::poll_fn(move |cx| {
        for slot in slots.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(v)) => {
                        slots.iter_mut().for_each(|s| *s = None);
                        return Poll::Ready(Ok(v));
                    }
                    Poll::Ready(Err(e)) => {
                        first_err.get_or_insert(e);
                        *slot = None;
                    }
                    Poll::Pending => {}
                }
            }
        }
        if slots.iter().all(Option::is_none) {
            Poll::Ready(Err(first_err
                .take()
                .unwrap_or_else(|| WfError::runtime("fork has no branches"))))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Which of two raced futures finished first.
pub(crate) enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls `a` then `b`; the first ready wins and the other is dropped.
pub(crate) async fn race<A, B>(
    a: impl Future<Output = A>,
    b: impl Future<Output = B>,
) -> Either<A, B> {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
}

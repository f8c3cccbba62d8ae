//! Reusable big-stack evaluation threads.
//!
//! A run that outgrows the caller's stack is handed to a worker thread with a
//! [`BIG_STACK`](super::BIG_STACK) stack. Workers are kept for reuse (no spawn, and their stack
//! pages are already mapped), at most [`MAX_IDLE`] of them; one whose run grew its stack beyond
//! [`RETIRE_STACK`] is not kept, so its thread ends and the memory of its stack goes back to the
//! system. The caller waits for the reply: runs always end by themselves (they check their
//! budgets), so no thread is ever abandoned.

use std::sync::{Mutex, PoisonError, mpsc};

type Task = Box<dyn FnOnce() + Send>;

/// Idle workers, waiting for a task.
static IDLE: Mutex<Vec<mpsc::Sender<Task>>> = Mutex::new(Vec::new());
const MAX_IDLE: usize = 2;
const RETIRE_STACK: usize = 8 << 20;

/// Runs `f` on a big-stack worker and returns its result; `f` also reports how many bytes of
/// stack it grew by.
pub(super) fn run<T: Send + 'static>(
    f: impl FnOnce() -> (T, usize) + Send + 'static,
) -> Result<T, String> {
    let (reply_tx, reply_rx) = mpsc::sync_channel::<(T, usize)>(1);
    let task: Task = Box::new(move || {
        let _ = reply_tx.send(f());
    });
    let idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let worker = match idle {
        Some(worker) => match worker.send(task) {
            Ok(()) => worker,
            // the worker is gone (it cannot be, short of a bug): start another one
            Err(mpsc::SendError(task)) => spawn(task)?,
        },
        None => spawn(task)?,
    };
    let (value, stack) = reply_rx
        .recv()
        .map_err(|_| "the evaluation thread stopped unexpectedly".to_string())?;
    if stack <= RETIRE_STACK {
        let mut idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(worker);
        }
    }
    Ok(value)
}

/// Starts a worker running `first`, then whatever it is sent until its sender is dropped.
fn spawn(first: Task) -> Result<mpsc::Sender<Task>, String> {
    let (tx, rx) = mpsc::channel::<Task>();
    std::thread::Builder::new()
        .name("kflow-expr".to_string())
        .stack_size(super::BIG_STACK)
        .spawn(move || {
            first();
            while let Ok(task) = rx.recv() {
                task();
            }
        })
        .map_err(|e| format!("cannot start an evaluation thread: {e}"))?;
    Ok(tx)
}

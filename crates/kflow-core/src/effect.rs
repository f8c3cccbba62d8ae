//! What the interpreter asks the outside world to do, and what comes back.
//!
//! The core never performs IO. It emits [`Command::Start`] with an [`Effect`] whose every
//! expression is already evaluated; the host performs it and answers with a [`Delivery`]. Each
//! effect has an [`EffectId`] that is deterministic (allocated in execution order), so replaying
//! the same deliveries rebuilds the same state. Hosts derive idempotency keys from the instance id
//! and the effect id: a task re-run after a crash gets the same key, a retry gets a new one.
//!
//! The types are defined in `kflow-effects`, which the executors (`kflow-tasks`) share without
//! depending on the interpreter, and re-exported here at their old paths.

pub use kflow_effects::effect::*;
// The names these had before the types moved out of the DSL's model.
pub use kflow_effects::effect::{OutputFormat as HttpOutput, ReturnMode as ProcessReturn};

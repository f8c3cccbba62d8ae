//! kflow-core: the deterministic workflow interpreter.
//!
//! History in, commands out. The core depends on `kflow-dsl`, `kflow-effects` (the effect, error
//! and time types it shares with the executors, re-exported as [`effect`], [`error`], [`time`])
//! and serde only: no async runtime, no clock, no IO (a test checks the dependency list). The
//! host gives it the time with every call and performs the [`effect::Effect`]s it asks for; see
//! [`instance::Instance`].

pub mod effect;
pub mod error;
pub mod events;
mod exec;
pub mod instance;
mod interp;
pub mod notice;
pub mod time;

pub use effect::{Command, Delivery, Effect, EffectId};
pub use error::WfError;
pub use instance::{Instance, InstanceConfig, Limits, Status, Step};
pub use notice::{Notice, NoticeKind};

/// The budgets of every expression evaluation the interpreter performs (deterministic ones
/// only: no wall clock; `tests/deps.rs` checks it).
pub fn expression_limits() -> kflow_dsl::expr::Limits {
    interp::EXPR_LIMITS
}

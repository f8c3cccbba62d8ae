//! The workflow error: the spec's Problem-Details error object.
//!
//! Defined in `kflow-effects` (the executors raise it too) and re-exported here at its old path.

pub use kflow_effects::error::*;

//! The spec's standard error types, and matching of their URI spellings.
//!
//! Defined in `kflow-effects`, next to the workflow error object that carries them (the
//! executors raise them too), and re-exported here for the language's users.

pub use kflow_effects::errors::*;

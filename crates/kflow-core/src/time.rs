//! Time as the core sees it: milliseconds since the Unix epoch, given by the host.
//!
//! The formatting helpers are defined in `kflow-effects` (the executors stamp events with them)
//! and re-exported here at their old path.

pub use kflow_effects::time::*;

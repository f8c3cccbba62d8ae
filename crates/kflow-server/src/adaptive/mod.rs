//! Adaptive scheduling (issue 11), its first parts: the critical-path rank of tasks in a DAG
//! (HEFT's upward rank) and a list-scheduling simulator on virtual time that compares
//! dispatch orders (FIFO against critical-path-first) on limited capacity. The simulator is
//! the proof bench (`cargo bench -p kflow-server --bench dispatch`); the rank is what the
//! dispatcher will order ready work by once durations are learned.

pub mod advice;
pub mod learn;
pub mod limit;
pub mod rank;
pub mod sim;

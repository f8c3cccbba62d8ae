//! The wire types of kflow's REST API: what the server sends and takes, and what its clients
//! (the CLI, `kflow worker`) read, as one set of Rust types. A client deserializes an answer
//! into the type the server serialized, so a field renamed or retyped on one side fails to
//! compile on the other, and a malformed answer is an error, never a default value.
//!
//! The server converts its engine's and store's types into these (`kflow-server`'s `api/`);
//! this crate knows nothing of them.

pub mod definitions;
pub mod instances;
pub mod schedules;
pub mod security;
pub mod services;
pub mod workers;

//! kflow-server: the durable engine and its HTTP API.
//!
//! [`engine`] runs workflow instances over a [`kflow_store::Store`], committing every step
//! before acting on it; the API (REST under `/api/v1`, server-sent events) is a thin layer that
//! maps requests to engine calls and engine errors to responses in one place.

pub mod adaptive;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod brokers;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod retention;
pub mod schedule;
pub mod sealed;
pub mod secrets;
pub mod serve;
pub mod tls;
pub mod traces;

pub use engine::{Engine, EngineConfig, EngineError};

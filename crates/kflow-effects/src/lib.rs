//! kflow-effects: the vocabulary the interpreter and the executors share.
//!
//! The interpreter (`kflow-core`) asks for [`Effect`]s and is answered with [`Delivery`]s; the
//! executors (`kflow-tasks`) perform the IO-bound effects and answer with a value or a
//! [`WfError`]. Both need these types and nothing else of each other, so they live here, at the
//! bottom of the workspace, with serde as the only dependency: the spec's standard error kinds
//! ([`errors`]), the workflow error object ([`error`]), the effects and their parts ([`effect`],
//! including the DSL's `output` and `return` formats, which `kflow-dsl`'s model re-exports),
//! and the timestamps the spec's runtime descriptors use ([`time`]). `kflow-core` re-exports
//! everything at its historical paths (`kflow_core::effect`, `kflow_core::error`,
//! `kflow_core::time`).

pub mod effect;
pub mod error;
pub mod errors;
pub mod time;

pub use effect::{
    AsyncApiRequest, Auth, Command, Delivery, Effect, EffectId, FunctionRequest, GrpcRequest,
    HttpRequest, OpenApiRequest, OutputFormat, ProcessRequest, Program, ReturnMode,
};
pub use error::WfError;

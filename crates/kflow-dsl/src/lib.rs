//! kflow-dsl: the CNCF Serverless Workflow DSL 1.0 document model.
//!
//! Text goes in, a validated [`model::Workflow`] comes out, or every problem found as a
//! [`Diagnostic`] with line and column. Parsing never panics and never hangs on hostile input:
//! sizes, nesting depth and alias expansion are bounded (see [`node::Limits`]).

pub mod diag;
pub mod duration;
pub mod errors;
pub mod expr;
pub mod lower;
pub mod model;
pub mod node;
pub mod schema;
pub mod template;

pub use diag::Diagnostic;
pub use model::Workflow;

/// Parses and validates a workflow document (YAML or JSON).
pub fn load(text: &[u8]) -> Result<Workflow, Vec<Diagnostic>> {
    let root = node::parse(text, &node::Limits::default()).map_err(|d| vec![d])?;
    lower::lower(&root)
}

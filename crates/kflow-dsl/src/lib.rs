//! kflow-dsl: the CNCF Serverless Workflow DSL 1.0 document model.
//!
//! Text goes in, a validated [`model::Workflow`] comes out, or every problem found as a
//! [`Diagnostic`] with line and column. Parsing never panics and never hangs on hostile input:
//! sizes, nesting depth and alias expansion are bounded (see [`node::Limits`]).

pub mod diag;
pub mod duration;
pub mod errors;
pub mod expr;
pub mod graph;
pub mod lower;
pub mod model;
pub mod node;
pub mod pattern;
pub mod schema;
pub mod settings;
pub mod template;

pub use diag::Diagnostic;
pub use model::Workflow;

/// How [`load_with`] reads a document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse kflow's extensions to the DSL (the `dag` task with its `needs`/`trigger`, the
    /// `parallel` property of `for`), so that a document that loads is portable to any
    /// Serverless Workflow runtime. Nothing else changes.
    pub strict: bool,
}

/// Parses and validates a workflow document (YAML or JSON), kflow's extensions allowed.
pub fn load(text: &[u8]) -> Result<Workflow, Vec<Diagnostic>> {
    load_with(text, &LoadOptions::default())
}

/// Parses and validates a workflow document (YAML or JSON) with `options`.
pub fn load_with(text: &[u8], options: &LoadOptions) -> Result<Workflow, Vec<Diagnostic>> {
    let root = node::parse(text, &node::Limits::default()).map_err(|d| vec![d])?;
    lower::lower_with(&root, options)
}

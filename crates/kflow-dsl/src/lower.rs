//! Lowering: a parsed [`Node`] tree to a validated [`Workflow`], collecting every problem.
//!
//! INTERFACE FILE — the implementation is being written; keep these signatures.

use crate::diag::Diagnostic;
use crate::model::Workflow;
use crate::node::Node;

pub fn lower(_root: &Node) -> Result<Workflow, Vec<Diagnostic>> {
    todo!()
}

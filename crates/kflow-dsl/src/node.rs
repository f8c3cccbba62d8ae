//! A YAML/JSON document as a tree of nodes that remember their line and column.
//!
//! INTERFACE FILE — the implementation is being written; keep these signatures.

use crate::diag::Diagnostic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are nodes so that their positions are known.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

/// Bounds that keep hostile documents from exhausting time or memory.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 16 * 1024 * 1024, max_depth: 256, max_nodes: 1_000_000 }
    }
}

pub fn parse(_text: &[u8], _limits: &Limits) -> Result<Node, Diagnostic> {
    todo!()
}

impl Node {
    /// The node as plain JSON.
    pub fn to_json(&self) -> serde_json::Value {
        todo!()
    }
}

//! Workflow definitions (`/api/v1/definitions`). Times are given twice: as ISO 8601 UTC text
//! (`created`) and as epoch milliseconds (`created_ms`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The outcome of registering a definition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// `created` (201) or `unchanged` (200: the same version with the same content).
    #[schema(example = "created")]
    pub outcome: String,
}

/// One registered version, without its source.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionSummary {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// SHA-256 (hex) of the canonical JSON of the document.
    pub hash: String,
    /// A deprecated version starts no new instances.
    pub deprecated: bool,
    /// When it was registered (ISO 8601).
    #[schema(example = "2026-11-02T10:00:00.000Z")]
    pub created: String,
    pub created_ms: i64,
}

/// One registered version with the document as it was registered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionDetail {
    #[serde(flatten)]
    pub summary: DefinitionSummary,
    /// The document text (YAML or JSON) as registered.
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DefinitionList {
    pub items: Vec<DefinitionSummary>,
}

/// Body of the deprecate call (optional; `deprecated` defaults to true).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprecateRequest {
    /// `true` to deprecate, `false` to undo it.
    pub deprecated: Option<bool>,
}

//! JSON Schema documents used by `input.schema`, `output.schema` and `export.schema`.
//!
//! Compiled once when the definition is loaded. Remote `$ref`s are never fetched (jsonschema is
//! built without its HTTP resolver), so a user's schema cannot make the engine reach the network.

use std::sync::Arc;

use serde_json::Value;

#[derive(Clone)]
pub struct Schema {
    validator: Arc<jsonschema::Validator>,
    pub document: Arc<Value>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("document", &self.document)
            .finish()
    }
}

impl Schema {
    /// Compiles an inline JSON Schema; the error says why it is not a valid schema.
    pub fn compile(document: &Value) -> Result<Schema, String> {
        let validator =
            jsonschema::validator_for(document).map_err(|e| format!("invalid JSON schema: {e}"))?;
        Ok(Schema {
            validator: Arc::new(validator),
            document: Arc::new(document.clone()),
        })
    }

    /// Checks `value`; on failure returns one message per violation, each naming the failing
    /// path of the instance (`/a/0/b`) and what is wrong there.
    pub fn check(&self, value: &Value) -> Result<(), Vec<String>> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(value)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_string()
                } else {
                    path
                };
                format!("{path}: {e}")
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

//! The spec's standard error types, and matching of their URI spellings.
//!
//! DSL 1.0.x documents name the standard errors with three URI prefixes; kflow treats them as
//! the same type when matching `catch.errors.with.type`.

/// Standard error kinds (the last segment of the URI).
pub const CONFIGURATION: &str = "configuration";
pub const VALIDATION: &str = "validation";
pub const EXPRESSION: &str = "expression";
pub const AUTHENTICATION: &str = "authentication";
pub const AUTHORIZATION: &str = "authorization";
pub const TIMEOUT: &str = "timeout";
pub const COMMUNICATION: &str = "communication";
pub const RUNTIME: &str = "runtime";

/// The URI kflow uses when it raises a standard error.
pub fn type_uri(kind: &str) -> String {
    format!("https://open-workflow-specification.org/spec/1.0.0/errors/{kind}")
}

const PREFIXES: [&str; 3] = [
    "https://serverlessworkflow.io/spec/1.0.0/errors/",
    "https://open-workflow-specification.org/spec/1.0.0/errors/",
    "https://open-workflow-specification.org/dsl/errors/types/",
];

/// Reduces a standard error URI to its kind (`communication`), any other URI to itself.
fn canonical(uri: &str) -> &str {
    let uri = uri.trim();
    for p in PREFIXES {
        if let Some(kind) = uri.strip_prefix(p) {
            return kind;
        }
        // Also accept the http:// spelling of the same prefixes.
        if let Some(rest) = p.strip_prefix("https://")
            && let Some(kind) = uri
                .strip_prefix("http://")
                .and_then(|u| u.strip_prefix(rest))
        {
            return kind;
        }
    }
    uri
}

/// Whether two error type URIs name the same type.
pub fn same_type(a: &str, b: &str) -> bool {
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_spellings_match() {
        let a = "https://serverlessworkflow.io/spec/1.0.0/errors/communication";
        let b = "https://open-workflow-specification.org/spec/1.0.0/errors/communication";
        let c = "https://open-workflow-specification.org/dsl/errors/types/communication";
        assert!(same_type(a, b) && same_type(b, c) && same_type(a, c));
        assert!(!same_type(
            a,
            "https://serverlessworkflow.io/spec/1.0.0/errors/timeout"
        ));
        assert!(same_type("https://example.com/x", "https://example.com/x"));
    }
}

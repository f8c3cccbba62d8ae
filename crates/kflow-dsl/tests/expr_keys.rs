//! `Expr::literal_keys` and `Vars::check_key`: how the interpreter learns which secrets an
//! expression reads (`$secrets.NAME`) before running it (dsl.md, Secret: reading a secret the
//! workflow may not access, or that does not exist, must raise an authorization error).

use std::borrow::Cow;

use serde_json::{Value, json};

use kflow_dsl::expr::{Expr, ExprError, Vars};

fn keys(src: &str) -> Vec<(String, String)> {
    let e = Expr::compile(src).unwrap_or_else(|e| panic!("{e}"));
    e.literal_keys()
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect()
}

#[test]
fn literal_keys_of_variables_are_found_on_the_syntax_tree() {
    assert_eq!(keys("$secrets.api.token"), pairs(&[("secrets", "api")]));
    assert_eq!(
        keys(r#"$secrets["db"] + $secrets."a-b" + $secrets.api? + $secrets["x\u0041"]"#),
        pairs(&[
            ("secrets", "db"),
            ("secrets", "a-b"),
            ("secrets", "api"),
            ("secrets", "xA")
        ])
    );
    assert_eq!(
        keys("{ t: $secrets.api.token, c: $context.x, again: $secrets.api }"),
        pairs(&[("secrets", "api"), ("context", "x")])
    );
    // Inside strings only interpolations count.
    assert_eq!(
        keys(r#""$secrets.no \($secrets.yes)""#),
        pairs(&[("secrets", "yes")])
    );
    // Computed keys and whole-variable reads are not literal keys.
    assert!(keys("$secrets[$k]").is_empty());
    assert!(keys(r#"$secrets["a\(1)"]"#).is_empty());
    assert!(keys("$secrets | keys").is_empty());
    // A variable the expression binds itself is not the global one.
    assert!(keys(". as $secrets | $secrets.api").is_empty());
    assert!(keys("def f($secrets): $secrets.api; f(1)").is_empty());
    assert!(keys("reduce .[] as $secrets (0; $secrets.api)").is_empty());
}

struct Guarded;

impl Vars for Guarded {
    fn var(&self, name: &str) -> Option<Cow<'_, Value>> {
        (name == "secrets").then(|| Cow::Owned(json!({"api": {"token": "t"}})))
    }

    fn check_key(&self, name: &str, key: &str) -> Result<(), String> {
        if name == "secrets" && key != "api" {
            Err(format!("no secret '{key}'"))
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_refused_key_fails_the_evaluation_before_it_runs() {
    let ok = Expr::compile("$secrets.api.token").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.eval(&Value::Null, &Guarded), Ok(json!("t")));
    // Refused even in a branch that would not run: the expression reads it.
    let bad =
        Expr::compile("if false then $secrets.db else 1 end").unwrap_or_else(|e| panic!("{e}"));
    match bad.eval(&Value::Null, &Guarded) {
        Err(ExprError::Refused { message, .. }) => assert_eq!(message, "no secret 'db'"),
        other => panic!("{other:?}"),
    }
    // Variables without a guard are unaffected.
    assert_eq!(bad.eval(&Value::Null, &()), Ok(json!(1)));
}

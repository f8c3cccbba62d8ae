//! The arrows between the workspace's crates are the ones ARCHITECTURE.md states.
//!
//! Reads `cargo metadata --no-deps` and checks every workspace crate's normal and build
//! dependencies (dev-dependencies are free: tests may reach anywhere) against [`RULES`]: the
//! workspace crates each one may depend on. A crate missing from the table is a failure too, so
//! a new crate gets its line here and in ARCHITECTURE.md's code map. The shared vocabulary at
//! the bottom (kflow-effects) may not depend on anything but serde ([`OUTSIDE`]).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};

/// Each workspace crate and the workspace crates its normal dependencies may name (the
/// "Must never" lines of ARCHITECTURE.md).
const RULES: &[(&str, &[&str])] = &[
    ("kflow-effects", &[]),
    // the REST API's wire types: plain data, shared by the server and its clients
    ("kflow-api", &["kflow-effects"]),
    ("kflow-dsl", &["kflow-effects"]),
    ("kflow-core", &["kflow-effects", "kflow-dsl"]),
    // the executors never depend on the interpreter
    ("kflow-tasks", &["kflow-effects", "kflow-dsl"]),
    ("kflow-store", &[]),
    // the PostgreSQL backend implements the store's trait, and knows nothing else
    ("kflow-store-pg", &["kflow-store"]),
    // the web UI sees only the API's wire types: its data comes through the REST API
    ("kflow-ui", &["kflow-api"]),
    (
        "kflow-server",
        &[
            "kflow-api",
            "kflow-ui",
            "kflow-effects",
            "kflow-dsl",
            "kflow-core",
            "kflow-tasks",
            "kflow-store",
            "kflow-store-pg",
        ],
    ),
    (
        "kflow",
        &[
            "kflow-api",
            "kflow-effects",
            "kflow-dsl",
            "kflow-core",
            "kflow-tasks",
            "kflow-store",
            "kflow-store-pg",
            "kflow-server",
        ],
    ),
];

/// Crates whose dependencies outside the workspace are limited too, and to what.
const OUTSIDE: &[(&str, &[&str])] = &[
    ("kflow-effects", &["serde", "serde_json"]),
    ("kflow-api", &["serde", "serde_json", "utoipa"]),
];

/// Every forbidden arrow (and every workspace crate without a rule) in `metadata`, the output
/// of `cargo metadata --format-version 1 --no-deps`.
fn violations(
    metadata: &Value,
    rules: &[(&str, &[&str])],
    outside: &[(&str, &[&str])],
) -> Vec<String> {
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let packages: Vec<&Value> = metadata["packages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(id)))
                .collect()
        })
        .unwrap_or_default();
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut out = Vec::new();
    if names.is_empty() {
        out.push("the metadata lists no workspace crate".to_string());
    }
    for p in &packages {
        let name = p["name"].as_str().unwrap_or("?");
        let Some((_, allowed)) = rules.iter().find(|(n, _)| *n == name) else {
            out.push(format!(
                "workspace crate '{name}' has no rule: add it to RULES and to ARCHITECTURE.md"
            ));
            continue;
        };
        let limited = outside.iter().find(|(n, _)| *n == name).map(|(_, l)| *l);
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or("?");
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            if !names.contains(dep) {
                if let Some(l) = limited.filter(|l| !l.contains(&dep)) {
                    out.push(format!(
                        "{name} -> {dep} is not allowed ({name} may depend on {} only)",
                        l.join(", ")
                    ));
                }
                continue;
            }
            if !allowed.contains(&dep) {
                out.push(format!(
                    "{name} -> {dep} is not allowed ({name} may depend on {})",
                    if allowed.is_empty() {
                        "no workspace crate".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ));
            }
        }
    }
    out
}

#[test]
fn workspace_arrows_are_the_allowed_ones() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let run = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let output = match run {
        Ok(o) if o.status.success() => o.stdout,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            let msg = format!("`{cargo} metadata` did not run: {why}");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("SKIPPED: crate boundaries not checked: {msg}");
            return;
        }
    };
    let metadata: Value = serde_json::from_slice(&output).expect("cargo metadata prints JSON");
    let found = violations(&metadata, RULES, OUTSIDE);
    assert!(found.is_empty(), "crate boundaries:\n{}", found.join("\n"));
}

/// A small `cargo metadata` document: `(crate, normal deps, dev deps)`.
fn fabricated(crates: &[(&str, &[&str], &[&str])]) -> Value {
    let id = |n: &str| format!("path+file:///ws/crates/{n}#0.1.0");
    let dep = |n: &str, kind: Option<&str>| json!({ "name": n, "kind": kind, "path": format!("/ws/crates/{n}"), "rename": null });
    let packages: Vec<Value> = crates
        .iter()
        .map(|(n, normal, dev)| {
            let mut deps: Vec<Value> = normal.iter().map(|d| dep(d, None)).collect();
            deps.extend(dev.iter().map(|d| dep(d, Some("dev"))));
            // an outside crate is never a workspace arrow
            deps.push(json!({ "name": "serde", "kind": null, "rename": null }));
            json!({ "name": n, "id": id(n), "dependencies": deps })
        })
        .collect();
    let members: Vec<String> = crates.iter().map(|(n, _, _)| id(n)).collect();
    json!({ "packages": packages, "workspace_members": members })
}

#[test]
fn the_check_reports_a_forbidden_arrow() {
    let ok = fabricated(&[
        ("kflow-effects", &[], &[]),
        ("kflow-dsl", &["kflow-effects"], &[]),
        ("kflow-core", &["kflow-dsl", "kflow-effects"], &[]),
        ("kflow-tasks", &["kflow-dsl", "kflow-effects", "tokio"], &[]),
        // dev-dependencies may point anywhere
        ("kflow-store", &[], &["kflow-core"]),
    ]);
    assert_eq!(violations(&ok, RULES, OUTSIDE), Vec::<String>::new());

    let bad = fabricated(&[
        ("kflow-dsl", &[], &[]),
        ("kflow-core", &["kflow-dsl"], &[]),
        ("kflow-store", &["kflow-core"], &[]),
    ]);
    let found = violations(&bad, RULES, OUTSIDE);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("kflow-store -> kflow-core is not allowed"),
        "{found:?}"
    );

    let unknown = fabricated(&[("kflow-dsl", &[], &[]), ("kflow-new", &["kflow-dsl"], &[])]);
    let found = violations(&unknown, RULES, OUTSIDE);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("'kflow-new' has no rule"), "{found:?}");

    // the executors may not borrow the interpreter; the shared types may not grow an async
    // runtime
    let bad = fabricated(&[
        ("kflow-effects", &["tokio"], &[]),
        ("kflow-dsl", &["kflow-effects"], &[]),
        ("kflow-core", &["kflow-dsl", "kflow-effects"], &[]),
        ("kflow-tasks", &["kflow-core", "kflow-effects"], &[]),
    ]);
    let found = violations(&bad, RULES, OUTSIDE);
    assert_eq!(
        found,
        [
            "kflow-effects -> tokio is not allowed (kflow-effects may depend on serde, serde_json only)",
            "kflow-tasks -> kflow-core is not allowed (kflow-tasks may depend on kflow-effects, kflow-dsl)",
        ],
    );

    assert!(!violations(&json!({}), RULES, OUTSIDE).is_empty());
}

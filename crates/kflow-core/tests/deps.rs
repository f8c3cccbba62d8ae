//! The core stays sans-IO and deterministic: its only dependencies are the DSL crate, the shared
//! effect types (kflow-effects) and serde, it reads no clock, and the expressions it evaluates have deterministic budgets only.

#[test]
fn core_depends_on_nothing_that_does_io() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .unwrap_or_default();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or("")
        .split("\n[")
        .next()
        .unwrap_or("");
    let names: Vec<&str> = deps
        .lines()
        .filter_map(|l| l.split(['=', '.']).next())
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect();
    let allowed = ["kflow-dsl", "kflow-effects", "serde", "serde_json"];
    for n in &names {
        assert!(
            allowed.contains(n),
            "kflow-core must not depend on '{n}' (allowed: {allowed:?})"
        );
    }
    assert!(names.contains(&"kflow-dsl"));
    assert!(names.contains(&"kflow-effects"));
}

#[test]
fn core_sources_never_read_the_clock_or_spawn() {
    // The effect types, errors and time helpers the core re-exports live in kflow-effects.
    let dirs = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/src"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../kflow-effects/src"),
    ];
    assert!(
        dirs.iter().all(|d| std::path::Path::new(d).is_dir()),
        "{dirs:?}"
    );
    let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(std::path::PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for banned in [
                "SystemTime",
                "UNIX_EPOCH",
                "Instant",
                // a wall-clock budget on an expression would make replays take other paths
                "time_budget",
                "std::thread",
                "std::fs",
                "std::net",
                "tokio",
            ] {
                assert!(!text.contains(banned), "{} uses {banned}", path.display());
            }
        }
    }
}

#[test]
fn core_expression_budgets_have_no_wall_clock() {
    let limits = kflow_core::expression_limits();
    assert_eq!(limits.time_budget, None, "{limits:?}");
    assert_eq!(limits, kflow_dsl::expr::Limits::deterministic());
    // evaluations that take the defaults (`Expr::eval`, `DurationSpec::millis`, ...) as well
    assert_eq!(kflow_dsl::expr::Limits::default().time_budget, None);
}

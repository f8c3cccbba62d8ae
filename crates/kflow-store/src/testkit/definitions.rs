//! Definitions: put, latest by semantic version, list, deprecate.

use super::*;

pub fn definitions_put_created_unchanged_conflict(store: &dyn Store) {
    let d = definition("ns", "flow", "1.0.0", "h1");
    assert_eq!(ok(store.put_definition(&d)), PutDefinition::Created);
    assert_eq!(ok(store.put_definition(&d)), PutDefinition::Unchanged);
    // Same hash: unchanged, whatever else differs; the stored row is kept.
    let mut same_hash = d.clone();
    same_hash.source = "reformatted".into();
    same_hash.created_ms = 9_999;
    assert_eq!(
        ok(store.put_definition(&same_hash)),
        PutDefinition::Unchanged
    );
    let other = definition("ns", "flow", "1.0.0", "h2");
    assert_eq!(
        ok(store.put_definition(&other)),
        PutDefinition::Conflict {
            existing_hash: "h1".into()
        }
    );
    assert_eq!(
        ok(store.get_definition("ns", "flow", Some("1.0.0"))),
        Some(d.clone())
    );

    // The key is (namespace, name, version).
    assert_eq!(
        ok(store.put_definition(&definition("ns2", "flow", "1.0.0", "h2"))),
        PutDefinition::Created
    );
    assert_eq!(
        ok(store.put_definition(&definition("ns", "flow2", "1.0.0", "h2"))),
        PutDefinition::Created
    );
    assert_eq!(
        ok(store.put_definition(&definition("ns", "flow", "1.0.1", "h2"))),
        PutDefinition::Created
    );

    assert_eq!(ok(store.get_definition("ns", "flow", Some("2.0.0"))), None);
    assert_eq!(ok(store.get_definition("ns", "nope", None)), None);
    assert_eq!(
        ok(store.get_definition("nope", "flow", Some("1.0.0"))),
        None
    );

    // Every field round-trips.
    let mut full = definition("ns", "full", "3.2.1", "hash-full");
    full.deprecated = true;
    full.created_ms = 1_234_567;
    full.source = "document:\n  name: \"ünïcode ✓\"\n".repeat(500);
    assert_eq!(ok(store.put_definition(&full)), PutDefinition::Created);
    assert_eq!(
        ok(store.get_definition("ns", "full", Some("3.2.1"))),
        Some(full.clone())
    );
    assert_eq!(ok(store.get_definition("ns", "full", None)), Some(full));
}

pub fn definitions_latest_is_highest_semver(store: &dyn Store) {
    let latest = |name: &str| ok(store.get_definition("ns", name, None)).map(|d| d.version);
    assert_eq!(latest("flow"), None);
    for v in ["1.9.0", "1.10.0", "1.2.0", "0.9.9"] {
        ok(store.put_definition(&definition("ns", "flow", v, v)));
    }
    assert_eq!(
        latest("flow").as_deref(),
        Some("1.10.0"),
        "numeric, not lexicographic"
    );
    ok(store.put_definition(&definition("ns", "flow", "2.0.0-rc.1", "rc1")));
    assert_eq!(latest("flow").as_deref(), Some("2.0.0-rc.1"));
    ok(store.put_definition(&definition("ns", "flow", "2.0.0", "2")));
    assert_eq!(latest("flow").as_deref(), Some("2.0.0"));
    // Registered later, but a pre-release of the same version sorts below it.
    ok(store.put_definition(&definition("ns", "flow", "2.0.0-rc.2", "rc2")));
    assert_eq!(
        latest("flow").as_deref(),
        Some("2.0.0"),
        "not the newest row"
    );
    // Deprecation does not change which version is the latest.
    assert!(ok(store.set_deprecated("ns", "flow", "2.0.0", true)));
    let d = ok(store.get_definition("ns", "flow", None)).expect("latest");
    assert_eq!((d.version.as_str(), d.deprecated), ("2.0.0", true));
    // Other names and namespaces do not leak in.
    ok(store.put_definition(&definition("ns", "other", "9.0.0", "o")));
    ok(store.put_definition(&definition("ns2", "flow", "9.0.0", "o")));
    assert_eq!(latest("flow").as_deref(), Some("2.0.0"));

    // Pre-release precedence (semver.org §11), registered in scrambled order.
    let chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ];
    for v in [
        chain[3], chain[6], chain[0], chain[5], chain[2], chain[4], chain[1],
    ] {
        ok(store.put_definition(&definition("pre", "flow", v, v)));
    }
    let listed: Vec<String> = ok(store.list_definitions(Some("pre")))
        .into_iter()
        .map(|d| d.version)
        .collect();
    let mut expected: Vec<String> = chain.iter().map(|s| s.to_string()).collect();
    expected.reverse();
    assert_eq!(listed, expected);
    assert_eq!(
        ok(store.get_definition("pre", "flow", None))
            .map(|d| d.version)
            .as_deref(),
        Some("1.0.0")
    );
    ok(store.put_definition(&definition("pre", "rc", "1.0.0-rc.9", "9")));
    ok(store.put_definition(&definition("pre", "rc", "1.0.0-rc.10", "10")));
    assert_eq!(
        ok(store.get_definition("pre", "rc", None))
            .map(|d| d.version)
            .as_deref(),
        Some("1.0.0-rc.10")
    );
}

pub fn definitions_list_sorted_and_filtered(store: &dyn Store) {
    assert!(ok(store.list_definitions(None)).is_empty());
    let rows = [
        ("b", "x", "1.0.0"),
        ("a", "y", "1.9.0"),
        ("a", "y", "1.10.0"),
        ("a", "x", "0.1.0"),
        ("b", "a", "2.0.0"),
        ("a", "y", "1.10.0-rc.1"),
    ];
    for (ns, name, v) in rows {
        ok(store.put_definition(&definition(ns, name, v, &format!("{ns}{name}{v}"))));
    }
    let keys = |defs: Vec<Definition>| -> Vec<String> {
        defs.into_iter()
            .map(|d| format!("{}/{}@{}", d.namespace, d.name, d.version))
            .collect()
    };
    assert_eq!(
        keys(ok(store.list_definitions(None))),
        [
            "a/x@0.1.0",
            "a/y@1.10.0",
            "a/y@1.10.0-rc.1",
            "a/y@1.9.0",
            "b/a@2.0.0",
            "b/x@1.0.0"
        ]
    );
    assert_eq!(
        keys(ok(store.list_definitions(Some("b")))),
        ["b/a@2.0.0", "b/x@1.0.0"]
    );
    assert!(ok(store.list_definitions(Some("c"))).is_empty());
    let listed = ok(store.list_definitions(Some("a")));
    assert_eq!(
        listed[0],
        definition("a", "x", "0.1.0", "ax0.1.0"),
        "full rows"
    );
}

pub fn definitions_set_deprecated(store: &dyn Store) {
    assert!(
        !ok(store.set_deprecated("ns", "flow", "1.0.0", true)),
        "no such version"
    );
    ok(store.put_definition(&definition("ns", "flow", "1.0.0", "h")));
    ok(store.put_definition(&definition("ns", "flow", "1.1.0", "h")));
    assert!(ok(store.set_deprecated("ns", "flow", "1.0.0", true)));
    let get = |v: &str| ok(store.get_definition("ns", "flow", Some(v))).expect("exists");
    assert!(get("1.0.0").deprecated);
    assert!(!get("1.1.0").deprecated, "only that version");
    assert!(
        ok(store.set_deprecated("ns", "flow", "1.0.0", true)),
        "idempotent"
    );
    assert!(get("1.0.0").deprecated);
    assert_eq!(get("1.0.0").hash, "h");
    assert_eq!(
        ok(store.put_definition(&definition("ns", "flow", "1.0.0", "h"))),
        PutDefinition::Unchanged
    );
    assert!(ok(store.set_deprecated("ns", "flow", "1.0.0", false)));
    assert!(!get("1.0.0").deprecated);
    assert!(!ok(store.set_deprecated("ns", "flow", "3.0.0", true)));
}

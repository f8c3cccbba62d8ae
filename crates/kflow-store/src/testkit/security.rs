//! Tokens, the audit chain, secrets, alerts, and lookups by short id and by kind.

use super::*;

fn token(id: &str, name: &str) -> crate::TokenRow {
    crate::TokenRow {
        id: id.into(),
        name: name.into(),
        role: "viewer".into(),
        namespaces: vec!["a".into(), "b".into()],
        secret_sha256: "ab".repeat(32),
        created_ms: 1,
        created_by: "admin".into(),
        expires_ms: Some(10),
        revoked_ms: None,
    }
}

pub fn tokens_are_unique_and_revocation_frees_the_name(store: &dyn Store) {
    assert!(ok(store.put_token(&token("t1", "ci"))));
    assert!(!ok(store.put_token(&token("t1", "other"))), "same id");
    assert!(!ok(store.put_token(&token("t2", "ci"))), "same live name");
    let revoked = ok(store.revoke_token("ci", 5)).expect("revoked");
    assert_eq!((revoked.id.as_str(), revoked.revoked_ms), ("t1", Some(5)));
    assert!(ok(store.revoke_token("ci", 6)).is_none(), "already revoked");
    assert!(
        ok(store.put_token(&token("t2", "ci"))),
        "the name is free again"
    );
    let all = ok(store.tokens());
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].namespaces, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(all[0].revoked_ms, Some(5));
    assert_eq!(
        ok(store.revoke_token("t2", 7)).map(|t| t.name),
        Some("ci".into())
    );
}

pub fn audit_chains_across_appends_and_filters(store: &dyn Store) {
    let e = |i: i64, actor: &str, action: &str| crate::AuditEntry {
        at_ms: i,
        actor: actor.into(),
        action: action.into(),
        resource: format!("r{i}"),
        namespace: Some(if i == 2 { "other" } else { "ns" }.into()),
        source: "test".into(),
        result: "200".into(),
    };
    ok(store.append_audit(&[e(1, "a", "instances.start"), e(2, "b", "tokens.create")]));
    let last = ok(store.append_audit(&[e(3, "a", "instances.cancel")])).expect("last");
    assert_eq!(last.seq, 3);
    // Started in a commit, the chain goes on.
    let mut c = create(&instance("audited", 1));
    c.audit.push(e(4, "c", "instances.start"));
    ok(store.apply(&[c]));
    let all = ok(store.audit(&Default::default(), 0, 100));
    let mut v = crate::security::ChainVerifier::default();
    for r in &all {
        v.check(r).expect("the chain holds");
    }
    assert_eq!(v.head().0, 4);
    let filter = crate::AuditFilter {
        actor: Some("a".into()),
        action: Some("instances.".into()),
        ..Default::default()
    };
    let seqs = |f: &crate::AuditFilter, after| -> Vec<i64> {
        ok(store.audit(f, after, 100))
            .iter()
            .map(|r| r.seq)
            .collect()
    };
    assert_eq!(seqs(&filter, 0), [1, 3]);
    // The action is a prefix, matched literally (no pattern characters).
    let literal = crate::AuditFilter {
        action: Some("instances%".into()),
        ..Default::default()
    };
    assert!(seqs(&literal, 0).is_empty());
    let by_ns = crate::AuditFilter {
        namespace: Some("other".into()),
        since_ms: Some(2),
        until_ms: Some(3),
        ..Default::default()
    };
    assert_eq!(seqs(&by_ns, 0), [2]);
    assert_eq!(ok(store.audit(&Default::default(), 1, 1))[0].seq, 2);
}

pub fn secrets_are_replaced_listed_and_deleted(store: &dyn Store) {
    let s = |ns: &str, name: &str, v: &str| crate::SecretRow {
        namespace: ns.into(),
        name: name.into(),
        key_id: "k1".into(),
        nonce: "n".into(),
        ciphertext: v.into(),
        updated_ms: 1,
    };
    ok(store.put_secrets(&[s("b", "x", "1"), s("a", "y", "2")]));
    ok(store.put_secrets(&[s("b", "x", "3")]));
    let all = ok(store.secrets());
    let got: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|r| (r.namespace.as_str(), r.name.as_str(), r.ciphertext.as_str()))
        .collect();
    assert_eq!(got, [("a", "y", "2"), ("b", "x", "3")]);
    assert!(ok(store.delete_secret("b", "x")));
    assert!(!ok(store.delete_secret("b", "x")));
    assert_eq!(ok(store.secrets()).len(), 1);
}

pub fn alerts_fire_once_until_resolved(store: &dyn Store) {
    let alert = |id: &str, fired: i64| crate::AlertRow {
        id: id.into(),
        rule: "r".into(),
        key: "k".into(),
        namespace: Some("ns".into()),
        fired_ms: fired,
        summary: "s".into(),
        data: json!({"on": "x"}),
        delivered_ms: None,
        attempts: 0,
        next_ms: Some(fired),
        last_error: None,
        resolved_ms: None,
    };
    assert!(ok(store.fire_alert(&alert("a1", 10))));
    assert!(
        !ok(store.fire_alert(&alert("a2", 11))),
        "the same condition again"
    );
    assert_eq!(ok(store.due_alerts(10, 10)).len(), 1);
    ok(store.alert_attempted(
        "a1",
        crate::AlertAttempt::Failed {
            next_ms: Some(50),
            error: "refused".into(),
        },
    ));
    assert!(
        ok(store.due_alerts(20, 10)).is_empty(),
        "not before its next attempt"
    );
    ok(store.alert_attempted("a1", crate::AlertAttempt::Delivered { at_ms: 60 }));
    let row = ok(store.alerts(None, 10)).remove(0);
    assert_eq!(
        (row.attempts, row.delivered_ms, row.next_ms),
        (2, Some(60), None)
    );
    assert!(ok(store.clear_alert("r", "k")));
    assert!(!ok(store.clear_alert("r", "k")));
    assert!(
        ok(store.fire_alert(&alert("a3", 70))),
        "fires again once resolved"
    );
    let ids: Vec<String> = ok(store.alerts(None, 10))
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["a3"]);
    assert!(ok(store.alerts(Some(70), 10)).is_empty());
}

pub fn short_ids_match_a_prefix_then_a_suffix(store: &dyn Store) {
    for (id, t) in [
        ("0190-aaaa-1111", 1),
        ("0190-aaab-2222", 2),
        ("0191-cccc-1111", 3),
    ] {
        ok(store.apply(&[create(&instance(id, t))]));
    }
    assert_eq!(
        ok(store.instance_ids_matching("0190-aaa", 10)),
        ["0190-aaaa-1111", "0190-aaab-2222"]
    );
    assert_eq!(
        ok(store.instance_ids_matching("0190-aaab", 10)),
        ["0190-aaab-2222"]
    );
    assert_eq!(
        ok(store.instance_ids_matching("1111", 10)),
        ["0190-aaaa-1111", "0191-cccc-1111"]
    );
    assert_eq!(ok(store.instance_ids_matching("0190", 1)).len(), 1);
    // Pattern characters are literal.
    assert!(ok(store.instance_ids_matching("%", 10)).is_empty());
    assert!(ok(store.instance_ids_matching("_111", 10)).is_empty());
    assert!(ok(store.instance_ids_matching("zzz", 10)).is_empty());
}

pub fn history_of_kinds_reads_only_those(store: &dyn Store) {
    ok(store.apply(&[create(&instance("k", 1))]));
    let mut c = append("k", 2..=4);
    c.history[0].kind = "notice".into();
    c.history[1].kind = "delivery".into();
    c.history[2].kind = "notice".into();
    ok(store.apply(&[c]));
    let kinds = |ks: &[&str]| -> Vec<i64> {
        ok(store.history_of_kinds("k", ks))
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(kinds(&["started", "notice"]), [1, 2, 4]);
    assert_eq!(kinds(&["delivery"]), [3]);
    assert!(kinds(&[]).is_empty());
}

pub fn task_stats_merge_per_version_and_task(store: &dyn Store) {
    let row = |version: &str, task: &str, n: i64| crate::TaskStatsRow {
        namespace: "ns".into(),
        name: "wf".into(),
        version: version.into(),
        task: task.into(),
        data: serde_json::json!({"n": n}),
        updated_ms: n,
    };
    // The merge adds the counts (the engine's merges sketches the same way).
    let add = |a: &serde_json::Value, b: &serde_json::Value| serde_json::json!({"n": a["n"].as_i64().unwrap_or(0) + b["n"].as_i64().unwrap_or(0)});
    assert!(ok(store.task_stats("ns", "wf")).is_empty());
    ok(store.merge_task_stats(&[row("1.0.0", "a", 2), row("1.0.0", "b", 1)], &add));
    ok(store.merge_task_stats(&[row("1.0.0", "a", 3), row("2.0.0", "a", 7)], &add));
    let got: Vec<(String, String, i64)> = ok(store.task_stats("ns", "wf"))
        .into_iter()
        .map(|r| (r.version, r.task, r.data["n"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("1.0.0".into(), "a".into(), 5),
            ("1.0.0".into(), "b".into(), 1),
            ("2.0.0".into(), "a".into(), 7),
        ]
    );
    assert!(ok(store.task_stats("ns", "other")).is_empty());
}

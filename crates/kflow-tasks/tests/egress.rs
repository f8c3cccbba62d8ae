//! The egress policy against real HTTP servers on 127.0.0.1: literal addresses, names resolved
//! to denied addresses, redirects to denied places, and per-namespace allow lists.

mod support;

use std::collections::HashMap;

use serde_json::json;

use kflow_effects::OutputFormat;
use kflow_effects::effect::HttpRequest;
use kflow_effects::{Effect, WfError};
use kflow_tasks::egress::{EgressConfig, Policy};
use kflow_tasks::{EffectCtx, ExecConfig, Executor};

use support::{Req, Resp, Server, ctx};

fn get(uri: String, redirect: bool) -> Effect {
    Effect::Http(HttpRequest {
        method: "GET".into(),
        uri,
        headers: Default::default(),
        query: Default::default(),
        body: None,
        output: OutputFormat::Content,
        redirect,
        auth: None,
    })
}

fn executor(default: Policy, namespaces: &[(&str, Policy)]) -> Executor {
    Executor::new(ExecConfig {
        egress: EgressConfig {
            default,
            namespaces: namespaces
                .iter()
                .map(|(n, p)| (n.to_string(), p.clone()))
                .collect::<HashMap<_, _>>(),
        },
        ..ExecConfig::default()
    })
}

fn in_ns(ns: &str) -> EffectCtx {
    EffectCtx {
        namespace: ns.into(),
        ..ctx()
    }
}

#[track_caller]
fn assert_denied(r: Result<serde_json::Value, WfError>, needle: &str) {
    let e = r.expect_err("the call must be refused");
    assert_eq!(e.status, 403, "{e:?}");
    assert_eq!(e.title.as_deref(), Some("Egress denied"), "{e:?}");
    assert!(e.type_.ends_with("/authorization"), "{e:?}");
    let detail = e.detail.clone().unwrap_or_default();
    assert!(detail.contains(needle), "{needle:?} not in {detail:?}");
}

#[tokio::test]
async fn cloud_metadata_is_denied_by_default_without_a_connection() {
    let exec = Executor::new(ExecConfig::default());
    assert_denied(
        exec.perform(
            &ctx(),
            &get("http://169.254.169.254/latest/meta-data/".into(), false),
        )
        .await,
        "169.254.0.0/16",
    );
    assert_denied(
        exec.perform(&ctx(), &get("http://[fd00:ec2::254]/".into(), false))
            .await,
        "fd00:ec2::254",
    );
    assert_denied(
        exec.perform(
            &ctx(),
            &get("http://metadata.google.internal/".into(), false),
        )
        .await,
        "metadata.google.internal",
    );
}

#[tokio::test]
async fn a_name_is_checked_by_the_addresses_it_resolves_to() {
    let server = Server::start(|_: &Req| Resp::json(200, &json!("reached"))).await;
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let deny_loopback = Policy::parse(&["127.0.0.0/8".into(), "::1".into()], &[]).unwrap();
    let exec = executor(deny_loopback, &[]);
    assert_denied(
        exec.perform(&ctx(), &get(format!("http://localhost:{port}/x"), false))
            .await,
        "127.0.0.0/8",
    );
    assert_denied(
        exec.perform(&ctx(), &get(server.url("/x"), false)).await,
        "127.0.0.1",
    );
    assert!(server.requests().is_empty(), "nothing reached the server");
    // The standard policy lets the same calls through.
    let open = Executor::new(ExecConfig::default());
    let out = open
        .perform(&ctx(), &get(format!("http://localhost:{port}/x"), false))
        .await
        .unwrap();
    assert_eq!(out, json!("reached"));
}

#[tokio::test]
async fn redirects_to_denied_places_are_not_followed() {
    let server = Server::start(|r: &Req| match r.path() {
        "/to-metadata" => Resp::new(302).header("location", "http://169.254.169.254/latest"),
        "/to-name" => Resp::new(302).header("location", "http://metadata.google.internal/x"),
        "/to-ok" => Resp::new(302).header("location", "/ok"),
        _ => Resp::json(200, &json!("fine")),
    })
    .await;
    let exec = Executor::new(ExecConfig::default());
    assert_denied(
        exec.perform(&ctx(), &get(server.url("/to-metadata"), true))
            .await,
        "169.254",
    );
    assert_denied(
        exec.perform(&ctx(), &get(server.url("/to-name"), true))
            .await,
        "metadata.google.internal",
    );
    let ok = exec
        .perform(&ctx(), &get(server.url("/to-ok"), true))
        .await
        .unwrap();
    assert_eq!(ok, json!("fine"));
}

#[tokio::test]
async fn a_namespace_allow_list_confines_its_calls_only() {
    let server = Server::start(|_: &Req| Resp::json(200, &json!(1))).await;
    let locked = Policy::parse(&[], &["10.9.9.9".into(), "*.corp.example".into()]).unwrap();
    let exec = executor(Policy::standard(), &[("locked", locked)]);
    assert_denied(
        exec.perform(&in_ns("locked"), &get(server.url("/"), false))
            .await,
        "allow list",
    );
    // Another namespace, and the server-wide policy, are not affected.
    assert_eq!(
        exec.perform(&in_ns("open"), &get(server.url("/"), false))
            .await
            .unwrap(),
        json!(1)
    );
    // The namespace still has the server's denials.
    assert_denied(
        exec.perform(
            &in_ns("locked"),
            &get("http://169.254.169.254/".into(), false),
        )
        .await,
        "169.254",
    );
}

//! `call: openapi` with Swagger 2.0 and OpenAPI 3.0 documents served by a real HTTP server.

mod support;

use serde_json::{Value, json};

use kflow_effects::OutputFormat;
use kflow_effects::effect::{Auth, OpenApiRequest};
use kflow_effects::{Effect, WfError};
use kflow_tasks::{ExecConfig, Executor};

use support::{Req, Resp, Server, ctx, map};

fn swagger_doc() -> Value {
    // No `host`: the document's own host is used.
    json!({
        "swagger": "2.0",
        "info": {"title": "pets", "version": "1"},
        "basePath": "/v2",
        "paths": {
            "/pet/{petId}": {
                "get": {
                    "operationId": "getPetById",
                    "produces": ["application/xml", "application/json"],
                    "parameters": [{"name": "petId", "in": "path", "required": true, "type": "integer"}]
                }
            },
            "/pet/findByStatus": {
                "get": {
                    "operationId": "findPetsByStatus",
                    "parameters": [{"name": "status", "in": "query", "required": true, "type": "array",
                                    "items": {"type": "string"}, "collectionFormat": "multi"}]
                }
            },
            "/pet": {
                "post": {
                    "operationId": "addPet",
                    "consumes": ["application/json"],
                    "parameters": [{"$ref": "#/parameters/trace"}, {"name": "body", "in": "body", "required": true}]
                }
            }
        },
        "parameters": {"trace": {"name": "X-Trace", "in": "header", "type": "string"}}
    })
}

fn openapi3_doc() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "items", "version": "1"},
        "servers": [{"url": "/api/{v}", "variables": {"v": {"default": "v1"}}}],
        "paths": {
            "/items/{id}": {
                "parameters": [{"$ref": "#/components/parameters/id"}],
                "get": {
                    "operationId": "getItem",
                    "parameters": [{"name": "fields", "in": "query", "schema": {"type": "array"}}],
                    "responses": {"200": {"description": "ok", "content": {"application/json": {}}}}
                },
                "put": {
                    "operationId": "putItem",
                    "requestBody": {"required": true, "content": {"application/json": {}}},
                    "responses": {"200": {"description": "ok"}}
                }
            }
        },
        "components": {"parameters": {"id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}}}
    })
}

fn handler(r: &Req) -> Resp {
    match (r.method.as_str(), r.path()) {
        ("GET", "/swagger.json") => Resp::json(200, &swagger_doc()),
        ("GET", "/openapi.json") => Resp::json(200, &openapi3_doc()),
        ("GET", "/secured/openapi.json")
            if r.header("authorization") == Some("Bearer doc-token") =>
        {
            Resp::json(200, &openapi3_doc())
        }
        ("GET", "/secured/openapi.json") => Resp::new(401),
        ("GET", "/not-openapi.json") => Resp::json(200, &json!({"hello": 1})),
        ("GET", "/openapi.yaml") => Resp::text(
            200,
            "application/yaml",
            "openapi: 3.0.0\ninfo:\n  title: y\n  version: '1'\npaths:\n  /ping:\n    get:\n      operationId: ping\n",
        ),
        ("GET", "/ping") => Resp::json(200, &json!("pong")),
        ("GET", p) if p.starts_with("/v2/pet/") && p != "/v2/pet/findByStatus" => Resp::json(
            200,
            &json!({"id": p.trim_start_matches("/v2/pet/"), "accept": r.header("accept"), "name": "milou"}),
        ),
        ("GET", "/v2/pet/findByStatus") => Resp::json(200, &json!({"query": r.query()})),
        ("POST", "/v2/pet") => Resp::json(
            200,
            &json!({"body": r.body_json(), "trace": r.header("x-trace"), "ct": r.header("content-type")}),
        ),
        ("GET", p) if p.starts_with("/api/v1/items/") => {
            Resp::json(200, &json!({"path": p, "query": r.query()}))
        }
        ("PUT", p) if p.starts_with("/api/v1/items/") => {
            Resp::json(200, &json!({"path": p, "body": r.body_json()}))
        }
        _ => Resp::new(404),
    }
}

fn call(document: String, op: &str, params: Value) -> OpenApiRequest {
    OpenApiRequest {
        document,
        document_auth: None,
        operation_id: op.into(),
        parameters: map(params),
        auth: None,
        output: OutputFormat::Content,
        redirect: false,
    }
}

fn is_type(e: &WfError, kind: &str) -> bool {
    e.type_.ends_with(&format!("/{kind}"))
}

#[tokio::test]
async fn swagger2_path_query_and_body() {
    let server = Server::start(handler).await;
    let exec = Executor::new(ExecConfig::default());
    let doc = server.url("/swagger.json");

    let out = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(doc.clone(), "getPetById", json!({"petId": 7}))),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"id": "7", "accept": "application/json", "name": "milou"})
    );

    let out = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(
                doc.clone(),
                "findPetsByStatus",
                json!({"status": ["available", "sold"]}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(out["query"], "status=available&status=sold");

    // The body parameter by name ...
    let out = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(
                doc.clone(),
                "addPet",
                json!({"body": {"name": "rex"}, "X-Trace": "t1"}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"body": {"name": "rex"}, "trace": "t1", "ct": "application/json"})
    );
    // ... or the parameters the operation does not declare.
    let out = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(
                doc.clone(),
                "addPet",
                json!({"name": "rex", "age": 3}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(out["body"], json!({"name": "rex", "age": 3}));

    // The document was fetched once.
    assert_eq!(server.hits("/swagger.json"), 1);

    // Every request carries the idempotency key.
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.path().starts_with("/v2/"))
            .all(|r| r.header("idempotency-key") == Some("inst-1-42"))
    );
}

#[tokio::test]
async fn openapi3_servers_params_and_request_body() {
    let server = Server::start(handler).await;
    let exec = Executor::new(ExecConfig::default());
    let doc = server.url("/openapi.json");

    let out = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(
                doc.clone(),
                "getItem",
                json!({"id": "a/b", "fields": ["x", "y"]}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"path": "/api/v1/items/a%2Fb", "query": "fields=x&fields=y"})
    );

    let mut req = call(doc.clone(), "putItem", json!({"id": "9", "name": "thing"}));
    req.output = OutputFormat::Response;
    let out = exec.perform(&ctx(), &Effect::OpenApi(req)).await.unwrap();
    assert_eq!(out["statusCode"], 200);
    assert_eq!(out["request"]["method"], "PUT");
    assert_eq!(
        out["content"],
        json!({"path": "/api/v1/items/9", "body": {"name": "thing"}})
    );

    // Required request body missing.
    let err = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(doc.clone(), "putItem", json!({"id": "9"}))),
        )
        .await
        .unwrap_err();
    assert!(is_type(&err, "validation"), "{err:?}");
}

#[tokio::test]
async fn unknown_operation_and_missing_parameter() {
    let server = Server::start(handler).await;
    let exec = Executor::new(ExecConfig::default());
    let doc = server.url("/swagger.json");
    let err = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(doc.clone(), "deletePet", json!({}))),
        )
        .await
        .unwrap_err();
    assert!(is_type(&err, "configuration"), "{err:?}");
    let detail = err.detail.unwrap();
    assert!(
        detail.contains("deletePet") && detail.contains("getPetById") && detail.contains("addPet"),
        "{detail}"
    );

    let err = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(doc.clone(), "getPetById", json!({}))),
        )
        .await
        .unwrap_err();
    assert!(is_type(&err, "validation"), "{err:?}");
    assert!(err.detail.unwrap().contains("petId"));

    let err = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(server.url("/not-openapi.json"), "x", json!({}))),
        )
        .await
        .unwrap_err();
    assert!(is_type(&err, "configuration"), "{err:?}");

    let err = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(server.url("/missing.json"), "x", json!({}))),
        )
        .await
        .unwrap_err();
    assert!(is_type(&err, "communication"), "{err:?}");
    assert_eq!(err.status, 404);
}

#[tokio::test]
async fn document_authentication() {
    let server = Server::start(handler).await;
    let exec = Executor::new(ExecConfig::default());
    let mut req = call(
        server.url("/secured/openapi.json"),
        "getItem",
        json!({"id": "1"}),
    );
    let err = exec
        .perform(&ctx(), &Effect::OpenApi(req.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.status, 401);
    req.document_auth = Some(Auth::Bearer {
        token: "doc-token".into(),
    });
    // Servers are relative to the document: /api/v1 on the same origin.
    let out = exec.perform(&ctx(), &Effect::OpenApi(req)).await.unwrap();
    assert_eq!(out["path"], "/api/v1/items/1");
}

#[tokio::test]
async fn yaml_document() {
    let server = Server::start(handler).await;
    let exec = Executor::new(ExecConfig::default());
    let out = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(server.url("/openapi.yaml"), "ping", json!({}))),
        )
        .await;
    assert_eq!(out.unwrap(), json!("pong"));
}

#[tokio::test]
async fn file_document() {
    let server = Server::start(handler).await;
    let dir = std::env::temp_dir().join(format!("kflow-tasks-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("swagger.json");
    let mut doc = swagger_doc();
    doc["host"] = json!(server.base.trim_start_matches("http://"));
    doc["schemes"] = json!(["http"]);
    std::fs::write(&path, doc.to_string()).unwrap();
    let exec = Executor::new(ExecConfig::default());
    let out = exec
        .perform(
            &ctx(),
            &Effect::OpenApi(call(
                format!("file://{}", path.display()),
                "getPetById",
                json!({"petId": 3}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(out["id"], "3");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Any node answers any request: on a database shared by several nodes, a request that changes
//! or follows an instance another node drives (cancel, suspend, resume, explain, a live watch) is
//! forwarded to that node, once (`x-kflow-forwarded`), after this node has authenticated it; the
//! answer, a stream included, is passed back as it comes.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use super::AppState;
use super::error::ApiError;
use crate::engine::Route;

/// Set on a forwarded request: the node that forwarded it (never forwarded again).
pub const FORWARDED: &str = "x-kflow-forwarded";

/// Set on the answer to a forwarded request: the API of the node that served it.
pub const SERVED_BY: &str = "x-kflow-served-by";

/// The instance a path acts on, for the actions the driving node must serve.
fn instance_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/instances/")?;
    let (id, action) = rest.split_once('/')?;
    matches!(
        action,
        "cancel" | "suspend" | "resume" | "explain" | "watch"
    )
    .then_some(id)
}

pub async fn forward(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !st.engine.clustered() || req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let Some(id) = instance_of(req.uri().path()).map(str::to_string) else {
        return next.run(req).await;
    };
    match st.engine.route(&id).await {
        Ok(Route::Here) | Err(_) => next.run(req).await,
        Ok(Route::Moving(node)) => ApiError::unavailable(format!(
            "instance {id} is driven by node {node}, whose lease lapsed: another node is \
             taking it over; try again in a moment"
        ))
        .into_response(),
        Ok(Route::Node(api)) => match {
            st.engine.count_forwarded();
            send(&st, &api, req).await
        } {
            Ok(r) => r,
            Err(m) => ApiError::unavailable(format!(
                "instance {id} is driven by the node at {api}, which did not answer ({m}); \
                 try again in a moment"
            ))
            .into_response(),
        },
    }
}

fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// Headers never passed on: hop by hop, set again by the client, or checked here already
/// (`Origin` and `Referer` name this node's address, not the next one's: passed on, the next
/// node would refuse a browser's request as cross-site).
fn hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "keep-alive"
            | "upgrade"
            | "origin"
            | "referer"
    )
}

async fn send(st: &AppState, api: &str, req: Request) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let bytes = axum::body::to_bytes(body, st.config.max_body_bytes)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    let mut out = client().request(parts.method.clone(), format!("{api}{path}"));
    for (name, value) in parts.headers.iter() {
        if !hop(name) {
            out = out.header(name, value);
        }
    }
    let me = st.engine.node_id().unwrap_or_default();
    out = out.header(
        FORWARDED,
        HeaderValue::from_str(&me).unwrap_or(HeaderValue::from_static("node")),
    );
    let resp = out.body(bytes).send().await.map_err(|e| e.to_string())?;
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY))
        .header(SERVED_BY, api);
    for (name, value) in resp.headers() {
        if !hop(name) {
            builder = builder.header(name, value);
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    builder
        .body(Body::from_stream(stream))
        .map_err(|e| e.to_string())
}

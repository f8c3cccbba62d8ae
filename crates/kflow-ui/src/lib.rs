//! kflow's web UI, served by the binary at `/ui` (and `/`).
//!
//! Pages are rendered on the server (maud templates: every value is escaped unless marked
//! otherwise, and the only unescaped markup is the graph's SVG, escaped where it is built).
//! Their data comes from the REST API only, called in-process with the browser's token
//! ([`api`]): the UI has no data path of its own, so the API's roles, namespaces and audit hold
//! for every page. What changes something (start, cancel, suspend, resume, register, pause)
//! is done by the page's script calling the API directly, with the same token.
//!
//! - [`api`]: the in-process client; [`render`]: the shell, badges, security headers;
//! - [`graph`]: a definition's graph laid out by layout-rs, drawn as SVG with task ids;
//! - [`pages`]: one module per area; [`assets`]: the embedded stylesheet and script.
//!
//! Signing in: with authentication on, `/ui/login` takes a token, checks it against the API
//! (`whoami`) and keeps it in an HttpOnly, SameSite=Strict cookie, which the API also accepts
//! (so the page's script and its live streams need no token in reach of script).

pub mod api;
pub mod assets;
pub mod graph;
pub mod pages;
pub mod render;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;

use api::{Api, UiError};
use render::{Viewer, error_page, ok};

/// What every UI handler gets: the API router to call.
#[derive(Clone)]
pub struct Ui {
    api: Router,
}

/// The UI's routes, over `api` (the whole REST API router, state applied).
pub fn router(api: Router) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(|| async { Redirect::to("/ui/instances") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/instances") }))
        .route("/ui/assets/{name}", get(assets::serve))
        .route(
            "/ui/login",
            get(pages::login::form).post(pages::login::submit),
        )
        .route("/ui/logout", post(pages::login::logout))
        .route("/ui/instances", get(instances))
        .route("/ui/instances/{id}", get(instance))
        .route("/ui/workflows", get(workflows))
        .route("/ui/workflows/{ns}/{name}", get(workflow))
        .route("/ui/workflows/{ns}/{name}/diff", get(diff))
        .route("/ui/workflows/{ns}/{name}/analysis", get(analysis))
        .route("/ui/workflows/{ns}/{name}/start", get(start))
        .route("/ui/editor", get(editor))
        .route("/ui/editor/check", post(pages::editor::check))
        .route("/ui/schedules", get(schedules))
        .route("/ui/workers", get(workers))
        .route("/ui/alerts", get(alerts))
        .route("/ui/{*rest}", get(not_found))
        .with_state(Ui { api })
}

/// Builds a page: who is looking first (401 leads to the login page), then the page itself;
/// an error becomes an error page with the API's message.
async fn serve<F, Fut>(
    ui: &Ui,
    headers: &HeaderMap,
    uri: &Uri,
    active: &'static str,
    f: F,
) -> Response
where
    F: FnOnce(Api, Viewer) -> Fut,
    Fut: Future<Output = Result<(String, Markup), UiError>>,
{
    let back = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let api = Api::new(ui.api.clone(), headers);
    let viewer = match api.get("/api/v1/whoami").await {
        Ok(me) => Viewer { me },
        Err(e) => return error_page(e, None, &back),
    };
    match f(api, viewer.clone()).await {
        Ok((title, body)) => ok(render::page(&title, Some(&viewer), active, body)),
        Err(e) => error_page(e, Some(&viewer), &back),
    }
}

type Params = Query<HashMap<String, String>>;

async fn instances(State(ui): State<Ui>, h: HeaderMap, uri: Uri, Query(q): Params) -> Response {
    serve(&ui, &h, &uri, "instances", |api, v| async move {
        pages::instances::list(&api, &v, &q).await
    })
    .await
}

async fn instance(
    State(ui): State<Ui>,
    h: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    serve(&ui, &h, &uri, "instances", |api, v| async move {
        pages::instances::detail(&api, &v, &id, &q).await
    })
    .await
}

async fn workflows(State(ui): State<Ui>, h: HeaderMap, uri: Uri) -> Response {
    serve(&ui, &h, &uri, "workflows", |api, v| async move {
        pages::workflows::list(&api, &v).await
    })
    .await
}

async fn workflow(
    State(ui): State<Ui>,
    h: HeaderMap,
    uri: Uri,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    serve(&ui, &h, &uri, "workflows", |api, v| async move {
        pages::workflows::detail(&api, &v, &ns, &name, q.get("version").map(String::as_str)).await
    })
    .await
}

async fn diff(
    State(ui): State<Ui>,
    h: HeaderMap,
    uri: Uri,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    serve(&ui, &h, &uri, "workflows", |api, _| async move {
        pages::workflows::diff(&api, &ns, &name, &q).await
    })
    .await
}

async fn analysis(
    State(ui): State<Ui>,
    h: HeaderMap,
    uri: Uri,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    serve(&ui, &h, &uri, "workflows", |api, _| async move {
        pages::workflows::analysis(&api, &ns, &name).await
    })
    .await
}

async fn start(
    State(ui): State<Ui>,
    h: HeaderMap,
    uri: Uri,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    serve(&ui, &h, &uri, "workflows", |api, v| async move {
        pages::start::form(&api, &v, &ns, &name, q.get("version").map(String::as_str)).await
    })
    .await
}

async fn editor(State(ui): State<Ui>, h: HeaderMap, uri: Uri, Query(q): Params) -> Response {
    serve(&ui, &h, &uri, "editor", |api, v| async move {
        pages::editor::page(&api, &v, &q).await
    })
    .await
}

async fn schedules(State(ui): State<Ui>, h: HeaderMap, uri: Uri) -> Response {
    serve(&ui, &h, &uri, "schedules", |api, v| async move {
        pages::ops::schedules(&api, &v).await
    })
    .await
}

async fn workers(State(ui): State<Ui>, h: HeaderMap, uri: Uri) -> Response {
    serve(&ui, &h, &uri, "workers", |api, _| async move {
        pages::ops::workers(&api).await
    })
    .await
}

async fn alerts(State(ui): State<Ui>, h: HeaderMap, uri: Uri) -> Response {
    serve(&ui, &h, &uri, "alerts", |api, _| async move {
        pages::ops::alerts(&api).await
    })
    .await
}

async fn not_found(uri: Uri) -> Response {
    error_page(
        UiError::NotFound(format!("there is no page at {}", uri.path())),
        None,
        "/ui",
    )
}

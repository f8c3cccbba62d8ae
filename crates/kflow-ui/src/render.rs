//! The page shell and the small pieces every page uses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kflow_api::instances::Status;
use kflow_api::security::Whoami;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::api::UiError;

/// Who looks at the page, and what they may do (the same ranks as the API's roles; the API
/// checks again on every call, the page only hides what would be refused).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub me: Whoami,
}

impl Viewer {
    fn rank(&self) -> u8 {
        match self.me.role.as_str() {
            "viewer" => 1,
            "operator" => 2,
            "editor" => 3,
            "admin" => 4,
            _ => 0,
        }
    }
    /// Start, cancel, suspend, resume, pause schedules.
    pub fn may_operate(&self) -> bool {
        self.rank() >= 2
    }
    /// Register definitions.
    pub fn may_edit(&self) -> bool {
        self.rank() >= 3
    }
}

/// A whole page: header, navigation, the body.
pub fn page(title: &str, viewer: Option<&Viewer>, active: &str, body: Markup) -> Markup {
    let nav: [(&str, &str, &str); 6] = [
        ("instances", "/ui/instances", "Instances"),
        ("workflows", "/ui/workflows", "Workflows"),
        ("editor", "/ui/editor", "Editor"),
        ("schedules", "/ui/schedules", "Schedules"),
        ("workers", "/ui/workers", "Workers"),
        ("alerts", "/ui/alerts", "Alerts"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · kflow" }
                link rel="stylesheet" href=(asset_url("app.css"));
                script src=(asset_url("app.js")) defer {}
            }
            body {
                header.top {
                    a.brand href="/ui" { "kflow" }
                    nav {
                        @for (key, href, label) in nav {
                            a href=(href) class=@if key == active { "active" } { (label) }
                        }
                    }
                    @if let Some(v) = viewer {
                        span.who {
                            (v.me.name) " · " (v.me.role)
                            @if v.me.authenticated {
                                form.inline method="post" action="/ui/logout" {
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The URL of an embedded asset, with its content hash so browsers may cache it for good.
pub fn asset_url(name: &str) -> String {
    format!("/ui/assets/{}?v={}", name, crate::assets::version())
}

/// A status as a coloured badge.
pub fn status_badge(s: &str) -> Markup {
    html! { span class={ "badge s-" (s) } data-status=(s) { (s) } }
}

pub fn status_str(s: Status) -> &'static str {
    s.as_str()
}

/// Pretty JSON, shown as text.
pub fn json_block(v: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// A duration in ms, readable.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", ms as f64 / 1e3)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Security headers for every UI answer: no inline script or style may run (everything the
/// page runs comes from the embedded assets), no framing, no sniffing, no referrer.
pub fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with
    // form posts, which the same-origin checks must refuse.
    set(h, header::REFERRER_POLICY, "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    resp
}

/// A page answer.
pub fn ok(m: Markup) -> Response {
    harden(m.into_response())
}

/// The answer for a page that could not be built: the login page for missing credentials, else
/// an error page with the status and the API's message.
pub fn error_page(e: UiError, viewer: Option<&Viewer>, back_to: &str) -> Response {
    if let UiError::Unauthorized(_) = e {
        let to = format!("/ui/login?next={}", crate::api::enc(back_to));
        return harden(
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, to)],
                "sign in first",
            )
                .into_response(),
        );
    }
    let status = e.status();
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::BAD_REQUEST => "Bad request",
        _ => "Error",
    };
    let body = html! {
        section.error {
            h1 { (status.as_u16()) " · " (title) }
            pre.message { (e.message()) }
            p { a href="/ui" { "Back to the instances" } }
        }
    };
    harden((status, page(title, viewer, "", body)).into_response())
}

/// Raw, already-safe markup (the graph's SVG, escaped where it is built).
pub fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

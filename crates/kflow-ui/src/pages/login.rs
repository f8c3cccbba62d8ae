//! Signing in with a token, and out.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use crate::Ui;
use crate::api::{Api, COOKIE, UiError};
use crate::render::{harden, page};

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
    next: Option<String>,
}

/// Only a page of the UI itself (no open redirect to another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/ui/instances".into(),
    }
}

fn login_page(next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        section.login {
            h1 { "Sign in" }
            p { "Paste a kflow token (" code { "kflow token create NAME --role viewer" } " makes one; the server printed the admin token at its first start)." }
            @if let Some(e) = error { p.error-line { (e) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label { "Token" input type="password" name="token" autocomplete="current-password" required autofocus; }
                button type="submit" { "Sign in" }
            }
        }
    };
    harden((status, page("Sign in", None, "", body)).into_response())
}

pub async fn form(Query(q): Query<Next>) -> Response {
    login_page(&safe_next(q.next.as_deref()), None, StatusCode::OK)
}

/// A form post from another site is refused (the API's own `Origin` check does the same).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or(origin);
    authority.eq_ignore_ascii_case(host)
}

pub async fn submit(State(ui): State<Ui>, headers: HeaderMap, Form(f): Form<Login>) -> Response {
    let next = safe_next(f.next.as_deref());
    if !same_origin(&headers) {
        return login_page(
            &next,
            Some("a sign-in from another site is refused"),
            StatusCode::FORBIDDEN,
        );
    }
    let token = f.token.trim();
    if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return login_page(&next, Some("that is not a token"), StatusCode::BAD_REQUEST);
    }
    let api = Api::new(ui.api.clone(), &headers).with_token(token);
    match api
        .get::<kflow_api::security::Whoami>("/api/v1/whoami")
        .await
    {
        Ok(_) => harden(
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, next),
                    (
                        header::SET_COOKIE,
                        format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
                    ),
                ],
            )
                .into_response(),
        ),
        Err(UiError::Unauthorized(m)) => login_page(&next, Some(&m), StatusCode::UNAUTHORIZED),
        Err(e) => login_page(&next, Some(e.message()), e.status()),
    }
}

pub async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return login_page(
            "/ui",
            Some("a sign-out from another site is refused"),
            StatusCode::FORBIDDEN,
        );
    }
    harden(
        (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/ui/login".to_string()),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
                ),
            ],
        )
            .into_response(),
    )
}

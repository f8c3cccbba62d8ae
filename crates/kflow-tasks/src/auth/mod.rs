//! Authentication for HTTP and OpenAPI calls: Basic, Bearer, Digest and OAuth2/OpenID Connect.
//!
//! Basic sends `Authorization: Basic base64(username:password)`, Bearer sends the token; both
//! are here. Digest answers the server's challenge after a first 401 (`digest`); OAuth2 and OIDC
//! obtain a token from the authority and send it as a bearer token (`oauth2`). The http module
//! asks this one for the header to send first ([`authorization`]) and, after a 401, for the
//! Digest answer ([`digest_answer`]).

mod digest;
mod oauth2;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use kflow_effects::WfError;
use kflow_effects::effect::Auth;
use kflow_effects::errors::AUTHENTICATION;

use crate::Inner;

pub(crate) use digest::answer as digest_answer;
pub(crate) use oauth2::TokenCache;

fn auth_error(detail: impl Into<String>) -> WfError {
    WfError::standard(AUTHENTICATION, 401, "Authentication Error", detail)
}

/// The `Authorization` header value for Basic, Bearer and OAuth2 (with the token cache key for
/// OAuth2, so that a refused token can be dropped). Digest has no value before the challenge.
pub(crate) async fn authorization(
    inner: &Inner,
    auth: &Auth,
) -> Result<(String, Option<String>), WfError> {
    match auth {
        Auth::Basic { username, password } => Ok((basic(username, password), None)),
        Auth::Bearer { token } => {
            if token.is_empty() {
                return Err(auth_error("bearer authentication: the token is empty"));
            }
            Ok((format!("Bearer {token}"), None))
        }
        Auth::Digest { .. } => Err(WfError::runtime(
            "digest authentication has no preemptive header",
        )),
        Auth::OAuth2 { oidc, properties } => {
            let (token, key) = oauth2::token(inner, *oidc, properties).await?;
            Ok((format!("Bearer {token}"), Some(key)))
        }
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", B64.encode(format!("{user}:{pass}")))
}

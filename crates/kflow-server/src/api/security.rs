//! `/api/v1/whoami`, `/api/v1/tokens` and `/api/v1/audit`: who is calling, tokens (create, list,
//! revoke) and the audit trail (list, verify).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use kflow_store::security::ChainVerifier;
use kflow_store::{AuditFilter, AuditRow, TokenRow};

use super::AppState;
use kflow_api::security::{
    AuditEntry, AuditList, AuditVerdict, CreateToken, CreatedToken, Rotated, SecretList,
    SecretValue, SecretView, TokenList, TokenView, Whoami,
};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiPath, ApiQuery, JsonBody};
use crate::auth::tokens::NewToken;
use crate::auth::{Audited, AuthMode, Caller, Role, TokenError, Tokens};

fn scope_list(c: &Caller) -> Vec<String> {
    c.scope.list().unwrap_or_else(|| vec!["*".into()])
}

/// The caller: token name, role and namespaces.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "security",
    responses((status = 200, description = "OK", body = Whoami), (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn whoami(State(st): State<AppState>, caller: Caller) -> Json<Whoami> {
    Json(Whoami {
        namespaces: scope_list(&caller),
        name: caller.name,
        role: caller.role.as_str().into(),
        authenticated: matches!(st.auth, AuthMode::Tokens(_)),
    })
}

/// A token's row as the API lists it (never its hash).
fn token_view(r: TokenRow) -> TokenView {
    TokenView {
        id: r.id,
        name: r.name,
        role: r.role,
        namespaces: r.namespaces,
        created_ms: r.created_ms,
        created_by: r.created_by,
        expires_ms: r.expires_ms,
        revoked_ms: r.revoked_ms,
    }
}

/// An audit row as the API lists it.
fn audit_entry(r: AuditRow) -> AuditEntry {
    AuditEntry {
        seq: r.seq,
        at_ms: r.entry.at_ms,
        actor: r.entry.actor,
        action: r.entry.action,
        resource: r.entry.resource,
        namespace: r.entry.namespace,
        source: r.entry.source,
        result: r.entry.result,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

fn tokens(st: &AppState) -> ApiResult<&Tokens> {
    match &st.auth {
        AuthMode::Tokens(t) => Ok(t),
        AuthMode::Off => Err(ApiError::conflict(
            "this server runs without authentication (--insecure-no-auth): it has no tokens",
        )),
    }
}

fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Invalid(m) => ApiError::invalid(m),
        TokenError::Conflict(m) => ApiError::conflict(m),
        other => ApiError::internal(other.to_string()),
    }
}

/// Creates a token (admin). The answer holds the token once; only its hash is stored.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "security", request_body = CreateToken,
    responses((status = 201, description = "Created", body = CreatedToken), (status = 400, description = "The request is invalid (the error says where)", body = ErrorBody),
        (status = 403, description = "The token may not do this", body = ErrorBody), (status = 409, description = "A live token has that name", body = ErrorBody)))]
pub async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateToken>,
) -> ApiResult<Response> {
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::invalid(format!(
            "role {:?}: one of viewer, operator, editor, admin, worker",
            req.role
        ))
    })?;
    let now = st.engine.now_ms();
    let expires_ms = match req.expires_in_seconds {
        None => None,
        Some(0) => return Err(ApiError::invalid("expires_in_seconds must be positive")),
        Some(s) => Some(now.saturating_add(s.min(100 * 365 * 86_400) as i64 * 1000)),
    };
    let (row, token) = tokens(&st)?
        .create(
            NewToken {
                name: req.name,
                role,
                namespaces: req.namespaces,
                expires_ms,
            },
            &caller,
            now,
        )
        .await
        .map_err(token_error)?;
    let mut resp = (
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            info: token_view(row.clone()),
        }),
    )
        .into_response();
    resp.extensions_mut().insert(Audited {
        resource: format!(
            "token {} ({}, {}, {})",
            row.name,
            row.id,
            row.role,
            row.namespaces.join(",")
        ),
        namespace: None,
        recorded: false,
    });
    Ok(resp)
}

/// Lists the tokens within the caller's namespaces (admin), revoked ones included.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "security",
    responses((status = 200, description = "OK", body = TokenList), (status = 403, description = "The token may not do this", body = ErrorBody)))]
pub async fn list_tokens(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<TokenList>> {
    Ok(Json(TokenList {
        items: tokens(&st)?
            .list(&caller)
            .into_iter()
            .map(token_view)
            .collect(),
    }))
}

/// Revokes a token by id or name (admin): it stops working at once.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "security",
    params(("id" = String, Path, description = "Token id or name")),
    responses((status = 200, description = "OK", body = TokenView), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn revoke_token(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TokenView>> {
    let row = tokens(&st)?
        .revoke(&id, &caller, st.engine.now_ms())
        .await
        .map_err(token_error)?
        .ok_or_else(|| ApiError::not_found(format!("no live token {id:?}")))?;
    Ok(Json(token_view(row)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub actor: Option<String>,
    /// Entries whose action starts with this (e.g. `instances.` or `auth.denied`).
    pub action: Option<String>,
    pub namespace: Option<String>,
    /// Since (ms since the epoch).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Entries after this seq.
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

fn blocking<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&dyn kflow_store::Store) -> kflow_store::Result<T> + Send + 'static,
) -> impl std::future::Future<Output = ApiResult<T>> {
    let store = st.engine.store();
    async move {
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("the store failed: {e}")))
    }
}

/// Lists audit entries (admin over every namespace), oldest first, filtered.
#[utoipa::path(get, path = "/api/v1/audit", tag = "security", params(AuditQuery),
    responses((status = 200, description = "OK", body = AuditList), (status = 403, description = "The token may not do this", body = ErrorBody)))]
pub async fn list_audit(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    caller.must_be_global()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        namespace: q.namespace,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
    };
    let after = q.after.unwrap_or(0);
    let items = blocking(&st, move |s| s.audit(&filter, after, limit)).await?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|r| r.seq))
        .flatten();
    let items = items.into_iter().map(audit_entry).collect();
    Ok(Json(AuditList { items, next }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// An exported head's seq: the chain must reach it with `head_hash`.
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
}

/// Recomputes the whole chain (admin over every namespace) and names the first entry that was
/// altered, removed or reordered; with an exported head, also a truncated tail.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "security", params(VerifyQuery),
    responses((status = 200, description = "OK", body = AuditVerdict), (status = 403, description = "The token may not do this", body = ErrorBody)))]
pub async fn verify_audit(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<VerifyQuery>,
) -> ApiResult<Json<AuditVerdict>> {
    caller.must_be_global()?;
    let head = match (q.head_seq, q.head_hash) {
        (Some(s), Some(h)) => Some((s, h)),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "give both head_seq and head_hash, or neither",
            ));
        }
    };
    let verdict = blocking(&st, move |s| {
        let mut v = ChainVerifier::default();
        let mut after = 0;
        let mut at_head: Option<String> = None;
        let mut broken = None;
        'pages: loop {
            let rows = s.audit(&AuditFilter::default(), after, 1000)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                if let Err(b) = v.check(r) {
                    broken = Some(b);
                    break 'pages;
                }
                if head.as_ref().is_some_and(|(seq, _)| *seq == r.seq) {
                    at_head = Some(r.hash.clone());
                }
                after = r.seq;
            }
        }
        if broken.is_none()
            && let Some((seq, hash)) = &head
            && let Err(b) = v.reaches(*seq, hash, at_head.as_deref())
        {
            broken = Some(b);
        }
        let (head_seq, head_hash) = v.head();
        Ok(AuditVerdict {
            ok: broken.is_none(),
            checked: v.checked(),
            head_seq,
            head_hash: head_hash.to_string(),
            broken_at: broken.as_ref().map(|b| b.seq),
            reason: broken.map(|b| b.reason),
        })
    })
    .await?;
    Ok(Json(verdict))
}

fn secret_name(kind: &str, s: &str) -> ApiResult<()> {
    if crate::auth::tokens::valid_name(s) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{kind} {s:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// Lists the secrets of the caller's namespaces: names only (admin).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "security",
    responses((status = 200, description = "OK", body = SecretList), (status = 403, description = "The token may not do this", body = ErrorBody)))]
pub async fn list_secrets(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SecretList>> {
    let vault = st.engine.vault();
    let names = tokio::task::spawn_blocking(move || vault.names())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(SecretList {
        items: names
            .into_iter()
            .filter(|(ns, _, _)| caller.sees(ns))
            .map(|(namespace, name, updated_ms)| SecretView {
                namespace,
                name,
                updated_ms,
            })
            .collect(),
    }))
}

/// Sets a secret of a namespace (admin of that namespace). The value is sealed before it is
/// stored and never shown again; workflows of the namespace read it as `$secrets.NAME` when
/// they declare it in `use.secrets`.
#[utoipa::path(put, path = "/api/v1/secrets/{namespace}/{name}", tag = "security",
    request_body = SecretValue,
    params(("namespace" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Secret name")),
    responses((status = 200, description = "OK", body = SecretView), (status = 400, description = "The request is invalid (the error says where)", body = ErrorBody), (status = 403, description = "The token may not do this", body = ErrorBody)))]
pub async fn put_secret(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name)): ApiPath<(String, String)>,
    JsonBody(req): JsonBody<SecretValue>,
) -> ApiResult<Response> {
    secret_name("namespace", &ns)?;
    secret_name("secret name", &name)?;
    caller.may_act_in(&ns)?;
    let now = st.engine.now_ms();
    let (vault, n, m) = (st.engine.vault(), ns.clone(), name.clone());
    tokio::task::spawn_blocking(move || vault.set(&n, &m, &req.value, now))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::invalid)?;
    let note = Audited {
        resource: format!("secret {ns}/{name}"),
        namespace: Some(ns.clone()),
        recorded: false,
    };
    Ok(super::instances::with_note(
        Json(SecretView {
            namespace: ns,
            name,
            updated_ms: now,
        }),
        note,
    ))
}

/// Removes a secret (admin of its namespace).
#[utoipa::path(delete, path = "/api/v1/secrets/{namespace}/{name}", tag = "security",
    params(("namespace" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Secret name")),
    responses((status = 200, description = "Removed"), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn delete_secret(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((ns, name)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    caller.must_see(&ns, || format!("no secret {ns}/{name}"))?;
    let (vault, n, m) = (st.engine.vault(), ns.clone(), name.clone());
    let gone = tokio::task::spawn_blocking(move || vault.remove(&n, &m))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::internal)?;
    if !gone {
        return Err(ApiError::not_found(format!("no secret {ns}/{name}")));
    }
    let note = Audited {
        resource: format!("secret {ns}/{name}"),
        namespace: Some(ns.clone()),
        recorded: false,
    };
    Ok(super::instances::with_note(
        Json(serde_json::json!({"namespace": ns, "name": name, "removed": true})),
        note,
    ))
}

/// Seals every secret under a new master key (admin over every namespace), without downtime;
/// the old key file is kept beside the new one.
#[utoipa::path(post, path = "/api/v1/secrets/rotate-key", tag = "security",
    responses((status = 200, description = "OK", body = Rotated), (status = 403, description = "The token may not do this", body = ErrorBody), (status = 409, description = "Conflict with the current state", body = ErrorBody)))]
pub async fn rotate_key(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Rotated>> {
    caller.must_be_global()?;
    let now = st.engine.now_ms();
    let vault = st.engine.vault();
    let key_id = tokio::task::spawn_blocking(move || vault.rotate(now))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::conflict)?;
    Ok(Json(Rotated { key_id }))
}

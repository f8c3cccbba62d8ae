//! API tokens: `kf_<id>_<secret>`, 256-bit secrets from the OS's generator. The store keeps the
//! SHA-256 of the secret; a presented token is hashed and compared in constant time with the
//! hash of the row its id names. Rows are cached in memory (tokens change rarely) and the cache
//! is updated by the same calls that write them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::http::HeaderValue;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use kflow_store::{Store, TokenRow};

use super::{Caller, Role, Scope};

/// The shortest token accepted from the environment (`KFLOW_ADMIN_TOKEN`).
pub const MIN_ENV_TOKEN: usize = 32;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "this API needs a token: send `Authorization: Bearer <token>` (the CLI reads KFLOW_TOKEN \
         or the file `kflow login` writes)"
    )]
    Missing,
    #[error("the Authorization header is not `Bearer <token>` with a kflow token (kf_...)")]
    Malformed,
    #[error("the token is not valid")]
    Unknown,
    #[error("token {0:?} expired")]
    Expired(String),
    #[error("token {0:?} was revoked")]
    Revoked(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the store failed: {0}")]
    Store(String),
}

/// What `kflow token create` asks for.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub namespaces: Vec<String>,
    pub expires_ms: Option<i64>,
}

pub struct Tokens {
    store: Arc<dyn Store>,
    by_id: RwLock<HashMap<String, TokenRow>>,
    env_admin: Option<[u8; 32]>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

fn random<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| TokenError::Store(format!("the OS random generator failed: {e}")))?;
    Ok(b)
}

/// Validates a token or namespace name: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl Tokens {
    /// Loads the tokens; `env_admin` is an admin token taken from the environment (only its
    /// hash is kept, in memory).
    pub fn load(store: Arc<dyn Store>, env_admin: Option<&str>) -> Result<Tokens, TokenError> {
        if let Some(t) = env_admin
            && t.len() < MIN_ENV_TOKEN
        {
            return Err(TokenError::Invalid(format!(
                "KFLOW_ADMIN_TOKEN is {} characters long: at least {MIN_ENV_TOKEN} are required",
                t.len()
            )));
        }
        let rows = store
            .tokens()
            .map_err(|e| TokenError::Store(e.to_string()))?;
        Ok(Tokens {
            store,
            by_id: RwLock::new(rows.into_iter().map(|r| (r.id.clone(), r)).collect()),
            env_admin: env_admin.map(|t| sha256(t.as_bytes())),
        })
    }

    /// Reads the tokens again (several nodes share one database: a token created or revoked
    /// on another node counts here within a second).
    pub fn reload(&self) -> Result<(), TokenError> {
        let rows = self
            .store
            .tokens()
            .map_err(|e| TokenError::Store(e.to_string()))?;
        *self.by_id.write().unwrap_or_else(|p| p.into_inner()) =
            rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(())
    }

    /// Whether any token can log in (a live stored token or the environment's).
    pub fn any_live(&self, now_ms: i64) -> bool {
        self.env_admin.is_some()
            || self
                .read()
                .values()
                .any(|r| r.revoked_ms.is_none() && r.expires_ms.is_none_or(|e| e > now_ms))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TokenRow>> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn authenticate(
        &self,
        header: Option<&HeaderValue>,
        now_ms: i64,
    ) -> Result<Caller, TokenError> {
        let header = header.ok_or(TokenError::Missing)?;
        let text = header.to_str().map_err(|_| TokenError::Malformed)?;
        let (scheme, token) = text.trim().split_once(' ').ok_or(TokenError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Malformed);
        }
        let token = token.trim();
        let presented = sha256(token.as_bytes());
        if let Some(h) = &self.env_admin
            && bool::from(h.ct_eq(&presented))
        {
            return Ok(Caller {
                name: "admin (environment)".into(),
                token_id: None,
                role: Role::Admin,
                scope: Scope::All,
            });
        }
        let (id, secret) = token
            .strip_prefix("kf_")
            .and_then(|t| t.split_once('_'))
            .ok_or(TokenError::Malformed)?;
        let rows = self.read();
        let row = rows.get(id).ok_or(TokenError::Unknown)?;
        let stored = unhex(&row.secret_sha256).ok_or(TokenError::Unknown)?;
        if !bool::from(stored.ct_eq(&sha256(secret.as_bytes()))) {
            return Err(TokenError::Unknown);
        }
        if row.revoked_ms.is_some() {
            return Err(TokenError::Revoked(row.name.clone()));
        }
        if row.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(TokenError::Expired(row.name.clone()));
        }
        let role = Role::parse(&row.role).ok_or(TokenError::Unknown)?;
        Ok(Caller {
            name: row.name.clone(),
            token_id: Some(row.id.clone()),
            role,
            scope: Scope::from_list(&row.namespaces),
        })
    }

    /// Creates a token on behalf of `by`, who may only hand out what it has itself: a role
    /// and namespaces within its own. Returns the row and the token (shown once).
    pub async fn create(
        &self,
        spec: NewToken,
        by: &Caller,
        now_ms: i64,
    ) -> Result<(TokenRow, String), TokenError> {
        if !valid_name(&spec.name) {
            return Err(TokenError::Invalid(format!(
                "token name {:?}: 1 to 64 letters, digits, '.', '_' or '-'",
                spec.name
            )));
        }
        if spec.namespaces.is_empty() {
            return Err(TokenError::Invalid(
                "a token needs at least one namespace (\"*\" for all)".into(),
            ));
        }
        for ns in &spec.namespaces {
            if ns != "*" && !valid_name(ns) {
                return Err(TokenError::Invalid(format!(
                    "namespace {ns:?} is not a valid name"
                )));
            }
        }
        if !by.scope.covers(&Scope::from_list(&spec.namespaces)) {
            return Err(TokenError::Invalid(format!(
                "token {:?} cannot grant namespaces outside its own",
                by.name
            )));
        }
        if spec.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(TokenError::Invalid("the expiry is in the past".into()));
        }
        let id: String = kflow_store::security::hex(&random::<6>()?);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?);
        let row = TokenRow {
            id: id.clone(),
            name: spec.name.clone(),
            role: spec.role.as_str().into(),
            namespaces: if spec.namespaces.iter().any(|n| n == "*") {
                vec!["*".into()]
            } else {
                spec.namespaces.clone()
            },
            secret_sha256: kflow_store::security::hex(&sha256(secret.as_bytes())),
            created_ms: now_ms,
            created_by: by.name.clone(),
            expires_ms: spec.expires_ms,
            revoked_ms: None,
        };
        let (store, r2) = (self.store.clone(), row.clone());
        let added = tokio::task::spawn_blocking(move || store.put_token(&r2))
            .await
            .map_err(|e| TokenError::Store(e.to_string()))?
            .map_err(|e| TokenError::Store(e.to_string()))?;
        if !added {
            return Err(TokenError::Conflict(format!(
                "a token named {:?} exists: revoke it first or choose another name",
                spec.name
            )));
        }
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), row.clone());
        Ok((row, format!("kf_{id}_{secret}")))
    }

    /// Revokes a live token by id or name. A caller limited to some namespaces may only revoke
    /// tokens within them.
    pub async fn revoke(
        &self,
        id_or_name: &str,
        by: &Caller,
        now_ms: i64,
    ) -> Result<Option<TokenRow>, TokenError> {
        let target = self
            .read()
            .values()
            .find(|r| r.revoked_ms.is_none() && (r.id == id_or_name || r.name == id_or_name))
            .cloned();
        let Some(target) = target else {
            return Ok(None);
        };
        if !by.scope.covers(&Scope::from_list(&target.namespaces)) {
            return Ok(None);
        }
        let (store, id) = (self.store.clone(), target.id.clone());
        let row = tokio::task::spawn_blocking(move || store.revoke_token(&id, now_ms))
            .await
            .map_err(|e| TokenError::Store(e.to_string()))?
            .map_err(|e| TokenError::Store(e.to_string()))?;
        if let Some(r) = &row {
            self.by_id
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.id.clone(), r.clone());
        }
        Ok(row)
    }

    /// Every token (revoked ones too) that `by` can see: those within its namespaces.
    pub fn list(&self, by: &Caller) -> Vec<TokenRow> {
        let mut v: Vec<TokenRow> = self
            .read()
            .values()
            .filter(|r| by.scope.covers(&Scope::from_list(&r.namespaces)))
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[tokio::test]
    async fn a_created_token_authenticates_and_nothing_near_it_does() {
        let store: Arc<dyn Store> =
            Arc::new(kflow_store::sqlite::SqliteStore::open_in_memory().unwrap());
        let tokens = Tokens::load(store.clone(), None).unwrap();
        let root = Caller::unauthenticated();
        let spec = NewToken {
            name: "ci".into(),
            role: Role::Operator,
            namespaces: vec!["team-a".into()],
            expires_ms: Some(10_000),
        };
        let (row, token) = tokens.create(spec.clone(), &root, 1).await.unwrap();
        assert!(token.starts_with(&format!("kf_{}_", row.id)));
        assert!(
            !row.secret_sha256.contains(
                token
                    .strip_prefix("kf_")
                    .and_then(|t| t.split_once('_'))
                    .map(|(_, s)| s)
                    .unwrap()
            )
        );
        let c = tokens
            .authenticate(Some(&header(&format!("Bearer {token}"))), 2)
            .unwrap();
        assert_eq!((c.name.as_str(), c.role), ("ci", Role::Operator));
        assert!(c.sees("team-a") && !c.sees("team-b"));

        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
        for (h, e) in [
            (None, TokenError::Missing),
            (Some(header("Basic abc")), TokenError::Malformed),
            (Some(header("Bearer nope")), TokenError::Malformed),
            (
                Some(header(&format!("Bearer {wrong}"))),
                TokenError::Unknown,
            ),
            (
                Some(header(&format!("Bearer {token}"))),
                TokenError::Expired("ci".into()),
            ),
        ] {
            let now = if e == TokenError::Expired("ci".into()) {
                10_000
            } else {
                2
            };
            assert_eq!(tokens.authenticate(h.as_ref(), now).unwrap_err(), e);
        }
        // Same name again: refused; after a revocation: allowed, and the old one is dead.
        assert!(matches!(
            tokens.create(spec.clone(), &root, 3).await,
            Err(TokenError::Conflict(_))
        ));
        tokens.revoke("ci", &root, 4).await.unwrap().unwrap();
        assert_eq!(
            tokens
                .authenticate(Some(&header(&format!("Bearer {token}"))), 5)
                .unwrap_err(),
            TokenError::Revoked("ci".into())
        );
        tokens.create(spec, &root, 6).await.unwrap();
        // A fresh load (a restart) knows the same.
        let again = Tokens::load(store, None).unwrap();
        assert_eq!(again.list(&root).len(), 2);
    }

    #[tokio::test]
    async fn a_limited_admin_grants_only_within_its_namespaces() {
        let store: Arc<dyn Store> =
            Arc::new(kflow_store::sqlite::SqliteStore::open_in_memory().unwrap());
        let tokens = Tokens::load(store, None).unwrap();
        let limited = Caller {
            name: "team-admin".into(),
            token_id: None,
            role: Role::Admin,
            scope: Scope::from_list(&["a".into()]),
        };
        let spec = |ns: &str| NewToken {
            name: format!("t-{}", ns.replace('*', "all")),
            role: Role::Viewer,
            namespaces: vec![ns.into()],
            expires_ms: None,
        };
        assert!(tokens.create(spec("a"), &limited, 1).await.is_ok());
        assert!(matches!(
            tokens.create(spec("b"), &limited, 1).await,
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            tokens.create(spec("*"), &limited, 1).await,
            Err(TokenError::Invalid(_))
        ));
        assert!(Tokens::load(tokens.store.clone(), Some("short")).is_err());
    }
}

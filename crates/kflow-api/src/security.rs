//! Access control: the caller, API tokens, the audit trail, namespace secrets
//! (`/api/v1/whoami`, `/tokens`, `/audit`, `/secrets`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /api/v1/whoami`: the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    pub name: String,
    pub role: String,
    /// `["*"]`: every namespace.
    pub namespaces: Vec<String>,
    /// False when the server runs with `--insecure-no-auth`.
    pub authenticated: bool,
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub namespaces: Vec<String>,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// viewer, operator, editor, admin or worker.
    pub role: String,
    /// Namespaces the token may act in; `["*"]` for all.
    pub namespaces: Vec<String>,
    /// Lifetime in seconds (none: until revoked).
    pub expires_in_seconds: Option<u64>,
}

/// A token just created, with its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token itself: shown this once, only its hash is kept.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenView,
}

/// `GET /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenView>,
}

/// One entry of the audit trail, with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    /// Who: the token's name (`anonymous` without one, `server` for the server itself).
    pub actor: String,
    /// What: e.g. `instances.start`, `tokens.create`, `auth.denied`.
    pub action: String,
    /// Which resource: the request path or an id.
    pub resource: String,
    /// The namespace concerned, when there is one.
    pub namespace: Option<String>,
    /// From where: the peer's address.
    pub source: String,
    /// The outcome: the HTTP status, and for a denial the reason.
    pub result: String,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /api/v1/audit`: a page of entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntry>,
    /// The `after` of the next page, when there may be one.
    pub next: Option<i64>,
}

/// `GET /api/v1/audit/verify`: whether the chain holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerdict {
    pub ok: bool,
    /// Entries verified.
    pub checked: u64,
    /// The last entry verified: export it to detect a truncation later.
    pub head_seq: i64,
    pub head_hash: String,
    /// The first entry that does not verify, and why.
    pub broken_at: Option<i64>,
    pub reason: Option<String>,
}

/// `PUT /api/v1/secrets/{namespace}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    pub value: String,
}

/// A secret as listed: its name, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretView {
    pub namespace: String,
    pub name: String,
    pub updated_ms: i64,
}

/// `GET /api/v1/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub items: Vec<SecretView>,
}

/// `POST /api/v1/secrets/rotate-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rotated {
    /// The id of the key that now seals every secret.
    pub key_id: String,
}

/// A fired alert and how its delivery went.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    pub id: String,
    /// The rule (from the config) that fired.
    pub rule: String,
    /// `instance_faulted`, `instance_duration`, `queue_wait`, `worker_lost`, `schedule_missed`.
    pub on: String,
    /// What it is about: an instance id, a queue, a worker, a schedule.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub fired: String,
    pub fired_ms: i64,
    pub summary: String,
    pub details: serde_json::Value,
    /// `delivered`, `pending` (retrying), `failed` (gave up), or `recorded` (no webhook).
    pub delivery: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the condition cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<i64>,
}

/// A `kflow server` node on the shared PostgreSQL database (`GET /api/v1/nodes`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub host: String,
    /// The address it listens on, as configured.
    pub api: Option<String>,
    /// `active` (drives its instances), `draining`, `stopped`, `lost` (its lease lapsed: its
    /// instances are about to be adopted), `gone` (adopted), `silent`.
    pub state: String,
    /// Tasks it runs now.
    pub running: i64,
    /// Unfinished instances it drives.
    #[serde(default)]
    pub owned: i64,
    /// The node that adopted its instances.
    #[serde(default)]
    pub adopted_by: Option<String>,
    pub started_ms: i64,
    /// Its last heartbeat (the database's clock).
    pub seen_ms: i64,
    /// Milliseconds since its last heartbeat.
    pub silent_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// `sqlite` (one node) or `postgres`.
    pub backend: String,
    /// The leader (it prunes and delivers alerts for all), and the epoch of its lease.
    pub lease_holder: Option<String>,
    pub lease_epoch: Option<i64>,
    /// Nodes seen in the last hour, newest first (on SQLite: this one).
    pub items: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    pub items: Vec<AlertView>,
}

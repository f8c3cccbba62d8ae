//! The PostgreSQL schema and its migrations.
//!
//! The tables are SQLite's (same columns, same meaning), in PostgreSQL's types: `BIGINT` times
//! in milliseconds, `BOOLEAN` flags, payloads as JSON text (sealed payloads are JSON strings;
//! kept as text, they are written and read back byte for byte, in the order of their keys).
//! Every text key is `COLLATE "C"`: ids, names and cursors compare byte by byte, as in SQLite,
//! whatever the database's locale (a locale collation would order `a-b` and `ab` differently
//! and break pagination).
//!
//! Migrations run in one transaction under an advisory lock, so nodes starting together
//! migrate once. A database whose version is higher than [`SCHEMA_VERSION`] was written by a
//! newer kflow and is refused; a database with tables but no `kflow_schema` table is not a
//! kflow database and is refused too.

use crate::pool::Conn;
use kflow_store::{Result, StoreError};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 3;

/// The advisory lock taken while migrating (an arbitrary constant: "kflow" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b_666c_6f77;

/// `MIGRATIONS[i]` brings a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3];
const _: () = assert!(MIGRATIONS.len() as i32 == SCHEMA_VERSION);

const V1: &str = r#"
CREATE TABLE definitions (
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    version    TEXT COLLATE "C" NOT NULL,
    hash       TEXT    NOT NULL,
    deprecated BOOLEAN NOT NULL DEFAULT false,
    created_ms BIGINT  NOT NULL,
    source     TEXT    NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE instances (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    version    TEXT COLLATE "C" NOT NULL,
    status     TEXT COLLATE "C" NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    input      TEXT   NOT NULL,
    output     TEXT,
    error      TEXT,
    attention  TEXT
);
CREATE INDEX instances_created    ON instances (created_ms, id);
CREATE INDEX instances_definition ON instances (namespace, name, created_ms, id);
CREATE INDEX instances_status     ON instances (status, created_ms, id);
CREATE INDEX instances_running    ON instances (created_ms, id) WHERE status = 'running';
CREATE INDEX instances_finished   ON instances (updated_ms) WHERE status IN ('completed', 'faulted', 'cancelled');

CREATE TABLE history (
    instance_id TEXT COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    time_ms     BIGINT NOT NULL,
    kind        TEXT COLLATE "C" NOT NULL,
    data        TEXT   NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

-- effect_id is a u64 stored as the i64 with the same bits.
CREATE TABLE work (
    instance_id TEXT COLLATE "C" NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    effect_id   BIGINT  NOT NULL,
    task        TEXT    NOT NULL,
    kind        TEXT COLLATE "C" NOT NULL,
    due_ms      BIGINT  NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    effect      TEXT    NOT NULL,
    PRIMARY KEY (instance_id, effect_id)
);
CREATE INDEX work_timers ON work (due_ms, instance_id, effect_id) WHERE kind = 'timer';
CREATE INDEX work_listen ON work (instance_id, effect_id) WHERE kind = 'listen';

CREATE TABLE schedules (
    namespace    TEXT COLLATE "C" NOT NULL,
    name         TEXT COLLATE "C" NOT NULL,
    version      TEXT    NOT NULL,
    next_fire_ms BIGINT,
    last_fire_ms BIGINT,
    paused       BOOLEAN NOT NULL DEFAULT false,
    revision     BIGINT  NOT NULL,
    updated_ms   BIGINT  NOT NULL,
    state        TEXT    NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX schedules_next ON schedules (next_fire_ms) WHERE NOT paused AND next_fire_ms IS NOT NULL;

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    received_ms BIGINT  NOT NULL,
    processed   BOOLEAN NOT NULL DEFAULT false,
    event       TEXT    NOT NULL
);
CREATE INDEX events_pending ON events (id) WHERE NOT processed;
CREATE INDEX events_processed ON events (received_ms) WHERE processed;

CREATE TABLE idempotency (
    namespace    TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    request_hash TEXT   NOT NULL,
    instance_id  TEXT   NOT NULL,
    expires_ms   BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX idempotency_expires ON idempotency (expires_ms);

CREATE TABLE tokens (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL,
    role          TEXT   NOT NULL,
    namespaces    TEXT   NOT NULL,
    secret_sha256 TEXT   NOT NULL,
    created_ms    BIGINT NOT NULL,
    created_by    TEXT   NOT NULL,
    expires_ms    BIGINT,
    revoked_ms    BIGINT
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_ms IS NULL;

CREATE TABLE audit (
    seq       BIGINT NOT NULL PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    actor     TEXT COLLATE "C" NOT NULL,
    action    TEXT COLLATE "C" NOT NULL,
    resource  TEXT   NOT NULL,
    namespace TEXT COLLATE "C",
    source    TEXT   NOT NULL,
    result    TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);

CREATE TABLE secrets (
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    key_id     TEXT   NOT NULL,
    nonce      TEXT   NOT NULL,
    ciphertext TEXT   NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE TABLE alerts (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    rule         TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    namespace    TEXT COLLATE "C",
    fired_ms     BIGINT  NOT NULL,
    summary      TEXT    NOT NULL,
    data         TEXT    NOT NULL,
    delivered_ms BIGINT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_ms      BIGINT,
    last_error   TEXT,
    resolved_ms  BIGINT,
    UNIQUE (rule, key)
);
CREATE INDEX alerts_due ON alerts (next_ms) WHERE next_ms IS NOT NULL;
CREATE INDEX alerts_fired ON alerts (fired_ms);

-- The database's lease: the node that holds it drives the workflows; `epoch` grows at every
-- takeover and every commit checks it (the fencing token). Times are the database's clock.
CREATE TABLE lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    node        TEXT        NOT NULL,
    epoch       BIGINT      NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL
);

-- Every node that ever started on this database, with its last heartbeat.
CREATE TABLE nodes (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    host       TEXT        NOT NULL,
    api        TEXT,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL,
    state      TEXT        NOT NULL,
    running    BIGINT      NOT NULL DEFAULT 0
);
"#;

/// Several active nodes: every node holds a lease of its own (its row in `nodes`: `epoch`,
/// `expires_at`), every unfinished instance has an owner (the node that drives it), and every
/// node offers posted events from its own cursor. Instances of version 1 have no owner: the
/// first node adopts them.
const V2: &str = r#"
ALTER TABLE instances ADD COLUMN owner TEXT COLLATE "C";
CREATE INDEX instances_owner ON instances (owner) WHERE status IN ('running', 'suspended');
ALTER TABLE nodes
    ADD COLUMN epoch        BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN expires_at   TIMESTAMPTZ,
    ADD COLUMN event_cursor BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN adopted_by   TEXT,
    ADD COLUMN adopters     TEXT[] NOT NULL DEFAULT '{}';
CREATE INDEX nodes_expired ON nodes (expires_at) WHERE adopted_by IS NULL;

-- Concurrency slots across nodes: a running instance of a limited workflow (or namespace)
-- holds one per group; a slot whose instance finished, or was never created (its batch failed)
-- within a minute of the claim, no longer counts.
CREATE TABLE slots (
    grp         TEXT COLLATE "C" NOT NULL,
    instance_id TEXT COLLATE "C" NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (grp, instance_id)
);
CREATE INDEX slots_instance ON slots (instance_id);

-- Learned statistics of tasks (adaptive scheduling), per workflow version and task, merged
-- into by every node.
CREATE TABLE task_stats (
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    version    TEXT COLLATE "C" NOT NULL,
    task       TEXT COLLATE "C" NOT NULL,
    data       TEXT   NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, version, task)
);
"#;

/// Events taken from a broker: their CloudEvents source and id (`dedup`), recorded once, so a
/// message the broker delivers again (its acknowledgement lost in a crash) changes nothing.
const V3: &str = r#"
ALTER TABLE events ADD COLUMN dedup TEXT COLLATE "C";
CREATE UNIQUE INDEX events_dedup ON events (dedup) WHERE dedup IS NOT NULL;
"#;

/// What [`migrate`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i32,
    pub to: i32,
}

/// Creates or migrates the schema, in one transaction, under the migration lock.
pub(crate) fn migrate(conn: &mut Conn) -> Result<Migrated> {
    conn.transaction(|conn| {
        conn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        let has_versions = conn
            .query_opt("SELECT to_regclass('kflow_schema') IS NOT NULL", &[])?
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        let current: i32 = if has_versions {
            conn.query_opt("SELECT COALESCE(MAX(version), 0) FROM kflow_schema", &[])?
                .map(|r| r.get(0))
                .unwrap_or(0)
        } else {
            let tables: i64 = conn
                .query_opt(
                    "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()",
                    &[],
                )?
                .map(|r| r.get(0))
                .unwrap_or(0);
            if tables > 0 {
                return Err(StoreError::Db(format!(
                    "not a kflow database: its schema has {tables} tables but no kflow_schema table"
                )));
            }
            conn.batch(
                "CREATE TABLE kflow_schema (version INTEGER NOT NULL PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )?;
            0
        };
        if current > SCHEMA_VERSION {
            return Err(StoreError::Db(format!(
                "database schema version {current} is newer than the version this kflow supports \
                 ({SCHEMA_VERSION}): it was written by a newer kflow; upgrade kflow to open it"
            )));
        }
        for version in current + 1..=SCHEMA_VERSION {
            conn.batch(MIGRATIONS[(version - 1) as usize])?;
            conn.execute(
                "INSERT INTO kflow_schema (version) VALUES ($1)",
                &[&version],
            )?;
        }
        Ok(Migrated {
            from: current,
            to: SCHEMA_VERSION,
        })
    })
}

/// The schema version of the database, without changing it (None: not a kflow database yet).
pub(crate) fn version(conn: &mut Conn) -> Result<Option<i32>> {
    let has = conn
        .query_opt("SELECT to_regclass('kflow_schema') IS NOT NULL", &[])?
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    if !has {
        return Ok(None);
    }
    Ok(conn
        .query_opt("SELECT MAX(version) FROM kflow_schema", &[])?
        .and_then(|r| r.get(0)))
}

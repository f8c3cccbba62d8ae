//! Schema creation and migrations.
//!
//! `schema_version` has one row per applied migration; the database's version is the highest.
//! Opening runs, in one transaction, every migration above it. A database whose version is
//! higher than [`SCHEMA_VERSION`] was written by a newer kflow and is refused.
//!
//! Column order matters for speed: large JSON payloads come last in their rows, so that a query
//! selecting only the small columns never reads their overflow pages.

use rusqlite::{Connection, TransactionBehavior};

use crate::{Result, StoreError};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 10;

/// `MIGRATIONS[i]` brings a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10];
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

const V1: &str = "
CREATE TABLE definitions (
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    deprecated INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    source     TEXT    NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE instances (
    id         TEXT    NOT NULL PRIMARY KEY,
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    input      TEXT    NOT NULL,
    output     TEXT,
    error      TEXT
);
-- list_instances: newest first, optionally by definition or by status; id breaks ties.
CREATE INDEX instances_created    ON instances (created_ms, id);
CREATE INDEX instances_definition ON instances (namespace, name, created_ms, id);
CREATE INDEX instances_status     ON instances (status, created_ms, id);

CREATE TABLE history (
    instance_id TEXT    NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

-- effect_id is a u64 stored as the i64 with the same bits.
CREATE TABLE work (
    instance_id TEXT    NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    effect_id   INTEGER NOT NULL,
    task        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    due_ms      INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    effect      TEXT    NOT NULL,
    PRIMARY KEY (instance_id, effect_id)
);
-- due_work scans in (due_ms, instance_id, effect_id) order; listen rows (subscriptions, open
-- for long) are left out, so that they never slow it down. next_timer and subscriptions by kind.
CREATE INDEX work_due  ON work (due_ms, instance_id, effect_id) WHERE kind <> 'listen';
CREATE INDEX work_kind ON work (kind, due_ms);
";

/// Schedules: one row per scheduled workflow; `state` is the scheduler's JSON.
const V2: &str = "
CREATE TABLE schedules (
    namespace    TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    next_fire_ms INTEGER,
    last_fire_ms INTEGER,
    paused       INTEGER NOT NULL DEFAULT 0,
    revision     INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    state        TEXT    NOT NULL,
    PRIMARY KEY (namespace, name)
);
-- next_schedule_fire: the earliest fire of the rows that are not paused.
CREATE INDEX schedules_next ON schedules (next_fire_ms) WHERE paused = 0 AND next_fire_ms IS NOT NULL;
";

/// Posted CloudEvents: recorded before they are acknowledged, marked processed by the commit
/// of their deliveries.
const V3: &str = "
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    processed   INTEGER NOT NULL DEFAULT 0,
    event       TEXT    NOT NULL
);
CREATE INDEX events_pending ON events (id) WHERE processed = 0;
";

/// Instances that need an operator's attention (a history this build cannot replay, a panic
/// while replaying): parked, with the reason. Idempotency keys of starts.
const V4: &str = "
ALTER TABLE instances ADD COLUMN attention TEXT;
CREATE TABLE idempotency (
    namespace    TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    instance_id  TEXT    NOT NULL,
    expires_ms   INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX idempotency_expires ON idempotency (expires_ms);
";

/// Access control: API tokens (the SHA-256 of their secret, never the secret) and the
/// hash-chained audit trail (append-only: the server never updates or deletes its rows).
const V5: &str = "
CREATE TABLE tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    namespaces    TEXT    NOT NULL,
    secret_sha256 TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL,
    created_by    TEXT    NOT NULL,
    expires_ms    INTEGER,
    revoked_ms    INTEGER
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_ms IS NULL;
CREATE TABLE audit (
    seq       INTEGER NOT NULL PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    resource  TEXT    NOT NULL,
    namespace TEXT,
    source    TEXT    NOT NULL,
    result    TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE TABLE secrets (
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    ciphertext TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
";

/// Calls and processes get a work row when they start and lose it when they are answered, in
/// every step's commit: they now touch no index but the table's key (two pages fewer written
/// per step). Timers keep an index by due time. The rows of `listen` subscriptions and of
/// everything in flight are read once, when the engine starts, by a scan of the table.
const V6: &str = "
DROP INDEX work_due;
DROP INDEX work_kind;
CREATE INDEX work_timers ON work (due_ms, instance_id, effect_id) WHERE kind = 'timer';
";

/// Alerts: one row per firing of a rule for a subject (`rule`, `key` unique), with the state of
/// its delivery to the webhooks (`next_ms`: the next attempt, indexed for the sender).
const V7: &str = "
CREATE TABLE alerts (
    id           TEXT    NOT NULL PRIMARY KEY,
    rule         TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    namespace    TEXT,
    fired_ms     INTEGER NOT NULL,
    summary      TEXT    NOT NULL,
    data         TEXT    NOT NULL,
    delivered_ms INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_ms      INTEGER,
    last_error   TEXT,
    resolved_ms  INTEGER,
    UNIQUE (rule, key)
);
CREATE INDEX alerts_due ON alerts (next_ms) WHERE next_ms IS NOT NULL;
CREATE INDEX alerts_fired ON alerts (fired_ms);
";

/// Retention: finished instances by their last update (what is pruned next), and processed
/// events by their arrival.
const V8: &str = "
CREATE INDEX instances_finished ON instances (updated_ms) WHERE status IN ('completed', 'faulted', 'cancelled');
CREATE INDEX events_processed ON events (received_ms) WHERE processed = 1;
";

/// Learned statistics of tasks (adaptive scheduling), per workflow version and task.
const V9: &str = "
CREATE TABLE task_stats (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    task       TEXT NOT NULL,
    data       TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, version, task)
);
";

/// Events taken from a broker: their CloudEvents source and id (`dedup`), recorded once, so a
/// message the broker delivers again (its acknowledgement lost in a crash) changes nothing.
const V10: &str = "
ALTER TABLE events ADD COLUMN dedup TEXT;
CREATE UNIQUE INDEX events_dedup ON events (dedup) WHERE dedup IS NOT NULL;
";

/// Creates or migrates the schema (in one IMMEDIATE transaction).
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let has_versions: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
        [],
        |row| row.get(0),
    )?;
    let current: i64 = if has_versions {
        tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |row| row.get(0),
        )?
    } else {
        let tables: i64 = tx.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            [],
            |row| row.get(0),
        )?;
        if tables > 0 {
            return Err(StoreError::Db(
                "not a kflow database: it has tables but no schema_version table".to_string(),
            ));
        }
        tx.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )?;
        0
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::Db(format!(
            "database schema version {current} is newer than the version this kflow supports \
             ({SCHEMA_VERSION}): it was written by a newer kflow; upgrade kflow to open it"
        )));
    }
    if current < 0 {
        return Err(StoreError::Corrupt(format!(
            "invalid schema version {current}"
        )));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for version in current + 1..=SCHEMA_VERSION {
        tx.execute_batch(MIGRATIONS[(version - 1) as usize])?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
            (version, now_ms),
        )?;
    }
    tx.commit()?;
    Ok(())
}

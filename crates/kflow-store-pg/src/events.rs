//! Posted events: numbered in commit order (see `lease::EVENTS_LOCK`), and, in a cluster,
//! offered by every node from its own cursor.

use kflow_store::{Result, StoreError};
use serde_json::Value;

use crate::PgStore;
use crate::mapping::{limit, to_json};

pub(crate) fn add(store: &PgStore, event: &Value, received_ms: i64) -> Result<i64> {
    add_once(store, event, "", received_ms)?
        .ok_or_else(|| StoreError::Db("INSERT ... RETURNING gave no row".into()))
}

/// `dedup` empty: always recorded (no key).
pub(crate) fn add_once(
    store: &PgStore,
    event: &Value,
    dedup: &str,
    received_ms: i64,
) -> Result<Option<i64>> {
    let text = to_json(event)?;
    let dedup = (!dedup.is_empty()).then_some(dedup);
    store.write(|c| {
        c.transaction(|c| {
            // Ids in commit order (see `lease::EVENTS_LOCK`), and every node told.
            c.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&crate::lease::EVENTS_LOCK],
            )?;
            let Some(id) = c
                .query_opt(
                    "INSERT INTO events (received_ms, event, dedup) VALUES ($1, $2, $3) \
                     ON CONFLICT (dedup) WHERE dedup IS NOT NULL DO NOTHING RETURNING id",
                    &[&received_ms, &text, &dedup],
                )?
                .map(|r| r.get::<_, i64>(0))
            else {
                return Ok(None);
            };
            c.execute(
                "SELECT pg_notify($1, $2)",
                &[&crate::lease::EVENTS_CHANNEL, &id.to_string()],
            )?;
            Ok(Some(id))
        })
    })
}

pub(crate) fn pending(store: &PgStore, n: u32) -> Result<Vec<(i64, Value)>> {
    let n = limit(n);
    store.read(|c| {
        events(match store.node() {
            // In a cluster: every event after this node's cursor.
            Some(node) => c.query(
                "SELECT id, event FROM events WHERE id > \
                 (SELECT event_cursor FROM nodes WHERE id = $2) ORDER BY id LIMIT $1",
                &[&n, &node],
            )?,
            None => c.query(
                "SELECT id, event FROM events WHERE NOT processed ORDER BY id LIMIT $1",
                &[&n],
            )?,
        })
    })
}

pub(crate) fn missed(store: &PgStore, after: i64, n: u32) -> Result<Vec<(i64, Value)>> {
    let Some(node) = store.node() else {
        return Ok(Vec::new());
    };
    let n = limit(n);
    store.read(|c| {
        events(c.query(
            "SELECT id, event FROM events WHERE id > $2 AND id <= \
             (SELECT event_cursor FROM nodes WHERE id = $3) ORDER BY id LIMIT $1",
            &[&n, &after, &node],
        )?)
    })
}

/// Rows of (id, event).
fn events(rows: Vec<tokio_postgres::Row>) -> Result<Vec<(i64, Value)>> {
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let text: String = r.get(1);
            serde_json::from_str(&text)
                .map(|v| (id, v))
                .map_err(|e| StoreError::Corrupt(format!("event {id}: {e}")))
        })
        .collect()
}

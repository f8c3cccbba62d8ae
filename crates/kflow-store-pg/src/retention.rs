//! Retention: finished instances (with their histories and work rows) and processed events
//! deleted in batches, and the sizes of the tables.

use kflow_store::{Instance, Result, StoreError};

use crate::PgStore;
use crate::mapping::{INSTANCE_COLUMNS, all, instance_row, limit};

pub(crate) fn finished_before(store: &PgStore, before_ms: i64, n: u32) -> Result<Vec<Instance>> {
    let n = limit(n);
    store.read(|c| {
        all(
            c.query(
                &format!(
                    "SELECT {INSTANCE_COLUMNS} FROM instances \
                     WHERE status IN ('completed', 'faulted', 'cancelled') AND updated_ms < $1 \
                     ORDER BY updated_ms LIMIT $2"
                ),
                &[&before_ms, &n],
            )?,
            instance_row,
        )
    })
}

pub(crate) fn delete_instances(store: &PgStore, ids: &[String]) -> Result<usize> {
    let ids = ids.to_vec();
    let n = crate::writes::fenced(store, |c| {
        // History and work rows go with their instance (ON DELETE CASCADE).
        Ok(c.execute(
            "DELETE FROM instances WHERE id = ANY($1) AND status IN ('completed', 'faulted', 'cancelled')",
            &[&ids],
        )? as usize)
    })?;
    let mut known = store.last_seqs.lock().unwrap_or_else(|p| p.into_inner());
    for id in &ids {
        known.remove(id);
    }
    Ok(n)
}

pub(crate) fn prune_events(store: &PgStore, before_ms: i64, n: u32) -> Result<usize> {
    let n = limit(n);
    store.write(|c| {
        Ok(c.execute(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE processed AND received_ms < $1 \
             AND id <= COALESCE((SELECT MIN(event_cursor) FROM nodes \
                 WHERE adopted_by IS NULL AND expires_at IS NOT NULL), id) LIMIT $2)",
            &[&before_ms, &n],
        )? as usize)
    })
}

pub(crate) fn table_stats(store: &PgStore) -> Result<Vec<kflow_store::TableStats>> {
    store.read(|c| {
        let mut out = Vec::new();
        for table in kflow_store::TABLES {
            let row = c
                .query_opt(
                    &format!("SELECT COUNT(*), pg_total_relation_size('{table}') FROM {table}"),
                    &[],
                )?
                .ok_or_else(|| StoreError::Db("COUNT gave no row".into()))?;
            out.push(kflow_store::TableStats {
                table: table.to_string(),
                rows: row.get(0),
                bytes: Some(row.get(1)),
            });
        }
        let size: i64 = c
            .query_opt("SELECT pg_database_size(current_database())", &[])?
            .map_or(0, |r| r.get(0));
        out.push(kflow_store::TableStats {
            table: "(database)".into(),
            rows: out.iter().map(|t| t.rows).sum(),
            bytes: Some(size),
        });
        Ok(out)
    })
}

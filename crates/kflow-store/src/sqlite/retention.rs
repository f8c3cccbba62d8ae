//! Retention: finished instances and processed events pruned in small batches (each one short
//! transaction, so that the writer is never held for long), and the sizes `kflow db stats`
//! shows.

use rusqlite::{Connection, TransactionBehavior, params};

use super::mapping::query_all;
use crate::{Instance, Result, TABLES, TableStats};

pub(super) fn finished_before(
    conn: &Connection,
    before_ms: i64,
    limit: u32,
) -> Result<Vec<Instance>> {
    query_all(
        conn,
        concat!(
            "SELECT ",
            instance_columns!(),
            " FROM instances WHERE status IN ('completed', 'faulted', 'cancelled') AND updated_ms < ?1 \
             ORDER BY updated_ms LIMIT ?2"
        ),
        params![before_ms, limit],
        super::mapping::instance_row,
    )
}

pub(super) fn delete_instances(conn: &mut Connection, ids: &[String]) -> Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut n = 0;
    {
        // History and work rows go with their instance (ON DELETE CASCADE).
        let mut delete = tx.prepare_cached(
            "DELETE FROM instances WHERE id = ?1 AND status IN ('completed', 'faulted', 'cancelled')",
        )?;
        for id in ids {
            n += delete.execute([id])?;
        }
    }
    tx.commit()?;
    Ok(n)
}

pub(super) fn prune_events(conn: &mut Connection, before_ms: i64, limit: u32) -> Result<usize> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE processed = 1 AND received_ms < ?1 LIMIT ?2)",
        )?
        .execute(params![before_ms, limit])?)
}

pub(super) fn table_stats(conn: &Connection, wal_bytes: Option<i64>) -> Result<Vec<TableStats>> {
    let mut out = Vec::new();
    for table in TABLES {
        let rows: i64 =
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        out.push(TableStats {
            table: table.to_string(),
            rows,
            bytes: None,
        });
    }
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    out.push(TableStats {
        table: "(database)".into(),
        rows: out.iter().map(|t| t.rows).sum(),
        bytes: Some(pages * size),
    });
    out.push(TableStats {
        table: "(free pages)".into(),
        rows: free,
        bytes: Some(free * size),
    });
    if let Some(w) = wal_bytes {
        out.push(TableStats {
            table: "(write-ahead log)".into(),
            rows: 0,
            bytes: Some(w),
        });
    }
    Ok(out)
}

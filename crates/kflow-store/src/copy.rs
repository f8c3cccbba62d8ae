//! Moving an installation between backends (`kflow db copy`): the tables as plain rows, read
//! in primary-key order, and a digest per table to check that both sides hold the same.
//!
//! A row is its columns in [`Table::columns`] order as JSON: text as strings, integers as
//! numbers, flags as booleans (SQLite's 0/1 are read as booleans), NULL as null. Both backends
//! order text keys byte by byte, so the same rows come in the same order and give the same
//! digest.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// A 64-bit integer (`BIGINT`).
    Int,
    /// A 32-bit integer (`INTEGER` in PostgreSQL: attempt counters).
    Int32,
    Bool,
}

#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    /// The primary key's columns (rows are read in this order).
    pub key: &'static [&'static str],
}

impl Table {
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn key_list(&self) -> String {
        self.key.join(", ")
    }
}

use Kind::{Bool, Int, Int32, Text};

/// Every table, parents before the rows that refer to them.
pub const COPY_TABLES: &[Table] = &[
    Table {
        name: "definitions",
        columns: &[
            ("namespace", Text),
            ("name", Text),
            ("version", Text),
            ("hash", Text),
            ("deprecated", Bool),
            ("created_ms", Int),
            ("source", Text),
        ],
        key: &["namespace", "name", "version"],
    },
    Table {
        name: "instances",
        columns: &[
            ("id", Text),
            ("namespace", Text),
            ("name", Text),
            ("version", Text),
            ("status", Text),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("input", Text),
            ("output", Text),
            ("error", Text),
            ("attention", Text),
        ],
        key: &["id"],
    },
    Table {
        name: "history",
        columns: &[
            ("instance_id", Text),
            ("seq", Int),
            ("time_ms", Int),
            ("kind", Text),
            ("data", Text),
        ],
        key: &["instance_id", "seq"],
    },
    Table {
        name: "work",
        columns: &[
            ("instance_id", Text),
            ("effect_id", Int),
            ("task", Text),
            ("kind", Text),
            ("due_ms", Int),
            ("attempts", Int32),
            ("effect", Text),
        ],
        key: &["instance_id", "effect_id"],
    },
    Table {
        name: "schedules",
        columns: &[
            ("namespace", Text),
            ("name", Text),
            ("version", Text),
            ("next_fire_ms", Int),
            ("last_fire_ms", Int),
            ("paused", Bool),
            ("revision", Int),
            ("updated_ms", Int),
            ("state", Text),
        ],
        key: &["namespace", "name"],
    },
    Table {
        name: "events",
        columns: &[
            ("id", Int),
            ("received_ms", Int),
            ("processed", Bool),
            ("event", Text),
            ("dedup", Text),
        ],
        key: &["id"],
    },
    Table {
        name: "idempotency",
        columns: &[
            ("namespace", Text),
            ("key", Text),
            ("request_hash", Text),
            ("instance_id", Text),
            ("expires_ms", Int),
        ],
        key: &["namespace", "key"],
    },
    Table {
        name: "tokens",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("role", Text),
            ("namespaces", Text),
            ("secret_sha256", Text),
            ("created_ms", Int),
            ("created_by", Text),
            ("expires_ms", Int),
            ("revoked_ms", Int),
        ],
        key: &["id"],
    },
    Table {
        name: "audit",
        columns: &[
            ("seq", Int),
            ("at_ms", Int),
            ("actor", Text),
            ("action", Text),
            ("resource", Text),
            ("namespace", Text),
            ("source", Text),
            ("result", Text),
            ("prev_hash", Text),
            ("hash", Text),
        ],
        key: &["seq"],
    },
    Table {
        name: "secrets",
        columns: &[
            ("namespace", Text),
            ("name", Text),
            ("key_id", Text),
            ("nonce", Text),
            ("ciphertext", Text),
            ("updated_ms", Int),
        ],
        key: &["namespace", "name"],
    },
    Table {
        name: "alerts",
        columns: &[
            ("id", Text),
            ("rule", Text),
            ("key", Text),
            ("namespace", Text),
            ("fired_ms", Int),
            ("summary", Text),
            ("data", Text),
            ("delivered_ms", Int),
            ("attempts", Int32),
            ("next_ms", Int),
            ("last_error", Text),
            ("resolved_ms", Int),
        ],
        key: &["id"],
    },
];

/// A backend's tables as rows (both backends), and written (the target of a copy).
pub trait Rows {
    /// Rows of `table` in key order, `limit` of them after skipping `offset`.
    fn read_rows(&self, table: &Table, offset: u64, limit: u32) -> Result<Vec<Vec<Value>>>;
    /// Writes rows (inserted, or replacing the row with the same key), in one transaction.
    fn write_rows(&self, table: &Table, rows: &[Vec<Value>]) -> Result<()>;
    /// Called once every table is written (sequences, ...).
    fn rows_written(&self) -> Result<()> {
        Ok(())
    }
}

/// The count and digest of a table, read page by page.
pub fn digest(source: &dyn Rows, table: &Table, page: u32) -> Result<(u64, String)> {
    let mut hash = Sha256::new();
    let mut n = 0u64;
    loop {
        let rows = source.read_rows(table, n, page)?;
        for r in &rows {
            hash.update(serde_json::to_vec(r).unwrap_or_default());
            hash.update(b"\n");
        }
        n += rows.len() as u64;
        if rows.len() < page as usize {
            break;
        }
    }
    Ok((n, crate::security::hex(&hash.finalize())))
}

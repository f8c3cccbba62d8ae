//! The tables as plain rows ([`crate::copy::Rows`]): the source of `kflow db copy`.

use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use super::SqliteStore;
use crate::copy::{Kind, Rows, Table};
use crate::{Result, StoreError};

impl Rows for SqliteStore {
    fn read_rows(&self, table: &Table, offset: u64, limit: u32) -> Result<Vec<Vec<Value>>> {
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {} LIMIT ?1 OFFSET ?2",
            table.column_list(),
            table.name,
            table.key_list()
        );
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params![limit, offset as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut cells = Vec::with_capacity(table.columns.len());
                for (i, (name, kind)) in table.columns.iter().enumerate() {
                    let v: SqlValue = row.get(i)?;
                    cells.push(match (v, kind) {
                        (SqlValue::Null, _) => Value::Null,
                        (SqlValue::Text(t), Kind::Text) => Value::String(t),
                        (SqlValue::Integer(n), Kind::Int | Kind::Int32) => Value::from(n),
                        (SqlValue::Integer(n), Kind::Bool) => Value::Bool(n != 0),
                        (other, _) => {
                            return Err(StoreError::Corrupt(format!(
                                "{}.{name}: unexpected value {other:?}",
                                table.name
                            )));
                        }
                    });
                }
                out.push(cells);
            }
            Ok(out)
        })
    }

    fn write_rows(&self, table: &Table, _rows: &[Vec<Value>]) -> Result<()> {
        Err(StoreError::Db(format!(
            "{}: kflow db copy writes to PostgreSQL only (SQLite is the source)",
            table.name
        )))
    }
}

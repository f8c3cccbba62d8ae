//! The tables as plain rows ([`kflow_store::copy::Rows`]): the target of `kflow db copy` (rows
//! upserted by key, so that a copy can run again), and read back to check it.

use kflow_store::copy::{Kind, Rows, Table};
use kflow_store::{Result, StoreError};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::PgStore;

impl Rows for PgStore {
    fn read_rows(&self, table: &Table, offset: u64, limit: u32) -> Result<Vec<Vec<Value>>> {
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {} LIMIT $1 OFFSET $2",
            table.column_list(),
            table.name,
            table.key_list()
        );
        let (limit, offset) = (i64::from(limit), offset as i64);
        self.read(|c| {
            Ok(c.query(&sql, &[&limit, &offset])?
                .iter()
                .map(|row| {
                    table
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, (_, kind))| match kind {
                            Kind::Text => row
                                .get::<_, Option<String>>(i)
                                .map_or(Value::Null, Value::from),
                            Kind::Int => row
                                .get::<_, Option<i64>>(i)
                                .map_or(Value::Null, Value::from),
                            Kind::Int32 => row
                                .get::<_, Option<i32>>(i)
                                .map_or(Value::Null, Value::from),
                            Kind::Bool => row
                                .get::<_, Option<bool>>(i)
                                .map_or(Value::Null, Value::from),
                        })
                        .collect()
                })
                .collect())
        })
    }

    /// One statement per page: every column as an array, `unnest`ed into rows, upserted by key.
    fn write_rows(&self, table: &Table, rows: &[Vec<Value>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let casts: Vec<String> = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| {
                let t = match kind {
                    Kind::Text => "text",
                    Kind::Int => "bigint",
                    Kind::Int32 => "integer",
                    Kind::Bool => "boolean",
                };
                format!("${}::{t}[]", i + 1)
            })
            .collect();
        let updates: Vec<String> = table
            .columns
            .iter()
            .filter(|(c, _)| !table.key.contains(c))
            .map(|(c, _)| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) DO {}",
            table.name,
            table.column_list(),
            casts.join(", "),
            table.key_list(),
            if updates.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", updates.join(", "))
            }
        );
        let mut columns: Vec<Box<dyn ToSql + Sync>> = Vec::with_capacity(table.columns.len());
        for (i, (name, kind)) in table.columns.iter().enumerate() {
            let cell = |r: &Vec<Value>| -> Result<Value> {
                r.get(i).cloned().ok_or_else(|| {
                    StoreError::Db(format!(
                        "{}: a row of {} columns, {} expected",
                        table.name,
                        r.len(),
                        table.columns.len()
                    ))
                })
            };
            let bad =
                |v: &Value| StoreError::Db(format!("{}.{name}: {v} is not a {kind:?}", table.name));
            columns.push(match kind {
                Kind::Text => Box::new(
                    rows.iter()
                        .map(|r| match cell(r)? {
                            Value::Null => Ok(None),
                            Value::String(s) => Ok(Some(s)),
                            v => Err(bad(&v)),
                        })
                        .collect::<Result<Vec<Option<String>>>>()?,
                ),
                Kind::Int => Box::new(
                    rows.iter()
                        .map(|r| match cell(r)? {
                            Value::Null => Ok(None),
                            v => v.as_i64().map(Some).ok_or_else(|| bad(&v)),
                        })
                        .collect::<Result<Vec<Option<i64>>>>()?,
                ),
                Kind::Int32 => Box::new(
                    rows.iter()
                        .map(|r| match cell(r)? {
                            Value::Null => Ok(None),
                            v => v
                                .as_i64()
                                .and_then(|n| i32::try_from(n).ok())
                                .map(Some)
                                .ok_or_else(|| bad(&v)),
                        })
                        .collect::<Result<Vec<Option<i32>>>>()?,
                ),
                Kind::Bool => Box::new(
                    rows.iter()
                        .map(|r| match cell(r)? {
                            Value::Null => Ok(None),
                            Value::Bool(b) => Ok(Some(b)),
                            v => Err(bad(&v)),
                        })
                        .collect::<Result<Vec<Option<bool>>>>()?,
                ),
            });
        }
        let refs: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|b| b.as_ref()).collect();
        self.write(|c| c.execute(&sql, &refs).map(|_| ()))
    }

    fn rows_written(&self) -> Result<()> {
        // New events continue after the copied ones.
        self.write(|c| {
            c.batch(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), \
                 GREATEST((SELECT COALESCE(MAX(id), 0) FROM events), 1))",
            )
        })?;
        // What this store remembered of last seqs may predate the copy.
        self.last_seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }
}

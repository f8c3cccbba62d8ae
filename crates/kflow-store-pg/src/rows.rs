//! The tables as plain rows ([`kflow_store::copy::Rows`]): the target of `kflow db copy` (rows
//! upserted by key, so that a copy can run again), and read back to check it.

use kflow_store::copy::{Kind, Rows, Table};
use kflow_store::{Result, StoreError};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::PgStore;

fn cell(table: &Table, name: &str, kind: Kind, v: &Value) -> Result<Box<dyn ToSql + Sync>> {
    let bad = || StoreError::Db(format!("{}.{name}: {v} is not a {kind:?}", table.name));
    Ok(match (kind, v) {
        (Kind::Text, Value::Null) => Box::new(None::<String>),
        (Kind::Text, Value::String(s)) => Box::new(Some(s.clone())),
        (Kind::Int, Value::Null) => Box::new(None::<i64>),
        (Kind::Int, Value::Number(n)) => Box::new(Some(n.as_i64().ok_or_else(bad)?)),
        (Kind::Int32, Value::Null) => Box::new(None::<i32>),
        (Kind::Int32, Value::Number(n)) => Box::new(Some(
            n.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(bad)?,
        )),
        (Kind::Bool, Value::Null) => Box::new(None::<bool>),
        (Kind::Bool, Value::Bool(b)) => Box::new(Some(*b)),
        _ => return Err(bad()),
    })
}

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

    fn write_rows(&self, table: &Table, rows: &[Vec<Value>]) -> Result<()> {
        let placeholders: Vec<String> =
            (1..=table.columns.len()).map(|i| format!("${i}")).collect();
        let updates: Vec<String> = table
            .columns
            .iter()
            .filter(|(c, _)| !table.key.contains(c))
            .map(|(c, _)| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO {}",
            table.name,
            table.column_list(),
            placeholders.join(", "),
            table.key_list(),
            if updates.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", updates.join(", "))
            }
        );
        let mut args = Vec::with_capacity(rows.len());
        for r in rows {
            if r.len() != table.columns.len() {
                return Err(StoreError::Db(format!(
                    "{}: a row of {} columns, {} expected",
                    table.name,
                    r.len(),
                    table.columns.len()
                )));
            }
            let cells: Vec<Box<dyn ToSql + Sync>> = table
                .columns
                .iter()
                .zip(r)
                .map(|((name, kind), v)| cell(table, name, *kind, v))
                .collect::<Result<_>>()?;
            args.push(cells);
        }
        self.write(|c| {
            c.transaction(|c| {
                for cells in &args {
                    let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|b| b.as_ref()).collect();
                    c.execute(&sql, &refs)?;
                }
                Ok(())
            })
        })
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

//! Learned task statistics (see `kflow_store::Store::task_stats`).

use kflow_store::Result;
use serde_json::Value;

use crate::PgStore;

pub(crate) fn task_stats(
    store: &PgStore,
    namespace: &str,
    name: &str,
) -> Result<Vec<kflow_store::TaskStatsRow>> {
    store.read(|c| {
        Ok(c.query(
            "SELECT namespace, name, version, task, data, updated_ms FROM task_stats \
             WHERE namespace = $1 AND name = $2 ORDER BY version, task",
            &[&namespace, &name],
        )?
        .iter()
        .map(|r| kflow_store::TaskStatsRow {
            namespace: r.get(0),
            name: r.get(1),
            version: r.get(2),
            task: r.get(3),
            data: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or(Value::Null),
            updated_ms: r.get(5),
        })
        .collect())
    })
}

pub(crate) fn merge(
    store: &PgStore,
    deltas: &[kflow_store::TaskStatsRow],
    merge: &kflow_store::MergeFn,
) -> Result<()> {
    // Rows locked in key order: two nodes merging the same rows wait, never deadlock.
    let mut deltas: Vec<&kflow_store::TaskStatsRow> = deltas.iter().collect();
    deltas.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.version, &a.task).cmp(&(
            &b.namespace,
            &b.name,
            &b.version,
            &b.task,
        ))
    });
    store.write(|c| {
        c.transaction(|c| {
            for d in &deltas {
                let old = c.query_opt(
                    "SELECT data FROM task_stats WHERE namespace = $1 AND name = $2 \
                     AND version = $3 AND task = $4 FOR UPDATE",
                    &[&d.namespace, &d.name, &d.version, &d.task],
                )?;
                let data = match old
                    .and_then(|r| serde_json::from_str::<Value>(r.get::<_, &str>(0)).ok())
                {
                    Some(old) => merge(&old, &d.data),
                    None => d.data.clone(),
                };
                c.execute(
                    "INSERT INTO task_stats (namespace, name, version, task, data, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (namespace, name, version, task) \
                     DO UPDATE SET data = EXCLUDED.data, updated_ms = EXCLUDED.updated_ms",
                    &[
                        &d.namespace,
                        &d.name,
                        &d.version,
                        &d.task,
                        &data.to_string(),
                        &d.updated_ms,
                    ],
                )?;
            }
            Ok(())
        })
    })
}

//! Concurrency slots across nodes (see `kflow_store::Store::claim_slots`).

use kflow_store::Result;

use crate::PgStore;

pub(crate) fn claim(
    store: &PgStore,
    id: &str,
    groups: &[(String, usize)],
    replacing: Option<&str>,
) -> Result<bool> {
    let replacing = replacing.unwrap_or("");
    if store.node().is_none() || groups.is_empty() {
        return Ok(true);
    }
    let mut groups = groups.to_vec();
    groups.sort();
    store.write(|c| {
        c.transaction(|c| {
            // One claimer per group at a time, across nodes (in a fixed order: no deadlock).
            for (g, _) in &groups {
                c.execute(
                    "SELECT pg_advisory_xact_lock(1802071152, hashtext($1))",
                    &[g],
                )?;
            }
            for (g, limit) in &groups {
                let taken: i64 = c
                    .query_opt(
                        "SELECT COUNT(*) FROM slots s LEFT JOIN instances i ON i.id = s.instance_id \
                         WHERE s.grp = $1 AND s.instance_id <> $2 AND s.instance_id <> $3 \
                         AND (i.status IN ('running', 'suspended') \
                              OR (i.id IS NULL AND s.claimed_at > clock_timestamp() - interval '1 minute'))",
                        &[g, &id, &replacing],
                    )?
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if taken >= i64::try_from(*limit).unwrap_or(i64::MAX) {
                    return Ok(false);
                }
            }
            for (g, _) in &groups {
                c.execute(
                    "INSERT INTO slots (grp, instance_id, claimed_at) VALUES ($1, $2, clock_timestamp()) \
                     ON CONFLICT DO NOTHING",
                    &[g, &id],
                )?;
            }
            Ok(true)
        })
    })
}

//! The database lease: which node drives the workflows, and the fencing token of its commits.
//!
//! One row (`lease`, id 1) names the holder, its `epoch`, and when the lease expires, in the
//! **database's** clock (`clock_timestamp()`): nodes whose clocks disagree by seconds still agree
//! on who holds it, because none of them reads its own clock for it.
//!
//! - **Taken** by one `INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at < clock_timestamp()`:
//!   only when nobody holds it or the holder let it expire; every take increments `epoch`.
//! - **Renewed** by the holder (`UPDATE ... WHERE node = me AND epoch = mine`) every third of
//!   its time to live; a renewal that finds the row changed means the lease was lost.
//! - **Handed over** by a draining holder setting `expires_at` to now: a standby takes it at its
//!   next try, without waiting for the time to live.
//! - **Fenced**: every commit of the holder starts with `SELECT ... WHERE node = me AND
//!   epoch = mine AND expires_at > clock_timestamp() FOR SHARE` in its own transaction. The row
//!   lock makes a take (an UPDATE of that row) wait for commits in flight and commits wait for a
//!   take, so a commit either ends before the take or sees the new epoch and writes nothing. A
//!   node paused past its lease (GC, SIGSTOP, a partition) that wakes up cannot commit.

use kflow_store::{Result, StoreError};

use crate::PgStore;

/// The fencing token: the lease holder and the epoch it took the lease with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    pub epoch: i64,
}

/// The lease as the database has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub node: String,
    pub epoch: i64,
    /// Milliseconds until it expires, by the database's clock (negative: expired).
    pub expires_in_ms: i64,
}

/// A node as registered in the `nodes` table.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub host: String,
    pub api: Option<String>,
    /// `active` (holds the lease), `standby`, `draining`, `stopped`.
    pub state: String,
    pub running: i64,
    /// Unix milliseconds, by the database's clock.
    pub started_ms: i64,
    pub seen_ms: i64,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub silent_ms: i64,
}

impl PgStore {
    /// Takes the lease for `node` if nobody holds it or its holder let it expire; the fence to
    /// commit with, None when another node holds it.
    pub fn try_acquire_lease(&self, node: &str, ttl_ms: i64) -> Result<Option<Fence>> {
        self.write(|c| {
            // A holder's commit in flight locks the row for a moment: wait that long, not more
            // (a holder paused mid-commit has its session ended by the server, see PgOptions).
            c.transaction(|c| {
            c.batch("SET LOCAL lock_timeout = '1s'")?;
            let row = c.query_opt(
                "INSERT INTO lease (id, node, epoch, expires_at, acquired_at) \
                 VALUES (1, $1, 1, clock_timestamp() + $2 * interval '1 millisecond', clock_timestamp()) \
                 ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node, epoch = lease.epoch + 1, \
                 expires_at = EXCLUDED.expires_at, acquired_at = EXCLUDED.acquired_at \
                 WHERE lease.expires_at < clock_timestamp() RETURNING epoch",
                &[&node, &(ttl_ms as f64)],
            )?;
            Ok(row.map(|r| Fence {
                node: node.to_string(),
                epoch: r.get(0),
            }))
            })
        })
    }

    /// Extends the lease; false when it is no longer this fence's (taken over meanwhile).
    pub fn renew_lease(&self, fence: &Fence, ttl_ms: i64) -> Result<bool> {
        self.write(|c| {
            Ok(c.execute(
                "UPDATE lease SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
                 WHERE id = 1 AND node = $1 AND epoch = $2 AND expires_at > clock_timestamp()",
                &[&fence.node, &fence.epoch, &(ttl_ms as f64)],
            )? == 1)
        })
    }

    /// Gives the lease up at once (a drain): a standby may take it now, and the standbys
    /// listening on [`LEASE_CHANNEL`] are told (with the commit).
    pub fn release_lease(&self, fence: &Fence) -> Result<bool> {
        self.write(|c| {
            c.transaction(|c| {
                let released = c.execute(
                    "UPDATE lease SET expires_at = clock_timestamp() - interval '1 millisecond' \
                     WHERE id = 1 AND node = $1 AND epoch = $2",
                    &[&fence.node, &fence.epoch],
                )? == 1;
                c.execute("SELECT pg_notify($1, $2)", &[&LEASE_CHANNEL, &fence.node])?;
                Ok(released)
            })
        })
    }

    /// Hears when a holder gives the lease up (see [`release_lease`](Self::release_lease)).
    pub fn listen_lease(&self) -> Result<crate::pool::Listener> {
        self.pool_listen(LEASE_CHANNEL)
    }

    /// Who holds the lease (None: never taken).
    pub fn lease(&self) -> Result<Option<LeaseState>> {
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT node, epoch, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint \
                 FROM lease WHERE id = 1",
                &[],
            )?
            .map(|r| LeaseState {
                node: r.get(0),
                epoch: r.get(1),
                expires_in_ms: r.get(2),
            }))
        })
    }

    /// Registers this node, or records its heartbeat and state.
    pub fn heartbeat(
        &self,
        node: &str,
        host: &str,
        api: Option<&str>,
        state: &str,
        running: i64,
    ) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO nodes (id, host, api, started_at, seen_at, state, running) \
                 VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp(), $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = clock_timestamp(), state = EXCLUDED.state, \
                 running = EXCLUDED.running, api = EXCLUDED.api",
                &[&node, &host, &api, &state, &running],
            )?;
            Ok(())
        })
    }

    /// Forgets nodes not seen for `older_than_ms` (each start of a process is a node: the
    /// table would otherwise keep every one); returns how many.
    pub fn forget_nodes(&self, older_than_ms: i64) -> Result<u64> {
        self.write(|c| {
            c.execute(
                "DELETE FROM nodes WHERE seen_at < clock_timestamp() - $1 * interval '1 millisecond'",
                &[&(older_than_ms as f64)],
            )
        })
    }

    /// Every node seen in the last `within_ms`, newest first.
    pub fn nodes(&self, within_ms: i64) -> Result<Vec<NodeRow>> {
        self.read(|c| {
            Ok(c.query(
                "SELECT id, host, api, state, running, \
                 (extract(epoch FROM started_at) * 1000)::bigint, \
                 (extract(epoch FROM seen_at) * 1000)::bigint, \
                 (extract(epoch FROM clock_timestamp() - seen_at) * 1000)::bigint \
                 FROM nodes WHERE seen_at > clock_timestamp() - $1 * interval '1 millisecond' \
                 ORDER BY started_at DESC",
                &[&(within_ms as f64)],
            )?
            .iter()
            .map(|r| NodeRow {
                id: r.get(0),
                host: r.get(1),
                api: r.get(2),
                state: r.get(3),
                running: r.get(4),
                started_ms: r.get(5),
                seen_ms: r.get(6),
                silent_ms: r.get(7),
            })
            .collect())
        })
    }
}

/// The channel standbys `LISTEN` on: a holder that gives the lease up notifies it.
pub const LEASE_CHANNEL: &str = "kflow_lease";

/// The error a fenced commit returns starts with this.
pub const FENCED: &str = "fenced:";

/// Whether a store error is a fenced commit (the node lost the lease).
pub fn is_fenced(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(m) if m.contains(FENCED))
}

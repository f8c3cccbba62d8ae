//! Leases of several active nodes on one database, and the fencing of their commits.
//!
//! Times are the **database's** clock (`clock_timestamp()`): nodes whose clocks disagree by
//! seconds still agree on whose lease lapsed, because none of them reads its own clock for it.
//!
//! - **A lease per node**: every term of a node joins with a new id (its row in `nodes`, epoch
//!   1, `expires_at`) and renews it with its heartbeat (`UPDATE ... WHERE id = me AND epoch =
//!   mine AND expires_at > now AND adopted_by IS NULL`); a renewal that changes no row means the
//!   node lost its lease, and it stops at once.
//! - **Ownership**: every unfinished instance names the node that drives it (`owner`): the
//!   node it was started through, or the node that adopted it.
//! - **Fenced commits**: every transaction that writes as a node first takes that node's
//!   [`HOLD_NODE`] lock (shared), then checks, in a statement of its own, that the node's lease
//!   holds and that every existing instance it writes is the node's. No row: it writes nothing
//!   and fails with `fenced:`.
//! - **Adoption**: a live node takes over a node whose lease lapsed, whole, in one transaction:
//!   it locks the dead node's row (`FOR UPDATE SKIP LOCKED`: adopters do not wait for each
//!   other), takes its `HOLD_NODE` lock exclusively (none of its commits is in flight; if one
//!   is, not now), moves the owner of its unfinished instances to itself, and marks the node
//!   adopted with a new epoch. A commit of the dead node that comes later waits for that lock,
//!   then reads the row as the adoption left it: fenced. A node paused (GC, SIGSTOP, a
//!   partition) past its lease writes nothing when it wakes.
//! - **Handed over**: a drained node sets its `expires_at` to now and notifies
//!   [`LEASE_CHANNEL`]: the others adopt its instances at once.
//! - **The leader lease** (`lease`, one row): one node does the duties of one node for all
//!   (retention, alert deliveries); taken by `INSERT ... ON CONFLICT DO UPDATE ... WHERE
//!   expires_at < now`, its epoch growing at every take.

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
    /// What it last said: `active`, `draining`, `stopped`; `gone` once adopted.
    pub state: String,
    pub running: i64,
    /// Unfinished instances it drives.
    pub owned: i64,
    /// Its own lease has lapsed (or it never had one).
    pub expired: bool,
    /// The node that adopted its instances.
    pub adopted_by: Option<String>,
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

    /// Hears when events are posted (see [`EVENTS_CHANNEL`]).
    pub fn listen_events(&self) -> Result<crate::pool::Listener> {
        self.pool_listen(EVENTS_CHANNEL)
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
                // Never one that still owns unfinished instances (it is adopted first), nor one
                // with a live lease.
                "DELETE FROM nodes WHERE seen_at < clock_timestamp() - $1 * interval '1 millisecond' \
                 AND (expires_at IS NULL OR expires_at < clock_timestamp()) \
                 AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.owner = nodes.id \
                     AND i.status IN ('running', 'suspended'))",
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
                 (extract(epoch FROM clock_timestamp() - seen_at) * 1000)::bigint, \
                 (SELECT COUNT(*) FROM instances i WHERE i.owner = nodes.id \
                     AND i.status IN ('running', 'suspended')), \
                 COALESCE(expires_at < clock_timestamp(), true), adopted_by \
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
                owned: r.get(8),
                expired: r.get(9),
                adopted_by: r.get(10),
            })
            .collect())
        })
    }
}

/// What a node took over from a node whose lease lapsed (or that left), see [`PgStore::adopt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The node whose instances these were (None: instances of schema version 1, with no owner).
    pub from: Option<String>,
    pub ids: Vec<String>,
    /// Where that node's event cursor stood: events after it (up to this node's cursor) were
    /// never offered to its subscriptions.
    pub event_cursor: Option<i64>,
}

/// The advisory lock that orders posted events: ids are taken and committed in turn, so a node
/// that has read every event up to an id will never see a smaller one appear later.
pub(crate) const EVENTS_LOCK: i64 = 0x6b_666c_6f77_0002;

impl PgStore {
    /// Joins the cluster as an active node: `node` (a new id for every term) gets a lease of
    /// its own (epoch 1, `ttl_ms` from now by the database's clock) and an event cursor at the
    /// newest posted event (what was posted before is no business of its instances). The fence
    /// every commit of this node checks.
    pub fn join(&self, node: &str, host: &str, api: Option<&str>, ttl_ms: i64) -> Result<Fence> {
        self.write(|c| {
            c.transaction(|c| {
                c.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])?;
                let row = c.query_opt(
                    "INSERT INTO nodes (id, host, api, started_at, seen_at, state, running, epoch,                      expires_at, event_cursor) VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp(),                      'active', 0, 1, clock_timestamp() + $4 * interval '1 millisecond',                      (SELECT COALESCE(MAX(id), 0) FROM events))                      ON CONFLICT (id) DO UPDATE SET epoch = nodes.epoch + 1, expires_at = EXCLUDED.expires_at,                      seen_at = EXCLUDED.seen_at, state = 'active' WHERE nodes.adopted_by IS NULL RETURNING epoch",
                    &[&node, &host, &api, &(ttl_ms as f64)],
                )?;
                match row {
                    Some(r) => Ok(Fence {
                        node: node.to_string(),
                        epoch: r.get(0),
                    }),
                    None => Err(StoreError::Db(format!(
                        "node {node} cannot join again: its instances were taken over"
                    ))),
                }
            })
        })
    }

    /// Extends this node's own lease and records its heartbeat; false when the lease is no
    /// longer this fence's (it lapsed, or another node adopted its instances).
    pub fn renew_node(
        &self,
        fence: &Fence,
        ttl_ms: i64,
        state: &str,
        running: i64,
    ) -> Result<bool> {
        self.write(|c| {
            Ok(c.execute(
                "UPDATE nodes SET expires_at = clock_timestamp() + $3 * interval '1 millisecond',                  seen_at = clock_timestamp(), state = $4, running = $5                  WHERE id = $1 AND epoch = $2 AND expires_at > clock_timestamp() AND adopted_by IS NULL",
                &[&fence.node, &fence.epoch, &(ttl_ms as f64), &state, &running],
            )? == 1)
        })
    }

    /// How many nodes hold a live lease now (this one included).
    pub fn live_nodes(&self) -> Result<i64> {
        self.read(|c| {
            Ok(c
                .query_opt(
                    "SELECT COUNT(*) FROM nodes WHERE expires_at > clock_timestamp() AND adopted_by IS NULL",
                    &[],
                )?
                .map_or(1, |r| r.get(0)))
        })
    }

    /// Gives this node's lease up at once (the end of a drain): the other nodes, told on
    /// [`LEASE_CHANNEL`], adopt its instances without waiting for the time to live.
    pub fn release_node(&self, fence: &Fence) -> Result<bool> {
        self.write(|c| {
            c.transaction(|c| {
                let released = c.execute(
                    "UPDATE nodes SET expires_at = clock_timestamp() - interval '1 millisecond',                      state = 'stopped', seen_at = clock_timestamp() WHERE id = $1 AND epoch = $2",
                    &[&fence.node, &fence.epoch],
                )? == 1;
                c.execute("SELECT pg_notify($1, $2)", &[&LEASE_CHANNEL, &fence.node])?;
                Ok(released)
            })
        })
    }

    /// Takes over this node's share of the unfinished instances of one node whose lease lapsed
    /// (or that left), or else instances that have no owner (written by schema version 1).
    /// Nodes racing for the same dead node do not wait for each other (`SKIP LOCKED`). Shares
    /// are whole trees (an instance and its sub-workflows stay together): the live nodes that
    /// have not taken a share yet divide what is left, so the last one takes the rest; once
    /// the dead node's lease lapsed a time to live ago (`ttl_ms`), whoever comes takes the rest. The dead node's commits in flight hold its
    /// [`HOLD_NODE`] lock: it is left for the next try until they end; then its epoch is moved
    /// on and it is marked adopted, so nothing it sends later commits. None: nothing to adopt.
    pub fn adopt(&self, fence: &Fence, ttl_ms: i64) -> Result<Option<Adopted>> {
        self.write(|c| {
            c.transaction(|c| {
                c.batch("SET LOCAL lock_timeout = '1s'")?;
                c.execute(HOLD_NODE, &[&fence.node])?;
                let me = c
                    .query_opt(FENCE_ME, &[&fence.node, &fence.epoch])?
                    .is_some();
                if !me {
                    return Err(fenced_error(fence));
                }
                // A dead node this node has not yet taken its share of (or whose share-out is
                // overdue: then whoever comes takes the rest).
                let dead = c.query_opt(
                    "SELECT id, event_cursor, cardinality(adopters), \
                     expires_at < clock_timestamp() - $2 * interval '1 millisecond' \
                     FROM nodes WHERE adopted_by IS NULL AND id <> $1 \
                     AND expires_at < clock_timestamp() \
                     AND NOT ($1 = ANY(adopters) AND expires_at > clock_timestamp() - $2 * interval '1 millisecond') \
                     ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[&fence.node, &(ttl_ms as f64)],
                )?;
                if let Some(row) = dead {
                    let from: String = row.get(0);
                    let cursor: i64 = row.get(1);
                    let shared_out: i32 = row.get(2);
                    let overdue: bool = row.get(3);
                    // A commit of that node still in flight holds its lock: not now.
                    let free: bool = c
                        .query_opt(
                            "SELECT pg_try_advisory_xact_lock(1802071151, hashtext($1))",
                            &[&from],
                        )?
                        .map(|r| r.get(0))
                        .unwrap_or(false);
                    if !free {
                        return Ok(None);
                    }
                    // Its instances are shared out among the live nodes, a tree (an instance and
                    // its sub-workflows, whose ids extend their parent's) at a time: each live
                    // node takes its share at its next look, the last one what is left.
                    let live: i64 = c
                        .query_opt(
                            "SELECT COUNT(*) FROM nodes WHERE expires_at > clock_timestamp() \
                             AND adopted_by IS NULL",
                            &[],
                        )?
                        .map_or(1, |r| r.get(0));
                    let takers = (live - i64::from(shared_out)).max(1);
                    let ids: Vec<String> = if overdue || takers == 1 {
                        c.query(
                            "UPDATE instances SET owner = $1 WHERE owner = $2 \
                             AND status IN ('running', 'suspended') RETURNING id",
                            &[&fence.node, &from],
                        )?
                    } else {
                        let roots: i64 = c
                            .query_opt(
                                "SELECT COUNT(*) FROM instances WHERE owner = $1 \
                                 AND status IN ('running', 'suspended') AND strpos(id, '.') = 0",
                                &[&from],
                            )?
                            .map_or(0, |r| r.get(0));
                        let share = (roots + takers - 1) / takers;
                        c.query(
                            "WITH roots AS (SELECT id FROM instances WHERE owner = $2 \
                             AND status IN ('running', 'suspended') AND strpos(id, '.') = 0 \
                             ORDER BY id LIMIT $3) \
                             UPDATE instances SET owner = $1 WHERE owner = $2 \
                             AND status IN ('running', 'suspended') \
                             AND split_part(id, '.', 1) IN (SELECT id FROM roots) RETURNING id",
                            &[&fence.node, &from, &share],
                        )?
                    }
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                    let left: bool = c
                        .query_opt(
                            "SELECT EXISTS (SELECT 1 FROM instances WHERE owner = $1 \
                             AND status IN ('running', 'suspended'))",
                            &[&from],
                        )?
                        .is_some_and(|r| r.get(0));
                    if left {
                        c.execute(
                            "UPDATE nodes SET adopters = array_append(adopters, $1), \
                             epoch = epoch + 1, state = 'lost' WHERE id = $2",
                            &[&fence.node, &from],
                        )?;
                    } else {
                        c.execute(
                            "UPDATE nodes SET adopted_by = $1, adopters = array_append(adopters, $1), \
                             epoch = epoch + 1, state = 'gone', running = 0 WHERE id = $2",
                            &[&fence.node, &from],
                        )?;
                    }
                    return Ok(Some(Adopted {
                        from: Some(from),
                        ids,
                        event_cursor: Some(cursor),
                    }));
                }
                let ids: Vec<String> = c
                    .query(
                        "UPDATE instances SET owner = $1 WHERE id IN (SELECT id FROM instances                          WHERE owner IS NULL AND status IN ('running', 'suspended')                          LIMIT 1000 FOR UPDATE SKIP LOCKED) RETURNING id",
                        &[&fence.node],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                Ok((!ids.is_empty()).then_some(Adopted {
                    from: None,
                    ids,
                    event_cursor: None,
                }))
            })
        })
    }

    /// The node that drives an instance and the address of its API (when it is a live node),
    /// None when the instance does not exist.
    pub fn owner_of(&self, id: &str) -> Result<Option<Owner>> {
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT i.owner, n.api, (n.expires_at > clock_timestamp() AND n.adopted_by IS NULL)                  FROM instances i LEFT JOIN nodes n ON n.id = i.owner WHERE i.id = $1",
                &[&id],
            )?
            .map(|r| Owner {
                node: r.get(0),
                api: r.get(1),
                live: r.get::<_, Option<bool>>(2).unwrap_or(false),
            }))
        })
    }
}

/// Who drives an instance (see [`PgStore::owner_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: Option<String>,
    pub api: Option<String>,
    pub live: bool,
}

/// Held (shared) by every transaction that writes as this node, until it ends; an adoption of
/// this node takes it exclusively, so it never overlaps a commit of the node it adopts. An
/// advisory lock, not a row lock: a row lock taken by every commit would be written to the row
/// (and to the WAL) each time. `$1`: the node id (hashed; a collision only delays an adoption).
pub(crate) const HOLD_NODE: &str = "SELECT pg_advisory_xact_lock_shared(1802071151, hashtext($1))";

/// This node's own lease, read after [`HOLD_NODE`].
pub(crate) const FENCE_ME: &str = "SELECT 1 FROM nodes WHERE id = $1 AND epoch = $2 \
     AND expires_at > clock_timestamp() AND adopted_by IS NULL";

pub(crate) fn fenced_error(f: &Fence) -> StoreError {
    StoreError::Db(format!(
        "{} node {} no longer holds its database lease of epoch {} (it lapsed, and its          instances are another node's now): nothing was written",
        FENCED, f.node, f.epoch
    ))
}

/// The channel standbys `LISTEN` on: a holder that gives the lease up notifies it.
pub const LEASE_CHANNEL: &str = "kflow_lease";

/// The channel every node `LISTEN`s on for posted events (the payload is the event's id).
pub const EVENTS_CHANNEL: &str = "kflow_events";

/// The error a fenced commit returns starts with this.
pub const FENCED: &str = "fenced:";

/// Whether a store error is a fenced commit (the node lost the lease).
pub fn is_fenced(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(m) if m.contains(FENCED))
}

/// Whether this node drives instance `id` (true when it does not exist, or on one node).
pub(crate) fn is_mine(store: &PgStore, id: &str) -> Result<bool> {
    let Some(node) = store.node() else {
        return Ok(true);
    };
    store.read(|c| {
        Ok(
            c.query_opt("SELECT owner FROM instances WHERE id = $1", &[&id])?
                .is_none_or(|r| r.get::<_, Option<String>>(0).as_deref() == Some(node.as_str())),
        )
    })
}

//! kflow-store-pg: the PostgreSQL backend of [`kflow_store::Store`].
//!
//! Several `kflow server` nodes may point at one database. The tables and their meaning are the
//! SQLite backend's; what PostgreSQL adds is coordination between nodes, done by the database
//! alone (no consensus of kflow's own): the database [`lease`] says which node drives the
//! workflows, and every commit of that node checks, inside its own transaction, that it still
//! holds the lease with the same epoch (the fencing token). See ARCHITECTURE.md.
//!
//! The same conformance suite as SQLite's runs on this backend (`tests/conformance.rs`), on a
//! real server.

mod events;
pub mod lease;
mod mapping;
mod pool;
mod queries;
mod retention;
mod rows;
pub mod schema;
mod slots;
mod stats;
pub mod testing;
pub mod tls;
mod writes;

use std::sync::Mutex;
use std::time::Duration;

use kflow_store::{Result, StoreError};

pub use lease::{Adopted, Fence, LeaseState, Owner};
pub use pool::Listener;
pub use schema::{Migrated, SCHEMA_VERSION};

/// How long a caller waits for a free connection before the call fails.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Connections per node by default (the engine's writer, the API's readers, the timers).
pub const DEFAULT_CONNECTIONS: usize = 8;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database[?options]`, or the key=value form.
    pub url: String,
    /// Most connections this node opens.
    pub connections: usize,
    /// The schema (PostgreSQL namespace) the tables live in; `None`: the database's default
    /// (`public`). Tests use one schema per case.
    pub schema: Option<String>,
    /// PostgreSQL ends a session that stays this long inside a transaction without a
    /// statement (`idle_in_transaction_session_timeout`). A node paused (SIGSTOP, a GC) in the
    /// middle of a commit would otherwise keep its row locks, the lease row's among them, and
    /// no other node could take over. Keep it below the lease's time to live.
    pub idle_in_transaction_ms: u64,
}

impl PgOptions {
    pub fn new(url: &str) -> PgOptions {
        PgOptions {
            url: url.to_string(),
            connections: DEFAULT_CONNECTIONS,
            schema: None,
            idle_in_transaction_ms: 2_000,
        }
    }
}

/// Whether a database URL names PostgreSQL (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The URL with its password replaced by `***` (for messages and logs).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (a, h),
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The PostgreSQL [`kflow_store::Store`].
pub struct PgStore {
    pool: pool::Pool,
    /// Set once this node holds the lease: every commit then checks it (see [`lease`]).
    fence: Mutex<Option<Fence>>,
    /// The last history seq of instances this store committed: the continuity check then needs
    /// no read. Only the lease holder commits histories, so it is the only writer of them.
    last_seqs: Mutex<std::collections::HashMap<String, i64>>,
    label: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.label)
            .finish_non_exhaustive()
    }
}

/// Instances whose last seq is remembered at most (the map is cleared beyond).
const LAST_SEQS: usize = 100_000;

impl PgStore {
    /// Connects, checks the database, and creates or migrates the schema. A database written
    /// by a newer kflow, or one that is not a kflow database, is refused.
    pub fn open(options: &PgOptions) -> Result<PgStore> {
        let store = PgStore::connect(options)?;
        {
            let mut conn = store.conn()?;
            schema::migrate(&mut conn).map_err(|e| store.at(e))?;
        }
        Ok(store)
    }

    /// Connects and checks the schema version without migrating (`kflow migrate --check`, the
    /// copy tool): the version found, None for an empty database.
    pub fn open_unmigrated(options: &PgOptions) -> Result<(PgStore, Option<i32>)> {
        let store = PgStore::connect(options)?;
        let version = {
            let mut conn = store.conn()?;
            schema::version(&mut conn).map_err(|e| store.at(e))?
        };
        Ok((store, version))
    }

    /// Runs the migrations (`kflow migrate`).
    pub fn migrate(&self) -> Result<Migrated> {
        let mut conn = self.conn()?;
        schema::migrate(&mut conn).map_err(|e| self.at(e))
    }

    fn connect(options: &PgOptions) -> Result<PgStore> {
        let label = redact(&options.url);
        let (url, mode, root) =
            tls::split_url(&options.url).map_err(|e| StoreError::Db(format!("{label}: {e}")))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Db(format!("invalid database URL {label}: {e}")))?;
        config.ssl_mode(match mode {
            tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = tls::Tls::new(mode, root.as_deref())
            .map_err(|e| StoreError::Db(format!("{label}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.application_name("kflow");
        let mut setup = format!(
            "SET idle_in_transaction_session_timeout = {}",
            options.idle_in_transaction_ms.max(100)
        );
        if let Some(s) = &options.schema {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(StoreError::Db(format!(
                    "invalid schema name {s:?}: letters, digits and _ only"
                )));
            }
            setup.push_str(&format!(
                "; CREATE SCHEMA IF NOT EXISTS {s}; SET search_path TO {s}"
            ));
        }
        let setup = Some(setup);
        let pool = pool::Pool::new(config, tls, options.connections, setup)?;
        let store = PgStore {
            pool,
            fence: Mutex::new(None),
            last_seqs: Default::default(),
            label,
        };
        // Fail now, with the reason, when the database cannot be reached.
        drop(store.conn()?);
        Ok(store)
    }

    pub(crate) fn pool_listen(&self, channel: &str) -> Result<pool::Listener> {
        self.pool.listen(channel).map_err(|e| self.at(e))
    }

    /// What this store is connected to (its URL without the password).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.pool.open()
    }

    fn at(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Db(m) => StoreError::Db(format!("{}: {m}", self.label)),
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", self.label)),
        }
    }

    pub(crate) fn conn(&self) -> Result<pool::Pooled<'_>> {
        self.pool.get(POOL_WAIT).map_err(|e| self.at(e))
    }

    /// Runs a read; once more on a fresh connection when the connection broke under it (the
    /// database restarted, a proxy dropped it).
    pub(crate) fn read<T>(&self, f: impl Fn(&mut pool::Conn) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        match f(&mut conn) {
            Err(_) if conn.is_broken() => {
                drop(conn);
                let mut conn = self.conn()?;
                f(&mut conn)
            }
            other => other,
        }
    }

    /// Runs a write. Not retried: a connection that broke during COMMIT leaves its outcome
    /// unknown to us, so the caller decides (the engine's commits are checked by their seqs).
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut pool::Conn) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        f(&mut conn)
    }

    /// The fence every commit checks, once this node holds the lease.
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
        // Another node may have committed since this store last did: what it remembered of
        // last seqs is not to be trusted in a new term.
        self.last_seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// This node, in a cluster (the owner its scans filter on).
    pub fn node(&self) -> Option<String> {
        self.fence().map(|f| f.node)
    }

    pub(crate) fn fence(&self) -> Option<Fence> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

//! The embedded backend: one SQLite file in WAL mode.
//!
//! Connections: one writer connection behind a mutex, used by every write method (SQLite has a
//! single writer anyway, and the server funnels writes through one thread), plus a small pool of
//! read-only connections. In WAL mode a reader works on the last committed snapshot and never
//! waits for the writer, even while a long write transaction is open. Every statement is
//! prepared once per connection (`prepare_cached`).
//!
//! An in-memory database ([`SqliteStore::open_in_memory`], for tests) cannot be shared between
//! connections, so there reads go through the writer connection.

// Its column-list macros serve the modules declared after it.
#[macro_use]
mod mapping;
mod alerts;
mod commit;
mod queries;
mod retention;
mod rows;
mod schema;
mod security;

pub use security::PayloadAt;
#[cfg(test)]
mod temp_store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::{Result, StoreError};

pub use schema::SCHEMA_VERSION;

/// How hard a commit is pushed to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL + `synchronous=NORMAL`: a commit survives the process being killed (`kill -9`, a
    /// crash); the last commits before a power loss or an OS crash may be lost (never
    /// corrupted). No fsync per commit: only at checkpoints.
    #[default]
    Process,
    /// WAL + `synchronous=FULL`: the WAL is fsynced at every commit, so a commit survives a
    /// power loss too. Costs one fsync per transaction (batches amortize it).
    Full,
}

/// How often the background checkpointer looks for new commits to copy into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL pages past which a commit checkpoints by itself (a safety net: the background
/// checkpointer normally keeps the WAL far below).
const AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// WAL size past which the checkpointer resets it (`TRUNCATE`): it waits for the readers of
/// the moment to finish (new ones read the database file) instead of copying what it can
/// (`PASSIVE`), which cannot reset a log that readers keep using: under a steady flow of
/// overlapping reads the WAL would otherwise grow without bound.
const WAL_LIMIT: u64 = 64 * 1024 * 1024;

/// Read-only connections for a file database.
const READERS: usize = 4;
/// How long a statement waits for a lock held by another connection (or process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection (list_instances has one per filter combination).
const STATEMENT_CACHE: usize = 128;

/// The SQLite [`crate::Store`].
pub struct SqliteStore {
    // Field order is drop order: the checkpointer and the readers close before the writer, so
    // that the writer, being the last connection, checkpoints and removes the WAL file.
    _checkpointer: Option<Checkpointer>,
    /// The WAL size the checkpointer resets past (see [`WAL_LIMIT`]; tests lower it).
    wal_limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Commits since the writer last looked at the WAL's size itself.
    commits: std::sync::atomic::AtomicU32,
    /// Set by the checkpointer when the WAL is past its limit: the writer resets it.
    wal_big: std::sync::Arc<std::sync::atomic::AtomicBool>,
    readers: Option<ReadPool>,
    writer: Mutex<Connection>,
    path: Option<PathBuf>,
    /// The last history seq of instances this store committed (see `queries::apply`): the
    /// continuity check then needs no read. This store is the only writer of its histories.
    last_seqs: Mutex<std::collections::HashMap<String, i64>>,
}

/// Instances whose last seq is remembered at most (the map is cleared beyond).
pub(super) const LAST_SEQS: usize = 100_000;

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database at `path`, creating or
    /// migrating the schema. A database written by a newer kflow (higher schema version) is
    /// refused.
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore> {
        let at = |e: StoreError| prefix(path, e);
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Db(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The database is readable by its owner alone (SQLite gives its -wal and -shm files
        // the same mode): created empty 0600 before SQLite opens it, tightened if older.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path);
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
        let mut writer = Connection::open_with_flags(path, flags).map_err(|e| at(e.into()))?;
        configure_writer(&writer, Some(durability)).map_err(at)?;
        schema::migrate(&mut writer).map_err(at)?;

        let wal_limit = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(WAL_LIMIT));
        let wal_big = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer =
            Checkpointer::start(path, wal_limit.clone(), wal_big.clone()).map_err(at)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, flags).map_err(|e| at(e.into()))?;
            configure_common(&conn).map_err(at)?;
            readers.push(conn);
        }
        Ok(SqliteStore {
            _checkpointer: Some(checkpointer),
            wal_limit,
            wal_big,
            commits: Default::default(),
            readers: Some(ReadPool {
                idle: Mutex::new(readers),
                available: Condvar::new(),
            }),
            writer: Mutex::new(writer),
            path: Some(path.to_path_buf()),
            last_seqs: Default::default(),
        })
    }

    /// Rewrites every workflow payload (instance input/output/error, history data, work
    /// effects, posted events) through `f`; `kflow db encrypt` seals old data with it.
    pub fn rewrite_payloads(
        &self,
        f: &dyn Fn(&PayloadAt, &serde_json::Value) -> Option<serde_json::Value>,
    ) -> Result<u64> {
        self.write(|conn| security::rewrite_payloads(conn, f))
    }

    /// Writes a consistent copy of the database to `file` (which must not exist), from one read
    /// snapshot, while the store goes on committing (`VACUUM INTO`: the copy is compacted).
    /// Returns its size in bytes.
    pub fn backup_to(&self, file: &Path) -> Result<i64> {
        if file.exists() {
            return Err(StoreError::Db(format!("{} exists already", file.display())));
        }
        let Some(path) = &self.path else {
            return Err(StoreError::Db("an in-memory database has no backup".into()));
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure_common(&conn)?;
        let target = file.to_string_lossy().into_owned();
        conn.execute("VACUUM INTO ?1", [target])
            .map_err(|e| StoreError::Db(format!("backing up into {}: {e}", file.display())))?;
        Ok(std::fs::metadata(file).map(|m| m.len() as i64).unwrap_or(0))
    }

    /// Checks that `file` is a kflow database this build can open (without changing it);
    /// its schema version.
    pub fn check_file(file: &Path) -> Result<i64> {
        let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError::Db(format!("{}: {e}", file.display())))?;
        let version: i64 = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .map_err(|e| {
                StoreError::Db(format!("{}: not a kflow database ({e})", file.display()))
            })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Db(format!(
                "{}: schema version {version} is newer than this kflow's ({SCHEMA_VERSION})",
                file.display()
            )));
        }
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(StoreError::Corrupt(format!("{}: {ok}", file.display())));
        }
        Ok(version)
    }

    /// A private in-memory database (for tests): gone when the store is dropped.
    pub fn open_in_memory() -> Result<SqliteStore> {
        let mut writer = Connection::open_in_memory()?;
        configure_writer(&writer, None)?;
        schema::migrate(&mut writer)?;
        Ok(SqliteStore {
            _checkpointer: None,
            wal_limit: Default::default(),
            wal_big: Default::default(),
            commits: Default::default(),
            readers: None,
            writer: Mutex::new(writer),
            path: None,
            last_seqs: Default::default(),
        })
    }

    /// The database file (None in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on the writer connection. A transaction left open by a panicking holder is
    /// rolled back first.
    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")?;
        }
        f(&mut conn)
    }

    /// Runs `f` on a read-only connection (the writer's, in memory).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        match &self.readers {
            Some(pool) => {
                let conn = pool.get();
                f(conn.conn())
            }
            None => self.write(|conn| f(conn)),
        }
    }

    /// After a commit, when the checkpointer found the WAL past its limit: a `TRUNCATE`
    /// checkpoint on the writer's own connection. The writer holds the write lock between its
    /// transactions, so it never loses it to a stream of commits (a checkpoint on another
    /// connection would); it waits only for the readers of the moment (new ones read the
    /// database file once everything is copied), then starts the log over from empty.
    /// Every 16 commits the writer also looks at the WAL's size itself: the bound then holds
    /// even when the checkpointer's thread gets no CPU for a while (a loaded machine).
    fn reset_wal(&self, conn: &Connection) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.commits.fetch_add(1, Relaxed) % 16 == 15
            && let Some(path) = &self.path
        {
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            if std::fs::metadata(&wal).is_ok_and(|m| m.len() > self.wal_limit.load(Relaxed)) {
                self.wal_big.store(true, Relaxed);
            }
        }
        if self.wal_big.swap(false, Relaxed) {
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }

    /// Lowers the WAL size the checkpointer resets past (tests).
    #[cfg(test)]
    fn set_wal_limit(&self, bytes: u64) {
        self.wal_limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(test)]
    fn writer_for_tests(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn prefix(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::Db(m) => StoreError::Db(format!("{}: {m}", path.display())),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", path.display())),
    }
}

fn configure_common(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Plans must not depend on bound values: otherwise every statement whose WHERE meets a
    // partial index (the `work` table's) is compiled again at each run, a fifth of a read's
    // cost (kept statements are the point of the cache).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// `durability: None` is an in-memory database (no WAL there).
fn configure_writer(conn: &Connection, durability: Option<Durability>) -> Result<()> {
    configure_common(conn)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Deleted content is overwritten, not left in free pages (finished work rows, revoked
    // tokens, removed secrets).
    conn.pragma_update(None, "secure_delete", true)?;
    if let Some(durability) = durability {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(format!(
                "cannot enable WAL journal mode (got {mode})"
            )));
        }
        let synchronous = match durability {
            Durability::Process => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        // Keep the WAL file from staying huge after a burst (bytes, after a checkpoint).
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        // Checkpoints run on the checkpointer's thread, not inside a commit (where they cost
        // the committing caller a copy of a thousand pages and an fsync).
        conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)?;
    }
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Db(e.to_string()),
        }
    }
}

/// Idle read-only connections; a reader takes one, or waits until one is given back.
struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    available: Condvar,
}

impl ReadPool {
    fn get(&self) -> PooledConn<'_> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = idle.pop() {
                return PooledConn {
                    pool: self,
                    conn: Some(conn),
                };
            }
            idle = self.available.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct PooledConn<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl PooledConn<'_> {
    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("pooled connection present until drop")
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            self.pool.available.notify_one();
        }
    }
}

/// Copies committed pages from the WAL into the database file on its own thread and connection
/// (a PASSIVE checkpoint: it never blocks the writer or the readers), so that commits do not
/// pay for it. Stopped and joined when the store is dropped.
struct Checkpointer {
    stop: std::sync::Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(
        path: &Path,
        limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
        big: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Checkpointer> {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure_common(&conn)?;
        let stop = std::sync::Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kflow-checkpoint".into())
            .spawn(move || {
                let (flag, wake) = &*stop2;
                let mut stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, CHECKPOINT_EVERY)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    // Busy (another checkpoint, a writer being opened, readers that did not
                    // finish within the busy timeout) is fine: next time.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    // Too big: the writer resets it after its next commit (see `reset_wal`).
                    if std::fs::metadata(&wal)
                        .is_ok_and(|m| m.len() > limit.load(std::sync::atomic::Ordering::Relaxed))
                    {
                        big.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
            .map_err(|e| StoreError::Db(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! Connections: a private runtime that drives their sockets, a pool, and a statement cache.
//!
//! The [`kflow_store::Store`] trait is synchronous, and its callers are threads of every kind:
//! the engine's writer thread, `spawn_blocking` threads, and sometimes a tokio worker (SQLite's
//! calls are cheap enough for that). A blocking client that starts a runtime per call
//! (`postgres`) panics on a tokio worker, so the sockets are driven here by a runtime of our own
//! (one thread), and callers wait for the client's futures with [`block_on`]: those futures only
//! talk to the connection task over channels, so any thread may poll them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use kflow_store::{Result, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// Statements kept per connection (list queries have one per filter combination).
const STATEMENTS: usize = 256;

/// Runs a future to completion on the calling thread (parking it while the future waits).
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A database error as a store error, with what PostgreSQL said (its message, detail, hint).
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if matches!(db.severity(), "FATAL" | "PANIC") {
            // The server ended the session (a restart, an operator): the next may work.
            m = format!("{}: {m}", kflow_store::UNAVAILABLE);
        }
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            m.push_str(&format!("; hint: {h}"));
        }
        return StoreError::Db(m);
    }
    if e.is_closed() {
        return StoreError::Db(format!(
            "{}: the connection to PostgreSQL was closed",
            kflow_store::UNAVAILABLE
        ));
    }
    // The source says what went wrong (an I/O error, a timeout, ...): the database could not
    // be reached.
    let mut m = format!("{}: {e}", kflow_store::UNAVAILABLE);
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        m.push_str(&format!(": {s}"));
        source = s.source();
    }
    StoreError::Db(m)
}

/// Whether an error leaves the connection unusable: it closed, its socket failed, or the
/// server ended the session (a FATAL error: restart, `pg_terminate_backend`, idle timeout).
pub(crate) fn breaks_connection(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => matches!(db.severity(), "FATAL" | "PANIC"),
        None => true,
    }
}

/// One connection and its prepared statements.
pub(crate) struct Conn {
    pub(crate) client: Client,
    stmts: HashMap<String, Statement>,
    /// Set when an error left it unusable: it is not given back to the pool.
    pub(crate) broken: bool,
}

impl Conn {
    /// Whether this connection can no longer be used (a caller may retry on another one).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    fn check(&mut self, e: tokio_postgres::Error) -> StoreError {
        if breaks_connection(&e) {
            self.broken = true;
        }
        db_error(e)
    }

    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let st = match self.client.prepare(sql).await {
            Ok(st) => st,
            Err(e) => return Err(self.check(e)),
        };
        if self.stmts.len() >= STATEMENTS {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    pub(crate) fn query(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        block_on(async {
            let st = self.prepare(sql).await?;
            match self.client.query(&st, args).await {
                Ok(rows) => Ok(rows),
                Err(e) => Err(self.check(e)),
            }
        })
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    pub(crate) fn execute(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        block_on(async {
            let st = self.prepare(sql).await?;
            match self.client.execute(&st, args).await {
                Ok(n) => Ok(n),
                Err(e) => Err(self.check(e)),
            }
        })
    }

    /// Statements without parameters or results (BEGIN, COMMIT, DDL).
    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        match block_on(self.client.batch_execute(sql)) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.check(e)),
        }
    }

    /// Runs `f` in a transaction: committed when it returns Ok, rolled back otherwise.
    pub(crate) fn transaction<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        self.batch("BEGIN")?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                // A closed connection is dropped by the pool; otherwise it is clean again.
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// Connections to one database: at most `max`, made on demand, dropped when they break.
pub(crate) struct Pool {
    runtime: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    tls: crate::tls::Tls,
    state: Mutex<PoolState>,
    available: Condvar,
    max: usize,
    /// Runs on every new connection before it is used (`SET search_path`, ...).
    setup: Option<String>,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

impl Pool {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        tls: crate::tls::Tls,
        max: usize,
        setup: Option<String>,
    ) -> Result<Pool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kflow-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Db(format!("cannot start the PostgreSQL runtime: {e}")))?;
        Ok(Pool {
            runtime: Some(runtime),
            config,
            tls,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            available: Condvar::new(),
            max: max.max(1),
            setup,
        })
    }

    fn connect(&self) -> Result<Conn> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let runtime = self.runtime.as_ref().expect("runtime present until drop");
        let task = runtime.spawn(async move {
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let unavailable = kflow_store::UNAVAILABLE;
        let client = block_on(task)
            .map_err(|e| {
                StoreError::Db(format!("{unavailable}: cannot connect to PostgreSQL: {e}"))
            })?
            .map_err(|e| match db_error(e) {
                StoreError::Db(m) => {
                    let m = m
                        .strip_prefix(unavailable)
                        .map_or(m.as_str(), |r| r.trim_start_matches(": "));
                    StoreError::Db(format!("{unavailable}: cannot connect to PostgreSQL: {m}"))
                }
                other => other,
            })?;
        let mut conn = Conn {
            client,
            stmts: HashMap::new(),
            broken: false,
        };
        if let Some(setup) = &self.setup {
            conn.batch(setup)?;
        }
        Ok(conn)
    }

    /// Takes an idle connection, or opens one, or waits for one (at most `wait`).
    pub(crate) fn get(&self, wait: Duration) -> Result<Pooled<'_>> {
        let deadline = std::time::Instant::now() + wait;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = state.idle.pop() {
                if conn.is_broken() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                        self.available.notify_one();
                        Err(e)
                    }
                };
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::Db(format!(
                    "{}: no PostgreSQL connection free after {} ms (all {} in use)",
                    kflow_store::UNAVAILABLE,
                    wait.as_millis(),
                    self.max
                )));
            }
            state = self
                .available
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A connection of its own that `LISTEN`s on `channel`: every notification's payload is
    /// sent to the returned receiver, which closes when the connection does (the caller then
    /// polls, and may listen again). The connection lives as long as the [`Listener`].
    pub(crate) fn listen(&self, channel: &str) -> Result<Listener> {
        if channel.is_empty() || !channel.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(StoreError::Db(format!("invalid channel name {channel:?}")));
        }
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let sql = format!("LISTEN {channel}");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = self.runtime.as_ref().expect("runtime present until drop");
        let task = runtime.spawn(async move {
            let (client, mut connection) = config.connect(tls).await?;
            tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            if tx.send(n.payload().to_string()).is_err() {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
            });
            client.batch_execute(&sql).await?;
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = block_on(task)
            .map_err(|e| StoreError::Db(format!("cannot listen: {e}")))?
            .map_err(db_error)?;
        Ok(Listener {
            _client: client,
            notifications: rx,
        })
    }

    /// Connections open now (idle or in use).
    pub(crate) fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).open
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .idle
            .clear();
        // Dropping a runtime blocks; it may be dropped on a tokio worker.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A `LISTEN`ing connection and what it hears.
pub struct Listener {
    _client: Client,
    pub notifications: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// A connection taken from the pool; given back when dropped (unless it broke).
pub(crate) struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("pooled connection present until drop")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("pooled connection present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_broken() {
            state.open -= 1;
        } else {
            state.idle.push(conn);
        }
        drop(state);
        self.pool.available.notify_one();
    }
}

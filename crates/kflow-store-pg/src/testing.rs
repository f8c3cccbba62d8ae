//! Test databases on a real PostgreSQL server: each [`TestDb`] is a database of its own, with a
//! unique name, dropped when it is dropped.
//!
//! The server is `KFLOW_TEST_POSTGRES` (a URL of a database to connect to for `CREATE
//! DATABASE`), by default `postgres://postgres@127.0.0.1:5432/postgres`. When it cannot be
//! reached, [`TestDb::create`] says so and returns None, so that a user without PostgreSQL
//! still passes the other tests; under `CI=true` it panics instead: CI never passes by
//! skipping.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::pool::{Pool, block_on};

/// The server tests use unless `KFLOW_TEST_POSTGRES` names another.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test; dropped (with its connections) when this is dropped.
pub struct TestDb {
    /// The URL of the new database.
    pub url: String,
    pub name: String,
    admin: String,
}

fn server() -> String {
    std::env::var("KFLOW_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_string())
}

fn admin_exec(admin: &str, sql: &str) -> Result<(), String> {
    let (admin, mode, root) = crate::tls::split_url(admin).map_err(|e| e.to_string())?;
    let mut config: tokio_postgres::Config = admin.parse().map_err(|e| format!("{e}"))?;
    config.connect_timeout(std::time::Duration::from_secs(3));
    let tls = crate::tls::Tls::new(mode, root.as_deref()).map_err(|e| e.to_string())?;
    let pool = Pool::new(config, tls, 1, None).map_err(|e| e.to_string())?;
    let conn = pool
        .get(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    block_on(conn.client.batch_execute(sql)).map_err(|e| crate::pool::db_error(e).to_string())
}

impl TestDb {
    /// A new empty database; None (after saying why on stderr) when there is no server and
    /// this is not CI. `what` names the test, for the message.
    pub fn create(what: &str) -> Option<TestDb> {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin = server();
        let name = format!(
            "kflow_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        if let Err(e) = admin_exec(&admin, &format!("CREATE DATABASE {name}")) {
            let msg = format!(
                "{what}: PostgreSQL tests skipped: cannot create a database on {} ({e}); \
                 set KFLOW_TEST_POSTGRES to a server's URL",
                crate::redact(&admin)
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (CI=true: PostgreSQL is required)");
            }
            eprintln!("{msg}");
            return None;
        }
        let url = match admin.rsplit_once('/') {
            Some((base, _)) if admin.contains("://") => format!("{base}/{name}"),
            _ => format!("{admin} dbname={name}"),
        };
        Some(TestDb { url, name, admin })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin_exec(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

impl crate::PgStore {
    /// The schemas of the database that hold a kflow schema table (tests check where cases ran).
    pub fn schemas_for_tests(&self) -> kflow_store::Result<Vec<String>> {
        self.read(|c| {
            Ok(c.query(
                "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'kflow_schema' ORDER BY 1",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }
}

impl crate::PgStore {
    /// Runs statements as they are (tests that damage or inspect a database on purpose).
    /// Whether this store's connections are encrypted, and the server's `ssl` and
    /// `ssl_cert_file` settings.
    pub fn tls_for_tests(&self) -> kflow_store::Result<(bool, bool, String)> {
        self.read(|c| {
            let row = c
                .query_opt(
                    "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
                     current_setting('ssl') = 'on', current_setting('ssl_cert_file')",
                    &[],
                )?
                .ok_or_else(|| kflow_store::StoreError::Db("no row".into()))?;
            Ok((row.get(0), row.get(1), row.get(2)))
        })
    }

    pub fn exec_for_tests(&self, sql: &str) -> kflow_store::Result<()> {
        self.write(|c| c.batch(sql))
    }
}

//! `kflow db ...` and `kflow migrate`: work on the database directly (SQLite in a data
//! directory, or PostgreSQL by URL).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Seal the workflow data written before `encrypt_data: true` (inputs, outputs, histories,
    /// work rows, events) with the master key. Safe to run again; run it with the server
    /// stopped or already running with `encrypt_data: true`.
    Encrypt {
        /// The server's data directory (its kflow.db and master.key).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Rows and sizes per table (instances, histories, events, ...).
    Stats {
        /// The PostgreSQL database (default: the SQLite database of --data-dir).
        #[arg(long, env = "KFLOW_DATABASE_URL", value_name = "URL")]
        db: Option<String>,
        #[arg(long, conflicts_with = "db", default_value = "kflow-data")]
        data_dir: PathBuf,
    },
    /// A consistent copy of the SQLite database of a data directory, taken while the server
    /// runs (one read snapshot: the server goes on committing meanwhile). For PostgreSQL use
    /// `pg_dump` (README).
    Backup {
        /// The file to write (must not exist).
        file: PathBuf,
        #[arg(long, default_value = "kflow-data")]
        data_dir: PathBuf,
    },
    /// Copy an installation to PostgreSQL: every table (histories included), then a check
    /// that both sides hold the same rows (counts and a digest per table). Safe to run again:
    /// rows are written by key. The source's server and the target's nodes must be stopped.
    Copy {
        /// The SQLite installation: its data directory, or `sqlite://PATH` (a directory or
        /// its kflow.db).
        #[arg(long)]
        from: String,
        /// The PostgreSQL database (created tables if empty).
        #[arg(long)]
        to: String,
    },
    /// Put a backup in place as the data directory's database (with the server stopped). The
    /// database it replaces is kept beside it as `kflow.db.before-restore-<time>`.
    Restore {
        /// A file made by `kflow db backup`.
        file: PathBuf,
        #[arg(long, default_value = "kflow-data")]
        data_dir: PathBuf,
    },
}

pub fn run(command: DbCommand) -> ExitCode {
    let result = match command {
        DbCommand::Encrypt { data_dir } => db_encrypt(&data_dir).map(|n| {
            println!(
                "sealed {n} payloads in {}; set encrypt_data: true in the server's config \
                 so that new data is sealed too",
                data_dir.display()
            )
        }),
        DbCommand::Stats { db, data_dir } => stats(db, &data_dir),
        DbCommand::Backup { file, data_dir } => backup(&file, &data_dir),
        DbCommand::Restore { file, data_dir } => restore(&file, &data_dir),
        DbCommand::Copy { from, to } => copy(&from, &to),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kflow: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn sqlite_path(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("kflow.db");
    if !path.exists() {
        anyhow::bail!("no kflow database in {}", data_dir.display());
    }
    Ok(path)
}

fn human(bytes: i64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn stats(db: Option<String>, data_dir: &Path) -> anyhow::Result<()> {
    use kflow_store::Store;
    let (label, rows) = match db.filter(|u| !u.is_empty()) {
        Some(url) => {
            kflow_server::config::check_db_url(&url).map_err(|e| anyhow::anyhow!("--db: {e}"))?;
            let store = kflow_store_pg::PgStore::open(&kflow_store_pg::PgOptions::new(&url))?;
            (store.label().to_string(), store.table_stats()?)
        }
        None => {
            let path = sqlite_path(data_dir)?;
            let store = kflow_store::sqlite::SqliteStore::open(
                &path,
                kflow_store::sqlite::Durability::Process,
            )?;
            (path.display().to_string(), store.table_stats()?)
        }
    };
    println!("{label}");
    let width = rows.iter().map(|r| r.table.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  {:>12}  {:>10}", "TABLE", "ROWS", "SIZE");
    for r in rows {
        println!(
            "{:<width$}  {:>12}  {:>10}",
            r.table,
            r.rows,
            r.bytes.map(human).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

fn backup(file: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let path = sqlite_path(data_dir)?;
    let store =
        kflow_store::sqlite::SqliteStore::open(&path, kflow_store::sqlite::Durability::Process)?;
    let bytes = store.backup_to(file)?;
    println!(
        "{}: a consistent copy of {} ({}); keep the master key with it (master.key or \
         KFLOW_MASTER_KEY): secrets and sealed data need it",
        file.display(),
        path.display(),
        human(bytes)
    );
    Ok(())
}

/// Rows read and written at a time.
const COPY_PAGE: u32 = 5_000;

fn copy(from: &str, to: &str) -> anyhow::Result<()> {
    use kflow_store::copy::{COPY_TABLES, Rows, digest};
    let source = PathBuf::from(from.strip_prefix("sqlite://").unwrap_or(from));
    let (dir, file) = if source.is_dir() {
        (source.clone(), source.join("kflow.db"))
    } else {
        (
            source.parent().map(Path::to_path_buf).unwrap_or_default(),
            source.clone(),
        )
    };
    if !file.exists() {
        anyhow::bail!("--from: no kflow database at {}", file.display());
    }
    kflow_server::config::check_db_url(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    // Nothing may change either side meanwhile.
    let _lock = kflow_server::serve::lock_data_dir(&dir).map_err(anyhow::Error::msg)?;
    let src =
        kflow_store::sqlite::SqliteStore::open(&file, kflow_store::sqlite::Durability::Process)?;
    let dst = kflow_store_pg::PgStore::open(&kflow_store_pg::PgOptions::new(to))?;
    if let Some(l) = dst.lease()?
        && l.expires_in_ms > 0
    {
        anyhow::bail!(
            "--to: node {} holds the database's lease: stop the nodes of {} first",
            l.node,
            dst.label()
        );
    }
    for table in COPY_TABLES {
        let mut n = 0u64;
        loop {
            let rows = src.read_rows(table, n, COPY_PAGE)?;
            dst.write_rows(table, &rows)?;
            n += rows.len() as u64;
            if rows.len() < COPY_PAGE as usize {
                break;
            }
        }
        eprintln!("copied {:<12} {n:>10} rows", table.name);
    }
    dst.rows_written()?;
    let mut differ = Vec::new();
    println!("{:<12}  {:>10}  {:>10}  CHECK", "TABLE", "SOURCE", "TARGET");
    for table in COPY_TABLES {
        let (a, ha) = digest(&src, table, COPY_PAGE)?;
        let (b, hb) = digest(&dst, table, COPY_PAGE)?;
        let same = a == b && ha == hb;
        if !same {
            differ.push(table.name);
        }
        println!(
            "{:<12}  {a:>10}  {b:>10}  {}",
            table.name,
            if same {
                format!("same rows (sha256 {})", &ha[..16])
            } else {
                "DIFFERENT".to_string()
            }
        );
    }
    if !differ.is_empty() {
        anyhow::bail!(
            "{} differs from {} in {}: rows the target had before the copy, or a change during \
             it; copy into an empty database",
            dst.label(),
            file.display(),
            differ.join(", ")
        );
    }
    println!(
        "copied {} to {}: verified; start the nodes with --db and the source's master key",
        file.display(),
        dst.label()
    );
    Ok(())
}

fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<()> {
    // The server must not run on this directory: its lock says whether one does.
    std::fs::create_dir_all(data_dir)?;
    let _lock = kflow_server::serve::lock_data_dir(data_dir).map_err(anyhow::Error::msg)?;
    let version = kflow_store::sqlite::SqliteStore::check_file(file)?;
    let target = data_dir.join("kflow.db");
    let staged = data_dir.join("kflow.db.restoring");
    std::fs::copy(file, &staged)
        .map_err(|e| anyhow::anyhow!("cannot copy {}: {e}", file.display()))?;
    std::fs::File::open(&staged)?.sync_all()?;
    if target.exists() {
        let kept = data_dir.join(format!(
            "kflow.db.before-restore-{}",
            kflow_core::time::iso8601(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            )
            .replace(':', "-")
        ));
        std::fs::rename(&target, &kept)?;
        println!("the database it replaces is kept as {}", kept.display());
    }
    for suffix in ["-wal", "-shm"] {
        let mut p = target.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::rename(&staged, &target)?;
    println!(
        "restored {} (schema version {version}) into {}",
        file.display(),
        target.display()
    );
    Ok(())
}

fn db_encrypt(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    let path = data_dir.join("kflow.db");
    if !path.exists() {
        anyhow::bail!("no kflow database in {}", data_dir.display());
    }
    let store = Arc::new(kflow_store::sqlite::SqliteStore::open(
        &path,
        kflow_store::sqlite::Durability::Full,
    )?);
    let vault =
        kflow_server::secrets::Vault::open(store.clone(), data_dir).map_err(anyhow::Error::msg)?;
    kflow_server::sealed::encrypt_existing(&store, &vault).map_err(anyhow::Error::msg)
}

/// `kflow migrate`: brings the schema to this build's version, or says where it stands.
pub fn migrate(db: Option<String>, data_dir: Option<PathBuf>, check: bool) -> anyhow::Result<()> {
    match db.filter(|u| !u.is_empty()) {
        Some(url) => {
            kflow_server::config::check_db_url(&url).map_err(|e| anyhow::anyhow!("--db: {e}"))?;
            let options = kflow_store_pg::PgOptions::new(&url);
            let (store, version) = kflow_store_pg::PgStore::open_unmigrated(&options)?;
            let target = kflow_store_pg::SCHEMA_VERSION;
            let found = version.unwrap_or(0);
            if check {
                match found.cmp(&target) {
                    std::cmp::Ordering::Equal => {
                        println!("{}: schema version {found}: up to date", store.label())
                    }
                    std::cmp::Ordering::Less => anyhow::bail!(
                        "{}: schema version {found}, this kflow writes {target}: run kflow migrate",
                        store.label()
                    ),
                    std::cmp::Ordering::Greater => anyhow::bail!(
                        "{}: schema version {found} is newer than this kflow's ({target}): upgrade kflow",
                        store.label()
                    ),
                }
                return Ok(());
            }
            let m = store.migrate()?;
            if m.from == m.to {
                println!("{}: schema version {}: up to date", store.label(), m.to);
            } else {
                println!(
                    "{}: schema migrated from version {} to {}",
                    store.label(),
                    m.from,
                    m.to
                );
            }
            Ok(())
        }
        None => {
            let dir = data_dir.unwrap_or_else(|| PathBuf::from("kflow-data"));
            let path = dir.join("kflow.db");
            if check && !path.exists() {
                anyhow::bail!("no kflow database in {}", dir.display());
            }
            // Opening migrates (in one transaction) and refuses a newer schema.
            kflow_store::sqlite::SqliteStore::open(&path, kflow_store::sqlite::Durability::Full)?;
            println!(
                "{}: schema version {}: up to date",
                path.display(),
                kflow_store::sqlite::SCHEMA_VERSION
            );
            Ok(())
        }
    }
}

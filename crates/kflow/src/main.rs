//! The `kflow` command: validate and run Serverless Workflow documents.
//!
//! Exit codes: 0 success, 1 the workflow faulted, 2 invalid definition or bad usage.

mod client;
mod db;
mod host;
mod inputs;
mod logs;
mod sandbox;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kflow",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("KFLOW_COMMIT"), ")"),
    about = "A durable workflow engine for the Serverless Workflow DSL 1.0"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check workflow documents; prints FILE:LINE:COL: message for every problem.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Refuse kflow's extensions to the DSL (the `dag` task, `parallel` on `for`), so that
        /// what validates is portable to any Serverless Workflow runtime.
        #[arg(long)]
        strict: bool,
    },
    /// Run the durable server: REST API and engine, SQLite in the data directory, or
    /// PostgreSQL shared by several nodes (`--db postgres://...`).
    Server {
        /// Data directory (created on first start).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A PostgreSQL database, `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, instead of
        /// SQLite in the data directory. Several nodes may share one: each drives the
        /// instances started through it, and adopts those of a node that dies (within
        /// `db_lease_ms`) or is drained (at once).
        #[arg(long, env = "KFLOW_DATABASE_URL", value_name = "URL")]
        db: Option<String>,
        /// Address to listen on.
        #[arg(long)]
        listen: Option<String>,
        /// A YAML/JSON settings file; unknown keys are an error.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `process` (default: survives kill -9) or `full` (fsync at commit: survives power loss).
        #[arg(long)]
        durability: Option<String>,
        /// A YAML/JSON map of secret name to value, for `$secrets`
        /// (default: $KFLOW_SECRETS_FILE, or the JSON map in $KFLOW_SECRETS).
        #[arg(long)]
        secrets_file: Option<PathBuf>,
        /// Serve without authentication (only on a loopback address): every local user and
        /// process can do everything.
        /// (`KFLOW_INSECURE_NO_AUTH`: 1/0, true/false, yes/no, on/off.)
        #[arg(long, env = "KFLOW_INSECURE_NO_AUTH",
              value_parser = clap::builder::BoolishValueParser::new(),
              action = clap::ArgAction::SetTrue)]
        insecure_no_auth: bool,
        /// Listen on a routable address without TLS (behind a TLS-terminating proxy).
        #[arg(long)]
        insecure_no_tls: bool,
        /// Serve HTTPS: a PEM certificate chain (with --tls-key).
        #[arg(long, value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// The certificate's PEM private key.
        #[arg(long, value_name = "PEM")]
        tls_key: Option<PathBuf>,
        /// Log lines on stderr as `text` or `json` (one object per line); which ones: `RUST_LOG`
        /// (default `info`; `kflow_server=debug` adds every request and instance).
        #[arg(long, env = "KFLOW_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: logs::LogFormat,
    },
    /// Run a workflow in-process to its end and print its output (or its error) as JSON.
    Run {
        file: PathBuf,
        /// The workflow input, as JSON.
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// Read the workflow input from a JSON or YAML file.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// A YAML/JSON map of secret name to value, for `$secrets`
        /// (default: $KFLOW_SECRETS_FILE, or the JSON map in $KFLOW_SECRETS).
        #[arg(long)]
        secrets_file: Option<PathBuf>,
        /// CloudEvents (JSON, one per line) offered to `listen` tasks.
        #[arg(long)]
        events: Option<PathBuf>,
        /// A folder of workflow documents that `run: workflow` tasks can start.
        #[arg(long)]
        workflows: Option<PathBuf>,
        /// Write lifecycle events as JSON lines on stderr.
        #[arg(long)]
        trace: bool,
        /// Refuse kflow's extensions to the DSL in FILE (the `dag` task, `parallel` on `for`).
        #[arg(long)]
        strict: bool,
    },
    /// Print a shell completion script: `kflow completion bash > /etc/bash_completion.d/kflow`,
    /// `kflow completion zsh > "${fpath[1]}/_kflow"`, `kflow completion fish`.
    Completion { shell: clap_complete::Shell },
    /// Create or upgrade the database schema (the server also does it when it starts).
    Migrate {
        /// The PostgreSQL database (default: the SQLite database of --data-dir).
        #[arg(long, env = "KFLOW_DATABASE_URL", value_name = "URL")]
        db: Option<String>,
        #[arg(long, conflicts_with = "db")]
        data_dir: Option<PathBuf>,
        /// Only say which version the database has and whether it needs migrating.
        #[arg(long)]
        check: bool,
    },
    /// Work on the database directly: sizes, backup and restore, sealing old data.
    Db {
        #[command(subcommand)]
        command: db::DbCommand,
    },
    // Verbs that talk to a kflow server: apply, start, get, ls, cancel, suspend, resume,
    // history, events (see client/mod.rs).
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    // The task launcher: not a user verb, so not in clap's list (see sandbox.rs).
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == "__sandbox") {
        return sandbox::main(raw.collect());
    }
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Validate { files, strict } => validate(&files, strict),
        Command::Server {
            data_dir,
            db,
            listen,
            config,
            durability,
            secrets_file,
            insecure_no_auth,
            insecure_no_tls,
            tls_cert,
            tls_key,
            log_format,
        } => {
            logs::init(log_format);
            match server(
                (data_dir, db),
                listen,
                config,
                durability,
                secrets_file,
                (insecure_no_auth, insecure_no_tls),
                (tls_cert, tls_key),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kflow: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run {
            file,
            input,
            input_file,
            secrets_file,
            events,
            workflows,
            trace,
            strict,
        } => {
            match run(
                file,
                input,
                input_file,
                secrets_file,
                events,
                workflows,
                trace,
                strict,
            ) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("kflow: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "kflow", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Db { command } => db::run(command),
        Command::Migrate {
            db,
            data_dir,
            check,
        } => match db::migrate(db, data_dir, check) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kflow: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Client(cmd) => client::run(cmd),
    }
}

fn server(
    (data_dir, db): (Option<PathBuf>, Option<String>),
    listen: Option<String>,
    config: Option<PathBuf>,
    durability: Option<String>,
    secrets_file: Option<PathBuf>,
    (insecure_no_auth, insecure_no_tls): (bool, bool),
    (tls_cert, tls_key): (Option<PathBuf>, Option<PathBuf>),
) -> anyhow::Result<()> {
    use kflow_server::config::{ServerConfig, parse_durability};
    let mut cfg = match &config {
        Some(p) => {
            let bytes = std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("cannot read --config {}: {e}", p.display()))?;
            ServerConfig::from_file_bytes(&bytes, &p.display().to_string())
                .map_err(anyhow::Error::msg)?
        }
        None => ServerConfig::default(),
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(url) = db.filter(|u| !u.is_empty()) {
        kflow_server::config::check_db_url(&url).map_err(|e| anyhow::anyhow!("--db: {e}"))?;
        cfg.db = Some(url);
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    cfg.insecure_no_auth |= insecure_no_auth;
    cfg.insecure_no_tls |= insecure_no_tls;
    if tls_cert.is_some() {
        cfg.tls_cert = tls_cert;
    }
    if tls_key.is_some() {
        cfg.tls_key = tls_key;
    }
    if let Some(d) = durability {
        cfg.durability = parse_durability(&d).map_err(|e| anyhow::anyhow!("--durability: {e}"))?;
    }
    let secrets = inputs::read_secrets(secrets_file.as_deref().or(cfg.secrets_file.as_deref()))?;
    // Blocking work (store reads and commits) is short; a burst of readers (say, 2,000 live
    // watchers catching up at once) queues for a bounded set of threads instead of starting
    // hundreds (measured: 324 threads without the bound, 67 with it).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()?;
    rt.block_on(kflow_server::serve::serve(cfg, secrets))
        .map_err(anyhow::Error::msg)
}

/// `kflow ls -o json | head`: when the reader of stdout goes away, end quietly with the status a
/// SIGPIPE gives (141), like any Unix filter, instead of `println!`'s panic. (The workspace
/// forbids the `unsafe` of restoring SIGPIPE's default disposition.)
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // `println!`'s "failed printing to stdout: Broken pipe", and the same from writers
        // such as clap_complete's.
        if message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn load_workflow(path: &std::path::Path, strict: bool) -> Result<kflow_dsl::Workflow, Vec<String>> {
    inputs::load_workflow_with(path, strict)
}

fn validate(files: &[PathBuf], strict: bool) -> ExitCode {
    let mut bad = false;
    for f in files {
        match load_workflow(f, strict) {
            Ok(_) => {}
            Err(lines) => {
                bad = true;
                for l in lines {
                    eprintln!("{l}");
                }
            }
        }
    }
    ExitCode::from(if bad { 2 } else { 0 })
}

#[allow(clippy::too_many_arguments)]
fn run(
    file: PathBuf,
    input: Option<String>,
    input_file: Option<PathBuf>,
    secrets_file: Option<PathBuf>,
    events: Option<PathBuf>,
    workflows: Option<PathBuf>,
    trace: bool,
    strict: bool,
) -> anyhow::Result<ExitCode> {
    let wf = match load_workflow(&file, strict) {
        Ok(wf) => Arc::new(wf),
        Err(lines) => {
            for l in lines {
                eprintln!("{l}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let input = inputs::read_input(input.as_deref(), input_file.as_deref())?;
    let secrets = inputs::read_secrets(secrets_file.as_deref())?;
    let events = match &events {
        Some(p) => inputs::read_events(p)?,
        None => Vec::new(),
    };
    let registry = match &workflows {
        Some(dir) => inputs::load_dir(dir, strict)?,
        None => Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let host = host::Host::new(registry, events, secrets, trace);
    let result = rt.block_on(host.run_root(wf, input));
    match result {
        Ok(out) => {
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", serde_json::to_string_pretty(&e.to_value())?);
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod cli_shape {
    /// clap's own consistency checks over every verb (duplicate names, bad defaults...):
    /// otherwise they only fire when a user runs the broken verb.
    #[test]
    fn every_verb_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

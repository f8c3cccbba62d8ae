//! The client verbs of `kflow`: talking to a running kflow server over its REST API.
//!
//! `apply`, `defs`, `start`, `watch`, `get`, `ls`, `cancel`, `suspend`, `resume`, `history` and
//! `events send` (and the others below) are the [`ClientCommand`] variants, flattened into the binary's own verb list; [`run`] is the
//! single dispatch point. Every verb reaches the server named by `--server URL` (or
//! `$KFLOW_SERVER`, default `http://127.0.0.1:8080`).
//!
//! Exit codes: 0 success; 1 the server refused a request or the workflow faulted / was
//! cancelled; 2 bad usage, an unreadable file, or no server answering (the message names the URL).

mod apply;
mod defs;
mod http;
mod ops;
mod profile;
mod render;
mod schedules;
mod security;
mod sse;
mod verbs;
mod watch;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

pub use http::Failure;

/// Where the server is.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The kflow server's base URL; several, comma-separated, for the nodes of a cluster (the
    /// next is tried when one cannot be reached: a standby does not listen).
    #[arg(
        long,
        env = "KFLOW_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// The API token (default: $KFLOW_TOKEN, else the file `kflow login` writes).
    #[arg(
        long,
        env = "KFLOW_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// server (beside the system's).
    #[arg(long, env = "KFLOW_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The token to send: `--token`/`KFLOW_TOKEN`, else the profile file (refused when
    /// others can read it).
    pub fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(t) = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(t.to_string()));
        }
        profile::read()
    }

    /// An HTTP client builder that trusts `--ca-file` too.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, Failure> {
        let mut b = reqwest::Client::builder();
        if let Some(p) = &self.ca_file {
            let pem = std::fs::read(p).map_err(|e| {
                Failure::Usage(format!("cannot read --ca-file {}: {e}", p.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Failure::Usage(format!(
                    "--ca-file {}: not PEM certificates: {e}",
                    p.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Failure::Usage(format!(
                    "--ca-file {}: no certificate in it",
                    p.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        Ok(b)
    }
}

/// How a read verb prints what the server answered.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A readable summary or table.
    #[default]
    Text,
    /// The server's JSON, pretty-printed.
    Json,
    /// The server's answer as YAML.
    Yaml,
}

impl Format {
    /// Whether the answer is printed as data (JSON or YAML) rather than as text for people.
    pub fn is_data(self) -> bool {
        self != Format::Text
    }
}

/// Prints an answer as data: pretty JSON, or YAML.
pub fn print_data(format: Format, v: &serde_json::Value) {
    let text = match format {
        Format::Yaml => serde_saphyr::to_string(v).unwrap_or_else(|_| v.to_string()),
        _ => serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()),
    };
    println!("{}", text.trim_end());
}

#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Run a remote worker: take tasks from the server's queues and run them here.
    Worker(worker::WorkerArgs),
    /// List the workers: queues, capacity, use, leases.
    Workers {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the alerts the server's rules fired (config `alerts:`), newest first, with their
    /// delivery to the webhooks.
    Alerts {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the server nodes sharing the database: which one is active (holds the database
    /// lease), the standbys, their load and last heartbeat.
    Nodes {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the named services (`services:` in the server's config): each endpoint's health,
    /// latency and load, the circuit, the bulkhead, and what the calls met.
    Services {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the queues: depth, oldest waiting task, workers.
    Queues {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Say what an instance is waiting for: a timer, an event, a worker, a free slot.
    Explain {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Register workflow definitions with the server (one line per document).
    Apply {
        /// A workflow document, or a folder: every *.yaml, *.yml and *.json in it (sorted).
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE|DIR",
            required = true
        )]
        files: Vec<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start an instance of a registered workflow and print its id.
    Start {
        /// The workflow: NAMESPACE/NAME, optionally @VERSION (default: the latest); a NAME
        /// alone is in `$KFLOW_NAMESPACE`, else in `default`.
        #[arg(value_name = "[NS/]NAME[@VERSION]")]
        workflow: String,
        /// The workflow input, as JSON.
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// Read the workflow input from a JSON or YAML file.
        #[arg(long, value_name = "PATH")]
        input_file: Option<PathBuf>,
        /// Wait for the instance to finish and print its output (or its error) as JSON.
        #[arg(long, conflicts_with = "watch")]
        wait: bool,
        /// Show live progress until the instance finishes, then print like --wait.
        #[arg(long)]
        watch: bool,
        /// Queue priority of the instance's calls and processes (higher first).
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i64>,
        /// Start with this instance id (letters, digits, '-', '_'): running the same command
        /// again answers that instance instead of starting another, so a start whose answer
        /// was lost can be retried safely; another request with this id is refused.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Follow a running instance live (its tasks as they start and end) until it ends; then
    /// print its output (exit 0) or its error (exit 1), like `start --watch`.
    Watch {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one instance: workflow, status, running and waiting tasks, output or error.
    Get {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List instances.
    Ls {
        #[command(flatten)]
        filter: ListArgs,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel an instance and print its new status.
    Cancel {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Retry a faulted instance from a task: a new instance that reuses the results of
    /// everything before the task (default: the first task that faulted); prints its id.
    Retry {
        id: String,
        /// The task to retry from, by its JSON pointer (`/do/1/charge`).
        #[arg(long)]
        task: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Suspend an instance and print its new status.
    Suspend {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resume a suspended instance and print its new status.
    Resume {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print an instance's history, one line per event.
    History {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show how two versions of a workflow differ: tasks added, removed and changed, then the
    /// text as a unified diff. `kflow diff shop/order@1.0.0 1.1.0`; without @V1, the version
    /// before V2; without V2, the latest.
    Diff {
        /// [NS/]NAME[@V1]
        workflow: String,
        /// V2 (default: the latest version)
        to: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// What kflow learned from a workflow's runs, per version and task: run time and queue
    /// wait (p50, p95, p99), failure and retry rates. `kflow analyze shop/order[@1.2.0]`.
    Analyze {
        /// [NS/]NAME[@VERSION]
        workflow: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Registered workflow definitions: ls, get (the document), deprecate.
    Defs {
        #[command(subcommand)]
        command: defs::DefsCommand,
    },
    /// Manage API tokens: create (shown once), ls, revoke. Needs an admin token.
    Token {
        #[command(subcommand)]
        command: security::TokenCommand,
    },
    /// Save a token for this user (read from stdin) after checking it with the server; the
    /// file is readable by you alone (0600).
    Login {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show who the token is: name, role, namespaces.
    Whoami {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Secrets of namespaces: set (value from stdin), ls (names only), rm, rotate-key.
    Secret {
        #[command(subcommand)]
        command: security::SecretCommand,
    },
    /// The audit trail: `ls` (filtered) and `verify` (recompute the hash chain).
    Audit {
        #[command(subcommand)]
        command: security::AuditCommand,
    },
    /// Send CloudEvents to the server.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// List the workflows' schedules and their next fire times; `pause` or `resume` one.
    Schedules {
        #[command(subcommand)]
        command: Option<schedules::SchedulesCommand>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Post the CloudEvents in FILE (one JSON object, or one object per line; `-` reads stdin)
    /// and print how many subscriptions each matched.
    Send {
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// The filters of `kflow ls`.
#[derive(Args, Debug, Clone, Default)]
pub struct ListArgs {
    /// Only instances in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only instances of the workflow with this name.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only instances of this workflow version.
    #[arg(long)]
    pub version: Option<String>,
    /// Only instances with this status (queued, running, suspended, completed, faulted, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only instances created at or after this time (passed to the server as is).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Only instances created before this time (passed to the server as is).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// At most this many instances per page.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Follow the cursor through every page.
    #[arg(long)]
    pub all: bool,
}

/// Runs one client verb to its end; the only entry point `main` needs.
pub fn run(cmd: ClientCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kflow: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cmd)) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("{}", f.render());
            ExitCode::from(f.exit_code())
        }
    }
}

async fn dispatch(cmd: ClientCommand) -> Result<ExitCode, Failure> {
    match cmd {
        ClientCommand::Worker(args) => {
            crate::logs::init(crate::logs::LogFormat::Text);
            worker::worker(args).await
        }
        ClientCommand::Workers { out, server } => {
            ops::workers(&http::Api::new(&server)?, out.output).await
        }
        ClientCommand::Alerts { out, server } => {
            ops::alerts(&http::Api::new(&server)?, out.output).await
        }
        ClientCommand::Nodes { out, server } => {
            ops::nodes(&http::Api::new(&server)?, out.output).await
        }
        ClientCommand::Services { out, server } => {
            ops::services(&http::Api::new(&server)?, out.output).await
        }
        ClientCommand::Queues { out, server } => {
            ops::queues(&http::Api::new(&server)?, out.output).await
        }
        ClientCommand::Explain { id, out, server } => {
            ops::explain(&http::Api::new(&server)?, &id, out.output).await
        }
        ClientCommand::Apply { files, server } => {
            apply::apply(&http::Api::new(&server)?, &files).await
        }
        ClientCommand::Start {
            workflow,
            input,
            input_file,
            wait,
            watch,
            priority,
            id,
            server,
        } => {
            let api = http::Api::new(&server)?;
            let opts = verbs::StartOptions {
                workflow,
                input,
                input_file,
                wait,
                watch,
                priority,
                id,
            };
            verbs::start(&api, opts).await
        }
        ClientCommand::Watch { id, server } => verbs::watch(&http::Api::new(&server)?, &id).await,
        ClientCommand::Get { id, out, server } => {
            verbs::get(&http::Api::new(&server)?, &id, out.output).await
        }
        ClientCommand::Ls {
            filter,
            out,
            server,
        } => verbs::ls(&http::Api::new(&server)?, &filter, out.output).await,
        ClientCommand::Cancel { id, out, server } => {
            verbs::control(&http::Api::new(&server)?, &id, "cancel", out.output).await
        }
        ClientCommand::Retry {
            id,
            task,
            out,
            server,
        } => verbs::retry(&http::Api::new(&server)?, &id, task, out.output).await,
        ClientCommand::Suspend { id, out, server } => {
            verbs::control(&http::Api::new(&server)?, &id, "suspend", out.output).await
        }
        ClientCommand::Resume { id, out, server } => {
            verbs::control(&http::Api::new(&server)?, &id, "resume", out.output).await
        }
        ClientCommand::History { id, out, server } => {
            verbs::history(&http::Api::new(&server)?, &id, out.output).await
        }
        ClientCommand::Schedules {
            command: None,
            out,
            server,
        } => schedules::list(&http::Api::new(&server)?, out.output).await,
        ClientCommand::Schedules {
            command: Some(cmd), ..
        } => {
            let api = http::Api::new(schedules::server_of(&cmd))?;
            schedules::control(&api, cmd).await
        }
        ClientCommand::Token { command } => security::token(command).await,
        ClientCommand::Defs { command } => defs::run(command).await,
        ClientCommand::Diff {
            workflow,
            to,
            out,
            server,
        } => defs::diff(&workflow, to, out, server).await,
        ClientCommand::Analyze {
            workflow,
            out,
            server,
        } => defs::analyze(&workflow, out, server).await,
        ClientCommand::Login { server } => security::login(&server).await,
        ClientCommand::Whoami { server } => security::whoami(&http::Api::new(&server)?).await,
        ClientCommand::Audit { command } => security::audit(command).await,
        ClientCommand::Secret { command } => security::secret(command).await,
        ClientCommand::Events {
            command: EventsCommand::Send { file, server },
        } => apply::send_events(&http::Api::new(&server)?, &file).await,
    }
}

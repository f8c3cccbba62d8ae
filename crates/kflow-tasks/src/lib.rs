//! kflow-tasks: the executors that perform the core's `Http`, `OpenApi` and `Process` effects.
//!
//! The interpreter in `kflow-core` is sans-IO: it emits [`Effect`]s whose expressions are all
//! evaluated. A host hands the IO-bound ones to an [`Executor`], which performs them for real
//! (HTTP requests with [`reqwest`], child processes with [`tokio::process`]) and answers with
//! the task's raw output or a [`WfError`]. `Emit`, `Listen`, `Timer` and `Workflow` effects stay
//! with the host. One module per kind: `http` (plain calls and the machinery the others share),
//! `openapi`, `process` and `auth` (Basic, Bearer, Digest, OAuth2/OIDC token acquisition).
//! The effect and error types come from `kflow-effects`: the executors do not depend on the
//! interpreter (`kflow/tests/boundaries.rs` checks it).
//!
//! Dropping the future returned by [`Executor::perform`] cancels the effect: the HTTP request is
//! abandoned, a child process's whole process group is killed and its working directory removed.

pub mod asyncapi;
mod auth;
pub mod container;
pub mod egress;
pub mod emit;
mod grpc;
mod http;
mod openapi;
mod process;
pub mod services;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use kflow_effects::{Effect, WfError};

/// Limits and locations for the executors.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// The largest HTTP response body (after decompression) accepted; beyond it the call fails.
    pub max_response_bytes: usize,
    /// How much of a child's stdout, and of its stderr, is kept; the rest is read and dropped.
    pub process_output_limit: usize,
    /// Parent directory of the private per-process working directories.
    pub work_root: PathBuf,
    /// The Python interpreter for `run.script` with `language: python`.
    pub python: String,
    /// The Node.js interpreter for `run.script` with `language: js`.
    pub node: String,
    /// Total time allowed for one HTTP exchange (connect, send, receive the whole body).
    pub http_timeout: Duration,
    /// A hard cap on a process's run time (`None`: only the task's own `timeout`, which the host
    /// enforces by dropping the future, applies). Exceeding it is a timeout error.
    pub process_timeout: Option<Duration>,
    /// Where HTTP calls may go (cloud metadata is denied by default).
    pub egress: egress::EgressConfig,
    /// How shell and script tasks are confined (`None`: only the clean environment, private
    /// directory and process group of every process).
    pub sandbox: Option<SandboxConfig>,
    /// The named services `service://NAME/...` calls go to (shared by every clone).
    pub services: Arc<services::Registry>,
    /// How `run: container` runs (the runtime CLI, its daemon, the volumes allowed).
    pub containers: container::ContainerConfig,
}

/// The user a task runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskUser {
    /// The server's own.
    Server,
    /// One user and group for every task.
    Fixed(u32, u32),
    /// A user of its own for every running task, from `base .. base + size` (uid = gid): a
    /// task's processes count against no other task's process limit, and tasks cannot signal
    /// or read each other.
    Pool { base: u32, size: u32 },
}

/// The confinement of shell and script tasks: they run under `launcher __sandbox` (the kflow
/// binary), which applies it before `exec` (see the binary's sandbox.rs).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    pub launcher: PathBuf,
    /// Restrict the file system with Landlock to `read_only` and the working directory.
    pub landlock: bool,
    pub read_only: Vec<PathBuf>,
    /// Writable besides the working directory.
    pub read_write: Vec<PathBuf>,
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
    /// Which user tasks run as (another than the server's only when it runs as root).
    pub user: TaskUser,
    /// Network for tasks (a new network namespace and no TCP when false).
    pub network: bool,
    /// Namespaces whose tasks get no network whatever `network` says.
    pub no_network_namespaces: Vec<String>,
    /// Namespaces where shell and script tasks are refused.
    pub forbid_namespaces: Vec<String>,
}

impl SandboxConfig {
    /// System directories a process needs to run, read-only.
    pub const SYSTEM_DIRS: &[&str] = &[
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt",
    ];

    /// The launcher's options for one task in `dir`, run as `user` (uid, gid).
    pub fn options(
        &self,
        dir: &std::path::Path,
        namespace: &str,
        user: Option<(u32, u32)>,
        task: &TaskLimits,
    ) -> Vec<std::ffi::OsString> {
        // The lower of the server's and the task's, each.
        let min = |server: Option<u64>, own: Option<u64>| match (server, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |k: &str, v: String| {
            a.push(k.into());
            a.push(v.into());
        };
        for (k, v) in [
            ("--cpu", min(self.cpu_seconds, task.cpu_seconds)),
            ("--memory", min(self.memory_bytes, task.memory_bytes)),
            ("--processes", min(self.processes, task.processes)),
            (
                "--file-size",
                min(self.file_size_bytes, task.file_size_bytes),
            ),
            ("--open-files", min(self.open_files, task.open_files)),
        ] {
            if let Some(v) = v {
                push(k, v.to_string());
            }
        }
        if let Some((uid, gid)) = user {
            push("--uid", uid.to_string());
            push("--gid", gid.to_string());
        }
        if self.landlock {
            for p in &self.read_only {
                push("--ro", p.display().to_string());
            }
            push("--rw", dir.display().to_string());
            for p in &self.read_write {
                push("--rw", p.display().to_string());
            }
            a.push("--landlock".into());
        }
        if !self.network
            || task.network == Some(false)
            || self.no_network_namespaces.iter().any(|n| n == namespace)
        {
            a.push("--no-network".into());
        }
        a
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            max_response_bytes: 16 * 1024 * 1024,
            process_output_limit: 4 * 1024 * 1024,
            work_root: std::env::temp_dir(),
            python: "python3".to_string(),
            node: "node".to_string(),
            http_timeout: Duration::from_secs(5 * 60),
            process_timeout: None,
            egress: egress::EgressConfig::default(),
            sandbox: None,
            services: Arc::default(),
            containers: Default::default(),
        }
    }
}

/// Who asks for an effect: used for idempotency keys and the process environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectCtx {
    pub instance_id: String,
    pub effect_id: u64,
    /// The task reference (a JSON pointer such as `/do/0/getPet`).
    pub task: String,
    /// 1 for the first run; higher when the host re-runs the same effect after a crash.
    pub attempt: u32,
    /// The instance's namespace (its egress policy; empty: the server-wide one).
    pub namespace: String,
    /// The task's own process limits (within the sandbox's).
    pub limits: TaskLimits,
    /// The W3C `traceparent` HTTP calls send (unless the workflow sets one).
    pub traceparent: Option<String>,
}

/// A task's own limits for its processes (`metadata.kflow.limits`): each lowers the sandbox's
/// limit of the same name (never raises it); `network: Some(false)` takes the network away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskLimits {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub network: Option<bool>,
}

impl EffectCtx {
    /// The same for every re-run of one effect (`<instance id>-<effect id>`), so that servers
    /// and scripts can recognise a repeated request.
    pub fn idempotency_key(&self) -> String {
        format!("{}-{}", self.instance_id, self.effect_id)
    }
}

/// Performs effects; cheap to clone (all clones share one HTTP client pool, the OpenAPI document
/// cache and the OAuth2 token cache).
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: ExecConfig,
    /// The HTTP clients of each egress policy in use: the server-wide one under "", each
    /// namespace with a policy of its own under its name (built when first used).
    clients: std::sync::Mutex<std::collections::HashMap<String, Arc<Clients>>>,
    pub(crate) docs: openapi::DocCache,
    pub(crate) protos: grpc::ProtoCache,
    pub(crate) tokens: auth::TokenCache,
}

/// A policy and its two clients (their resolver and redirect checks enforce it).
pub(crate) struct Clients {
    pub(crate) policy: Arc<egress::Policy>,
    /// Follows up to 10 redirects (`redirect: true`).
    follow: Result<reqwest::Client, String>,
    /// Never follows redirects (`redirect: false`).
    no_follow: Result<reqwest::Client, String>,
    /// HTTP/2 with prior knowledge (cleartext gRPC); built when first used.
    h2c: std::sync::OnceLock<Result<reqwest::Client, String>>,
    /// The timeouts and resolver of the others, for building `h2c`.
    timeout: Duration,
}

impl Clients {
    fn new(cfg: &ExecConfig, policy: egress::Policy) -> Clients {
        let policy = Arc::new(policy);
        let build = |follow: bool| {
            let p = policy.clone();
            let redirects = if follow {
                reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= 10 {
                        return attempt.error("too many redirects (at most 10 are followed)");
                    }
                    match p.check_url(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(m) => attempt.error(m),
                    }
                })
            } else {
                reqwest::redirect::Policy::none()
            };
            reqwest::Client::builder()
                .redirect(redirects)
                .dns_resolver(Arc::new(egress::Resolver {
                    policy: policy.clone(),
                }))
                .timeout(cfg.http_timeout)
                .connect_timeout(cfg.http_timeout.min(Duration::from_secs(30)))
                .user_agent(concat!("kflow/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| http::error_chain(&e))
        };
        Clients {
            follow: build(true),
            no_follow: build(false),
            policy,
            h2c: std::sync::OnceLock::new(),
            timeout: cfg.http_timeout,
        }
    }

    /// The client of a gRPC call: TLS (ALPN h2) through the usual one, cleartext through an
    /// HTTP/2-only one; never following redirects.
    pub(crate) fn grpc(&self, tls: bool) -> Result<&reqwest::Client, WfError> {
        if tls {
            return self.client(false);
        }
        self.h2c
            .get_or_init(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .dns_resolver(Arc::new(egress::Resolver {
                        policy: self.policy.clone(),
                    }))
                    .http2_prior_knowledge()
                    .timeout(self.timeout)
                    .connect_timeout(self.timeout.min(Duration::from_secs(30)))
                    .user_agent(concat!("kflow/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| http::error_chain(&e))
            })
            .as_ref()
            .map_err(|e| {
                WfError::runtime(format!("the HTTP/2 client could not be initialised: {e}"))
            })
    }

    pub(crate) fn client(&self, follow_redirects: bool) -> Result<&reqwest::Client, WfError> {
        let c = if follow_redirects {
            &self.follow
        } else {
            &self.no_follow
        };
        c.as_ref()
            .map_err(|e| WfError::runtime(format!("the HTTP client could not be initialised: {e}")))
    }
}

impl Inner {
    /// The clients of a namespace's egress policy.
    pub(crate) fn clients(&self, namespace: &str) -> Arc<Clients> {
        let key = if self.cfg.egress.namespaces.contains_key(namespace) {
            namespace
        } else {
            ""
        };
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Clients::new(&self.cfg, self.cfg.egress.for_namespace(key)))
            })
            .clone()
    }
}

impl Executor {
    pub fn new(cfg: ExecConfig) -> Executor {
        Executor {
            inner: Arc::new(Inner {
                cfg,
                clients: Default::default(),
                docs: openapi::DocCache::default(),
                protos: grpc::ProtoCache::default(),
                tokens: auth::TokenCache::default(),
            }),
        }
    }

    /// Where a `call asyncapi` message goes: its document fetched (egress policy, its
    /// authentication) and read.
    pub async fn asyncapi_target(
        &self,
        ctx: &EffectCtx,
        req: &kflow_effects::effect::AsyncApiRequest,
    ) -> Result<asyncapi::Target, WfError> {
        asyncapi::resolve(&self.inner, ctx, req).await
    }

    /// The configuration this executor was built with.
    pub fn config(&self) -> &ExecConfig {
        &self.inner.cfg
    }

    /// Performs an `Http`, `OpenApi` or `Process` effect and returns the task's raw output; any
    /// other effect is a runtime error (the host performs those itself).
    pub async fn perform(&self, ctx: &EffectCtx, effect: &Effect) -> Result<Value, WfError> {
        match effect {
            Effect::Http(req) => http::perform(&self.inner, ctx, req).await,
            Effect::OpenApi(req) => openapi::perform(&self.inner, ctx, req).await,
            Effect::Grpc(req) => grpc::perform(&self.inner, ctx, req).await,
            Effect::AsyncApi(_) => Err(WfError::configuration(
                "call asyncapi publishes from a kflow server, which holds the broker connections; kflow run and kflow worker do not",
            )),
            Effect::Function(f) => Err(WfError::configuration(format!(
                "call worker: {} is served by the workers of queue '{}' that registered a handler for it (the Python or TypeScript worker library); this process has none",
                f.function, f.queue
            ))),
            Effect::Process(req) => process::perform(&self.inner.cfg, ctx, req).await,
            other => Err(WfError::runtime(format!(
                "kflow-tasks does not perform '{}' effects (only http, openapi, grpc and process); the host must",
                other.kind()
            ))),
        }
    }
}

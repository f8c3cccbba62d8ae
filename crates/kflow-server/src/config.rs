//! Server settings: defaults, the `--config kflow.yaml` file, and command-line overrides.
//!
//! Unknown keys in the file are an error that names them, so a typo never silently falls back
//! to a default.

use std::path::PathBuf;

use serde::Deserialize;

use kflow_store::sqlite::Durability;

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    pub max_concurrent_effects: usize,
    /// How long SIGTERM waits for running tasks before exiting.
    pub drain_seconds: u64,
    /// `$secrets` for every instance (a YAML/JSON map of name to value).
    pub secrets_file: Option<PathBuf>,
    /// Serve without authentication: refused unless `listen` is a loopback address.
    pub insecure_no_auth: bool,
    /// Serve plain HTTP on a routable address (behind a TLS-terminating proxy).
    pub insecure_no_tls: bool,
    /// Host names answered besides loopback's, when listening on a loopback address (a
    /// proxy's name, say); other `Host`s are refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Where `call http`/`openapi` may go: server-wide and per namespace.
    pub egress: kflow_tasks::egress::EgressConfig,
    /// How shell and script tasks are confined.
    pub sandbox: SandboxSettings,
    /// API requests per second per token (burst twice that); 0: unlimited.
    pub rate_limit_per_token: f64,
    /// Seal workflow data at rest with the master key.
    pub encrypt_data: bool,
    /// Serve HTTPS with this PEM certificate chain and private key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A remote worker silent this long loses its tasks to other workers.
    pub lease_ttl_ms: i64,
    /// Tasks per second, by `queue:NAME` or `host:NAME`.
    pub rate_limits: std::collections::HashMap<String, f64>,
    /// Running instances at most per namespace.
    pub namespace_limits: std::collections::HashMap<String, usize>,
    /// The time zone of cron schedules that name none (IANA name; default UTC).
    pub timezone: String,
    /// What one instance may do: tasks per driver turn, tasks and history records in its life.
    pub limits: crate::engine::InstanceLimits,
    /// How long a start's `Idempotency-Key` is remembered (seconds; default 86,400).
    pub idempotency_ttl_seconds: u64,
    /// Live watchers (`/watch` streams) at most on the server, and per client address.
    pub max_watchers: usize,
    pub max_watchers_per_client: usize,
    /// Alert rules and the webhooks they go to.
    pub alerts: crate::alerts::AlertsConfig,
    /// Trace export (OTLP).
    pub tracing: crate::traces::TracingConfig,
    /// `postgres://...`: the database every node shares, instead of SQLite in `data_dir`.
    pub db: Option<String>,
    /// Pruning of finished instances and processed events, and their archive.
    pub retention: crate::retention::RetentionConfig,
    /// How long the database lease lives without a renewal: a standby takes over within this
    /// (plus a quarter second) of the active node's death.
    pub db_lease_ms: i64,
    /// The URL other nodes reach this node's API at, to forward requests for the instances it
    /// drives (default: `http://` or `https://` and `listen`, which must then be reachable).
    pub advertise: Option<String>,
    /// Queues that dispatch critical-path-first (`dispatch: {QUEUE: critical-path}`; `*`: all);
    /// the others first come, first served.
    pub critical_path_queues: std::collections::HashSet<String>,
    /// Per target host, a concurrency limit that adapts to its latency and errors.
    pub adaptive_concurrency: Option<crate::engine::queue::AdaptiveHosts>,
    /// Named services `service://NAME/...` calls go to (checked at load).
    pub services: std::collections::BTreeMap<String, kflow_tasks::services::ServiceSpec>,
    /// How `run: container` runs.
    pub containers: kflow_tasks::container::ContainerConfig,
    /// Message brokers events are taken from and published to (checked at load).
    pub brokers: std::collections::BTreeMap<String, crate::brokers::BrokerSpec>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            db: None,
            db_lease_ms: 4_000,
            advertise: None,
            critical_path_queues: Default::default(),
            adaptive_concurrency: None,
            services: Default::default(),
            containers: Default::default(),
            brokers: Default::default(),
            retention: Default::default(),
            data_dir: PathBuf::from("kflow-data"),
            durability: Durability::Process,
            max_body_bytes: 1024 * 1024,
            max_concurrent_effects: 512,
            drain_seconds: 30,
            secrets_file: None,
            insecure_no_auth: false,
            insecure_no_tls: false,
            allowed_hosts: Vec::new(),
            egress: Default::default(),
            sandbox: SandboxSettings::default(),
            rate_limit_per_token: 2_000.0,
            encrypt_data: false,
            tls_cert: None,
            tls_key: None,
            lease_ttl_ms: 1_500,
            rate_limits: Default::default(),
            namespace_limits: Default::default(),
            timezone: "UTC".into(),
            limits: Default::default(),
            idempotency_ttl_seconds: 86_400,
            max_watchers: 10_000,
            max_watchers_per_client: 100,
            alerts: Default::default(),
            tracing: Default::default(),
        }
    }
}

/// `limits:` in the file: any of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct LimitsFile {
    tasks_per_turn: Option<u32>,
    max_tasks: Option<u64>,
    max_history: Option<i64>,
}

/// `sandbox:` in the config: the confinement of shell and script tasks (see the binary's
/// sandbox.rs for how each is applied).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct SandboxSettings {
    /// Run tasks under the launcher (Landlock, limits, user, network).
    pub enabled: bool,
    /// The user tasks run as when the server runs as root: `pool` (default: each running task
    /// a uid of its own from `uid_base`, `uid_count` of them), a user name or number, or empty
    /// for root itself.
    pub user: String,
    pub uid_base: u32,
    pub uid_count: u32,
    pub cpu_seconds: Option<u64>,
    pub memory_mb: Option<u64>,
    pub processes: Option<u64>,
    pub file_size_mb: Option<u64>,
    pub open_files: Option<u64>,
    /// Network for tasks; `no_network_namespaces` take it away from some namespaces only.
    pub network: bool,
    pub no_network_namespaces: Vec<String>,
    /// Namespaces where `run: shell` and `run: script` are refused.
    pub forbid_namespaces: Vec<String>,
    /// The longest a process may run when its task sets no shorter timeout.
    pub timeout_seconds: Option<u64>,
    /// Paths tasks may read (besides the system directories), and read and write (besides
    /// their working directory).
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            enabled: true,
            user: "pool".into(),
            uid_base: 1_800_000_000,
            uid_count: 10_000,
            cpu_seconds: Some(600),
            memory_mb: Some(2048),
            processes: Some(512),
            file_size_mb: Some(1024),
            open_files: Some(1024),
            network: true,
            no_network_namespaces: Vec::new(),
            forbid_namespaces: Vec::new(),
            timeout_seconds: Some(3600),
            read_only: Vec::new(),
            read_write: Vec::new(),
        }
    }
}

/// `containers:` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct ContainersFile {
    /// `docker`, `podman`, or a path (default: docker, then podman, on PATH).
    runtime: Option<String>,
    /// The daemon's address (`unix:///run/user/1000/podman/podman.sock`, `tcp://...`).
    host: Option<String>,
    /// Host directories containers may mount (absolute).
    #[serde(default)]
    allow_volumes: Vec<PathBuf>,
}

/// `egress:` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct EgressFile {
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    /// Cloud metadata endpoints are denied unless this is false.
    deny_metadata: Option<bool>,
    #[serde(default)]
    namespaces: std::collections::HashMap<String, EgressListsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct EgressListsFile {
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
}

fn egress_of(f: EgressFile, name: &str) -> Result<kflow_tasks::egress::EgressConfig, String> {
    use kflow_tasks::egress::{EgressConfig, Policy};
    let mut default =
        Policy::parse(&f.deny, &f.allow).map_err(|e| format!("{name}: egress: {e}"))?;
    if f.deny_metadata.unwrap_or(true) {
        default.deny.extend(Policy::standard().deny);
    }
    let mut namespaces = std::collections::HashMap::new();
    for (ns, l) in f.namespaces {
        let p = Policy::parse(&l.deny, &l.allow)
            .map_err(|e| format!("{name}: egress.namespaces.{ns}: {e}"))?;
        namespaces.insert(ns, p);
    }
    Ok(EgressConfig {
        default,
        namespaces,
    })
}

/// The file's shape: every key optional, no others allowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    durability: Option<String>,
    max_body_bytes: Option<usize>,
    max_concurrent_effects: Option<usize>,
    drain_seconds: Option<u64>,
    secrets_file: Option<PathBuf>,
    worker_token: Option<String>,
    insecure_no_auth: Option<bool>,
    insecure_no_tls: Option<bool>,
    allowed_hosts: Option<Vec<String>>,
    egress: Option<EgressFile>,
    sandbox: Option<SandboxSettings>,
    rate_limit_per_token: Option<f64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    encrypt_data: Option<bool>,
    lease_ttl_ms: Option<i64>,
    rate_limits: Option<std::collections::HashMap<String, f64>>,
    namespace_limits: Option<std::collections::HashMap<String, usize>>,
    timezone: Option<String>,
    limits: Option<LimitsFile>,
    idempotency_ttl_seconds: Option<u64>,
    max_watchers: Option<usize>,
    max_watchers_per_client: Option<usize>,
    alerts: Option<crate::alerts::AlertsConfig>,
    tracing: Option<crate::traces::TracingConfig>,
    db: Option<String>,
    db_lease_ms: Option<i64>,
    advertise: Option<String>,
    dispatch: Option<std::collections::BTreeMap<String, String>>,
    adaptive_concurrency: Option<crate::engine::queue::AdaptiveHosts>,
    services: Option<std::collections::BTreeMap<String, kflow_tasks::services::ServiceSpec>>,
    containers: Option<ContainersFile>,
    brokers: Option<std::collections::BTreeMap<String, crate::brokers::BrokerSpec>>,
    retention: Option<crate::retention::RetentionConfig>,
}

/// A database URL kflow can use: `postgres://` or `postgresql://` (SQLite needs none: it is
/// the file in the data directory).
pub fn check_db_url(url: &str) -> Result<(), String> {
    if kflow_store_pg::is_postgres_url(url) {
        Ok(())
    } else {
        Err(format!(
            "unsupported database URL {}: use postgres://USER@HOST:PORT/DATABASE, or leave it \
             out for the embedded SQLite database in the data directory",
            kflow_store_pg::redact(url)
        ))
    }
}

pub fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "process" | "default" => Ok(Durability::Process),
        "full" => Ok(Durability::Full),
        other => Err(format!(
            "unknown durability '{other}' (expected 'process' or 'full')"
        )),
    }
}

impl ServerConfig {
    /// Reads a config file (YAML or JSON); `name` is used in messages.
    pub fn from_file_bytes(bytes: &[u8], name: &str) -> Result<ServerConfig, String> {
        let node = kflow_dsl::node::parse_value(bytes, &kflow_dsl::node::Limits::default())
            .map_err(|d| format!("{name}:{d}"))?;
        let json = node.to_json();
        let file: FileConfig = serde_json::from_value(json).map_err(|e| format!("{name}: {e}"))?;
        let mut c = ServerConfig::default();
        if let Some(v) = file.listen {
            c.listen = v;
        }
        if let Some(v) = file.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = file.db {
            check_db_url(&v).map_err(|e| format!("{name}: db: {e}"))?;
            c.db = Some(v);
        }
        if let Some(v) = file.db_lease_ms {
            if !(1_000..=600_000).contains(&v) {
                return Err(format!(
                    "{name}: db_lease_ms: {v} is out of range (1000 to 600000)"
                ));
            }
            c.db_lease_ms = v;
        }
        if let Some(a) = file.adaptive_concurrency {
            if a.hosts.is_empty()
                || !(a.min >= 1.0 && a.min <= a.initial && a.initial <= a.max && a.max.is_finite())
            {
                return Err(format!(
                    "{name}: adaptive_concurrency: name hosts (or '*'), with 1 <= min <= initial <= max"
                ));
            }
            c.adaptive_concurrency = Some(a);
        }
        if let Some(k) = file.containers {
            if let Some(d) = k.allow_volumes.iter().find(|d| !d.is_absolute()) {
                return Err(format!(
                    "{name}: containers.allow_volumes: {} is not an absolute path",
                    d.display()
                ));
            }
            c.containers = kflow_tasks::container::ContainerConfig {
                runtime: k.runtime,
                search_path: None,
                host: k.host,
                allow_volumes: k.allow_volumes,
            };
        }
        if let Some(services) = file.services {
            kflow_tasks::services::Registry::new(services.clone())
                .map_err(|e| format!("{name}: {e}"))?;
            c.services = services;
        }
        if let Some(brokers) = file.brokers {
            crate::brokers::check(&brokers).map_err(|e| format!("{name}: {e}"))?;
            c.brokers = brokers;
        }
        for (queue, mode) in file.dispatch.unwrap_or_default() {
            match mode.as_str() {
                "critical-path" => {
                    c.critical_path_queues.insert(queue);
                }
                "fifo" => {}
                other => {
                    return Err(format!(
                        "{name}: dispatch: {queue}: {other:?} is not a dispatch order (fifo or critical-path)"
                    ));
                }
            }
        }
        if let Some(v) = file.advertise {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(format!(
                    "{name}: advertise: {v:?} is not an http:// or https:// URL"
                ));
            }
            c.advertise = Some(v.trim_end_matches('/').to_string());
        }
        if let Some(v) = file.durability {
            c.durability = parse_durability(&v).map_err(|e| format!("{name}: durability: {e}"))?;
        }
        if let Some(v) = file.max_body_bytes {
            c.max_body_bytes = v;
        }
        if let Some(v) = file.max_concurrent_effects {
            c.max_concurrent_effects = v.max(1);
        }
        if let Some(v) = file.drain_seconds {
            c.drain_seconds = v;
        }
        c.secrets_file = file.secrets_file;
        if file.worker_token.is_some() {
            return Err(format!(
                "{name}: worker_token is gone: workers now use tokens with the worker role \
                 (kflow token create --name NAME --role worker --namespace NS)"
            ));
        }
        c.insecure_no_auth = file.insecure_no_auth.unwrap_or(false);
        c.insecure_no_tls = file.insecure_no_tls.unwrap_or(false);
        c.allowed_hosts = file.allowed_hosts.unwrap_or_default();
        if let Some(e) = file.egress {
            c.egress = egress_of(e, name)?;
        }
        if let Some(sb) = file.sandbox {
            c.sandbox = sb;
        }
        c.encrypt_data = file.encrypt_data.unwrap_or(false);
        c.tls_cert = file.tls_cert;
        c.tls_key = file.tls_key;
        if let Some(r) = file.rate_limit_per_token {
            if !r.is_finite() || r < 0.0 {
                return Err(format!("{name}: rate_limit_per_token must be 0 or more"));
            }
            c.rate_limit_per_token = r;
        }
        if let Some(limits) = file.rate_limits {
            for (k, v) in &limits {
                let ok_key = k
                    .strip_prefix("queue:")
                    .or_else(|| k.strip_prefix("host:"))
                    .is_some_and(|n| !n.is_empty());
                if !ok_key {
                    return Err(format!(
                        "{name}: rate_limits: '{k}' must be 'queue:NAME' or 'host:NAME'"
                    ));
                }
                if !v.is_finite() || *v <= 0.0 {
                    return Err(format!(
                        "{name}: rate_limits: '{k}' must be a positive number of tasks per second"
                    ));
                }
            }
            c.rate_limits = limits;
        }
        if let Some(limits) = file.namespace_limits {
            if let Some((ns, _)) = limits.iter().find(|(_, n)| **n == 0) {
                return Err(format!(
                    "{name}: namespace_limits: '{ns}' must allow at least 1 running instance"
                ));
            }
            c.namespace_limits = limits;
        }
        if let Some(v) = file.lease_ttl_ms {
            if v < 100 {
                return Err(format!("{name}: lease_ttl_ms must be at least 100"));
            }
            c.lease_ttl_ms = v;
        }
        if let Some(l) = file.limits {
            let at_least = |what: &str, v: i128, min: i128| {
                if v < min {
                    Err(format!("{name}: limits.{what} must be at least {min}"))
                } else {
                    Ok(())
                }
            };
            if let Some(v) = l.tasks_per_turn {
                at_least("tasks_per_turn", v.into(), 1)?;
                c.limits.tasks_per_turn = v;
            }
            if let Some(v) = l.max_tasks {
                at_least("max_tasks", v.into(), 1)?;
                c.limits.max_tasks = v;
            }
            if let Some(v) = l.max_history {
                at_least("max_history", v.into(), 10)?;
                c.limits.max_history = v;
            }
        }
        if let Some(v) = file.max_watchers {
            c.max_watchers = v;
        }
        if let Some(v) = file.max_watchers_per_client {
            c.max_watchers_per_client = v;
        }
        if let Some(t) = file.tracing {
            c.tracing = t;
        }
        if let Some(r) = file.retention {
            r.check().map_err(|e| format!("{name}: {e}"))?;
            c.retention = r;
        }
        if let Some(a) = file.alerts {
            a.check().map_err(|e| format!("{name}: {e}"))?;
            c.alerts = a;
        }
        if let Some(v) = file.idempotency_ttl_seconds {
            if v == 0 {
                return Err(format!(
                    "{name}: idempotency_ttl_seconds must be at least 1"
                ));
            }
            c.idempotency_ttl_seconds = v;
        }
        if let Some(v) = file.timezone {
            crate::schedule::plan::parse_tz(&v).map_err(|e| format!("{name}: timezone: {e}"))?;
            c.timezone = v;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_and_access_settings_are_read_and_bad_entries_named() {
        let c = ServerConfig::from_file_bytes(
            b"allowed_hosts: [kflow.internal]\negress:\n  deny: [10.0.0.0/8]\n  namespaces:\n    team:\n      allow: ['*.corp.example']\n",
            "k.yaml",
        )
        .unwrap();
        assert_eq!(c.allowed_hosts, vec!["kflow.internal".to_string()]);
        let team = c.egress.for_namespace("team");
        let ip = |s: &str| vec![s.parse::<std::net::IpAddr>().unwrap()];
        assert!(team.check("a.corp.example", &ip("203.0.113.1")).is_ok());
        assert!(team.check("a.corp.example", &ip("10.1.1.1")).is_err());
        assert!(c.egress.default.check("x", &ip("169.254.169.254")).is_err());
        let e = ServerConfig::from_file_bytes(
            b"egress:\n  namespaces:\n    team:\n      deny: ['10.0.0.0/99']\n",
            "k.yaml",
        )
        .unwrap_err();
        assert!(
            e.contains("egress.namespaces.team") && e.contains("10.0.0.0/99"),
            "{e}"
        );
        let e = ServerConfig::from_file_bytes(b"worker_token: x\n", "k.yaml").unwrap_err();
        assert!(e.contains("worker role"), "{e}");
        let e = ServerConfig::from_file_bytes(b"advertise: host-a:8080\n", "k.yaml").unwrap_err();
        assert!(e.contains("advertise") && e.contains("http://"), "{e}");
        let e =
            ServerConfig::from_file_bytes(b"dispatch: {fast: soonest}\n", "k.yaml").unwrap_err();
        assert!(
            e.contains("dispatch: fast") && e.contains("critical-path"),
            "{e}"
        );
        let c = ServerConfig::from_file_bytes(
            b"dispatch: {'*': critical-path, slow: fifo}\n",
            "k.yaml",
        )
        .unwrap();
        assert!(c.critical_path_queues.contains("*") && !c.critical_path_queues.contains("slow"));
        let c =
            ServerConfig::from_file_bytes(b"advertise: http://host-a:8080/\n", "k.yaml").unwrap();
        assert_eq!(c.advertise.as_deref(), Some("http://host-a:8080"));
    }

    #[test]
    fn reads_known_keys_and_names_unknown_ones() {
        let c = ServerConfig::from_file_bytes(
            b"listen: 0.0.0.0:9000\ndurability: full\nmax_body_bytes: 10\n",
            "k.yaml",
        )
        .unwrap();
        assert_eq!(
            (c.listen.as_str(), c.durability, c.max_body_bytes),
            ("0.0.0.0:9000", Durability::Full, 10)
        );
        let e = ServerConfig::from_file_bytes(b"listen: x\nlistn: y\n", "k.yaml").unwrap_err();
        assert!(e.contains("unknown field `listn`"), "{e}");
        let c =
            ServerConfig::from_file_bytes(b"rate_limits:\n  host:api.example.com: 5\n", "k.yaml")
                .unwrap();
        assert_eq!(c.rate_limits.get("host:api.example.com"), Some(&5.0));
        let e = ServerConfig::from_file_bytes(b"rate_limits:\n  api.example.com: 5\n", "k.yaml")
            .unwrap_err();
        assert!(e.contains("must be 'queue:NAME' or 'host:NAME'"), "{e}");
        let e = ServerConfig::from_file_bytes(b"durability: fast\n", "k.yaml").unwrap_err();
        assert!(e.contains("unknown durability 'fast'"), "{e}");
        let c = ServerConfig::from_file_bytes(b"timezone: Europe/Paris\n", "k.yaml").unwrap();
        assert_eq!(c.timezone, "Europe/Paris");
        assert_eq!(ServerConfig::default().timezone, "UTC");
        let c = ServerConfig::from_file_bytes(
            b"limits:\n  max_tasks: 50\nidempotency_ttl_seconds: 60\n",
            "k.yaml",
        )
        .unwrap();
        assert_eq!((c.limits.max_tasks, c.limits.tasks_per_turn), (50, 100));
        assert_eq!(c.idempotency_ttl_seconds, 60);
        let e = ServerConfig::from_file_bytes(b"limits:\n  max_task: 5\n", "k.yaml").unwrap_err();
        assert!(e.contains("unknown field `max_task`"), "{e}");
        let e =
            ServerConfig::from_file_bytes(b"limits:\n  tasks_per_turn: 0\n", "k.yaml").unwrap_err();
        assert!(
            e.contains("limits.tasks_per_turn must be at least 1"),
            "{e}"
        );
        let e = ServerConfig::from_file_bytes(b"timezone: Europe/Pariss\n", "k.yaml").unwrap_err();
        assert!(
            e.contains("timezone: unknown time zone 'Europe/Pariss'"),
            "{e}"
        );
    }
}

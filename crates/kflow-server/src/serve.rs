//! `kflow server`: open the engine, serve the API, drain on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use crate::api::{ApiConfig, router};
use crate::auth::hosts::Hosts;
use crate::auth::tokens::NewToken;
use crate::auth::{AuthMode, Role, Tokens};
use crate::config::ServerConfig;
use crate::engine::{Engine, EngineConfig};

/// Runs the server until SIGTERM or Ctrl-C, then drains: no new work is taken, running tasks
/// get `drain_seconds` to finish, unfinished ones stay durable and resume at the next start.
///
/// On PostgreSQL every node drives the instances started through it and adopts those of nodes
/// that die or drain; a node that loses its own lease (it was paused or cut off past it) stops
/// at once and joins again as a new node, in the same process.
pub async fn serve(cfg: ServerConfig, secrets: Value) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}",
            cfg.data_dir.display()
        )
    })?;
    let sandbox = sandbox_of(&cfg.sandbox)?;
    let Some(url) = &cfg.db else {
        // SQLite is one node: a second server on the same data directory is refused.
        let _dir_lock = lock_data_dir(&cfg.data_dir)?;
        return match run(&cfg, secrets, sandbox, None).await? {
            Ended::Drained => Ok(()),
            Ended::Lost(reason) => Err(reason),
        };
    };
    let (store, node) = open_cluster(url, &cfg).await?;
    loop {
        let fence = tokio::select! {
            fence = node.join() => fence,
            _ = wait_for_signal() => return Ok(()),
        };
        let term = Some((store.clone(), node.clone(), fence));
        match run(&cfg, secrets.clone(), sandbox.clone(), term).await? {
            Ended::Drained => return Ok(()),
            Ended::Lost(reason) => {
                // The old fence stays set until a new one replaces it: a write of the old
                // term still in flight (a blocking call the stop did not reach) is refused.
                tracing::error!(reason = %reason, "stopped driving the workflows; joining again as a new node");
            }
        }
    }
}

/// How one term of the engine ended.
enum Ended {
    /// SIGTERM: drained, the lease given up.
    Drained,
    /// The database lease was lost: everything stopped at once, without a drain.
    Lost(String),
}

/// Opens the engine and serves the API until a signal (drained) or, on PostgreSQL, until the
/// lease is lost.
async fn run(
    cfg: &ServerConfig,
    secrets: Value,
    sandbox: Option<kflow_tasks::SandboxConfig>,
    term: Option<(
        Arc<kflow_store_pg::PgStore>,
        crate::cluster::Node,
        kflow_store_pg::Fence,
    )>,
) -> Result<Ended, String> {
    let (database, cluster) = match term {
        Some((store, node, fence)) => (Some(store), Some((node, fence))),
        None => (None, None),
    };
    // This node's lease is renewed from now on for as long as this term runs (the engine's
    // recovery and the drain included). The engine learns until when it surely holds it.
    let keep_stop = Arc::new(Notify::new());
    let engine_cell: Arc<std::sync::OnceLock<Engine>> = Arc::default();
    let tokens_cell: Arc<std::sync::OnceLock<Arc<Tokens>>> = Arc::default();
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Taken just now: it holds for a time to live from here at least.
    let valid_until = Arc::new(std::sync::atomic::AtomicI64::new(
        crate::engine::mono_ms() + cfg.db_lease_ms / 2,
    ));
    let keeper = cluster.as_ref().map(|(node, fence)| {
        let node = node.clone();
        let term = crate::cluster::Term {
            fence: fence.clone(),
            engine: engine_cell.clone(),
            draining: draining.clone(),
            stop: keep_stop.clone(),
        };
        let (cell, cell2, tokens, until) = (
            engine_cell.clone(),
            engine_cell.clone(),
            tokens_cell.clone(),
            valid_until.clone(),
        );
        tokio::spawn(async move {
            node.keep(
                term,
                move |t| {
                    until.store(t, std::sync::atomic::Ordering::SeqCst);
                    if let Some(e) = cell.get() {
                        e.set_lease_valid_until(t);
                    }
                },
                move || {
                    // Tokens and secrets another node may have changed.
                    let (engine, tokens) = (cell2.get().cloned(), tokens.get().cloned());
                    tokio::task::spawn_blocking(move || {
                        if let Some(t) = tokens
                            && let Err(e) = t.reload()
                        {
                            tracing::warn!(error = %e, "reading the tokens again failed");
                        }
                        if let Some(e) = engine
                            && let Err(m) = e.reload_secrets()
                        {
                            tracing::warn!(error = %m, "reading the secrets again failed");
                        }
                    });
                },
            )
            .await
        })
    });
    let brokers = Arc::new(crate::brokers::Brokers::new(&cfg.brokers, &secrets)?);
    let engine = Engine::open(EngineConfig {
        database: database.clone(),
        data_dir: cfg.data_dir.clone(),
        durability: cfg.durability,
        max_concurrent_effects: cfg.max_concurrent_effects,
        secrets,
        encrypt_data: cfg.encrypt_data,
        lease_ttl_ms: cfg.lease_ttl_ms,
        rate_limits: cfg.rate_limits.clone(),
        namespace_limits: cfg.namespace_limits.clone(),
        limits: cfg.limits,
        watch_limits: crate::engine::live::WatchLimits {
            total: cfg.max_watchers,
            per_client: cfg.max_watchers_per_client,
        },
        idempotency_ttl_ms: (cfg.idempotency_ttl_seconds.min(u64::MAX / 2000) * 1000) as i64,
        executor: kflow_tasks::ExecConfig {
            egress: cfg.egress.clone(),
            sandbox,
            process_timeout: cfg.sandbox.timeout_seconds.map(Duration::from_secs),
            containers: cfg.containers.clone(),
            services: std::sync::Arc::new(
                kflow_tasks::services::Registry::new(cfg.services.clone())
                    .map_err(|e| format!("services: {e}"))?,
            ),
            ..kflow_tasks::ExecConfig::default()
        },
        cluster: cluster.is_some(),
        critical_path_queues: cfg.critical_path_queues.clone(),
        adaptive_concurrency: cfg.adaptive_concurrency.clone(),
        brokers: brokers.clone(),
        ..EngineConfig::default()
    })
    .await
    .map_err(|e| match &database {
        Some(db) => format!("cannot open the engine on {}: {e}", db.label()),
        None => format!("cannot open the engine in {}: {e}", cfg.data_dir.display()),
    })?;
    if cluster.is_some() {
        engine.set_lease_valid_until(valid_until.load(std::sync::atomic::Ordering::SeqCst));
        let _ = engine_cell.set(engine.clone());
    }
    let scheduler = crate::schedule::Scheduler::new(
        engine.clone(),
        crate::schedule::SchedulerConfig {
            timezone: cfg.timezone.clone(),
            ..Default::default()
        },
        std::sync::Arc::new(crate::schedule::SystemClock),
    )
    .await
    .map_err(|e| format!("cannot start the scheduler: {e}"))?;
    let schedules = scheduler.spawn();
    let consumers = brokers.spawn(engine.clone());
    let alerts = crate::alerts::Alerts::new(engine.clone(), cfg.alerts.clone())?.spawn();
    let retention =
        crate::retention::Retention::new(engine.clone(), cfg.retention.clone(), cfg.encrypt_data)
            .spawn();
    let traces = crate::traces::Exporter::new(engine.clone(), &cfg.tracing)?.map(|e| e.spawn());
    let pump = cluster.as_ref().map(|_| {
        let e = engine.clone();
        tokio::spawn(async move { e.run_event_pump().await })
    });
    let (auth, hosts) = security(&cfg, &engine).await?;
    if let AuthMode::Tokens(t) = &auth {
        let _ = tokens_cell.set(t.clone());
    }
    let app = router(
        engine.clone(),
        ApiConfig {
            max_body_bytes: cfg.max_body_bytes,
            auth,
            hosts,
            rate_limit_per_token: cfg.rate_limit_per_token,
        },
    );
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::acceptor(c, k)?),
        (None, None) => None,
        _ => return Err("give both --tls-cert and --tls-key, or neither".into()),
    };
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| cfg.listen.clone());
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        "kflow server listening on {}://{addr}",
        if tls.is_some() { "https" } else { "http" },
    );

    let stop = Arc::new(Notify::new());
    let stop2 = stop.clone();
    let http = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let shutdown = async move { stop2.notified().await };
        match tls {
            None => {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await;
            }
            Some(acceptor) => match crate::tls::TlsListener::new(listener, acceptor) {
                Ok(l) => {
                    let _ = axum::serve(l.tap_io(|_| {}), app)
                        .with_graceful_shutdown(shutdown)
                        .await;
                }
                Err(e) => tracing::error!(error = %e, "the TLS listener failed"),
            },
        }
    });
    let lost = async {
        match keeper {
            Some(h) => h.await.ok().flatten(),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = wait_for_signal() => {}
        reason = lost => {
            // Another node drives the workflows now; this one could not commit anything more
            // (every commit checks the lease): stop at once, without a drain.
            let reason = reason.unwrap_or_else(|| "the database lease keeper stopped".into());
            tracing::error!(reason = %reason, "stopping");
            stop.notify_waiters();
            schedules.abort();
            consumers.iter().for_each(|c| c.abort());
            alerts.abort();
            retention.abort();
            if let Some(t) = traces {
                t.abort();
            }
            if let Some(p) = pump {
                p.abort();
            }
            engine.shutdown(Duration::ZERO).await;
            // Open watch streams would keep this term's server (and engine) alive: cut them.
            let mut http = http;
            if tokio::time::timeout(Duration::from_secs(1), &mut http).await.is_err() {
                http.abort();
            }
            return Ok(Ended::Lost(reason));
        }
    }
    tracing::info!(seconds = cfg.drain_seconds, "draining");
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
    // No new fires while draining; decided ones stay in their rows for the next start. No new
    // broker messages: those not acknowledged come again to the next start.
    schedules.abort();
    consumers.iter().for_each(|c| c.abort());
    alerts.abort();
    retention.abort();
    if let Some(t) = traces {
        t.abort();
    }
    // The API stays up while the engine drains: new starts get 503 with Retry-After, remote
    // workers heartbeat and report what they hold, watchers see the last events.
    engine
        .shutdown(Duration::from_secs(cfg.drain_seconds))
        .await;
    if let Some(p) = pump {
        p.abort();
    }
    keep_stop.notify_waiters();
    if let Some((node, fence)) = &cluster {
        // Handed over now, not after the lease's time to live.
        node.leave(fence).await;
    }
    stop.notify_waiters();
    // Open watch streams would keep the HTTP side alive forever: give it a moment, then go.
    let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    tracing::info!("stopped");
    Ok(Ended::Drained)
}

/// Opens the PostgreSQL database (migrating it) and this node's place in the cluster.
async fn open_cluster(
    url: &str,
    cfg: &ServerConfig,
) -> Result<(Arc<kflow_store_pg::PgStore>, crate::cluster::Node), String> {
    let mut options = kflow_store_pg::PgOptions::new(url);
    options.idle_in_transaction_ms = (cfg.db_lease_ms / 2).max(500) as u64;
    let store = tokio::task::spawn_blocking(move || kflow_store_pg::PgStore::open(&options))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let store = Arc::new(store);
    let scheme = if cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let api = cfg.advertise.clone().unwrap_or_else(|| {
        // Listening on every address: the others reach this node by its host name.
        let listen = match cfg.listen.rsplit_once(':') {
            Some((host, port)) if matches!(host, "0.0.0.0" | "[::]" | "::" | "") => {
                let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into());
                format!("{name}:{port}")
            }
            _ => cfg.listen.clone(),
        };
        format!("{scheme}://{listen}")
    });
    tracing::info!(database = %store.label(), api = %api, "joining the cluster (other nodes forward requests to this address; set `advertise` to change it)");
    let node = crate::cluster::Node::new(store.clone(), Some(api), cfg.db_lease_ms);
    Ok((store, node))
}

/// Takes the data directory for this process: a second server on it is refused (two writers
/// would drive the same instances twice). The lock is the kernel's (`flock`): it goes with the
/// process, however it ends.
pub fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("kflow.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(format!(
            "another kflow server{} is using the data directory {}: SQLite serves one node; \
             stop it, or run several nodes on PostgreSQL (--db postgres://...)",
            if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
            dir.display()
        ));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// The launcher's settings from the config, said on stderr (what is in force, and what not).
/// (Also used by `kflow worker`, which confines its tasks the same way.)
pub fn sandbox_of(
    s: &crate::config::SandboxSettings,
) -> Result<Option<kflow_tasks::SandboxConfig>, String> {
    if !s.enabled {
        tracing::warn!(
            "shell and script tasks are not sandboxed (sandbox.enabled: false): they run as \
             this server's user with its file access"
        );
        return Ok(None);
    }
    let launcher = std::env::current_exe()
        .map_err(|e| format!("cannot find kflow's own binary for the task sandbox: {e}"))?;
    let root = rustix::process::getuid().is_root();
    let user = match s.user.as_str() {
        _ if !root => kflow_tasks::TaskUser::Server,
        "" => kflow_tasks::TaskUser::Server,
        "pool" => kflow_tasks::TaskUser::Pool {
            base: s.uid_base,
            size: s.uid_count.max(1),
        },
        name => {
            let (u, g) = user_ids(name)?;
            kflow_tasks::TaskUser::Fixed(u, g)
        }
    };
    let mb = |v: Option<u64>| v.map(|m| m.saturating_mul(1024 * 1024));
    let cfg = kflow_tasks::SandboxConfig {
        launcher,
        landlock: true,
        read_only: kflow_tasks::SandboxConfig::SYSTEM_DIRS
            .iter()
            .map(std::path::PathBuf::from)
            .chain(s.read_only.iter().cloned())
            .collect(),
        read_write: s.read_write.clone(),
        cpu_seconds: s.cpu_seconds,
        memory_bytes: mb(s.memory_mb),
        processes: s.processes,
        file_size_bytes: mb(s.file_size_mb),
        open_files: s.open_files,
        user,
        network: s.network,
        no_network_namespaces: s.no_network_namespaces.clone(),
        forbid_namespaces: s.forbid_namespaces.clone(),
    };
    let opt =
        |v: Option<u64>, unit: &str| v.map_or("unlimited".to_string(), |v| format!("{v}{unit}"));
    tracing::info!(
        "shell and script tasks run {}, with Landlock (system directories \
         read-only, a private working directory), limits cpu {} memory {} processes {} file \
         size {} open files {}, timeout {}, network {}{}{}",
        match user {
            kflow_tasks::TaskUser::Fixed(u, _) => format!("as {} (uid {u})", s.user),
            kflow_tasks::TaskUser::Pool { base, size } => format!(
                "each as a user of its own (uids {base} to {})",
                base as u64 + size as u64 - 1
            ),
            kflow_tasks::TaskUser::Server => "as this server's user".to_string(),
        },
        opt(s.cpu_seconds, " s"),
        opt(s.memory_mb, " MiB"),
        opt(s.processes, ""),
        opt(s.file_size_mb, " MiB"),
        opt(s.open_files, ""),
        opt(s.timeout_seconds, " s"),
        if s.network { "on" } else { "off" },
        if s.no_network_namespaces.is_empty() {
            String::new()
        } else {
            format!(" (off in {})", s.no_network_namespaces.join(", "))
        },
        if s.forbid_namespaces.is_empty() {
            String::new()
        } else {
            format!("; forbidden in {}", s.forbid_namespaces.join(", "))
        },
    );
    Ok(Some(cfg))
}

/// A user's uid and gid from /etc/passwd (a number is taken as is, with the same gid).
fn user_ids(name: &str) -> Result<(u32, u32), String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok((n, n));
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("sandbox.user {name:?}: cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
        .find_map(|(u, g)| Some((u?, g?)))
        .ok_or_else(|| format!("sandbox.user {name:?} is not a user of this host"))
}

/// Whether `listen` is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(listen: &str) -> bool {
    if let Ok(a) = listen.parse::<std::net::SocketAddr>() {
        return a.ip().is_loopback();
    }
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
}

/// Authentication and host checks for this server, or why it must not start. On the first
/// start with authentication, an admin token is created and printed once (only its hash is
/// stored); `KFLOW_ADMIN_TOKEN` supplies one instead.
async fn security(cfg: &ServerConfig, engine: &Engine) -> Result<(AuthMode, Hosts), String> {
    let loopback = is_loopback(&cfg.listen);
    if cfg.insecure_no_auth && !loopback {
        return Err(format!(
            "--insecure-no-auth is allowed only on a loopback address, and {} is not: anyone \
             who can reach it could run commands on this host",
            cfg.listen
        ));
    }
    if !loopback && !cfg.insecure_no_tls && cfg.tls_cert.is_none() {
        return Err(format!(
            "listening on {} (not a loopback address) would send tokens in clear text: this \
             build serves no TLS yet; put kflow behind a TLS-terminating proxy and pass \
             --insecure-no-tls, or listen on 127.0.0.1",
            cfg.listen
        ));
    }
    let hosts = if loopback {
        Hosts::loopback(&cfg.allowed_hosts)
    } else {
        Hosts::any()
    };
    if cfg.insecure_no_auth {
        tracing::warn!(
            "authentication is off (--insecure-no-auth): every local user and process can do \
             everything"
        );
        return Ok((AuthMode::Off, hosts));
    }
    let env = std::env::var("KFLOW_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let tokens = Tokens::load(engine.store(), env.as_deref()).map_err(|e| e.to_string())?;
    let now = engine.now_ms();
    if !tokens.any_live(now) {
        let root = crate::auth::Caller::unauthenticated();
        let created = tokens
            .create(
                NewToken {
                    name: format!("admin-{now}"),
                    role: Role::Admin,
                    namespaces: vec!["*".into()],
                    expires_ms: None,
                },
                &root,
                now,
            )
            .await
            .map_err(|e| format!("cannot create the first admin token: {e}"))?;
        eprintln!(
            "kflow server: created an admin token (shown once: only its hash is kept):\n\n    \
             {}\n\n  export KFLOW_TOKEN=<it> for the CLI (or `kflow login`), and create \
             narrower tokens with `kflow token create`.",
            created.1
        );
    }
    Ok((AuthMode::Tokens(Arc::new(tokens)), hosts))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

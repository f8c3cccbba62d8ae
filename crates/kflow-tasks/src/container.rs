//! `run: container`: through the docker or podman CLI (`docker run ...`), when one is present
//! and its daemon answers; a clear error otherwise ("no container runtime found", "the docker
//! daemon does not answer").
//!
//! - The runtime is `ExecConfig::containers.runtime` (a path or a name), else `docker`, then
//!   `podman`, found on kflow's `PATH` (or `containers.search_path`).
//! - Before the first run (and again after 30 s), `<runtime> version` must reach the daemon.
//! - The container is named after the task (`kflow-<instance>-<effect>-<attempt>`) unless the
//!   workflow names it; labelled with the instance and task; run with `no-new-privileges`;
//!   its ports published on 127.0.0.1 only; `volumes` refused unless the host path is under
//!   one of `containers.allow_volumes`. An image, name or path that could be read as an option
//!   of the CLI (a leading `-`) is refused.
//! - `command` runs as `/bin/sh -c <command> sh <arguments...>` (the arguments are `$1`, ...),
//!   as `run: shell` does; without one the image's own command gets the arguments.
//! - `lifetime.cleanup`: `always` removes the container when it ends (`--rm`), `never` (the
//!   spec's default) keeps it, `eventually` removes it `after` the run (in this process: a
//!   restart in between leaves it). A task cancelled or timed out removes its container
//!   (`rm -f`): the CLI's own end does not stop it.
//! - Output and return modes are those of `run: shell`; the CLI's exit code 125 (it could not
//!   create the container: no such image, a name in use) is said as such.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use kflow_effects::WfError;
use kflow_effects::effect::{ContainerProgram, ProcessRequest};

use crate::process::{self, Capture};
use crate::{EffectCtx, ExecConfig};

/// How containers are run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerConfig {
    /// The runtime CLI: a path or a name (`docker`, `podman`); none: docker, then podman.
    pub runtime: Option<String>,
    /// Where a runtime named by name is looked for (`PATH` syntax); none: kflow's `PATH`.
    pub search_path: Option<String>,
    /// The daemon's address for the CLI (`DOCKER_HOST` / `CONTAINER_HOST`); none: the CLI's.
    pub host: Option<String>,
    /// Host directories a container may mount (a volume's host path must be under one).
    pub allow_volumes: Vec<PathBuf>,
}

/// How long a daemon that answered is taken to be up.
const PROBE_FOR: Duration = Duration::from_secs(30);
/// How long `version` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runtimes whose daemon answered, and when.
static ANSWERED: Mutex<Vec<(PathBuf, Option<String>, Instant)>> = Mutex::new(Vec::new());

/// The runtime CLI to use.
fn runtime(c: &ContainerConfig) -> Result<PathBuf, WfError> {
    let find = |name: &str| -> Option<PathBuf> {
        if name.contains('/') {
            let p = PathBuf::from(name);
            return process::is_executable(&p).then_some(p);
        }
        let path = match &c.search_path {
            Some(p) => std::ffi::OsString::from(p),
            None => std::env::var_os("PATH").unwrap_or_default(),
        };
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_absolute() && process::is_executable(p))
    };
    match &c.runtime {
        Some(r) => find(r).ok_or_else(|| {
            WfError::configuration(format!(
                "run container: the container runtime '{r}' (containers.runtime) was not found"
            ))
        }),
        None => find("docker").or_else(|| find("podman")).ok_or_else(|| {
            WfError::configuration(
                "run container: no container runtime found (neither docker nor podman is on \
                 PATH; install one, or name it with containers.runtime in the server's config)",
            )
        }),
    }
}

/// The CLI with the environment it needs (and nothing of the task's).
fn command(rt: &PathBuf, c: &ContainerConfig) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(rt);
    cmd.env_clear().env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| process::DEFAULT_PATH.into()),
    );
    for k in [
        "HOME",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "DOCKER_CONTEXT",
        "DOCKER_CERT_PATH",
        "DOCKER_TLS_VERIFY",
        "CONTAINER_HOST",
        "XDG_RUNTIME_DIR",
    ] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    if let Some(h) = &c.host {
        cmd.env("DOCKER_HOST", h).env("CONTAINER_HOST", h);
    }
    cmd
}

fn runtime_name(rt: &std::path::Path) -> String {
    rt.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "container runtime".into())
}

/// The daemon answers `version` (remembered for `PROBE_FOR`).
async fn probe(rt: &PathBuf, c: &ContainerConfig) -> Result<(), WfError> {
    let fresh = |list: &Vec<(PathBuf, Option<String>, Instant)>| {
        list.iter()
            .any(|(p, h, at)| p == rt && *h == c.host && at.elapsed() < PROBE_FOR)
    };
    if fresh(&ANSWERED.lock().unwrap_or_else(|p| p.into_inner())) {
        return Ok(());
    }
    let name = runtime_name(rt);
    let mut cmd = command(rt, c);
    cmd.args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(WfError::configuration(format!(
                "run container: {} cannot be run: {e}",
                rt.display()
            )));
        }
        Err(_) => {
            return Err(WfError::communication(
                503,
                format!(
                    "run container: the {name} daemon does not answer (`{name} version` took \
                     more than {} s)",
                    PROBE_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no answer");
        return Err(WfError::communication(
            503,
            format!(
                "run container: the {name} daemon does not answer: {}",
                why.trim()
            ),
        ));
    }
    let mut list = ANSWERED.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|(p, h, _)| !(p == rt && *h == c.host));
    list.push((rt.clone(), c.host.clone(), Instant::now()));
    Ok(())
}

/// A value that must not be read as an option of the CLI, nor hold a NUL.
fn plain(what: &str, v: &str) -> Result<(), WfError> {
    if v.is_empty() || v.starts_with('-') || v.contains('\0') || v.contains('\n') {
        return Err(WfError::configuration(format!(
            "run container: {what} {v:?} is not allowed (empty, a leading '-', or a control \
             character)"
        )));
    }
    Ok(())
}

/// The container's default name: after the task run, so a re-run gets a new one.
fn default_name(ctx: &EffectCtx) -> String {
    let id: String = ctx
        .instance_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("kflow-{id}-{}-{}", ctx.effect_id, ctx.attempt)
}

fn port(what: &str, v: &str) -> Result<String, WfError> {
    let (num, proto) = match v.split_once('/') {
        Some((n, p)) if matches!(p, "tcp" | "udp") => (n, Some(p)),
        Some(_) => {
            return Err(WfError::configuration(format!(
                "run container: ports: {what} {v:?} is not PORT or PORT/tcp|udp"
            )));
        }
        None => (v, None),
    };
    match num.parse::<u16>() {
        Ok(n) if n > 0 => Ok(match proto {
            Some(p) => format!("{n}/{p}"),
            None => n.to_string(),
        }),
        _ => Err(WfError::configuration(format!(
            "run container: ports: {what} {v:?} is not a port number"
        ))),
    }
}

/// The `run` arguments of the CLI for `c`.
pub(crate) fn run_argv(
    c: &ContainerProgram,
    name: &str,
    ctx: &EffectCtx,
    args: &[String],
    env: &[(String, String)],
    stdin: bool,
    cfg: &ContainerConfig,
) -> Result<Vec<String>, WfError> {
    plain("the image", &c.image)?;
    plain("the container name", name)?;
    let pull = match c.pull_policy.as_str() {
        "always" => "always",
        "never" => "never",
        _ => "missing",
    };
    let mut a: Vec<String> = vec![
        "run".into(),
        "--name".into(),
        name.into(),
        "--pull".into(),
        pull.into(),
        "--label".into(),
        format!("kflow.instance={}", ctx.instance_id),
        "--label".into(),
        format!("kflow.task={}", ctx.task),
        "--security-opt".into(),
        "no-new-privileges".into(),
    ];
    if c.cleanup == "always" {
        a.push("--rm".into());
    }
    if stdin {
        a.push("-i".into());
    }
    for (k, v) in env {
        a.push("-e".into());
        a.push(format!("{k}={v}"));
    }
    a.push("-e".into());
    a.push(format!("KFLOW_IDEMPOTENCY_KEY={}", ctx.idempotency_key()));
    a.push("-e".into());
    a.push(format!("KFLOW_ATTEMPT={}", ctx.attempt));
    for (host, inner) in &c.ports {
        let host = port("host port", host)?;
        let inner = port("container port", &crate::http::text_of(inner))?;
        if host.contains('/') {
            return Err(WfError::configuration(format!(
                "run container: ports: the host port {host:?} takes no protocol (put it on the container's)"
            )));
        }
        a.push("-p".into());
        a.push(format!("127.0.0.1:{host}:{inner}"));
    }
    for (host, inner) in &c.volumes {
        let inner = crate::http::text_of(inner);
        let host_path = std::path::Path::new(host);
        let clean = host_path.is_absolute()
            && !host_path
                .components()
                .any(|p| matches!(p, std::path::Component::ParentDir));
        if !clean || !inner.starts_with('/') || host.contains(':') || inner.contains(':') {
            return Err(WfError::configuration(format!(
                "run container: volumes: {host:?} -> {inner:?}: both must be absolute paths, \
                 without '..' or ':'"
            )));
        }
        if !cfg.allow_volumes.iter().any(|d| host_path.starts_with(d)) {
            return Err(WfError::standard(
                kflow_effects::errors::AUTHORIZATION,
                403,
                "Volume not allowed",
                format!(
                    "run container: the host path {host:?} may not be mounted (the server's \
                     containers.allow_volumes does not include it)"
                ),
            ));
        }
        a.push("-v".into());
        a.push(format!("{host}:{inner}"));
    }
    match &c.command {
        Some(cmd) => {
            if cmd.contains('\0') {
                return Err(WfError::configuration(
                    "run container: the command contains a NUL character",
                ));
            }
            a.extend(["--entrypoint".into(), "/bin/sh".into(), c.image.clone()]);
            a.extend(["-c".into(), cmd.clone(), "sh".into()]);
        }
        None => a.push(c.image.clone()),
    }
    a.extend(args.iter().cloned());
    Ok(a)
}

/// Removes the container unless the run ended: a cancelled or timed-out task's container is
/// stopped and removed (the CLI's end does not stop it).
struct Remove {
    rt: PathBuf,
    cfg: ContainerConfig,
    name: String,
    armed: bool,
}

impl Drop for Remove {
    fn drop(&mut self) {
        if self.armed {
            remove_later(self.rt.clone(), self.cfg.clone(), self.name.clone(), None);
        }
    }
}

/// `rm -f` the container (after `delay`), in the background.
fn remove_later(rt: PathBuf, cfg: ContainerConfig, name: String, delay: Option<Duration>) {
    let Ok(h) = tokio::runtime::Handle::try_current() else {
        return;
    };
    h.spawn(async move {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut cmd = command(&rt, &cfg);
        cmd.args(["rm", "-f", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = tokio::time::timeout(Duration::from_secs(60), cmd.status()).await;
    });
}

pub(crate) async fn perform(
    cfg: &ExecConfig,
    ctx: &EffectCtx,
    req: &ProcessRequest,
    c: &ContainerProgram,
) -> Result<Value, WfError> {
    let cc = &cfg.containers;
    let args = process::arguments(&req.arguments)?;
    let env = process::environment(&req.environment)?;
    let name = c.name.clone().unwrap_or_else(|| default_name(ctx));
    let argv = run_argv(c, &name, ctx, &args, &env, req.stdin.is_some(), cc)?;
    let rt = runtime(cc)?;
    probe(&rt, cc).await?;
    let mut cmd = command(&rt, cc);
    cmd.args(&argv).process_group(0).kill_on_drop(true);
    process::pipes(&mut cmd, req);
    let mut child = cmd.spawn().map_err(|e| {
        WfError::runtime(format!(
            "run container: starting {} failed: {e}",
            rt.display()
        ))
    })?;
    let mut remove = Remove {
        rt: rt.clone(),
        cfg: cc.clone(),
        name: name.clone(),
        armed: true,
    };
    let after = match c.cleanup.as_str() {
        "eventually" => Some(Duration::from_millis(c.cleanup_after_ms.unwrap_or(0))),
        _ => None,
    };
    if !req.await_ {
        let stdin = child.stdin.take();
        let data = req.stdin.clone();
        tokio::spawn(async move {
            process::feed(stdin, data.as_deref()).await;
            let _ = child.wait().await;
            remove.armed = false;
            if let Some(d) = after {
                remove_later(
                    remove.rt.clone(),
                    remove.cfg.clone(),
                    remove.name.clone(),
                    Some(d),
                );
            }
        });
        return Ok(Value::Null);
    }
    let limit = cfg.process_output_limit;
    let mut out = Capture::new(limit);
    let mut err = Capture::new(limit);
    let pgid = child.id();
    let run = process::run_to_end(&mut child, pgid, req.stdin.as_deref(), &mut out, &mut err);
    let status = match cfg.process_timeout {
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(s) => s,
            Err(_) => {
                return Err(WfError::timeout(format!(
                    "run container: the container did not finish within {} s (it is removed)",
                    t.as_secs_f64()
                )));
            }
        },
        None => run.await,
    };
    remove.armed = false;
    if let Some(d) = after {
        remove_later(rt.clone(), cc.clone(), name.clone(), Some(d));
    }
    let status = status
        .map_err(|e| WfError::runtime(format!("run container: waiting for the CLI failed: {e}")))?;
    if status.code() == Some(125) {
        let text = err.text();
        let why = text.trim();
        return Err(WfError::runtime(format!(
            "run container: {} could not create the container {name:?} from {:?}: {}",
            runtime_name(&rt),
            c.image,
            if why.is_empty() {
                "no reason given"
            } else {
                why
            }
        )));
    }
    process::shape(req.return_, status, out, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> EffectCtx {
        EffectCtx {
            instance_id: "i/1".into(),
            effect_id: 7,
            task: "/do/0/t".into(),
            attempt: 2,
            namespace: String::new(),
            limits: Default::default(),
            traceparent: None,
        }
    }

    fn program(v: serde_json::Value) -> ContainerProgram {
        let mut base = serde_json::json!({
            "image": "alpine", "name": null, "command": null, "ports": {}, "volumes": {},
            "pull_policy": "ifNotPresent", "cleanup": "never", "cleanup_after_ms": null,
        });
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            for (k, v) in o {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).expect("a container program")
    }

    #[test]
    fn the_cli_arguments_follow_the_spec() {
        let c = program(serde_json::json!({
            "command": "input=$(cat)\necho \"$input $1\"", "ports": {"8080": 80, "5353": "53/udp"},
            "pull_policy": "always", "cleanup": "always"}));
        let a = run_argv(
            &c,
            &default_name(&ctx()),
            &ctx(),
            &["Foo".into()],
            &[("A".into(), "b c".into())],
            true,
            &ContainerConfig::default(),
        )
        .expect("argv");
        let s = a.join(" ");
        for want in [
            "run --name kflow-i-1-7-2 --pull always",
            "--label kflow.instance=i/1 --label kflow.task=/do/0/t",
            "--security-opt no-new-privileges --rm -i -e A=b c",
            "-e KFLOW_IDEMPOTENCY_KEY=i/1-7 -e KFLOW_ATTEMPT=2",
            "-p 127.0.0.1:8080:80 -p 127.0.0.1:5353:53/udp",
            "--entrypoint /bin/sh alpine -c input=$(cat)\necho \"$input $1\" sh Foo",
        ] {
            assert!(s.contains(want), "{want:?} in {s:?}");
        }
        // Without a command: the image's own, with the arguments; kept after the run.
        let a = run_argv(
            &program(serde_json::json!({})),
            "n",
            &ctx(),
            &["x".into()],
            &[],
            false,
            &ContainerConfig::default(),
        )
        .unwrap();
        assert!(a.ends_with(&["alpine".into(), "x".into()]) && !a.contains(&"--rm".to_string()));
    }

    #[test]
    fn option_injection_and_volumes_outside_the_allowed_ones_are_refused() {
        let cfg = ContainerConfig {
            allow_volumes: vec!["/srv/data".into()],
            ..Default::default()
        };
        let bad = |v: serde_json::Value, name: &str| {
            run_argv(&program(v), name, &ctx(), &[], &[], false, &cfg)
                .err()
                .map(|e| e.detail.unwrap_or_default())
                .unwrap_or_default()
        };
        assert!(bad(serde_json::json!({"image": "--privileged"}), "n").contains("the image"));
        assert!(bad(serde_json::json!({}), "-v/:/host").contains("the container name"));
        assert!(
            bad(serde_json::json!({"volumes": {"/etc": "/x"}}), "n").contains("may not be mounted")
        );
        assert!(
            bad(
                serde_json::json!({"volumes": {"/srv/data/../../etc": "/x"}}),
                "n"
            )
            .contains("without '..'")
        );
        assert!(bad(serde_json::json!({"ports": {"80": "http"}}), "n").contains("not a port"));
        let ok = run_argv(
            &program(serde_json::json!({"volumes": {"/srv/data/in": "/in"}})),
            "n",
            &ctx(),
            &[],
            &[],
            false,
            &cfg,
        )
        .unwrap();
        assert!(ok.join(" ").contains("-v /srv/data/in:/in"));
    }

    #[tokio::test]
    async fn no_runtime_on_the_path_is_said_so() {
        let dir = std::env::temp_dir().join(format!("kflow-no-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = ContainerConfig {
            search_path: Some(dir.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let e = runtime(&cfg).unwrap_err();
        assert!(
            e.detail
                .unwrap_or_default()
                .contains("no container runtime found")
        );
        let cfg = ContainerConfig {
            runtime: Some("/nonexistent/podman".into()),
            ..Default::default()
        };
        let e = runtime(&cfg).unwrap_err();
        assert!(
            e.detail
                .unwrap_or_default()
                .contains("'/nonexistent/podman' (containers.runtime) was not found")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

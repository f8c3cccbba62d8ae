//! `run: shell` and `run: script`: child processes, isolated and always cleaned up.
//!
//! A shell command runs as `/bin/sh -c <command> sh <arguments...>`, so the arguments are `$1`,
//! `$2`, ... A script is written to `script.mjs` (JavaScript, run by Node.js as an ES module so
//! that `import` works) or `script.py` (Python) in the working directory and run as
//! `<interpreter> script.<ext> <arguments...>`; interpreters are looked up by
//! `ExecConfig::node`/`python` (a path, or a name searched in the child's `PATH` and then in
//! kflow's own `PATH`). The spec types `arguments` as a list; an object is accepted too and
//! passes one `key=value` item per entry, in order. Non-string items are passed as JSON text.
//!
//! Isolation: every process gets a fresh private working directory (mode 0700) under
//! `ExecConfig::work_root`, removed afterwards; a clean environment with only
//! `PATH=/usr/local/bin:/usr/bin:/bin`, `HOME` and `TMPDIR` (the working directory),
//! `LANG=C.UTF-8`, the task's `environment` entries (stringified; they may override the former)
//! and, last, `KFLOW_IDEMPOTENCY_KEY` and `KFLOW_ATTEMPT`; and its own process group. When the
//! process ends, when it times out (`ExecConfig::process_timeout`) or when the future is dropped
//! (the task was cancelled or timed out), the whole group is killed with SIGKILL, so background
//! children (`cmd &`) do not outlive the task. The workspace forbids `unsafe`, so the group kill
//! goes through the shell's `kill` builtin, and resource limits (rlimits, which need `pre_exec`)
//! are not applied yet.
//!
//! stdin is the task's `stdin` (closed at once when there is none). stdout and stderr are each
//! captured up to `ExecConfig::process_output_limit` bytes; the rest is read and dropped so the
//! child never blocks on a full pipe. Output: `stdout` (default) and `stderr` are the captured
//! text with one trailing newline removed (also in `all`), `code` the exit code (128 + n when
//! killed by signal n), `all` `{code, stdout, stderr}`, `none` null. A non-zero exit code is a
//! runtime error unless `return` is `code` or `all`; its detail has the code and the end of
//! stderr. With `await: false` the process is started (same isolation) and left running; the
//! executor reaps it and cleans up in the background, and the answer is null at once.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use kflow_effects::ReturnMode;
use kflow_effects::WfError;
use kflow_effects::effect::{ProcessRequest, Program};

use crate::{EffectCtx, ExecConfig};

/// The child's `PATH` unless the task's environment sets one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const SHELL: &str = "/bin/sh";
/// How long output is still read after the process exited and its group was killed (for
/// descendants that left the group but keep the pipes open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How much of stderr goes into the error raised for a failed process.
const STDERR_EXCERPT: usize = 1024;

pub(crate) async fn perform(
    cfg: &ExecConfig,
    ctx: &EffectCtx,
    req: &ProcessRequest,
) -> Result<Value, WfError> {
    if let Some(sb) = &cfg.sandbox
        && sb.forbid_namespaces.iter().any(|n| *n == ctx.namespace)
    {
        return Err(WfError::standard(
            kflow_effects::errors::AUTHORIZATION,
            403,
            "Processes forbidden",
            format!(
                "run shell, run script and run container are forbidden in namespace '{}' by the server's settings",
                ctx.namespace
            ),
        ));
    }
    if let Program::Container(c) = &req.program {
        return crate::container::perform(cfg, ctx, req, c).await;
    }
    let args = arguments(&req.arguments)?;
    let user_env = environment(&req.environment)?;

    // Resolve the program before creating anything on disk.
    let (program, script) = match &req.program {
        Program::Shell { command } => {
            if command.contains('\0') {
                return Err(WfError::configuration(
                    "run shell: the command contains a NUL character",
                ));
            }
            (PathBuf::from(SHELL), None)
        }
        Program::Script { language, code } => {
            let (binary, file) = match language.trim().to_ascii_lowercase().as_str() {
                "js" | "javascript" => (&cfg.node, "script.mjs"),
                "python" | "py" => (&cfg.python, "script.py"),
                other => {
                    return Err(WfError::configuration(format!(
                        "run script: language '{other}' is not supported (supported: js, python)"
                    )));
                }
            };
            let path = find_program(binary).ok_or_else(|| {
                WfError::configuration(format!(
                    "run script: the {language} interpreter '{binary}' was not found (searched {DEFAULT_PATH} and kflow's PATH)"
                ))
            })?;
            (path, Some((file, code.as_str())))
        }
        Program::Container(_) => return Err(WfError::runtime("run: a container is not a process")),
    };

    let lease = match cfg.sandbox.as_ref().map(|s| s.user) {
        Some(crate::TaskUser::Fixed(u, g)) => Some(UserLease::fixed(u, g)),
        Some(crate::TaskUser::Pool { base, size }) => Some(UserLease::take(base, size)?),
        _ => None,
    };
    let owner = lease.as_ref().map(|l| (l.uid, l.gid));
    let mut guard = Sandbox::create(&cfg.work_root, owner)?;
    guard.launcher = cfg.sandbox.is_some();
    guard.user = lease;
    let dir = guard.dir.clone();
    let mut argv: Vec<String> = Vec::new();
    match (&req.program, script) {
        (Program::Shell { command }, _) => {
            argv.extend(["-c".to_string(), command.clone(), "sh".to_string()]);
        }
        (_, Some((file, code))) => {
            write_private(&dir.join(file), code.as_bytes(), owner).map_err(|e| {
                WfError::runtime(format!("run script: cannot write the script file: {e}"))
            })?;
            argv.push(file.to_string());
        }
        (_, None) => return Err(WfError::runtime("run: no program")),
    }
    argv.extend(args);
    let (program, argv): (PathBuf, Vec<std::ffi::OsString>) = match &cfg.sandbox {
        None => (program, argv.into_iter().map(Into::into).collect()),
        Some(sb) => {
            let mut a: Vec<std::ffi::OsString> = vec!["__sandbox".into()];
            a.extend(sb.options(&dir, &ctx.namespace, owner, &ctx.limits));
            a.push("--".into());
            a.push(program.into_os_string());
            a.extend(argv.into_iter().map(Into::into));
            (sb.launcher.clone(), a)
        }
    };

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &dir)
        .env("TMPDIR", &dir)
        .env("LANG", "C.UTF-8");
    for (k, v) in &user_env {
        cmd.env(k, v);
    }
    cmd.env("KFLOW_IDEMPOTENCY_KEY", ctx.idempotency_key())
        .env("KFLOW_ATTEMPT", ctx.attempt.to_string())
        .current_dir(&dir)
        .process_group(0)
        // The sandbox launcher is stopped by the guard with SIGTERM (it then kills everything
        // below it); a SIGKILL would orphan what escaped the group.
        .kill_on_drop(cfg.sandbox.is_none());
    pipes(&mut cmd, req);
    let mut child = cmd.spawn().map_err(|e| spawn_error(&program, &e))?;
    guard.pgid = child.id();

    if !req.await_ {
        let stdin = child.stdin.take();
        let data = req.stdin.clone();
        let limit = cfg.process_timeout;
        tokio::spawn(async move {
            let guard = guard;
            let run = async {
                feed(stdin, data.as_deref()).await;
                let _ = child.wait().await;
            };
            match limit {
                Some(t) => {
                    let _ = tokio::time::timeout(t, run).await;
                }
                None => run.await,
            }
            guard.finish().await;
        });
        return Ok(Value::Null);
    }

    let limit = cfg.process_output_limit;
    let mut out = Capture::new(limit);
    let mut err = Capture::new(limit);
    let run = run_to_end(
        &mut child,
        guard.pgid,
        req.stdin.as_deref(),
        &mut out,
        &mut err,
    );
    let status = match cfg.process_timeout {
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(s) => s,
            Err(_) => {
                // Dropping the guard kills the group and removes the directory.
                drop(child);
                drop(guard);
                return Err(WfError::timeout(format!(
                    "the process did not finish within {} s",
                    t.as_secs_f64()
                )));
            }
        },
        None => run.await,
    };
    guard.finish().await;
    let status =
        status.map_err(|e| WfError::runtime(format!("waiting for the process failed: {e}")))?;
    shape(req.return_, status, out, err)
}

/// stdin piped when the task has some (else closed); stdout and stderr piped when the task
/// waits for the result (else dropped).
pub(crate) fn pipes(cmd: &mut tokio::process::Command, req: &ProcessRequest) {
    cmd.stdin(if req.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    if req.await_ {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
}

/// Waits for the process while feeding stdin and draining both pipes; kills the group as soon as
/// the leader exits.
pub(crate) async fn run_to_end(
    child: &mut tokio::process::Child,
    pgid: Option<u32>,
    input: Option<&str>,
    out: &mut Capture,
    err: &mut Capture,
) -> io::Result<ExitStatus> {
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let streams = async {
        tokio::join!(out.fill(stdout), err.fill(stderr), feed(stdin, input));
    };
    let waiter = async {
        let st = child.wait().await;
        if let Some(p) = pgid {
            kill_group(p).await;
        }
        st
    };
    tokio::pin!(streams);
    tokio::pin!(waiter);
    enum First {
        Exited(io::Result<ExitStatus>),
        Drained,
    }
    let first = tokio::select! {
        st = &mut waiter => First::Exited(st),
        _ = &mut streams => First::Drained,
    };
    match first {
        First::Exited(st) => {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut streams).await;
            st
        }
        First::Drained => waiter.await,
    }
}

pub(crate) async fn feed(stdin: Option<tokio::process::ChildStdin>, data: Option<&str>) {
    if let Some(mut w) = stdin {
        if let Some(d) = data {
            // A child that exits without reading its input closes the pipe: not an error.
            let _ = w.write_all(d.as_bytes()).await;
            let _ = w.shutdown().await;
        }
        drop(w);
    }
}

/// Up to `limit` bytes of a stream; the rest is read and dropped.
pub(crate) struct Capture {
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Capture {
        Capture {
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, r: Option<R>) {
        let Some(mut r) = r else { return };
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    let room = self.limit.saturating_sub(self.buf.len());
                    if n > room {
                        self.truncated = true;
                    }
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    pub(crate) fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.buf).into_owned();
        match s.strip_suffix('\n') {
            Some(t) => t.strip_suffix('\r').unwrap_or(t).to_string(),
            None => s,
        }
    }
}

fn exit_code(status: ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => i64::from(c),
        (None, Some(sig)) => 128 + i64::from(sig),
        (None, None) => -1,
    }
}

pub(crate) fn shape(
    mode: ReturnMode,
    status: ExitStatus,
    out: Capture,
    err: Capture,
) -> Result<Value, WfError> {
    let code = exit_code(status);
    if code != 0 && !matches!(mode, ReturnMode::Code | ReturnMode::All) {
        let mut detail = match std::os::unix::process::ExitStatusExt::signal(&status) {
            Some(sig) => format!("the process was killed by signal {sig} (exit code {code})"),
            None => format!("the process exited with code {code}"),
        };
        let tail = tail(&err.text(), STDERR_EXCERPT);
        if !tail.trim().is_empty() {
            detail.push_str("; stderr: ");
            detail.push_str(tail.trim());
        }
        return Err(WfError::runtime(detail));
    }
    Ok(match mode {
        ReturnMode::Stdout => Value::String(out.text()),
        ReturnMode::Stderr => Value::String(err.text()),
        ReturnMode::Code => Value::from(code),
        ReturnMode::All => json!({ "code": code, "stdout": out.text(), "stderr": err.text() }),
        ReturnMode::None => Value::Null,
    })
}

/// The last `max` bytes of `s`, cut at a character boundary, with "…" when cut.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

pub(crate) fn arguments(v: &Value) -> Result<Vec<String>, WfError> {
    let args: Vec<String> = match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().map(crate::http::text_of).collect(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::http::text_of(v)))
            .collect(),
        other => vec![crate::http::text_of(other)],
    };
    if args.iter().any(|a| a.contains('\0')) {
        return Err(WfError::configuration(
            "run: an argument contains a NUL character",
        ));
    }
    Ok(args)
}

pub(crate) fn environment(env: &Map<String, Value>) -> Result<Vec<(String, String)>, WfError> {
    let mut out = Vec::new();
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(WfError::configuration(format!(
                "run: '{k}' is not a valid environment variable name"
            )));
        }
        if v.is_null() {
            continue;
        }
        let text = crate::http::text_of(v);
        if text.contains('\0') {
            return Err(WfError::configuration(format!(
                "run: environment variable '{k}' contains a NUL character"
            )));
        }
        out.push((k.clone(), text));
    }
    Ok(out)
}

fn spawn_error(program: &Path, e: &io::Error) -> WfError {
    match e.kind() {
        io::ErrorKind::NotFound => {
            WfError::configuration(format!("run: '{}' was not found", program.display()))
        }
        io::ErrorKind::PermissionDenied => WfError::configuration(format!(
            "run: '{}' cannot be executed (permission denied)",
            program.display()
        )),
        _ => WfError::runtime(format!("run: starting '{}' failed: {e}", program.display())),
    }
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds an interpreter: a path as is, a name in the child's `PATH`, then in kflow's.
fn find_program(name: &str) -> Option<PathBuf> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let own = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(DEFAULT_PATH).chain(std::env::split_paths(&own));
    dirs.map(|d| d.join(name))
        .find(|p| p.is_absolute() && is_executable(p))
}

fn write_private(path: &Path, data: &[u8], owner: Option<(u32, u32)>) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Sends SIGKILL to a process group.
async fn kill_group(pgid: u32) {
    kill_group_blocking(pgid);
}

fn kill_group_blocking(pgid: u32) {
    if let Some(p) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// Asks the sandbox launcher to end its task: it kills everything below it (escapees from the
/// group included) and exits; the group is killed anyway a second later.
fn stop_launcher(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        kill_group_blocking(pid);
    });
}

/// The private working directory and the process group; dropping it kills the group and
/// removes the directory.
struct Sandbox {
    dir: PathBuf,
    pgid: Option<u32>,
    done: bool,
    /// The process is the sandbox launcher (stopped with SIGTERM first).
    launcher: bool,
    /// The task's user, given back to the pool after the task.
    user: Option<UserLease>,
}

/// The uids of the pool that running tasks hold.
static POOL: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A task's user: from the pool (given back when dropped, once nothing of the task can still
/// run as it) or fixed.
struct UserLease {
    uid: u32,
    gid: u32,
    pooled: bool,
}

impl UserLease {
    fn fixed(uid: u32, gid: u32) -> UserLease {
        UserLease {
            uid,
            gid,
            pooled: false,
        }
    }

    fn take(base: u32, size: u32) -> Result<UserLease, WfError> {
        let mut held = POOL.lock().unwrap_or_else(|p| p.into_inner());
        // Each process starts at its own place in the range, so that two servers (or a server
        // and a remote worker) on one host rarely hand out the same uid: tasks sharing a uid
        // would share its process limit.
        let size = size.max(1);
        let start = (std::process::id().wrapping_mul(2_654_435_761)) % size;
        let uid = (0..size)
            .map(|i| base.saturating_add((start + i) % size))
            .find(|u| !held.contains(u))
            .ok_or_else(|| {
                WfError::runtime(format!(
                    "run: all {size} task users are in use: too many processes at once"
                ))
            })?;
        held.insert(uid);
        Ok(UserLease {
            uid,
            gid: uid,
            pooled: true,
        })
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        if self.pooled {
            let uid = self.uid;
            // Given back a little later: the launcher may still be killing the task's last
            // processes.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                POOL.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
            });
        }
    }
}

impl Sandbox {
    fn create(root: &Path, owner: Option<(u32, u32)>) -> Result<Sandbox, WfError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::create_dir_all(root).map_err(|e| {
            WfError::runtime(format!(
                "run: cannot create the work root {}: {e}",
                root.display()
            ))
        })?;
        let dir = root.join(format!("kflow-run-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                WfError::runtime(format!(
                    "run: cannot create a working directory in {}: {e}",
                    root.display()
                ))
            })?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| {
                WfError::runtime(format!(
                    "run: cannot give the working directory to user {uid}: {e}"
                ))
            })?;
        }
        Ok(Sandbox {
            dir,
            pgid: None,
            done: false,
            launcher: false,
            user: None,
        })
    }

    /// Kills what is left of the group and removes the directory.
    async fn finish(mut self) {
        if let Some(p) = self.pgid {
            kill_group(p).await;
        }
        if tokio::fs::remove_dir_all(&self.dir).await.is_err() {
            // A dying process may still be writing: retry later.
            remove_later(self.dir.clone());
        }
        self.done = true;
    }
}

fn remove_later(dir: PathBuf) {
    std::thread::spawn(move || {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
                return;
            }
        }
    });
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.pgid {
            Some(p) if self.launcher => stop_launcher(p),
            Some(p) => kill_group_blocking(p),
            None => {}
        }
        if std::fs::remove_dir_all(&self.dir).is_err() && self.dir.exists() {
            remove_later(self.dir.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_from_list_and_map() {
        assert_eq!(
            arguments(&json!(["a", 1, true, null])).unwrap(),
            vec!["a", "1", "true", ""]
        );
        assert_eq!(
            arguments(&json!({"x": "1", "y": 2})).unwrap(),
            vec!["x=1", "y=2"]
        );
        assert!(arguments(&json!(["a\u{0}b"])).is_err());
    }

    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("ééé", 3), "…é");
    }
}

//! `kflow __sandbox`: the launcher a shell or script task runs under (hidden verb; the server
//! re-executes its own binary, since the workspace forbids the `unsafe` a `pre_exec` hook
//! needs).
//!
//! Stage 1 (the launcher) becomes a child subreaper and asks for SIGTERM when the server dies;
//! it starts stage 2 (through `unshare --net` when the task gets no network), waits for it,
//! then kills every process left below it — background children, `setsid` escapees (orphans
//! are re-parented to a subreaper, so they stay below it) — and exits with the task's code. On
//! SIGTERM (the task was cancelled or timed out, or the server died) it does the same at once.
//!
//! Stage 2 restricts itself and then `exec`s the program: Landlock (the file system: system
//! directories read-only, the private working directory read-write; signals and abstract
//! sockets scoped to the sandbox; with no network, TCP bind and connect denied too), the
//! resource limits (CPU seconds, address space, processes, file size, open files), and, when
//! asked (a server running as root), another user.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// What the launcher was told.
#[derive(Debug, Default, Clone)]
struct Spec {
    stage2: bool,
    rw: Vec<PathBuf>,
    ro: Vec<PathBuf>,
    cpu_seconds: Option<u64>,
    memory_bytes: Option<u64>,
    processes: Option<u64>,
    file_size_bytes: Option<u64>,
    open_files: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    no_network: bool,
    landlock: bool,
    program: Vec<OsString>,
}

fn parse(args: &[OsString]) -> Result<Spec, String> {
    let mut s = Spec::default();
    let mut i = 0;
    let num = |v: Option<&OsString>, name: &str| -> Result<u64, String> {
        v.and_then(|v| v.to_str())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number"))
    };
    while i < args.len() {
        let a = args[i].to_str().unwrap_or("");
        let next = args.get(i + 1);
        match a {
            "--" => {
                s.program = args[i + 1..].to_vec();
                break;
            }
            "--stage2" => s.stage2 = true,
            "--no-network" => s.no_network = true,
            "--landlock" => s.landlock = true,
            "--rw" | "--ro" => {
                let p = PathBuf::from(next.ok_or(format!("{a} needs a path"))?);
                if a == "--rw" {
                    s.rw.push(p)
                } else {
                    s.ro.push(p)
                }
                i += 1;
            }
            "--cpu" => {
                s.cpu_seconds = Some(num(next, a)?);
                i += 1;
            }
            "--memory" => {
                s.memory_bytes = Some(num(next, a)?);
                i += 1;
            }
            "--processes" => {
                s.processes = Some(num(next, a)?);
                i += 1;
            }
            "--file-size" => {
                s.file_size_bytes = Some(num(next, a)?);
                i += 1;
            }
            "--open-files" => {
                s.open_files = Some(num(next, a)?);
                i += 1;
            }
            "--uid" => {
                s.uid = Some(num(next, a)? as u32);
                i += 1;
            }
            "--gid" => {
                s.gid = Some(num(next, a)? as u32);
                i += 1;
            }
            other => return Err(format!("unknown sandbox option {other:?}")),
        }
        i += 1;
    }
    if s.program.is_empty() {
        return Err("no program after --".into());
    }
    Ok(s)
}

/// Entry point of `kflow __sandbox ARGS...`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let spec = match parse(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kflow sandbox: {e}");
            return ExitCode::from(125);
        }
    };
    if spec.stage2 {
        let e = stage2(&spec);
        eprintln!("kflow sandbox: {e}");
        return ExitCode::from(126);
    }
    stage1(&spec, &args)
}

fn stage1(spec: &Spec, args: &[OsString]) -> ExitCode {
    use rustix::process::{Signal, getppid, set_child_subreaper, set_parent_process_death_signal};
    let _ = set_child_subreaper(Some(rustix::process::getpid()));
    let _ = set_parent_process_death_signal(Some(Signal::TERM));
    if getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        // The server is already gone.
        return ExitCode::from(137);
    }
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut argv: Vec<OsString> = Vec::new();
    let program = if spec.no_network {
        argv.extend(["--net".into()]);
        if !rustix::process::getuid().is_root() {
            argv.extend(["--user".into(), "--map-root-user".into()]);
        }
        argv.extend(["--".into(), me.clone().into_os_string()]);
        PathBuf::from("unshare")
    } else {
        me
    };
    argv.push("__sandbox".into());
    argv.push("--stage2".into());
    argv.extend(args.iter().cloned());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kflow sandbox: {e}");
            return ExitCode::from(125);
        }
    };
    let code = rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut child = match tokio::process::Command::new(&program).args(&argv).spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kflow sandbox: cannot start {}: {e}", program.display());
                return 125;
            }
        };
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return 125;
        };
        let code = tokio::select! {
            st = child.wait() => match st {
                Ok(s) => exit_code(s),
                Err(_) => 125,
            },
            _ = term.recv() => 143,
            _ = int.recv() => 130,
            _ = hup.recv() => 129,
        };
        code
    });
    kill_descendants();
    ExitCode::from(code)
}

fn exit_code(s: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 125,
    }
}

/// Kills every process below this one and reaps it, until none is left.
fn kill_descendants() {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    let me = rustix::process::getpid().as_raw_nonzero().get();
    for _ in 0..200 {
        let below = descendants(me);
        for pid in &below {
            if let Some(p) = Pid::from_raw(*pid) {
                let _ = kill_process(p, Signal::KILL);
            }
        }
        // Reap whatever is ours (orphans re-parented to us included).
        loop {
            match waitpid(None, WaitOptions::NOHANG) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
        if below.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Pids whose chain of parents reaches `root`, read from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("");
            let ppid: i32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if state != "Z" || ppid == root {
                parent.insert(pid, ppid);
            }
        }
    }
    parent
        .keys()
        .copied()
        .filter(|&p| {
            let mut cur = p;
            for _ in 0..4096 {
                match parent.get(&cur) {
                    Some(&pp) if pp == root => return true,
                    Some(&pp) if pp > 1 => cur = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// Restricts this process and `exec`s the program; returns only on failure.
fn stage2(spec: &Spec) -> String {
    use std::os::unix::process::CommandExt;
    if spec.landlock
        && let Err(e) = landlock(spec)
    {
        return format!("cannot apply Landlock: {e}");
    }
    if let Err(e) = limits(spec) {
        return format!("cannot set resource limits: {e}");
    }
    if let Some(gid) = spec.gid {
        let g = rustix::process::Gid::from_raw(gid);
        if let Err(e) = rustix::thread::set_thread_groups(&[g]) {
            return format!("cannot drop supplementary groups: {e}");
        }
        if let Err(e) = rustix::thread::set_thread_gid(g) {
            return format!("cannot switch to group {gid}: {e}");
        }
    }
    if let Some(uid) = spec.uid
        && let Err(e) = rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))
    {
        return format!("cannot switch to user {uid}: {e}");
    }
    let err = std::process::Command::new(&spec.program[0])
        .args(&spec.program[1..])
        .exec();
    format!("cannot run {:?}: {err}", spec.program[0])
}

fn limits(spec: &Spec) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let set = |r: Resource, soft: u64, hard: u64| {
        setrlimit(
            r,
            Rlimit {
                current: Some(soft),
                maximum: Some(hard),
            },
        )
    };
    if let Some(s) = spec.cpu_seconds {
        // The soft limit sends SIGXCPU, the hard one SIGKILL a second later.
        set(Resource::Cpu, s, s + 1)?;
    }
    if let Some(b) = spec.memory_bytes {
        set(Resource::As, b, b)?;
    }
    if let Some(n) = spec.processes {
        set(Resource::Nproc, n, n)?;
    }
    if let Some(b) = spec.file_size_bytes {
        set(Resource::Fsize, b, b)?;
    }
    if let Some(n) = spec.open_files {
        set(Resource::Nofile, n, n)?;
    }
    Ok(())
}

fn landlock(spec: &Spec) -> Result<(), landlock::RulesetError> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
        path_beneath_rules,
    };
    let abi = ABI::V6;
    let mut rs = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?;
    if spec.no_network {
        rs = rs.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    let devices = [
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/random",
        "/dev/full",
    ];
    rs.create()?
        .add_rules(path_beneath_rules(&spec.ro, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            devices,
            AccessFs::from_read(abi) | AccessFs::WriteFile,
        ))?
        .add_rules(path_beneath_rules(&spec.rw, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_bad_ones_are_named() {
        let args: Vec<OsString> = [
            "--cpu",
            "5",
            "--rw",
            "/w",
            "--no-network",
            "--",
            "/bin/sh",
            "-c",
            "x",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let s = parse(&args).unwrap();
        assert_eq!(s.cpu_seconds, Some(5));
        assert!(s.no_network);
        assert_eq!(s.program.len(), 3);
        assert!(parse(&["--cpu".into(), "x".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
        assert!(parse(&[]).is_err());
    }
}

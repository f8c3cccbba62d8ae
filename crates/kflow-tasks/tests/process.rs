//! `run: shell` and `run: script` with real child processes.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kflow_effects::ReturnMode;
use kflow_effects::effect::{ProcessRequest, Program};
use kflow_effects::{Effect, WfError};
use kflow_tasks::{EffectCtx, ExecConfig, Executor};

use support::{ctx, map};

fn shell(command: &str) -> ProcessRequest {
    ProcessRequest {
        program: Program::Shell {
            command: command.into(),
        },
        arguments: json!([]),
        environment: Default::default(),
        stdin: None,
        return_: ReturnMode::Stdout,
        await_: true,
    }
}

fn script(language: &str, code: &str) -> ProcessRequest {
    ProcessRequest {
        program: Program::Script {
            language: language.into(),
            code: code.into(),
        },
        ..shell("")
    }
}

async fn run(req: ProcessRequest) -> Result<Value, WfError> {
    Executor::new(ExecConfig::default())
        .perform(&ctx(), &Effect::Process(req))
        .await
}

fn is_type(e: &WfError, kind: &str) -> bool {
    e.type_.ends_with(&format!("/{kind}"))
}

/// A scratch directory for a test (the child cannot see the test's temp paths unless told).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kflow-tasks-proc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<u32>().ok() == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

async fn wait_for_file(p: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(p)
            && s.ends_with('\n')
        {
            return s.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_group_gone(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !group_members(pgid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "process group {pgid} survived: {:?}",
            group_members(pgid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shell_with_arguments_environment_and_stdin() {
    let mut req = shell(
        "input=$(cat)\necho \"STDIN was: $input\"\necho \"ARGS are $1 $2\"\necho \"FOO=$FOO N=$N\"",
    );
    req.arguments = json!(["Foo", "Bar baz"]);
    req.environment = map(json!({"FOO": "foo value", "N": 3}));
    req.stdin = Some("Hello World".into());
    let out = run(req).await.unwrap();
    assert_eq!(
        out,
        json!("STDIN was: Hello World\nARGS are Foo Bar baz\nFOO=foo value N=3")
    );

    // An object of arguments passes key=value items.
    let mut req = shell("printf '%s|' \"$@\"");
    req.arguments = json!({"a": "1", "b": true});
    assert_eq!(run(req).await.unwrap(), json!("a=1|b=true|"));

    // Without stdin the child reads EOF at once.
    assert_eq!(run(shell("cat; echo done")).await.unwrap(), json!("done"));
}

#[tokio::test]
async fn environment_is_clean_and_carries_kflow_variables() {
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "cargo sets this for tests"
    );
    let ctx = EffectCtx {
        instance_id: "inst-9".into(),
        effect_id: 5,
        task: "/do/0/x".into(),
        attempt: 3,
        namespace: String::new(),
        limits: Default::default(),
        traceparent: None,
    };
    let exec = Executor::new(ExecConfig::default());
    let out = exec
        .perform(&ctx, &Effect::Process(shell("env")))
        .await
        .unwrap();
    let env: Vec<(String, String)> = out
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("CARGO_MANIFEST_DIR"),
        None,
        "the test's environment must not leak: {env:?}"
    );
    assert_eq!(get("KFLOW_IDEMPOTENCY_KEY").as_deref(), Some("inst-9-5"));
    assert_eq!(get("KFLOW_ATTEMPT").as_deref(), Some("3"));
    assert_eq!(get("PATH").as_deref(), Some("/usr/local/bin:/usr/bin:/bin"));
    assert_eq!(get("LANG").as_deref(), Some("C.UTF-8"));
    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "KFLOW_IDEMPOTENCY_KEY",
        "KFLOW_ATTEMPT",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    for (k, _) in &env {
        assert!(
            allowed.contains(&k.as_str()),
            "unexpected variable {k} in {env:?}"
        );
    }
}

#[tokio::test]
async fn private_working_directory_is_removed() {
    let root = scratch("root");
    let exec = Executor::new(ExecConfig {
        work_root: root.join("nested"),
        ..ExecConfig::default()
    });
    let out = exec
        .perform(
            &ctx(),
            &Effect::Process(shell("pwd; stat -c %a .; echo \"$HOME\"; touch file; ls")),
        )
        .await
        .unwrap();
    let lines: Vec<&str> = out.as_str().unwrap().lines().collect();
    let dir = PathBuf::from(lines[0]);
    assert!(dir.starts_with(root.join("nested")), "{out}");
    assert_eq!(lines[1], "700");
    assert_eq!(lines[2], lines[0], "HOME is the working directory");
    assert_eq!(lines[3], "file");
    assert!(!dir.exists(), "the working directory is removed afterwards");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn return_modes() {
    let cmd = "echo out; echo err >&2";
    let with = |mode| ProcessRequest {
        return_: mode,
        ..shell(cmd)
    };
    assert_eq!(run(with(ReturnMode::Stdout)).await.unwrap(), json!("out"));
    assert_eq!(run(with(ReturnMode::Stderr)).await.unwrap(), json!("err"));
    assert_eq!(run(with(ReturnMode::Code)).await.unwrap(), json!(0));
    assert_eq!(
        run(with(ReturnMode::All)).await.unwrap(),
        json!({"code": 0, "stdout": "out", "stderr": "err"})
    );
    assert_eq!(run(with(ReturnMode::None)).await.unwrap(), Value::Null);
    // Only one trailing newline is removed.
    assert_eq!(run(shell("printf 'a\\n\\n'")).await.unwrap(), json!("a\n"));

    // A non-zero exit code: returned with code/all, an error otherwise.
    let failing = "echo partial; echo 'something broke' >&2; exit 3";
    assert_eq!(
        run(ProcessRequest {
            return_: ReturnMode::Code,
            ..shell(failing)
        })
        .await
        .unwrap(),
        json!(3)
    );
    assert_eq!(
        run(ProcessRequest {
            return_: ReturnMode::All,
            ..shell(failing)
        })
        .await
        .unwrap(),
        json!({"code": 3, "stdout": "partial", "stderr": "something broke"})
    );
    for mode in [ReturnMode::Stdout, ReturnMode::Stderr, ReturnMode::None] {
        let err = run(ProcessRequest {
            return_: mode,
            ..shell(failing)
        })
        .await
        .unwrap_err();
        assert!(is_type(&err, "runtime"), "{err:?}");
        let d = err.detail.unwrap();
        assert!(d.contains("code 3") && d.contains("something broke"), "{d}");
    }
}

#[tokio::test]
async fn python_script_with_arguments() {
    let mut req = script(
        "python",
        "import sys, os\nprint(' '.join(sys.argv[1:]), os.environ['X'], sys.stdin.read())",
    );
    req.arguments = json!(["hello", "world"]);
    req.environment = map(json!({"X": "x!"}));
    req.stdin = Some("in".into());
    assert_eq!(run(req).await.unwrap(), json!("hello world x! in"));
}

#[tokio::test]
async fn javascript_script_with_arguments() {
    let mut req = script(
        "js",
        "import os from 'node:os';\nconst [_, __, arg0, arg1] = process.argv;\nconsole.log('arg > ', arg0, arg1, typeof os.platform());",
    );
    req.arguments = json!(["hello", "world"]);
    assert_eq!(run(req).await.unwrap(), json!("arg >  hello world string"));
}

#[tokio::test]
async fn script_configuration_errors() {
    let err = run(script("ruby", "puts 1")).await.unwrap_err();
    assert!(is_type(&err, "configuration"), "{err:?}");
    let exec = Executor::new(ExecConfig {
        python: "no-such-python-kflow".into(),
        ..ExecConfig::default()
    });
    let err = exec
        .perform(&ctx(), &Effect::Process(script("python", "print(1)")))
        .await
        .unwrap_err();
    assert!(is_type(&err, "configuration"), "{err:?}");
    assert!(err.detail.unwrap().contains("no-such-python-kflow"));
    let mut req = shell("true");
    req.environment = map(json!({"A=B": "x"}));
    assert!(is_type(&run(req).await.unwrap_err(), "configuration"));
}

#[tokio::test]
async fn cancellation_kills_the_process_group() {
    let d = scratch("cancel");
    let pid_file = d.join("pid");
    let dir_file = d.join("dir");
    let mut req = shell("pwd > \"$2\"; echo $$ > \"$1\"; sleep 30 & sleep 30");
    req.arguments = json!([pid_file.to_string_lossy(), dir_file.to_string_lossy()]);
    let exec = Executor::new(ExecConfig::default());
    let task = tokio::spawn(async move { exec.perform(&ctx(), &Effect::Process(req)).await });
    let pgid: u32 = wait_for_file(&pid_file).await.parse().unwrap();
    let workdir = PathBuf::from(wait_for_file(&dir_file).await);
    // The shell and both sleeps are in the group.
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_members(pgid).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "group members: {:?}",
            group_members(pgid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    wait_group_gone(pgid).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while workdir.exists() {
        assert!(Instant::now() < deadline, "the working directory survived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn background_children_do_not_outlive_the_task() {
    let out = run(shell("sleep 30 >/dev/null 2>&1 & echo $$"))
        .await
        .unwrap();
    let pgid: u32 = out.as_str().unwrap().parse().unwrap();
    wait_group_gone(pgid).await;

    // Even when the background child keeps stdout open.
    let started = Instant::now();
    let out = run(shell("sleep 30 & echo $$")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_group_gone(out.as_str().unwrap().parse().unwrap()).await;
}

#[tokio::test]
async fn process_timeout() {
    let exec = Executor::new(ExecConfig {
        process_timeout: Some(Duration::from_millis(300)),
        ..ExecConfig::default()
    });
    let started = Instant::now();
    let err = exec
        .perform(&ctx(), &Effect::Process(shell("sleep 30")))
        .await
        .unwrap_err();
    assert!(is_type(&err, "timeout"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn output_is_truncated_at_the_limit() {
    let exec = Executor::new(ExecConfig {
        process_output_limit: 1000,
        ..ExecConfig::default()
    });
    let req = ProcessRequest {
        return_: ReturnMode::All,
        ..shell(
            "head -c 300000 /dev/zero | tr '\\0' a; head -c 300000 /dev/zero | tr '\\0' b >&2; echo end",
        )
    };
    let out = exec.perform(&ctx(), &Effect::Process(req)).await.unwrap();
    assert_eq!(out["code"], 0);
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1000);
    assert!(out["stdout"].as_str().unwrap().chars().all(|c| c == 'a'));
    assert_eq!(out["stderr"].as_str().unwrap().len(), 1000);
}

#[tokio::test]
async fn not_awaited_process_runs_in_the_background() {
    let d = scratch("detached");
    let f = d.join("out");
    let mut req = shell(
        "echo started > \"$1\"; read line; sleep 0.3; echo \"done $line $KFLOW_ATTEMPT\" >> \"$1\"",
    );
    req.arguments = json!([f.to_string_lossy()]);
    req.stdin = Some("payload\n".into());
    req.await_ = false;
    let started = Instant::now();
    assert_eq!(run(req).await.unwrap(), Value::Null);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "it does not wait"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = std::fs::read_to_string(&f).unwrap_or_default();
        if s.contains("done") {
            assert_eq!(s, "started\ndone payload 1\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the detached process never finished: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&d);
}

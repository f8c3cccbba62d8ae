//! The `run` task: exactly one process (shell, script, workflow, or container, which is checked
//! but not run), plus `await` and `return`.

use crate::model::{ContainerDef, Process, ReturnMode, RunDef};
use crate::node::{Node, NodeKind};
use crate::template::Template;

use super::Cx;
use super::calls;
use super::common::{self, Obj};

const PROCESSES: [&str; 4] = ["container", "script", "shell", "workflow"];

pub(super) fn run(cx: &mut Cx, node: &Node) -> Option<RunDef> {
    let obj = Obj::new(cx, node, "'run'", "run")?;
    obj.check(
        cx,
        &[
            "await",
            "return",
            "container",
            "script",
            "shell",
            "workflow",
        ],
    );
    let await_ = obj
        .get("await")
        .map(|n| common::boolean(cx, n, &obj.field("await")));
    let return_ = obj.get("return").map(|n| {
        let modes = ["stdout", "stderr", "code", "all", "none"];
        common::one_of(cx, n, &obj.field("return"), &modes).map(|m| match m {
            "stderr" => ReturnMode::Stderr,
            "code" => ReturnMode::Code,
            "all" => ReturnMode::All,
            "none" => ReturnMode::None,
            _ => ReturnMode::Stdout,
        })
    });
    let present: Vec<&str> = PROCESSES.into_iter().filter(|p| obj.has(p)).collect();
    let process = match present.as_slice() {
        [p] => {
            let value = obj.get(p)?;
            let proc_obj = obj.sub(cx, p, value);
            proc_obj.and_then(|o| match *p {
                "shell" => shell(cx, &o),
                "script" => script(cx, &o),
                "workflow" => workflow(cx, &o),
                _ => container(cx, &o),
            })
        }
        [] => {
            cx.at(
                node,
                format!("'run' needs a process: one of {}", PROCESSES.join(", ")),
            );
            None
        }
        many => {
            cx.at(
                node,
                format!(
                    "'run' must have exactly one process (found {})",
                    many.join(", ")
                ),
            );
            None
        }
    };
    Some(RunDef {
        process: process?,
        await_: await_.flatten().unwrap_or(true),
        return_: return_.flatten().unwrap_or_default(),
    })
}

/// `arguments`: a list of strings (or, as older documents write it, a mapping).
fn arguments(cx: &mut Cx, node: &Node, what: &str) -> Option<Template> {
    match &node.kind {
        NodeKind::Seq(items) => {
            let mut ok = true;
            for item in items {
                if item.as_str().is_none() {
                    common::type_error(cx, item, "a string", &format!("an item of {what}"));
                    ok = false;
                }
            }
            if ok { common::template(cx, node) } else { None }
        }
        NodeKind::Map(_) => common::template(cx, node),
        _ => {
            common::type_error(cx, node, "a list of strings", what);
            None
        }
    }
}

/// `stdin`, `arguments`, `environment`, shared by shell and script.
fn io(cx: &mut Cx, obj: &Obj) -> (Option<Template>, Option<Template>, Option<Template>) {
    let stdin = obj
        .get("stdin")
        .and_then(|n| common::string_template(cx, n, &obj.field("stdin")));
    let args = obj
        .get("arguments")
        .and_then(|n| arguments(cx, n, &obj.field("arguments")));
    let env = obj
        .get("environment")
        .and_then(|n| common::mapping_template(cx, n, &obj.field("environment")));
    (stdin, args, env)
}

fn shell(cx: &mut Cx, obj: &Obj) -> Option<Process> {
    obj.check(cx, &["command", "stdin", "arguments", "environment"]);
    let command = obj
        .req(cx, "command")
        .and_then(|n| common::string_template(cx, n, &obj.field("command")));
    let (stdin, arguments, environment) = io(cx, obj);
    Some(Process::Shell {
        command: command?,
        arguments,
        environment,
        stdin,
    })
}

fn script(cx: &mut Cx, obj: &Obj) -> Option<Process> {
    obj.check(
        cx,
        &[
            "language",
            "code",
            "source",
            "stdin",
            "arguments",
            "environment",
        ],
    );
    let language = obj.req(cx, "language").and_then(|n| {
        // Stored as `js` or `python`, whichever spelling the document uses.
        common::one_of(
            cx,
            n,
            &obj.field("language"),
            &["js", "javascript", "python"],
        )
        .map(|l| if l == "python" { "python" } else { "js" })
    });
    let code = obj
        .get("code")
        .map(|n| common::string_template(cx, n, &obj.field("code")));
    let source = obj
        .get("source")
        .map(|n| calls::external_resource(cx, n, &obj.child("source")));
    if obj.has("code") == obj.has("source") {
        cx.at(
            obj.node,
            format!("{} needs exactly one of 'code' and 'source'", obj.label),
        );
    }
    let (stdin, arguments, environment) = io(cx, obj);
    Some(Process::Script {
        language: language?.to_string(),
        code: code.flatten(),
        source: source.flatten(),
        arguments,
        environment,
        stdin,
    })
}

fn workflow(cx: &mut Cx, obj: &Obj) -> Option<Process> {
    obj.check(cx, &["namespace", "name", "version", "input"]);
    let text = |cx: &mut Cx, key: &str| {
        obj.req(cx, key)
            .and_then(|n| common::string(cx, n, &obj.field(key)))
            .map(str::to_string)
    };
    let (namespace, name, version) = (text(cx, "namespace"), text(cx, "name"), text(cx, "version"));
    let input = obj
        .get("input")
        .map(|n| common::mapping_template(cx, n, &obj.field("input")));
    Some(Process::Workflow {
        namespace: namespace?,
        name: name?,
        version: version?,
        input: input.flatten(),
    })
}

/// `run.container`: every field checked; strings and maps may hold runtime expressions.
fn container(cx: &mut Cx, obj: &Obj) -> Option<Process> {
    obj.check(
        cx,
        &[
            "image",
            "name",
            "command",
            "ports",
            "volumes",
            "environment",
            "stdin",
            "arguments",
            "lifetime",
            "pullPolicy",
        ],
    );
    let image = obj
        .req(cx, "image")
        .and_then(|n| common::string_template(cx, n, &obj.field("image")));
    let mut ok = image.is_some();
    let mut text = |cx: &mut Cx, key: &str| match obj.get(key) {
        Some(n) => {
            let t = common::string_template(cx, n, &obj.field(key));
            ok &= t.is_some();
            t
        }
        None => None,
    };
    let (name, command) = (text(cx, "name"), text(cx, "command"));
    let mut map = |cx: &mut Cx, key: &str| match obj.get(key) {
        Some(n) => {
            let t = common::mapping_template(cx, n, &obj.field(key));
            ok &= t.is_some();
            t
        }
        None => None,
    };
    let (ports, volumes) = (map(cx, "ports"), map(cx, "volumes"));
    let (stdin, arguments, environment) = io(cx, obj);
    let pull_policy = match obj.get("pullPolicy") {
        Some(n) => common::one_of(
            cx,
            n,
            &obj.field("pullPolicy"),
            &["ifNotPresent", "always", "never"],
        ),
        None => Some("ifNotPresent"),
    };
    ok &= pull_policy.is_some();
    let mut cleanup = Some("never");
    let mut cleanup_after = None;
    if let Some(lifetime) = obj.get("lifetime").and_then(|n| obj.sub(cx, "lifetime", n)) {
        lifetime.check(cx, &["cleanup", "after"]);
        cleanup = lifetime.req(cx, "cleanup").and_then(|n| {
            common::one_of(
                cx,
                n,
                &lifetime.field("cleanup"),
                &["always", "never", "eventually"],
            )
        });
        ok &= cleanup.is_some();
        match (cleanup, lifetime.get("after")) {
            (Some("eventually"), None) => {
                cx.at(lifetime.node, "missing required property 'after' in 'run.container.lifetime' (cleanup is eventually)");
                ok = false;
            }
            (Some("eventually"), Some(after)) => {
                cleanup_after = common::duration(cx, after, &lifetime.field("after"));
                ok &= cleanup_after.is_some();
            }
            (Some(other), Some(after)) => {
                cx.at(
                    after,
                    format!("'after' only applies when cleanup is eventually (it is {other})"),
                );
                ok = false;
            }
            _ => {}
        }
    }
    if !ok {
        return None;
    }
    Some(Process::Container(Box::new(ContainerDef {
        image: image?,
        name,
        command,
        ports,
        volumes,
        environment,
        stdin,
        arguments,
        cleanup: cleanup?.to_string(),
        cleanup_after,
        pull_policy: pull_policy?.to_string(),
    })))
}

//! `run` tasks: shell and script processes (performed by the host) and sub-workflows.

use serde_json::{Map, Value};

use kflow_dsl::model::{NamedTask, Process, RunDef};

use super::{Cx, KindResult, Scope};
use crate::effect::{Effect, ProcessRequest, Program};
use crate::error::WfError;

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(super) async fn run(
    cx: &Cx,
    named: &NamedTask,
    r: &RunDef,
    input: &Value,
    scope: &Scope<'_>,
) -> KindResult {
    let opt = |t: &Option<kflow_dsl::template::Template>| -> Result<Option<Value>, WfError> {
        t.as_ref().map(|t| cx.eval(t, input, scope)).transpose()
    };
    let env_map = |v: Option<Value>| -> Result<Map<String, Value>, WfError> {
        match v {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(other) => Err(WfError::validation(format!(
                "run: 'environment' must be an object, got {other}"
            ))),
        }
    };
    let (program, arguments, environment, stdin) = match &r.process {
        Process::Shell {
            command,
            arguments,
            environment,
            stdin,
        } => {
            let command = text(cx.eval(command, input, scope)?);
            (
                Program::Shell { command },
                opt(arguments)?,
                env_map(opt(environment)?)?,
                opt(stdin)?,
            )
        }
        Process::Script {
            language,
            code,
            source,
            arguments,
            environment,
            stdin,
        } => {
            let code = match (code, source) {
                (Some(c), _) => text(cx.eval(c, input, scope)?),
                (None, Some(_)) => {
                    return Err(WfError::configuration(
                        "run script: external 'source' scripts are not supported yet; inline the code",
                    ));
                }
                (None, None) => return Err(WfError::configuration("run script: needs 'code'")),
            };
            (
                Program::Script {
                    language: language.clone(),
                    code,
                },
                opt(arguments)?,
                env_map(opt(environment)?)?,
                opt(stdin)?,
            )
        }
        Process::Workflow {
            namespace,
            name,
            version,
            input: with,
        } => {
            let child_input = match with {
                None => input.clone(),
                Some(t) => cx.eval(t, input, scope)?,
            };
            let effect = Effect::Workflow {
                namespace: namespace.clone(),
                name: name.clone(),
                version: version.clone(),
                input: child_input,
            };
            if !r.await_ {
                // Fire and forget: the host starts the child; this task does not wait for it.
                let fut = cx.sh.effect(&named.reference, effect);
                drop_started(fut);
                return Ok((input.clone(), None, None));
            }
            return Ok((cx.sh.effect(&named.reference, effect).await?, None, None));
        }
        Process::Container(c) => {
            let map = |t: &Option<kflow_dsl::template::Template>, what: &str| match opt(t)? {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(m)) => Ok(m),
                Some(other) => Err(WfError::validation(format!(
                    "run container: '{what}' must be an object, got {other}"
                ))),
            };
            let program = crate::effect::ContainerProgram {
                image: text(cx.eval(&c.image, input, scope)?),
                name: opt(&c.name)?.map(text),
                command: opt(&c.command)?.map(text),
                ports: map(&c.ports, "ports")?,
                volumes: map(&c.volumes, "volumes")?,
                pull_policy: c.pull_policy.clone(),
                cleanup: c.cleanup.clone(),
                cleanup_after_ms: c
                    .cleanup_after
                    .as_ref()
                    .map(|d| cx.millis(d, input, scope))
                    .transpose()?,
            };
            (
                Program::Container(Box::new(program)),
                opt(&c.arguments)?,
                env_map(opt(&c.environment)?)?,
                opt(&c.stdin)?,
            )
        }
    };
    let arguments = match arguments {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(v @ (Value::Array(_) | Value::Object(_))) => v,
        Some(other) => {
            return Err(WfError::validation(format!(
                "run: 'arguments' must be a list or a map, got {other}"
            )));
        }
    };
    let req = ProcessRequest {
        program,
        arguments,
        environment,
        stdin: stdin.map(text),
        return_: r.return_,
        await_: r.await_,
    };
    let out = cx.sh.effect(&named.reference, Effect::Process(req)).await?;
    Ok((if r.await_ { out } else { input.clone() }, None, None))
}

/// Starts an effect without waiting for it: polls it once so that its start command is issued,
/// then forgets it so that dropping does not cancel it.
fn drop_started(fut: crate::exec::EffectFut) {
    let mut fut = Box::pin(fut);
    let waker = std::task::Waker::noop();
    let _ = std::future::Future::poll(fut.as_mut(), &mut std::task::Context::from_waker(waker));
    fut.as_mut().detach();
}

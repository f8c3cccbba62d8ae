//! What the interpreter asks the outside world to do, and what comes back.
//!
//! The core never performs IO. It emits [`Command::Start`] with an [`Effect`] whose every
//! expression is already evaluated; the host performs it and answers with a [`Delivery`]. Each
//! effect has an [`EffectId`] that is deterministic (allocated in execution order), so replaying
//! the same deliveries rebuilds the same state. Hosts derive idempotency keys from the instance id
//! and the effect id: a task re-run after a crash gets the same key, a retry gets a new one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::WfError;

pub type EffectId = u64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    Http(HttpRequest),
    OpenApi(OpenApiRequest),
    Grpc(GrpcRequest),
    /// A function served by an external worker (`call: worker`): queued on `queue` for a worker
    /// that registered a handler for `function` (the Python and TypeScript worker libraries).
    Function(FunctionRequest),
    /// Publish one message through an AsyncAPI document's operation (performed by the server,
    /// which holds the broker connections).
    AsyncApi(Box<AsyncApiRequest>),
    Process(ProcessRequest),
    /// Publish a CloudEvent; the host fills `id`, `time`, `source`, `specversion` when absent
    /// and answers with the event as emitted.
    Emit {
        event: Value,
    },
    /// Subscribe to events matching any of `filters`; the host delivers each matching event
    /// with [`Delivery::Event`] until the core cancels the effect. Each filter is the `with`
    /// mapping of an event filter as written: literal values, and runtime expressions as their
    /// `${ … }` source, which read the values in `args` (`$input`, ... by name without the `$`,
    /// taken when listening started). Hosts decide with `kflow_core::events::Subscription`,
    /// the interpreter's own decision. `args: None` (effects stored by kflow before filters
    /// carried expressions): the filters are literal attribute mappings.
    Listen {
        filters: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<Map<String, Value>>,
    },
    /// Fire at `at_ms` (milliseconds since the Unix epoch); answer with a null result.
    Timer {
        at_ms: i64,
    },
    /// The instance used up its work budget for this turn (kflow-core's `tasks_per_turn`):
    /// the host answers with a null result when it is the instance's turn again, after the
    /// progress so far is recorded. Deterministic: it happens at the same task on replay.
    Yield,
    /// Run another workflow to its end and answer with its output or error.
    Workflow {
        namespace: String,
        name: String,
        version: String,
        input: Value,
    },
}

impl Effect {
    /// A call or a process: performed outside the engine (a worker, a broker, a child
    /// process), with attempts counted, and sealed at rest when its workflow reads secrets.
    pub fn is_call(&self) -> bool {
        matches!(
            self,
            Effect::Http(_)
                | Effect::OpenApi(_)
                | Effect::Grpc(_)
                | Effect::Function(_)
                | Effect::AsyncApi(_)
                | Effect::Process(_)
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Http(_) => "http",
            Effect::OpenApi(_) => "openapi",
            Effect::Grpc(_) => "grpc",
            Effect::Function(_) => "function",
            Effect::AsyncApi(_) => "asyncapi",
            Effect::Process(_) => "process",
            Effect::Emit { .. } => "emit",
            Effect::Listen { .. } => "listen",
            Effect::Timer { .. } => "timer",
            Effect::Yield => "yield",
            Effect::Workflow { .. } => "workflow",
        }
    }
}

/// Authentication with every secret and expression resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum Auth {
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    Digest {
        username: String,
        password: String,
    },
    /// OAuth2 / OIDC: the policy's properties (authority, grant, client, scopes, audiences,
    /// endpoints, ...); the host obtains the token.
    OAuth2 {
        oidc: bool,
        properties: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    /// Absolute URI, placeholders already filled in.
    pub uri: String,
    pub headers: Map<String, Value>,
    pub query: Map<String, Value>,
    pub body: Option<Value>,
    pub output: OutputFormat,
    pub redirect: bool,
    pub auth: Option<Auth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenApiRequest {
    /// Where the OpenAPI document is.
    pub document: String,
    pub document_auth: Option<Auth>,
    pub operation_id: String,
    pub parameters: Map<String, Value>,
    pub auth: Option<Auth>,
    pub output: OutputFormat,
    pub redirect: bool,
}

/// A unary gRPC call: the host compiles the `.proto` at `proto`, turns `arguments` into the
/// method's request message (the proto3 JSON mapping) and answers with the response message
/// as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpcRequest {
    /// Where the `.proto` file is (`file://`, `http://`, `https://`).
    pub proto: String,
    pub proto_auth: Option<Auth>,
    /// The service's fully qualified name (`package.Service`).
    pub service: String,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub arguments: Map<String, Value>,
    pub auth: Option<Auth>,
}

/// `call asyncapi` with `message`, every expression resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncApiRequest {
    pub document: String,
    pub document_auth: Option<Auth>,
    /// AsyncAPI 3: the operation's id; AsyncAPI 2: `channel` instead.
    pub operation: Option<String>,
    pub channel: Option<String>,
    pub server: Option<String>,
    pub variables: Map<String, Value>,
    pub protocol: Option<String>,
    pub payload: Value,
    pub headers: Map<String, Value>,
    pub auth: Option<Auth>,
}

/// What a worker's handler gets: the function's name and its arguments; its answer is the
/// task's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRequest {
    pub queue: String,
    pub function: String,
    pub arguments: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRequest {
    pub program: Program,
    /// Arguments: a JSON array (positional) or object (`key=value` pairs).
    pub arguments: Value,
    pub environment: Map<String, Value>,
    pub stdin: Option<String>,
    pub return_: ReturnMode,
    /// `run.await: false`: the host starts the process and answers at once with null.
    pub await_: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Program {
    Shell {
        command: String,
    },
    Script {
        language: String,
        code: String,
    },
    /// `run: container` (through the docker or podman CLI).
    Container(Box<ContainerProgram>),
}

/// A container to run: the image, and how (see `run.container` in the DSL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerProgram {
    pub image: String,
    pub name: Option<String>,
    /// Run by `/bin/sh -c` in the container (the arguments are `$1`, `$2`, ...); none: the
    /// image's own command, with the arguments.
    pub command: Option<String>,
    /// Host port to container port.
    #[serde(default)]
    pub ports: Map<String, Value>,
    /// Host path to container path.
    #[serde(default)]
    pub volumes: Map<String, Value>,
    /// `ifNotPresent`, `always` or `never`.
    pub pull_policy: String,
    /// `always`, `never` or `eventually`.
    pub cleanup: String,
    /// With `eventually`: removed this long after the run.
    pub cleanup_after_ms: Option<u64>,
}

/// The host's answer to an effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The effect finished (timers: `Ok(null)`).
    Result(Result<Value, WfError>),
    /// One event matching a `Listen` effect.
    Event(Value),
}

/// Something the host must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start {
        id: EffectId,
        task: String,
        effect: Effect,
    },
    /// The effect is no longer wanted (its task was cancelled or timed out).
    Cancel { id: EffectId },
}

/// What a call task outputs (`output` of `call: http` and `call: openapi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Raw,
    #[default]
    Content,
    Response,
}

/// What a `run` task outputs (`return` of `run.shell` and `run.script`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReturnMode {
    #[default]
    Stdout,
    Stderr,
    Code,
    All,
    None,
}

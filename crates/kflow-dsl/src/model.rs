//! The typed, validated workflow model: what the interpreter executes.
//!
//! Built from a parsed [`crate::node::Node`] tree by [`crate::lower`]; every expression in it is
//! already compiled and every reference (`then:` targets, `use:` names) already resolved, so the
//! interpreter never has to report a definition error at run time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::duration::DurationSpec;
use crate::expr::Expr;
use crate::schema::Schema;
use crate::template::Template;

pub use crate::settings::{
    Concurrency, KflowSettings, Missed, OnLimit, Overlap, ScheduleSettings, TaskHints,
};

/// A whole workflow definition.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub document: Document,
    pub input: Option<DataIn>,
    pub output: Option<DataOut>,
    pub use_: Use,
    pub do_: TaskList,
    pub timeout: Option<DurationSpec>,
    pub schedule: Option<Schedule>,
    /// `evaluate.mode: loose` lets plain strings in expression-only fields be jq.
    pub evaluate_loose: bool,
    /// kflow's own settings (`document.metadata.kflow`, and the tasks' `metadata.kflow`).
    pub kflow: KflowSettings,
    /// The source document as plain JSON, for `$workflow.definition`.
    pub definition: Arc<Value>,
}

#[derive(Debug, Clone)]
pub struct Document {
    pub dsl: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub tags: BTreeMap<String, Value>,
    pub metadata: serde_json::Map<String, Value>,
}

/// Reusable components declared under `use:`. References are resolved during lowering, so the
/// interpreter only needs the ones it looks up by name at run time (errors raised by name,
/// secrets).
#[derive(Debug, Clone, Default)]
pub struct Use {
    pub errors: BTreeMap<String, ErrorDef>,
    pub secrets: Vec<String>,
    pub functions: BTreeMap<String, Arc<Task>>,
}

/// An ordered list of named tasks; `then:` jumps resolve to indexes of this list.
pub type TaskList = Arc<[NamedTask]>;

#[derive(Debug, Clone)]
pub struct NamedTask {
    pub name: String,
    /// JSON pointer of the task in the document, e.g. `/do/0/tryGetPet/try/0/getPet`.
    pub reference: String,
    pub task: Task,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub if_: Option<Expr>,
    pub input: Option<DataIn>,
    pub output: Option<DataOut>,
    pub export: Option<DataOut>,
    pub timeout: Option<DurationSpec>,
    pub then: Flow,
    pub metadata: serde_json::Map<String, Value>,
    /// kflow's engine hints (`metadata.kflow`), also found by reference in
    /// [`KflowSettings::tasks`].
    pub kflow: TaskHints,
    pub kind: TaskKind,
}

/// A flow directive (`then:`), resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next task of the list (the default).
    Continue,
    /// Leave the current composite task, going on after it.
    Exit,
    /// End the workflow gracefully.
    End,
    /// Jump to the task with this index in the same list.
    Goto(usize),
}

/// `input:` of the workflow or a task.
#[derive(Debug, Clone, Default)]
pub struct DataIn {
    pub schema: Option<Schema>,
    pub from: Option<Template>,
}

/// `output:` or `export:` of the workflow or a task.
#[derive(Debug, Clone, Default)]
pub struct DataOut {
    pub schema: Option<Schema>,
    pub as_: Option<Template>,
}

#[derive(Debug, Clone)]
pub enum TaskKind {
    Call(Call),
    Do(TaskList),
    Emit(EmitDef),
    For(ForDef),
    Fork(ForkDef),
    Listen(ListenDef),
    Raise(RaiseDef),
    Run(RunDef),
    Set(Template),
    Switch(Vec<SwitchCase>),
    Try(TryDef),
    Wait(DurationSpec),
    /// kflow extension: a dependency-scheduled task graph (see [`DagDef`]).
    Dag(DagDef),
}

impl TaskKind {
    /// The DSL keyword of the task type, as used in traces.
    pub fn keyword(&self) -> &'static str {
        match self {
            TaskKind::Call(_) => "call",
            TaskKind::Do(_) => "do",
            TaskKind::Emit(_) => "emit",
            TaskKind::For(_) => "for",
            TaskKind::Fork(_) => "fork",
            TaskKind::Listen(_) => "listen",
            TaskKind::Raise(_) => "raise",
            TaskKind::Run(_) => "run",
            TaskKind::Set(_) => "set",
            TaskKind::Switch(_) => "switch",
            TaskKind::Try(_) => "try",
            TaskKind::Wait(_) => "wait",
            TaskKind::Dag(_) => "dag",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// call

#[derive(Debug, Clone)]
pub enum Call {
    Http(HttpCall),
    OpenApi(OpenApiCall),
    Grpc(GrpcCall),
    /// `call: worker` (kflow's): a function an external worker serves.
    Worker(WorkerCall),
    /// `call: asyncapi` publishing a message (`message`); subscriptions are `Unsupported`.
    AsyncApi(AsyncApiCall),
    /// `call: <name>` of a function declared in `use.functions`: the function's task, run with
    /// `with:` as its input.
    Function {
        name: String,
        task: Arc<Task>,
        with: Option<Template>,
    },
    /// grpc, asyncapi, a2a, mcp, catalog functions: accepted by the parser so that spec
    /// examples validate, refused with a clear error when run.
    Unsupported {
        kind: String,
    },
}

/// A call task's `output` (`raw`, `content`, `response`): defined with the effects, which carry
/// it to the executors.
pub use kflow_effects::OutputFormat;

#[derive(Debug, Clone)]
pub struct HttpCall {
    pub method: Template,
    pub endpoint: Endpoint,
    pub headers: Option<Template>,
    pub body: Option<Template>,
    pub query: Option<Template>,
    pub output: OutputFormat,
    pub redirect: bool,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub uri: UriSpec,
    pub authentication: Option<Arc<AuthPolicy>>,
}

/// An endpoint URI: a literal URI template whose `{name}` placeholders are filled from the
/// top-level fields of the task input, or a runtime expression.
#[derive(Debug, Clone)]
pub enum UriSpec {
    Template(String),
    Expr(Expr),
}

#[derive(Debug, Clone)]
pub enum AuthPolicy {
    Basic {
        username: Template,
        password: Template,
    },
    Bearer {
        token: Template,
    },
    Digest {
        username: Template,
        password: Template,
    },
    /// OAuth2 and OpenID Connect; the properties (authority, grant, client, scopes, ...) as a
    /// template, resolved at call time.
    OAuth2 {
        oidc: bool,
        properties: Template,
    },
    /// `use: <secret>`: the policy's properties come from the named secret at run time.
    Secret {
        scheme: AuthScheme,
        secret: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    Basic,
    Bearer,
    Digest,
    OAuth2,
    Oidc,
}

#[derive(Debug, Clone)]
pub struct OpenApiCall {
    pub document: Endpoint,
    pub operation_id: String,
    pub parameters: Option<Template>,
    pub authentication: Option<Arc<AuthPolicy>>,
    pub output: OutputFormat,
    pub redirect: bool,
}

/// `call: grpc`: a unary method of a service described by a `.proto` file.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub proto: Endpoint,
    /// `service.name`: the fully qualified service (`package.Service`).
    pub service: String,
    pub host: String,
    /// `service.port`; 80 when absent. 443 is TLS (HTTP/2 over TLS); any other port is
    /// cleartext HTTP/2.
    pub port: u16,
    pub authentication: Option<Arc<AuthPolicy>>,
    pub method: String,
    pub arguments: Option<Template>,
}

/// `call: asyncapi` with `message`: publish to the operation's (v3) or channel's (v2) address
/// on the chosen server of the document.
#[derive(Debug, Clone)]
pub struct AsyncApiCall {
    pub document: Endpoint,
    pub operation: Option<String>,
    pub channel: Option<String>,
    pub server: Option<String>,
    pub variables: Option<Template>,
    pub protocol: Option<String>,
    pub payload: Option<Template>,
    pub headers: Option<Template>,
    pub authentication: Option<Arc<AuthPolicy>>,
}

/// `call: worker`: `function`, served by a worker of `queue` (never `default`, the server's own
/// worker); `arguments` default to the task's input.
#[derive(Debug, Clone)]
pub struct WorkerCall {
    pub queue: String,
    pub function: String,
    pub arguments: Option<Template>,
}

// ---------------------------------------------------------------------------------------------
// emit, listen

#[derive(Debug, Clone)]
pub struct EmitDef {
    /// The event's properties (`emit.event.with`), a template producing an object.
    pub event: Template,
}

#[derive(Debug, Clone)]
pub struct ListenDef {
    pub to: Consumption,
    pub read: ReadMode,
    pub foreach: Option<ForEachEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    #[default]
    Data,
    Envelope,
    Raw,
}

#[derive(Debug, Clone)]
pub enum Consumption {
    All(Vec<EventFilter>),
    Any {
        filters: Vec<EventFilter>,
        until: Option<Until>,
    },
    One(EventFilter),
}

#[derive(Debug, Clone)]
pub enum Until {
    /// A condition evaluated on the events consumed so far.
    Expr(Expr),
    /// Another consumption strategy that ends the listening once satisfied.
    Events(Box<Consumption>),
}

/// `with:` attributes an event must have (values: literals, or expressions evaluated on the
/// event), plus correlation keys.
#[derive(Debug, Clone)]
pub struct EventFilter {
    pub with: Template,
    pub correlate: BTreeMap<String, Correlation>,
}

#[derive(Debug, Clone)]
pub struct Correlation {
    pub from: Expr,
    pub expect: Option<Template>,
}

#[derive(Debug, Clone)]
pub struct ForEachEvent {
    pub item: String,
    pub at: String,
    pub do_: TaskList,
    pub output: Option<DataOut>,
    pub export: Option<DataOut>,
}

// ---------------------------------------------------------------------------------------------
// for, fork, raise, switch, try

#[derive(Debug, Clone)]
pub struct ForDef {
    pub each: String,
    pub in_: Expr,
    pub at: String,
    pub while_: Option<Expr>,
    pub do_: TaskList,
    /// kflow extension `parallel:` (never together with `while`): run the iterations
    /// concurrently instead of one after the other. Each iteration gets the for task's input
    /// (not the previous iteration's output), the output is the array of the iterations'
    /// outputs in item order, and the first iteration to fault cancels the others and faults
    /// the task. `None`: the standard sequential loop.
    pub parallel: Option<Parallelism>,
}

/// How many iterations of a parallel `for` may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// `parallel: true`: every iteration starts at once.
    Unbounded,
    /// `parallel: N` (N ≥ 1): at most N iterations in progress; when one finishes, the next
    /// item (in item order) starts.
    Max(usize),
}

// ---------------------------------------------------------------------------------------------
// dag (kflow extension)

/// kflow extension task `dag:` — subtasks scheduled by their dependencies instead of by list
/// order. Not part of the Serverless Workflow DSL: `kflow validate --strict` refuses it.
///
/// ```yaml
/// - build:
///     dag:
///       tasks:
///         - fetchA: { call: http, with: { method: get, endpoint: http://svc/a } }
///         - fetchB: { run: { shell: { command: echo b } } }
///         - merge:
///             needs: [fetchA, fetchB]
///             trigger: all_succeeded   # the default
///             set: { a: "${ $needs.fetchA }", b: "${ $needs.fetchB }" }
/// ```
///
/// Semantics:
/// - Every subtask's input is the dag task's (transformed) input. Subtasks whose dependencies
///   are settled are started together and run concurrently, like fork branches; they are
///   polled in declaration order, so runs are deterministic.
/// - A subtask is *decided* once every task it `needs` is done (succeeded, failed or
///   skipped). Then its [`Trigger`] rule is checked: when it holds, the subtask runs (through
///   the usual task steps: `if`, input, output, export); when it does not, the subtask is
///   skipped (a `task.skipped` notice) and counts as done-and-skipped for its own dependents.
///   A subtask whose `if` is false is skipped the same way.
/// - While a subtask runs, `$needs` is an object with one entry per dependency: the
///   dependency's output when it succeeded, its error object when it failed, `null` when it
///   was skipped. Root subtasks see `$needs == {}`.
/// - A failed subtask is *handled* when at least one of its direct dependents ran anyway
///   (only `all_done`, `one_failed` and `one_succeeded` can run after a failed dependency).
///   Failures never cancel other subtasks: everything that can still run runs. When all are
///   done, the dag faults with the error of the first unhandled failed subtask in declaration
///   order; otherwise it completes.
/// - The output is an object `{name: output}` with an entry for every subtask that completed
///   successfully (skipped and failed subtasks are absent).
/// - Flow directives have no place in a graph: `then:` on a subtask, a `switch` or a
///   `catch.then` directly in the dag are refused when lowering; a `then: end` inside a nested
///   list of a subtask ends that subtask only (as in fork branches).
#[derive(Debug, Clone)]
pub struct DagDef {
    pub tasks: TaskList,
    /// One entry per task of `tasks`, same index.
    pub nodes: Vec<DagNode>,
}

/// A dag subtask's dependencies (indexes into [`DagDef::tasks`], in the order written) and
/// trigger rule.
#[derive(Debug, Clone, Default)]
pub struct DagNode {
    pub needs: Vec<usize>,
    pub trigger: Trigger,
}

/// When a dag subtask runs, judged once every dependency is done (counts over its `needs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// `all_succeeded` (default): every dependency succeeded (true with no dependencies).
    #[default]
    AllSucceeded,
    /// `all_done`: always, once every dependency is done whatever its outcome.
    AllDone,
    /// `one_failed`: at least one dependency failed.
    OneFailed,
    /// `one_succeeded`: at least one dependency succeeded.
    OneSucceeded,
    /// `none_failed`: no dependency failed (succeeded or skipped; true with no dependencies).
    NoneFailed,
}

impl Trigger {
    pub const NAMES: [&'static str; 5] = [
        "all_succeeded",
        "all_done",
        "one_failed",
        "one_succeeded",
        "none_failed",
    ];

    pub fn from_name(name: &str) -> Option<Trigger> {
        Some(match name {
            "all_succeeded" => Trigger::AllSucceeded,
            "all_done" => Trigger::AllDone,
            "one_failed" => Trigger::OneFailed,
            "one_succeeded" => Trigger::OneSucceeded,
            "none_failed" => Trigger::NoneFailed,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Trigger::AllSucceeded => "all_succeeded",
            Trigger::AllDone => "all_done",
            Trigger::OneFailed => "one_failed",
            Trigger::OneSucceeded => "one_succeeded",
            Trigger::NoneFailed => "none_failed",
        }
    }

    /// Whether the rule holds, given how many of `total` dependencies succeeded and failed
    /// (the rest were skipped).
    pub fn holds(self, succeeded: usize, failed: usize, total: usize) -> bool {
        match self {
            Trigger::AllSucceeded => succeeded == total,
            Trigger::AllDone => true,
            Trigger::OneFailed => failed >= 1,
            Trigger::OneSucceeded => succeeded >= 1,
            Trigger::NoneFailed => failed == 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ForkDef {
    pub branches: TaskList,
    pub compete: bool,
}

#[derive(Debug, Clone)]
pub struct RaiseDef {
    pub error: ErrorDef,
}

/// An error definition: each field a template (literal or expression).
#[derive(Debug, Clone)]
pub struct ErrorDef {
    pub type_: Template,
    pub status: Template,
    pub title: Option<Template>,
    pub detail: Option<Template>,
    pub instance: Option<Template>,
}

#[derive(Debug, Clone)]
pub struct SwitchCase {
    pub name: String,
    pub when: Option<Expr>,
    pub then: Flow,
}

#[derive(Debug, Clone)]
pub struct TryDef {
    pub try_: TaskList,
    pub catch: Catch,
}

#[derive(Debug, Clone, Default)]
pub struct Catch {
    pub errors: Option<ErrorFilter>,
    /// Variable name the caught error is bound to (default `error`).
    pub as_: String,
    pub when: Option<Expr>,
    pub except_when: Option<Expr>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub do_: Option<TaskList>,
    /// Where to go after the error was handled (instead of the try task's own `then:`).
    pub then: Option<Flow>,
}

/// Static error filter: every present field must equal the error's.
#[derive(Debug, Clone, Default)]
pub struct ErrorFilter {
    pub type_: Option<String>,
    pub status: Option<i64>,
    pub instance: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub when: Option<Expr>,
    pub except_when: Option<Expr>,
    pub delay: Option<DurationSpec>,
    pub backoff: Backoff,
    /// Maximum number of retry attempts.
    pub limit_attempts: Option<u64>,
    pub limit_attempt_duration: Option<DurationSpec>,
    pub limit_duration: Option<DurationSpec>,
    pub jitter: Option<(DurationSpec, DurationSpec)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    #[default]
    Constant,
    Linear,
    Exponential,
}

// ---------------------------------------------------------------------------------------------
// run

#[derive(Debug, Clone)]
pub struct RunDef {
    pub process: Process,
    /// `await: false` starts the process and goes on without its result.
    pub await_: bool,
    pub return_: ReturnMode,
}

/// A run task's `return` (`stdout`, `stderr`, `code`, `all`, `none`): defined with the effects,
/// which carry it to the executors.
pub use kflow_effects::ReturnMode;

#[derive(Debug, Clone)]
pub enum Process {
    Shell {
        command: Template,
        /// Map or array form; evaluated to a JSON object or array.
        arguments: Option<Template>,
        environment: Option<Template>,
        stdin: Option<Template>,
    },
    Script {
        language: String,
        code: Option<Template>,
        source: Option<Endpoint>,
        arguments: Option<Template>,
        environment: Option<Template>,
        stdin: Option<Template>,
    },
    Workflow {
        namespace: String,
        name: String,
        version: String,
        input: Option<Template>,
    },
    /// `run: container`: run through the docker or podman CLI.
    Container(Box<ContainerDef>),
}

/// `run.container`.
#[derive(Debug, Clone)]
pub struct ContainerDef {
    pub image: Template,
    pub name: Option<Template>,
    pub command: Option<Template>,
    /// `{HOST_PORT: CONTAINER_PORT}`.
    pub ports: Option<Template>,
    /// `{HOST_PATH: CONTAINER_PATH}`.
    pub volumes: Option<Template>,
    pub environment: Option<Template>,
    pub stdin: Option<Template>,
    pub arguments: Option<Template>,
    /// `always`, `never` (the spec's default) or `eventually`.
    pub cleanup: String,
    /// With `eventually`: how long after the run the container is removed.
    pub cleanup_after: Option<crate::duration::DurationSpec>,
    /// `ifNotPresent` (default), `always` or `never`.
    pub pull_policy: String,
}

// ---------------------------------------------------------------------------------------------
// schedule

#[derive(Debug, Clone)]
pub struct Schedule {
    pub every: Option<DurationSpec>,
    pub cron: Option<String>,
    pub after: Option<DurationSpec>,
    pub on: Option<Consumption>,
    pub read: ReadMode,
}

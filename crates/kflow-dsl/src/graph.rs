//! The control-flow graph of a workflow, for pictures (the web UI) and for diffs.
//!
//! One node per task, identified by the task's JSON pointer (the same `reference` the engine
//! writes in history, so that a run can colour its graph), plus a `start` and an `end` node.
//! Edges follow the DSL's flow: the next task of a list, `then:` jumps, switch cases, the
//! branches of a fork, the body of a loop and its way back, a try's body and its catch, and the
//! dependencies of a dag. A composite task (`do`, `for`, `fork`, `try`, `dag`) is a node of its
//! own that leads into its children; where its children end, the flow goes on after it.

use crate::model::{Call, Flow, NamedTask, Process, TaskKind, TaskList, Workflow};
use crate::node::Node;

/// The id of the entry node.
pub const START: &str = "start";
/// The id of the exit node.
pub const END: &str = "end";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNode {
    /// The task's JSON pointer (`/do/0/greet`), or [`START`] / [`END`].
    pub id: String,
    /// The task's name (`start`, `end` for the two ends).
    pub name: String,
    /// The names from the outermost task down to this one (`guard/risky`): how diffs name a
    /// task across versions.
    pub path: String,
    /// What the task does: `set`, `call http`, `run shell`, `fork`, ... (`start`, `end`).
    pub kind: String,
    /// The pointer of the composite task this one belongs to.
    pub parent: Option<String>,
    /// The task's line in the document (1-based), when known.
    pub line: Option<u32>,
    /// The task runs only when its `if:` holds.
    pub conditional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    /// Why the flow takes this edge: a switch case's name, `catch`, `loop`, `done`, `branch`,
    /// `needs`; none for the plain next task.
    pub label: Option<String>,
}

/// The graph of `wf`; `source` (the parsed document) gives the lines, when at hand.
pub fn graph(wf: &Workflow, source: Option<&Node>) -> Graph {
    let mut b = Builder {
        source,
        g: Graph {
            nodes: Vec::new(),
            edges: Vec::new(),
        },
    };
    b.node(START, START, START, None, None, false);
    b.node(END, END, END, None, None, false);
    let entry = b.list(&wf.do_, Some(END), None);
    b.edge(START, &entry, None);
    b.g
}

/// Where a flow directive leads from a task.
type Resolve<'r> = &'r dyn Fn(&Flow) -> Option<String>;

/// Where a flow directive leads from the task at `next - 1` of `list`, which the flow leaves to
/// `after`.
fn target(list: &TaskList, flow: &Flow, next: Option<&str>, after: Option<&str>) -> Option<String> {
    match flow {
        Flow::Continue => next.map(str::to_string),
        Flow::Exit => after.map(str::to_string),
        Flow::End => Some(END.into()),
        Flow::Goto(i) => list.get(*i).map(|t| t.reference.clone()),
    }
}

/// For a task that is not in a list (a fork's branch, a dag's subtask): jumps have nowhere to
/// go; the flow goes on to `then`.
fn resolve_alone(flow: &Flow, then: Option<&str>) -> Option<String> {
    match flow {
        Flow::End => Some(END.into()),
        Flow::Goto(_) => None,
        Flow::Continue | Flow::Exit => then.map(str::to_string),
    }
}

/// Which tasks `to` adds, removes and changes against `from`, each named by its path of task
/// names (`guard/risky`). A composite task counts as changed only for its own settings, not
/// for its children (they are listed themselves).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

pub fn task_changes(from: &Workflow, to: &Workflow) -> TaskChanges {
    let a = tasks_by_path(from);
    let b = tasks_by_path(to);
    let mut c = TaskChanges::default();
    for (path, def) in &b {
        match a.get(path) {
            None => c.added.push(path.clone()),
            Some(old) if old != def => c.changed.push(path.clone()),
            Some(_) => {}
        }
    }
    c.removed = a.keys().filter(|p| !b.contains_key(*p)).cloned().collect();
    c
}

/// Every task by its path of names, with its definition less its children.
fn tasks_by_path(wf: &Workflow) -> std::collections::BTreeMap<String, serde_json::Value> {
    graph(wf, None)
        .nodes
        .into_iter()
        .filter(|n| n.id != START && n.id != END)
        .map(|n| {
            let def = wf.definition.pointer(&n.id).cloned().unwrap_or_default();
            (n.path, without_children(def))
        })
        .collect()
}

/// A task's definition with its nested task lists reduced to their tasks' names.
fn without_children(mut def: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn names(list: &Value) -> Value {
        match list.as_array() {
            Some(items) => Value::Array(
                items
                    .iter()
                    .filter_map(|e| e.as_object()?.keys().next().cloned().map(Value::String))
                    .collect(),
            ),
            None => list.clone(),
        }
    }
    let Some(obj) = def.as_object_mut() else {
        return def;
    };
    for key in ["do", "try"] {
        if let Some(list) = obj.get_mut(key) {
            *list = names(list);
        }
    }
    if let Some(Value::Object(dag)) = obj.get_mut("dag")
        && let Some(t) = dag.get_mut("tasks")
    {
        *t = names(t);
    }
    if let Some(Value::Object(fork)) = obj.get_mut("fork")
        && let Some(b) = fork.get_mut("branches")
    {
        *b = names(b);
    }
    if let Some(Value::Object(catch)) = obj.get_mut("catch")
        && let Some(d) = catch.get_mut("do")
    {
        *d = names(d);
    }
    def
}

struct Builder<'a> {
    source: Option<&'a Node>,
    g: Graph,
}

/// A short name for what a task does.
pub fn kind_of(kind: &TaskKind) -> String {
    match kind {
        TaskKind::Call(call) => match call {
            Call::Http(_) => "call http".into(),
            Call::OpenApi(_) => "call openapi".into(),
            Call::Grpc(_) => "call grpc".into(),
            Call::Worker(w) => format!("call worker {}", w.function),
            Call::AsyncApi(_) => "call asyncapi".into(),
            Call::Function { name, .. } => format!("call {name}"),
            Call::Unsupported { kind } => format!("call {kind}"),
        },
        TaskKind::Run(run) => match &run.process {
            Process::Shell { .. } => "run shell".into(),
            Process::Script { language, .. } => format!("run script ({language})"),
            Process::Workflow { name, .. } => format!("run workflow {name}"),
            Process::Container(_) => "run container".into(),
        },
        other => other.keyword().into(),
    }
}

impl Builder<'_> {
    fn node(
        &mut self,
        id: &str,
        name: &str,
        kind: &str,
        parent: Option<&str>,
        line: Option<u32>,
        conditional: bool,
    ) {
        let path = match parent.and_then(|p| self.g.nodes.iter().find(|n| n.id == p)) {
            Some(p) => format!("{}/{name}", p.path),
            None => name.to_string(),
        };
        self.g.nodes.push(GraphNode {
            id: id.into(),
            name: name.into(),
            path,
            kind: kind.into(),
            parent: parent.map(str::to_string),
            line,
            conditional,
        });
    }

    fn edge(&mut self, from: &str, to: &str, label: Option<&str>) {
        let e = GraphEdge {
            from: from.into(),
            to: to.into(),
            label: label.map(str::to_string),
        };
        if !self.g.edges.contains(&e) {
            self.g.edges.push(e);
        }
    }

    /// The line of the task at `pointer`: the line of its name (the key of its list entry).
    fn line(&self, pointer: &str) -> Option<u32> {
        let root = self.source?;
        let (parent, key) = pointer.rsplit_once('/')?;
        let entry = root.at_pointer(parent);
        let found = entry
            .as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))?;
        Some(found.0.pos.line)
    }

    /// Adds the tasks of `list` (children of `parent`); the flow leaves the list to `after`
    /// (nowhere when `None`). Returns the id of the list's entry.
    fn list(&mut self, list: &TaskList, after: Option<&str>, parent: Option<&str>) -> String {
        let Some(first) = list.first() else {
            return after.unwrap_or(END).to_string();
        };
        for (i, t) in list.iter().enumerate() {
            let next = list.get(i + 1).map(|n| n.reference.as_str()).or(after);
            let resolve = |flow: &Flow| target(list, flow, next, after);
            self.task(t, &resolve, parent);
        }
        first.reference.clone()
    }

    /// Adds one task; `resolve` says where a flow directive leads from it.
    fn task(&mut self, t: &NamedTask, resolve: Resolve, parent: Option<&str>) {
        let then = resolve(&t.task.then);
        let then = then.as_deref();
        let id = t.reference.as_str();
        let line = self.line(id);
        self.node(
            id,
            &t.name,
            &kind_of(&t.task.kind),
            parent,
            line,
            t.task.if_.is_some(),
        );
        let me = Some(id);
        match &t.task.kind {
            TaskKind::Do(list) => {
                let entry = self.list(list, then, me);
                self.edge(id, &entry, None);
            }
            TaskKind::For(f) => {
                let entry = self.list(&f.do_, me, me);
                if entry != id {
                    self.edge(id, &entry, Some("each"));
                }
                if let Some(then) = then {
                    self.edge(id, then, Some("done"));
                }
            }
            TaskKind::Fork(f) => {
                let join = |flow: &Flow| resolve_alone(flow, then);
                for branch in f.branches.iter() {
                    self.task(branch, &join, me);
                    self.edge(id, &branch.reference, Some("branch"));
                }
                if f.branches.is_empty()
                    && let Some(then) = then
                {
                    self.edge(id, then, None);
                }
            }
            TaskKind::Switch(cases) => {
                let mut default = false;
                for case in cases {
                    default |= case.when.is_none();
                    // A case's `then` names a task of the list the switch is in.
                    if let Some(to) = resolve(&case.then) {
                        self.edge(id, &to, Some(&case.name));
                    }
                }
                if !default && let Some(then) = then {
                    self.edge(id, then, Some("no match"));
                }
            }
            TaskKind::Try(tr) => {
                let entry = self.list(&tr.try_, then, me);
                self.edge(id, &entry, None);
                if let Some(catch) = &tr.catch.do_ {
                    let entry = self.list(catch, then, me);
                    self.edge(id, &entry, Some("catch"));
                } else if let Some(then) = then {
                    self.edge(id, then, Some("catch"));
                }
            }
            TaskKind::Dag(d) => {
                let mut needed = vec![false; d.tasks.len()];
                let nowhere = |flow: &Flow| resolve_alone(flow, None);
                for (i, sub) in d.tasks.iter().enumerate() {
                    self.task(sub, &nowhere, me);
                    let needs = d.nodes.get(i).map(|n| n.needs.as_slice()).unwrap_or(&[]);
                    if needs.is_empty() {
                        self.edge(id, &sub.reference, None);
                    }
                    for &n in needs {
                        if let Some(dep) = d.tasks.get(n) {
                            needed[n] = true;
                            self.edge(&dep.reference, &sub.reference, Some("needs"));
                        }
                    }
                }
                if let Some(then) = then {
                    for (sub, used) in d.tasks.iter().zip(&needed) {
                        if !used {
                            self.edge(&sub.reference, then, None);
                        }
                    }
                    if d.tasks.is_empty() {
                        self.edge(id, then, None);
                    }
                }
            }
            _ => {
                if let Some(then) = then {
                    self.edge(id, then, None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_of(src: &str) -> Graph {
        let wf = crate::load(src.as_bytes()).expect("valid");
        let root = crate::node::parse(src.as_bytes(), &crate::node::Limits::default()).unwrap();
        graph(&wf, Some(&root))
    }

    fn edges(g: &Graph) -> Vec<String> {
        g.edges
            .iter()
            .map(|e| match &e.label {
                Some(l) => format!("{} -{l}-> {}", e.from, e.to),
                None => format!("{} -> {}", e.from, e.to),
            })
            .collect()
    }

    const HEAD: &str = "document: {dsl: '1.0.0', namespace: t, name: g, version: '1.0.0'}\n";

    #[test]
    fn a_sequence_with_a_jump_and_an_end() {
        let g = graph_of(&format!(
            "{HEAD}do:\n  - a:\n      set: {{x: 1}}\n      then: c\n  - b:\n      set: {{x: 2}}\n  - c:\n      set: {{x: 3}}\n      then: end\n"
        ));
        assert_eq!(
            edges(&g),
            [
                "/do/0/a -> /do/2/c",
                "/do/1/b -> /do/2/c",
                "/do/2/c -> end",
                "start -> /do/0/a"
            ]
        );
        let a = g.nodes.iter().find(|n| n.id == "/do/0/a").unwrap();
        assert_eq!(
            (a.name.as_str(), a.kind.as_str(), a.line),
            ("a", "set", Some(3))
        );
    }

    #[test]
    fn switch_fork_try_and_for() {
        let g = graph_of(&format!(
            "{HEAD}do:
  - pick:
      switch:
        - big: {{when: '${{ .n > 1 }}', then: end}}
        - other: {{then: continue}}
  - both:
      fork:
        branches:
          - l: {{set: {{a: 1}}}}
          - r: {{set: {{b: 1}}}}
  - guard:
      try:
        - risky: {{set: {{c: 1}}}}
      catch:
        do:
          - recover: {{set: {{d: 1}}}}
  - loop:
      for: {{each: i, in: '${{ [1,2] }}'}}
      do:
        - step: {{set: {{e: 1}}}}
"
        ));
        let e = edges(&g);
        for want in [
            "/do/0/pick -big-> end",
            "/do/0/pick -other-> /do/1/both",
            "/do/1/both -branch-> /do/1/both/fork/branches/0/l",
            "/do/1/both/fork/branches/1/r -> /do/2/guard",
            "/do/2/guard -> /do/2/guard/try/0/risky",
            "/do/2/guard -catch-> /do/2/guard/catch/do/0/recover",
            "/do/2/guard/catch/do/0/recover -> /do/3/loop",
            "/do/3/loop -each-> /do/3/loop/do/0/step",
            "/do/3/loop/do/0/step -> /do/3/loop",
            "/do/3/loop -done-> end",
        ] {
            assert!(e.contains(&want.to_string()), "missing {want} in {e:#?}");
        }
        let step = g.nodes.iter().find(|n| n.name == "step").unwrap();
        assert_eq!(step.parent.as_deref(), Some("/do/3/loop"));
        assert_eq!(step.line, Some(21));
    }

    #[test]
    fn changes_between_versions_are_named_by_task_path() {
        let a = crate::load(
            format!(
                "{HEAD}do:\n  - keep: {{set: {{x: 1}}}}\n  - guard:\n      try:\n        - risky: {{set: {{y: 1}}}}\n      catch: {{}}\n  - gone: {{set: {{z: 1}}}}\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let b = crate::load(
            format!(
                "{HEAD}do:\n  - keep: {{set: {{x: 1}}}}\n  - guard:\n      try:\n        - risky: {{set: {{y: 2}}}}\n        - more: {{set: {{w: 1}}}}\n      catch: {{}}\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let c = task_changes(&a, &b);
        assert_eq!(c.added, ["guard/more"]);
        assert_eq!(c.removed, ["gone"]);
        // `guard` itself changed (a task was added to its list), and so did `risky`.
        assert_eq!(c.changed, ["guard", "guard/risky"]);
        assert_eq!(task_changes(&a, &a), TaskChanges::default());
    }

    #[test]
    fn a_dag_follows_its_needs() {
        let g = graph_of(&format!(
            "{HEAD}do:
  - build:
      dag:
        tasks:
          - a: {{set: {{x: 1}}}}
          - b: {{set: {{x: 2}}, needs: [a]}}
          - c: {{set: {{x: 3}}, needs: [a]}}
"
        ));
        let e = edges(&g);
        for want in [
            "/do/0/build -> /do/0/build/dag/tasks/0/a",
            "/do/0/build/dag/tasks/0/a -needs-> /do/0/build/dag/tasks/1/b",
            "/do/0/build/dag/tasks/1/b -> end",
            "/do/0/build/dag/tasks/2/c -> end",
        ] {
            assert!(e.contains(&want.to_string()), "missing {want} in {e:#?}");
        }
        assert!(!e.contains(&"/do/0/build/dag/tasks/0/a -> end".to_string()));
    }
}

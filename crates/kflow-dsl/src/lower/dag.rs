//! The `dag` task (a kflow extension): its subtasks are an ordinary task list (lowered with
//! `needs`/`trigger` allowed and flow directives refused), plus the dependency graph read from
//! the subtasks' `needs` and `trigger`. Checked here: every name in `needs` is a task of the
//! same dag, no task needs itself, the graph has no cycle (reported with its path), the trigger
//! is a known rule, and a rule that needs a failed or succeeded dependency has dependencies.

use std::collections::HashMap;

use crate::model::{DagDef, DagNode, Trigger};
use crate::node::{Node, NodeKind};

use super::common::{self, Obj, key_str};
use super::{Cx, list_names, tasks};

/// One subtask as written: its name, its key node, and the mapping of its definition.
struct Item<'a> {
    name: &'a str,
    key: &'a Node,
    def: Option<&'a [(Node, Node)]>,
}

pub(super) fn dag(cx: &mut Cx, node: &Node, reference: &str) -> Option<DagDef> {
    let obj = Obj::new(cx, node, "'dag'", "dag")?;
    obj.check(cx, &["tasks"]);
    let list_node = obj.req(cx, "tasks")?;
    let list = tasks::task_list_in(
        cx,
        list_node,
        &format!("{reference}/dag/tasks"),
        &obj.field("tasks"),
        true,
    );
    // task_list_in reported a list that is not a list, and malformed items.
    let items: Vec<Item> = list_node
        .as_seq()
        .unwrap_or_default()
        .iter()
        .filter_map(|item| match item.as_map() {
            Some([(key, def)]) => Some(Item {
                name: key_str(key),
                key,
                def: def.as_map(),
            }),
            _ => None,
        })
        .collect();
    if list_node.as_seq().is_some_and(<[Node]>::is_empty) {
        cx.at(list_node, "'dag.tasks' needs at least one task");
        return None;
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        index.entry(item.name).or_insert(i);
    }
    let mut ok = true;
    let mut nodes = Vec::with_capacity(items.len());
    // For each edge: the node of its name in `needs`, to report cycles at.
    let mut edge_at: HashMap<(usize, usize), &Node> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let get = |key: &str| {
            item.def
                .and_then(|m| m.iter().find(|(k, _)| key_str(k) == key).map(|(_, v)| v))
        };
        let mut needs = Vec::new();
        if let Some(n) = get("needs") {
            match needs_names(cx, n, item.name) {
                None => ok = false,
                Some(names) => {
                    for (name_node, name) in names {
                        if name == item.name {
                            cx.at(name_node, format!("task '{name}' cannot need itself"));
                            ok = false;
                        } else if let Some(&j) = index.get(name) {
                            if !needs.contains(&j) {
                                needs.push(j);
                                edge_at.insert((i, j), name_node);
                            }
                        } else {
                            let known = list_names(
                                items.iter().map(|it| it.name).filter(|n| *n != item.name),
                            );
                            cx.at(
                                name_node,
                                format!("'needs' of task '{}' names '{name}', which is not a task of this dag (tasks here: {known})", item.name),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let mut trigger = Trigger::default();
        if let Some(n) = get("trigger") {
            let what = format!("'trigger' in task '{}'", item.name);
            match common::one_of(cx, n, &what, &Trigger::NAMES).and_then(Trigger::from_name) {
                None => ok = false,
                Some(t) => {
                    trigger = t;
                    if matches!(t, Trigger::OneFailed | Trigger::OneSucceeded)
                        && get("needs").is_none()
                    {
                        cx.at(
                            n,
                            format!(
                                "trigger '{}' of task '{}' can never hold: the task has no 'needs'",
                                t.name(),
                                item.name
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        nodes.push(DagNode { needs, trigger });
    }
    for cycle in cycles(&nodes) {
        let path: Vec<&str> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| items[i].name)
            .collect();
        let at = edge_at
            .get(&(cycle[0], cycle[1 % cycle.len()]))
            .copied()
            .unwrap_or(items[cycle[0]].key);
        cx.at(
            at,
            format!(
                "dependency cycle in the dag: {} (each task needs the next)",
                path.join(" -> ")
            ),
        );
        ok = false;
    }
    let list = list?;
    (ok && list.len() == nodes.len()).then_some(DagDef { tasks: list, nodes })
}

/// `needs:`: a list of task names (or one name).
fn needs_names<'n>(cx: &mut Cx, node: &'n Node, task: &str) -> Option<Vec<(&'n Node, &'n str)>> {
    let what = format!("'needs' in task '{task}'");
    match &node.kind {
        NodeKind::Str(s) => Some(vec![(node, s.as_str())]),
        NodeKind::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for item in items {
                match item.as_str() {
                    Some(s) => out.push((item, s)),
                    None => {
                        common::type_error(
                            cx,
                            item,
                            "a task name (a string)",
                            &format!("an item of {what}"),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        _ => {
            common::type_error(cx, node, "a list of task names", &what);
            None
        }
    }
}

/// The cycles of the graph (edges: `needs`), one per back edge met by a depth-first walk in
/// declaration order. Each cycle lists its tasks in `needs` order, starting with the one
/// declared first. Iterative, so a long chain cannot exhaust the stack.
fn cycles(nodes: &[DagNode]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Grey,
        Black,
    }
    let mut color = vec![Color::White; nodes.len()];
    let mut found = Vec::new();
    for root in 0..nodes.len() {
        if color[root] != Color::White {
            continue;
        }
        // (node, next edge to follow); the stack is the current path.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        color[root] = Color::Grey;
        while let Some(&mut (n, ref mut next)) = stack.last_mut() {
            match nodes[n].needs.get(*next) {
                Some(&m) => {
                    *next += 1;
                    match color[m] {
                        Color::White => {
                            color[m] = Color::Grey;
                            stack.push((m, 0));
                        }
                        Color::Grey => {
                            let start = stack.iter().position(|&(s, _)| s == m).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                stack[start..].iter().map(|&(s, _)| s).collect();
                            let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
                            cycle.rotate_left(first);
                            found.push(cycle);
                        }
                        Color::Black => {}
                    }
                }
                None => {
                    color[n] = Color::Black;
                    stack.pop();
                }
            }
        }
    }
    found
}

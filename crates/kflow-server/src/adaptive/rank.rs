//! Upward rank: a task's expected time to the end of the workflow along its longest path of
//! successors, itself included (`rank(t) = d(t) + max over successors s of rank(s)`). Ready
//! work with the longest expected remaining path goes first: the critical path is never kept
//! waiting behind work that can wait.

/// A DAG of tasks: `succ[t]` are the tasks that need `t` finished first.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    pub succ: Vec<Vec<usize>>,
}

impl Dag {
    pub fn new(n: usize) -> Dag {
        Dag {
            succ: vec![Vec::new(); n],
        }
    }

    pub fn len(&self) -> usize {
        self.succ.len()
    }

    pub fn is_empty(&self) -> bool {
        self.succ.is_empty()
    }

    /// `a` before `b`. Edges go from lower to higher index only (so the graph has no cycle).
    pub fn edge(&mut self, a: usize, b: usize) {
        assert!(a < b && b < self.succ.len(), "edges go forward: {a} -> {b}");
        if !self.succ[a].contains(&b) {
            self.succ[a].push(b);
        }
    }

    /// How many predecessors each task has.
    pub fn preds(&self) -> Vec<usize> {
        let mut p = vec![0; self.len()];
        for s in &self.succ {
            for &b in s {
                p[b] += 1;
            }
        }
        p
    }
}

/// The upward rank of every task from expected durations `d` (same length as the DAG).
pub fn upward(dag: &Dag, d: &[f64]) -> Vec<f64> {
    let mut rank = vec![0.0; dag.len()];
    // Edges go forward: successors have higher indices, so a backward sweep sees them first.
    for t in (0..dag.len()).rev() {
        let tail = dag.succ[t].iter().map(|&s| rank[s]).fold(0.0_f64, f64::max);
        rank[t] = d[t] + tail;
    }
    rank
}

/// The upward rank (ms) of every task of a workflow's graph (`kflow_dsl::graph`), from the
/// expected run time of each task (`expected_ms`, by JSON pointer; unknown tasks count 0).
/// Loops and jumps back are not followed twice: a cycle counts once.
pub fn of_graph(
    graph: &kflow_dsl::graph::Graph,
    expected_ms: &std::collections::HashMap<String, f64>,
) -> std::collections::HashMap<String, f64> {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); graph.nodes.len()];
    for e in &graph.edges {
        if let (Some(&a), Some(&b)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) {
            succ[a].push(b);
        }
    }
    // 0: not seen, 1: on the path being explored (an edge to it closes a cycle), 2: done.
    let mut state = vec![0u8; graph.nodes.len()];
    let mut rank = vec![0.0_f64; graph.nodes.len()];
    fn visit(
        t: usize,
        succ: &[Vec<usize>],
        d: &dyn Fn(usize) -> f64,
        state: &mut [u8],
        rank: &mut [f64],
    ) -> f64 {
        match state[t] {
            2 => return rank[t],
            1 => return 0.0,
            _ => {}
        }
        state[t] = 1;
        let mut tail = 0.0_f64;
        for &s in &succ[t] {
            tail = tail.max(visit(s, succ, d, state, rank));
        }
        rank[t] = d(t) + tail;
        state[t] = 2;
        rank[t]
    }
    let d = |t: usize| expected_ms.get(&graph.nodes[t].id).copied().unwrap_or(0.0);
    for t in 0..graph.nodes.len() {
        visit(t, &succ, &d, &mut state, &mut rank);
    }
    graph
        .nodes
        .iter()
        .zip(rank)
        .map(|(n, r)| (n.id.clone(), r))
        .collect()
}

/// The critical path of a workflow's graph by expected run times (ms, by JSON pointer): from
/// the task of highest rank, each time on to the successor of highest rank. Returns the tasks
/// on it that have an expected time (composite tasks are passed through), and its length.
pub fn critical_path(
    graph: &kflow_dsl::graph::Graph,
    expected_ms: &std::collections::HashMap<String, f64>,
) -> (Vec<String>, f64) {
    use std::collections::{HashMap, HashSet};
    let rank = of_graph(graph, expected_ms);
    let mut succ: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &graph.edges {
        succ.entry(e.from.as_str()).or_default().push(e.to.as_str());
    }
    let r = |id: &str| rank.get(id).copied().unwrap_or(0.0);
    // The first node of highest rank (document order breaks ties).
    let Some(start) =
        graph
            .nodes
            .iter()
            .map(|n| n.id.as_str())
            .fold(None, |best: Option<&str>, id| match best {
                Some(b) if r(b) >= r(id) => Some(b),
                _ => Some(id),
            })
    else {
        return (Vec::new(), 0.0);
    };
    let length = r(start);
    let mut path = Vec::new();
    let mut seen = HashSet::new();
    let mut at = start;
    while seen.insert(at) {
        if expected_ms.get(at).is_some_and(|d| *d > 0.0) {
            path.push(at.to_string());
        }
        let next = succ.get(at).and_then(|s| {
            s.iter()
                .copied()
                .filter(|n| !seen.contains(n))
                .fold(None, |best: Option<&str>, id| match best {
                    Some(b) if r(b) >= r(id) => Some(b),
                    _ => Some(id),
                })
        });
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    (path, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rank_is_the_longest_remaining_path() {
        // 0 -> 1 -> 3, 0 -> 2 -> 3; 2 is long.
        let mut g = Dag::new(4);
        g.edge(0, 1);
        g.edge(0, 2);
        g.edge(1, 3);
        g.edge(2, 3);
        let r = upward(&g, &[1.0, 2.0, 10.0, 1.0]);
        assert_eq!(r, vec![12.0, 3.0, 11.0, 1.0]);
        assert_eq!(g.preds(), vec![0, 1, 1, 2]);
    }

    #[test]
    fn a_workflows_fork_branches_rank_by_their_remaining_work() {
        let wf = kflow_dsl::load(
            br#"
document: {dsl: '1.0.0', namespace: t, name: r, version: '1.0.0'}
do:
  - both:
      fork:
        branches:
          - long:
              do:
                - a: {call: http, with: {method: get, endpoint: 'http://x/a'}}
                - b: {call: http, with: {method: get, endpoint: 'http://x/b'}}
          - short: {call: http, with: {method: get, endpoint: 'http://x/c'}}
  - last: {call: http, with: {method: get, endpoint: 'http://x/d'}}
"#,
        )
        .expect("valid");
        let g = kflow_dsl::graph::graph(&wf, None);
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        let find = |suffix: &str| {
            ids.iter()
                .find(|i| i.ends_with(suffix))
                .unwrap_or_else(|| panic!("{suffix} in {ids:?}"))
                .to_string()
        };
        let (a, b, c, d) = (find("/a"), find("/b"), find("/short"), find("/last"));
        let expected: std::collections::HashMap<String, f64> = [
            (a.clone(), 100.0),
            (b.clone(), 100.0),
            (c.clone(), 10.0),
            (d.clone(), 5.0),
        ]
        .into_iter()
        .collect();
        let r = of_graph(&g, &expected);
        assert_eq!(r[&d], 5.0);
        assert_eq!(r[&b], 105.0);
        assert_eq!(r[&a], 205.0, "{r:?}");
        assert_eq!(r[&c], 15.0, "{r:?}");
        let (path, length) = critical_path(&g, &expected);
        assert_eq!(path, vec![a, b, d]);
        assert_eq!(length, 205.0);
    }
}

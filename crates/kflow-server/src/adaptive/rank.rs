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
}

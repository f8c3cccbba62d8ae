//! A list-scheduling simulator on virtual time (no sleeps): tasks of a DAG run on `capacity`
//! slots; whenever a slot is free and work is ready, the dispatch order picks what runs next.
//! Durations are drawn from each task's known distribution with a seeded generator, the same
//! draws for every order compared.

use super::rank::{Dag, upward};

/// How ready work is ordered when it exceeds the free slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// In the order it became ready (ties: task index), as kflow dispatches today.
    Fifo,
    /// Longest expected remaining path first (upward rank from expected durations), then age.
    CriticalPath,
}

/// A task's duration: log-normal around `mean` with spread `sigma` (0: always `mean`).
#[derive(Debug, Clone, Copy)]
pub struct Dist {
    pub mean: f64,
    pub sigma: f64,
}

/// A reproducible generator (SplitMix64): the suite's seeds fix every draw.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A draw of `d`, with the log-normal's mean equal to `d.mean`.
    pub fn draw(&mut self, d: Dist) -> f64 {
        if d.sigma == 0.0 {
            return d.mean;
        }
        d.mean * (d.sigma * self.normal() - d.sigma * d.sigma / 2.0).exp()
    }
}

/// The makespan of one run of `dag` with actual durations `actual` on `capacity` slots, the
/// order deciding from `expected` durations.
pub fn makespan(dag: &Dag, expected: &[f64], actual: &[f64], capacity: usize, order: Order) -> f64 {
    let n = dag.len();
    let rank = upward(dag, expected);
    let mut preds = dag.preds();
    // Ready tasks with the time they became ready.
    let mut ready: Vec<(f64, usize)> = (0..n)
        .filter(|&t| preds[t] == 0)
        .map(|t| (0.0, t))
        .collect();
    // Running: (end time, task).
    let mut running: Vec<(f64, usize)> = Vec::new();
    let mut now = 0.0_f64;
    let mut done = 0;
    while done < n {
        while running.len() < capacity.max(1) && !ready.is_empty() {
            let pick = match order {
                Order::Fifo => (0..ready.len())
                    .min_by(|&a, &b| {
                        ready[a]
                            .0
                            .total_cmp(&ready[b].0)
                            .then(ready[a].1.cmp(&ready[b].1))
                    })
                    .expect("not empty"),
                Order::CriticalPath => (0..ready.len())
                    .max_by(|&a, &b| {
                        rank[ready[a].1]
                            .total_cmp(&rank[ready[b].1])
                            .then(ready[b].0.total_cmp(&ready[a].0))
                            .then(ready[b].1.cmp(&ready[a].1))
                    })
                    .expect("not empty"),
            };
            let (_, t) = ready.swap_remove(pick);
            running.push((now + actual[t], t));
        }
        // The next task to end.
        let i = (0..running.len())
            .min_by(|&a, &b| running[a].0.total_cmp(&running[b].0))
            .expect("work is running while some is not done");
        let (end, t) = running.swap_remove(i);
        now = end;
        done += 1;
        for &s in &dag.succ[t] {
            preds[s] -= 1;
            if preds[s] == 0 {
                ready.push((now, s));
            }
        }
    }
    now
}

/// One DAG of the suite: its shape, its tasks' distributions, the capacity it runs on.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub seed: u64,
    pub dag: Dag,
    pub dist: Vec<Dist>,
    pub capacity: usize,
}

impl Case {
    /// Mean makespan of both orders over `runs` draws of the durations (the same draws for
    /// both), and the mean lower bound no order can beat: (FIFO, critical-path-first, bound).
    pub fn compare(&self, runs: usize) -> (f64, f64, f64) {
        let expected: Vec<f64> = self.dist.iter().map(|d| d.mean).collect();
        let mut rng = Rng::new(self.seed ^ 0x5EED);
        let (mut fifo, mut cp, mut bound) = (0.0, 0.0, 0.0);
        for _ in 0..runs {
            let actual: Vec<f64> = self.dist.iter().map(|&d| rng.draw(d)).collect();
            bound += lower_bound(&self.dag, &actual, self.capacity);
            fifo += makespan(&self.dag, &expected, &actual, self.capacity, Order::Fifo);
            cp += makespan(
                &self.dag,
                &expected,
                &actual,
                self.capacity,
                Order::CriticalPath,
            );
        }
        let n = runs as f64;
        (fifo / n, cp / n, bound / n)
    }

    /// One draw of the durations (the `k`-th of this case's own sequence, apart from the draws
    /// of `compare`): what a real run of the case sleeps.
    pub fn draw(&self, k: usize) -> Vec<f64> {
        let mut rng = Rng::new(self.seed ^ 0xD8A3);
        let mut out = Vec::new();
        for _ in 0..=k {
            out = self.dist.iter().map(|&d| rng.draw(d)).collect();
        }
        out
    }
}

/// The makespan no dispatch order can beat with durations `d` on `capacity` slots: the longest
/// path, or all the work spread evenly over the slots, whichever is longer.
pub fn lower_bound(dag: &Dag, d: &[f64], capacity: usize) -> f64 {
    let path = upward(dag, d).into_iter().fold(0.0_f64, f64::max);
    path.max(d.iter().sum::<f64>() / capacity.max(1) as f64)
}

/// The suite: 24 synthetic DAGs of the shapes workflows take (chains beside fan-outs, layered
/// pipelines, map-reduce, random DAGs), each with its seed, on 2 to 4 slots.
pub fn suite() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, seed) in (0..24u64).map(|i| (i, 0x6b666c6f77_0000 + i)) {
        let mut rng = Rng::new(seed);
        let capacity = 2 + (i % 3) as usize;
        let (name, dag, dist) = match i % 6 {
            0 => chain_beside_fanout(&mut rng),
            1 => layered(&mut rng),
            2 => map_reduce(&mut rng),
            3 => random_dag(&mut rng),
            4 => long_tails(&mut rng),
            _ => pipelines(&mut rng),
        };
        cases.push(Case {
            name: format!("{name}-{i}"),
            seed,
            dag,
            dist,
            capacity,
        });
    }
    cases
}

fn dist(rng: &mut Rng, lo: f64, hi: f64) -> Dist {
    Dist {
        mean: lo + (hi - lo) * rng.unit(),
        sigma: 0.3,
    }
}

/// A start, a long chain of `k` steps, and beside it many short independent tasks; then an end.
fn chain_beside_fanout(rng: &mut Rng) -> (&'static str, Dag, Vec<Dist>) {
    let k = rng.range(4, 8);
    let m = rng.range(10, 24);
    let n = 2 + k + m;
    let mut g = Dag::new(n);
    let mut d = vec![dist(rng, 1.0, 2.0)];
    // Fan-out tasks first in index order (FIFO takes them first), the chain after them.
    for t in 1..=m {
        g.edge(0, t);
        g.edge(t, n - 1);
        d.push(dist(rng, 1.0, 4.0));
    }
    let first = m + 1;
    g.edge(0, first);
    for c in 0..k {
        let t = first + c;
        if c + 1 < k {
            g.edge(t, t + 1);
        } else {
            g.edge(t, n - 1);
        }
        d.push(dist(rng, 3.0, 8.0));
    }
    d.push(dist(rng, 1.0, 2.0));
    ("chain+fanout", g, d)
}

/// Layers of random width, each task needing one to three of the layer before.
fn layered(rng: &mut Rng) -> (&'static str, Dag, Vec<Dist>) {
    let layers = rng.range(4, 7);
    let widths: Vec<usize> = (0..layers).map(|_| rng.range(2, 7)).collect();
    let n: usize = widths.iter().sum();
    let mut g = Dag::new(n);
    let mut start = 0;
    for l in 1..layers {
        let prev = start..start + widths[l - 1];
        let cur = prev.end..prev.end + widths[l];
        for t in cur.clone() {
            for _ in 0..rng.range(1, 3) {
                let p = prev.start + rng.range(0, widths[l - 1] - 1);
                g.edge(p, t);
            }
        }
        start = prev.end;
    }
    let d = (0..n)
        .map(|_| {
            if rng.unit() < 0.2 {
                dist(rng, 6.0, 12.0)
            } else {
                dist(rng, 1.0, 3.0)
            }
        })
        .collect();
    ("layered", g, d)
}

/// A split, `m` map tasks (a few much longer than the rest), `r` reducers each needing some
/// maps, a final merge.
fn map_reduce(rng: &mut Rng) -> (&'static str, Dag, Vec<Dist>) {
    let m = rng.range(8, 16);
    let r = rng.range(2, 4);
    let n = 1 + m + r + 1;
    let mut g = Dag::new(n);
    let mut d = vec![dist(rng, 0.5, 1.0)];
    for t in 1..=m {
        g.edge(0, t);
        d.push(if rng.unit() < 0.25 {
            dist(rng, 8.0, 14.0)
        } else {
            dist(rng, 1.0, 3.0)
        });
    }
    for j in 0..r {
        let red = 1 + m + j;
        for t in 1..=m {
            if (t + j) % r == 0 || rng.unit() < 0.3 {
                g.edge(t, red);
            }
        }
        g.edge(red, n - 1);
        d.push(dist(rng, 2.0, 5.0));
    }
    d.push(dist(rng, 0.5, 1.0));
    ("map-reduce", g, d)
}

/// A random DAG: each pair (a < b) an edge with a small probability.
fn random_dag(rng: &mut Rng) -> (&'static str, Dag, Vec<Dist>) {
    let n = rng.range(15, 30);
    let mut g = Dag::new(n);
    for a in 0..n {
        for b in a + 1..n {
            if rng.unit() < 0.12 {
                g.edge(a, b);
            }
        }
    }
    let d = (0..n).map(|_| dist(rng, 1.0, 8.0)).collect();
    ("random", g, d)
}

/// Independent short tasks and a few long two-step chains that start among them.
fn long_tails(rng: &mut Rng) -> (&'static str, Dag, Vec<Dist>) {
    let short = rng.range(12, 20);
    let chains = rng.range(2, 3);
    let n = short + 2 * chains;
    let mut g = Dag::new(n);
    let mut d: Vec<Dist> = (0..short).map(|_| dist(rng, 1.0, 2.0)).collect();
    for c in 0..chains {
        let a = short + 2 * c;
        g.edge(a, a + 1);
        d.push(dist(rng, 5.0, 9.0));
        d.push(dist(rng, 5.0, 9.0));
    }
    ("long-tails", g, d)
}

/// Parallel pipelines of different lengths joined at the end.
fn pipelines(rng: &mut Rng) -> (&'static str, Dag, Vec<Dist>) {
    let p = rng.range(3, 6);
    let lens: Vec<usize> = (0..p).map(|_| rng.range(1, 6)).collect();
    let n = 1 + lens.iter().sum::<usize>() + 1;
    let mut g = Dag::new(n);
    let mut d = vec![dist(rng, 0.5, 1.0)];
    let mut t = 1;
    for &len in &lens {
        g.edge(0, t);
        for s in 0..len {
            if s + 1 < len {
                g.edge(t + s, t + s + 1);
            } else {
                g.edge(t + s, n - 1);
            }
            d.push(dist(rng, 1.0, 5.0));
        }
        t += len;
    }
    d.push(dist(rng, 0.5, 1.0));
    ("pipelines", g, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_critical_path_goes_first_when_capacity_is_short() {
        // One slot: a long chain (0 -> 1) beside two short tasks (2, 3), all ready at 0 except 1.
        let mut g = Dag::new(4);
        g.edge(0, 1);
        let d = [5.0, 5.0, 1.0, 1.0];
        // Two slots, FIFO: 0 and 2 start; at 1, 3 starts; at 5, 1 starts: ends at 10.
        assert_eq!(makespan(&g, &d, &d, 2, Order::Fifo), 10.0);
        assert_eq!(makespan(&g, &d, &d, 2, Order::CriticalPath), 10.0);
        // Reordered so that FIFO takes the short ones first: 2, 3 before 0.
        let mut g = Dag::new(4);
        g.edge(2, 3);
        let d = [1.0, 1.0, 5.0, 5.0];
        assert_eq!(
            makespan(&g, &d, &d, 1, Order::Fifo),
            12.0,
            "one slot: the sum"
        );
        // Two slots: FIFO runs 0 and 1 first (ready first by index), then 2 at 1, 3 at 6: 11.
        assert_eq!(makespan(&g, &d, &d, 2, Order::Fifo), 11.0);
        // Critical path first: 2 at 0 (rank 10), 0 beside it, 1 at 1, 3 at 5: 10.
        assert_eq!(makespan(&g, &d, &d, 2, Order::CriticalPath), 10.0);
        // The bound: the chain 2 -> 3 (10) is longer than 12 / 2.
        assert_eq!(lower_bound(&g, &d, 2), 10.0);
        assert_eq!(lower_bound(&g, &d, 1), 12.0);
    }

    #[test]
    fn the_suite_is_reproducible() {
        let a: Vec<(f64, f64, f64)> = suite().iter().map(|c| c.compare(3)).collect();
        let b: Vec<(f64, f64, f64)> = suite().iter().map(|c| c.compare(3)).collect();
        assert_eq!(a, b);
        assert!(suite().len() >= 20);
        // No order beats the bound.
        for (f, c, lb) in a {
            assert!(f >= lb - 1e-9 && c >= lb - 1e-9, "{f} {c} {lb}");
        }
    }
}

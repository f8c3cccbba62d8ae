//! Timers due soon, in memory; the rest stay rows in the store until they come near.
//!
//! Only timers due within [`HORIZON_MS`] are held here, so 100,000 instances waiting on
//! one-hour timers cost rows on disk, not memory. The driver rescans the store for timers
//! entering the horizon every [`SCAN_EVERY_MS`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

pub const HORIZON_MS: i64 = 5_000;
pub const SCAN_EVERY_MS: i64 = 1_000;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(i64, String, u64)>>,
    known: HashSet<(String, u64)>,
}

impl Timers {
    /// Adds a timer if it is due within the horizon of `now` and not already held.
    pub fn offer(&mut self, now: i64, due: i64, instance: &str, effect: u64) {
        if due > now + HORIZON_MS {
            return;
        }
        if self.known.insert((instance.to_string(), effect)) {
            self.heap.push(Reverse((due, instance.to_string(), effect)));
        }
    }

    pub fn next_due(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Removes and returns every timer due at or before `now`.
    pub fn pop_due(&mut self, now: i64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Some(Reverse((due, _, _))) = self.heap.peek() {
            if *due > now {
                break;
            }
            if let Some(Reverse((_, inst, effect))) = self.heap.pop() {
                self.known.remove(&(inst.clone(), effect));
                out.push((inst, effect));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_near_timers_once_and_pops_in_order() {
        let mut t = Timers::default();
        t.offer(0, 10_000_000, "far", 1);
        t.offer(0, 200, "b", 1);
        t.offer(0, 100, "a", 1);
        t.offer(0, 100, "a", 1);
        assert_eq!(t.heap.len(), 2);
        assert_eq!(t.next_due(), Some(100));
        assert_eq!(t.pop_due(150), vec![("a".to_string(), 1)]);
        assert_eq!(t.pop_due(1_000), vec![("b".to_string(), 1)]);
        assert_eq!(t.next_due(), None);
    }
}

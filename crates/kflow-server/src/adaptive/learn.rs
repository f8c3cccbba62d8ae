//! Learned durations: per workflow version and task, how long its runs waited in a queue and
//! how long they ran (DDSketch: mergeable quantiles within 1% relative error, in bounded
//! memory), and how often they failed or were retries. Updated as tasks finish; what each node
//! learned since its last flush is merged into the store every few seconds (several nodes merge
//! into the same rows), and read back from there for `kflow analyze`.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sketches_ddsketch::{Config, DDSketch};

/// Statistics of one task (of one workflow version).
#[derive(Clone, Serialize, Deserialize)]
pub struct TaskStats {
    /// Seconds from queued to taken by a worker.
    pub wait: DDSketch,
    /// Seconds from taken to its result.
    pub run: DDSketch,
    pub ok: u64,
    pub failed: u64,
    /// Runs that were not the task's first attempt.
    pub retries: u64,
    /// Of those, the ones that succeeded.
    #[serde(default)]
    pub retry_ok: u64,
}

/// Relative accuracy of the quantiles (1%), and the most buckets a sketch keeps (its memory
/// bound: about 16 bytes each; durations from a millisecond to days fit in far fewer).
fn config() -> Config {
    Config::new(0.01, 2048, 1e-6)
}

impl Default for TaskStats {
    fn default() -> Self {
        TaskStats {
            wait: DDSketch::new(config()),
            run: DDSketch::new(config()),
            ok: 0,
            failed: 0,
            retries: 0,
            retry_ok: 0,
        }
    }
}

impl TaskStats {
    pub fn merge(&mut self, o: &TaskStats) {
        let _ = self.wait.merge(&o.wait);
        let _ = self.run.merge(&o.run);
        self.ok += o.ok;
        self.failed += o.failed;
        self.retries += o.retries;
        self.retry_ok += o.retry_ok;
    }

    pub fn count(&self) -> u64 {
        self.ok + self.failed
    }
}

/// Merges two stored statistics (JSON): the store's merge function. A side that does not
/// read (another build's format) gives way to the other.
pub fn merge_json(a: &Value, b: &Value) -> Value {
    match (
        serde_json::from_value::<TaskStats>(a.clone()),
        serde_json::from_value::<TaskStats>(b.clone()),
    ) {
        (Ok(mut x), Ok(y)) => {
            x.merge(&y);
            serde_json::to_value(x).unwrap_or_else(|_| b.clone())
        }
        (Err(_), _) => b.clone(),
        (Ok(_), Err(_)) => a.clone(),
    }
}

/// (namespace, workflow, version, task).
pub type Key = (String, String, String, String);

/// What this node learned since its last flush.
#[derive(Default)]
pub struct Learned {
    pending: Mutex<HashMap<Key, TaskStats>>,
}

/// Tasks whose statistics wait for a flush at most (beyond, new ones are not counted until
/// the next flush: memory stays bounded whatever the workflows do).
const MAX_PENDING: usize = 10_000;

impl Learned {
    /// A task finished: `wait_s` in the queue, `run_s` running, its outcome, its attempt.
    pub fn record(&self, key: Key, wait_s: f64, run_s: f64, ok: bool, attempt: u32) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PENDING && !p.contains_key(&key) {
            return;
        }
        let s = p.entry(key).or_default();
        s.wait.add(wait_s.max(0.0));
        s.run.add(run_s.max(0.0));
        if ok {
            s.ok += 1;
        } else {
            s.failed += 1;
        }
        if attempt > 1 {
            s.retries += 1;
            if ok {
                s.retry_ok += 1;
            }
        }
    }

    /// Takes what was learned since the last flush.
    pub fn take(&self) -> Vec<(Key, TaskStats)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
    }

    /// Gives back what a flush could not write (merged with what came meanwhile).
    pub fn put_back(&self, rows: Vec<(Key, TaskStats)>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (k, s) in rows {
            p.entry(k).or_default().merge(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent_and_merge_across_nodes() {
        let (a, b) = (Learned::default(), Learned::default());
        let key = || {
            (
                "ns".to_string(),
                "wf".to_string(),
                "1".to_string(),
                "t".to_string(),
            )
        };
        // Node a sees runs of 1..=500 ms, node b 501..=1000 ms.
        for i in 1..=500 {
            a.record(key(), 0.01, i as f64 / 1000.0, true, 1);
            b.record(
                key(),
                0.02,
                (500 + i) as f64 / 1000.0,
                i % 10 != 0,
                1 + (i % 5 == 0) as u32,
            );
        }
        let sa = serde_json::to_value(&a.take()[0].1).unwrap();
        let sb = serde_json::to_value(&b.take()[0].1).unwrap();
        let m: TaskStats = serde_json::from_value(merge_json(&sa, &sb)).unwrap();
        assert_eq!((m.count(), m.failed, m.retries), (1000, 50, 100));
        let p50 = m.run.quantile(0.5).unwrap().unwrap();
        let p99 = m.run.quantile(0.99).unwrap().unwrap();
        assert!((p50 - 0.5).abs() <= 0.5 * 0.02, "{p50}");
        assert!((p99 - 0.99).abs() <= 0.99 * 0.02, "{p99}");
        assert!(a.take().is_empty(), "taken");
        // A row another build wrote is replaced, not merged into garbage.
        assert_eq!(merge_json(&serde_json::json!({"v": 9}), &sb), sb);
    }
}

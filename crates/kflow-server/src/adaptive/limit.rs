//! Adaptive concurrency toward a service: per target host, how many calls may be in flight at
//! once, adjusted to what the host shows (in the spirit of AIMD and of Netflix's gradient
//! limiters). The least latency seen is the host's baseline:
//!
//! - a call that fails (an error) cuts the limit to 70% (never below `min`);
//! - a call slower than 1.5 × the baseline cuts it to 90%: the host queues, so it is past the
//!   concurrency it serves well;
//! - otherwise the limit grows by one per limit's worth of answers (about one per round trip),
//!   but only while the limit is in use (no growth when there is not enough work to test it).
//!
//! The baseline is forgotten slowly (it rises 1% per 100 answers toward the latency seen), so
//! a host that became slower for good is learned again.

/// The limiter of one host.
#[derive(Debug, Clone)]
pub struct Aimd {
    pub limit: f64,
    pub min: f64,
    pub max: f64,
    /// Calls in flight now.
    pub in_flight: usize,
    /// The least latency seen (ms): the host's baseline.
    baseline_ms: Option<f64>,
    answers: u64,
}

impl Aimd {
    pub fn new(initial: f64, min: f64, max: f64) -> Aimd {
        Aimd {
            limit: initial.clamp(min, max),
            min,
            max,
            in_flight: 0,
            baseline_ms: None,
            answers: 0,
        }
    }

    /// Whether another call may start now.
    pub fn has_room(&self) -> bool {
        (self.in_flight as f64) < self.limit.floor().max(1.0)
    }

    /// A call answered after `ms`, `ok` or not; `in_flight_at_start` calls were in flight when
    /// it started (itself included).
    pub fn answered(&mut self, ms: f64, ok: bool, in_flight_at_start: usize) {
        self.answers += 1;
        let base = match self.baseline_ms {
            Some(b) if ms >= b => {
                // Forgotten slowly: 1% of the way toward what is seen, every 100 answers.
                if self.answers % 100 == 0 {
                    b + (ms - b) * 0.01
                } else {
                    b
                }
            }
            _ => ms.max(0.001),
        };
        self.baseline_ms = Some(base);
        if !ok {
            self.limit = (self.limit * 0.7).max(self.min);
        } else if ms > 1.5 * base {
            self.limit = (self.limit * 0.9).max(self.min);
        } else if in_flight_at_start as f64 >= self.limit.floor() {
            self.limit = (self.limit + 1.0 / self.limit).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that answers in 20 ms up to `n` calls at once and queues beyond (latency grows
    /// with the excess): driven with unlimited demand, the limit settles near `n`.
    #[test]
    fn the_limit_settles_near_what_the_host_serves_well() {
        for n in [2usize, 4, 8, 16] {
            let mut l = Aimd::new(1.0, 1.0, 64.0);
            let mut seen = Vec::new();
            for _ in 0..3_000 {
                let c = l.limit.floor().max(1.0) as usize;
                let ms = if c <= n {
                    20.0
                } else {
                    20.0 * (c as f64 / n as f64).powi(2)
                };
                l.in_flight = c;
                l.answered(ms, true, c);
                seen.push(l.limit.floor());
            }
            let tail = &seen[seen.len() - 500..];
            let mean = tail.iter().sum::<f64>() / tail.len() as f64;
            assert!(
                mean >= n as f64 * 0.7 && mean <= n as f64 * 1.5,
                "n={n}: the calls in flight settled at {mean:.1} on average"
            );
        }
    }

    #[test]
    fn errors_cut_the_limit_and_it_never_leaves_its_bounds() {
        let mut l = Aimd::new(10.0, 2.0, 12.0);
        l.answered(10.0, false, 10);
        assert!((l.limit - 7.0).abs() < 1e-9);
        for _ in 0..20 {
            l.answered(10.0, false, 1);
        }
        assert_eq!(l.limit, 2.0);
        for _ in 0..10_000 {
            l.answered(10.0, true, 100);
        }
        assert_eq!(l.limit, 12.0);
        // Not in use: no growth.
        let mut l = Aimd::new(3.0, 1.0, 64.0);
        for _ in 0..100 {
            l.answered(10.0, true, 1);
        }
        assert_eq!(l.limit, 3.0);
    }
}

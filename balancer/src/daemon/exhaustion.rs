//! Telling the operator that NAT ran out of sources: new connections the
//! datapath dropped because every candidate source of a CPU's port range
//! was taken for their backend (`drop_nat_ports`). The counter says how
//! many; the log says so when it happens, at most once per
//! [`EXHAUSTION_LOG_EVERY`], with how many since the last line.

use std::time::{Duration, Instant};

/// Least time between two log lines about exhausted sources.
pub(super) const EXHAUSTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the last reads of `drop_nat_ports` were.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Exhaustion {
    /// The counter when last logged (or first read).
    logged: Option<u64>,
    /// When last logged.
    at: Option<Instant>,
}

impl Exhaustion {
    /// Takes the counter's value `count` at `now`: the connections dropped
    /// since the last line, when a line is due.
    pub(super) fn read(&mut self, count: u64, now: Instant) -> Option<u64> {
        let Some(logged) = self.logged else {
            // The first read is the baseline: what a previous daemon's
            // datapath counted is not news.
            self.logged = Some(count);
            return None;
        };
        let dropped = count.saturating_sub(logged);
        let due = self
            .at
            .is_none_or(|at| now.duration_since(at) >= EXHAUSTION_LOG_EVERY);
        if dropped == 0 || !due {
            return None;
        }
        self.logged = Some(count);
        self.at = Some(now);
        Some(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_told_at_most_every_ten_seconds_with_their_count() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut e = Exhaustion::default();
        // (seconds, counter) -> told
        let table = [
            (0, 5, None),
            (1, 5, None),
            (2, 9, Some(4)),
            (3, 20, None),
            (11, 20, None),
            (12, 21, Some(12)),
            (30, 21, None),
            (31, 22, Some(1)),
        ];
        for (s, count, told) in table {
            assert_eq!(e.read(count, at(s)), told, "at {s} s, counter {count}");
        }
    }
}

//! Waits that double after every failure: how often something that keeps
//! failing is tried again (an unresolved backend's neighbour read, the
//! maps' writes after a failure), so a lasting failure costs a trickle of
//! attempts and of log lines, not one every round. Pure logic.

use std::time::{Duration, Instant};

/// When to try again after failures: `first` after the first, then twice
/// as long each time, up to `longest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Backoff {
    first: Duration,
    longest: Duration,
    /// When the next try is due, and the wait after the next failure.
    next: Option<(Instant, Duration)>,
}

impl Backoff {
    pub(super) const fn new(first: Duration, longest: Duration) -> Backoff {
        Backoff {
            first,
            longest,
            next: None,
        }
    }

    /// Whether a try is due at `now` (always, until a failure).
    pub(super) fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|(at, _)| at <= now)
    }

    /// When the next try is due (None: at once).
    pub(super) fn due_at(&self) -> Option<Instant> {
        self.next.map(|(at, _)| at)
    }

    /// Records a failed try at `now`.
    pub(super) fn failed(&mut self, now: Instant) {
        let wait = self.next.map_or(self.first, |(_, wait)| wait);
        self.next = Some((now + wait, (wait * 2).min(self.longest)));
    }

    /// Records a try that succeeded: the next one is due at once.
    pub(super) fn succeeded(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_longest_and_a_success_clears_them() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let start = Instant::now();
        assert!(b.due(start));
        let mut waits = Vec::new();
        let mut now = start;
        for _ in 0..5 {
            b.failed(now);
            let at = b.due_at().unwrap();
            waits.push(at - now);
            assert!(!b.due(at - Duration::from_millis(1)));
            assert!(b.due(at));
            now = at;
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 5, 5]);
        b.succeeded();
        assert!(b.due(now));
        assert_eq!(b.due_at(), None);
    }
}

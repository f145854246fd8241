//! How often unresolved backends are read again. A backend whose MAC is
//! known is read at every round (its neighbour may change); one that is
//! not resolved, or not reachable, costs a route and a link query and a
//! datagram that makes the kernel resolve it (a neighbour-table entry): so
//! each one waits longer after every failed read (from [`FIRST_WAIT`],
//! doubling, up to [`LONGEST_WAIT`]), and all of them together are read at
//! most [`BUDGET`] times a second. Thousands of unreachable backends then
//! cost a bounded trickle of probes, not a flood every second. Pure logic.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::backoff::Backoff;

/// Wait after the first failed read of a backend: as quick as the daemon's
/// fastest round, so a backend added at runtime resolves within tens of
/// milliseconds.
pub(super) const FIRST_WAIT: Duration = Duration::from_millis(10);
/// Longest wait between two reads of an unresolved backend.
pub(super) const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// Reads of unresolved backends per second, over all of them.
pub(super) const BUDGET: u32 = 200;

/// When each unresolved backend is due, and the budget of this second.
/// A backend is named by `K`: its address, or its address and how it is
/// reached (each resolves its own way).
#[derive(Debug)]
pub(super) struct Pacer<K = IpAddr> {
    /// Backend → when it was first seen unresolved, and its backoff.
    waits: BTreeMap<K, (Instant, Backoff)>,
    /// The second the budget counts, and the reads made in it.
    second: Option<(Instant, u32)>,
}

impl<K> Default for Pacer<K> {
    fn default() -> Self {
        Pacer {
            waits: BTreeMap::new(),
            second: None,
        }
    }
}

impl<K: Ord + Copy> Pacer<K> {
    /// Which of the unresolved `addresses` to read now: those due, oldest
    /// first, within what is left of this second's budget.
    pub(super) fn due(&mut self, addresses: &[K], now: Instant) -> Vec<K> {
        let used = match self.second {
            Some((start, used)) if now.duration_since(start) < Duration::from_secs(1) => used,
            _ => {
                self.second = Some((now, 0));
                0
            }
        };
        // A backend seen for the first time is due from now: after those
        // that waited longer, before those read since.
        let mut due: Vec<(Instant, K)> = addresses
            .iter()
            .filter_map(|address| {
                let (seen, backoff) = self
                    .waits
                    .entry(*address)
                    .or_insert((now, Backoff::new(FIRST_WAIT, LONGEST_WAIT)));
                let at = backoff.due_at().unwrap_or(*seen);
                backoff.due(now).then_some((at, *address))
            })
            .collect();
        due.sort();
        let left = BUDGET.saturating_sub(used) as usize;
        due.truncate(left);
        if let Some((_, used)) = &mut self.second {
            *used += due.len() as u32;
        }
        due.into_iter().map(|(_, address)| address).collect()
    }

    /// Records a read of `address`: resolved (it is read at every round
    /// from now on) or not (it waits twice as long as last time).
    pub(super) fn record(&mut self, address: K, resolved: bool, now: Instant) {
        if resolved {
            self.waits.remove(&address);
            return;
        }
        self.waits
            .entry(address)
            .or_insert((now, Backoff::new(FIRST_WAIT, LONGEST_WAIT)))
            .1
            .failed(now);
    }

    /// Forgets every address not in `keep` (backends removed).
    pub(super) fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.waits.retain(|address, _| keep(address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from((0x0a00_0000 + i).to_be_bytes())
    }

    #[test]
    fn an_unresolved_backend_waits_twice_as_long_after_each_failed_read() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        let a = [ip(1)];
        let mut now = start;
        let mut reads = Vec::new();
        // One round every 10 ms for two minutes.
        while now < start + Duration::from_secs(120) {
            if !pacer.due(&a, now).is_empty() {
                reads.push(now - start);
                pacer.record(a[0], false, now);
            }
            now += Duration::from_millis(10);
        }
        let waits: Vec<Duration> = reads.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(waits[0], FIRST_WAIT);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), LONGEST_WAIT);
        // Every 10 ms before: 12,000 reads in two minutes.
        assert!(reads.len() < 20, "{} reads: {reads:?}", reads.len());
        // Resolved, it is due at every round again.
        pacer.record(a[0], true, now);
        assert_eq!(pacer.due(&a, now), a);
    }

    #[test]
    fn all_unresolved_backends_together_stay_within_the_budget() {
        let mut pacer = Pacer::default();
        let addresses: Vec<IpAddr> = (0..2000).map(ip).collect();
        let start = Instant::now();
        let mut reads = 0;
        for tick in 0..10u32 {
            let now = start + Duration::from_millis(100) * tick;
            let due = pacer.due(&addresses, now);
            reads += due.len();
            for address in due {
                pacer.record(address, false, now);
            }
        }
        assert_eq!(reads, BUDGET as usize, "one second of rounds");
        // The next second has a budget of its own, and backends not read
        // yet go first.
        let read: Vec<IpAddr> = addresses[..BUDGET as usize].to_vec();
        let now = start + Duration::from_secs(1);
        let due = pacer.due(&addresses, now);
        assert_eq!(due.len(), BUDGET as usize);
        assert!(due.iter().all(|a| !read.contains(a)), "{due:?}");
    }

    #[test]
    fn removed_backends_are_forgotten() {
        let mut pacer = Pacer::default();
        let now = Instant::now();
        pacer.record(ip(1), false, now);
        pacer.record(ip(2), false, now);
        pacer.retain(|a| *a == ip(2));
        assert_eq!(pacer.waits.len(), 1);
    }
}

//! The insert budget of the connection table: how fast new entries may
//! arrive before the datapath stops inserting, so that a flood (spoofed
//! 5-tuples sent twice, spoofed UDP) cannot churn the table and evict real
//! flows.
//!
//! One bucket per CPU (a per-CPU array of one [`Budget`]), as the table has
//! one LRU list per CPU: CPU n's inserts evict only entries CPU n inserted,
//! so a per-CPU share of the host's rate turns every list over no faster
//! than the host's rate turns over the whole table. No atomics.
//!
//! The bucket holds credit in nanoseconds: it earns one nanosecond per
//! nanosecond, up to [`BUDGET_BURST_NS`], and an insert spends
//! [`crate::settings::Settings::insert_cost_ns`] (one second times the CPUs
//! divided by the host's inserts per second): no multiplication or
//! division per packet.

/// One CPU's bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Credit left, in nanoseconds of earning.
    pub credit_ns: u64,
    /// When the credit was last brought up to date.
    pub last_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Budget>() == 16);

/// Most credit a bucket holds: one second's worth of inserts, so a burst
/// of new flows after a quiet spell is not cut short.
pub const BUDGET_BURST_NS: u64 = 1_000_000_000;

impl Budget {
    /// Spends `cost_ns` at `now` if the bucket holds that much credit after
    /// earning since its last update; `cost_ns` 0 is no budget at all (every
    /// insert allowed). A clock behind the bucket earns nothing.
    #[inline(always)]
    pub fn take(&mut self, cost_ns: u64, now: u64) -> bool {
        if cost_ns == 0 {
            return true;
        }
        let earned = now.saturating_sub(self.last_ns);
        let credit = self.credit_ns.saturating_add(earned);
        self.credit_ns = if credit > BUDGET_BURST_NS {
            BUDGET_BURST_NS
        } else {
            credit
        };
        if now > self.last_ns {
            self.last_ns = now;
        }
        if self.credit_ns < cost_ns {
            return false;
        }
        self.credit_ns -= cost_ns;
        true
    }
}

/// The cost of one ICMP message the datapath builds (a tunnel's path MTU,
/// see `tx_too_big`): 1,000 a second on each CPU, with a second's burst,
/// as RFC 4443 (2.4 f) asks of every sender of ICMP errors; past it the
/// packet is dropped (`drop_too_big`).
pub const ICMP_COST_NS: u64 = 1_000_000;

/// The cost of one insert on one of `cpus` CPUs when the host allows
/// `per_second` inserts a second; 0 (no budget) for a rate of 0. A rate
/// above one insert per nanosecond on a CPU costs the least there is, 1.
pub const fn insert_cost_ns(per_second: u32, cpus: u32) -> u64 {
    if per_second == 0 {
        return 0;
    }
    let cpus = if cpus == 0 { 1 } else { cpus as u64 };
    let cost = BUDGET_BURST_NS * cpus / per_second as u64;
    if cost == 0 { 1 } else { cost }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case: its name, the cost, then (time, allowed) for each insert
    /// tried.
    type Case = (&'static str, u64, &'static [(u64, bool)]);

    const CASES: &[Case] = &[
        (
            "no budget allows everything",
            0,
            &[(0, true), (0, true), (0, true)],
        ),
        (
            "a fresh bucket starts full: a second's worth, then nothing",
            400_000_000,
            &[
                (5_000_000_000, true),
                (5_000_000_000, true),
                (5_000_000_000, false),
            ],
        ),
        (
            "credit comes back with time",
            500_000_000,
            &[
                (10_000_000_000, true),
                (10_000_000_000, true),
                (10_000_000_000, false),
                (10_400_000_000, false),
                (10_500_000_000, true),
                (10_500_000_000, false),
            ],
        ),
        (
            "a long quiet spell earns no more than the burst",
            250_000_000,
            &[
                (100_000_000_000, true),
                (100_000_000_000, true),
                (100_000_000_000, true),
                (100_000_000_000, true),
                (100_000_000_000, false),
            ],
        ),
        (
            "a clock that goes back earns nothing",
            600_000_000,
            &[
                (3_000_000_000, true),
                (1_000_000_000, false),
                (3_000_000_000, false),
            ],
        ),
    ];

    #[test]
    fn the_bucket_allows_its_rate_and_burst_and_no_more() {
        for (name, cost, tries) in CASES {
            let mut b = Budget::default();
            for (i, (now, allowed)) in tries.iter().enumerate() {
                assert_eq!(b.take(*cost, *now), *allowed, "{name}: try {i}");
            }
        }
    }

    #[test]
    fn the_host_rate_is_shared_between_cpus() {
        assert_eq!(insert_cost_ns(0, 8), 0);
        assert_eq!(insert_cost_ns(1_000, 1), 1_000_000);
        assert_eq!(insert_cost_ns(16_384, 2), 122_070);
        assert_eq!(insert_cost_ns(1_000, 0), 1_000_000, "no CPU count: one");
        assert_eq!(insert_cost_ns(u32::MAX, 1), 1, "never free by rounding");
    }
}

//! Two policies that protect a VIP's availability when its health checks
//! say something drastic. Pure rules, no I/O; the daemon applies them when
//! it decides what the maps hold (see `daemon::effective`).
//!
//! - Panic threshold: when less than a VIP's `panic_threshold` percent of
//!   its weight is up, the checks are more likely wrong (a partition
//!   between the balancer and the backends, a check that broke) than
//!   nearly every backend dead; piling every new flow onto the few
//!   survivors would take them down too. So none of the checks is
//!   trusted: new flows spread over every backend, as if all were up.
//! - Slow start: a backend that comes up (or is added, or undrained) with
//!   cold caches and empty pools gets a small share of new flows first,
//!   then more in equal steps, its full weight after `slow_start`. The
//!   ramp works on the weight, so it holds for every scheduler: a Maglev
//!   or round-robin ring gives the backend slots in proportion, and the
//!   least-* schedulers divide its load by it.

use std::time::Duration;

/// Most steps a slow start takes: each step changes the VIP's ring, which
/// moves a share of new flows (never established ones), so fewer, larger
/// steps are kinder than a smooth curve.
pub const MAX_SLOW_START_STEPS: u32 = 10;

/// Shortest step of a slow start: the daemon brings the maps in line about
/// once a second (`--reconcile-interval`), so finer steps would not be seen.
pub const MIN_SLOW_START_STEP: Duration = Duration::from_secs(1);

/// Shortest `slow_start` accepted.
pub const MIN_SLOW_START: Duration = Duration::from_secs(1);

/// Longest `slow_start` accepted: a backend an hour from its full share is
/// a sign of a typo, not of a cold cache.
pub const MAX_SLOW_START: Duration = Duration::from_secs(60 * 60);

/// Where a backend is in its slow start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ramp {
    /// The weight the datapath gets now: at least 1, below the configured
    /// one.
    pub weight: u32,
    /// The step it is in, from 1, of `steps`.
    pub step: u32,
    pub steps: u32,
    /// Until the backend has its full weight (the start of the last
    /// step).
    pub left: Duration,
    /// Until the next step.
    pub next_step: Duration,
}

/// The steps of a slow start of `length`: [`MAX_SLOW_START_STEPS`], or
/// fewer so that none is shorter than [`MIN_SLOW_START_STEP`] (at least 1).
pub fn slow_start_steps(length: Duration) -> u32 {
    let whole = length.as_nanos() / MIN_SLOW_START_STEP.as_nanos();
    whole.clamp(1, u128::from(MAX_SLOW_START_STEPS)) as u32
}

/// Where a backend of `weight` is `elapsed` into a slow start of `length`,
/// which takes n steps of `length / n` ([`slow_start_steps`]): in step k
/// (from 1) it has k/n of its weight, rounded up and at least 1, so its
/// full weight in the last. None from the last step on (or for weight 0,
/// which a drain gives and a ramp never raises).
pub fn ramp(weight: u32, elapsed: Duration, length: Duration) -> Option<Ramp> {
    if weight == 0 || elapsed >= length {
        return None;
    }
    let steps = slow_start_steps(length);
    let step_ns = length.as_nanos() / u128::from(steps);
    let step = (elapsed.as_nanos() / step_ns.max(1)) as u32 + 1;
    if step >= steps {
        // The last step is the full weight: done.
        return None;
    }
    let ramped = (u64::from(weight) * u64::from(step)).div_ceil(u64::from(steps));
    Some(Ramp {
        weight: (ramped as u32).clamp(1, weight),
        step,
        steps,
        left: Duration::from_nanos((step_ns * u128::from(steps - 1)) as u64) - elapsed,
        next_step: Duration::from_nanos((step_ns * u128::from(step)) as u64) - elapsed,
    })
}

/// How much of a VIP's weight is up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Sum of the weights of its backends that are up (weight above 0).
    pub up_weight: u64,
    /// Sum of the weights of all its backends (weight above 0: a drained
    /// backend counts in neither).
    pub weight: u64,
}

impl Health {
    /// The share of the weight that is up, in percent (100 without any
    /// weight: nothing is missing).
    pub fn percent_up(self) -> f64 {
        if self.weight == 0 {
            100.0
        } else {
            self.up_weight as f64 * 100.0 / self.weight as f64
        }
    }

    /// Whether a VIP with `threshold` percent (None: no panic threshold)
    /// panics at this health: less than `threshold` percent of its weight
    /// is up.
    pub fn panics(self, threshold: Option<u8>) -> bool {
        threshold.is_some_and(|t| self.up_weight * 100 < u64::from(t) * self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn steps_are_ten_or_one_a_second() {
        for (length, steps) in [
            (S, 1),
            (S * 4, 4),
            (S * 10, 10),
            (S * 60, 10),
            (Duration::from_millis(1_500), 1),
            (Duration::from_millis(9_999), 9),
        ] {
            assert_eq!(slow_start_steps(length), steps, "{length:?}");
        }
    }

    /// (weight, elapsed, length) → (weight now, step), or None: done.
    type RampCase = (u32, Duration, Duration, Option<(u32, u32)>);

    #[test]
    fn ramps_in_equal_steps_to_the_full_weight() {
        let cases: &[RampCase] = &[
            (100, Duration::ZERO, S * 10, Some((10, 1))),
            (100, S / 2, S * 10, Some((10, 1))),
            (100, S, S * 10, Some((20, 2))),
            (100, S * 9 - S / 10, S * 10, Some((90, 9))),
            (100, S * 9, S * 10, None),
            (100, S * 10, S * 10, None),
            (100, S * 60, S * 10, None),
            (100, S * 5, S * 60, Some((10, 1))),
            (100, S * 6, S * 60, Some((20, 2))),
            (100, S * 30, S * 60, Some((60, 6))),
            (100, S * 54, S * 60, None),
            (100, Duration::ZERO, S * 4, Some((25, 1))),
            (100, S * 2, S * 4, Some((75, 3))),
            // Rounded up, never 0, never above the weight.
            (1, Duration::ZERO, S * 10, Some((1, 1))),
            (3, Duration::ZERO, S * 10, Some((1, 1))),
            (15, S, S * 10, Some((3, 2))),
            (10_000, Duration::ZERO, S * 10, Some((1_000, 1))),
            // A drained backend stays drained.
            (0, Duration::ZERO, S * 10, None),
            // One step: nothing to ramp.
            (100, Duration::ZERO, S, None),
        ];
        for &(weight, elapsed, length, expected) in cases {
            let got = ramp(weight, elapsed, length).map(|r| (r.weight, r.step));
            assert_eq!(got, expected, "weight {weight}, {elapsed:?} of {length:?}");
        }
    }

    #[test]
    fn a_ramp_says_how_long_is_left() {
        let r = ramp(100, S * 3 + S / 4, S * 10).unwrap();
        assert_eq!(
            (r.steps, r.left, r.next_step),
            (10, S * 6 - S / 4, S * 3 / 4)
        );
    }

    /// (up weight, weight, threshold) → panics.
    #[test]
    fn panics_below_the_threshold_share_of_weight() {
        let cases: &[(u64, u64, Option<u8>, bool)] = &[
            (0, 300, Some(50), true),
            (100, 300, Some(50), true),
            (149, 300, Some(50), true),
            (150, 300, Some(50), false),
            (300, 300, Some(50), false),
            (0, 300, None, false),
            (99, 100, Some(100), true),
            (100, 100, Some(100), false),
            (1, 100, Some(1), false),
            (0, 100, Some(1), true),
            // No weight at all (every backend drained): nothing to spread.
            (0, 0, Some(50), false),
        ];
        for &(up_weight, weight, threshold, panics) in cases {
            let health = Health { up_weight, weight };
            assert_eq!(
                health.panics(threshold),
                panics,
                "{up_weight} of {weight} up, threshold {threshold:?}"
            );
        }
        assert_eq!(
            Health {
                up_weight: 1,
                weight: 4
            }
            .percent_up(),
            25.0
        );
        assert_eq!(Health::default().percent_up(), 100.0);
    }
}

//! What a VIP's ring in the datapath holds for each scheduler, and the
//! smooth weighted round-robin order.
//!
//! Pure logic, no I/O. The hash schedulers (maglev, source-hash) give the
//! ring the Maglev layout: every slot a backend id. The others give it the
//! list layout (balancer-common's: a length slot, then the entries; see
//! [`balancer_common::vip::fill_list`]). The ring depends only on the
//! backends (their keys and weights), never on the order they are given
//! in, so every host and every restart builds the same ring.

use balancer_common::vip::{MAX_LIST_LEN, fill_list, list_slot};

use crate::{
    config::Scheduler,
    maglev::{self, MaglevError, Member},
};

/// Longest round-robin sequence: the most entries a list ring holds.
pub const MAX_SEQUENCE: usize = MAX_LIST_LEN as usize;

/// One cycle of nginx's smooth weighted round robin over `members`: each
/// id appears as many times as its weight, and the heavier backends are
/// spread through the cycle rather than bunched (5, 1, 1 gives
/// a a b a c a a), so any stretch of new flows is close to the weights.
///
/// Members of weight 0 are left out. Members are taken in the order of
/// their keys, so the input's order does not matter. Weights are divided
/// by their greatest common divisor, which keeps the cycle short; when
/// their sum is still above [`MAX_SEQUENCE`] they are scaled down in
/// proportion (each to at least 1) until it fits. The result's length is
/// the sum of those reduced weights: at most [`MAX_SEQUENCE`], unless there
/// are more members than that. No member gives an empty sequence.
pub fn smooth_weighted(members: &[Member]) -> Vec<u32> {
    sequence(members, MAX_SEQUENCE)
}

/// What the datapath's ring of a VIP scheduled by `scheduler` holds:
/// - maglev and source-hash: a Maglev ring of `ring_size` slots, from
///   [`maglev::build`];
/// - round-robin: a list ring of the sequence of [`smooth_weighted`];
/// - least-connections and least-latency: a list ring of the ids of the
///   members of weight above 0 in the order of their keys; the datapath
///   picks among them.
///
/// A list ring is its length slot, then its n entries, and nothing after
/// them (a Maglev ring's size would cost 512 KiB per VIP for nothing).
/// Without a member of weight above 0 the list kinds give an empty ring
/// (the caller keeps the one in place), and the hash kinds an error, as
/// [`maglev::build`] does.
pub fn ring(
    scheduler: Scheduler,
    members: &[Member],
    ring_size: u32,
) -> Result<Vec<u32>, MaglevError> {
    let entries = match scheduler {
        Scheduler::Maglev | Scheduler::SourceHash => return maglev::build(members, ring_size),
        Scheduler::RoundRobin => {
            maglev::check_members(members)?;
            let active = members.iter().filter(|m| m.weight > 0).count();
            if active > MAX_SEQUENCE {
                return Err(MaglevError::ListTooLong {
                    size: MAX_SEQUENCE as u32,
                    entries: active,
                });
            }
            sequence(members, MAX_SEQUENCE)
        }
        Scheduler::LeastConnections | Scheduler::LeastLatency => {
            maglev::check_members(members)?;
            by_key(members).iter().map(|m| m.id).collect()
        }
    };
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut ring = vec![0; list_slot(entries.len() as u32) as usize];
    fill_list(&mut ring, &entries);
    Ok(ring)
}

/// [`smooth_weighted`] with at most `limit` entries (when `limit` is at
/// least the number of members of weight above 0).
fn sequence(members: &[Member], limit: usize) -> Vec<u32> {
    let active = by_key(members);
    let ids: Vec<u32> = active.iter().map(|m| m.id).collect();
    let weights = fit(active.iter().map(|m| u64::from(m.weight)).collect(), limit);
    cycle(&ids, &weights)
}

/// The members of weight above 0, ordered by key (then id, should two
/// keys be equal).
fn by_key(members: &[Member]) -> Vec<&Member> {
    let mut active: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    active.sort_by(|a, b| a.key.cmp(&b.key).then(a.id.cmp(&b.id)));
    active
}

/// Weights (all above 0) divided by their gcd and, if their sum is still
/// above `limit`, scaled down in proportion, each to at least 1, until it
/// is not (or every weight is 1).
fn fit(mut weights: Vec<u64>, limit: usize) -> Vec<u64> {
    divide_by_gcd(&mut weights);
    let sum: u64 = weights.iter().sum();
    let limit = limit as u64;
    if sum <= limit {
        return weights;
    }
    // Flooring loses less than 1 per weight and raising to 1 adds at most
    // 1 per weight, so a smaller budget is tried while the sum is over.
    let mut budget = limit;
    loop {
        let mut scaled: Vec<u64> = weights.iter().map(|&w| (w * budget / sum).max(1)).collect();
        let total: u64 = scaled.iter().sum();
        if total <= limit || budget <= 1 {
            divide_by_gcd(&mut scaled);
            return scaled;
        }
        budget -= (total - limit).min(budget - 1);
    }
}

fn divide_by_gcd(weights: &mut [u64]) {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
    if divisor > 1 {
        for w in weights {
            *w /= divisor;
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One cycle of smooth weighted round robin, as nginx does it: each step
/// every member's current value grows by its weight, the largest (the first
/// of equals) is picked and loses the total weight.
fn cycle(ids: &[u32], weights: &[u64]) -> Vec<u32> {
    let weights: Vec<i64> = weights.iter().map(|&w| w as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (value, weight) in current.iter_mut().zip(&weights) {
            *value += weight;
        }
        let best = (1..current.len()).fold(
            0,
            |best, i| {
                if current[i] > current[best] { i } else { best }
            },
        );
        current[best] -= total;
        out.push(ids[best]);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const RING: u32 = 65_537;

    /// Members named a, b, c... (their keys), with ids 0, 1, 2... and
    /// `weights`.
    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                id: i as u32,
                key: format!("10.0.0.{}", 100 + i).into_bytes(),
                weight,
            })
            .collect()
    }

    fn counts(sequence: &[u32]) -> BTreeMap<u32, u64> {
        let mut counts = BTreeMap::new();
        for &id in sequence {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn five_one_one_gives_nginx_sequence() {
        assert_eq!(smooth_weighted(&members(&[5, 1, 1])), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn small_weight_sets_give_their_known_cycles() {
        assert_eq!(smooth_weighted(&members(&[1, 1, 1])), [0, 1, 2]);
        assert_eq!(smooth_weighted(&members(&[3, 2])), [0, 1, 0, 1, 0]);
        assert_eq!(smooth_weighted(&members(&[1, 2, 3])), [2, 1, 0, 2, 1, 2]);
        assert_eq!(smooth_weighted(&members(&[7])), [0]);
    }

    #[test]
    fn weights_are_divided_by_their_gcd() {
        assert_eq!(
            smooth_weighted(&members(&[100, 200, 300])),
            smooth_weighted(&members(&[1, 2, 3]))
        );
        assert_eq!(smooth_weighted(&members(&[10_000, 10_000])), [0, 1]);
    }

    #[test]
    fn each_member_appears_its_weight_times_per_cycle() {
        for weights in [
            &[5, 1, 1][..],
            &[1, 1, 1],
            &[3, 2],
            &[7, 11, 13, 17],
            &[100, 150, 1],
            &[9_999, 10_000, 1],
        ] {
            let sequence = smooth_weighted(&members(weights));
            let expected: BTreeMap<u32, u64> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (i as u32, u64::from(w)))
                .collect();
            assert_eq!(counts(&sequence), expected, "weights {weights:?}");
        }
    }

    #[test]
    fn every_window_of_a_cycle_length_has_exact_counts() {
        for weights in [&[5, 1, 1][..], &[3, 2], &[7, 11, 13, 17], &[2, 4, 8, 3]] {
            let sequence = smooth_weighted(&members(weights));
            let cycle = sequence.len();
            let expected = counts(&sequence);
            let repeated = sequence.repeat(3);
            for window in repeated.windows(cycle) {
                assert_eq!(counts(window), expected, "weights {weights:?}");
            }
        }
    }

    #[test]
    fn the_order_of_the_members_does_not_matter() {
        let list = members(&[5, 3, 8, 1, 2, 13]);
        let mut shuffled = list.clone();
        shuffled.reverse();
        shuffled.rotate_left(2);
        shuffled.swap(0, 3);
        assert_ne!(list, shuffled);
        assert_eq!(smooth_weighted(&list), smooth_weighted(&shuffled));
        for kind in [
            Scheduler::RoundRobin,
            Scheduler::LeastConnections,
            Scheduler::LeastLatency,
        ] {
            assert_eq!(
                ring(kind, &list, RING).unwrap(),
                ring(kind, &shuffled, RING).unwrap(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn weight_zero_members_are_left_out() {
        let sequence = smooth_weighted(&members(&[5, 0, 1, 0]));
        assert_eq!(sequence, [0, 0, 0, 2, 0, 0]);
        assert!(smooth_weighted(&members(&[0, 0])).is_empty());
        assert!(smooth_weighted(&[]).is_empty());
    }

    /// Counts within 1 of each weight's exact share of the sequence.
    fn assert_proportional(weights: &[u32], sequence: &[u32]) {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let len = sequence.len() as f64;
        let counts = counts(sequence);
        for (i, &w) in weights.iter().enumerate() {
            let share = f64::from(w) / total as f64 * len;
            let count = counts.get(&(i as u32)).copied().unwrap_or(0) as f64;
            assert!(
                (count - share).abs() <= 1.0,
                "member {i} of weight {w}: {count} entries of {len}, its share is {share:.2}"
            );
        }
    }

    #[test]
    fn weights_too_large_for_a_sequence_are_scaled_down() {
        let distinct: Vec<u32> = (0..20).map(|i| 10_000 - 7 * i).collect();
        let sequence = smooth_weighted(&members(&distinct));
        assert!(
            sequence.len() <= MAX_SEQUENCE && sequence.len() > MAX_SEQUENCE - 20,
            "{}",
            sequence.len()
        );
        assert_proportional(&distinct, &sequence);

        let mut with_a_light_one = vec![10_000; 19];
        with_a_light_one[3] = 9_999;
        with_a_light_one.push(1);
        let sequence = smooth_weighted(&members(&with_a_light_one));
        assert!(sequence.len() <= MAX_SEQUENCE);
        assert_eq!(
            counts(&sequence).get(&19),
            Some(&1),
            "at least one entry each"
        );
        assert_proportional(&with_a_light_one, &sequence);
    }

    #[test]
    fn hash_schedulers_get_the_maglev_ring() {
        let list = members(&[100, 200, 100]);
        let built = maglev::build(&list, 13).unwrap();
        assert_eq!(ring(Scheduler::Maglev, &list, 13).unwrap(), built);
        assert_eq!(ring(Scheduler::SourceHash, &list, 13).unwrap(), built);
        assert_eq!(
            ring(Scheduler::Maglev, &members(&[0]), 13),
            Err(MaglevError::NoActiveMember)
        );
    }

    #[test]
    fn a_round_robin_ring_is_the_count_then_the_sequence() {
        let list = members(&[5, 1, 1]);
        let ring = ring(Scheduler::RoundRobin, &list, 13).unwrap();
        assert_eq!(ring, [7, 0, 0, 1, 0, 2, 0, 0]);
        // A list ring's length does not depend on the ring size.
        assert_eq!(
            super::ring(Scheduler::RoundRobin, &list, RING).unwrap(),
            ring
        );
    }

    #[test]
    fn a_least_load_ring_is_the_count_then_the_ids_by_key() {
        let mut list = members(&[100, 0, 300, 50]);
        list[0].key = b"10.0.0.200".to_vec();
        list[0].id = 9;
        for kind in [Scheduler::LeastConnections, Scheduler::LeastLatency] {
            let ring = ring(kind, &list, 13).unwrap();
            assert_eq!(ring, [3, 2, 3, 9], "{kind:?}");
        }
    }

    #[test]
    fn list_rings_without_members_are_empty() {
        for kind in [
            Scheduler::RoundRobin,
            Scheduler::LeastConnections,
            Scheduler::LeastLatency,
        ] {
            assert_eq!(ring(kind, &[], RING), Ok(Vec::new()), "{kind:?}");
            assert_eq!(
                ring(kind, &members(&[0, 0]), RING),
                Ok(Vec::new()),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn list_rings_refuse_what_maglev_refuses() {
        let mut dup = members(&[1, 1]);
        dup[1].key = dup[0].key.clone();
        let heavy = members(&[maglev::MAX_WEIGHT + 1]);
        for kind in [
            Scheduler::RoundRobin,
            Scheduler::LeastConnections,
            Scheduler::LeastLatency,
        ] {
            assert!(matches!(
                ring(kind, &dup, RING),
                Err(MaglevError::DuplicateKey(_))
            ));
            assert_eq!(
                ring(kind, &heavy, RING),
                Err(MaglevError::WeightTooLarge {
                    weight: maglev::MAX_WEIGHT + 1
                })
            );
        }
    }
}

//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights:
//! builds the ring of a hashing VIP, the Maglev paper's "lookup table",
//! that the VIP's new flows are placed on.
//!
//! Pure logic, no I/O. Properties the datapath relies on:
//! - each backend's share of the ring is proportional to its weight, to
//!   within one slot per round for equal weights;
//! - the ring depends only on the set of backends (their keys and weights)
//!   and the ring size, not on the order of the list, so two balancer hosts
//!   with the same configuration build the same ring;
//! - removing one of N backends moves little more than 1/N of the slots.

use std::collections::BTreeSet;

use balancer_common::hash::bytes_hash;
use thiserror::Error;

/// Seeds of the two hashes that make a backend's permutation. Part of the
/// ring's definition: changing them moves every flow.
const OFFSET_SEED: u32 = 0x6d61_676c;
const SKIP_SEED: u32 = 0x6576_7631;

/// Largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 10_000;

/// A backend as the ring builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// What goes into the ring's slots (the datapath's backend id).
    pub id: u32,
    /// The backend's identity, which decides its permutation: the same
    /// backend must have the same key on every host (its address, say),
    /// whatever id it was given.
    pub key: Vec<u8>,
    /// Relative share of new flows; 0 means draining (no slots).
    pub weight: u32,
}

/// Why a ring cannot be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("ring size {0} is not a prime number")]
    SizeNotPrime(u32),
    #[error("ring size {size} is smaller than the {members} backends it must hold")]
    SizeTooSmall { size: u32, members: usize },
    #[error("no backend has a weight above 0")]
    NoActiveMember,
    #[error("backend key {0:?} appears more than once")]
    DuplicateKey(Vec<u8>),
    #[error("weight {weight} is above the maximum of {MAX_WEIGHT}")]
    WeightTooLarge { weight: u32 },
    #[error("a scheduler's list holds at most {size} entries, not {entries}")]
    ListTooLong { size: u32, entries: usize },
}

/// Builds a ring of `size` slots, each holding the id of a member with a
/// weight above 0.
pub fn build(members: &[Member], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    check_members(members)?;
    // Order by key, so the list's order does not matter.
    let mut active: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    if active.is_empty() {
        return Err(MaglevError::NoActiveMember);
    }
    if (size as usize) < active.len() {
        return Err(MaglevError::SizeTooSmall {
            size,
            members: active.len(),
        });
    }
    active.sort_by(|a, b| a.key.cmp(&b.key));

    let size64 = u64::from(size);
    let mut cursors: Vec<Cursor> = active
        .iter()
        .map(|m| Cursor {
            id: m.id,
            weight: u64::from(m.weight),
            offset: u64::from(bytes_hash(&m.key, OFFSET_SEED)) % size64,
            skip: u64::from(bytes_hash(&m.key, SKIP_SEED)) % (size64 - 1) + 1,
            next: 0,
            credit: 0,
        })
        .collect();
    let max_weight = cursors.iter().map(|c| c.weight).max().unwrap_or(1);

    const EMPTY: u32 = u32::MAX;
    let mut ring = vec![EMPTY; size as usize];
    let mut filled = 0u32;
    // Each round, a backend earns its weight in credit and takes one slot
    // per `max_weight` of credit: shares follow weights, and the heaviest
    // backends take exactly one slot per round as in plain Maglev.
    while filled < size {
        for cursor in &mut cursors {
            cursor.credit += cursor.weight;
            while cursor.credit >= max_weight && filled < size {
                cursor.credit -= max_weight;
                let slot = loop {
                    let slot = ((cursor.offset + cursor.next * cursor.skip) % size64) as usize;
                    cursor.next += 1;
                    if ring[slot] == EMPTY {
                        break slot;
                    }
                };
                ring[slot] = cursor.id;
                filled += 1;
            }
        }
    }
    Ok(ring)
}

/// Refuses members no ring can be built from: a key given twice (the
/// order by key that makes rings independent of the order members are
/// given in would be ambiguous) or a weight above [`MAX_WEIGHT`].
pub(crate) fn check_members(members: &[Member]) -> Result<(), MaglevError> {
    let mut seen = BTreeSet::new();
    for member in members {
        if !seen.insert(member.key.as_slice()) {
            return Err(MaglevError::DuplicateKey(member.key.clone()));
        }
        if member.weight > MAX_WEIGHT {
            return Err(MaglevError::WeightTooLarge {
                weight: member.weight,
            });
        }
    }
    Ok(())
}

/// A member's walk through its permutation of the slots.
struct Cursor {
    id: u32,
    weight: u64,
    offset: u64,
    skip: u64,
    next: u64,
    credit: u64,
}

/// Whether `n` is prime (trial division: ring sizes are a few million at
/// most).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 65_537;

    fn members(n: u32, weight: u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: i,
                key: format!("10.0.{}.{}:80", i / 250, i % 250 + 1).into_bytes(),
                weight,
            })
            .collect()
    }

    fn shares(ring: &[u32], n: u32) -> Vec<usize> {
        let mut counts = vec![0usize; n as usize];
        for &id in ring {
            counts[id as usize] += 1;
        }
        counts
    }

    #[test]
    fn equal_backends_get_equal_shares_within_one_percent() {
        let ring = build(&members(10, 100), SIZE).unwrap();
        let counts = shares(&ring, 10);
        let mean = f64::from(SIZE) / 10.0;
        let spread = (*counts.iter().max().unwrap() - *counts.iter().min().unwrap()) as f64;
        println!(
            "10 equal backends: shares {counts:?}, spread {spread} slots = {:.4} % of the mean",
            spread / mean * 100.0
        );
        assert!(
            spread < mean * 0.01,
            "spread {spread} slots over shares {counts:?}"
        );
    }

    #[test]
    fn shares_follow_weights() {
        let mut list = members(3, 100);
        list[2].weight = 200;
        let ring = build(&list, SIZE).unwrap();
        let counts = shares(&ring, 3);
        let total = f64::from(SIZE);
        for (count, expected) in counts.iter().zip([0.25, 0.25, 0.5]) {
            let share = *count as f64 / total;
            assert!((share - expected).abs() < 0.001, "shares {counts:?}");
        }
    }

    #[test]
    fn removing_one_of_ten_backends_moves_at_most_twelve_percent() {
        let all = members(10, 100);
        let before = build(&all, SIZE).unwrap();
        let after = build(&all[..9], SIZE).unwrap();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let fraction = moved as f64 / f64::from(SIZE);
        println!(
            "removing 1 of 10 backends moved {moved} slots = {:.2} %",
            fraction * 100.0
        );
        assert!(
            fraction <= 0.12,
            "moved {:.2} % of the slots",
            fraction * 100.0
        );
        // Slots of the remaining backends that stay put: everything the
        // removed backend did not own, give or take Maglev's reshuffle.
        let own = before.iter().filter(|&&id| id == 9).count();
        assert!(
            moved >= own,
            "the removed backend's {own} slots must all move"
        );
    }

    #[test]
    fn the_order_of_the_list_does_not_matter() {
        let list = members(7, 100);
        let mut reversed = list.clone();
        reversed.reverse();
        assert_eq!(build(&list, SIZE).unwrap(), build(&reversed, SIZE).unwrap());
    }

    #[test]
    fn draining_backends_get_no_slot() {
        let mut list = members(4, 100);
        list[1].weight = 0;
        let ring = build(&list, SIZE).unwrap();
        assert!(!ring.contains(&1));
        assert!(ring.contains(&0) && ring.contains(&2) && ring.contains(&3));
    }

    /// Golden ring: a change of the algorithm silently moves every flow of
    /// every deployment, so it must fail here first.
    #[test]
    fn the_ring_is_pinned() {
        let ring = build(&members(3, 100), 13).unwrap();
        assert_eq!(ring, GOLDEN_13, "the Maglev ring changed: {ring:?}");
    }

    const GOLDEN_13: [u32; 13] = [0, 2, 1, 0, 2, 1, 2, 1, 1, 2, 0, 0, 0];

    #[test]
    fn invalid_input_is_refused() {
        assert_eq!(
            build(&members(3, 100), 65_536),
            Err(MaglevError::SizeNotPrime(65_536))
        );
        assert_eq!(
            build(&members(3, 0), SIZE),
            Err(MaglevError::NoActiveMember)
        );
        assert_eq!(
            build(&members(20, 1), 13),
            Err(MaglevError::SizeTooSmall {
                size: 13,
                members: 20
            })
        );
        let mut dup = members(2, 1);
        dup[1].key = dup[0].key.clone();
        assert!(matches!(
            build(&dup, SIZE),
            Err(MaglevError::DuplicateKey(_))
        ));
        assert_eq!(
            build(&members(1, MAX_WEIGHT + 1), SIZE),
            Err(MaglevError::WeightTooLarge {
                weight: MAX_WEIGHT + 1
            })
        );
    }

    #[test]
    fn primes() {
        assert!(is_prime(2) && is_prime(13) && is_prime(65_537) && is_prime(4_194_301));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65_536) && !is_prime(9));
    }
}

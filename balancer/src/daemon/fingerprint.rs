//! The fingerprint of what decides a new flow's backend on this host, as
//! the maps hold it: the hash seed, the ring size, and for every VIP (by
//! address, port and protocol) its scheduler and persistence and the
//! members of its ring with their weights. Balancer hosts behind ECMP must
//! agree on all of it for a flow that moves between them to keep its
//! backend; equal fingerprints say they do. Backends count by their
//! identity (their address), not by the ids a host numbered them with, and
//! VIPs by their key, not their index or name, so that hosts with
//! different histories agree when their state does.

use super::published::Published;

/// FNV-1a, 64 bits: defined by its constants, the same in every build and
/// on every host (the standard library's hasher promises neither).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// A field of variable length, prefixed by its length so that two
    /// fields never run into each other.
    fn field(&mut self, bytes: &[u8]) {
        self.bytes(&(bytes.len() as u64).to_le_bytes());
        self.bytes(bytes);
    }
}

/// The fingerprint of `published`, as 16 hex digits; None until settings
/// are written, or while a VIP's ring adopted from the pins has not been
/// rebuilt (its members are not known yet).
pub(super) fn of(published: &Published) -> Option<String> {
    let settings = published.settings?;
    let mut vips = Vec::new();
    for record in published.vips.values() {
        let Some(ring) = &record.ring else {
            // No ring: the VIP takes no traffic, nothing to agree on.
            continue;
        };
        let (ring_size, _, members) = ring.recipe.as_ref()?;
        let key = record.slot.key;
        let mut members: Vec<(&[u8], u32)> = members
            .iter()
            .map(|m| (m.key.as_slice(), m.weight))
            .collect();
        members.sort_unstable();
        let policy = record.policy.unwrap_or_default();
        vips.push((
            (key.addr, key.port, key.proto),
            *ring_size,
            record.slot.info.flags,
            (policy.persist_ns, policy.client_mask),
            members,
        ));
    }
    vips.sort_unstable();
    let mut h = Fnv::new();
    h.bytes(&settings.hash_seed.to_le_bytes());
    h.bytes(&settings.ring_size.to_le_bytes());
    for ((addr, port, proto), ring_size, flags, (persist_ns, mask), members) in &vips {
        for word in addr.iter().chain(mask) {
            h.bytes(&word.to_le_bytes());
        }
        h.bytes(&port.to_le_bytes());
        h.bytes(&[*proto]);
        h.bytes(&ring_size.to_le_bytes());
        h.bytes(&flags.to_le_bytes());
        h.bytes(&persist_ns.to_le_bytes());
        h.bytes(&(members.len() as u64).to_le_bytes());
        for (key, weight) in members {
            h.field(key);
            h.bytes(&weight.to_le_bytes());
        }
    }
    Some(format!("{:016x}", h.0))
}

#[cfg(test)]
mod tests {
    use balancer_common::{
        addr_from_v4_word,
        settings::Settings,
        vip::{VipInfo, VipKey},
    };

    use super::{
        super::published::{Ring, VipRecord},
        *,
    };
    use crate::{datapath::VipSlot, maglev::Member};

    /// A VIP of index `index` on 192.0.2.`host`:80/tcp whose ring has
    /// `members`: (id, last byte of the backend's address, weight).
    fn vip(index: u32, host: u8, members: &[(u32, u8, u32)]) -> (u32, VipRecord) {
        let addr = addr_from_v4_word(u32::from_ne_bytes([192, 0, 2, host]));
        let mut record = VipRecord::new(VipSlot {
            key: VipKey::new(addr, 80u16.to_be(), 6),
            info: VipInfo { index, flags: 0 },
        });
        let members = members
            .iter()
            .map(|(id, last, weight)| Member {
                id: *id,
                key: vec![10, 0, 0, *last],
                weight: *weight,
            })
            .collect();
        record.ring = Some(Ring {
            entries: Vec::new(),
            recipe: Some((65537, 0, members)),
        });
        (index, record)
    }

    fn published(seed: u32, vips: Vec<(u32, VipRecord)>) -> Published {
        Published {
            settings: Some(Settings {
                hash_seed: seed,
                ring_size: 65537,
                ..Settings::default()
            }),
            vips: vips.into_iter().collect(),
            ..Published::default()
        }
    }

    #[test]
    fn hosts_with_other_numbers_for_the_same_state_agree() {
        let here = published(
            7,
            vec![
                vip(0, 10, &[(0, 1, 100), (1, 2, 100)]),
                vip(1, 11, &[(2, 1, 50)]),
            ],
        );
        // Another host numbered its VIPs and backends in another order.
        let there = published(
            7,
            vec![
                vip(4, 11, &[(9, 1, 50)]),
                vip(5, 10, &[(7, 2, 100), (8, 1, 100)]),
            ],
        );
        let fingerprint = of(&here).unwrap();
        assert_eq!(fingerprint.len(), 16);
        assert_eq!(of(&there).unwrap(), fingerprint);
    }

    #[test]
    fn whatever_decides_a_new_flow_changes_the_fingerprint() {
        let base = || {
            vec![
                vip(0, 10, &[(0, 1, 100), (1, 2, 100)]),
                vip(1, 11, &[(2, 1, 50)]),
            ]
        };
        let reference = of(&published(7, base())).unwrap();
        let mut changes = vec![
            ("the seed", published(8, base())),
            (
                "a weight",
                published(
                    7,
                    vec![
                        vip(0, 10, &[(0, 1, 100), (1, 2, 200)]),
                        vip(1, 11, &[(2, 1, 50)]),
                    ],
                ),
            ),
            (
                "a member",
                published(
                    7,
                    vec![vip(0, 10, &[(0, 1, 100)]), vip(1, 11, &[(2, 1, 50)])],
                ),
            ),
            (
                "a VIP",
                published(7, vec![vip(0, 10, &[(0, 1, 100), (1, 2, 100)])]),
            ),
        ];
        let mut scheduler = base();
        scheduler[1].1.slot.info.flags = 2;
        changes.push(("a scheduler", published(7, scheduler)));
        for (what, changed) in changes {
            assert_ne!(of(&changed).unwrap(), reference, "{what}");
        }
        // A ring adopted from the pins, not rebuilt yet: not known.
        let mut adopted = base();
        adopted[0].1.ring.as_mut().unwrap().recipe = None;
        assert_eq!(of(&published(7, adopted)), None);
    }
}

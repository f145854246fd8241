//! The hashes that place flows on Maglev rings, shared by the datapath and
//! userspace so both compute the same backend for a flow.
//!
//! MurmurHash3's 32-bit mixing over 32-bit words, with the seed from
//! [`crate::settings::Settings`]. Two hosts with the same seed and rings
//! pick the same backend for every flow. Changing anything here moves every
//! flow: the golden tests below pin the values.

use crate::{Addr, flow::FlowKey};

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Mixes in the address's words. The words are the address's bytes in
/// memory order read as little-endian integers (what BPF and x86 load), so
/// the hash is the same on every little-endian host.
#[inline(always)]
const fn mix_addr(mut h: u32, addr: &Addr) -> u32 {
    h = mix(h, u32::from_le(addr[0]));
    h = mix(h, u32::from_le(addr[1]));
    h = mix(h, u32::from_le(addr[2]));
    mix(h, u32::from_le(addr[3]))
}

/// Hash of a flow's 5-tuple: new flows of ordinary VIPs.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = mix_addr(seed, &key.src);
    h = mix_addr(h, &key.dst);
    h = mix(h, ((key.src_port as u32) << 16) | key.dst_port as u32);
    h = mix(h, key.proto as u32);
    finish(h, 37)
}

/// Hash of the client address alone: VIPs with source affinity.
#[inline(always)]
pub const fn source_hash(src: &Addr, seed: u32) -> u32 {
    finish(mix_addr(seed, src), 16)
}

/// Maps a hash onto `0..ring_size` by multiplication (Lemire's reduction):
/// uniform, and no division on the per-packet path.
#[inline(always)]
pub const fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    ((hash as u64 * ring_size as u64) >> 32) as u32
}

/// Hash of arbitrary bytes (userspace: Maglev permutations of backends).
pub fn bytes_hash(bytes: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        h = mix(
            h,
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
        );
    }
    let mut tail = [0u8; 4];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    if !rest.is_empty() {
        h = mix(h, u32::from_le_bytes(tail));
    }
    finish(h, bytes.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr_from_v4, proto};

    fn flow() -> FlowKey {
        FlowKey::new(
            addr_from_v4([192, 0, 2, 1]),
            addr_from_v4([198, 51, 100, 10]),
            40000u16.to_be(),
            80u16.to_be(),
            proto::TCP,
        )
    }

    /// Golden values: a change here moves every flow of every deployment.
    #[test]
    fn hashes_are_pinned() {
        let pinned = [
            flow_hash(&flow(), 0),
            flow_hash(&flow(), 42),
            source_hash(&flow().src, 42),
            bytes_hash(b"10.0.0.1", 7),
        ];
        assert_eq!(pinned, GOLDEN, "the flow hashes changed: {pinned:#x?}");
    }

    const GOLDEN: [u32; 4] = [0xb0c2_6045, 0xe38c_320f, 0x5716_34eb, 0xbbe8_7fa6];

    #[test]
    fn the_seed_changes_the_hash() {
        assert_ne!(flow_hash(&flow(), 1), flow_hash(&flow(), 2));
    }

    #[test]
    fn ring_slot_stays_in_range_and_spreads() {
        let size = 65_537;
        assert_eq!(ring_slot(0, size), 0);
        assert_eq!(ring_slot(u32::MAX, size), size - 1);
        let mut buckets = [0u32; 16];
        for i in 0..160_000u32 {
            let slot = ring_slot(bytes_hash(&i.to_le_bytes(), 1), 16);
            buckets[slot as usize] += 1;
        }
        for count in buckets {
            assert!(
                (9_000..11_000).contains(&count),
                "uneven spread: {buckets:?}"
            );
        }
    }
}

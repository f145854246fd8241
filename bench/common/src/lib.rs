//! Names and map types of the benchmarks' XDP programs, shared by the
//! programs (balancer-bench-ebpf) and the code that loads them
//! (balancer-bench), with the same layout rules as balancer-common:
//! `#[repr(C)]`, explicit padding, a size assertion, names of at most 15
//! bytes.
//!
//! The floor (`bench-floor`) is the least an XDP forwarder does, the
//! reference of the balancer's cost. The load generator (`bench-gen`) and
//! the counting sink (`bench-sink`) put real traffic on a veth: these
//! kernels have no pktgen module.
//!
//! The generator runs under BPF_PROG_TEST_RUN in live-frames mode: the
//! kernel hands it the same recycled pages again and again, and they keep
//! whatever the receiving side wrote into them, so on every run it writes
//! the headers of [`Template`] over the start of the frame, gives it the
//! next flow's source port (keeping the transport checksum right) and sends
//! it out with XDP_TX. The sink counts what arrives and drops it.

#![cfg_attr(not(test), no_std)]

/// Name of the floor's XDP program.
pub const FLOOR_PROGRAM: &str = "floor_xdp";
/// The MACs the floor writes: destination then source, in an array map of
/// one `[u8; 12]`.
pub const FLOOR_MACS: &str = "floor_macs";

/// Name of the generator's XDP program.
pub const GEN_PROGRAM: &str = "gen_xdp";
/// Name of the sink's XDP program.
pub const SINK_PROGRAM: &str = "sink_xdp";

/// The generator's frame: one [`Template`] in an array map.
pub const GEN_TEMPLATE: &str = "gen_template";
/// The generator's per-CPU position in the flow cycle: one [`GenCursor`]
/// per CPU in a per-CPU array.
pub const GEN_CURSOR: &str = "gen_cursor";
/// What the sink counts: one [`SinkConfig`] in an array map.
pub const SINK_CONFIG: &str = "sink_config";
/// The sink's per-CPU counters: balancer-common's `stats::PacketCount`
/// indexed by [`SinkSlot`].
pub const SINK_COUNTS: &str = "sink_counts";

/// Most header bytes a template holds: Ethernet (14), IPv6 (40) and TCP
/// without options (20) take 74.
pub const TEMPLATE_LEN: usize = 80;

/// [`Template::check_kind`] of a TCP checksum.
pub const CHECK_TCP: u16 = 0;
/// [`Template::check_kind`] of a UDP checksum: a computed 0 is sent as
/// 0xffff, since 0 means "no checksum" (and is invalid over IPv6).
pub const CHECK_UDP: u16 = 1;

/// The headers every generated frame starts with, and how its flows vary.
///
/// Flow `i` (for `i` below `flows`) is the template with source port
/// `base_port + i`; the transport checksum at `check_offset` is adjusted
/// for the change (RFC 1624), so the template's checksum must be right for
/// `base_port`. The IP header does not cover ports: its checksum holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    /// The frame's first `len` bytes (Ethernet, IP and transport
    /// headers); the rest are zero.
    pub bytes: [u8; TEMPLATE_LEN],
    /// Bytes of `bytes` written over every frame: at least the Ethernet
    /// header, at most [`TEMPLATE_LEN`].
    pub len: u32,
    /// Number of flows (source ports) to cycle through, at least 1.
    pub flows: u32,
    /// Offset of the transport source port in the frame.
    pub port_offset: u16,
    /// Offset of the transport checksum in the frame; 0 when it stays as
    /// in the template (UDP over IPv4 sent without a checksum).
    pub check_offset: u16,
    /// The template's source port, the first flow's, in network byte
    /// order.
    pub base_port: u16,
    /// [`CHECK_TCP`] or [`CHECK_UDP`].
    pub check_kind: u16,
}

const _: () = assert!(core::mem::size_of::<Template>() == 96);

/// Where one CPU is in the flow cycle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenCursor {
    /// The flow of the next frame, below [`Template::flows`].
    pub flow: u32,
    pub _pad: u32,
    /// Frames this CPU generated.
    pub frames: u64,
}

const _: () = assert!(core::mem::size_of::<GenCursor>() == 16);

/// What the sink counts and drops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkConfig {
    /// TCP or UDP destination port, network byte order: frames to it are
    /// counted and dropped, every other frame passes untouched (ARP,
    /// neighbour discovery and other traffic keep working). 0: every frame
    /// is counted and dropped.
    pub dst_port: u16,
    pub _pad1: u16,
    pub _pad2: u32,
}

const _: () = assert!(core::mem::size_of::<SinkConfig>() == 8);

/// Index of a counter in the sink's `sink_counts` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SinkSlot(pub u32);

impl SinkSlot {
    /// Frames that matched the configuration: counted and dropped.
    pub const MATCHED: SinkSlot = SinkSlot(0);
    /// Frames that did not match: passed to the network stack.
    pub const PASSED: SinkSlot = SinkSlot(1);
    /// Number of counters: the map's `max_entries`.
    pub const COUNT: u32 = 2;
}

/// The ones' complement checksum `check` after a 16-bit word it covers
/// changed from `old` to `new` (RFC 1624, equation 3). Every word is taken
/// as it lies in the packet: the ones' complement sum does not depend on
/// the byte order, as long as all words are in the same one.
#[inline(always)]
pub const fn adjust_checksum(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Every kernel object name above: the kernel cuts names to 15 bytes.
const NAMES: [&str; 8] = [
    FLOOR_PROGRAM,
    FLOOR_MACS,
    GEN_PROGRAM,
    SINK_PROGRAM,
    GEN_TEMPLATE,
    GEN_CURSOR,
    SINK_CONFIG,
    SINK_COUNTS,
];

const _: () = {
    let mut i = 0;
    while i < NAMES.len() {
        assert!(
            NAMES[i].len() <= 15,
            "a kernel object name is over 15 bytes"
        );
        i += 1;
    }
};

#[cfg(feature = "user")]
mod user {
    //! `aya::Pod` for the map values: `repr(C)`, made of integers and byte
    //! arrays with explicit padding, valid for every bit pattern.

    // SAFETY: see the module comment.
    unsafe impl aya::Pod for super::Template {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GenCursor {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SinkConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ones' complement checksum of `words`, computed from scratch.
    fn checksum(words: &[u16]) -> u16 {
        let mut sum: u32 = words.iter().map(|w| *w as u32).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn adjusting_for_a_changed_word_matches_a_full_recomputation() {
        let mut words = [
            0x4500, 0x0054, 0xbeef, 0x1234, 0xffff, 0x0000, 0xc0a8, 0x0001,
        ];
        for new in [0u16, 1, 0x1234, 0x8000, 0xfffe, 0xffff, 0x0035] {
            let before = checksum(&words);
            let old = words[3];
            words[3] = new;
            let after = checksum(&words);
            let adjusted = adjust_checksum(before, old, new);
            // 0x0000 and 0xffff are the same ones' complement number.
            assert!(
                adjusted == after || matches!((adjusted, after), (0, 0xffff) | (0xffff, 0)),
                "{old:#06x} -> {new:#06x}: adjusted {adjusted:#06x}, recomputed {after:#06x}"
            );
        }
    }

    #[test]
    fn the_byte_order_of_the_words_does_not_matter() {
        let words = [0x1122u16, 0x3344, 0x5566];
        let check = checksum(&words);
        let swapped: Vec<u16> = words.iter().map(|w| w.swap_bytes()).collect();
        assert_eq!(checksum(&swapped), check.swap_bytes());
        assert_eq!(
            adjust_checksum(
                check.swap_bytes(),
                0x3344u16.swap_bytes(),
                0x9abcu16.swap_bytes()
            ),
            adjust_checksum(check, 0x3344, 0x9abc).swap_bytes()
        );
    }
}

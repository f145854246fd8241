//! NAT forwarding: a VIP whose packets reach their backend with the
//! backend's address and port as destination, and, with source NAT, an
//! address and port of the balancer's as source, so that the backend's
//! replies come back through the balancer whatever its routing; the
//! replies leave with the VIP as source and the client as destination.
//!
//! A connection has two entries, made together: the forward one, keyed by
//! the client's flow (client to VIP, [`crate::flow::FlowKey`]), holds a
//! [`NatFlow`]; the reverse one, keyed by the reply's flow (backend to the
//! translated source), holds a [`NatReply`]. A new connection's entries go
//! in the open tables ([`crate::maps::NAT_OPEN`], [`crate::maps::NAT_OPEN_BACK`]),
//! small and of their own, and move to the main ones
//! ([`crate::maps::NAT_FLOWS`], [`crate::maps::NAT_BACK`]) once the
//! backend's answer shows the connection is real ([`step`]): a flood of
//! spoofed first packets churns the open tables and never evicts a
//! connection.
//!
//! Source ports come from per-CPU ranges ([`PortRange`]), so that no two
//! CPUs ever pick the same one and no atomic is shared per packet.
//!
//! How long an entry lives depends on its state ([`NatSettings::timeout`]).

use crate::{Addr, proto, settings::Settings};

/// The forward entry of a NAT connection: what the client's packets
/// become.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatFlow {
    /// The backend's id.
    pub backend: u32,
    /// The VIP's index, with [`crate::flow::FLOW_COUNTED`] while the
    /// connection counts in its backend's active connections.
    pub vip: u32,
    /// `bpf_ktime_get_coarse_ns` of its last packet (either way), refreshed
    /// at most every [`crate::flow::LAST_SEEN_GRANULARITY_NS`].
    pub last_seen_ns: u64,
    /// The source the backend sees: an address of the SNAT pool, or the
    /// client's own without source NAT.
    pub src: Addr,
    /// Its port, network byte order.
    pub src_port: u16,
    /// The backend's port, network byte order.
    pub dst_port: u16,
    /// `NAT_*` state.
    pub state: u32,
    /// For a TCP connection opened by a SYN, once the backend answered it:
    /// the acknowledgement number (host byte order) the client's next
    /// segment must carry to complete the handshake, and move the
    /// connection to the main tables.
    pub expect_ack: u32,
    /// The generation of the allow and deny lists the connection was last
    /// admitted under (0: never checked).
    pub generation: u32,
}

const _: () = assert!(core::mem::size_of::<NatFlow>() == 48);

/// The reverse entry of a NAT connection: what the backend's replies
/// become.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReply {
    /// The client's address: the replies' new destination.
    pub client: Addr,
    /// The VIP's address: their new source.
    pub vip: Addr,
    /// The client's port, network byte order.
    pub client_port: u16,
    /// The VIP's port, network byte order.
    pub vip_port: u16,
    /// The VIP's index.
    pub vip_index: u32,
    /// As [`NatFlow::last_seen_ns`].
    pub last_seen_ns: u64,
    /// `NAT_*` state, as the forward entry's.
    pub state: u32,
    /// The backend's id.
    pub backend: u32,
}

const _: () = assert!(core::mem::size_of::<NatReply>() == 56);

/// A TCP connection whose SYN went to the backend: open.
pub const NAT_SYN: u32 = 1;
/// A TCP connection whose backend answered the SYN: open until the
/// client's segment acknowledges the answer ([`NatFlow::expect_ack`]).
pub const NAT_SYN_ACK: u32 = 2;
/// A TCP connection opened by a segment other than a SYN (its entries
/// were lost, or its backend failed): open until the backend answers with
/// anything but a RST, which shows it knows the connection.
pub const NAT_MIDSTREAM: u32 = 3;
/// A UDP flow: open until the backend's first datagram, then in the main
/// tables.
pub const NAT_UDP: u32 = 4;
/// A TCP connection past its handshake: in the main tables.
pub const NAT_ESTABLISHED: u32 = 5;
/// A TCP connection either side ended with a FIN or RST.
pub const NAT_CLOSING: u32 = 6;

/// Which way a packet of a NAT connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// From the client, to the VIP.
    Client,
    /// From the backend, back to the client.
    Backend,
}

/// What a TCP segment says, for the state machine: its flags (as in the
/// header's flags byte) and, for a client's segment, its acknowledgement
/// number, or for the backend's, its sequence number (host byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    /// The client's acknowledgement number, or the backend's sequence
    /// number.
    pub number: u32,
}

/// TCP FIN, in the flags byte.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK.
pub const TCP_ACK: u8 = 0x10;

/// What a packet does to its connection's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The state after the packet.
    pub state: u32,
    /// The entries move from the open tables to the main ones.
    pub promote: bool,
    /// The new [`NatFlow::expect_ack`].
    pub expect_ack: u32,
}

/// The state machine of a NAT connection: what a packet from `side` does
/// to a connection in `state` (expecting `expect_ack`). `segment` is None
/// for UDP. Pure, so that the datapath and the tests share it.
///
/// - A FIN or RST either way: [`NAT_CLOSING`] (it stays there).
/// - TCP, the backend's SYN-ACK to a [`NAT_SYN`]: [`NAT_SYN_ACK`],
///   expecting the client to acknowledge its sequence number + 1.
/// - TCP, the client's segment acknowledging that: [`NAT_ESTABLISHED`],
///   promoted. A blind spoofer never saw the number, so cannot promote.
/// - TCP, the backend's segment other than a RST to a [`NAT_MIDSTREAM`]:
///   promoted; the backend knows the connection.
/// - UDP, the backend's datagram to a [`NAT_UDP`] flow: promoted.
#[inline(always)]
pub const fn step(state: u32, side: Side, segment: Option<Segment>, expect_ack: u32) -> Step {
    let same = Step {
        state,
        promote: false,
        expect_ack,
    };
    let Some(seg) = segment else {
        return Step {
            promote: state == NAT_UDP && matches!(side, Side::Backend),
            ..same
        };
    };
    if seg.flags & (TCP_FIN | TCP_RST) != 0 {
        return Step {
            state: NAT_CLOSING,
            ..same
        };
    }
    match (state, side) {
        (NAT_SYN, Side::Backend) if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => Step {
            state: NAT_SYN_ACK,
            promote: false,
            expect_ack: seg.number.wrapping_add(1),
        },
        (NAT_SYN_ACK, Side::Client)
            if seg.flags & (TCP_SYN | TCP_ACK) == TCP_ACK && seg.number == expect_ack =>
        {
            Step {
                state: NAT_ESTABLISHED,
                promote: true,
                expect_ack: 0,
            }
        }
        (NAT_MIDSTREAM, Side::Backend) => Step {
            state: NAT_ESTABLISHED,
            promote: true,
            expect_ack: 0,
        },
        _ => same,
    }
}

/// The timeouts of NAT connections, from the datapath's settings.
pub trait NatSettings {
    /// How long a connection in `state` over `l4` may stay idle.
    fn timeout(&self, state: u32, l4: u8) -> u64;
    /// Whether a connection in `state` over `l4`, last seen at
    /// `last_seen_ns`, has been idle past its timeout at `now`.
    fn nat_expired(&self, state: u32, l4: u8, last_seen_ns: u64, now: u64) -> bool {
        now.saturating_sub(last_seen_ns) > self.timeout(state, l4)
    }
}

impl NatSettings for Settings {
    /// A handshake (or a connection opened midstream) the handshake
    /// timeout, an established TCP connection the TCP idle timeout, a
    /// closing one the closing timeout, UDP the UDP idle timeout.
    #[inline(always)]
    fn timeout(&self, state: u32, l4: u8) -> u64 {
        if l4 != proto::TCP {
            return self.udp_idle_ns;
        }
        match state {
            NAT_ESTABLISHED => self.tcp_idle_ns,
            NAT_CLOSING => self.nat_closing_ns,
            _ => self.nat_handshake_ns,
        }
    }
}

/// Most addresses of one family in the SNAT pool.
pub const MAX_SNAT_ADDRS: u32 = 16;

/// The SNAT pool of one family (`snat_pool`: index 0 IPv4, 1 IPv6): the
/// addresses new connections' sources are picked from, in turn.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPool {
    pub addrs: [Addr; MAX_SNAT_ADDRS as usize],
    /// How many of `addrs` are used (0: no pool; source NAT drops and
    /// counts).
    pub count: u32,
    /// The configured source ports (`snat_ports`, host byte order), the
    /// whole span over every CPU: a client's own port within it is kept
    /// where free.
    pub first: u16,
    pub last: u16,
}

const _: () = assert!(core::mem::size_of::<SnatPool>() == 264);

/// The index of the SNAT pool of addresses of `v6`'s family.
#[inline(always)]
pub const fn pool_index(v6: bool) -> u32 {
    v6 as u32
}

/// One CPU's source ports (`snat_ports`, a per-CPU array of one): ports
/// `first` to `first + count - 1` of every pool address, walked by a
/// cursor. The daemon splits its configured range evenly between the
/// CPUs, so no two CPUs ever pick the same source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    /// First port, host byte order.
    pub first: u16,
    /// Ports in the range (0: none, source NAT drops and counts).
    pub count: u16,
    /// The cursor: the next candidate is `next`; it moves on by one with
    /// each candidate tried.
    pub next: u32,
}

const _: () = assert!(core::mem::size_of::<PortRange>() == 8);

impl PortRange {
    /// Candidate `n` of the range with a pool of `addrs` addresses: the
    /// address index (below `addrs`) and the port (host byte order). The
    /// addresses turn fastest, so consecutive connections spread over
    /// them.
    #[inline(always)]
    pub const fn candidate(&self, n: u32, addrs: u32) -> (u32, u16) {
        if addrs == 0 || self.count == 0 {
            return (0, 0);
        }
        let addr = n % addrs;
        let port = self.first as u32 + (n / addrs) % self.count as u32;
        (addr, port as u16)
    }

    /// The ranges of `cpus` CPUs sharing ports `first..=last` evenly (the
    /// remainder to the first CPUs), each with its cursor at 0. Empty when
    /// there are more CPUs than ports.
    pub fn split(first: u16, last: u16, cpus: u32) -> Option<impl Iterator<Item = PortRange>> {
        let total = (last as u32 + 1).checked_sub(first as u32)?;
        if cpus == 0 || total < cpus {
            return None;
        }
        let (each, extra) = (total / cpus, total % cpus);
        let mut at = first as u32;
        Some((0..cpus).map(move |cpu| {
            let count = each + (cpu < extra) as u32;
            let range = PortRange {
                first: at as u16,
                count: count as u16,
                next: 0,
            };
            at += count;
            range
        }))
    }
}

/// How many candidates a new connection tries before the datapath gives
/// up, drops its packet and counts the pool exhausted (for this backend
/// address and port: a source is only taken for the backend it talks to).
pub const PORT_TRIES: u32 = 4;

/// A backend's NAT details (`nat_backends`, by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatBackend {
    /// The port the backend listens on, network byte order (the VIP's by
    /// default; a port-0 VIP keeps the client's port when it is 0).
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<NatBackend>() == 4);

/// A route toward clients in `nat_routes`, an LPM trie: the prefix length
/// in bits over the address (IPv4 as IPv4-mapped, so an IPv4 prefix of
/// length n has length 96 + n), and the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub prefix_len: u32,
    pub addr: Addr,
}

const _: () = assert!(core::mem::size_of::<RouteKey>() == 20);

impl RouteKey {
    /// The key that looks address `addr` up.
    #[inline(always)]
    pub const fn lookup(addr: Addr) -> RouteKey {
        RouteKey {
            prefix_len: 128,
            addr,
        }
    }

    /// The entry of prefix `addr`/`len`; `v4`: `addr` is IPv4-mapped and
    /// `len` counts IPv4 bits.
    pub const fn prefix(addr: Addr, len: u8, v4: bool) -> RouteKey {
        RouteKey {
            prefix_len: if v4 { 96 } else { 0 } + len as u32,
            addr,
        }
    }
}

/// Where replies to clients of a prefix go: the next hop's MAC and the
/// egress interface's, as written over the frame's (see
/// [`crate::backend::BackendInfo::macs`]), and the interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hop {
    pub macs: [u16; 6],
    pub ifindex: u32,
}

const _: () = assert!(core::mem::size_of::<Hop>() == 16);

/// Most routes toward clients the daemon writes.
pub const MAX_ROUTES: u32 = 65_536;
/// Entries of each open table: connections between their first packet and
/// the backend's answer, over every NAT VIP, in per-CPU LRU lists (as the
/// handshake table): a flood of spoofed first packets turns them over and
/// never reaches the main tables.
pub const NAT_OPEN_ENTRIES: u32 = 32_768;

/// Ones' complement arithmetic for checksums updated in place (RFC 1624):
/// the sum of what a field held, complemented, and what it holds now,
/// added to the complemented checksum.
pub mod csum {
    use crate::Addr;

    /// Adds to `sum` the change of a 16-bit word from `old` to `new`.
    #[inline(always)]
    pub const fn word(sum: u32, old: u16, new: u16) -> u32 {
        sum + (!old) as u32 + new as u32
    }

    /// Adds the change of a 32-bit word (two 16-bit words).
    #[inline(always)]
    pub const fn word32(sum: u32, old: u32, new: u32) -> u32 {
        let sum = word(sum, old as u16, new as u16);
        word(sum, (old >> 16) as u16, (new >> 16) as u16)
    }

    /// Adds the change of an address: its last word for IPv4 (the other
    /// words are not in the packet), all four for IPv6.
    #[inline(always)]
    pub const fn addr(sum: u32, old: &Addr, new: &Addr, v6: bool) -> u32 {
        let mut sum = word32(sum, old[3], new[3]);
        if v6 {
            sum = word32(sum, old[0], new[0]);
            sum = word32(sum, old[1], new[1]);
            sum = word32(sum, old[2], new[2]);
            // Fold once, so that eight words cannot overflow.
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }

    /// The checksum `check` (as it lies in the packet) after changes whose
    /// sum is `sum`.
    #[inline(always)]
    pub const fn apply(check: u16, sum: u32) -> u16 {
        let sum = sum + (!check) as u32;
        let sum = (sum & 0xffff) + (sum >> 16);
        !(((sum & 0xffff) + (sum >> 16)) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(flags: u8, number: u32) -> Option<Segment> {
        Some(Segment { flags, number })
    }

    /// A state, a packet from a side, and the expected acknowledgement;
    /// then the state, promotion and expected acknowledgement after it.
    type Row = (u32, Side, Option<Segment>, u32, (u32, bool, u32));

    #[test]
    fn a_handshake_promotes_on_the_ack_of_the_backends_syn() {
        use Side::*;
        let table: &[Row] = &[
            (
                NAT_SYN,
                Backend,
                seg(TCP_SYN | TCP_ACK, 1000),
                0,
                (NAT_SYN_ACK, false, 1001),
            ),
            (
                NAT_SYN,
                Backend,
                seg(TCP_SYN | TCP_ACK, u32::MAX),
                0,
                (NAT_SYN_ACK, false, 0),
            ),
            (NAT_SYN, Client, seg(TCP_SYN, 0), 0, (NAT_SYN, false, 0)),
            (NAT_SYN, Client, seg(TCP_ACK, 1001), 0, (NAT_SYN, false, 0)),
            (
                NAT_SYN_ACK,
                Client,
                seg(TCP_ACK, 1001),
                1001,
                (NAT_ESTABLISHED, true, 0),
            ),
            (
                NAT_SYN_ACK,
                Client,
                seg(TCP_ACK, 1002),
                1001,
                (NAT_SYN_ACK, false, 1001),
            ),
            (
                NAT_SYN_ACK,
                Client,
                seg(TCP_SYN, 0),
                1001,
                (NAT_SYN_ACK, false, 1001),
            ),
            (
                NAT_SYN_ACK,
                Backend,
                seg(TCP_SYN | TCP_ACK, 1000),
                1001,
                (NAT_SYN_ACK, false, 1001),
            ),
            (
                NAT_SYN_ACK,
                Client,
                seg(TCP_RST, 1001),
                1001,
                (NAT_CLOSING, false, 1001),
            ),
            (
                NAT_MIDSTREAM,
                Client,
                seg(TCP_ACK, 5),
                0,
                (NAT_MIDSTREAM, false, 0),
            ),
            (
                NAT_MIDSTREAM,
                Backend,
                seg(TCP_ACK, 5),
                0,
                (NAT_ESTABLISHED, true, 0),
            ),
            (
                NAT_MIDSTREAM,
                Backend,
                seg(TCP_RST, 5),
                0,
                (NAT_CLOSING, false, 0),
            ),
            (
                NAT_ESTABLISHED,
                Backend,
                seg(TCP_ACK, 5),
                0,
                (NAT_ESTABLISHED, false, 0),
            ),
            (
                NAT_ESTABLISHED,
                Client,
                seg(TCP_FIN | TCP_ACK, 5),
                0,
                (NAT_CLOSING, false, 0),
            ),
            (
                NAT_ESTABLISHED,
                Backend,
                seg(TCP_RST | TCP_ACK, 5),
                0,
                (NAT_CLOSING, false, 0),
            ),
            (
                NAT_CLOSING,
                Client,
                seg(TCP_ACK, 5),
                0,
                (NAT_CLOSING, false, 0),
            ),
            (NAT_UDP, Client, None, 0, (NAT_UDP, false, 0)),
            (NAT_UDP, Backend, None, 0, (NAT_UDP, true, 0)),
        ];
        for &(state, side, segment, expect, (to, promote, ack)) in table {
            assert_eq!(
                step(state, side, segment, expect),
                Step {
                    state: to,
                    promote,
                    expect_ack: ack
                },
                "{state} {side:?} {segment:?}"
            );
        }
    }

    #[test]
    fn timeouts_follow_the_state() {
        let s = Settings {
            tcp_idle_ns: 300,
            udp_idle_ns: 30,
            nat_handshake_ns: 10,
            nat_closing_ns: 20,
            ..Settings::default()
        };
        for (state, l4, timeout) in [
            (NAT_SYN, proto::TCP, 10),
            (NAT_SYN_ACK, proto::TCP, 10),
            (NAT_MIDSTREAM, proto::TCP, 10),
            (NAT_ESTABLISHED, proto::TCP, 300),
            (NAT_CLOSING, proto::TCP, 20),
            (NAT_UDP, proto::UDP, 30),
        ] {
            assert_eq!(s.timeout(state, l4), timeout, "{state}");
            assert!(!s.nat_expired(state, l4, 100, 100 + timeout));
            assert!(s.nat_expired(state, l4, 100, 101 + timeout));
        }
    }

    #[test]
    fn candidates_turn_the_addresses_fastest_and_wrap_the_ports() {
        let range = PortRange {
            first: 1000,
            count: 3,
            next: 0,
        };
        let got: Vec<(u32, u16)> = (0..7).map(|n| range.candidate(n, 2)).collect();
        assert_eq!(
            got,
            [
                (0, 1000),
                (1, 1000),
                (0, 1001),
                (1, 1001),
                (0, 1002),
                (1, 1002),
                (0, 1000)
            ]
        );
        assert_eq!(range.candidate(5, 0), (0, 0));
    }

    #[test]
    fn ranges_split_the_ports_evenly_without_overlap() {
        let ranges: Vec<PortRange> = PortRange::split(1024, 65535, 3).unwrap().collect();
        assert_eq!(
            ranges
                .iter()
                .map(|r| (r.first, r.count))
                .collect::<Vec<_>>(),
            [(1024, 21504), (22528, 21504), (44032, 21504)]
        );
        let ranges: Vec<PortRange> = PortRange::split(10, 14, 2).unwrap().collect();
        assert_eq!(
            ranges
                .iter()
                .map(|r| (r.first, r.count))
                .collect::<Vec<_>>(),
            [(10, 3), (13, 2)]
        );
        assert!(PortRange::split(10, 10, 2).is_none());
        assert!(PortRange::split(11, 10, 1).is_none());
    }

    /// The ones' complement checksum of big-endian 16-bit `words`.
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = words.iter().map(|&w| w as u32).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn an_updated_checksum_is_the_checksum_recomputed() {
        // Words as they lie in memory (any byte order works alike).
        let before = [
            0x4500u16, 0x0054, 0xc0a8, 0x0001, 0x0a00, 0x0002, 0xffff, 0x0000,
        ];
        let mut after = before;
        after[2] = 0x0a32;
        after[3] = 0x000b;
        after[6] = 0x1234;
        let mut sum = csum::word32(
            0,
            before[2] as u32 | (before[3] as u32) << 16,
            after[2] as u32 | (after[3] as u32) << 16,
        );
        sum = csum::word(sum, before[6], after[6]);
        assert_eq!(csum::apply(full(&before), sum), full(&after));
        let old = [1u32, 2, 3, 4];
        let new = [u32::MAX, 7, u32::MAX, 0];
        let words = |a: &Addr| -> Vec<u16> {
            a.iter()
                .flat_map(|w| [*w as u16, (*w >> 16) as u16])
                .collect()
        };
        let sum = csum::addr(0, &old, &new, true);
        assert_eq!(csum::apply(full(&words(&old)), sum), full(&words(&new)));
    }
}

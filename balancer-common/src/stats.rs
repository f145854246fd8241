//! Per-CPU counters of the datapath: by verdict reason, by event, per VIP
//! and per backend.
//!
//! Every counter map is a `BPF_MAP_TYPE_PERCPU_ARRAY`: each CPU bumps its
//! own slot without atomics, and userspace sums the slots when it reads
//! them.

/// Index of a global counter in the `stats` map.
///
/// A plain `u32` newtype rather than an enum: the value crosses into the
/// kernel as an array index, and every index below [`Stat::COUNT`] is valid.
/// Every frame is counted under exactly one verdict reason.
///
/// The map reserves [`Stat::CAPACITY`] slots for reasons and as many for
/// events, so a new counter takes a free slot and the pinned map of a
/// running balancer keeps its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stat(pub u32);

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident = $index:literal, $text:literal;)*) => {
        impl Stat {
            $($(#[$doc])* pub const $name: Stat = Stat($index);)*

            /// Every counter, in index order.
            pub const ALL: &'static [Stat] = &[$(Self::$name),*];

            /// Stable name of the counter, as userspace reports it.
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $($index => $text,)*
                    _ => "unknown",
                }
            }
        }
    };
}

stats! {
    /// Passed: not IPv4 or IPv6.
    PASS_NON_IP = 0, "pass_non_ip";
    /// Passed: IP, but not to a VIP (address, port or protocol).
    PASS_NOT_VIP = 1, "pass_not_vip";
    /// Passed: too short or malformed to tell whether it is for a VIP.
    PASS_UNPARSED = 2, "pass_unparsed";
    /// Passed: ICMP or ICMPv6 other than a path-MTU error for a VIP or an
    /// error about a NAT connection.
    PASS_ICMP = 3, "pass_icmp";
    /// Sent back out of the ingress interface to a backend (XDP_TX).
    TX = 4, "tx";
    /// Redirected to a backend through another interface.
    REDIRECT = 5, "redirect";
    /// Dropped: a packet for a VIP ends before a header it announces, or
    /// before the length its IP header gives.
    DROP_TRUNCATED = 6, "drop_truncated";
    /// Dropped: a packet for a VIP with an invalid IP header (IPv4 IHL
    /// below 5, wrong IP version).
    DROP_MALFORMED = 7, "drop_malformed";
    /// Dropped: the VIP has no ring or the ring slot no backend.
    DROP_NO_BACKEND = 8, "drop_no_backend";
    /// Dropped: the chosen backend's MAC is not resolved yet.
    DROP_NO_NEIGHBOUR = 9, "drop_no_neighbour";
    /// Dropped: the redirect to the backend's interface failed.
    DROP_REDIRECT = 10, "drop_redirect";
    /// Dropped: TCP to a VIP with flags no client sends (no flag at all,
    /// SYN with FIN, RST or ACK, FIN with RST, FIN without ACK).
    DROP_TCP_FLAGS = 11, "drop_tcp_flags";
    /// Dropped: TCP to a VIP whose data offset is below 5 words or beyond
    /// the end of the packet.
    DROP_TCP_OFFSET = 12, "drop_tcp_offset";
    /// Dropped: UDP to a VIP whose length field is not the length of the
    /// datagram the IP header carries.
    DROP_UDP_LENGTH = 13, "drop_udp_length";
    /// Dropped: the first fragment of a datagram to a VIP address but to
    /// no VIP's port.
    DROP_FRAGMENT_PORT = 14, "drop_fragment_port";
    /// Dropped: a later fragment to a VIP address whose first fragment was
    /// not admitted shortly before (never seen, refused, or out of order).
    DROP_FRAGMENT_UNMATCHED = 15, "drop_fragment_unmatched";
    /// Dropped: the client's address is in a deny list (global or the
    /// VIP's).
    DROP_DENIED = 16, "drop_denied";
    /// Dropped: an allow list applies to the VIP and none lists the
    /// client's address.
    DROP_NOT_ALLOWED = 17, "drop_not_allowed";
    /// Dropped: a new flow over its source's new-flow rate for the VIP
    /// (`[vip.limits] new_flows`).
    DROP_SOURCE_FLOWS = 18, "drop_source_flows";
    /// Dropped: a packet over its source's packet rate for the VIP
    /// (`[vip.limits] packets`).
    DROP_SOURCE_PACKETS = 19, "drop_source_packets";
    /// Dropped: a packet for a backend reached in IPIP or GUE that cannot be
    /// encapsulated: the frame has no room for the outer header (the
    /// driver gave too little headroom), or the packet is too long for an
    /// outer IPv4 header (or, in IPv6, for its own length field).
    DROP_ENCAP = 20, "drop_encap";
    /// Sent back to the client (XDP_TX): an ICMP fragmentation-needed or
    /// ICMPv6 packet-too-big in place of a packet that would exceed its
    /// backend's path MTU once encapsulated.
    TX_TOO_BIG = 21, "tx_too_big";
    /// Dropped: a packet that would exceed its backend's path MTU once
    /// encapsulated and gets no ICMP message: IPv4 without DF (fragmenting
    /// is left to the sender), an ICMP message itself, one too short to
    /// quote, or one over the CPU's rate of ICMP messages.
    DROP_TOO_BIG = 22, "drop_too_big";
    /// A backend's reply of a NAT connection, translated, sent back out of
    /// the ingress interface toward its client (XDP_TX).
    TX_REPLY = 23, "tx_reply";
    /// A backend's reply of a NAT connection, translated, redirected
    /// toward its client through another interface.
    REDIRECT_REPLY = 24, "redirect_reply";
    /// Dropped: a new NAT connection found no free source: the candidates
    /// it tried of its CPU's port range were all taken for its backend, or
    /// there is no SNAT pool or range for its family.
    DROP_NAT_PORTS = 25, "drop_nat_ports";
    /// Dropped: a backend's reply of a NAT connection whose client no
    /// route of `nat_routes` reaches (the daemon writes the host's routes
    /// and neighbours toward clients).
    DROP_NAT_NO_ROUTE = 26, "drop_nat_no_route";
    /// Dropped: a fragment to a NAT VIP, or of a reply to a SNAT address:
    /// NAT translates whole datagrams only.
    DROP_NAT_FRAGMENT = 27, "drop_nat_fragment";
    /// Dropped: a TCP FIN or RST to a NAT VIP for a connection it does not
    /// hold: nothing to end.
    DROP_NAT_NO_FLOW = 28, "drop_nat_no_flow";
    /// Dropped: a backend's reply of a NAT connection whose entries
    /// expired.
    DROP_NAT_EXPIRED = 29, "drop_nat_expired";
    /// Dropped: a packet to a NAT VIP while the NAT program is not in
    /// `programs` (no daemon put it there).
    DROP_NAT_UNAVAILABLE = 30, "drop_nat_unavailable";
}

impl Stat {
    /// Number of verdict reasons.
    pub const COUNT: u32 = 31;
    /// Slots of the map reserved for verdict reasons, used or not.
    pub const CAPACITY: u32 = 64;
}

const _: () = assert!(Stat::ALL.len() == Stat::COUNT as usize);
const _: () = assert!(Stat::COUNT <= Stat::CAPACITY);

/// Events counted on top of the verdict reasons (a forwarded packet can be
/// a fragment, a path-MTU error, a new flow and a fail-over at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Event(pub u32);

macro_rules! events {
    ($($(#[$doc:meta])* $name:ident = $index:literal, $text:literal;)*) => {
        impl Event {
            $($(#[$doc])* pub const $name: Event = Event($index);)*

            /// Every event, in index order.
            pub const ALL: &'static [Event] = &[$(Self::$name),*];

            /// Stable name of the event counter.
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $($index => $text,)*
                    _ => "unknown",
                }
            }

            /// Index of the event's slot in the counters map, after the
            /// slots of the verdict reasons.
            pub const fn slot(self) -> u32 {
                Stat::CAPACITY + self.0
            }
        }
    };
}

events! {
    /// A fragment for a VIP forwarded: a first fragment placed as a packet
    /// of its flow, or a later one following it.
    FRAGMENT = 0, "fragment";
    /// An ICMP fragmentation-needed or ICMPv6 packet-too-big sent on to
    /// the backend of the quoted flow.
    ICMP_PMTU = 1, "icmp_pmtu";
    /// A new flow placed: a TCP SYN or a UDP datagram of a flow neither
    /// table knows, or a flow whose entry expired, was closing, or whose
    /// backend is down.
    NEW_FLOW = 2, "new_flow";
    /// A flow whose backend went down, moved to another backend.
    FAILOVER = 3, "failover";
    /// A TCP SYN for a flow the connection table holds as live (not seen
    /// closing, not expired): it keeps the flow's backend, so that a
    /// retransmitted or spoofed SYN never moves a connection.
    SYN_KEPT = 4, "syn_kept";
    /// A new flow to a VIP that keeps its choice from the first packet
    /// (round robin, least-*, persistence) recorded in the handshake table.
    HANDSHAKE = 5, "handshake";
    /// A flow's next packet from the client found it in the handshake
    /// table and moved it to the connection table.
    PROMOTED = 6, "promoted";
    /// A new entry in the connection table (a promotion, or a flow of a
    /// hashing VIP past its SYN): what can evict another entry.
    FLOW_INSERT = 7, "flow_insert";
    /// An entry not made because the CPU's insert budget was spent: the
    /// flow is forwarded by its ring (hashing VIPs) or from the handshake
    /// table. Steady growth means a flood of new 5-tuples.
    INSERT_SKIPPED = 8, "insert_skipped";
    /// A TCP segment other than a SYN of a flow neither table knows, to a
    /// VIP that keeps its choice from the first packet: placed again
    /// without an entry. A flow evicted or expired while still open, or a
    /// spoofed segment.
    UNKNOWN_MIDSTREAM = 9, "unknown_midstream";
    /// A packet sent to its backend in an outer IP header (IPIP or GUE).
    ENCAP = 10, "encap";
    /// A new connection-table entry told to the daemon, which sends it
    /// to the peer hosts (`[sync]`).
    FLOW_SHARED = 11, "flow_shared";
    /// A new entry not told to the daemon: the ring buffer of flow events
    /// was full (the daemon falls behind).
    SHARE_LOST = 12, "share_lost";
    /// A NAT connection opened: its forward and reverse entries made in
    /// the open tables.
    NAT_OPENED = 13, "nat_opened";
    /// A NAT connection moved from the open tables to the main ones: the
    /// backend's answer showed it real.
    NAT_PROMOTED = 14, "nat_promoted";
    /// A candidate source of a new NAT connection was taken: the next one
    /// was tried.
    NAT_PORT_TAKEN = 15, "nat_port_taken";
    /// A packet of a NAT connection translated and sent to its backend.
    NAT_FORWARD = 16, "nat_forward";
    /// An ICMP error about a NAT connection, from its backend's side (the
    /// backend, or a router on the way to it, about a packet the balancer
    /// sent it), translated and sent on to the client.
    NAT_ICMP_TO_CLIENT = 17, "nat_icmp_to_client";
    /// An ICMP error about a NAT connection, from its client's side (a
    /// router on the way to the client, say a path-MTU error, or the
    /// client itself, about a reply the balancer sent), translated and sent
    /// on to the backend.
    NAT_ICMP_TO_BACKEND = 18, "nat_icmp_to_backend";
}

impl Event {
    /// Number of event counters.
    pub const COUNT: u32 = 19;
    /// Slots of the map reserved for events, used or not.
    pub const CAPACITY: u32 = 64;
}

const _: () = assert!(Event::ALL.len() == Event::COUNT as usize);
const _: () = assert!(Event::COUNT <= Event::CAPACITY);

/// Size of the counters map: the slots of the verdict reasons, then those
/// of the events.
pub const STATS_SLOTS: u32 = Stat::CAPACITY + Event::CAPACITY;

/// Value of one counter slot: packets and bytes seen on one CPU.
///
/// Bytes are the frame length as XDP sees it (from the Ethernet header to
/// the end of the payload, without FCS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    /// Frames counted.
    pub packets: u64,
    /// Sum of the frames' lengths in bytes.
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCount>() == 16);

impl PacketCount {
    /// Sum of two counts, as when adding up the per-CPU slots of one counter.
    pub const fn merged(self, other: PacketCount) -> PacketCount {
        PacketCount {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

/// Per-VIP or per-backend counters on one CPU: traffic forwarded, and the
/// flows that started there (what `backend list` shows as connections).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Packets forwarded (to a backend of the VIP, or to the backend).
    pub packets: u64,
    /// Their bytes (frame length).
    pub bytes: u64,
    /// Flows that got a new connection-table entry.
    pub new_flows: u64,
}

const _: () = assert!(core::mem::size_of::<FlowCounters>() == 24);

impl FlowCounters {
    /// Sum of two counts, as when adding up the per-CPU slots.
    pub const fn merged(self, other: FlowCounters) -> FlowCounters {
        FlowCounters {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_flows: self.new_flows.wrapping_add(other.new_flows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stat_has_a_distinct_name_and_index() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat.0 as usize, i);
            assert_ne!(stat.name(), "unknown");
            for other in &Stat::ALL[..i] {
                assert_ne!(stat.name(), other.name());
            }
        }
    }

    #[test]
    fn every_event_has_a_distinct_name_and_slot_after_the_reasons() {
        for (i, event) in Event::ALL.iter().enumerate() {
            assert_eq!(event.0 as usize, i);
            assert_eq!(event.slot(), Stat::CAPACITY + i as u32);
            assert_ne!(event.name(), "unknown");
        }
        assert_eq!(STATS_SLOTS, 128, "the pinned map's layout");
    }

    #[test]
    fn merged_adds_packets_and_bytes() {
        let a = PacketCount {
            packets: 2,
            bytes: 100,
        };
        let b = PacketCount {
            packets: 3,
            bytes: 50,
        };
        assert_eq!(
            a.merged(b),
            PacketCount {
                packets: 5,
                bytes: 150
            }
        );
    }
}

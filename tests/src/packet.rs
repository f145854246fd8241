//! Test packets, built with etherparse: frames as a NIC would hand them to
//! XDP, with valid checksums.

use std::net::IpAddr;

use etherparse::{IpNumber, PacketBuilder, VlanId};

/// MAC of the client side in test frames.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc1, 0x01];
/// MAC of the balancer's interface in test frames.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x1b, 0x01];

/// Transport of a test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flags (ACK on every packet but a SYN).
    Tcp {
        syn: bool,
        fin: bool,
        rst: bool,
    },
    Udp,
}

/// A test packet's description; [`Packet::build`] makes the frame.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub l4: L4,
    pub vlan: Option<u16>,
    pub payload: Vec<u8>,
}

impl Packet {
    /// A TCP SYN from `src:src_port` to `dst:dst_port`.
    pub fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Packet {
        Packet {
            src,
            dst,
            src_port,
            dst_port,
            l4: L4::Tcp {
                syn: true,
                fin: false,
                rst: false,
            },
            vlan: None,
            payload: Vec::new(),
        }
    }

    /// A UDP datagram with a small payload.
    pub fn udp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Packet {
        Packet {
            src,
            dst,
            src_port,
            dst_port,
            l4: L4::Udp,
            vlan: None,
            payload: b"payload".to_vec(),
        }
    }

    /// The same packet without the SYN flag (a packet of an established
    /// flow).
    pub fn established(mut self) -> Packet {
        if let L4::Tcp { syn, .. } = &mut self.l4 {
            *syn = false;
        }
        self
    }

    /// The same packet as the client's FIN (with ACK).
    pub fn fin(mut self) -> Packet {
        self.l4 = L4::Tcp {
            syn: false,
            fin: true,
            rst: false,
        };
        self
    }

    /// The same packet as the client's RST.
    pub fn rst(mut self) -> Packet {
        self.l4 = L4::Tcp {
            syn: false,
            fin: false,
            rst: true,
        };
        self
    }

    /// The key of the packet's flow, as the connection table has it.
    pub fn key(&self) -> balancer_common::flow::FlowKey {
        let l4 = match self.l4 {
            L4::Tcp { .. } => balancer_common::proto::TCP,
            L4::Udp => balancer_common::proto::UDP,
        };
        crate::fixture::flow_key(self.src, self.src_port, self.dst, self.dst_port, l4)
    }

    /// The same packet with an 802.1Q tag.
    pub fn tagged(mut self, vlan: u16) -> Packet {
        self.vlan = Some(vlan);
        self
    }

    /// The Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        let mut out = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {{
                let ip = $ip;
                match self.l4 {
                    L4::Udp => ip
                        .udp(self.src_port, self.dst_port)
                        .write(&mut out, &self.payload),
                    L4::Tcp { syn, fin, rst } => {
                        let mut tcp = ip.tcp(self.src_port, self.dst_port, 1000, 64240);
                        if syn {
                            tcp = tcp.syn();
                        } else if rst {
                            tcp = tcp.rst();
                        } else {
                            tcp = tcp.ack(1);
                        }
                        if fin {
                            tcp = tcp.fin();
                        }
                        tcp.write(&mut out, &self.payload)
                    }
                }
            }};
        }
        let result = match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
            (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => {
                finish!(eth.single_vlan(vlan_id(v)).ipv4(s.octets(), d.octets(), 64))
            }
            (IpAddr::V6(s), IpAddr::V6(d), None) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
            (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => {
                finish!(eth.single_vlan(vlan_id(v)).ipv6(s.octets(), d.octets(), 64))
            }
            _ => panic!("mixed address families in a test packet"),
        };
        result.expect("etherparse cannot build the test packet");
        out
    }
}

/// A TCP segment from `src:src_port` to `dst:dst_port` with exactly the
/// flags of `flags` (the header's flags byte: FIN 0x01, SYN 0x02, RST
/// 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80) and `payload`,
/// valid checksums.
pub fn tcp_with_flags(
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {{
            let mut tcp = $ip.tcp(src_port, dst_port, 1000, 64240);
            let bit = |b: u8| flags & b != 0;
            if bit(0x01) {
                tcp = tcp.fin();
            }
            if bit(0x02) {
                tcp = tcp.syn();
            }
            if bit(0x04) {
                tcp = tcp.rst();
            }
            if bit(0x08) {
                tcp = tcp.psh();
            }
            if bit(0x10) {
                tcp = tcp.ack(1);
            }
            if bit(0x20) {
                tcp = tcp.urg(0);
            }
            if bit(0x40) {
                tcp = tcp.ece();
            }
            if bit(0x80) {
                tcp = tcp.cwr();
            }
            tcp.write(&mut out, payload)
        }};
    }
    let result = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d)) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
        _ => panic!("mixed address families in a test packet"),
    };
    result.expect("etherparse cannot build the test packet");
    out
}

fn vlan_id(v: u16) -> VlanId {
    VlanId::try_new(v).expect("VLAN id above 4095")
}

/// `frame` with its first two MAC addresses replaced: what the datapath's
/// rewrite must produce.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out
}

/// An IPv4 frame with IP options (IHL above 5): a TCP SYN with a 4-byte
/// option block of NOPs and an end-of-list (valid per RFC 791).
pub fn ipv4_with_options(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut ip =
        etherparse::Ipv4Header::new(20, 64, IpNumber::TCP, src, dst).expect("valid header");
    ip.options = [1u8, 1, 1, 0][..].try_into().expect("4 option bytes");
    let mut tcp = etherparse::TcpHeader::new(src_port, dst_port, 1000, 64240);
    ip.set_payload_len(tcp.header_len()).expect("small payload");
    tcp.syn = true;
    tcp.checksum = tcp.calc_checksum_ipv4(&ip, &[]).expect("checksum");
    let eth = etherparse::Ethernet2Header {
        source: CLIENT_MAC,
        destination: LB_MAC,
        ether_type: etherparse::EtherType::IPV4,
    };
    let mut out = eth.to_bytes().to_vec();
    ip.write(&mut out).expect("write IPv4");
    tcp.write(&mut out).expect("write TCP");
    out
}

/// IPv4 fragments of one UDP datagram to `dst:dst_port`: the first (with
/// the UDP header) and a later one (without), each a whole frame.
pub fn ipv4_fragments(src: [u8; 4], dst: [u8; 4], dst_port: u16) -> [Vec<u8>; 2] {
    let eth = etherparse::Ethernet2Header {
        source: CLIENT_MAC,
        destination: LB_MAC,
        ether_type: etherparse::EtherType::IPV4,
    };
    let udp = etherparse::UdpHeader {
        source_port: 5353,
        destination_port: dst_port,
        length: 8 + 2000,
        checksum: 0,
    };
    let mut first_payload = udp.to_bytes().to_vec();
    first_payload.extend_from_slice(&[0xab; 1472]);
    let later_payload = vec![0xcd; 536];
    let make = |offset_units: u16, more: bool, payload: &[u8]| {
        let mut ip = etherparse::Ipv4Header::new(payload.len() as u16, 64, IpNumber::UDP, src, dst)
            .expect("valid header");
        ip.identification = 0x4242;
        ip.more_fragments = more;
        ip.fragment_offset = etherparse::IpFragOffset::try_new(offset_units).expect("offset");
        ip.header_checksum = ip.calc_header_checksum();
        let mut out = eth.to_bytes().to_vec();
        ip.write(&mut out).expect("write IPv4");
        out.extend_from_slice(payload);
        out
    };
    [
        make(0, true, &first_payload),
        make(185, false, &later_payload),
    ]
}

/// `frame`, an Ethernet frame of a whole IPv4 or IPv6 packet (no VLAN
/// tag), cut into two fragments of datagram `id`: the first carries the
/// first `at` bytes of the IP payload (a multiple of 8), the second the
/// rest. Header checksums are recomputed; the payload is left as it was,
/// so the transport checksum stays valid for the reassembled datagram.
pub fn fragmented(frame: &[u8], at: usize, id: u32) -> [Vec<u8>; 2] {
    assert!(
        at.is_multiple_of(8),
        "fragments break at multiples of 8 bytes"
    );
    let (eth, packet) = frame.split_at(14);
    match packet[0] >> 4 {
        4 => {
            let (mut header, payload) =
                etherparse::Ipv4Header::from_slice(packet).expect("an IPv4 packet");
            let (first, rest) = payload.split_at(at);
            let mut make = |offset: usize, more: bool, part: &[u8]| {
                header.identification = id as u16;
                header.more_fragments = more;
                header.fragment_offset =
                    etherparse::IpFragOffset::try_new((offset / 8) as u16).expect("offset");
                header.set_payload_len(part.len()).expect("payload length");
                header.header_checksum = header.calc_header_checksum();
                let mut out = eth.to_vec();
                header.write(&mut out).expect("write IPv4");
                out.extend_from_slice(part);
                out
            };
            [make(0, true, first), make(at, false, rest)]
        }
        6 => {
            let (mut header, payload) =
                etherparse::Ipv6Header::from_slice(packet).expect("an IPv6 packet");
            let next = header.next_header;
            let (first, rest) = payload.split_at(at);
            let mut make = |offset: usize, more: bool, part: &[u8]| {
                header.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
                header.payload_length = (8 + part.len()) as u16;
                let mut out = eth.to_vec();
                header.write(&mut out).expect("write IPv6");
                out.extend_from_slice(&ipv6_fragment_header(next.0, offset, more, id));
                out.extend_from_slice(part);
                out
            };
            [make(0, true, first), make(at, false, rest)]
        }
        v => panic!("IP version {v}"),
    }
}

/// An IPv6 fragment header (RFC 8200, 4.5): the next header, the offset
/// of the fragment's data in bytes (a multiple of 8) in the high 13 bits
/// of the third and fourth bytes, the M flag in the lowest bit, then the
/// identification. Written here because etherparse 0.19 puts the M flag
/// and the offset's low bits elsewhere.
pub fn ipv6_fragment_header(next: u8, offset: usize, more: bool, id: u32) -> [u8; 8] {
    assert!(
        offset.is_multiple_of(8) && offset < 65536,
        "fragment offset {offset}"
    );
    let offset_flags = offset as u16 | u16::from(more);
    let [o0, o1] = offset_flags.to_be_bytes();
    let [i0, i1, i2, i3] = id.to_be_bytes();
    [next, 0, o0, o1, i0, i1, i2, i3]
}

/// IPv6 fragments of one UDP datagram, as [`ipv4_fragments`].
pub fn ipv6_fragments(src: [u8; 16], dst: [u8; 16], dst_port: u16) -> [Vec<u8>; 2] {
    let eth = etherparse::Ethernet2Header {
        source: CLIENT_MAC,
        destination: LB_MAC,
        ether_type: etherparse::EtherType::IPV6,
    };
    let udp = etherparse::UdpHeader {
        source_port: 5353,
        destination_port: dst_port,
        length: 8 + 2000,
        checksum: 0,
    };
    let mut first_payload = udp.to_bytes().to_vec();
    first_payload.extend_from_slice(&[0xab; 1448]);
    let later_payload = vec![0xcd; 552];
    let make = |offset_units: u16, more: bool, payload: &[u8]| {
        let frag = ipv6_fragment_header(IpNumber::UDP.0, offset_units as usize * 8, more, 0x4242);
        let ip = etherparse::Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: (8 + payload.len()) as u16,
            next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
            hop_limit: 64,
            source: src,
            destination: dst,
        };
        let mut out = eth.to_bytes().to_vec();
        ip.write(&mut out).expect("write IPv6");
        out.extend_from_slice(&frag);
        out.extend_from_slice(payload);
        out
    };
    [
        make(0, true, &first_payload),
        make(182, false, &later_payload),
    ]
}

/// An ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" sent by
/// `router` to `vip`, quoting a TCP segment from `vip:vip_port` to
/// `client:client_port` (a backend's reply that was too big).
pub fn pmtu_error(
    router: IpAddr,
    vip: IpAddr,
    vip_port: u16,
    client: IpAddr,
    client_port: u16,
    mtu: u16,
) -> Vec<u8> {
    let quoted = Packet::tcp(vip, vip_port, client, client_port)
        .established()
        .build();
    // Routers quote the IP header and at least 8 bytes of what follows.
    let quote_len = match vip {
        IpAddr::V4(_) => 20 + 8,
        IpAddr::V6(_) => 40 + 8,
    };
    let quote = &quoted[14..14 + quote_len];
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match (router, vip) {
        (IpAddr::V4(r), IpAddr::V4(v)) => {
            let icmp = etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu,
                },
            );
            eth.ipv4(r.octets(), v.octets(), 64)
                .icmpv4(icmp)
                .write(&mut out, quote)
                .expect("build ICMP");
        }
        (IpAddr::V6(r), IpAddr::V6(v)) => {
            let icmp = etherparse::Icmpv6Type::PacketTooBig {
                mtu: u32::from(mtu),
            };
            eth.ipv6(r.octets(), v.octets(), 64)
                .icmpv6(icmp)
                .write(&mut out, quote)
                .expect("build ICMPv6");
        }
        _ => panic!("mixed address families in a test packet"),
    }
    out
}

/// An ICMP (IPv4) or ICMPv6 echo request from `src` to `dst`.
pub fn echo_request(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut out, b"ping"),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut out, b"ping"),
        _ => panic!("mixed address families in a test packet"),
    }
    .expect("etherparse cannot build the echo request");
    out
}

/// A TCP segment from `src` to `dst` (address and port) with exactly the
/// flags of `flags` (as [`tcp_with_flags`]), sequence number `seq`,
/// acknowledgement number `ack` (with ACK), and `payload`, in a frame
/// from MAC `macs.0` to `macs.1`; checksums computed by etherparse.
pub fn segment(
    macs: ([u8; 6], [u8; 6]),
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {{
            let mut tcp = $ip.tcp(src.1, dst.1, seq, 64240);
            if flags & 0x01 != 0 {
                tcp = tcp.fin();
            }
            if flags & 0x02 != 0 {
                tcp = tcp.syn();
            }
            if flags & 0x04 != 0 {
                tcp = tcp.rst();
            }
            if flags & 0x10 != 0 {
                tcp = tcp.ack(ack);
            }
            tcp.write(&mut out, payload)
        }};
    }
    let result = match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d)) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
        _ => panic!("mixed address families in a test packet"),
    };
    result.expect("etherparse cannot build the test packet");
    out
}

/// A UDP datagram from `src` to `dst` with `payload`, in a frame from MAC
/// `macs.0` to `macs.1`; checksums computed by etherparse.
pub fn datagram(
    macs: ([u8; 6], [u8; 6]),
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    let result = match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .udp(src.1, dst.1)
            .write(&mut out, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .udp(src.1, dst.1)
            .write(&mut out, payload),
        _ => panic!("mixed address families in a test packet"),
    };
    result.expect("etherparse cannot build the test packet");
    out
}

/// Whether `frame`'s IPv4 header checksum and TCP or UDP checksum are
/// right, computed from scratch over every byte (a UDP checksum of 0 over
/// IPv4 is none, and right). None when the frame is no whole IPv4 or IPv6
/// TCP or UDP packet (without IPv6 extension headers), fragment or not.
pub fn checksums_ok(frame: &[u8]) -> Option<bool> {
    let l3 = if frame.get(12..14)? == [0x81, 0x00] {
        18
    } else {
        14
    };
    let ip = frame.get(l3..)?;
    let sum = |bytes: &[u8], mut acc: u32| {
        for pair in bytes.chunks(2) {
            acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc
    };
    let (proto, pseudo, segment, header_ok) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if ihl < 20 || total < ihl || ip.len() < total {
                return None;
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, ip[9]]);
            pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
            (ip[9], pseudo, &ip[ihl..total], sum(&ip[..ihl], 0) == 0xffff)
        }
        6 => {
            let total = 40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            if ip.len() < total {
                return None;
            }
            let mut pseudo = ip[8..40].to_vec();
            pseudo.extend_from_slice(&((total - 40) as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, ip[6]]);
            (ip[6], pseudo, &ip[40..total], true)
        }
        _ => return None,
    };
    let check_at = match proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    let check = segment.get(check_at..check_at + 2)?;
    if proto == 17 && check == [0, 0] && ip[0] >> 4 == 4 {
        return Some(header_ok);
    }
    Some(header_ok && sum(segment, sum(&pseudo, 0)) == 0xffff)
}

/// The kind of an ICMP error ([`icmp_error`]), in either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// Destination unreachable, port unreachable.
    PortUnreachable,
    /// IPv4's fragmentation needed, IPv6's packet too big, with this MTU.
    TooBig(u16),
    /// Time exceeded (TTL or hop limit) in transit.
    TimeExceeded,
}

/// An ICMP (IPv4) or ICMPv6 error `kind` from `src` to `dst` quoting
/// `quote` (an IP packet or its start), in a frame from MAC `macs.0` to
/// `macs.1`; checksums computed by etherparse (ICMPv6's with its
/// pseudo-header).
pub fn icmp_error(
    macs: ([u8; 6], [u8; 6]),
    src: IpAddr,
    dst: IpAddr,
    kind: IcmpError,
    quote: &[u8],
) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4, icmpv6};
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    let result = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let icmp = match kind {
                IcmpError::PortUnreachable => {
                    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port)
                }
                IcmpError::TooBig(mtu) => Icmpv4Type::DestinationUnreachable(
                    icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                ),
                IcmpError::TimeExceeded => {
                    Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit)
                }
            };
            eth.ipv4(s.octets(), d.octets(), 64)
                .icmpv4(icmp)
                .write(&mut out, quote)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let icmp = match kind {
                IcmpError::PortUnreachable => {
                    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
                }
                IcmpError::TooBig(mtu) => Icmpv6Type::PacketTooBig {
                    mtu: u32::from(mtu),
                },
                IcmpError::TimeExceeded => {
                    Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded)
                }
            };
            eth.ipv6(s.octets(), d.octets(), 64)
                .icmpv6(icmp)
                .write(&mut out, quote)
        }
        _ => panic!("mixed address families in a test packet"),
    };
    result.expect("etherparse cannot build the ICMP error");
    out
}

/// What an ICMP error quotes of `frame`, an Ethernet frame of an IP
/// packet without options or extension headers: the IP packet, or with
/// `l4` its IP header and the first `l4` bytes after it.
pub fn quote(frame: &[u8], l4: Option<usize>) -> Vec<u8> {
    let packet = &frame[14..];
    let header = if packet[0] >> 4 == 4 { 20 } else { 40 };
    let len = l4.map_or(packet.len(), |n| (header + n).min(packet.len()));
    packet[..len].to_vec()
}

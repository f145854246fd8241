//! The balancer's XDP datapath: parse, match a VIP, find the flow or pick
//! a backend, rewrite the MACs and send the frame on (L2 direct server
//! return), or in a tunnel; NAT VIPs' packets go to a second program by
//! tail call. The programs themselves (`main.rs`) are thin entry points
//! over [`run`] and [`run_nat`]; every program of this crate reuses the
//! one parser, [`parse`].
//!
//! Modules, each depending only on those after it:
//! - this root, the orchestrator: one function per kind of packet, and
//!   for TCP and UDP a switch on what the connection table knows;
//! - [`nat`], the NAT program's orchestrator, over [`conntrack`] (NAT
//!   connections: both ways, their states and sources) and [`translate`]
//!   (addresses and ports rewritten, checksums updated);
//! - [`place`] (a new flow's backend: persistence, then the scheduler);
//! - [`icmp`] (ICMP errors: path MTU, and NAT's, over [`parse`]), [`forward`] (the MAC
//!   rewrite, or [`encap`]sulation, and the verdict), [`limits`] (per-source limits, over
//!   [`access`]: allow, deny and exempt lists), [`stats`] (per-CPU
//!   counters);
//! - [`flows`] (the connection table and the connection counts), which
//!   refreshes [`persist`] (the persistence table), [`handshakes`] (new
//!   flows between their first and next packet), [`budget`] (how fast
//!   the connection table may grow) and [`fragments`] (where each
//!   datagram's first fragment went);
//! - [`schedule`] (picking only);
//! - [`vip`] (VIP match) and [`ring`] (a VIP's ring, in either layout,
//!   and the backends it names);
//! - [`maps`] (every map), [`parse`] (bounds-checked packet reads),
//!   [`copy`] (reads of map memory that stay loads), [`verdict`],
//!   [`log`].
//!
//! On the host the crate builds too, so that `cargo clippy --workspace`
//! type-checks and lints it with the rest; it only means something for
//! the bpfel-unknown-none target.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod access;
mod budget;
mod conntrack;
mod copy;
mod encap;
mod flows;
mod forward;
mod fragments;
mod handshakes;
mod icmp;
mod limits;
mod log;
mod maps;
mod nat;
pub mod parse;
mod persist;
mod place;
mod pmtu;
mod ring;
mod schedule;
mod share;
mod stats;
mod translate;
mod verdict;
mod vip;

use aya_ebpf::programs::XdpContext;
use balancer_common::{
    access::ACCESS_NO_VIP,
    flow::FlowKey,
    fragment::FragmentKey,
    proto,
    settings::Settings,
    stats::{Event, Stat},
    tunnel::flow_bits,
    vip::{AddrInfo, VipInfo},
};

use crate::{
    access::Lists,
    flows::Known,
    icmp::Icmp,
    limits::Source,
    log::decision,
    parse::{Cursor, Fragment, Ip, IpParse, L3},
    place::place,
    ring::Pick,
    verdict::{drop, pass},
};

pub use nat::run_nat;

/// Handles one frame: its verdict, counted under the one reason that
/// explains it (this one place counts verdicts).
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, stat) = process(ctx, len);
    stats::count(stat, len);
    decision!(ctx, "verdict {} ({}), {} bytes", action, stat.name(), len);
    action
}

/// Parses the frame down to the network header and hands it to the
/// handler of its kind: fragment, TCP or UDP, ICMP.
#[inline(always)]
fn process(ctx: &XdpContext, len: u64) -> (u32, Stat) {
    let mut c = Cursor::new(ctx);
    let v6 = match parse::ethernet(&mut c) {
        None => return pass(Stat::PASS_UNPARSED),
        Some(L3::Other) => return pass(Stat::PASS_NON_IP),
        Some(L3::Ipv4) => false,
        Some(L3::Ipv6) => true,
    };
    let parsed = if v6 {
        parse::ipv6(&mut c)
    } else {
        parse::ipv4(&mut c)
    };
    let ip = match parsed {
        IpParse::Ok(ip) => ip,
        IpParse::Unreadable => return pass(Stat::PASS_UNPARSED),
        IpParse::Bad(bad) => return reject(&bad.ip, bad.reason),
    };
    let Some(settings) = vip::settings() else {
        return pass(Stat::PASS_NOT_VIP);
    };
    match (ip.proto, ip.fragment) {
        (_, Some(f)) if !f.first => later_fragment(ctx, &ip, &f, len),
        (proto::TCP | proto::UDP, _) => flow(ctx, &mut c, &ip, settings, len),
        (proto::ICMP | proto::ICMPV6, None) => icmp_error(ctx, &mut c, &ip, v6, settings, len),
        _ => pass(Stat::PASS_NOT_VIP),
    }
}

/// A TCP or UDP packet, or the first fragment of a datagram: what the
/// connection table knows of its flow decides. A live flow goes straight
/// to its backend, even for a SYN; a flow whose backend is down, or whose
/// entry is stale, is placed again in its entry; a flow the table does not
/// know is a new flow, or one the tables no longer hold. The lists, then
/// the per-source limits, apply to every packet to a VIP that has them. A
/// first fragment that is forwarded is recorded for its later fragments to
/// follow.
#[inline(always)]
fn flow(ctx: &XdpContext, c: &mut Cursor, ip: &Ip, settings: &Settings, len: u64) -> (u32, Stat) {
    let ports = match parse::ports(c, ip.proto, ip.fragment.is_some()) {
        Ok(ports) => ports,
        Err(reason) => return reject(ip, reason),
    };
    // The small map of VIP addresses first: everything else passes after
    // one lookup in a map that stays in cache.
    let addr = vip::addr(&ip.dst, ip.proto);
    if to_nat(&addr, settings) {
        return nat::tail_call(ctx, ip);
    }
    if let Err(reason) = ports.client_flags(ip.proto) {
        return reject(ip, reason);
    }
    let Some(addr) = addr else {
        return pass(Stat::PASS_NOT_VIP);
    };
    let lists = Lists::of(settings, &addr);
    let limited = addr.has_vip_limits();
    let mut p = FlowPacket {
        key: FlowKey::new(ip.src, ip.dst, ports.src, ports.dst, ip.proto),
        fragment: ip.fragment,
        syn: ports.syn,
        end: ports.end,
        len,
        now: flows::now(),
        generation: lists.generation,
        source: Source::unlimited(),
    };
    let entry = match flows::known(&p.key, settings, p.now, p.syn, p.end) {
        Known::Live {
            pick,
            vip,
            generation,
        } => {
            // A flow admitted under the lists in force skips them (a
            // generation of 0 is none: always checked).
            if lists.on() && (lists.generation == 0 || generation != lists.generation) {
                let scope = if lists.vips { vip } else { ACCESS_NO_VIP };
                if let Err(reason) = lists.admit(&ip.src, scope, len) {
                    return drop(reason);
                }
                flows::admitted(&p.key, lists.generation);
            }
            if limited && let Err(reason) = limits::packet(vip, &ip.src, settings, p.now, len) {
                return drop(reason);
            }
            decision!(ctx, "flow hit: vip {} backend {}", vip, pick.id);
            if p.syn {
                stats::event(Event::SYN_KEPT, len);
            }
            first_fragment(&p, vip, &pick);
            return send(ctx, vip, &pick, len, false, p.flow_bits());
        }
        Known::Down => Entry::Down,
        Known::Stale => Entry::Stale,
        Known::Unknown => Entry::Missing,
    };
    let vip = vip::find(&p.key.dst, p.key.dst_port, p.key.proto, &addr);
    if lists.on() {
        let scope = match vip {
            Some(v) if lists.vips => v.index,
            _ => ACCESS_NO_VIP,
        };
        if let Err(reason) = lists.admit(&ip.src, scope, len) {
            return drop(reason);
        }
    }
    let Some(vip) = vip else {
        // A first fragment to a port of no VIP: its datagram must not
        // reach a backend's other services.
        if p.fragment.is_some() {
            return drop(Stat::DROP_FRAGMENT_PORT);
        }
        return pass(Stat::PASS_NOT_VIP);
    };
    decision!(
        ctx,
        "vip {} matched, port {}",
        vip.index,
        u16::from_be(p.key.dst_port)
    );
    if limited {
        match limits::packet(vip.index, &ip.src, settings, p.now, len) {
            Ok(source) => p.source = source,
            Err(reason) => return drop(reason),
        }
    }
    match entry {
        Entry::Missing if vip.recomputes() => unknown_hashed(ctx, &p, &vip, settings),
        Entry::Missing => unknown_remembered(ctx, &p, &vip, settings),
        Entry::Down | Entry::Stale => replace(ctx, &p, &vip, settings, entry == Entry::Down),
    }
}

/// A TCP or UDP packet (or first fragment) once parsed: what the rest of
/// its way needs, the clock read once.
struct FlowPacket {
    key: FlowKey,
    /// Set for a first fragment: its datagram.
    fragment: Option<Fragment>,
    /// A TCP SYN: the client starts a connection.
    syn: bool,
    /// A TCP FIN or RST: the client ends the flow.
    end: bool,
    len: u64,
    /// The connection table's clock for this packet.
    now: u64,
    /// The generation of the lists that admitted it (0: no lists).
    generation: u32,
    /// Its source, as its new flow spends (unlimited unless the VIP limits
    /// the new flows of each source).
    source: Source,
}

impl FlowPacket {
    /// Whether the packet starts a flow: a TCP SYN, or a UDP datagram.
    #[inline(always)]
    fn starts(&self) -> bool {
        self.syn || self.key.proto == proto::UDP
    }

    /// Hash material of the packet's flow, for an outer header: without
    /// the ports for a first fragment, as its later fragments have none,
    /// so that a datagram's fragments share a path and a queue.
    #[inline(always)]
    fn flow_bits(&self) -> u32 {
        if self.fragment.is_some() {
            flow_bits(&self.key.src, &self.key.dst, 0, 0)
        } else {
            key_bits(&self.key)
        }
    }

    /// Spends a new flow of the packet's source, where its VIP limits
    /// them; Err when the source is over its rate.
    #[inline(always)]
    fn new_flow(&self) -> Result<(), Stat> {
        self.source.new_flow(self.now, self.len)
    }
}

/// What the connection table holds for a flow it does not send on as is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A live entry whose backend is down.
    Down,
    /// An expired entry, one a SYN reopens, or one naming no backend.
    Stale,
    /// Nothing.
    Missing,
}

/// When `p` is a first fragment going to `pick` of VIP `vip`: records it
/// for its later fragments, and counts it.
#[inline(always)]
fn first_fragment(p: &FlowPacket, vip: u32, pick: &Pick) {
    if let Some(f) = &p.fragment {
        let key = FragmentKey::new(p.key.src, p.key.dst, f.id, p.key.proto);
        fragments::admit(&key, vip, pick, p.now);
        stats::event(Event::FRAGMENT, p.len);
    }
}

/// A flow whose entry names a backend that is down (`failover`) or is
/// stale: placed again, and its entry rewritten in place (no entry is
/// added, so no budget is spent).
#[inline(always)]
fn replace(
    ctx: &XdpContext,
    p: &FlowPacket,
    vip: &VipInfo,
    settings: &Settings,
    failover: bool,
) -> (u32, Stat) {
    // A flow the client reopens, or one that expired, is a new flow of its
    // source; one that fails over is not.
    if !failover
        && p.starts()
        && let Err(reason) = p.new_flow()
    {
        return drop(reason);
    }
    let pick = match place(vip, &p.key, settings, p.now) {
        Ok(pick) => pick,
        Err(reason) => return drop(reason),
    };
    decision!(ctx, "flow placed again: backend {}", pick.id);
    flows::remember(&p.key, vip, &pick, p.now, p.end, p.generation);
    if !p.end {
        share::tell(&p.key, vip.index, pick.id, p.now, settings, p.len);
    }
    stats::event(Event::NEW_FLOW, p.len);
    if failover {
        stats::event(Event::FAILOVER, p.len);
    }
    first_fragment(p, vip.index, &pick);
    send(ctx, vip.index, &pick, p.len, true, p.flow_bits())
}

/// A flow the table does not know, to a VIP that recomputes its choice:
/// the ring places every packet the same way, so a SYN leaves no state
/// (its retransmissions are placed alike) and the flow's entry is made by
/// its next packet, within the insert budget. A FIN or RST makes none.
#[inline(always)]
fn unknown_hashed(
    ctx: &XdpContext,
    p: &FlowPacket,
    vip: &VipInfo,
    settings: &Settings,
) -> (u32, Stat) {
    let new = p.starts();
    if new && let Err(reason) = p.new_flow() {
        return drop(reason);
    }
    let pick = match schedule::hash_pick(vip, &p.key, settings) {
        Ok(pick) => pick,
        Err(reason) => return drop(reason),
    };
    decision!(ctx, "flow miss: backend {} by the ring", pick.id);
    if !p.syn && !p.end {
        insert(p, vip, &pick, settings);
    }
    if new {
        stats::event(Event::NEW_FLOW, p.len);
    }
    first_fragment(p, vip.index, &pick);
    send(ctx, vip.index, &pick, p.len, new, p.flow_bits())
}

/// A flow the table does not know, to a VIP that keeps its choice from
/// the first packet. In the handshake table: its backend, and the flow
/// moves to the connection table (within the insert budget) unless this
/// packet is a SYN again or ends it. Not there: a SYN or UDP datagram is
/// a new flow, placed and recorded there; any other TCP segment belongs
/// to a flow the tables lost (or to no flow) and is placed without state.
#[inline(always)]
fn unknown_remembered(
    ctx: &XdpContext,
    p: &FlowPacket,
    vip: &VipInfo,
    settings: &Settings,
) -> (u32, Stat) {
    if let Some(pick) = handshakes::find(&p.key, settings, p.now) {
        decision!(ctx, "handshake hit: backend {}", pick.id);
        if !p.syn && !p.end && insert(p, vip, &pick, settings) {
            handshakes::forget(&p.key);
            stats::event(Event::PROMOTED, p.len);
        }
        first_fragment(p, vip.index, &pick);
        return send(ctx, vip.index, &pick, p.len, false, p.flow_bits());
    }
    let new = p.starts();
    if new && let Err(reason) = p.new_flow() {
        return drop(reason);
    }
    let pick = match place(vip, &p.key, settings, p.now) {
        Ok(pick) => pick,
        Err(reason) => return drop(reason),
    };
    if new {
        decision!(ctx, "new flow: backend {} until its next packet", pick.id);
        handshakes::remember(&p.key, vip.index, &pick, p.now);
        stats::event(Event::HANDSHAKE, p.len);
        stats::event(Event::NEW_FLOW, p.len);
    } else {
        decision!(ctx, "mid-stream miss: backend {}, no state", pick.id);
        stats::event(Event::UNKNOWN_MIDSTREAM, p.len);
    }
    first_fragment(p, vip.index, &pick);
    send(ctx, vip.index, &pick, p.len, new, p.flow_bits())
}

/// Adds flow `p` on `pick` to the connection table if this CPU's insert
/// budget allows; whether it did.
#[inline(always)]
fn insert(p: &FlowPacket, vip: &VipInfo, pick: &Pick, settings: &Settings) -> bool {
    if !budget::take(settings.insert_cost_ns, p.now) {
        stats::event(Event::INSERT_SKIPPED, p.len);
        return false;
    }
    flows::remember(&p.key, vip, pick, p.now, p.end, p.generation);
    stats::event(Event::FLOW_INSERT, p.len);
    share::tell(&p.key, vip.index, pick.id, p.now, settings, p.len);
    true
}

/// A packet that cannot be parsed or is invalid: dropped and counted when
/// it is for a VIP address (of either protocol: an IPv6 fragment header
/// cut short hides which one), passed on untouched otherwise.
#[inline(always)]
fn reject(ip: &Ip, reason: Stat) -> (u32, Stat) {
    let for_vip =
        vip::addr(&ip.dst, proto::TCP).is_some() || vip::addr(&ip.dst, proto::UDP).is_some();
    if for_vip {
        drop(reason)
    } else {
        pass(Stat::PASS_UNPARSED)
    }
}

/// A fragment after the first: it goes where its datagram's first
/// fragment went, if that was admitted shortly before; a fragment to a
/// VIP address without one is dropped (out of order, or never admitted).
#[inline(always)]
fn later_fragment(ctx: &XdpContext, ip: &Ip, f: &Fragment, len: u64) -> (u32, Stat) {
    if vip::addr(&ip.dst, ip.proto).is_none() {
        return pass(Stat::PASS_NOT_VIP);
    }
    let key = FragmentKey::new(ip.src, ip.dst, f.id, ip.proto);
    match fragments::follow(&key, flows::now()) {
        Ok((vip, pick)) => {
            stats::event(Event::FRAGMENT, len);
            send(
                ctx,
                vip,
                &pick,
                len,
                false,
                flow_bits(&ip.src, &ip.dst, 0, 0),
            )
        }
        Err(reason) => drop(reason),
    }
}

/// Whether a TCP or UDP packet to an address `addr` says this of (None:
/// no VIP's) is NAT's, and goes to the NAT program: to a NAT VIP or a
/// SNAT address, or with NAT VIPs without source NAT, to anything else (a
/// backend's reply to a client's own address). ICMP errors quoting such
/// a packet are NAT's too.
#[inline(always)]
fn to_nat(addr: &Option<AddrInfo>, settings: &Settings) -> bool {
    match addr {
        Some(addr) => addr.has_nat() || addr.is_snat(),
        None => settings.nat_client_source(),
    }
}

/// An ICMP message: an error about a NAT connection goes to the NAT
/// program; a path-MTU error for a VIP goes to the backend of the flow it
/// quotes; anything else passes.
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    c: &mut Cursor,
    ip: &Ip,
    v6: bool,
    settings: &Settings,
    len: u64,
) -> (u32, Stat) {
    let (key, pmtu) = match icmp::parse(c, v6) {
        Icmp::Error(quoted) => (quoted.key, quoted.pmtu),
        Icmp::Other | Icmp::Truncated => return pass(Stat::PASS_ICMP),
    };
    // The quoted packet left from the address the message is addressed
    // to.
    if key.dst != ip.dst {
        return pass(Stat::PASS_ICMP);
    }
    let addr = vip::addr(&key.dst, key.proto);
    if to_nat(&addr, settings) {
        // Without the NAT program, the message is the host's.
        nat::hand_over(ctx);
        return pass(Stat::PASS_ICMP);
    }
    if !pmtu {
        return pass(Stat::PASS_ICMP);
    }
    // The flow's backend, without touching the table: an error message is
    // not traffic of the flow.
    if let Known::Live { pick, vip, .. } = flows::known(&key, settings, flows::now(), false, false)
    {
        stats::event(Event::ICMP_PMTU, len);
        return send(ctx, vip, &pick, len, false, key_bits(&key));
    }
    let Some(addr) = addr else {
        return pass(Stat::PASS_ICMP);
    };
    let Some(vip) = vip::find(&key.dst, key.dst_port, key.proto, &addr) else {
        return pass(Stat::PASS_ICMP);
    };
    match schedule::hash_pick(&vip, &key, settings) {
        Ok(pick) => {
            stats::event(Event::ICMP_PMTU, len);
            send(ctx, vip.index, &pick, len, false, key_bits(&key))
        }
        Err(reason) => drop(reason),
    }
}

/// Hash material of flow `key`, for an outer header.
#[inline(always)]
fn key_bits(key: &FlowKey) -> u32 {
    flow_bits(&key.src, &key.dst, key.src_port, key.dst_port)
}

/// Sends the frame to `pick` and counts it for VIP `vip` and the backend;
/// `flow`: hash material of its flow, for an outer header's flow label.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    vip: u32,
    pick: &Pick,
    len: u64,
    new_flow: bool,
    flow: u32,
) -> (u32, Stat) {
    let (action, stat) = forward::to_backend(ctx, pick, flow, len);
    if stat == Stat::TX || stat == Stat::REDIRECT {
        stats::forwarded(vip, pick.id, len, new_flow);
    }
    (action, stat)
}

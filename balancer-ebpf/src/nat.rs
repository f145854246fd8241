//! The NAT program (`balancer_nat`): the datapath's second XDP program,
//! which the main one tail-calls for every TCP or UDP packet to a NAT VIP
//! or to a SNAT address (and, while a NAT VIP goes without source NAT, to
//! any address that is not a VIP's: a backend's reply to a client's own
//! address). A program of its own, so that NAT has a stack and a jump
//! reach of its own and costs nothing to the other VIPs.
//!
//! A backend's reply of a NAT connection goes back to its client. A
//! client's packet is admitted as the main program admits it (lists, then
//! the per-source limits), then goes to its live connection's backend, or
//! opens a connection: placed as any new flow (persistence, then the
//! VIP's scheduler), in place of an expired, ended or failed one. A
//! NAT address carries NAT VIPs only (the configuration says so), and NAT
//! translates whole datagrams only: fragments are dropped and counted.
//! ICMP errors about NAT connections (which the main program hands over
//! too) are translated both ways ([`icmp`]).

mod icmp;

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use balancer_common::{
    access::ACCESS_NO_VIP,
    flow::FlowKey,
    is_v4, proto,
    settings::Settings,
    stats::{Event, Stat},
};

use crate::{
    access::Lists,
    conntrack::{self, Held, Packet},
    flows, limits,
    log::decision,
    maps::PROGRAMS,
    parse::{self, Cursor, Ip, IpParse, L3},
    place::place,
    stats,
    translate::Headers,
    verdict::{drop, pass},
    vip,
};

/// Hands the frame to the NAT program. Returns only when its slot is
/// empty (no daemon put it there).
#[inline(always)]
pub fn hand_over(ctx: &XdpContext) {
    // SAFETY: a tail call either never returns or changes nothing.
    unsafe { PROGRAMS.tail_call(ctx, balancer_common::maps::PROGRAM_NAT) };
}

/// Hands a TCP or UDP packet to the NAT program ([`hand_over`]). When
/// its slot is empty, a packet to a VIP address is dropped and counted,
/// any other passes.
#[inline(always)]
pub fn tail_call(ctx: &XdpContext, ip: &Ip) -> (u32, Stat) {
    hand_over(ctx);
    if vip::addr(&ip.dst, ip.proto).is_some_and(|a| a.has_nat()) {
        drop(Stat::DROP_NAT_UNAVAILABLE)
    } else {
        pass(Stat::PASS_NOT_VIP)
    }
}

/// Handles one frame the main program handed over: its verdict, counted
/// under the one reason that explains it (the main program counted
/// nothing). ICMP messages and TCP or UDP packets each go through a
/// function of their own, which the program calls (BPF to BPF): each has
/// a stack frame of its own, and this one none, so that neither eats into
/// the other's 512 bytes.
#[inline(always)]
pub fn run_nat(ctx: &XdpContext) -> u32 {
    if is_icmp(ctx) {
        icmp_message(ctx.ctx)
    } else {
        packet(ctx.ctx)
    }
}

/// Whether the frame is an ICMP or ICMPv6 message, read no further than
/// the IP header's protocol (an IPv6 one behind an extension header goes
/// as a packet, and passes).
#[inline(always)]
fn is_icmp(ctx: &XdpContext) -> bool {
    let mut c = Cursor::new(ctx);
    let at = match parse::ethernet(&mut c) {
        Some(L3::Ipv4) => 9,
        Some(L3::Ipv6) => 6,
        _ => return false,
    };
    let Some(h) = c.header::<[u8; 10]>() else {
        return false;
    };
    // SAFETY: `at` is below the 10 bytes checked.
    let l4 = unsafe { *(h as *const u8).add(at) };
    l4 == proto::ICMP || l4 == proto::ICMPV6
}

/// A TCP or UDP packet (or anything but ICMP): its verdict, counted.
#[inline(never)]
fn packet(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, stat) = process(&ctx, len);
    stats::count(stat, len);
    decision!(
        &ctx,
        "nat verdict {} ({}), {} bytes",
        action,
        stat.name(),
        len
    );
    action
}

/// An ICMP or ICMPv6 message ([`icmp`]): its verdict, counted. (Logged
/// apart from [`packet`]'s: one log call site each, so that LLVM inlines
/// both rather than making a function of it, whose frame would add to
/// theirs.)
#[inline(never)]
fn icmp_message(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, stat) = icmp::message(&ctx, len);
    stats::count(stat, len);
    decision!(
        &ctx,
        "nat icmp verdict {} ({}), {} bytes",
        action,
        stat.name(),
        len
    );
    action
}

/// Parses the frame's Ethernet and IP headers again (the main program
/// parsed and checked them), the cursor left on the transport header,
/// and reads the settings; Err: why it passes.
#[inline(always)]
fn reparse(c: &mut Cursor) -> Result<(Ip, &'static Settings), Stat> {
    let parsed = match parse::ethernet(c) {
        Some(L3::Ipv4) => parse::ipv4(c),
        Some(L3::Ipv6) => parse::ipv6(c),
        _ => return Err(Stat::PASS_UNPARSED),
    };
    let IpParse::Ok(ip) = parsed else {
        return Err(Stat::PASS_UNPARSED);
    };
    let settings = vip::settings().ok_or(Stat::PASS_NOT_VIP)?;
    Ok((ip, settings))
}

/// Parses the frame again (the main program parsed and checked it) and
/// sends it on as a reply or as a client's packet.
#[inline(always)]
fn process(ctx: &XdpContext, len: u64) -> (u32, Stat) {
    let mut c = Cursor::new(ctx);
    let (ip, settings) = match reparse(&mut c) {
        Ok(parsed) => parsed,
        Err(reason) => return pass(reason),
    };
    if ip.proto != proto::TCP && ip.proto != proto::UDP {
        return pass(Stat::PASS_NOT_VIP);
    }
    let ports = match parse::ports(&mut c, ip.proto, ip.fragment.is_some()) {
        Ok(ports) => ports,
        Err(reason) => return drop(reason),
    };
    let addr = vip::addr(&ip.dst, ip.proto);
    let mut p = Packet {
        key: FlowKey::new(ip.src, ip.dst, ports.src, ports.dst, ip.proto),
        h: Headers {
            l3: ip.at - ctx.data(),
            l4: ports.at - ctx.data(),
            v6: !is_v4(&ip.dst),
            proto: ip.proto,
        },
        flags: ports.flags,
        syn: ports.syn,
        generation: 0,
        now: flows::now(),
        len,
    };
    let reply = match &addr {
        Some(addr) => addr.is_snat(),
        None => settings.nat_client_source(),
    };
    if reply {
        if ip.fragment.is_some() {
            if conntrack::holds_reply(&p.key) {
                return drop(Stat::DROP_NAT_FRAGMENT);
            }
        } else if let Some(verdict) =
            conntrack::reply(ctx, &p, settings, ports.server_flags(ip.proto))
        {
            decision!(ctx, "nat reply to the client");
            return verdict;
        }
    }
    let Some(addr) = addr.filter(|a| a.has_nat()) else {
        return pass(Stat::PASS_NOT_VIP);
    };
    if let Err(reason) = ports.client_flags(ip.proto) {
        return drop(reason);
    }
    client(ctx, &ip, &mut p, &addr, settings, ports.end)
}

/// A client's packet to a NAT VIP address: to its live connection's
/// backend, or a new connection.
#[inline(always)]
fn client(
    ctx: &XdpContext,
    ip: &Ip,
    p: &mut Packet,
    addr: &balancer_common::vip::AddrInfo,
    settings: &Settings,
    end: bool,
) -> (u32, Stat) {
    let lists = Lists::of(settings, addr);
    let limited = addr.has_vip_limits();
    p.generation = lists.generation;
    let held = conntrack::held(&p.key, settings, p.now, p.syn);
    if let Held::Live(conn) = &held {
        let vip = conn.vip();
        // A connection admitted under the lists in force skips them (a
        // generation of 0 is none: always checked).
        if lists.on() && (lists.generation == 0 || conn.generation() != lists.generation) {
            let scope = if lists.vips { vip } else { ACCESS_NO_VIP };
            if let Err(reason) = lists.admit(&ip.src, scope, p.len) {
                return drop(reason);
            }
            conn.admitted(lists.generation);
        }
        if limited && let Err(reason) = limits::packet(vip, &ip.src, settings, p.now, p.len) {
            return drop(reason);
        }
        if ip.fragment.is_some() {
            return drop(Stat::DROP_NAT_FRAGMENT);
        }
        decision!(ctx, "nat hit: vip {} backend {}", vip, conn.pick.id);
        let (action, stat) = conntrack::forward(ctx, p, conn);
        return counted(vip, conn.pick.id, p.len, false, (action, stat));
    }
    let vip = vip::find(&p.key.dst, p.key.dst_port, p.key.proto, addr);
    if lists.on() {
        let scope = match vip {
            Some(v) if lists.vips => v.index,
            _ => ACCESS_NO_VIP,
        };
        if let Err(reason) = lists.admit(&ip.src, scope, p.len) {
            return drop(reason);
        }
    }
    let Some(vip) = vip else {
        if ip.fragment.is_some() {
            return drop(Stat::DROP_FRAGMENT_PORT);
        }
        return pass(Stat::PASS_NOT_VIP);
    };
    let source = if limited {
        match limits::packet(vip.index, &ip.src, settings, p.now, p.len) {
            Ok(source) => source,
            Err(reason) => return drop(reason),
        }
    } else {
        limits::Source::unlimited()
    };
    if ip.fragment.is_some() {
        return drop(Stat::DROP_NAT_FRAGMENT);
    }
    // Only NAT VIPs share an address with NAT VIPs.
    if !vip.is_nat() {
        return drop(Stat::DROP_NO_BACKEND);
    }
    // A FIN or RST of no live connection has nothing to end.
    if end {
        return drop(Stat::DROP_NAT_NO_FLOW);
    }
    // A flow that fails over is no new flow of its source.
    let failover = matches!(held, Held::Replace { down: true });
    let starts = p.syn || p.key.proto == proto::UDP;
    if !failover
        && starts
        && let Err(reason) = source.new_flow(p.now, p.len)
    {
        return drop(reason);
    }
    let pick = match place(&vip, &p.key, settings, p.now) {
        Ok(pick) => pick,
        Err(reason) => return drop(reason),
    };
    if !matches!(held, Held::None) {
        conntrack::forget(&p.key);
    }
    decision!(ctx, "nat open: vip {} backend {}", vip.index, pick.id);
    let (action, stat) = conntrack::open(ctx, p, &vip, &pick, settings);
    if stat == Stat::TX || stat == Stat::REDIRECT {
        stats::event(Event::NEW_FLOW, p.len);
        if failover {
            stats::event(Event::FAILOVER, p.len);
        }
    }
    counted(vip.index, pick.id, p.len, true, (action, stat))
}

/// Verdict `(action, stat)` of a frame for VIP `vip` and backend `id`,
/// counted for both when it was sent.
#[inline(always)]
fn counted(vip: u32, id: u32, len: u64, new_flow: bool, verdict: (u32, Stat)) -> (u32, Stat) {
    if verdict.1 == Stat::TX || verdict.1 == Stat::REDIRECT {
        stats::forwarded(vip, id, len, new_flow);
    }
    verdict
}

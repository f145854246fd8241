//! The balancer's XDP program: parse, match a VIP, pick a backend, rewrite
//! the MACs and send the frame on (L2 direct server return).
//!
//! The entry point is a thin wrapper around [`process`], which returns the
//! action and the one counter that explains it; this one place counts.
//!
//! The crate only means something for the bpfel-unknown-none target. On the
//! host it builds as an empty program, so that `cargo clippy --workspace`
//! and `cargo test --workspace` type-check and lint it with the rest.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod forward;
mod icmp;
mod log;
mod lookup;
mod maps;
mod parse;
mod runtime;
mod schedule;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use balancer_common::{
    flow::FlowKey,
    proto,
    settings::Settings,
    stats::{Event, Stat},
    vip::ADDR_FRAGMENT_LIST,
};

use crate::{
    icmp::Icmp,
    log::decision,
    lookup::{Known, Pick},
    parse::{Cursor, Ip, IpParse, L3},
};

/// XDP entry point, attached to every interface the daemon serves.
#[xdp]
pub fn balancer_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, stat) = process(&ctx, len);
    stats::count(stat, len);
    decision!(&ctx, "verdict {} ({}), {} bytes", action, stat.name(), len);
    action
}

#[inline(always)]
fn pass(stat: Stat) -> (u32, Stat) {
    (xdp_action::XDP_PASS, stat)
}

#[inline(always)]
fn drop(stat: Stat) -> (u32, Stat) {
    (xdp_action::XDP_DROP, stat)
}

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
    let Some(settings) = lookup::settings() else {
        return pass(Stat::PASS_NOT_VIP);
    };
    if ip.fragment {
        return fragment(ctx, &ip, settings, len);
    }
    match ip.proto {
        proto::TCP | proto::UDP => {}
        proto::ICMP | proto::ICMPV6 => return icmp_error(ctx, &mut c, &ip, v6, settings, len),
        _ => return pass(Stat::PASS_NOT_VIP),
    }
    let ports = match parse::ports(&mut c, ip.proto) {
        Ok(ports) => ports,
        Err(reason) => return reject(&ip, reason),
    };
    let key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        src_port: ports.src,
        dst_port: ports.dst,
        proto: ip.proto,
        _pad1: 0,
        _pad2: 0,
    };
    // The small table of VIP addresses first: everything else passes after
    // one lookup in a table that stays in cache.
    let Some(addr) = lookup::vip_addr(&ip.dst, ip.proto) else {
        return pass(Stat::PASS_NOT_VIP);
    };
    // A known flow goes straight to its backend. A SYN starts a flow, so
    // it skips the table (a retransmitted SYN is placed again, on the same
    // ring).
    let mut failover = false;
    if !ports.syn {
        match lookup::known_flow(&key, settings, lookup::now(), ports.end) {
            Known::Live { pick, vip } => {
                decision!(ctx, "flow hit: vip {} backend {}", vip, pick.id);
                return send(ctx, vip, &pick, len, false);
            }
            Known::Down => {
                decision!(ctx, "flow hit, backend down: fail over");
                failover = true;
            }
            Known::Unknown => decision!(ctx, "flow miss"),
        }
    }
    let Some(vip) = lookup::vip(&ip.dst, ports.dst, ip.proto, addr.flags) else {
        return pass(Stat::PASS_NOT_VIP);
    };
    decision!(
        ctx,
        "vip {} matched, port {}",
        vip.index,
        u16::from_be(ports.dst)
    );
    let now = lookup::now();
    match schedule::pick(&vip, &key, settings, now) {
        Ok(pick) => {
            decision!(ctx, "new flow: backend {} picked", pick.id);
            lookup::remember(&key, &vip, &pick, now, ports.end);
            stats::event(Event::NEW_FLOW, len);
            if failover {
                stats::event(Event::FAILOVER, len);
            }
            send(ctx, vip.index, &pick, len, true)
        }
        Err(reason) => drop(reason),
    }
}

/// A packet that cannot be parsed: dropped and counted when it is for a VIP
/// address, passed on untouched otherwise.
#[inline(always)]
fn reject(ip: &Ip, reason: Stat) -> (u32, Stat) {
    if lookup::vip_addr(&ip.dst, ip.proto).is_some() {
        drop(reason)
    } else {
        pass(Stat::PASS_UNPARSED)
    }
}

#[inline(always)]
fn fragment(ctx: &XdpContext, ip: &Ip, settings: &Settings, len: u64) -> (u32, Stat) {
    let Some(addr) = lookup::vip_addr(&ip.dst, ip.proto) else {
        return pass(Stat::PASS_NOT_VIP);
    };
    let list = addr.flags & ADDR_FRAGMENT_LIST != 0;
    match lookup::backend_for_fragment(addr.fragment_vip, list, &ip.src, &ip.dst, settings) {
        Ok(pick) => {
            stats::event(Event::FRAGMENT, len);
            send(ctx, addr.fragment_vip, &pick, len, false)
        }
        Err(reason) => drop(reason),
    }
}

#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    c: &mut Cursor,
    ip: &Ip,
    v6: bool,
    settings: &Settings,
    len: u64,
) -> (u32, Stat) {
    let key = match icmp::parse(c, v6) {
        Icmp::Pmtu(key) => key,
        Icmp::Other | Icmp::Truncated => return pass(Stat::PASS_ICMP),
    };
    // The quoted reply left from the VIP the message is addressed to.
    if key.dst != ip.dst {
        return pass(Stat::PASS_ICMP);
    }
    // The flow's backend, without touching the table: an error message is
    // not traffic of the flow.
    if let Known::Live { pick, vip } = lookup::known_flow(&key, settings, lookup::now(), false) {
        stats::event(Event::ICMP_PMTU, len);
        return send(ctx, vip, &pick, len, false);
    }
    let Some(addr) = lookup::vip_addr(&key.dst, key.proto) else {
        return pass(Stat::PASS_ICMP);
    };
    let Some(vip) = lookup::vip(&key.dst, key.dst_port, key.proto, addr.flags) else {
        return pass(Stat::PASS_ICMP);
    };
    match lookup::hash_pick(&vip, &key, settings) {
        Ok(pick) => {
            stats::event(Event::ICMP_PMTU, len);
            send(ctx, vip.index, &pick, len, false)
        }
        Err(reason) => drop(reason),
    }
}

#[inline(always)]
fn send(ctx: &XdpContext, vip: u32, pick: &Pick, len: u64, new_flow: bool) -> (u32, Stat) {
    let (action, stat) = forward::to_backend(ctx, pick.backend);
    if action != xdp_action::XDP_DROP {
        stats::forwarded(vip, pick.id, len, new_flow);
    }
    (action, stat)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

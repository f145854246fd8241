//! ICMP errors about NAT connections, translated both ways as the
//! connections' own packets are. Nothing of a connection changes: an
//! error is no traffic of it. An error no live connection holds passes.
//!
//! - From the backend's side: an error to a SNAT address (or, without
//!   source NAT, to a client's own address) quoting a packet the balancer
//!   sent a backend (from the connection's source to the backend) goes to
//!   the client as an error about the client's own packet: to the client,
//!   from the VIP when the backend itself sent it (a router's address
//!   stays), quoting the packet as the client sent it. The quoted packet
//!   turned around is the connection's reply flow: its reverse entry.
//! - From the client's side: an error to a NAT VIP quoting a reply the
//!   balancer sent (from the VIP to the client), such as a router's
//!   path-MTU error, goes to the backend as an error about its own reply:
//!   to the backend, with source NAT from the connection's source (so that
//!   the backend's answer comes back through the balancer and passes its
//!   reverse-path filter), quoting the reply as the backend sent it. The
//!   quoted packet turned around is the client's flow: its forward entry.

use aya_ebpf::programs::XdpContext;
use balancer_common::{
    Addr,
    flow::FlowKey,
    is_v4,
    settings::Settings,
    stats::{Event, Stat},
};

use super::counted;
use crate::{
    conntrack::{self, Held},
    copy::same_addr,
    flows, forward,
    icmp::{self, Icmp},
    log::decision,
    parse::Cursor,
    stats,
    translate::{self, Quote},
    verdict::{drop, pass},
    vip,
};

/// An ICMP or ICMPv6 message the main program handed over: an error
/// about a NAT connection goes to the other end of the connection,
/// anything else passes.
#[inline(always)]
pub fn message(ctx: &XdpContext, len: u64) -> (u32, Stat) {
    let mut c = Cursor::new(ctx);
    let (ip, settings) = match super::reparse(&mut c) {
        Ok(parsed) => parsed,
        Err(reason) => return pass(reason),
    };
    let v6 = !is_v4(&ip.dst);
    let Icmp::Error(quoted) = icmp::parse(&mut c, v6) else {
        return pass(Stat::PASS_ICMP);
    };
    let key = &quoted.key;
    // The quoted packet left from the address the error goes back to.
    if !same_addr(&key.dst, &ip.dst) {
        return pass(Stat::PASS_ICMP);
    }
    let data = ctx.data();
    let q = Quote {
        l3: ip.at - data,
        icmp: quoted.icmp - data,
        l4: quoted.l4 - data,
        end: quoted.end - data,
        v6,
        proto: key.proto,
    };
    let now = flows::now();
    // As the main program tells replies from clients' packets.
    let from_backend = match vip::addr(&key.dst, key.proto) {
        Some(addr) if addr.is_snat() => true,
        Some(addr) if addr.has_nat() => false,
        Some(_) => return pass(Stat::PASS_ICMP),
        None => settings.nat_client_source(),
    };
    let e = Error {
        q,
        key,
        from: &ip.src,
        len,
    };
    if from_backend {
        to_client(ctx, &e, settings, now)
    } else {
        to_backend(ctx, &e, settings, now)
    }
}

/// An ICMP error on its way: where its headers are, the quoted packet's
/// flow turned around, its outer source, its length.
struct Error<'a> {
    q: Quote,
    key: &'a FlowKey,
    from: &'a Addr,
    len: u64,
}

/// An error from the backend's side: to the client, if a live connection
/// sent what it quotes.
#[inline(always)]
fn to_client(ctx: &XdpContext, e: &Error, settings: &Settings, now: u64) -> (u32, Stat) {
    let Some(to) = conntrack::client_flow(e.key, settings, now) else {
        return pass(Stat::PASS_ICMP);
    };
    let Some(hop) = forward::client_hop(&to.src) else {
        return drop(Stat::DROP_NAT_NO_ROUTE);
    };
    // From the backend itself: from the VIP, as the client knows it.
    let outer_src = same_addr(e.from, &e.key.src);
    if let Err(reason) = translate::icmp(ctx, &e.q, &to, outer_src) {
        return drop(reason);
    }
    decision!(ctx, "nat icmp error to the client");
    stats::event(Event::NAT_ICMP_TO_CLIENT, e.len);
    forward::to_client(ctx, hop)
}

/// An error from the client's side: to the backend, if a live connection
/// sent what it quotes.
#[inline(always)]
fn to_backend(ctx: &XdpContext, e: &Error, settings: &Settings, now: u64) -> (u32, Stat) {
    let Held::Live(conn) = conntrack::held(e.key, settings, now, false) else {
        return pass(Stat::PASS_ICMP);
    };
    let to = conn.reply_flow(e.key);
    // With source NAT, from the connection's source, as the backend knows
    // it.
    let outer_src = !same_addr(&to.dst, &e.key.src);
    if let Err(reason) = translate::icmp(ctx, &e.q, &to, outer_src) {
        return drop(reason);
    }
    decision!(ctx, "nat icmp error to backend {}", conn.pick.id);
    stats::event(Event::NAT_ICMP_TO_BACKEND, e.len);
    let verdict = forward::to_nat_backend(ctx, &conn.pick);
    counted(conn.vip(), conn.pick.id, e.len, false, verdict)
}

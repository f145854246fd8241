//! NAT connections (see `balancer_common::nat`): finding a client's packet
//! its connection, opening a new one (its source from this CPU's port
//! range), the state machine's effects on the forward and reverse
//! entries, and the way back: a backend's reply matched by its reverse
//! entry. The rewrites are [`translate`]'s; sending is [`forward`]'s.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use balancer_common::{
    Addr,
    flow::{FLOW_COUNTED, FlowKey, LAST_SEEN_GRANULARITY_NS},
    nat::{
        MAX_SNAT_ADDRS, NAT_CLOSING, NAT_MIDSTREAM, NAT_SYN, NAT_UDP, NatFlow, NatReply,
        NatSettings as _, PORT_TRIES, Segment, Side, Step, TCP_FIN, TCP_RST, pool_index, step,
    },
    proto,
    settings::Settings,
    stats::{Event, Stat},
    vip::VipInfo,
};

use crate::{
    copy::{read, same_flow},
    flows, forward,
    maps::{NAT_BACK, NAT_BACKENDS, NAT_FLOWS, NAT_OPEN, NAT_OPEN_BACK, SNAT_POOL, SNAT_PORTS},
    persist,
    ring::{self, Pick},
    stats,
    translate::{self, Headers},
    verdict::drop,
};

/// The bits of [`NatFlow::vip`] that hold the VIP's index.
const VIP_INDEX: u32 = (1 << 10) - 1;

/// A client's packet or a backend's reply on its way through NAT.
pub struct Packet {
    /// Its flow, as parsed.
    pub key: FlowKey,
    pub h: Headers,
    /// TCP's flags byte (0 for UDP).
    pub flags: u8,
    /// TCP SYN.
    pub syn: bool,
    /// The generation of the lists that admitted it (a client's packet).
    pub generation: u32,
    pub now: u64,
    pub len: u64,
}

impl Packet {
    /// The TCP segment the state machine reads: the flags, and the
    /// client's acknowledgement number or the backend's sequence number.
    #[inline(always)]
    fn segment(&self, ctx: &XdpContext, side: Side) -> Result<Option<Segment>, Stat> {
        if self.key.proto != proto::TCP {
            return Ok(None);
        }
        let (seq, ack) = self.h.tcp_numbers(ctx)?;
        Ok(Some(Segment {
            flags: self.flags,
            number: match side {
                Side::Client => ack,
                Side::Backend => seq,
            },
        }))
    }
}

/// What the NAT tables hold for a client's flow.
pub enum Held {
    /// A live connection on a backend that is up.
    Live(Conn),
    /// A connection that no longer forwards: expired, ended (and a SYN
    /// opens the 5-tuple again), or on a backend that is `down` (the flow
    /// fails over). It is forgotten when the flow opens anew.
    Replace { down: bool },
    /// Nothing.
    None,
}

/// A live connection: its forward entry, in which table, its backend.
pub struct Conn {
    flow: *mut NatFlow,
    open: bool,
    pub pick: Pick,
}

impl Conn {
    /// The connection's VIP index.
    #[inline(always)]
    pub fn vip(&self) -> u32 {
        // SAFETY: the entry stays valid for this run (see `held`).
        unsafe { (*self.flow).vip & VIP_INDEX }
    }

    /// The generation of the lists it was last admitted under.
    #[inline(always)]
    pub fn generation(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.flow).generation }
    }

    /// Records that it was admitted under lists of `generation`.
    #[inline(always)]
    pub fn admitted(&self, generation: u32) {
        // SAFETY: as above; a plain integer.
        unsafe { (*self.flow).generation = generation };
    }

    /// The flow of the backend's replies (backend to the connection's
    /// source) of the connection of client flow `key`.
    #[inline(always)]
    pub fn reply_flow(&self, key: &FlowKey) -> FlowKey {
        // SAFETY: as above.
        back_key(key, unsafe { &*self.flow }, &self.pick.backend.addr)
    }
}

/// The NAT connection of client flow `key`, in the main table, else the
/// open one. A `syn` reopens a connection either side ended.
#[inline(always)]
pub fn held(key: &FlowKey, settings: &Settings, now: u64, syn: bool) -> Held {
    let (ptr, open) = match NAT_FLOWS.get_ptr_mut(key) {
        Some(ptr) => (ptr, false),
        None => match NAT_OPEN.get_ptr_mut(key) {
            Some(ptr) => (ptr, true),
            None => return Held::None,
        },
    };
    // SAFETY: the entry stays valid for this run; a concurrent writer can
    // only replace whole values of plain integers.
    let flow = unsafe { &*ptr };
    if settings.nat_expired(flow.state, key.proto, flow.last_seen_ns, now)
        || (syn && flow.state == NAT_CLOSING)
    {
        return Held::Replace { down: false };
    }
    let Ok(pick) = ring::backend(flow.backend) else {
        return Held::Replace { down: false };
    };
    if !pick.backend.is_up() {
        return Held::Replace { down: true };
    }
    Held::Live(Conn {
        flow: ptr,
        open,
        pick,
    })
}

/// A client's packet of live connection `conn`: the state machine, then
/// the packet rewritten to the backend's address and port from the
/// connection's source, and sent.
#[inline(always)]
pub fn forward(ctx: &XdpContext, p: &Packet, conn: &Conn) -> (u32, Stat) {
    let key = &p.key;
    // SAFETY: as in `held`.
    let flow = unsafe { &mut *conn.flow };
    let backend = conn.pick.backend;
    let back = back_key(key, flow, &backend.addr);
    let segment = match p.segment(ctx, Side::Client) {
        Ok(segment) => segment,
        Err(reason) => return drop(reason),
    };
    // What the packet becomes, read before a promotion frees the entry.
    let to = FlowKey::new(
        read(&flow.src),
        read(&backend.addr),
        flow.src_port,
        flow.dst_port,
        key.proto,
    );
    let promoted = segment.is_some() && {
        let next = step(flow.state, Side::Client, segment, flow.expect_ack);
        apply(key, flow, conn.open, &back, next, p.now)
    };
    if !promoted {
        refresh(key, flow, &back, conn.open, p.now);
    }
    if let Err(reason) = translate::rewrite(ctx, &p.h, key, &to) {
        return drop(reason);
    }
    stats::event(Event::NAT_FORWARD, p.len);
    forward::to_nat_backend(ctx, &conn.pick)
}

/// Opens a NAT connection for client packet `p` to `vip` on `pick`: a
/// source (a SNAT pool address and a port of this CPU's range, or the
/// client's own), the forward and reverse entries in the open tables,
/// then the packet rewritten and sent as [`forward`] does. Dropped when no
/// source is free.
#[inline(always)]
pub fn open(
    ctx: &XdpContext,
    p: &Packet,
    vip: &VipInfo,
    pick: &Pick,
    settings: &Settings,
) -> (u32, Stat) {
    let key = &p.key;
    let backend = pick.backend;
    let dst_port = match NAT_BACKENDS.get(pick.id) {
        Some(b) if b.port != 0 => b.port,
        _ => key.dst_port,
    };
    let state = if key.proto != proto::TCP {
        NAT_UDP
    } else if p.syn {
        NAT_SYN
    } else {
        NAT_MIDSTREAM
    };
    let reply = NatReply {
        client: key.src,
        vip: key.dst,
        client_port: key.src_port,
        vip_port: key.dst_port,
        vip_index: vip.index,
        last_seen_ns: p.now,
        state,
        backend: pick.id,
    };
    // The source, its reverse entry put in place as it is chosen.
    let (src, src_port) = match source(p, vip, &backend.addr, dst_port, &reply, settings) {
        Ok(source) => source,
        Err(reason) => return drop(reason),
    };
    let mut counted = 0;
    if vip.counts_connections() {
        flows::opened(pick.id);
        counted = FLOW_COUNTED;
    }
    let flow = NatFlow {
        backend: pick.id,
        vip: vip.index | counted,
        last_seen_ns: p.now,
        src,
        src_port,
        dst_port,
        state,
        expect_ack: 0,
        generation: p.generation,
    };
    if NAT_OPEN.insert(key, flow, 0).is_err() {
        if counted != 0 {
            flows::closed(pick.id);
        }
        let back = back_key(key, &flow, &backend.addr);
        let _ = NAT_OPEN_BACK.remove(back);
        return drop(Stat::DROP_NAT_PORTS);
    }
    stats::event(Event::NAT_OPENED, p.len);
    let to = FlowKey::new(src, read(&backend.addr), src_port, dst_port, key.proto);
    if let Err(reason) = translate::rewrite(ctx, &p.h, key, &to) {
        return drop(reason);
    }
    stats::event(Event::NAT_FORWARD, p.len);
    forward::to_nat_backend(ctx, pick)
}

/// Forgets the connection client flow `key` had (in either table), before
/// it opens anew: its reverse entry too, if that is still its own, and
/// its count in its backend's active connections.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    forget_in(key, false);
    forget_in(key, true);
}

#[inline(always)]
fn forget_in(key: &FlowKey, open: bool) {
    let Some(flow) = flow_entry(open, key) else {
        return;
    };
    // SAFETY: plain data, read once.
    let flow = read(unsafe { &*flow });
    if let Ok(pick) = ring::backend(flow.backend) {
        let back = back_key(key, &flow, &pick.backend.addr);
        if let Some(reply) = reply_entry(open, &back)
            // SAFETY: as above.
            && same_flow(&forward_key(unsafe { &*reply }, key.proto), key)
        {
            remove_reply(open, &back);
        }
        if flow.vip & FLOW_COUNTED != 0 && flow.state != NAT_CLOSING {
            flows::closed(flow.backend);
        }
    }
    if open {
        let _ = NAT_OPEN.remove(key);
    } else {
        let _ = NAT_FLOWS.remove(key);
    }
}

/// A backend's reply, if it belongs to a NAT connection: the state
/// machine, then the packet rewritten to go from the VIP to the client,
/// and sent toward the client. None when no connection holds it (it is
/// not the balancer's: it passes). `server_flags`: its TCP flags are a
/// combination a server sends.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    p: &Packet,
    settings: &Settings,
    server_flags: bool,
) -> Option<(u32, Stat)> {
    let key = &p.key;
    let (ptr, open) = match live_reply(key, settings, p.now, false) {
        Found::Live(ptr) => (ptr, false),
        found => match (live_reply(key, settings, p.now, true), found) {
            (Found::Live(ptr), _) => (ptr, true),
            (Found::Expired, _) | (_, Found::Expired) => {
                return Some(drop(Stat::DROP_NAT_EXPIRED));
            }
            _ => return None,
        },
    };
    if !server_flags {
        return Some(drop(Stat::DROP_TCP_FLAGS));
    }
    // SAFETY: as in `held`.
    let reply = unsafe { &mut *ptr };
    let client = read(&reply.client);
    // Where it goes, before anything changes: a reply that cannot reach
    // its client changes nothing.
    let Some(hop) = forward::client_hop(&client) else {
        return Some(drop(Stat::DROP_NAT_NO_ROUTE));
    };
    let forward_key = forward_key(reply, key.proto);
    // What the packet becomes, read before a promotion frees the entry.
    let to = FlowKey::new(
        read(&reply.vip),
        client,
        reply.vip_port,
        reply.client_port,
        key.proto,
    );
    let mut promoted = false;
    // In the main tables only a FIN or RST moves a connection on: the
    // forward entry is looked up for the other replies only while the
    // connection is open.
    let moves = open || p.flags & (TCP_FIN | TCP_RST) != 0;
    if moves && (key.proto == proto::TCP || is_open_udp(reply.state, open)) {
        let segment = match p.segment(ctx, Side::Backend) {
            Ok(segment) => segment,
            Err(reason) => return Some(drop(reason)),
        };
        if let Some(flow) = flow_entry(open, &forward_key) {
            // SAFETY: as in `held`.
            let flow = unsafe { &mut *flow };
            let next = step(flow.state, Side::Backend, segment, flow.expect_ack);
            promoted = apply(&forward_key, flow, open, key, next, p.now);
        }
    }
    if !promoted && p.now.saturating_sub(reply.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        reply.last_seen_ns = p.now;
        if let Some(flow) = flow_entry(open, &forward_key) {
            // SAFETY: as in `held`; a plain integer.
            unsafe { (*flow).last_seen_ns = p.now };
        }
    }
    if let Err(reason) = translate::rewrite(ctx, &p.h, key, &to) {
        return Some(drop(reason));
    }
    Some(forward::to_client(ctx, hop))
}

/// The client's flow of the NAT connection whose replies are flow `key`,
/// if a live reverse entry (main, else open) holds it: for an ICMP error
/// about a reply, which changes nothing of the connection.
#[inline(always)]
pub fn client_flow(key: &FlowKey, settings: &Settings, now: u64) -> Option<FlowKey> {
    let ptr = match live_reply(key, settings, now, false) {
        Found::Live(ptr) => ptr,
        _ => match live_reply(key, settings, now, true) {
            Found::Live(ptr) => ptr,
            _ => return None,
        },
    };
    // SAFETY: as in `held`.
    Some(forward_key(unsafe { &*ptr }, key.proto))
}

/// Whether a reverse entry (main or open) holds reply flow `key`.
#[inline(always)]
pub fn holds_reply(key: &FlowKey) -> bool {
    NAT_BACK.get_ptr(key).is_some() || NAT_OPEN_BACK.get_ptr(key).is_some()
}

/// A UDP flow the open tables hold: the backend's datagram promotes it.
#[inline(always)]
fn is_open_udp(state: u32, open: bool) -> bool {
    open && state == NAT_UDP
}

/// What a reverse table holds for a reply's flow.
enum Found {
    Live(*mut NatReply),
    Expired,
    None,
}

#[inline(always)]
fn live_reply(key: &FlowKey, settings: &Settings, now: u64, open: bool) -> Found {
    let Some(ptr) = reply_entry(open, key) else {
        return Found::None;
    };
    // SAFETY: as in `held`.
    let reply = unsafe { &*ptr };
    if settings.nat_expired(reply.state, key.proto, reply.last_seen_ns, now) {
        Found::Expired
    } else {
        Found::Live(ptr)
    }
}

/// Applies step `next` to the connection of client flow `key` (forward
/// entry `flow`, in the open tables when `open`; reverse key `back`):
/// the new state in both entries, its count ended when it closes, and
/// both entries moved to the main tables when it is promoted. Whether
/// they moved: the open entries are then gone, `flow` with them.
#[inline(always)]
fn apply(
    key: &FlowKey,
    flow: &mut NatFlow,
    open: bool,
    back: &FlowKey,
    next: Step,
    now: u64,
) -> bool {
    if next.state == flow.state && next.expect_ack == flow.expect_ack && !next.promote {
        return false;
    }
    if next.state == NAT_CLOSING && flow.state != NAT_CLOSING && flow.vip & FLOW_COUNTED != 0 {
        flows::closed(flow.backend);
        flow.vip &= !FLOW_COUNTED;
    }
    flow.state = next.state;
    flow.expect_ack = next.expect_ack;
    flow.last_seen_ns = now;
    if next.promote && open {
        let reply = reply_of(key, flow, now);
        if NAT_FLOWS.insert(key, read(flow), 0).is_ok() && NAT_BACK.insert(back, reply, 0).is_ok() {
            let _ = NAT_OPEN.remove(key);
            let _ = NAT_OPEN_BACK.remove(back);
            stats::event(Event::NAT_PROMOTED, 0);
            return true;
        }
        return false;
    }
    if let Some(reply) = reply_entry(open, back) {
        // SAFETY: as in `held`; plain integers.
        unsafe {
            (*reply).state = next.state;
            (*reply).last_seen_ns = now;
        }
    }
    false
}

/// Refreshes the last-seen time of the connection's forward entry and of
/// its reverse one (at most every [`LAST_SEEN_GRANULARITY_NS`]), and its
/// client's persistence.
#[inline(always)]
fn refresh(key: &FlowKey, flow: &mut NatFlow, back: &FlowKey, open: bool, now: u64) {
    if now.saturating_sub(flow.last_seen_ns) <= LAST_SEEN_GRANULARITY_NS {
        return;
    }
    flow.last_seen_ns = now;
    if let Some(reply) = reply_entry(open, back) {
        // SAFETY: as in `held`; a plain integer.
        unsafe { (*reply).last_seen_ns = now };
    }
    persist::touch(flow.vip & VIP_INDEX, key, flow.backend, now);
}

/// The forward entry of client flow `key` in the open table (`open`) or
/// the main one. One call site per map, so that the verifier knows each
/// and may inline its lookup.
#[inline(always)]
fn flow_entry(open: bool, key: &FlowKey) -> Option<*mut NatFlow> {
    if open {
        NAT_OPEN.get_ptr_mut(key)
    } else {
        NAT_FLOWS.get_ptr_mut(key)
    }
}

/// The reverse entry of reply flow `key`, likewise.
#[inline(always)]
fn reply_entry(open: bool, key: &FlowKey) -> Option<*mut NatReply> {
    if open {
        NAT_OPEN_BACK.get_ptr_mut(key)
    } else {
        NAT_BACK.get_ptr_mut(key)
    }
}

/// Removes the reverse entry of reply flow `key`, likewise.
#[inline(always)]
fn remove_reply(open: bool, key: &FlowKey) {
    if open {
        let _ = NAT_OPEN_BACK.remove(key);
    } else {
        let _ = NAT_BACK.remove(key);
    }
}

/// The key of the forward entry of the connection whose reverse entry is
/// `reply`, over `proto` (see `NatReply::forward_key`, which copies
/// through memmove on BPF).
#[inline(always)]
fn forward_key(reply: &NatReply, proto: u8) -> FlowKey {
    FlowKey::new(
        read(&reply.client),
        read(&reply.vip),
        reply.client_port,
        reply.vip_port,
        proto,
    )
}

/// The reverse key of the connection of client flow `key`, forward entry
/// `flow`, on the backend at `backend`: the backend's replies' flow.
#[inline(always)]
fn back_key(key: &FlowKey, flow: &NatFlow, backend: &Addr) -> FlowKey {
    FlowKey::new(
        read(backend),
        read(&flow.src),
        flow.dst_port,
        flow.src_port,
        key.proto,
    )
}

/// The reverse entry of the connection of client flow `key`.
#[inline(always)]
fn reply_of(key: &FlowKey, flow: &NatFlow, now: u64) -> NatReply {
    NatReply {
        client: key.src,
        vip: key.dst,
        client_port: key.src_port,
        vip_port: key.dst_port,
        vip_index: flow.vip & VIP_INDEX,
        last_seen_ns: now,
        state: flow.state,
        backend: flow.backend,
    }
}

/// The source a new connection of client packet `p` to the backend at
/// `backend`, port `port`, takes, its reverse entry `reply` put in the
/// open table as it is taken. For a VIP with source NAT: the client's own
/// port on the pool address the client's address picks, when that port
/// lies within `snat_ports` (so that a client reusing its port reuses the
/// backend's 4-tuple too, as its sequence numbers and timestamps expect:
/// what conntrack's NAT does), else the next free candidates of this
/// CPU's range (at most [`PORT_TRIES`]); without source NAT, the client's
/// own address and port. A source is free when no live reverse entry
/// holds it for the backend: its entry goes in only where none is
/// (`BPF_NOEXIST`), so CPUs choosing at once never share one.
#[inline(always)]
fn source(
    p: &Packet,
    vip: &VipInfo,
    backend: &Addr,
    port: u16,
    reply: &NatReply,
    settings: &Settings,
) -> Result<(Addr, u16), Stat> {
    let (key, now) = (&p.key, p.now);
    if !vip.snat() {
        let back = FlowKey::new(read(backend), key.src, port, key.src_port, key.proto);
        if !reserve(&back, reply, settings, now) {
            return Err(Stat::DROP_NAT_PORTS);
        }
        return Ok((key.src, key.src_port));
    }
    let v6 = !balancer_common::is_v4(&key.src);
    let pool = SNAT_POOL.get(pool_index(v6)).ok_or(Stat::DROP_NAT_PORTS)?;
    let addrs = pool.count;
    if addrs == 0 || addrs > MAX_SNAT_ADDRS {
        return Err(Stat::DROP_NAT_PORTS);
    }
    let client_port = u16::from_be(key.src_port);
    if pool.first <= client_port && client_port <= pool.last {
        let i = key.src[3] % addrs;
        // The mask bounds the index for the verifier; read through a
        // volatile load, so that LLVM, which knows `i < addrs`, keeps it.
        let addr = read(&pool.addrs[(read(&i) & (MAX_SNAT_ADDRS - 1)) as usize]);
        let back = FlowKey::new(read(backend), addr, port, key.src_port, key.proto);
        if reserve(&back, reply, settings, now) {
            return Ok((addr, key.src_port));
        }
        stats::event(Event::NAT_PORT_TAKEN, p.len);
    }
    let range = SNAT_PORTS.get_ptr_mut(0).ok_or(Stat::DROP_NAT_PORTS)?;
    // SAFETY: this CPU's own slot, valid for the run; only this CPU
    // writes it.
    let range = unsafe { &mut *range };
    for _ in 0..PORT_TRIES {
        let n = range.next;
        range.next = n.wrapping_add(1);
        let (i, candidate) = range.candidate(n, addrs);
        if candidate == 0 {
            return Err(Stat::DROP_NAT_PORTS);
        }
        // As above.
        let addr = read(&pool.addrs[(read(&i) & (MAX_SNAT_ADDRS - 1)) as usize]);
        let src_port = candidate.to_be();
        let back = FlowKey::new(read(backend), addr, port, src_port, key.proto);
        if reserve(&back, reply, settings, now) {
            return Ok((addr, src_port));
        }
        stats::event(Event::NAT_PORT_TAKEN, p.len);
    }
    Err(Stat::DROP_NAT_PORTS)
}

/// Takes reply flow `back` for a new connection, whose reverse entry
/// `reply` goes in the open table, if no live reverse entry (main or
/// open) holds it; an expired one in the open table makes way.
#[inline(always)]
fn reserve(back: &FlowKey, reply: &NatReply, settings: &Settings, now: u64) -> bool {
    if matches!(live_reply(back, settings, now, false), Found::Live(_)) {
        return false;
    }
    match live_reply(back, settings, now, true) {
        Found::Live(_) => return false,
        Found::Expired => {
            let _ = NAT_OPEN_BACK.remove(back);
        }
        Found::None => {}
    }
    NAT_OPEN_BACK
        .insert(back, reply, u64::from(BPF_NOEXIST))
        .is_ok()
}

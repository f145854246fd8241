//! Flows shared with the peer hosts (`[sync]`): the new connection-table
//! entries the program tells of go out to every peer in batches
//! ([`crate::sync`]), and the peers' flows go into this host's connection
//! table, so that a flow the routers move here keeps its backend whatever
//! the scheduler. A flow this host already holds keeps its own entry.
//!
//! Flows travel by address: a VIP or backend this host does not have is
//! counted and left out. The queue of flows to send is bounded; what does
//! not fit is counted.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use balancer_common::flow::{FlowEvent, FlowKey, FlowState};
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::UdpSocket;

use crate::{
    config::SyncConfig,
    datapath::{self, Datapath},
    plan::{self, Plan},
    sync::{self, Batch, Key, Refusal, Replays, SharedFlow},
};

/// Most flows waiting to be sent: a second of new entries at the default
/// insert budget, four times over.
const QUEUE: usize = 65_536;

/// Send and receive buffer of the peers' socket.
const SOCKET_BUFFER: usize = 4 << 20;

/// Upper bounds of the sharing delay's histogram, in seconds.
const DELAY_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

/// What became of a peer's flows.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Received {
    /// Put in the connection table.
    pub(super) inserted: u64,
    /// Shared again by their host, which still sees them: the entry here,
    /// on the same backend, was kept from expiring.
    pub(super) refreshed: u64,
    /// The table held the flow already: its entry stays.
    pub(super) existing: u64,
    /// No VIP of this host has the flow's address, port and protocol.
    pub(super) unknown_vip: u64,
    /// The VIP has no backend of that address here.
    pub(super) unknown_backend: u64,
    /// Not put in: the peers' share of the insert budget was spent.
    pub(super) over_budget: u64,
}

/// One peer's traffic.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Peer {
    pub(super) datagrams_sent: u64,
    pub(super) send_errors: u64,
    pub(super) datagrams_received: u64,
    pub(super) flows_received: u64,
    /// When its last datagram was taken.
    pub(super) last_received: Option<std::time::Instant>,
}

/// Everything counted, for the answers and the metrics.
#[derive(Clone, Debug)]
pub(super) struct Counts {
    /// Flows sent (each to every peer).
    pub(super) flows_sent: u64,
    /// Flows the queue had no room for.
    pub(super) queue_dropped: u64,
    pub(super) peers: BTreeMap<SocketAddr, Peer>,
    pub(super) received: Received,
    /// Datagrams refused, by reason.
    pub(super) refused: BTreeMap<&'static str, u64>,
    /// The delay from a flow's placing on its host to its entry here, in
    /// seconds (a clone shares the counts: what the metrics register).
    pub(super) delay: Histogram,
    pub(super) delay_sum: f64,
    pub(super) delay_count: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            flows_sent: 0,
            queue_dropped: 0,
            peers: BTreeMap::new(),
            received: Received::default(),
            refused: BTreeMap::new(),
            delay: Histogram::new(DELAY_BUCKETS),
            delay_sum: 0.0,
            delay_count: 0,
        }
    }
}

/// Where the plan's VIPs and backends are, by what flows carry.
#[derive(Default)]
struct Lookup {
    /// VIP index → its address and protocol (the port comes with the
    /// flow), and backend id → address.
    vips: HashMap<u32, (IpAddr, u8)>,
    backends: HashMap<u32, IpAddr>,
    /// (address, port in host order, protocol) → VIP index, and per VIP
    /// index the backends by address.
    keys: HashMap<(IpAddr, u16, u8), u32>,
    members: HashMap<(u32, IpAddr), u32>,
}

impl Lookup {
    fn of(plan: &Plan) -> Lookup {
        let mut out = Lookup::default();
        for vip in &plan.vips {
            let index = vip.slot.info.index;
            let key = &vip.slot.key;
            let address = plan::ip(&key.addr);
            out.vips.insert(index, (address, key.proto));
            out.keys
                .insert((address, u16::from_be(key.port), key.proto), index);
            // As the maps hold them: an IPv4-mapped address is IPv4.
            for b in &vip.backends {
                let address = b.address.to_canonical();
                out.backends.insert(b.id, address);
                out.members.insert((index, address), b.id);
            }
        }
        out
    }

    /// The VIP of a flow to `vip` over `protocol`: its own port's, else
    /// the address's every-port VIP.
    fn vip(&self, vip: SocketAddr, protocol: u8) -> Option<u32> {
        self.keys
            .get(&(vip.ip(), vip.port(), protocol))
            .or_else(|| self.keys.get(&(vip.ip(), 0, protocol)))
            .copied()
    }
}

/// The sharing of one host.
pub(super) struct Sharing {
    socket: Arc<UdpSocket>,
    peers: Vec<SocketAddr>,
    key: Key,
    batch_delay: Duration,
    queue: VecDeque<SharedFlow>,
    /// The last sequence number sent.
    sequence: u64,
    /// When the queue is sent even if a datagram is not full.
    pub(super) flush_at: Option<tokio::time::Instant>,
    replays: Replays,
    lookup: Option<Lookup>,
    pub(super) counts: Counts,
    pub(super) listen: SocketAddr,
    /// How often the connection table is scanned, and the scans so far:
    /// each live flow is shared again every so many scans.
    scan_interval: Duration,
    scans: u64,
    /// When the last scan was, on the program's clock.
    scanned_ns: u64,
    /// The peers' new entries still allowed.
    budget: PeerBudget,
}

/// The peers' share of the insert budget. Their entries all land in the
/// LRU list of the CPU the daemon runs on, so they get one CPU's share
/// (`insert_cost_ns` a token, a second's worth at most): a flood on one
/// host evicts on its peers no faster than on itself.
#[derive(Debug)]
struct PeerBudget {
    tokens: f64,
    at: std::time::Instant,
}

impl PeerBudget {
    /// New entries allowed at `now` (unlimited when the budget is off).
    fn allowed(&mut self, insert_cost_ns: u64, now: std::time::Instant) -> usize {
        if insert_cost_ns == 0 {
            return usize::MAX;
        }
        let rate = 1e9 / insert_cost_ns as f64;
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.at = now;
        self.tokens = (self.tokens + earned).min(rate);
        self.tokens.max(0.0) as usize
    }

    /// `n` entries were made.
    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Sharing {
    /// Reads the key and binds the listening socket of `config`; returns
    /// the socket too, for the main loop to receive on.
    pub(super) fn start(
        config: &SyncConfig,
        scan_interval: Duration,
    ) -> Result<(Sharing, Arc<UdpSocket>)> {
        let key = Key::read(&config.key_file).map_err(|e| anyhow::anyhow!("[sync] {e}"))?;
        let listen = *config.listen.get_ref();
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Room for bursts of datagrams both ways while the main loop is
        // busy: a second of new flows at the default insert budget.
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket
            .bind(&listen.into())
            .with_context(|| format!("[sync] cannot listen on {listen}"))?;
        socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(socket.into())?);
        let peers: Vec<SocketAddr> = config.peers.iter().map(|p| *p.get_ref()).collect();
        tracing::info!(
            %listen,
            peers = peers.len(),
            "sharing new flows with the peer hosts"
        );
        let sharing = Sharing {
            socket: socket.clone(),
            counts: Counts {
                peers: peers.iter().map(|p| (*p, Peer::default())).collect(),
                ..Counts::default()
            },
            peers,
            key,
            batch_delay: config.batch_delay,
            queue: VecDeque::new(),
            // Above any number sent before a restart.
            sequence: now_us(),
            flush_at: None,
            replays: Replays::default(),
            lookup: None,
            listen,
            scan_interval,
            scans: 0,
            scanned_ns: datapath::now_ns(),
            budget: PeerBudget {
                tokens: 0.0,
                at: std::time::Instant::now(),
            },
        };
        Ok((sharing, socket))
    }

    /// The plan changed: VIPs and backends are looked up afresh.
    pub(super) fn forget_plan(&mut self) {
        self.lookup = None;
    }

    /// Queues the flows of `events` for the peers, and sends what fills a
    /// datagram.
    pub(super) fn queue(&mut self, events: &[FlowEvent], plan: &Plan) {
        let lookup = self.lookup.get_or_insert_with(|| Lookup::of(plan));
        // The program's clock is the monotonic one: place events in wall
        // time, which the peers share.
        let (wall, mono) = (now_us(), datapath::now_ns() / 1000);
        for event in events {
            let (Some(&(vip, protocol)), Some(&backend)) = (
                lookup.vips.get(&event.vip),
                lookup.backends.get(&event.backend),
            ) else {
                continue;
            };
            if self.queue.len() >= QUEUE {
                self.counts.queue_dropped += 1;
                continue;
            }
            let key = &event.key;
            self.queue.push_back(SharedFlow {
                client: SocketAddr::new(plan::ip(&key.src), u16::from_be(key.src_port)),
                vip: SocketAddr::new(vip, u16::from_be(key.dst_port)),
                protocol,
                backend,
                placed_at_us: if event.at_ns == 0 {
                    0
                } else {
                    wall.saturating_sub(mono.saturating_sub(event.at_ns / 1000))
                },
            });
        }
        if !self.queue.is_empty() && self.flush_at.is_none() {
            self.flush_at = Some(tokio::time::Instant::now() + self.batch_delay);
        }
        self.send(false);
    }

    /// A peer's entry of a flow is refreshed only by the flow's host: after
    /// a scan of the connection table, flows that saw packets since the
    /// last one are shared again, each about every quarter of its idle
    /// timeout (a hash of the flow spreads them over the scans; the margin
    /// covers the 1 s granularity of the entries' times on both hosts), so
    /// that the peers keep long-lived connections, not only young ones.
    pub(super) fn share_again(&mut self, entries: &[(FlowKey, FlowState)], plan: &Plan) {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        self.scans += 1;
        let since = std::mem::replace(&mut self.scanned_ns, datapath::now_ns());
        let scan_ns = self.scan_interval.as_nanos().max(1) as u64;
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let events: Vec<FlowEvent> = entries
            .iter()
            .filter(|(key, state)| {
                let rounds = (plan.settings.idle_ns(key.proto) / 4 / scan_ns).max(1);
                let hash = hasher.hash_one((key.src, key.src_port, key.dst, key.dst_port));
                state.last_seen_ns > since && hash % rounds == self.scans % rounds
            })
            .map(|(key, state)| FlowEvent {
                key: *key,
                backend: state.backend,
                vip: state.vip_index(),
                // Not a placing: the peers leave it out of the delay.
                at_ns: 0,
            })
            .collect();
        self.queue(&events, plan);
    }

    /// Sends full datagrams, and with `all` what is left too.
    pub(super) fn send(&mut self, all: bool) {
        while self.queue.len() >= sync::MAX_RECORDS || (all && !self.queue.is_empty()) {
            let n = self.queue.len().min(sync::MAX_RECORDS);
            self.sequence += 1;
            let batch = Batch {
                sender: self.listen,
                sequence: self.sequence,
                sent_at_us: now_us(),
                flows: self.queue.drain(..n).collect(),
            };
            let datagram = sync::encode(&batch, &self.key);
            let mut sent = false;
            for peer in &self.peers {
                let counts = self.counts.peers.entry(*peer).or_default();
                // A full socket buffer or an unreachable peer costs this
                // datagram, not the daemon's loop.
                match self.socket.try_send_to(&datagram, *peer) {
                    Ok(_) => {
                        counts.datagrams_sent += 1;
                        sent = true;
                    }
                    Err(_) => counts.send_errors += 1,
                }
            }
            if sent {
                self.counts.flows_sent += n as u64;
            }
        }
        if self.queue.is_empty() {
            self.flush_at = None;
        }
    }

    /// Takes a datagram from `from` into `datapath`'s connection table.
    pub(super) fn receive(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        plan: &Plan,
        datapath: &mut Datapath,
    ) {
        if let Err(refusal) = self.admit(datagram, from, plan, datapath) {
            *self.counts.refused.entry(refusal.label()).or_default() += 1;
            tracing::debug!(%from, reason = refusal.label(), "a datagram of shared flows refused");
        }
    }

    fn admit(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        plan: &Plan,
        datapath: &mut Datapath,
    ) -> Result<(), Refusal> {
        let Some(peer) = self.peers.iter().find(|p| p.ip() == from.ip()).copied() else {
            return Err(Refusal::UnknownPeer);
        };
        let batch = sync::decode(datagram, &self.key)?;
        if batch.sender != from {
            return Err(Refusal::Sender);
        }
        let now = now_us();
        self.replays.admit(peer.ip(), &batch, now)?;
        let lookup = self.lookup.get_or_insert_with(|| Lookup::of(plan));
        let received = &mut self.counts.received;
        let at = datapath::now_ns();
        let mut entries = Vec::with_capacity(batch.flows.len());
        for flow in &batch.flows {
            let Some(index) = lookup.vip(flow.vip, flow.protocol) else {
                received.unknown_vip += 1;
                continue;
            };
            let Some(&backend) = lookup.members.get(&(index, flow.backend)) else {
                received.unknown_backend += 1;
                continue;
            };
            let key = FlowKey::new(
                plan::addr(flow.client.ip()),
                plan::addr(flow.vip.ip()),
                flow.client.port().to_be(),
                flow.vip.port().to_be(),
                flow.protocol,
            );
            // Not counted among the backend's connections here: this
            // host has not seen the flow yet.
            entries.push((key, FlowState::new(backend, index, false, false, at)));
        }
        let max_new = self
            .budget
            .allowed(plan.settings.insert_cost_ns, std::time::Instant::now());
        let done = datapath.insert_flows(&entries, max_new);
        self.budget.spend(done.new);
        let received = &mut self.counts.received;
        received.over_budget += done.over_budget as u64;
        received.inserted += done.new as u64;
        received.refreshed += done.refreshed as u64;
        received.existing += done.existing as u64;
        if let Some(err) = done.error {
            tracing::warn!(
                error = %err,
                failed = done.failed,
                "cannot put some of the peers' flows in the connection table"
            );
        }
        for flow in batch.flows.iter().filter(|f| f.placed_at_us != 0) {
            let delay = now.saturating_sub(flow.placed_at_us) as f64 / 1e6;
            self.counts.delay.observe(delay);
            self.counts.delay_sum += delay;
            self.counts.delay_count += 1;
        }
        let counts = self.counts.peers.entry(peer).or_default();
        counts.datagrams_received += 1;
        counts.flows_received += batch.flows.len() as u64;
        counts.last_received = Some(std::time::Instant::now());
        Ok(())
    }
}

/// Every refusal's label, for the metrics (all of them, 0 or not).
pub(super) fn refusal_labels() -> impl Iterator<Item = &'static str> {
    Refusal::ALL.into_iter().map(Refusal::label)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::PeerBudget;

    #[test]
    fn the_peers_get_one_cpus_share_of_the_insert_budget_with_a_seconds_burst() {
        let t0 = Instant::now();
        let mut budget = PeerBudget {
            tokens: 0.0,
            at: t0,
        };
        // 1,000 entries a second: one every millisecond.
        let cost = 1_000_000;
        assert_eq!(budget.allowed(cost, t0), 0);
        assert_eq!(budget.allowed(cost, t0 + Duration::from_millis(250)), 250);
        budget.spend(200);
        assert_eq!(budget.allowed(cost, t0 + Duration::from_millis(250)), 50);
        // Idle for a minute: a second's worth, no more.
        assert_eq!(budget.allowed(cost, t0 + Duration::from_secs(60)), 1_000);
        assert_eq!(budget.allowed(0, t0), usize::MAX, "the budget off");
    }
}

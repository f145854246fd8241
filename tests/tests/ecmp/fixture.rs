//! The shared fixture of the ECMP tests: the lab with a daemon on every
//! balancer host ([`Site`]), the VIPs of each address family ([`Family`]),
//! connections held open over the hosts ([`Held`]) and steady loads of new
//! connections ([`Loads`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use balancer_tests::{
    Lab,
    daemon::Daemon,
    ecmp::{self, ANNOUNCE_TABLE, Ecmp, VIPS4, VIPS6},
    load::{Attempt, PacedLoad},
    servers::{self, EchoConnection, Server},
};

/// Balancer hosts the lab starts with.
const HOSTS: usize = 3;
/// Backends on the segment, behind every VIP.
const BACKENDS: usize = 3;
/// The hash seed every host shares: with the same VIPs and backends, it
/// makes them place every flow alike.
const HASH_SEED: u32 = 0x0018_ec3b;
/// `[announce] announce_delay`.
const ANNOUNCE_DELAY: &str = "1s";
/// The health check of every VIP, on the backends' port 80.
const CHECK: &str = "[vip.health_check]\nkind = \"tcp\"\nport = 80\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
/// How long the daemons may take to announce everything at start.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Held connections per family.
pub const HELD: usize = 30;
/// One new connection per family this often, in the steady loads: 40 a
/// second in all, each on a thread of its own.
const PACE: Duration = Duration::from_millis(50);

/// IPv4 or IPv6: the lab's VIPs and backend addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    v6: bool,
}

/// Both families, IPv4 first.
pub const FAMILIES: [Family; 2] = [Family { v6: false }, Family { v6: true }];

impl Family {
    /// "IPv4" or "IPv6".
    pub fn label(self) -> &'static str {
        if self.v6 { "IPv6" } else { "IPv4" }
    }

    /// The VIP name of `service` (`web`, `chat`, `api`) in this family:
    /// `web4`, `web6`...
    pub fn vip(self, service: &str) -> String {
        format!("{service}{}", if self.v6 { 6 } else { 4 })
    }

    /// The address of `web` and `chat`.
    pub fn front(self) -> IpAddr {
        if self.v6 {
            VIPS6[0].into()
        } else {
            VIPS4[0].into()
        }
    }

    /// The address of `api`.
    pub fn api_address(self) -> IpAddr {
        if self.v6 {
            VIPS6[1].into()
        } else {
            VIPS4[1].into()
        }
    }

    /// `web`: name servers, port 80.
    pub fn web(self) -> SocketAddr {
        SocketAddr::new(self.front(), 80)
    }

    /// `chat`: echo servers, port 81.
    pub fn chat(self) -> SocketAddr {
        SocketAddr::new(self.front(), 81)
    }

    /// `lc`: echo servers behind a least-connections VIP, port 82.
    pub fn lc(self) -> SocketAddr {
        SocketAddr::new(self.front(), 82)
    }

    /// `api`: name servers, port 80.
    pub fn api(self) -> SocketAddr {
        SocketAddr::new(self.api_address(), 80)
    }

    /// Backend `i`'s address, behind `web` and `chat`.
    pub fn backend(self, i: usize) -> IpAddr {
        if self.v6 {
            ecmp::backend6(i).into()
        } else {
            ecmp::backend4(i).into()
        }
    }

    /// Backend `i`'s second address, behind `api` only (10.80.0.200 + i,
    /// fd80::200 + i).
    pub fn api_backend(self, i: usize) -> IpAddr {
        if self.v6 {
            Ipv6Addr::new(0xfd80, 0, 0, 0, 0, 0, 0, 0x200 + i as u16).into()
        } else {
            Ipv4Addr::new(10, 80, 0, 200 + i as u8).into()
        }
    }

    fn prefix_len(self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }
}

/// Runs `check` for both families at once, and fails with every family's
/// error.
pub fn both(check: impl Fn(Family) -> Result<()> + Sync) -> Result<()> {
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = FAMILIES
            .iter()
            .map(|f| {
                let check = &check;
                scope.spawn(move || check(*f))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("panicked"))))
            .collect()
    });
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    ensure!(errors.is_empty(), "{}", errors.join("\n"));
    Ok(())
}

/// The lab of [`Ecmp`] with three hosts and three backends, the backends'
/// servers, and a balancer daemon on every host, every VIP announced.
pub struct Site<'lab> {
    lab: &'lab Lab,
    /// The daemons share their new flows (`[sync]`).
    sync: bool,
    pub ecmp: Ecmp<'lab>,
    /// The daemon of each live host, by host index.
    pub daemons: BTreeMap<usize, Daemon>,
}

impl<'lab> Site<'lab> {
    /// Builds the lab (BFD on the BGP sessions or not), starts the servers
    /// and the daemons, and waits until every host is in every VIP's
    /// route and the hosts agree on where flows go.
    pub fn build(lab: &'lab Lab, bfd: bool) -> Result<Site<'lab>> {
        Site::build_with(lab, bfd, false)
    }

    /// [`Site::build`], the daemons sharing their new flows with each
    /// other (`[sync]`) when `sync`.
    pub fn build_with(lab: &'lab Lab, bfd: bool, sync: bool) -> Result<Site<'lab>> {
        let started = Instant::now();
        let ecmp = Ecmp::build(lab, HOSTS, BACKENDS, bfd)?;
        let sessions = started.elapsed();
        for (i, backend) in ecmp.backends.iter().enumerate() {
            for family in FAMILIES {
                let len = if family.v6 { 64 } else { 24 };
                backend.add_address("eth0", &format!("{}/{len}", family.api_backend(i)))?;
            }
            // One dual-stack socket per service takes every VIP and every
            // address of the backend (the checks go to port 80).
            for (server, port) in [
                (Server::TcpName, 80),
                (Server::TcpEcho, 81),
                (Server::TcpEcho, 82),
            ] {
                let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
                let socket = backend
                    .run(|| servers::bind(server, addr))?
                    .with_context(|| format!("cannot bind {addr} in be{i}"))?;
                servers::serve(server, socket, &format!("be{i}"));
            }
        }
        let mut site = Site {
            lab,
            sync,
            ecmp,
            daemons: BTreeMap::new(),
        };
        for host in site.ecmp.host_indices() {
            site.start_daemon(host)?;
        }
        let daemons = started.elapsed();
        let hosts = site.ecmp.host_indices();
        let announced = site.wait_announced(&hosts, ANNOUNCE_TIMEOUT)?;
        let mut fingerprints = BTreeMap::new();
        for (host, daemon) in &site.daemons {
            let status = daemon.cli_json(["status"])?;
            let fingerprint = status["flow_fingerprint"].as_str().with_context(|| {
                format!("lb{host} does not know its flow fingerprint: {status}")
            })?;
            fingerprints.insert(*host, fingerprint.to_owned());
        }
        ensure!(
            fingerprints
                .values()
                .all(|f| Some(f) == fingerprints.values().next()),
            "the hosts would place flows differently: flow fingerprints {fingerprints:?}"
        );
        eprintln!(
            "lab up (BFD {}, flow sharing {}): BGP sessions after {} ms, daemons serving after \
             {} ms, every VIP announced {} later",
            if bfd { "on" } else { "off" },
            if sync { "on" } else { "off" },
            sessions.as_millis(),
            daemons.as_millis(),
            ms(&announced)
        );
        Ok(site)
    }

    /// Starts the daemon of host `host` with [`config`].
    pub fn start_daemon(&mut self, host: usize) -> Result<()> {
        let peers = if self.sync {
            self.ecmp.host_indices()
        } else {
            Vec::new()
        };
        let config = config(self.lab, host, &peers)?;
        let ns = &self.ecmp.host(host)?.ns;
        let daemon = Daemon::start_in(self.lab, ns, &format!("lb{host}"), &config)?;
        self.daemons.insert(host, daemon);
        Ok(())
    }

    /// Host `host`'s daemon.
    pub fn daemon(&self, host: usize) -> Result<&Daemon> {
        self.daemons
            .get(&host)
            .with_context(|| format!("no daemon on lb{host}"))
    }

    /// Host `host`'s daemon, to kill or start it.
    pub fn daemon_mut(&mut self, host: usize) -> Result<&mut Daemon> {
        self.daemons
            .get_mut(&host)
            .with_context(|| format!("no daemon on lb{host}"))
    }

    /// Waits until the router sends both VIP addresses of both families
    /// through exactly `hosts`; how long each took: IPv4 `web`, IPv4
    /// `api`, IPv6 `web`, IPv6 `api`.
    pub fn wait_announced(&self, hosts: &[usize], timeout: Duration) -> Result<Vec<Duration>> {
        let wanted: Vec<(IpAddr, &[usize])> = FAMILIES
            .iter()
            .flat_map(|f| [(f.front(), hosts), (f.api_address(), hosts)])
            .collect();
        self.ecmp.wait_routes(&wanted, timeout)
    }

    /// The counters of VIP `vip` on every host whose daemon runs.
    pub fn counters(&self, vip: &str) -> Result<BTreeMap<usize, Counters>> {
        let mut out = BTreeMap::new();
        for host in self.daemons.keys() {
            let rows = self.vip_rows(*host)?;
            let row = rows
                .get(vip)
                .with_context(|| format!("lb{host} has no VIP {vip}"))?;
            out.insert(*host, Counters::of(row));
        }
        Ok(out)
    }

    /// The counters of `service`'s VIPs (both families) on host `host`.
    pub fn counters_on(&self, host: usize, service: &str) -> Result<BTreeMap<String, Counters>> {
        let rows = self.vip_rows(host)?;
        FAMILIES
            .iter()
            .map(|f| {
                let vip = f.vip(service);
                let row = rows
                    .get(&vip)
                    .with_context(|| format!("lb{host} has no VIP {vip}"))?;
                Ok((vip, Counters::of(row)))
            })
            .collect()
    }

    /// `vip list`'s `announce` and `announce_reason` of `vip` on `host`.
    pub fn announce_state(&self, host: usize, vip: &str) -> Result<(String, String)> {
        let rows = self.vip_rows(host)?;
        let row = rows
            .get(vip)
            .with_context(|| format!("lb{host} has no VIP {vip}"))?;
        let text = |key: &str| row[key].as_str().unwrap_or_default().to_owned();
        Ok((text("announce"), text("announce_reason")))
    }

    /// Makes host `host`'s health checks of `api` fail (`cut`), or pass
    /// again, and no other host's: a policy rule refuses the host's TCP
    /// connections to port 80 of `api`'s backend addresses (both
    /// families). The rule names a port, so a route lookup without one
    /// (the daemon resolving a backend's next hop) is not refused: the
    /// backends stay reachable, only their checks fail.
    pub fn cut_api_backends(&self, host: usize, cut: bool) -> Result<()> {
        let ns = &self.ecmp.host(host)?.ns;
        let verb = if cut { "add" } else { "del" };
        for family in FAMILIES {
            let version = if family.v6 { "-6" } else { "-4" };
            for i in 0..BACKENDS {
                let prefix = format!("{}/{}", family.api_backend(i), family.prefix_len());
                ns.ip([
                    version, "rule", verb, "to", &prefix, "ipproto", "tcp", "dport", "80",
                    "prohibit",
                ])?;
            }
        }
        Ok(())
    }

    /// `vip list` of host `host`, by VIP name.
    fn vip_rows(&self, host: usize) -> Result<BTreeMap<String, serde_json::Value>> {
        let rows = self.daemon(host)?.cli_json(["vip", "list"])?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| Some((row["name"].as_str()?.to_owned(), row.clone())))
            .collect())
    }
}

/// Port of `[sync]` on every host.
const SYNC_PORT: u16 = 7946;

/// Host `host`'s balancer.toml: the same VIPs, backends and hash seed as
/// every other host's; its own drain mark; with `hosts` (this one among
/// them), a `[sync]` section sharing new flows with the others.
fn config(lab: &Lab, host: usize, hosts: &[usize]) -> Result<String> {
    let drain_file = lab.scratch(&format!("lb{host}.drained"))?;
    let mut text = String::new();
    if !hosts.is_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        let key = lab.write_file("sync.key", "the secret of the lab's balancer hosts\n")?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let at = |h: usize| format!("\"{}\"", SocketAddr::new(ecmp::host4(h).into(), SYNC_PORT));
        let peers: Vec<String> = hosts
            .iter()
            .filter(|h| **h != host)
            .map(|h| at(*h))
            .collect();
        text.push_str(&format!(
            "[sync]\nlisten = {}\npeers = [{}]\nkey_file = \"{}\"\n\n",
            at(host),
            peers.join(", "),
            key.display()
        ));
    }
    text.push_str(&format!(
        "[daemon]\nmetrics_listen = \"\"\n\n\
         [datapath]\ninterfaces = [\"eth0\"]\nhash_seed = {HASH_SEED}\nflow_table_size = 65536\n\n\
         [announce]\ntable = {ANNOUNCE_TABLE}\nannounce_delay = \"{ANNOUNCE_DELAY}\"\n\
         withdraw_grace = \"1s\"\ndrain_file = \"{}\"\n",
        drain_file.display()
    ));
    for family in FAMILIES {
        for (service, address, port, scheduler) in [
            ("web", family.front(), 80, "maglev"),
            ("chat", family.front(), 81, "maglev"),
            ("lc", family.front(), 82, "least-connections"),
            ("api", family.api_address(), 80, "maglev"),
        ] {
            text.push_str(&format!(
                "\n[[vip]]\nname = \"{}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"tcp\"\n\
                 scheduler = \"{scheduler}\"\n{CHECK}",
                family.vip(service)
            ));
            for i in 0..BACKENDS {
                let backend = if service == "api" {
                    family.api_backend(i)
                } else {
                    family.backend(i)
                };
                text.push_str(&format!("[[vip.backend]]\naddress = \"{backend}\"\n"));
            }
        }
    }
    Ok(text)
}

/// A VIP's counters on one host, from `vip list`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub new_flows: u64,
}

impl Counters {
    fn of(row: &serde_json::Value) -> Counters {
        Counters {
            packets: row["packets"].as_u64().unwrap_or(0),
            new_flows: row["new_flows"].as_u64().unwrap_or(0),
        }
    }

    /// What each counter of `after` gained since `before` (keys of `after`;
    /// one missing from `before` counts from 0).
    pub fn delta<K: Ord + Clone>(
        before: &BTreeMap<K, Counters>,
        after: &BTreeMap<K, Counters>,
    ) -> BTreeMap<K, Counters> {
        after
            .iter()
            .map(|(key, a)| {
                let b = before.get(key).copied().unwrap_or_default();
                (
                    key.clone(),
                    Counters {
                        packets: a.packets.saturating_sub(b.packets),
                        new_flows: a.new_flows.saturating_sub(b.new_flows),
                    },
                )
            })
            .collect()
    }
}

/// Connections held open to `chat` in one family, and which host carried
/// them when they were opened.
pub struct Held {
    pub family: Family,
    /// The VIP they go to.
    pub service: String,
    pub conns: Vec<EchoConnection>,
    /// Per host, the held connections it took (its `chat` new flows).
    pub via: BTreeMap<usize, usize>,
}

impl Held {
    /// Opens `n` connections to `family`'s `chat` and checks that each
    /// echoes; the hosts' counters say which host took each.
    pub fn open(site: &Site, family: Family, n: usize) -> Result<Held> {
        Held::open_to(site, family, "chat", family.chat(), n)
    }

    /// Opens `n` connections to `family`'s `service` at `addr`, as
    /// [`Held::open`] does to `chat`.
    pub fn open_to(
        site: &Site,
        family: Family,
        service: &str,
        addr: SocketAddr,
        n: usize,
    ) -> Result<Held> {
        let vip = family.vip(service);
        let before = site.counters(&vip)?;
        let mut conns = Vec::new();
        for _ in 0..n {
            let mut conn = EchoConnection::open(&site.ecmp.client, addr)?;
            conn.echo("hello")?;
            conns.push(conn);
        }
        let via: BTreeMap<usize, usize> = Counters::delta(&before, &site.counters(&vip)?)
            .into_iter()
            .map(|(host, c)| (host, c.new_flows as usize))
            .collect();
        let held = Held {
            family,
            service: vip,
            conns,
            via,
        };
        ensure!(
            held.via.values().sum::<usize>() == n,
            "the hosts counted other than {n} new flows for {n} held connections: {}",
            held.describe()
        );
        Ok(held)
    }

    /// [`HELD`] connections in each family, IPv4 first.
    pub fn open_both(site: &Site) -> Result<Vec<Held>> {
        FAMILIES
            .iter()
            .map(|f| Held::open(site, *f, HELD))
            .collect()
    }

    /// [`HELD`] connections to `lc` (least connections) in each family,
    /// IPv4 first.
    pub fn open_least_connections(site: &Site) -> Result<Vec<Held>> {
        FAMILIES
            .iter()
            .map(|f| Held::open_to(site, *f, "lc", f.lc(), HELD))
            .collect()
    }

    /// Which hosts took the connections and which backends hold them.
    pub fn describe(&self) -> String {
        let mut backends = BTreeMap::<&str, usize>::new();
        for c in &self.conns {
            *backends.entry(&c.backend).or_default() += 1;
        }
        format!(
            "{} held connections to {}: per host {:?}, per backend {backends:?}",
            self.family.label(),
            self.service,
            self.via
        )
    }

    /// Echoes on every connection; the ones that failed, with why.
    pub fn echo_all(&mut self, text: &str) -> Result<Vec<(usize, String)>> {
        Ok(self
            .conns
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| {
                c.echo(text)
                    .err()
                    .map(|e| (i, format!("{} ({}): {e:#}", i, c.backend)))
            })
            .collect())
    }
}

/// Echoes on every connection of `held`; fails naming the broken ones,
/// `when` saying what the test had just done.
pub fn echo_everywhere(held: &mut [Held], when: &str) -> Result<()> {
    for h in held {
        let broken = h.echo_all(when)?;
        ensure!(
            broken.is_empty(),
            "{when}: {} of the {}: {broken:?}",
            broken.len(),
            h.describe()
        );
    }
    Ok(())
}

/// A steady load of new connections in each family ([`PacedLoad`]).
pub struct Loads(Vec<(Family, PacedLoad)>);

impl Loads {
    /// Starts one load per family, to the address `to` gives.
    pub fn start(site: &Site, to: fn(Family) -> SocketAddr) -> Loads {
        Loads(
            FAMILIES
                .iter()
                .map(|f| (*f, PacedLoad::start(&site.ecmp.client, to(*f), PACE)))
                .collect(),
        )
    }

    /// Stops the loads and returns every family's attempts.
    pub fn stop(self) -> Result<Vec<(Family, Vec<Attempt>)>> {
        self.0
            .into_iter()
            .map(|(f, load)| Ok((f, load.stop()?)))
            .collect()
    }

    /// Stops the loads; fails unless every attempt succeeded. Says how
    /// many there were, per family.
    pub fn stop_all_answered(self) -> Result<String> {
        let mut figures = Vec::new();
        let mut first_failure = None;
        for (family, attempts) in self.stop()? {
            let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
            figures.push(format!(
                "{}: {} of {} new connections failed",
                family.label(),
                failed.len(),
                attempts.len()
            ));
            if first_failure.is_none() {
                first_failure = failed.first().map(|a| format!("{:?}", a.outcome));
            }
        }
        let figures = figures.join(", ");
        ensure!(
            first_failure.is_none(),
            "{figures}; first failure: {}",
            first_failure.unwrap_or_default()
        );
        Ok(figures)
    }
}

/// What `wait` (a wait for routes, which times from its own start)
/// returns, timed from `since` instead: from the change it waits for the
/// effect of.
pub fn timed_from(
    since: Instant,
    wait: impl FnOnce() -> Result<Vec<Duration>>,
) -> Result<Vec<Duration>> {
    let offset = since.elapsed();
    Ok(wait()?.into_iter().map(|d| d + offset).collect())
}

/// Durations as whole milliseconds: `[252, 254]`.
pub fn ms(durations: &[Duration]) -> String {
    let all: Vec<String> = durations
        .iter()
        .map(|d| d.as_millis().to_string())
        .collect();
    format!("[{}] ms", all.join(", "))
}

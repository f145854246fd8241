//! `balancer decap`: the backend-side decapsulator (see
//! `balancer_common::decap`), loaded, told the host's addresses and the
//! GUE port, attached to a backend's interfaces and pinned so that it
//! outlives the command; `--detach` takes it off again.
//!
//! Pins, under one directory (`/sys/fs/bpf/balancer-decap` by default):
//! `link-IFACE` for each interface (removing it detaches the program from
//! that interface) and the maps by name, for the counters.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode as AyaXdpMode},
    },
};
use balancer_common::{
    Addr,
    decap::{
        DECAP_ADDRS, DECAP_CONFIG, DECAP_GUE, DECAP_IPIP4, DECAP_IPIP6, DECAP_PASSED,
        DECAP_PROGRAM, DECAP_SLOTS, DECAP_STATS, DecapConfig, DecapCounters,
    },
    stats::PacketCount,
};

use crate::datapath::{AttachedMode, TestOutput, XdpMode, test_run_xdp};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-decap"));

/// GUE's UDP port when `--gue-port` is not given: the balancer's default
/// (`[datapath] gue_port`).
pub const DEFAULT_GUE_PORT: u16 = balancer_common::tunnel::DEFAULT_GUE_PORT;

/// Where `balancer decap` pins by default.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/balancer-decap";

/// The decapsulator, loaded.
pub struct Decapsulator {
    ebpf: Ebpf,
}

impl Decapsulator {
    /// Loads the program, decapsulating packets to `addresses` and GUE on
    /// UDP port `gue_port` (0: none).
    pub fn load(addresses: &[IpAddr], gue_port: u16) -> Result<Decapsulator> {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .context("cannot load the decapsulator")?;
        let config = DecapConfig {
            gue_port: gue_port.to_be(),
            ..DecapConfig::default()
        };
        let mut array: Array<_, DecapConfig> = Array::try_from(map(&mut ebpf, DECAP_CONFIG)?)?;
        array.set(0, config, 0)?;
        let mut addrs: HashMap<_, Addr, u32> = HashMap::try_from(map(&mut ebpf, DECAP_ADDRS)?)?;
        for address in addresses {
            addrs
                .insert(crate::plan::addr(*address), 1, 0)
                .with_context(|| format!("cannot add address {address}"))?;
        }
        let prog: &mut Xdp = ebpf
            .program_mut(DECAP_PROGRAM)
            .context("the object has no decapsulator")?
            .try_into()?;
        prog.load().context("the kernel refused the decapsulator")?;
        Ok(Decapsulator { ebpf })
    }

    fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(DECAP_PROGRAM)
            .context("the object has no decapsulator")?
            .try_into()?)
    }

    /// Runs the program once on `packet` (BPF_PROG_TEST_RUN).
    pub fn test_run(&mut self, packet: &[u8]) -> Result<TestOutput> {
        Ok(test_run_xdp(self.program()?, packet, 0)?)
    }

    /// Attaches the program to `interface` in `mode` and pins the link in
    /// `dir`; a decapsulator already pinned there for the interface is
    /// replaced in place (one atomic update). Returns the mode it runs in.
    pub fn attach(&mut self, interface: &str, mode: XdpMode, dir: &Path) -> Result<AttachedMode> {
        let path = link_path(dir, interface);
        let prog = self.program()?;
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))?;
            prog.attach_to_link(link)
                .with_context(|| format!("cannot replace the decapsulator of {interface}"))?;
            return Ok(AttachedMode::Adopted);
        }
        let modes: &[(AttachedMode, AyaXdpMode)] = match mode {
            XdpMode::Native => &[(AttachedMode::Native, AyaXdpMode::Driver)],
            XdpMode::Generic => &[(AttachedMode::Generic, AyaXdpMode::Skb)],
            XdpMode::Auto => &[
                (AttachedMode::Native, AyaXdpMode::Driver),
                (AttachedMode::Generic, AyaXdpMode::Skb),
            ],
        };
        let mut refused = Vec::new();
        for (attached, flags) in modes {
            match prog.attach(interface, *flags) {
                Ok(id) => {
                    let link = FdLink::try_from(prog.take_link(id)?)?;
                    link.pin(&path)
                        .with_context(|| format!("cannot pin {}", path.display()))?;
                    return Ok(*attached);
                }
                Err(err) => refused.push(format!("{attached:?}: {err}")),
            }
        }
        bail!(
            "cannot attach the decapsulator to {interface}: {}",
            refused.join("; ")
        )
    }

    /// Pins the maps in `dir`, for the counters (an earlier set is
    /// replaced).
    pub fn pin_maps(&self, dir: &Path) -> Result<()> {
        for name in [DECAP_ADDRS, DECAP_CONFIG, DECAP_STATS] {
            let path = dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            self.ebpf
                .map(name)
                .with_context(|| format!("the object has no map {name}"))?
                .pin(&path)
                .with_context(|| format!("cannot pin {}", path.display()))?;
        }
        Ok(())
    }

    /// What the program did so far.
    pub fn counters(&self) -> Result<DecapCounters> {
        let map = self
            .ebpf
            .map(DECAP_STATS)
            .context("the object has no stats map")?;
        counters(PerCpuArray::try_from(map)?)
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("the decapsulator has no map {name}"))
}

/// The interfaces whose link is pinned in `dir` (none when it does not
/// exist).
pub fn pinned_interfaces(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("link-")
                .map(str::to_owned)
        })
        .collect()
}

/// The pin of the link of `interface` in `dir`.
fn link_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link-{interface}"))
}

/// The counters of a `decap_stats` map, summed over CPUs.
fn counters<T: std::borrow::Borrow<MapData>>(
    map: PerCpuArray<T, PacketCount>,
) -> Result<DecapCounters> {
    let slot = |i: u32| -> Result<PacketCount> {
        let values = map.get(&i, 0)?;
        Ok(values
            .iter()
            .fold(PacketCount::default(), |acc, c| acc.merged(*c)))
    };
    debug_assert_eq!(DECAP_SLOTS, 4);
    Ok(DecapCounters {
        ipip4: slot(DECAP_IPIP4)?,
        ipip6: slot(DECAP_IPIP6)?,
        gue: slot(DECAP_GUE)?,
        passed: slot(DECAP_PASSED)?,
    })
}

/// The counters of the decapsulator pinned in `dir`.
pub fn pinned_counters(dir: &Path) -> Result<DecapCounters> {
    let path = dir.join(DECAP_STATS);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("no decapsulator pinned in {}", dir.display()))?;
    counters(PerCpuArray::try_from(Map::PerCpuArray(data))?)
}

/// Detaches the decapsulator pinned in `dir` from every interface (or
/// from `only`) and, when none is left, removes its pins.
pub fn detach(dir: &Path, only: &[String]) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("no decapsulator pinned in {}", dir.display()))?;
    let mut detached = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(interface) = name.strip_prefix("link-") else {
            continue;
        };
        if !only.is_empty() && !only.iter().any(|i| i == interface) {
            continue;
        }
        // Off the interface at once: the pin's removal alone lets the link
        // go only after an RCU grace period.
        if let Err(err) = crate::datapath::pin::detach_link(&entry.path()) {
            // Removing the pin still detaches it, a moment later.
            tracing::warn!(interface, error = %err, "cannot detach the decapsulator at once");
        }
        std::fs::remove_file(entry.path())?;
        detached.push(interface.to_owned());
    }
    let links_left = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("link-"));
    if !links_left {
        // Only what `balancer decap` pinned: a wrong --pin-path must not
        // take anything else with it.
        for name in [DECAP_ADDRS, DECAP_CONFIG, DECAP_STATS] {
            let path = dir.join(name);
            if path.exists() {
                std::fs::remove_file(path)?;
            }
        }
        std::fs::remove_dir(dir).with_context(|| {
            format!("{} holds more than the decapsulator's pins", dir.display())
        })?;
    }
    Ok(detached)
}

/// The addresses of `interfaces`, IPv4 and IPv6 (link-local ones left
/// out: no tunnel is addressed to them).
pub fn interface_addresses(interfaces: &[String]) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs()? {
        if !interfaces.contains(&ifaddr.interface_name) {
            continue;
        }
        let Some(address) = ifaddr.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let ip = v6.ip();
            if ip.is_unicast_link_local() {
                continue;
            }
            IpAddr::V6(ip)
        } else {
            continue;
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

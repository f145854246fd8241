//! A set of namespaces and the links between them, removed as one.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result};
use balancer::datapath::{Datapath, XdpMode};

use crate::{Netns, cmd, sweep};

/// Settings applied to both ends of a new veth pair.
///
/// The defaults are what XDP on veth needs on these kernels (see the
/// environment notes): a frame sent with XDP_TX or XDP_REDIRECT into a veth
/// is only received if the receiving end has NAPI on, which only an
/// off-then-on GRO toggle enables; and packets made by a local socket carry
/// partial checksums that are lost once XDP turns them into frames, so
/// senders must not offload the transmit checksum.
#[derive(Clone, Copy, Debug)]
pub struct VethOptions {
    /// Turn off transmit checksum offload (`ethtool -K IF tx off`).
    pub tx_checksum_off: bool,
    /// Enable NAPI through a GRO off/on toggle.
    pub gro_napi: bool,
    /// MTU of both ends; `None` keeps the default (1500).
    pub mtu: Option<u32>,
}

impl Default for VethOptions {
    fn default() -> Self {
        VethOptions {
            tx_checksum_off: true,
            gro_napi: true,
            mtu: None,
        }
    }
}

/// What a lab must remove: its namespaces, its scratch directory and its
/// bpffs pin directory.
#[derive(Debug, Default)]
struct Resources {
    namespaces: Vec<String>,
    dir: Option<std::path::PathBuf>,
    pins: Option<std::path::PathBuf>,
}

/// Removes a lab's namespaces from another thread (used when a test times
/// out while its body still holds the lab). Idempotent.
#[derive(Clone, Debug)]
pub struct TeardownHandle(Arc<Mutex<Resources>>);

impl TeardownHandle {
    /// Kills every process inside the lab's namespaces and deletes them.
    pub fn run(&self) {
        let (namespaces, dir, pins) = {
            let mut resources = self.lock();
            (
                std::mem::take(&mut resources.namespaces),
                resources.dir.take(),
                resources.pins.take(),
            )
        };
        for name in namespaces.iter().rev() {
            if let Err(err) = sweep::remove_namespace(name) {
                eprintln!("warning: {err:#}");
            }
        }
        if let Some(pins) = pins {
            sweep::unmount(&pins);
        }
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Resources> {
        // A panic while holding the lock leaves a valid list behind.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A test topology: namespaces joined by veth pairs and bridges. Everything
/// it created is removed when it is dropped, processes inside included.
pub struct Lab {
    /// Unique prefix of this lab's namespace names.
    prefix: String,
    resources: TeardownHandle,
    /// Pass-through XDP programs on receiving veth ends, detached with the
    /// lab.
    pass_programs: Mutex<Vec<Datapath>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("prefix", &self.prefix).finish()
    }
}

impl Lab {
    /// A new, empty lab. `label` only makes the names readable; uniqueness
    /// comes from the process id and a per-process counter. Namespaces left
    /// behind by dead processes are swept first.
    pub fn new(label: &str) -> Result<Lab> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep::sweep_stale_once();
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        Ok(Lab {
            prefix: format!("{}{}-{seq}-{label}", sweep::NAME_PREFIX, std::process::id()),
            resources: TeardownHandle(Arc::default()),
            pass_programs: Mutex::new(Vec::new()),
        })
    }

    /// A handle that tears the lab down from another thread.
    pub fn teardown_handle(&self) -> TeardownHandle {
        self.resources.clone()
    }

    /// Creates a namespace for the host `role` ("client", "lb", ...), with
    /// loopback up and IPv6 duplicate address detection off for the
    /// interfaces made in it.
    pub fn netns(&self, role: &str) -> Result<Netns> {
        let name = format!("{}-{role}", self.prefix);
        // Registered before creation, so a half-made namespace is removed too.
        self.resources.lock().namespaces.push(name.clone());
        let ns = Netns::create(name)?;
        // A new interface's link-local address is tentative for about a
        // second while DAD runs, and neighbour discovery waits for it: the
        // first IPv6 packets of a fresh topology were held a second (a TCP
        // SYN retransmitted). Nothing else is on these links.
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        Ok(ns)
    }

    /// Creates a veth pair with end `a_if` in `a` and end `b_if` in `b`,
    /// applies `options` to both ends and brings them up.
    pub fn veth(
        &self,
        (a, a_if): (&Netns, &str),
        (b, b_if): (&Netns, &str),
        options: VethOptions,
    ) -> Result<()> {
        cmd::run(
            "ip",
            [
                "link",
                "add",
                a_if,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                b.name(),
            ],
        )
        .with_context(|| {
            format!(
                "cannot create veth {}:{a_if} <-> {}:{b_if}",
                a.name(),
                b.name()
            )
        })?;
        for (ns, interface) in [(a, a_if), (b, b_if)] {
            configure_veth_end(ns, interface, options)?;
        }
        Ok(())
    }

    /// Attaches a pass-through XDP program (the balancer's own program with
    /// no VIPs: everything passes) to `interface` in `ns`, natively. A veth
    /// end only takes in frames that its peer sends with XDP_TX or
    /// XDP_REDIRECT when it runs an XDP program itself.
    pub fn xdp_pass(&self, ns: &Netns, interface: &str) -> Result<()> {
        let datapath = ns.run(|| -> Result<Datapath> {
            let mut datapath = Datapath::load()?;
            datapath.attach(interface, XdpMode::Native)?;
            Ok(datapath)
        })??;
        self.pass_programs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(datapath);
        Ok(())
    }

    /// Writes `contents` to file `name` in the lab's scratch directory
    /// (removed with the lab) and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<std::path::PathBuf> {
        let path = self.scratch(name)?;
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The lab's own directory for a daemon's pinned state: a bpffs
    /// mounted in the lab's scratch directory (in the test's mount
    /// namespace, so that daemons started with `ip netns exec`, which gets a
    /// mount namespace of its own copied from it, see the same pins across
    /// restarts). Unmounted and removed with the lab.
    pub fn pin_dir(&self) -> Result<std::path::PathBuf> {
        self.pin_dir_named("balancer")
    }

    /// A pin directory `name` in the lab's bpffs ([`Lab::pin_dir`] is
    /// `balancer`): one per daemon where a lab runs several (balancer
    /// hosts, backends' decapsulators). Not created: the daemon makes it.
    pub fn pin_dir_named(&self, name: &str) -> Result<std::path::PathBuf> {
        let mount = self.scratch("bpf")?;
        let mut resources = self.resources.lock();
        if resources.pins.is_none() {
            std::fs::create_dir_all(&mount)?;
            nix::mount::mount(
                Some("bpf"),
                &mount,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .with_context(|| format!("cannot mount bpffs on {}", mount.display()))?;
            resources.pins = Some(mount.clone());
        }
        Ok(mount.join(name))
    }

    /// Runs `balancer decap ARGS` on backend `ns`, pinned in the lab's
    /// bpffs under `name` (one per backend), so that `--detach` finds it.
    pub fn decap(&self, ns: &Netns, name: &str, args: &[&str]) -> Result<()> {
        let dir = self.pin_dir_named(name)?;
        let out = ns
            .command(crate::balancer_bin()?)
            .arg("decap")
            .args(args)
            .arg("--pin-path")
            .arg(&dir)
            .output()
            .context("cannot run balancer decap")?;
        anyhow::ensure!(
            out.status.success(),
            "balancer decap {args:?} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The path of `name` in the lab's scratch directory (created on first
    /// use, removed with the lab).
    pub fn scratch(&self, name: &str) -> Result<std::path::PathBuf> {
        let dir = {
            let mut resources = self.resources.lock();
            resources
                .dir
                .get_or_insert_with(|| std::env::temp_dir().join(&self.prefix))
                .clone()
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir.join(name))
    }

    /// Creates a bridge `name` in `ns`, enslaves `ports` (interfaces already
    /// in `ns`) and brings it up. The bridge forwards at once: no STP.
    pub fn bridge(&self, ns: &Netns, name: &str, ports: &[&str]) -> Result<()> {
        ns.ip([
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        for port in ports {
            ns.ip(["link", "set", port, "master", name])?;
        }
        ns.ip(["link", "set", name, "up"]).map(drop)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.resources.run();
    }
}

fn configure_veth_end(ns: &Netns, interface: &str, options: VethOptions) -> Result<()> {
    if let Some(mtu) = options.mtu {
        ns.ip(["link", "set", interface, "mtu", &mtu.to_string()])?;
    }
    if options.tx_checksum_off {
        ns.exec("ethtool", ["-K", interface, "tx", "off"])?;
    }
    if options.gro_napi {
        ns.exec("ethtool", ["-K", interface, "gro", "off"])?;
        ns.exec("ethtool", ["-K", interface, "gro", "on"])?;
    }
    ns.ip(["link", "set", interface, "up"]).map(drop)
}

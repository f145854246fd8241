//! A named network namespace (`ip netns`), and ways to act inside it.

use std::{ffi::OsStr, fs::File, path::PathBuf, process::Command, thread};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

use crate::cmd;

/// A handle on a network namespace created by a [`crate::Lab`].
///
/// The handle is cheap to clone; the lab that made the namespace removes
/// it. Every method acts on this namespace only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub(crate) fn create(name: String) -> Result<Netns> {
        cmd::run("ip", ["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount, which `setns` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME args...` and returns its stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        cmd::run("ip", all)
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments and spawn it as usual,
    /// or hand it to [`crate::Process::start`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `program args...` inside the namespace to completion and
    /// returns its stdout, failing unless it exits with status 0.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(program);
        command.args(args);
        let output = cmd::output(&mut command)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `f` on a thread that has entered this namespace, and returns
    /// what it returns. Sockets and BPF links made inside `f` stay in the
    /// namespace after it returns and can be used from any thread.
    /// A panic in `f` is passed on to the caller.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        let file = File::open(&path)
            .with_context(|| format!("cannot open namespace {}", path.display()))?;
        thread::scope(|scope| {
            let worker = scope.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| anyhow!("setns into {} failed: {errno}", path.display()))?;
                Ok(f())
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets a sysctl of this namespace, such as `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("cannot set {key}={value} in namespace {}", self.name))
    }

    /// Adds an IPv4 or IPv6 address (`"10.0.0.1/24"`, `"fd00::1/64"`) to
    /// `interface`. IPv6 addresses skip duplicate address detection, so they
    /// are usable at once.
    pub fn add_address(&self, interface: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", interface];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(args).map(drop)
    }

    /// Adds a route, for example `("default", "10.0.0.1")` or
    /// `("fd01::/64", "fd00::1")`.
    pub fn add_route(&self, destination: &str, via: &str) -> Result<()> {
        let family = if via.contains(':') { "-6" } else { "-4" };
        self.ip([family, "route", "add", destination, "via", via])
            .map(drop)
    }

    /// Process ids of every process whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = cmd::run("ip", ["netns", "pids", &self.name])?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// The MAC address of `interface`, from `ip link` (/sys/class/net would
    /// show the namespace sysfs was mounted in, not this one).
    pub fn mac(&self, interface: &str) -> Result<[u8; 6]> {
        let out = self.ip(["-o", "link", "show", "dev", interface])?;
        let text = out
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .with_context(|| format!("no MAC address for {interface} in: {out}"))?;
        let mut mac = [0u8; 6];
        let mut bytes = text.split(':');
        for byte in &mut mac {
            let hex = bytes
                .next()
                .with_context(|| format!("MAC address {text}"))?;
            *byte = u8::from_str_radix(hex, 16).with_context(|| format!("MAC address {text}"))?;
        }
        Ok(mac)
    }

    /// Counter `field` of protocol `group` (`Udp`, `Tcp`, `Ip`...) of this
    /// namespace, from `/proc/net/snmp`: a line of names, then a line of
    /// values.
    pub fn snmp(&self, group: &str, field: &str) -> Result<u64> {
        let snmp = self.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
        let prefix = format!("{group}: ");
        let mut lines = snmp.lines().filter(|line| line.starts_with(&prefix));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            anyhow::bail!("no {group} lines in /proc/net/snmp: {snmp}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == field)
            .with_context(|| format!("no {group} {field} in /proc/net/snmp"))?
            .1
            .parse()
            .with_context(|| format!("{group} {field} is not a number"))
    }

    /// The XDP attachment of `interface` as `ip link` reports it:
    /// `Some("xdp")` (native), `Some("xdpgeneric")`, or `None`.
    pub fn xdp_attachment(&self, interface: &str) -> Result<Option<String>> {
        let out = self.ip(["-details", "link", "show", "dev", interface])?;
        let first_line = out.lines().next().unwrap_or_default();
        Ok(first_line
            .split_whitespace()
            .find(|word| {
                matches!(
                    *word,
                    "xdp" | "xdpgeneric" | "xdpdrv" | "xdpoffload" | "xdpmulti"
                )
            })
            .map(str::to_owned))
    }
}

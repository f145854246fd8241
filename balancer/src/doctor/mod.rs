//! `balancer doctor`: checks this host before the balancer runs on it,
//! and prints each check as ok, warn or fail, with the fix in one line.
//!
//! The checks follow the traps docs/operations.md describes: a kernel
//! that lacks what the program needs, pins that would not outlive the
//! daemon, interfaces that are missing, held by another program, or veths
//! that lose what XDP sends them, tunnels that do not fit the path, maps
//! that do not fit the memory cgroup, a control socket that cannot be
//! made, and announcements nobody carries to the routers. With
//! `--backend`, the host is checked as a backend of the configuration's
//! VIPs instead ([`checks::backend_host`]).
//!
//! Facts are gathered ([`facts`]) apart from the decisions ([`checks`]),
//! which are pure and tested as tables; doctor changes nothing on the
//! host (the kernel probes create maps and load the program, then free
//! them).

pub mod checks;
pub mod facts;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

pub use checks::{Finding, Level};
use checks::{backend_host, bpffs, interfaces, kernel, memory, nat, routes, sockets};

use crate::config::{self, Config, MapMemory};

/// What `balancer doctor` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--config`; the default file when it exists, without it.
    pub config: Option<PathBuf>,
    /// The global `--socket`, which replaces `[daemon] control_socket` as
    /// it does for `balancer run`.
    pub socket: Option<PathBuf>,
    /// BIRD's control socket.
    pub bird_socket: PathBuf,
    /// Check this host as a backend of the configuration.
    pub backend: bool,
}

/// The configuration to check: the file named, else the default one when
/// it exists, else none (the host alone is checked). An invalid file is
/// an error, with every problem printed first.
fn load(path: Option<&Path>) -> Result<Option<(Config, String)>> {
    let default = Path::new(config::DEFAULT_PATH);
    let path = match path {
        Some(path) => path,
        None if default.exists() => default,
        None => return Ok(None),
    };
    let (config, _warnings) = config::load_with_warnings(path).map_err(|errors| {
        eprintln!("{errors}");
        anyhow::anyhow!(
            "{} is not a valid configuration ({} problems): `balancer check-config` says the same",
            path.display(),
            errors.errors.len()
        )
    })?;
    Ok(Some((config, path.display().to_string())))
}

/// Runs every check, prints the findings (a table, or with `json` an
/// array of objects), and fails when any check failed.
pub fn run(options: &Options, json: bool) -> Result<()> {
    let loaded = load(options.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let (config, file) = match loaded {
        Some((config, file)) => (config, Some(file)),
        None => (Config::default(), None),
    };
    let findings = runtime.block_on(examine(&config, file.as_deref(), options))?;
    if json {
        println!("{}", serde_json::to_string(&findings)?);
    } else {
        print!("{}", render(&findings));
        match &file {
            Some(file) => println!("checked with {file}"),
            None => println!(
                "checked the host only: no --config, and {} does not exist",
                config::DEFAULT_PATH
            ),
        }
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} {} failed",
        if failed == 1 { "check" } else { "checks" }
    );
    Ok(())
}

/// Every finding, in the order the report lists them.
async fn examine(config: &Config, file: Option<&str>, options: &Options) -> Result<Vec<Finding>> {
    let nl = facts::netlink::Netlink::connect().context("cannot open a netlink connection")?;
    if options.backend {
        let Some(file) = file else {
            anyhow::bail!(
                "--backend checks this host against the VIPs of a configuration: give --config (or create {})",
                config::DEFAULT_PATH
            );
        };
        return Ok(match facts::local_backends(config, &nl).await {
            Ok(local) => backend_host::decide(&local, file),
            Err(why) => vec![unreadable("backend", file, &why)],
        });
    }
    let mut out = Vec::new();
    // Memory first: where there is too little for the verifier, loading
    // the program would get doctor killed instead of telling anything.
    let maps = MapMemory::of(config);
    let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
    let memory = memory::Facts {
        maps: maps.total() + MapMemory::small_maps(cpus),
        rings: maps.rings,
        cgroup: facts::cgroup::memory(),
        available: facts::cgroup::available(),
    };
    let program = match memory::tightest(&memory) {
        Some((bound, room, _)) if room < memory::PROBE_MEMORY => kernel::Load::NotTried(format!(
            "{bound} has {} left, less than the {} loading it takes",
            checks::mib(room),
            checks::mib(memory::PROBE_MEMORY)
        )),
        _ => facts::bpf::program_load(),
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    out.push(kernel::version(&release, program.loads()));
    out.push(kernel::btf(&facts::bpf::btf(), program.loads()));
    out.extend(kernel::map_types(&facts::bpf::map_probes()));
    out.push(kernel::program(&program));
    out.push(bpffs::decide(&facts::mounts::bpffs(
        &config.daemon.pin_path,
    )));
    out.push(memory::decide(&memory));

    let socket = options
        .socket
        .clone()
        .unwrap_or_else(|| config.daemon.control_socket.clone());
    out.extend(sockets::control_socket(&facts::sockets::control(&socket)));

    if file.is_some() {
        out.extend(network(config, &nl).await);
    }
    if let Some(announce) = &config.announce {
        out.push(sockets::bgp(&sockets::BgpFacts {
            table: *announce.table.get_ref(),
            socket: options.bird_socket.clone(),
            bird: facts::sockets::bird(&options.bird_socket),
        }));
    }
    Ok(out)
}

/// The interfaces, the backends' routes and the neighbour table.
async fn network(config: &Config, nl: &facts::netlink::Netlink) -> Vec<Finding> {
    let mut out = Vec::new();
    if config.datapath.interfaces.is_empty() {
        out.push(Finding::warn(
            "interface",
            "[datapath] interfaces",
            "no interface configured: `balancer run` refuses to start without --interface",
            "list the interfaces VIP traffic arrives on in [datapath] interfaces",
        ));
    }
    let mut attached = BTreeSet::new();
    let mut ingress_mtu = None;
    for name in &config.datapath.interfaces {
        let name = name.get_ref();
        match facts::interface(nl, name, config.datapath.xdp_mode, &config.daemon.pin_path).await {
            Ok(facts) => {
                if let Some(link) = &facts.link {
                    attached.insert(link.ifindex);
                    ingress_mtu = ingress_mtu.max(Some(link.mtu));
                }
                out.extend(interfaces::decide(&facts));
            }
            Err(why) => out.push(unreadable("interface", name, &why)),
        }
    }
    match facts::backend_routes(config, nl, &attached).await {
        Ok(backends) => {
            out.extend(routes::backends(&backends, attached.len()));
            out.extend(routes::tunnel_mtu(&backends, ingress_mtu));
        }
        Err(why) => out.push(unreadable("backend-route", "routes", &why)),
    }
    let (ipv4, ipv6) = facts::neighbours(config, nl).await;
    out.extend(routes::neighbour_table(ipv4, ipv6));
    let d = &config.datapath;
    let nat = config
        .vips
        .iter()
        .any(|v| v.get_ref().forwarding == config::Forwarding::Nat);
    if nat {
        let ours: BTreeSet<IpAddr> = nl
            .addresses()
            .await
            .map(|a| a.into_iter().map(|(address, _)| address).collect())
            .unwrap_or_default();
        let snat = d
            .snat_ipv4
            .iter()
            .map(|a| IpAddr::V4(*a.get_ref()))
            .chain(d.snat_ipv6.iter().map(|a| IpAddr::V6(*a.get_ref())));
        out.push(nat::decide(&nat::Facts {
            local: snat.filter(|a| ours.contains(a)).collect(),
            ports: *d.snat_ports.get_ref(),
            ephemeral: facts::ephemeral_ports(),
        }));
    }
    out
}

/// A check whose facts could not be read.
fn unreadable(check: &'static str, subject: &str, why: &str) -> Finding {
    Finding::warn(
        check,
        subject,
        format!("could not be checked: {why}"),
        "run doctor as root, in the network namespace the daemon runs in",
    )
}

/// The report: one line per finding (`LEVEL  CHECK  SUBJECT: message`),
/// its fix on the next, then the counts.
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{:<4}  {:<width$}  {}: {}\n",
            f.level.name(),
            f.check,
            f.subject,
            f.message
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("{:<4}  {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    out.push_str(&format!(
        "{} ok, {} warnings, {} failures\n",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_puts_each_fix_under_its_finding() {
        let findings = [
            Finding::ok("kernel", "6.18", "fine"),
            Finding::warn("tx-checksum", "eth0", "on", "ethtool -K veth1 tx off"),
            Finding::fail("interface", "eth9", "missing", "fix it"),
        ];
        // Level, check and subject in columns; the fix under the subject.
        let pad = " ".repeat(4 + 2 + "tx-checksum".len() + 2);
        assert_eq!(
            render(&findings),
            format!(
                "ok    kernel       6.18: fine\n\
                 warn  tx-checksum  eth0: on\n\
                 {pad}fix: ethtool -K veth1 tx off\n\
                 fail  interface    eth9: missing\n\
                 {pad}fix: fix it\n\
                 1 ok, 1 warnings, 1 failures\n"
            )
        );
    }

    #[test]
    fn json_findings_have_the_documented_fields() {
        let json = serde_json::to_value([
            Finding::warn("bgp", "/run/bird/bird.ctl", "missing", "run BIRD"),
            Finding::ok("kernel", "6.18", "fine"),
        ])
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"check": "bgp", "subject": "/run/bird/bird.ctl", "level": "warn", "message": "missing", "fix": "run BIRD"},
                {"check": "kernel", "subject": "6.18", "level": "ok", "message": "fine", "fix": null},
            ])
        );
    }
}

//! `balancer doctor` against real conditions: each warning and failure is
//! made to happen in namespaces (a veth whose peer takes no XDP frames
//! and offloads checksums, programs already attached, tunnels that do not
//! fit, bpffs and BTF hidden by a private mount namespace, a memory cgroup
//! too small, a control socket that cannot be made, BGP without BIRD or
//! without a session, a backend missing what its mode needs), and a clean
//! setup passes every check. Doctor runs in a namespace through `nsenter
//! --net`, which keeps the host's mount namespace, as a daemon started by
//! systemd has it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use balancer_tests::{
    Lab, Netns, VethOptions, balancer_bin,
    bird::{self, Bird},
    daemon,
    doctor::{HOST_CHECKS, MemoryCgroup, doctor, nsenter, run, unshared},
    netns_test,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A configuration with the lab's control socket and pin directory, and
/// `rest`.
fn config(lab: &Lab, name: &str, rest: &str) -> Result<PathBuf> {
    let text = format!(
        "[daemon]\ncontrol_socket = {:?}\npin_path = {:?}\nmetrics_listen = \"\"\n\n{rest}",
        lab.scratch("control.sock")?,
        lab.pin_dir()?,
    );
    lab.write_file(name, &text)
}

/// A balancer host `lb` with `eth0` toward a client (10.70.0.0/24) and
/// `eth1` toward a backend `be` (10.71.0.0/24 and fd71::/64) whose path
/// takes 1,520 bytes; both veths as the harness makes them (peers with
/// NAPI, no transmit checksum offload).
///
/// The harness turns GRO on before a veth is up, which gives the peer
/// NAPI but leaves the kernel's `ndo-xmit` flag of the end made first
/// (lb's eth1) unset, and the kernel refuses redirects into it: with
/// `redirectable`, GRO is turned off and on again on be's end while both
/// are up, as doctor's fix says, which sets it.
fn two_segments(lab: &Lab, redirectable: bool) -> Result<(Netns, Netns)> {
    let client = lab.netns("client")?;
    let lb = lab.netns("lb")?;
    let backend = lab.netns("be")?;
    lab.veth((&client, "eth0"), (&lb, "eth0"), VethOptions::default())?;
    let tall = VethOptions {
        mtu: Some(1520),
        ..VethOptions::default()
    };
    lab.veth((&lb, "eth1"), (&backend, "eth0"), tall)?;
    client.add_address("eth0", "10.70.0.2/24")?;
    lb.add_address("eth0", "10.70.0.1/24")?;
    lb.add_address("eth1", "10.71.0.1/24")?;
    lb.add_address("eth1", "fd71::1/64")?;
    backend.add_address("eth0", "10.71.0.11/24")?;
    backend.add_address("eth0", "fd71::11/64")?;
    if redirectable {
        toggle_gro(&backend, "eth0")?;
    }
    Ok((lb, backend))
}

/// GRO off and on on `interface` of `ns`, while it is up.
fn toggle_gro(ns: &Netns, interface: &str) -> Result<()> {
    ns.exec("ethtool", ["-K", interface, "gro", "off"])?;
    ns.exec("ethtool", ["-K", interface, "gro", "on"]).map(drop)
}

/// A VIP `name` at `address`:80/tcp with `forwarding` to `backends`, and
/// no health check (none of these tests needs one).
fn vip(name: &str, address: &str, forwarding: &str, backends: &[&str]) -> String {
    let mut text = format!(
        "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = 80\nprotocol = \"tcp\"\nforwarding = \"{forwarding}\"\n[vip.health_check]\nkind = \"none\"\n"
    );
    for backend in backends {
        text.push_str(&format!("[[vip.backend]]\naddress = \"{backend}\"\n"));
    }
    text
}

#[test]
fn a_clean_host_passes_every_check_with_and_without_its_daemon() {
    netns_test("doctor_clean", TIMEOUT, |lab| {
        let (lb, backend) = two_segments(lab, false)?;
        let body = format!(
            "[datapath]\ninterfaces = [\"eth0\"]\n\n{}{}",
            vip("web", "192.0.2.10", "dsr", &["10.71.0.11"]),
            vip("tun", "192.0.2.11", "ipip", &["10.71.0.11"]),
        );
        let file = config(lab, "clean.toml", &body)?;
        // The backend is behind eth1, where frames are redirected: the
        // kernel takes none until the peer's GRO is turned on while up.
        let stale = doctor(&lb, &[OsStr::new("--config"), file.as_os_str()])?;
        let fix = stale.expect(
            "backend-route",
            "web 10.71.0.11",
            "warn",
            "reached through eth1, which takes no redirected frames",
        )?;
        ensure!(
            fix.contains("turn GRO off and on on its peer while both ends are up"),
            "{fix}"
        );
        ensure!(stale.success, "warnings alone exit 0");
        toggle_gro(&backend, "eth0")?;
        let before = doctor(&lb, &[OsStr::new("--config"), file.as_os_str()])?;
        ensure!(
            before.success && before.not_ok().is_empty(),
            "a clean host ({}): {}\n{}",
            before.status,
            serde_json::to_string_pretty(&before.not_ok())?,
            before.stderr
        );
        for check in HOST_CHECKS.into_iter().chain([
            "interface",
            "native-xdp",
            "xdp-attached",
            "veth-peer",
            "tx-checksum",
            "backend-route",
            "tunnel-mtu",
            "neighbour-table",
        ]) {
            ensure!(
                before.findings.iter().any(|f| f["check"] == check),
                "no {check} finding: {:#?}",
                before.findings
            );
        }
        before.expect(
            "tunnel-mtu",
            "tunnelled",
            "ok",
            "1500 bytes fit every tunnel",
        )?;
        before.expect(
            "control-socket",
            "control.sock",
            "ok",
            "exists and is writable",
        )?;

        // The same host with its daemon running: still clean, and doctor
        // says so.
        let daemon = daemon::start(lab, &lb, [OsStr::new("--config"), file.as_os_str()])?;
        let during = doctor(&lb, &[OsStr::new("--config"), file.as_os_str()])?;
        ensure!(
            during.success && during.not_ok().is_empty(),
            "with the daemon: {:#?}",
            during.not_ok()
        );
        during.expect(
            "control-socket",
            "control.sock",
            "ok",
            &format!(
                "a daemon is running (pid {}) and answers on it",
                daemon.pid()
            ),
        )?;
        during.expect(
            "xdp-attached",
            "eth0",
            "ok",
            "runs through the link pinned here: the daemon adopts it",
        )?;

        // The table for people: the counts, and status 0.
        let mut human = nsenter(&lb)?;
        human.arg("doctor").arg("--config").arg(&file);
        let out = human.output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success()
                && text.contains(" 0 warnings, 0 failures\n")
                && text.contains(&format!("checked with {}", file.display())),
            "{text}"
        );
        Ok(())
    });
}

#[test]
fn veth_peers_that_lose_xdp_frames_or_offload_checksums_are_warned_with_a_fix_that_works() {
    netns_test("doctor_veth", TIMEOUT, |lab| {
        let lb = lab.netns("lb")?;
        let client = lab.netns("client")?;
        let raw = VethOptions {
            tx_checksum_off: false,
            gro_napi: false,
            mtu: None,
        };
        lab.veth((&client, "eth0"), (&lb, "eth0"), raw)?;
        // A pair inside lb: a peer in the same namespace.
        lb.ip(["link", "add", "va", "type", "veth", "peer", "name", "vb"])?;
        lb.ip(["link", "set", "va", "up"])?;
        lb.ip(["link", "set", "vb", "up"])?;
        let file = config(
            lab,
            "veth.toml",
            "[datapath]\ninterfaces = [\"eth0\", \"va\"]\n",
        )?;
        let args = [OsStr::new("--config"), file.as_os_str()];
        let report = doctor(&lb, &args)?;
        ensure!(report.success, "warnings alone exit 0: {}", report.stderr);
        let peer = format!("eth0 (in namespace {})", client.name());
        let napi = report.expect(
            "veth-peer",
            "eth0",
            "warn",
            &format!("the peer {peer} has neither an XDP program nor NAPI"),
        )?;
        let tx = report.expect(
            "tx-checksum",
            "eth0",
            "warn",
            &format!("the peer {peer} offloads transmit checksums"),
        )?;
        ensure!(
            tx == format!("ip netns exec {} ethtool -K eth0 tx off", client.name()),
            "{tx}"
        );
        let local_tx = report.expect("tx-checksum", "va", "warn", "the peer vb offloads")?;
        ensure!(local_tx == "ethtool -K vb tx off", "{local_tx}");
        report.expect("veth-peer", "va", "warn", "the peer vb has neither")?;

        // The fixes, run as printed (the part after "enable its NAPI: "),
        // clear the warnings.
        let gro = napi
            .split_once("enable its NAPI: ")
            .map(|(_, commands)| commands.to_owned())
            .with_context(|| format!("no commands in {napi:?}"))?;
        for script in [gro, tx] {
            let out = Command::new("sh").arg("-c").arg(&script).output()?;
            ensure!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let fixed = doctor(&lb, &args)?;
        fixed.expect(
            "veth-peer",
            "eth0",
            "ok",
            "takes frames sent back with XDP_TX",
        )?;
        fixed.expect("tx-checksum", "eth0", "ok", "completes checksums itself")?;
        // An XDP program on the peer does as well as NAPI.
        lab.xdp_pass(&lb, "vb")?;
        doctor(&lb, &args)?.expect("veth-peer", "va", "ok", "the peer vb takes frames")?;
        Ok(())
    });
}

#[test]
fn interfaces_held_by_other_programs_or_missing_fail() {
    netns_test("doctor_attached", TIMEOUT, |lab| {
        let lb = lab.netns("lb")?;
        for (end, peer) in [("d0", "d1"), ("p0", "p1"), ("f0", "f1")] {
            lb.ip(["link", "add", end, "type", "veth", "peer", "name", peer])?;
            lb.ip(["link", "set", end, "up"])?;
            lb.ip(["link", "set", peer, "up"])?;
        }
        // The decapsulator, the balancer's program without this pin
        // directory's link, and a program of another project (the
        // benchmarks' floor).
        lab.decap(
            &lb,
            "decap",
            &["--interface", "d0", "--address", "10.9.9.9"],
        )?;
        lab.xdp_pass(&lb, "p0")?;
        let floor = lb.run(|| -> Result<balancer_bench::Floor> {
            let mut floor = balancer_bench::Floor::load([2; 6], [4; 6])?;
            floor.attach("f0")?;
            Ok(floor)
        })??;
        let file = config(
            lab,
            "attached.toml",
            "[datapath]\ninterfaces = [\"d0\", \"p0\", \"f0\", \"nosuch0\"]\n",
        )?;
        let report = doctor(&lb, &[OsStr::new("--config"), file.as_os_str()])?;
        ensure!(!report.success, "failures exit non-zero");
        ensure!(
            report.stderr.contains("4 checks failed"),
            "{}",
            report.stderr
        );
        let fix = report.expect(
            "xdp-attached",
            "d0",
            "fail",
            "the decapsulator balancer_decap",
        )?;
        ensure!(
            fix.contains("balancer decap --detach --interface d0"),
            "{fix}"
        );
        report.expect(
            "xdp-attached",
            "p0",
            "fail",
            "a balancer program balancer_xdp",
        )?;
        report.expect(
            "xdp-attached",
            "p0",
            "fail",
            "not through a link pinned in this pin directory",
        )?;
        let fix = report.expect(
            "xdp-attached",
            "f0",
            "fail",
            "another XDP program, floor_xdp",
        )?;
        ensure!(fix.contains("ip link set dev f0 xdp off"), "{fix}");
        report.expect(
            "interface",
            "nosuch0",
            "fail",
            "no such interface in this network namespace",
        )?;
        drop(floor);
        Ok(())
    });
}

#[test]
fn tunnels_whose_packets_do_not_fit_the_path_are_warned_or_failed() {
    netns_test("doctor_mtu", TIMEOUT, |lab| {
        let (lb, _backend) = two_segments(lab, true)?;
        // Client packets arrive on eth1 too now: 1,520 bytes, which the
        // path to the backends (1,520) cannot carry with an outer header.
        // And a route to the IPv6 backend of 1,300 bytes.
        lb.ip([
            "-6",
            "route",
            "add",
            "fd71::11/128",
            "dev",
            "eth1",
            "mtu",
            "1300",
        ])?;
        let body = format!(
            "[datapath]\ninterfaces = [\"eth0\", \"eth1\"]\n\n{}{}{}",
            vip("tun", "192.0.2.11", "ipip", &["10.71.0.11"]),
            vip("gue", "192.0.2.12", "gue", &["10.71.0.11"]),
            vip("gue6", "2001:db8::12", "gue", &["fd71::11"]),
        );
        let file = config(lab, "mtu.toml", &body)?;
        let report = doctor(&lb, &[OsStr::new("--config"), file.as_os_str()])?;
        let fix = report.expect(
            "tunnel-mtu",
            "eth1 ipip over IPv4",
            "warn",
            "client packets of up to 1520 bytes arrive, and the backend of VIP tun go through eth1 (MTU 1520) with 20 bytes of outer header: only 1500 fit",
        )?;
        ensure!(
            fix.contains("ip link set dev eth1 mtu 1540") && fix.contains("advmss 1460"),
            "{fix}"
        );
        report.expect(
            "tunnel-mtu",
            "eth1 gue over IPv4",
            "warn",
            "28 bytes of outer header: only 1492 fit",
        )?;
        report.expect(
            "tunnel-mtu",
            "eth1 gue over IPv6",
            "fail",
            "(MTU 1300) with 48 bytes of outer header: only 1252 fit, less than clients take from ICMP",
        )?;
        ensure!(!report.success, "the IPv6 path fails the run");
        Ok(())
    });
}

#[test]
fn bpffs_and_btf_hidden_by_a_private_mount_namespace_are_warned() {
    netns_test("doctor_mounts", TIMEOUT, |lab| {
        let lb = lab.netns("lb")?;
        // A bpffs mounted in a mount namespace of doctor's own, on a
        // directory the host has no bpffs on: pins there die with it.
        let private = lab.scratch("private-bpf")?;
        std::fs::create_dir_all(&private)?;
        let body = format!(
            "[daemon]\npin_path = {:?}\ncontrol_socket = {:?}\n",
            private.join("balancer"),
            lab.scratch("control.sock")?
        );
        let file = lab.write_file("private.toml", &body)?;
        let report = unshared(
            &lb,
            &format!("mount -t bpf bpf {}", private.display()),
            &file,
        )?;
        let fix = report.expect(
            "bpffs",
            "private-bpf/balancer",
            "warn",
            "is mounted only in this process's private mount namespace",
        )?;
        ensure!(
            fix.contains("nsenter --net=/run/netns/NAME instead of ip netns exec"),
            "{fix}"
        );

        // `ip netns exec` remounts /sys: no bpffs on /sys/fs/bpf there, and
        // the daemon would mount its own, private one.
        let sys = lab.write_file(
            "sys.toml",
            &format!(
                "[daemon]\npin_path = \"/sys/fs/bpf/balancer-doctor-test\"\ncontrol_socket = {:?}\n",
                lab.scratch("control.sock")?
            ),
        )?;
        let mut exec = lb.command(balancer_bin()?);
        exec.arg("--json").arg("doctor").arg("--config").arg(&sys);
        run(exec)?.expect(
            "bpffs",
            "/sys/fs/bpf/balancer-doctor-test",
            "warn",
            "bpffs is not mounted on /sys/fs/bpf in this private mount namespace",
        )?;

        // No kernel BTF: the program loads without it, a warning.
        let hidden = unshared(&lb, "mount -t tmpfs tmpfs /sys/kernel/btf", &file)?;
        hidden.expect(
            "btf",
            "/sys/kernel/btf/vmlinux",
            "warn",
            "no kernel BTF (no such file): the program loads without it",
        )?;
        hidden.expect(
            "program",
            "balancer_xdp",
            "ok",
            "the kernel loads the XDP program",
        )?;
        // And with it, no warning (the same run without the tmpfs).
        unshared(&lb, "true", &file)?.expect(
            "btf",
            "vmlinux",
            "ok",
            "the kernel's BTF is there",
        )?;
        Ok(())
    });
}

#[test]
fn maps_that_do_not_fit_the_memory_cgroup_fail_and_tight_ones_warn() {
    netns_test("doctor_memory", TIMEOUT, |lab| {
        let lb = lab.netns("lb")?;
        let cgroup = MemoryCgroup::create(&format!("balancer-doctor-{}", std::process::id()))?;
        let subject = format!("cgroup /balancer-doctor-{}", std::process::id());
        let mib = 1u64 << 20;
        // 1,048,576 flows take 120 MiB alone; with less room than the
        // verifier needs, doctor does not load the program (it would be
        // killed) and says so.
        cgroup.limit(100 * mib)?;
        let large = config(lab, "large.toml", "[datapath]\nflow_table_size = 1048576\n")?;
        let report = cgroup.doctor(&lb, &large)?;
        let fix = report.expect(
            "memory",
            &subject,
            "fail",
            "at start, but memory cgroup /balancer-doctor-",
        )?;
        ensure!(fix.contains("MemoryMax="), "{fix}");
        report.expect(
            "program",
            "balancer_xdp",
            "warn",
            "the XDP program was not loaded: memory cgroup /balancer-doctor-",
        )?;
        ensure!(!report.success, "a failure exits non-zero");
        // The default tables (about 90 MiB) fit, but not with the
        // verifier's 80 MiB beside it.
        let default = config(lab, "default.toml", "")?;
        cgroup.limit(130 * mib)?;
        cgroup.doctor(&lb, &default)?.expect(
            "memory",
            &subject,
            "fail",
            "and verifying the program about 80.0 MiB more at start",
        )?;
        // Both fit, the daemon's peak with its own memory not.
        cgroup.limit(200 * mib)?;
        let tight = cgroup.doctor(&lb, &default)?;
        tight.expect("memory", &subject, "warn", "the daemon's peak is about")?;
        tight.expect(
            "program",
            "balancer_xdp",
            "ok",
            "the kernel loads the XDP program",
        )?;
        cgroup.limit(1024 * mib)?;
        cgroup
            .doctor(&lb, &default)?
            .expect("memory", &subject, "ok", "the maps take 88.")?;
        Ok(())
    });
}

#[test]
fn a_control_socket_that_cannot_be_made_fails() {
    netns_test("doctor_socket", TIMEOUT, |lab| {
        let lb = lab.netns("lb")?;
        let with_socket = |name: &str, socket: &Path| {
            lab.write_file(
                name,
                &format!(
                    "[daemon]\ncontrol_socket = {socket:?}\npin_path = {:?}\n",
                    lab.pin_dir()?
                ),
            )
        };
        // A regular file where its directory should be.
        let blocker = lab.write_file("blocker", "")?;
        let file = with_socket("file.toml", &blocker.join("control.sock"))?;
        let report = doctor(&lb, &[OsStr::new("--config"), file.as_os_str()])?;
        report.expect(
            "control-socket",
            "blocker/control.sock",
            "fail",
            "is a regular file, not a directory",
        )?;
        ensure!(!report.success);
        // A read-only directory.
        let readonly = lab.scratch("readonly")?;
        std::fs::create_dir_all(&readonly)?;
        let file = with_socket("ro.toml", &readonly.join("control.sock"))?;
        unshared(
            &lb,
            &format!("mount -t tmpfs -o ro tmpfs {}", readonly.display()),
            &file,
        )?
        .expect(
            "control-socket",
            "readonly/control.sock",
            "fail",
            "is not writable (Read-only file system)",
        )?;
        // A directory with the socket's name.
        let taken = lab.scratch("taken")?;
        std::fs::create_dir_all(taken.join("control.sock"))?;
        let file = with_socket("dir.toml", &taken.join("control.sock"))?;
        doctor(&lb, &[OsStr::new("--config"), file.as_os_str()])?.expect(
            "control-socket",
            "taken/control.sock",
            "fail",
            "a directory has the socket's name",
        )?;
        Ok(())
    });
}

#[test]
fn announcements_without_bird_or_without_a_session_are_warned() {
    netns_test("doctor_bgp", TIMEOUT, |lab| {
        let host = lab.netns("host")?;
        let router = lab.netns("router")?;
        lab.veth((&host, "eth0"), (&router, "eth0"), VethOptions::default())?;
        host.add_address("eth0", "10.81.0.11/24")?;
        host.add_address("eth0", "fd81::11/64")?;
        router.add_address("eth0", "10.81.0.254/24")?;
        router.add_address("eth0", "fd81::fe/64")?;
        let file = config(lab, "bgp.toml", "[announce]\ntable = 4242\n")?;
        let socket = lab.scratch("bird-host.ctl")?;
        let ask = || {
            doctor(
                &host,
                &[
                    OsStr::new("--config"),
                    file.as_os_str(),
                    OsStr::new("--bird-socket"),
                    socket.as_os_str(),
                ],
            )
        };
        let fix = ask()?.expect(
            "bgp",
            "bird-host.ctl",
            "warn",
            "no BIRD control socket: with [announce], the daemon keeps its routes in table 4242",
        )?;
        ensure!(fix.contains("ANNOUNCE_TABLE = 4242"), "{fix}");

        let host_config = bird::render(
            bird::HOST_CONF,
            &[
                ("HOST_ROUTER_ID", "10.81.0.11".into()),
                ("HOST_V4", "10.81.0.11".into()),
                ("HOST_V6", "fd81::11".into()),
                ("HOST_AS", "65001".into()),
                ("ROUTER_V4", "10.81.0.254".into()),
                ("ROUTER_V6", "fd81::fe".into()),
                ("ROUTER_AS", "65000".into()),
                ("ANNOUNCE_TABLE", "4242".into()),
                ("BFD_ENABLED", "0".into()),
            ],
        )?;
        let host_bird = Bird::start(lab, &host, "host", &host_config)?;
        ask()?.expect(
            "bgp",
            "bird-host.ctl",
            "warn",
            "has no BGP session established",
        )?;

        let router_config = bird::render(
            bird::ROUTER_CONF,
            &[
                ("ROUTER_ID", "10.81.0.254".into()),
                ("ROUTER_V4", "10.81.0.254".into()),
                ("ROUTER_V6", "fd81::fe".into()),
                ("ROUTER_AS", "65000".into()),
                ("HOSTS_V4", "10.81.0.0/24".into()),
                ("HOSTS_V6", "fd81::/64".into()),
                ("HOST_AS", "65001".into()),
                ("VIPS_V4", "[ 198.51.100.0/24{32,32} ]".into()),
                ("VIPS_V6", "[ 2001:db8:100::/48{128,128} ]".into()),
                ("BFD_ENABLED", "0".into()),
            ],
        )?;
        let _router_bird = Bird::start(lab, &router, "router", &router_config)?;
        host_bird.wait_established(2, Duration::from_secs(30))?;
        ask()?.expect("bgp", "bird-host.ctl", "ok", "BIRD 2")?;
        ask()?.expect(
            "bgp",
            "bird-host.ctl",
            "ok",
            "with 2 of 2 BGP sessions established",
        )?;
        Ok(())
    });
}

#[test]
fn a_backend_is_checked_for_what_its_vips_modes_need() {
    netns_test("doctor_backend", TIMEOUT, |lab| {
        let lb = lab.netns("lb")?;
        let backend = lab.netns("be")?;
        lab.veth((&lb, "eth0"), (&backend, "eth0"), VethOptions::default())?;
        lb.add_address("eth0", "10.72.0.1/24")?;
        backend.add_address("eth0", "10.72.0.11/24")?;
        let body = format!(
            "{}{}",
            vip("web", "192.0.2.20", "dsr", &["10.72.0.11"]),
            vip("tun", "192.0.2.21", "ipip", &["10.72.0.11"]),
        );
        let file = config(lab, "backend.toml", &body)?;
        let args = [
            OsStr::new("--backend"),
            OsStr::new("--config"),
            file.as_os_str(),
        ];
        // Strict reverse-path filtering, as many distributions set it.
        backend.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
        let report = doctor(&backend, &args)?;
        ensure!(!report.success);
        report.expect(
            "backend-vip",
            "web 10.72.0.11",
            "fail",
            "the VIP 192.0.2.20 is on none of this host's interfaces",
        )?;
        report.expect(
            "backend-vip",
            "tun 10.72.0.11",
            "fail",
            "the VIP 192.0.2.21",
        )?;
        report.expect(
            "backend-arp",
            "web",
            "warn",
            "arp_ignore 0, arp_announce 0 on eth0",
        )?;
        let fix = report.expect(
            "backend-decap",
            "tun",
            "fail",
            "nothing takes the ipip header off",
        )?;
        ensure!(fix.contains("balancer decap --interface eth0"), "{fix}");
        report.expect(
            "backend-rp-filter",
            "tun",
            "warn",
            "rp_filter is strict on eth0",
        )?;
        ensure!(
            report.find("backend-arp", "tun").is_err()
                && report.find("backend-decap", "web").is_err(),
            "each mode checks its own: {:#?}",
            report.findings
        );

        // Set up as docs/operations.md says: then every check passes.
        backend.ip(["address", "add", "192.0.2.20/32", "dev", "lo"])?;
        backend.ip(["address", "add", "192.0.2.21/32", "dev", "lo"])?;
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.all.rp_filter", "2"),
        ] {
            backend.sysctl(key, value)?;
        }
        lab.decap(&backend, "decap", &["--interface", "eth0"])?;
        let fixed = doctor(&backend, &args)?;
        ensure!(
            fixed.success && fixed.not_ok().is_empty(),
            "{:#?}",
            fixed.not_ok()
        );
        fixed.expect(
            "backend-decap",
            "tun",
            "ok",
            "the decapsulator (balancer decap) is attached to eth0",
        )?;

        // The balancer host is no backend of the file.
        doctor(&lb, &args)?.expect(
            "backend",
            "backend.toml",
            "fail",
            "no backend address of the configuration is on this host",
        )?;
        Ok(())
    });
}

#[test]
fn an_invalid_configuration_is_refused_with_its_errors() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("balancer-doctor-invalid-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[datapath]\nring_size = 1000\n")?;
    let out = Command::new(balancer_bin()?)
        .args(["doctor", "--config"])
        .arg(&file)
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success()
        || !stderr.contains(&format!("{}:2:", file.display()))
        || !stderr.contains("is not a valid configuration")
    {
        bail!("{}: {stderr}", out.status);
    }
    Ok(())
}

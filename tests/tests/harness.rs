//! The harness itself: namespaces, links, processes and teardown. Every
//! later test trusts these, so each guarantee has a test of its own.

use std::{
    net::{Ipv4Addr, UdpSocket},
    panic::catch_unwind,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use balancer_tests::{Lab, Process, VethOptions, netns_test, sweep_stale};

fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; it counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn dropping_a_lab_removes_its_namespaces_and_processes() {
    netns_test("lab_drop", Duration::from_secs(30), |_| {
        let lab = Lab::new("inner")?;
        let a = lab.netns("a")?;
        let b = lab.netns("b")?;
        lab.veth((&a, "veth0"), (&b, "veth0"), VethOptions::default())?;
        let mut sleeper = a.command("sleep");
        sleeper.arg("1000");
        let sleeper = Process::start(sleeper)?;
        let pid = sleeper.pid();
        // Leak the handle: teardown itself must kill what runs inside.
        std::mem::forget(sleeper);
        ensure!(namespace_exists(a.name()) && namespace_exists(b.name()));
        drop(lab);
        ensure!(!namespace_exists(a.name()), "{} left behind", a.name());
        ensure!(!namespace_exists(b.name()), "{} left behind", b.name());
        ensure!(
            !process_alive(pid),
            "process {pid} still runs after teardown"
        );
        Ok(())
    });
}

#[test]
fn teardown_runs_when_the_test_body_panics() {
    netns_test("panic_outer", Duration::from_secs(30), |_| {
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&names);
        let outcome = catch_unwind(move || {
            netns_test("panic_inner", Duration::from_secs(20), move |lab| {
                seen.lock().unwrap().push(lab.netns("x")?.name().to_owned());
                panic!("deliberate panic in a test body");
            })
        });
        ensure!(outcome.is_err(), "the inner test's panic was swallowed");
        let names = names.lock().unwrap();
        ensure!(names.len() == 1, "the inner body did not run");
        ensure!(
            !namespace_exists(&names[0]),
            "{} survived the panic",
            names[0]
        );
        Ok(())
    });
}

#[test]
fn teardown_runs_when_the_test_body_times_out() {
    netns_test("timeout_outer", Duration::from_secs(30), |_| {
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&names);
        let outcome = catch_unwind(move || {
            netns_test("timeout_inner", Duration::from_secs(1), move |lab| {
                seen.lock().unwrap().push(lab.netns("x")?.name().to_owned());
                std::thread::sleep(Duration::from_secs(10));
                Ok(())
            })
        });
        let message = outcome
            .err()
            .and_then(|panic| panic.downcast::<String>().ok())
            .context("the inner test did not fail on its timeout")?;
        ensure!(
            message.contains("timed out"),
            "unexpected failure: {message}"
        );
        let names = names.lock().unwrap();
        ensure!(
            !namespace_exists(&names[0]),
            "{} survived the timeout",
            names[0]
        );
        Ok(())
    });
}

#[test]
fn hosts_on_a_bridge_exchange_udp_and_sysctls_stay_in_their_namespace() {
    netns_test("bridge", Duration::from_secs(30), |lab| {
        let switch = lab.netns("sw")?;
        let h1 = lab.netns("h1")?;
        let h2 = lab.netns("h2")?;
        lab.veth((&h1, "eth0"), (&switch, "p1"), VethOptions::default())?;
        lab.veth(
            (&h2, "eth0"),
            (&switch, "p2"),
            VethOptions {
                mtu: Some(1400),
                ..Default::default()
            },
        )?;
        lab.bridge(&switch, "br0", &["p1", "p2"])?;
        h1.add_address("eth0", "10.98.0.1/24")?;
        h2.add_address("eth0", "10.98.0.2/24")?;
        h1.add_address("eth0", "fd00:98::1/64")?;
        h2.add_address("eth0", "fd00:98::2/64")?;
        ensure!(h2.ip(["link", "show", "eth0"])?.contains("mtu 1400"));

        for (src, dst) in [
            ("10.98.0.1:0", "10.98.0.2:7000"),
            ("[fd00:98::1]:0", "[fd00:98::2]:7000"),
        ] {
            let rx = h2.run(|| UdpSocket::bind(dst))??;
            let tx = h1.run(|| UdpSocket::bind(src))??;
            rx.set_read_timeout(Some(Duration::from_secs(5)))?;
            tx.send_to(b"ping", rx.local_addr()?)?;
            let mut buf = [0u8; 16];
            let (n, from) = rx
                .recv_from(&mut buf)
                .with_context(|| format!("no datagram to {dst}"))?;
            ensure!(&buf[..n] == b"ping" && from.ip() == tx.local_addr()?.ip());
        }

        let before = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/accept_local")?;
        let flipped = if before.trim() == "1" { "0" } else { "1" };
        h1.sysctl("net.ipv4.conf.all.accept_local", flipped)?;
        let inside = h1.exec("cat", ["/proc/sys/net/ipv4/conf/all/accept_local"])?;
        ensure!(
            inside.trim() == flipped,
            "sysctl not set inside the namespace: {inside}"
        );
        let after = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/accept_local")?;
        ensure!(after == before, "the sysctl leaked into the root namespace");

        let addr = h1
            .run(|| UdpSocket::bind((Ipv4Addr::new(10, 98, 0, 1), 0)))??
            .local_addr()?;
        ensure!(addr.ip() == Ipv4Addr::new(10, 98, 0, 1));
        Ok(())
    });
}

#[test]
fn namespaces_of_dead_processes_are_swept() {
    netns_test("sweep", Duration::from_secs(30), |_| {
        // A pid above the kernel's pid_max cannot belong to a live process.
        let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
            .trim()
            .parse()?;
        let stale = format!("lbt{}-0-sweep-x", pid_max + 1);
        std::process::Command::new("ip")
            .args(["netns", "add", &stale])
            .status()?;
        ensure!(namespace_exists(&stale));
        let removed = sweep_stale()?;
        ensure!(
            removed.contains(&stale),
            "sweep removed {removed:?}, not {stale}"
        );
        ensure!(!namespace_exists(&stale));
        Ok(())
    });
}

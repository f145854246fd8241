//! Hitless restarts: the daemon is killed with SIGKILL during traffic and
//! started again. The pinned datapath forwards while no daemon runs, the
//! long-lived connection survives, new connections are balanced by the new
//! daemon, and the counters carry on.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use balancer_tests::{
    Netns,
    daemon::{cli_json, start},
    load::SteadyLoad,
    netns_test,
    servers::{EchoConnection, tally_names, tcp_ask_name, tcp_name_server},
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};
use nix::sys::signal::Signal;

fn config(t: &Topology) -> String {
    // Checked on the backends' own address, port 80.
    let check = "[vip.health_check]\nkind = \"tcp\"\nport = 80\ninterval = \"500ms\"\ntimeout = \"200ms\"\n";
    let backends = plain(&t.backend_addresses(false));
    ConfigText::default()
        .vip("web", topology::VIP4.into(), 80, "tcp", check, &backends)
        .vip("chat", topology::VIP4.into(), 81, "tcp", check, &backends)
        .build()
}

fn tally(client: &Netns, n: usize) -> Result<BTreeMap<String, usize>> {
    tally_names(client, SocketAddr::new(topology::VIP4.into(), 80), n)
}

#[test]
fn a_killed_daemon_restarts_without_dropping_connections() {
    netns_test("restart", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 3)?;
        for (i, backend) in t.backends.iter().enumerate() {
            // Health checks go to the backend's own address.
            tcp_name_server(
                backend,
                SocketAddr::new(topology::backend4(i).into(), 80),
                "check",
            )?;
        }
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        t.serve(Server::TcpEcho, topology::VIP4.into(), 81)?;
        let path = lab.write_file("balancer.toml", &config(&t))?;
        let args = ["--config".as_ref(), path.as_os_str()];
        let mut daemon = start(lab, &t.lb, args)?;

        let mut held = EchoConnection::open(&t.client, SocketAddr::new(topology::VIP4.into(), 81))?;
        held.echo("before")?;
        let before = tally(&t.client, 90)?;
        ensure!(before.len() == 3, "{before:?}");
        let tx_before = cli_json(lab, ["stats"])?["counters"]["tx"]["packets"]
            .as_u64()
            .unwrap_or(0);

        // New connections at a steady pace through the kill and restart.
        let load = SteadyLoad::start(
            &t.client,
            SocketAddr::new(topology::VIP4.into(), 80),
            Duration::from_millis(20),
        );
        daemon.signal(Signal::SIGKILL)?;
        daemon.wait_timeout(Duration::from_secs(5))?;
        // No daemon: the pinned datapath still forwards.
        ensure!(
            t.lb.xdp_attachment("eth0")?.is_some(),
            "the datapath went with the daemon"
        );
        held.echo("while the daemon is dead")?;
        let orphaned = tally(&t.client, 30)?;
        ensure!(orphaned.values().sum::<usize>() == 30, "{orphaned:?}");

        let daemon = start(lab, &t.lb, args)?;
        ensure!(
            daemon.output().contains("adopted the pinned maps"),
            "{}",
            daemon.output()
        );
        ensure!(
            daemon.output().contains("mode=adopted"),
            "{}",
            daemon.output()
        );
        held.echo("after the restart")?;
        let attempts = load.stop()?;
        let failed: Vec<_> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
        ensure!(
            failed.is_empty(),
            "{} of {} connections opened across the kill and restart failed: {:?}",
            failed.len(),
            attempts.len(),
            failed.first()
        );
        let after = tally(&t.client, 90)?;
        ensure!(after.len() == 3, "after the restart: {after:?}");
        let tx_after = cli_json(lab, ["stats"])?["counters"]["tx"]["packets"]
            .as_u64()
            .unwrap_or(0);
        ensure!(
            tx_after > tx_before,
            "the counters restarted: {tx_before} then {tx_after}"
        );
        held.echo("at the end")?;
        eprintln!(
            "held connection on {} survived; {} connections across the kill and restart, none failed; \
             before {before:?}, daemon dead {orphaned:?}, after {after:?}; tx {tx_before} -> {tx_after}",
            held.backend,
            attempts.len()
        );
        Ok(())
    });
}

#[test]
fn pinned_maps_of_another_layout_are_refused_with_the_way_out() {
    netns_test("pin_layout", Duration::from_secs(30), |lab| {
        let dir = lab.pin_dir()?;
        std::fs::create_dir_all(&dir)?;
        // A 'backends' map as an older binary could have pinned it.
        let old = aya::maps::Array::<aya::maps::MapData, [u8; 36]>::create(16384, 0)?;
        aya::maps::Array::<aya::maps::MapData, [u8; 36]>::pin(old, dir.join("backends"))?;
        let options = balancer::datapath::LoadOptions {
            pin_dir: Some(dir.clone()),
            ..Default::default()
        };
        let err = match balancer::datapath::Datapath::load_with(options) {
            Ok(_) => anyhow::bail!("a pinned map of another layout was adopted"),
            Err(err) => format!("{err:#}"),
        };
        ensure!(
            err.contains("backends")
                && err.contains("value 36")
                && err.contains("balancer teardown"),
            "{err}"
        );
        Ok(())
    });
}

/// The rings map of the layout before mmap-able rings ("rings") is unpinned
/// when a daemon adopts the directory, so its rings are freed once the old
/// program is replaced rather than at `balancer teardown`.
#[test]
fn the_rings_pin_of_the_earlier_layout_is_removed_on_adoption() {
    netns_test("pin_obsolete", Duration::from_secs(30), |lab| {
        let dir = lab.pin_dir()?;
        std::fs::create_dir_all(&dir)?;
        let old = aya::maps::Array::<aya::maps::MapData, u32>::create(1024, 0)?;
        aya::maps::Array::<aya::maps::MapData, u32>::pin(old, dir.join("rings"))?;
        let options = balancer::datapath::LoadOptions {
            pin_dir: Some(dir.clone()),
            ..Default::default()
        };
        let datapath = balancer::datapath::Datapath::load_with(options)?;
        ensure!(
            !dir.join("rings").exists(),
            "the earlier layout's rings pin is still there"
        );
        ensure!(
            dir.join(balancer_common::maps::RINGS).exists(),
            "the rings map of this layout was not pinned"
        );
        drop(datapath);
        balancer::datapath::pin::teardown(&dir)?;
        Ok(())
    });
}

#[test]
fn a_number_freed_before_a_restart_comes_back_with_zeroed_counters() {
    netns_test("restart_numbers", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 2)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 81)?;
        let backends = plain(&t.backend_addresses(false));
        let vips = |names: &[(&str, u16)]| {
            names
                .iter()
                .fold(ConfigText::default(), |c, (name, port)| {
                    c.vip(
                        name,
                        topology::VIP4.into(),
                        *port,
                        "tcp",
                        NO_CHECK,
                        &backends,
                    )
                })
                .build()
        };
        let path = lab.write_file("balancer.toml", &vips(&[("a", 80), ("b", 81)]))?;
        let daemon = start(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;
        // Traffic counted on b and its backends.
        for _ in 0..20 {
            tcp_ask_name(&t.client, SocketAddr::new(topology::VIP4.into(), 81))?;
        }
        let counted = |name: &str| -> Result<u64> {
            let vips = cli_json(lab, ["vip", "list"])?;
            Ok(vips
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name)
                .and_then(|v| v["new_flows"].as_u64())
                .unwrap_or(u64::MAX))
        };
        ensure!(counted("b")? == 20, "b counted {}", counted("b")?);
        // b goes, the daemon stops; a new daemon numbers c with the index
        // b had (the pinned maps no longer use it), whose pinned counters
        // still hold b's totals.
        std::fs::write(&path, vips(&[("a", 80)]))?;
        ensure!(cli_json(lab, ["reload"]).is_ok());
        daemon.signal(Signal::SIGTERM)?;
        drop(daemon);
        std::fs::write(&path, vips(&[("a", 80), ("c", 81)]))?;
        let _daemon = start(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;
        ensure!(
            counted("c")? == 0,
            "c starts with {} new flows",
            counted("c")?
        );
        let backends = cli_json(lab, ["backend", "list", "c"])?;
        ensure!(
            backends.as_array().is_some_and(|rows| rows
                .iter()
                .all(|r| r["new_flows"] == 0 && r["packets"] == 0)),
            "{backends}"
        );
        tcp_ask_name(&t.client, SocketAddr::new(topology::VIP4.into(), 81))?;
        ensure!(counted("c")? == 1, "c counted {}", counted("c")?);
        Ok(())
    });
}

#[test]
fn a_vip_removed_from_the_file_while_no_daemon_ran_is_gone_after_the_start() {
    netns_test("ghost_vip", Duration::from_secs(60), |lab| {
        let t = Topology::build(lab, 2)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 81)?;
        let backends = plain(&t.backend_addresses(false));
        let both = topology::web_and_chat(&backends);
        let chat = SocketAddr::new(topology::VIP4.into(), 81);
        let path = lab.write_file("balancer.toml", &both)?;
        let args = ["--config".as_ref(), path.as_os_str()];
        let mut daemon = start(lab, &t.lb, args)?;
        ensure!(tcp_ask_name(&t.client, chat)?.starts_with("be"));
        daemon.signal(Signal::SIGTERM)?;
        daemon.wait_timeout(Duration::from_secs(5))?;
        // While no daemon runs, the operator takes "chat" out of the file.
        lab.write_file("balancer.toml", &topology::web_config(NO_CHECK, &backends))?;
        let daemon = start(lab, &t.lb, args)?;
        ensure!(
            daemon.output().contains(
                "a VIP the previous daemon left in the pinned maps is not in the configuration: removing it"
            ),
            "{}",
            daemon.output()
        );
        let answer = tcp_ask_name(&t.client, chat);
        ensure!(
            answer.is_err(),
            "the removed VIP still forwards: {answer:?}"
        );
        let web = tcp_ask_name(&t.client, SocketAddr::new(topology::VIP4.into(), 80))?;
        ensure!(web.starts_with("be"), "{web}");
        let vips = cli_json(lab, ["vip", "list"])?;
        ensure!(vips.as_array().is_some_and(|v| v.len() == 1), "{vips}");
        Ok(())
    });
}

//! Runtime changes through the CLI: each is reflected in the datapath at
//! once and written back to the configuration file with its comments; a
//! drained backend keeps its established connection; a refused change
//! leaves the file as it was.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use balancer_tests::{
    Netns,
    daemon::{cli, cli_json, cli_ok, start, start_with_config, wait_for_log},
    netns_test,
    servers::{EchoConnection, tally_names, tcp_ask_name},
    topology::{self, NO_CHECK, Server, Topology, plain},
};

const COMMENT: &str = "# Operator's note: keep this line.";

fn config(t: &Topology) -> String {
    let text = topology::web_and_chat(&plain(&t.backend_addresses(false)));
    format!("{COMMENT}\n{text}")
}

fn tally(client: &Netns, n: usize) -> Result<BTreeMap<String, usize>> {
    tally_names(client, SocketAddr::new(topology::VIP4.into(), 80), n)
}

/// A connection to the chat VIP.
fn chat(client: &Netns) -> Result<EchoConnection> {
    EchoConnection::open(client, SocketAddr::new(topology::VIP4.into(), 81))
}

#[test]
fn cli_changes_apply_at_once_and_are_written_back() {
    netns_test("cli_changes", Duration::from_secs(180), |lab| {
        let t = Topology::build(lab, 3)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        t.serve(Server::TcpEcho, topology::VIP4.into(), 81)?;
        let path = lab.write_file("balancer.toml", &config(&t))?;
        let _daemon = start(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;

        // Drain: the held connection goes on, new ones avoid the backend.
        let mut held = chat(&t.client)?;
        let holder = held.backend.clone();
        let index: usize = holder.trim_start_matches("be").parse()?;
        let address = topology::backend4(index).to_string();
        cli_ok(lab, &["backend", "drain", "chat", &address])?;
        let text = std::fs::read_to_string(&path)?;
        ensure!(
            text.contains("drain = true") && text.starts_with(COMMENT),
            "{text}"
        );
        held.echo("still here after the drain")?;
        for _ in 0..60 {
            let name = chat(&t.client)?.backend;
            ensure!(
                name != holder,
                "a new connection reached the draining {holder}"
            );
        }
        held.echo("still here after 60 new connections")?;
        cli_ok(lab, &["backend", "undrain", "chat", &address])?;
        ensure!(!std::fs::read_to_string(&path)?.contains("drain = true"));
        let mut reached = false;
        for _ in 0..60 {
            reached |= chat(&t.client)?.backend == holder;
        }
        ensure!(reached, "{holder} took no new connection after undrain");

        // Remove and add back with a large weight.
        cli_ok(lab, &["backend", "remove", "web", "10.50.0.12"])?;
        let without = tally(&t.client, 100)?;
        ensure!(
            !without.contains_key("be2"),
            "a removed backend got connections: {without:?}"
        );
        cli_ok(
            lab,
            &["backend", "add", "web", "10.50.0.12", "--weight", "400"],
        )?;
        std::thread::sleep(Duration::from_millis(1500));
        let with = tally(&t.client, 200)?;
        ensure!(
            with.get("be2").copied().unwrap_or(0) >= 100,
            "weight 400 of 600 got {with:?}"
        );
        ensure!(std::fs::read_to_string(&path)?.contains("weight = 400"));

        // VIPs.
        cli_ok(
            lab,
            &[
                "vip",
                "add",
                "dns",
                "198.51.100.80:53/udp",
                "--scheduler",
                "source-hash",
            ],
        )?;
        ensure!(cli_json(lab, ["vip", "list"])?.as_array().map(Vec::len) == Some(3));
        ensure!(std::fs::read_to_string(&path)?.contains("name = \"dns\""));
        cli_ok(lab, &["vip", "remove", "dns"])?;
        ensure!(cli_json(lab, ["vip", "list"])?.as_array().map(Vec::len) == Some(2));

        // A refused change: a clear error, the file untouched.
        let before = std::fs::read_to_string(&path)?;
        let refused = cli(lab, ["backend", "weight", "web", "10.50.0.10", "20000"])?;
        let err = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            !refused.status.success()
                && err.contains("weight 20000 of backend 10.50.0.10 is out of range"),
            "{err}"
        );
        // Its error names the field, not a line of a file never written.
        ensure!(!err.contains("balancer.toml:"), "{err}");
        let missing = cli(lab, ["backend", "remove", "web", "10.9.9.9"])?;
        ensure!(
            String::from_utf8_lossy(&missing.stderr)
                .contains("VIP \"web\" has no backend 10.9.9.9")
        );
        ensure!(
            std::fs::read_to_string(&path)? == before,
            "a refused change modified the file"
        );
        ensure!(tcp_ask_name(&t.client, SocketAddr::new(topology::VIP4.into(), 80)).is_ok());
        Ok(())
    });
}

#[test]
fn a_backend_added_at_runtime_takes_a_quarter_of_new_connections_and_resets_none() {
    netns_test("runtime_add", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 4)?;
        t.serve(Server::TcpEcho, topology::VIP4.into(), 80)?;
        let three = plain(&t.backend_addresses(false)[..3]);
        let text = topology::web_config(NO_CHECK, &three);
        let mut daemon = start_with_config(lab, &t.lb, &text)?;
        let vip = SocketAddr::new(topology::VIP4.into(), 80);
        let mut held = (0..30)
            .map(|_| EchoConnection::open(&t.client, vip))
            .collect::<Result<Vec<_>>>()?;

        let mark = daemon.output().len();
        cli_ok(lab, &["backend", "add", "web", "10.50.0.13"])?;
        wait_for_log(
            &mut daemon,
            mark,
            &["ring published", "backends=4"],
            Duration::from_secs(5),
        )?;
        let n = 800;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..n {
            *counts
                .entry(EchoConnection::open(&t.client, vip)?.backend)
                .or_default() += 1;
        }
        let share = counts.get("be3").copied().unwrap_or(0) as f64 * 100.0 / n as f64;
        ensure!(
            (share - 25.0).abs() <= 5.0,
            "the added backend took {share:.1} % of {n} new connections (expected 25 ± 5): {counts:?}"
        );
        let mut reset = Vec::new();
        for c in &mut held {
            if let Err(err) = c.echo("still here after the add") {
                reset.push(format!("{}: {err:#}", c.backend));
            }
        }
        ensure!(
            reset.is_empty(),
            "{} of {} established connections broke after the add: {reset:?}",
            reset.len(),
            held.len()
        );
        eprintln!(
            "the added backend took {share:.1} % of {n} new connections ({counts:?}); all {} established connections answer",
            held.len()
        );
        Ok(())
    });
}

/// A backend added at runtime is in the ring as soon as its neighbour
/// resolves, not at the next periodic read of the neighbour table (which
/// made `backend add` take up to a second to reach the new backend).
#[test]
fn an_added_backend_is_in_the_ring_within_milliseconds() {
    netns_test("add_latency", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 6)?;
        let addresses = t.backend_addresses(false);
        let text = topology::web_config(NO_CHECK, &plain(&addresses[..3]));
        let mut daemon = start_with_config(lab, &t.lb, &text)?;
        let bound = Duration::from_millis(300);
        let mut times = Vec::new();
        // Each a backend the balancer never talked to, so its neighbour
        // entry is made by the add.
        for (n, address) in addresses[3..].iter().enumerate() {
            let mark = daemon.output().len();
            cli_ok(lab, &["backend", "add", "web", &address.to_string()])?;
            let returned = std::time::Instant::now();
            let ring = format!("backends={}", 4 + n);
            wait_for_log(
                &mut daemon,
                mark,
                &["ring published", &ring],
                Duration::from_secs(5),
            )?;
            times.push(returned.elapsed());
        }
        ensure!(
            times.iter().all(|t| *t <= bound),
            "rings with the added backends were published {times:?} after the CLI returned (bound {bound:?} each)"
        );
        eprintln!("rings with the added backends published {times:?} after the CLI returned");
        Ok(())
    });
}

#[test]
fn a_cli_change_edits_the_file_as_loaded_and_refuses_one_changed_on_disk() {
    netns_test("cli_file", Duration::from_secs(60), |lab| {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let t = Topology::build(lab, 2)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        // The configuration is a symlink to a file of another owner and mode.
        let real = lab.write_file("real.toml", &config(&t))?;
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640))?;
        std::os::unix::fs::chown(&real, Some(4321), Some(4321))?;
        let path = real.with_file_name("balancer.toml");
        std::os::unix::fs::symlink(&real, &path)?;
        let _daemon = start(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;
        let address = topology::backend4(0).to_string();

        // A hand edit not yet reloaded: an unrelated change is refused and
        // does not make it live.
        let loaded = std::fs::read_to_string(&real)?;
        std::fs::write(&real, loaded.replace("name = \"chat\"", "name = \"talk\""))?;
        let out = cli(lab, ["backend", "weight", "web", &address, "7"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("the file changed on disk"),
            "{stderr}"
        );
        let names: Vec<String> = cli_json(lab, ["vip", "list"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        ensure!(names == ["web", "chat"], "{names:?}");

        // Reverted, the change applies and is written through the link.
        std::fs::write(&real, &loaded)?;
        cli_ok(lab, &["backend", "weight", "web", &address, "7"])?;
        ensure!(
            std::fs::symlink_metadata(&path)?.file_type().is_symlink(),
            "the symlink was replaced by a file"
        );
        let meta = std::fs::metadata(&real)?;
        ensure!(
            meta.permissions().mode() & 0o777 == 0o640 && meta.uid() == 4321,
            "mode {:o}, owner {}",
            meta.permissions().mode(),
            meta.uid()
        );
        let text = std::fs::read_to_string(&real)?;
        ensure!(
            text.contains("weight = 7") && text.starts_with(COMMENT),
            "{text}"
        );
        Ok(())
    });
}

//! Previews against a running daemon: `check-config --diff FILE` and
//! `reload --dry-run` print what a reload would change (VIPs and
//! backends, weights, schedulers, forwarding, rings rebuilt, other keys,
//! keys that need a restart) and change nothing: the file, the maps (the
//! flow fingerprint), the daemon's log and the traffic stay as they were.
//! A reload of the previewed file then does what the preview said.

use std::{net::SocketAddr, process::Output, time::Duration};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab,
    daemon::{cli, cli_json, cli_ok, cli_without_daemon, start_with_config},
    netns_test,
    servers::tally_names,
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What must not move while previewing: the file, the fingerprint of the
/// maps, and `vip list`.
fn state(lab: &Lab) -> Result<(String, serde_json::Value, serde_json::Value)> {
    let file = std::fs::read_to_string(lab.scratch("balancer.toml")?)?;
    let fingerprint = cli_json(lab, ["status"])?["flow_fingerprint"].clone();
    ensure!(fingerprint.is_string(), "no fingerprint yet");
    let mut vips = cli_json(lab, ["vip", "list"])?;
    // Counters move with the traffic; the rest must not.
    for vip in vips.as_array_mut().context("vip list")? {
        for counter in ["packets", "bytes", "new_flows"] {
            vip[counter] = serde_json::Value::Null;
        }
    }
    Ok((file, fingerprint, vips))
}

#[test]
fn previews_say_what_a_reload_would_change_and_change_nothing() {
    netns_test("preview", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 3)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        let all = t.backend_addresses(false);
        let config = ConfigText::default()
            .vip(
                "web",
                topology::VIP4.into(),
                80,
                "tcp",
                NO_CHECK,
                &plain(&all[..2]),
            )
            .vip(
                "chat",
                topology::VIP4.into(),
                81,
                "tcp",
                NO_CHECK,
                &plain(&all[..2]),
            )
            .build();
        let daemon = start_with_config(lab, &t.lb, &config)?;
        let vip = SocketAddr::new(topology::VIP4.into(), 80);
        let before_traffic = tally_names(&t.client, vip, 60)?;
        ensure!(before_traffic.len() == 2, "{before_traffic:?}");

        // The same file: nothing.
        let daemon_file = lab.scratch("balancer.toml")?;
        let out = cli(
            lab,
            ["check-config", "--diff", daemon_file.to_str().unwrap()],
        )?;
        ensure!(
            out.status.success() && text(&out).contains("a reload would change nothing"),
            "{}",
            text(&out)
        );

        // A file with one of each kind of change.
        let edited = config
            .replacen(
                &format!("[[vip.backend]]\naddress = \"{}\"\n", all[1]),
                &format!(
                    "[[vip.backend]]\naddress = \"{}\"\nweight = 300\n[[vip.backend]]\naddress = \"{}\"\n",
                    all[1], all[2]
                ),
                1,
            )
            .replace(
                "name = \"chat\"",
                "name = \"chat\"\nscheduler = \"round-robin\"\nforwarding = \"ipip\"\nslow_start = \"5s\"",
            );
        let proposed = lab.write_file("proposed.toml", &edited)?;
        let before = state(lab)?;
        let log_before = daemon.output();
        let out = cli(lab, ["check-config", "--diff", proposed.to_str().unwrap()])?;
        let shown = text(&out);
        println!("{shown}");
        ensure!(out.status.success(), "{shown}");
        for line in [
            "valid (2 VIPs, 5 backends)",
            "VIP web: backend 10.50.0.11 weight 100 → 300",
            "VIP web: backend 10.50.0.12 added (weight 100)",
            "VIP chat: scheduling maglev → round-robin",
            "VIP chat: forwarding dsr → ipip",
            "rings rebuilt",
            "  web\n  chat\n",
            "VIP chat: slow_start: set to \"5s\"",
        ] {
            ensure!(shown.contains(line), "missing {line:?} in:\n{shown}");
        }
        let answer = cli_json(lab, ["check-config", "--diff", proposed.to_str().unwrap()])?;
        ensure!(
            answer["applies"] == true
                && answer["rings_rebuilt"] == serde_json::json!(["web", "chat"])
                && answer["file"] == proposed.to_str().unwrap(),
            "{answer}"
        );
        ensure!(
            state(lab)? == before,
            "check-config --diff changed the daemon's state"
        );

        // reload --dry-run reads the daemon's own file.
        std::fs::write(&daemon_file, &edited)?;
        let out = cli(lab, ["reload", "--dry-run"])?;
        ensure!(
            out.status.success() && text(&out).contains("VIP chat: forwarding dsr → ipip"),
            "{}",
            text(&out)
        );
        std::fs::write(&daemon_file, &before.0)?;
        ensure!(
            state(lab)? == before,
            "reload --dry-run changed the daemon's state"
        );
        let log = daemon.output();
        let since = &log[log_before.len()..];
        ensure!(
            !since.contains("ring published") && !since.contains("applied"),
            "previews wrote to the maps:\n{since}"
        );
        // The backend the file adds takes nothing.
        let after_traffic = tally_names(&t.client, vip, 60)?;
        ensure!(
            after_traffic.keys().eq(before_traffic.keys()),
            "the traffic moved: {before_traffic:?} → {after_traffic:?}"
        );

        // A restart key: shown, and the dry run fails, as the reload would.
        let interfaces =
            config.replace("interfaces = [\"eth0\"]", "interfaces = [\"eth0\", \"lo\"]");
        std::fs::write(&daemon_file, &interfaces)?;
        let out = cli(lab, ["reload", "--dry-run"])?;
        let shown = text(&out);
        ensure!(
            out.status.code() == Some(3)
                && shown.contains("needs a restart")
                && shown.contains("[datapath] interfaces")
                && shown.contains("would be refused"),
            "{shown}"
        );
        // An emptied file: refused unless --allow-empty.
        std::fs::write(&daemon_file, "[datapath]\ninterfaces = [\"eth0\"]\n")?;
        let out = cli(lab, ["reload", "--dry-run"])?;
        ensure!(
            out.status.code() == Some(3) && text(&out).contains("withdraw all 2 VIPs"),
            "{}",
            text(&out)
        );
        let out = cli(lab, ["reload", "--dry-run", "--allow-empty"])?;
        ensure!(
            out.status.success() && text(&out).contains("VIP web: removed"),
            "{}",
            text(&out)
        );
        // An invalid file: its problems, with lines.
        std::fs::write(&daemon_file, config.replace("port = 81", "port = 70000"))?;
        let out = cli(lab, ["reload", "--dry-run"])?;
        ensure!(
            out.status.code() == Some(3) && text(&out).contains("balancer.toml:"),
            "{}",
            text(&out)
        );
        std::fs::write(&daemon_file, &before.0)?;
        ensure!(
            state(lab)? == before,
            "the failed previews changed the state"
        );

        // Applying the previewed file does what the preview said.
        std::fs::write(&daemon_file, &edited)?;
        let log_before = daemon.output();
        cli_ok(lab, &["reload"])?;
        let log = daemon.output();
        let applied = &log[log_before.len()..];
        for line in [
            "backend weight changed vip=\"web\" backend=10.50.0.11 from=100 to=300",
            "backend added vip=\"web\" backend=10.50.0.12",
            "VIP forwarding changed vip=\"chat\" from=\"dsr\" to=\"ipip\"",
        ] {
            ensure!(applied.contains(line), "missing {line:?} in:\n{applied}");
        }
        for vip in ["web", "chat"] {
            ensure!(
                applied.contains(&format!("ring published vip=\"{vip}\"")),
                "{vip}'s ring rebuilt:\n{applied}"
            );
        }

        // Without a daemon: the file is checked, the diff cannot be made.
        let out = cli_without_daemon(
            "preview",
            &["check-config", "--diff", proposed.to_str().unwrap()],
        )?;
        ensure!(
            out.status.code() == Some(4) && text(&out).contains("cannot reach the daemon"),
            "{}",
            text(&out)
        );
        Ok(())
    });
}

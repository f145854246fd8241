//! Allow and deny lists with real traffic, changed through the CLI: a
//! client's connections refused once its address is denied (globally, or
//! by an allow list of its VIP that does not list it) and answered again
//! once the entry is removed; each change written back to the file with
//! its comments, applied without a restart, and the drops counted per
//! list.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use balancer_tests::{
    Lab,
    daemon::{cli, cli_json, cli_ok, start_with_config},
    netns_test,
    servers::{tally_names, tcp_ask_name, tcp_name_server},
    topology::{self, CLIENT4, NO_CHECK, Topology, plain, web_config},
};

fn web() -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), 80)
}

/// The packets `scope`'s `list` dropped, from `deny list` / `allow list`.
fn dropped(lab: &Lab, list: &str, scope: &str) -> Result<u64> {
    let rows = cli_json(lab, [list, "list"])?;
    let row = rows
        .as_array()
        .context("a list of rows")?
        .iter()
        .find(|r| r["scope"] == scope && r["list"] == list)
        .with_context(|| format!("no {scope} {list} row in {rows}"))?;
    row["dropped_packets"]
        .as_u64()
        .context("dropped_packets is a number")
}

/// The client's connections to the web VIP are refused (its SYNs dropped:
/// the connection times out).
fn refused(t: &Topology) -> Result<()> {
    match tcp_ask_name(&t.client, web()) {
        Ok(name) => bail!("the client was answered by {name}"),
        Err(_) => Ok(()),
    }
}

#[test]
fn deny_and_allow_lists_change_at_runtime_and_are_written_back() {
    netns_test("access_lists", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 2)?;
        for (i, ns) in t.backends.iter().enumerate() {
            tcp_name_server(ns, "0.0.0.0:80".parse()?, &format!("be{i}"))?;
        }
        let config = format!(
            "# The lists are edited by the CLI.\n{}",
            web_config(NO_CHECK, &plain(&t.backend_addresses(false)))
        );
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        ensure!(tally_names(&t.client, web(), 4)?.values().sum::<usize>() == 4);

        // Denied for every VIP: written to [access], refused at once.
        let client = format!("{CLIENT4}/32");
        cli_ok(lab, &["deny", "add", &client])?;
        let file = std::fs::read_to_string(lab.scratch("balancer.toml")?)?;
        ensure!(
            file.contains("[access]") && file.contains(&format!("deny = [\"{client}\"]")),
            "not written back: {file}"
        );
        ensure!(
            file.starts_with("# The lists are edited by the CLI."),
            "{file}"
        );
        refused(&t)?;
        ensure!(
            dropped(lab, "deny", "global")? > 0,
            "the drops are not counted"
        );
        // Adding it twice is refused, and changes nothing.
        let twice = cli(lab, ["deny", "add", &client])?;
        ensure!(!twice.status.success(), "a second add was accepted");
        cli_ok(lab, &["deny", "remove", &client])?;
        ensure!(tcp_ask_name(&t.client, web()).is_ok(), "still refused");

        // An allow list of the VIP that does not list the client.
        cli_ok(lab, &["allow", "add", "10.99.0.0/16", "--vip", "web"])?;
        refused(&t)?;
        ensure!(dropped(lab, "allow", "web")? > 0);
        cli_ok(lab, &["allow", "add", &client, "--vip", "web"])?;
        ensure!(
            tcp_ask_name(&t.client, web()).is_ok(),
            "listed, still refused"
        );
        let file = std::fs::read_to_string(lab.scratch("balancer.toml")?)?;
        ensure!(
            file.contains(&format!("allow = [\"10.99.0.0/16\", \"{client}\"]")),
            "{file}"
        );
        // A prefix with host bits is refused with the fix.
        let bad = cli(lab, ["deny", "add", "10.50.0.1/24"])?;
        let said = String::from_utf8_lossy(&bad.stderr);
        ensure!(
            !bad.status.success() && said.contains("10.50.0.0/24"),
            "{said}"
        );
        Ok(())
    });
}

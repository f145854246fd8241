//! Per-source limits with real traffic: a spoofed source flooding SYNs
//! past its new-flow rate and ACKs past its packet rate is cut down to its
//! rate, counted, while the real client's steady new connections and held
//! connections carry on; a real client opening connections in a burst
//! gets its burst and no more, until an exempt entry added through the CLI
//! (written back to the file, applied without a restart) lifts its limit.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer_bench::Generator;
use balancer_tests::{
    Lab, Netns,
    backend::ServerProcess,
    daemon::{cli_json, cli_ok, start_with_config},
    flood,
    load::SteadyLoad,
    netns_test,
    packet::{Packet, with_macs},
    servers::EchoConnection,
    topology::{self, CLIENT4, ConfigText, NO_CHECK, Server, Topology, plain},
};

/// A Maglev VIP of name servers whose sources may start 100 new flows a
/// second: the steady client's 50 a second pass.
const WEB: u16 = 80;
/// A VIP of echo servers whose sources may send 1,000 packets a second.
const ECHO: u16 = 81;
/// A VIP of name servers whose sources may start 10 new flows a second,
/// in bursts of 10.
const BURST: u16 = 82;
/// A spoofed source no backend can route a reply to.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// Frames of each flood, distinct 5-tuples for the SYN flood.
const FLOOD: u32 = 20_000;

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), port)
}

struct Setup {
    t: Topology,
    _servers: Vec<ServerProcess>,
    lb_mac: [u8; 6],
    client_mac: [u8; 6],
}

fn setup(lab: &Lab) -> Result<(Setup, balancer_tests::Process)> {
    let t = Topology::build(lab, 2)?;
    let servers = ServerProcess::on_every_backend(
        &t,
        &[
            (Server::TcpName, "0.0.0.0:80".parse()?),
            (Server::TcpEcho, vip(ECHO)),
            (Server::TcpName, vip(BURST)),
        ],
    )?;
    let backends = plain(&t.backend_addresses(false));
    let limited = |keys: &str| format!("{NO_CHECK}[vip.limits]\n{keys}\n");
    let config = ConfigText::default()
        .vip(
            "web",
            topology::VIP4.into(),
            WEB,
            "tcp",
            &limited("new_flows = 100"),
            &backends,
        )
        .vip(
            "echo",
            topology::VIP4.into(),
            ECHO,
            "tcp",
            &limited("packets = 1000"),
            &backends,
        )
        .vip(
            "burst",
            topology::VIP4.into(),
            BURST,
            "tcp",
            &limited("new_flows = 10"),
            &backends,
        )
        .build();
    let config = format!("# Limits; exempt entries are edited by the CLI.\n{config}");
    let daemon = start_with_config(lab, &t.lb, &config)?;
    // The generator's frames leave the client through `eth0`; the switch's
    // end takes frames sent with XDP_TX in only if it runs XDP.
    lab.xdp_pass(&t.switch, "pc")?;
    let (lb_mac, client_mac) = (t.lb.mac("eth0")?, t.client.mac("eth0")?);
    Ok((
        Setup {
            t,
            _servers: servers,
            lb_mac,
            client_mac,
        },
        daemon,
    ))
}

/// What VIP `name`'s limits dropped: new flows, packets.
fn dropped(lab: &Lab, name: &str) -> Result<(u64, u64)> {
    let show = cli_json(lab, ["vip", "show", name])?;
    let limits = &show["limits"];
    let get = |key: &str| {
        limits[key]
            .as_u64()
            .with_context(|| format!("no {key} in {show}"))
    };
    Ok((get("dropped_new_flows")?, get("dropped_packets")?))
}

/// [`FLOOD`] frames from [`SPOOFED`] to `port`: SYNs of distinct 5-tuples,
/// or ACKs, sent from the client's link in chunks the rings on the way
/// hold, from one CPU (the generator keeps its place per CPU).
fn spoofed_flood(s: &Setup, port: u16, syn: bool) -> Result<()> {
    let packet = Packet::tcp(SPOOFED.into(), 1024, topology::VIP4.into(), port);
    let packet = if syn { packet } else { packet.established() };
    let frame = with_macs(&packet.build(), s.lb_mac, s.client_mac);
    let mut generator = Generator::load(&frame, FLOOD)?;
    flood::send(
        &s.t.client,
        &mut generator,
        FLOOD,
        &format!("flood to port {port}"),
    )
}

#[test]
fn a_flooding_source_is_held_to_its_rates_and_other_clients_carry_on() {
    netns_test("limits_flood", Duration::from_secs(120), |lab| {
        let (s, _daemon) = setup(lab)?;
        let mut held: Vec<EchoConnection> = (0..5)
            .map(|_| EchoConnection::open(&s.t.client, vip(ECHO)))
            .collect::<Result<_>>()?;
        let steady = SteadyLoad::start(&s.t.client, vip(WEB), Duration::from_millis(20));
        thread::sleep(Duration::from_millis(500));

        spoofed_flood(&s, WEB, true)?;
        let (new_flows, _) = dropped(lab, "web")?;
        spoofed_flood(&s, ECHO, false)?;
        for (i, c) in held.iter_mut().enumerate() {
            c.echo("after the floods")
                .with_context(|| format!("held connection {i}"))?;
        }
        let (_, packets) = dropped(lab, "echo")?;
        thread::sleep(Duration::from_millis(300));
        let attempts = steady.stop()?;
        let failed: Vec<_> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
        println!(
            "dropped: {new_flows} of {FLOOD} spoofed SYNs, {packets} of {FLOOD} spoofed ACKs; steady client: {} connections, {} failed",
            attempts.len(),
            failed.len()
        );
        ensure!(
            failed.is_empty(),
            "{} of {} of the real client's connections failed, first {:?}",
            failed.len(),
            attempts.len(),
            failed.first().map(|a| &a.outcome)
        );
        // Each flood lasts well under a second: its source gets its burst
        // (100 new flows, 1,000 packets) and about a second's rate.
        ensure!(
            new_flows >= u64::from(FLOOD) * 3 / 4,
            "only {new_flows} of {FLOOD} spoofed SYNs dropped"
        );
        ensure!(
            packets >= u64::from(FLOOD) * 3 / 4,
            "only {packets} of {FLOOD} spoofed ACKs dropped"
        );
        let counters = cli_json(lab, ["stats"])?;
        ensure!(
            counters["counters"]["drop_source_flows"]["packets"].as_u64() == Some(new_flows),
            "{counters}"
        );
        Ok(())
    });
}

/// `n` connections to `addr` opened from `client` at once, each given
/// 800 ms (less than the SYN's first retransmission): how many answered.
fn burst(client: &Netns, addr: SocketAddr, n: usize) -> Result<usize> {
    client.run(|| {
        thread::scope(|scope| {
            let tries: Vec<_> = (0..n)
                .map(|_| {
                    scope.spawn(move || {
                        TcpStream::connect_timeout(&addr, Duration::from_millis(800)).is_ok()
                    })
                })
                .collect();
            tries
                .into_iter()
                .map(|t| t.join())
                .filter(|answered| matches!(answered, Ok(true)))
                .count()
        })
    })
}

#[test]
fn a_burst_past_the_new_flow_rate_is_cut_until_the_client_is_exempt() {
    netns_test("limits_burst", Duration::from_secs(120), |lab| {
        let (s, _daemon) = setup(lab)?;
        let client: IpAddr = CLIENT4.into();
        let answered = burst(&s.t.client, vip(BURST), 40)?;
        let (refused, _) = dropped(lab, "burst")?;
        println!("a burst of 40 at 10 new flows a second: {answered} answered, {refused} dropped");
        // Its burst of 10, and a token or so that came back meanwhile.
        ensure!((9..=14).contains(&answered), "{answered} of 40 answered");
        ensure!(refused >= 26, "{refused} SYNs dropped");

        let exempt = format!("{client}/32");
        cli_ok(lab, &["exempt", "add", &exempt, "--vip", "burst"])?;
        let file = std::fs::read_to_string(lab.scratch("balancer.toml")?)?;
        ensure!(
            file.contains(&format!("exempt = [\"{exempt}\"]"))
                && file.starts_with("# Limits; exempt entries are edited by the CLI."),
            "not written back: {file}"
        );
        let rows = cli_json(lab, ["exempt", "list", "--vip", "burst"])?;
        ensure!(
            rows.to_string().contains(&exempt),
            "exempt list shows {rows}"
        );
        let answered = burst(&s.t.client, vip(BURST), 40)?;
        ensure!(answered == 40, "exempt, {answered} of 40 answered");

        cli_ok(lab, &["exempt", "remove", &exempt, "--vip", "burst"])?;
        thread::sleep(Duration::from_millis(1_100));
        let answered = burst(&s.t.client, vip(BURST), 40)?;
        ensure!(
            (9..=14).contains(&answered),
            "no longer exempt, {answered} of 40 answered"
        );
        Ok(())
    });
}

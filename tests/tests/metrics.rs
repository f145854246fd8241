//! The daemon's `/metrics` with real traffic: the VIP, backend and verdict
//! counters grow by exactly the packets this test sent, a health
//! transition shows in the metrics and as a structured JSON log event,
//! and a port already in use costs the metrics but not the balancer.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Process,
    daemon::{cli_json, start},
    metrics::{Scrape, scrape},
    netns_test, poll,
    servers::HealthEndpoint,
    topology::{self, ConfigText, Server, Topology, plain},
};

const CHECK_PORT: u16 = 8080;
/// The default `metrics_listen`, inside the balancer's namespace.
const METRICS: &str = "127.0.0.1:9100";
/// UDP flows sent through the VIP.
const FLOWS: u16 = 200;
/// The datagram each flow sends.
const PAYLOAD: &[u8] = b"who is there?";

fn config(t: &Topology) -> String {
    let check = format!(
        "[vip.health_check]\nkind = \"http\"\nport = {CHECK_PORT}\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n"
    );
    ConfigText::default()
        .vip(
            "dns",
            topology::VIP4.into(),
            53,
            "udp",
            &check,
            &plain(&t.backend_addresses(false)),
        )
        .build()
}

/// Scrapes until `ready` holds (the daemon caches a scrape for a second).
fn scrape_until(t: &Topology, what: &str, ready: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
    poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let s = scrape(&t.lb, METRICS.parse()?)?;
        Ok(if ready(&s) {
            Ok(s)
        } else {
            Err(format!("no scrape with {what}; the last:\n{}", s.text))
        })
    })
}

fn backend(i: usize) -> String {
    topology::backend4(i).to_string()
}

/// The first JSON log line in `output` whose fields include all of
/// `fields`.
fn json_event(output: &str, fields: &[(&str, serde_json::Value)]) -> Option<serde_json::Value> {
    output.lines().find_map(|line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        fields.iter().all(|(k, v)| event[*k] == *v).then_some(event)
    })
}

/// Waits for the JSON log event with `fields` and returns it.
fn wait_for_event(
    daemon: &mut Process,
    fields: &[(&str, serde_json::Value)],
) -> Result<serde_json::Value> {
    daemon
        .wait_for_output(Duration::from_secs(3), |out| {
            json_event(out, fields).is_some()
        })
        .with_context(|| format!("no JSON log event with {fields:?}"))?;
    json_event(&daemon.output(), fields).context("the event went away")
}

#[test]
fn metrics_count_the_traffic_sent_and_show_a_health_transition() {
    netns_test("metrics_traffic", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 3)?;
        t.serve(Server::UdpName, topology::VIP4.into(), 53)?;
        let mut endpoints = t
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                HealthEndpoint::start(
                    ns,
                    SocketAddr::new(topology::backend4(i).into(), CHECK_PORT),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let path = lab.write_file("balancer.toml", &config(&t))?;
        let mut daemon = start(
            lab,
            &t.lb,
            [
                "--log-format".as_ref(),
                "json".as_ref(),
                "--config".as_ref(),
                path.as_os_str(),
                "--reconcile-interval".as_ref(),
                "1s".as_ref(),
            ],
        )?;
        let all_up = |s: &Scrape| {
            (0..3).all(|i| s.value("balancer_backend_up", &[("backend", &backend(i))]) == Some(1.0))
        };
        let before = scrape_until(&t, "every backend up", all_up)?;

        // Static facts of the daemon.
        let info = before.labels("balancer_info");
        ensure!(
            info.len() == 1
                && info[0]["version"] == env!("CARGO_PKG_VERSION")
                && info[0]["program_tag"].len() == 16,
            "balancer_info: {info:?}"
        );
        let attached = before.labels("balancer_attached");
        ensure!(
            attached.len() == 1 && attached[0]["interface"] == "eth0",
            "balancer_attached: {attached:?}"
        );
        ensure!(
            before.value("balancer_flow_table_capacity", &[]) == Some(262_144.0),
            "{}",
            before.text
        );

        // FLOWS new UDP flows, one datagram each, every one answered.
        let vip = SocketAddr::new(topology::VIP4.into(), 53);
        for flow in 0..FLOWS {
            let socket = t
                .client
                .run(|| UdpSocket::bind((IpAddr::from(topology::CLIENT4), 20_000 + flow)))??;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.send_to(PAYLOAD, vip)?;
            let mut buf = [0u8; 64];
            socket
                .recv_from(&mut buf)
                .with_context(|| format!("flow {flow} got no answer"))?;
        }
        let sent = f64::from(FLOWS);
        // Ethernet + IPv4 + UDP headers and the payload.
        let frame = (14 + 20 + 8 + PAYLOAD.len()) as f64;
        let grew = |s: &Scrape, name: &str, labels: &[(&str, &str)]| {
            s.sum(name, labels) - before.sum(name, labels)
        };
        let after = scrape_until(&t, "the flows counted", |s| {
            grew(s, "balancer_vip_packets_total", &[("vip", "dns")]) >= sent
                && s.value("balancer_flow_table_entries", &[]).unwrap_or(0.0) >= sent
        })?;
        for (name, labels, want) in [
            ("balancer_vip_packets_total", vec![("vip", "dns")], sent),
            (
                "balancer_vip_bytes_total",
                vec![("vip", "dns")],
                sent * frame,
            ),
            ("balancer_vip_new_flows_total", vec![("vip", "dns")], sent),
            ("balancer_backend_packets_total", vec![("vip", "dns")], sent),
            (
                "balancer_backend_new_flows_total",
                vec![("vip", "dns")],
                sent,
            ),
            (
                "balancer_datapath_packets_total",
                vec![("reason", "tx")],
                sent,
            ),
            (
                "balancer_datapath_bytes_total",
                vec![("reason", "tx")],
                sent * frame,
            ),
            (
                "balancer_datapath_events_total",
                vec![("event", "new_flow")],
                sent,
            ),
        ] {
            let got = grew(&after, name, &labels);
            ensure!(
                got == want,
                "{name}{labels:?} grew by {got}, the test sent {want}:\n{}",
                after.text
            );
        }
        for i in 0..3 {
            let flows = grew(
                &after,
                "balancer_backend_new_flows_total",
                &[("backend", &backend(i))],
            );
            ensure!(flows > 0.0, "backend {i} got no flow:\n{}", after.text);
        }
        ensure!(
            after
                .value(
                    "balancer_health_checks_total",
                    &[("backend", &backend(1)), ("outcome", "success")]
                )
                .unwrap_or(0.0)
                > 0.0
                && after
                    .value(
                        "balancer_backend_check_latency_seconds",
                        &[("backend", &backend(1))]
                    )
                    .is_some_and(|s| s > 0.0 && s < 1.0),
            "{}",
            after.text
        );

        // Backend 1's check fails: the transition is in the metrics and in
        // the log, as one JSON event with its fields.
        endpoints[1].stop();
        let down = scrape_until(&t, "backend 1 down", |s| {
            s.value("balancer_backend_up", &[("backend", &backend(1))]) == Some(0.0)
        })?;
        let transitions = |to: &str| {
            down.value(
                "balancer_health_transitions_total",
                &[("backend", &backend(1)), ("to", to)],
            )
        };
        ensure!(
            transitions("down") == Some(1.0) && transitions("up") == Some(0.0),
            "{}",
            down.text
        );
        ensure!(
            down.value(
                "balancer_health_checks_total",
                &[("backend", &backend(1)), ("outcome", "failure")]
            )
            .unwrap_or(0.0)
                >= 2.0,
            "{}",
            down.text
        );
        let event = wait_for_event(
            &mut daemon,
            &[
                ("message", "backend health changed".into()),
                ("vip", "dns".into()),
                ("backend", backend(1).into()),
                ("from", "up".into()),
                ("to", "down".into()),
            ],
        )?;
        ensure!(
            event["reason"].is_string() && event["latency_ms"].is_number(),
            "{event}"
        );

        // A configuration change is an event with its fields too.
        let out = balancer_tests::daemon::cli(lab, ["backend", "weight", "dns", &backend(0), "7"])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for_event(
            &mut daemon,
            &[
                ("message", "backend weight changed".into()),
                ("vip", "dns".into()),
                ("backend", backend(0).into()),
                ("from", 100.into()),
                ("to", 7.into()),
            ],
        )?;
        let weighted = scrape_until(&t, "the new weight", |s| {
            s.value("balancer_backend_weight", &[("backend", &backend(0))]) == Some(7.0)
        })?;
        ensure!(
            weighted.value("balancer_backend_weight", &[("backend", &backend(1))]) == Some(100.0),
            "{}",
            weighted.text
        );
        Ok(())
    });
}

#[test]
fn a_metrics_port_in_use_costs_the_metrics_not_the_balancer() {
    netns_test("metrics_port_in_use", Duration::from_secs(60), |lab| {
        let t = Topology::build(lab, 1)?;
        // What node_exporter does on many hosts.
        let _taken = t.lb.run(|| std::net::TcpListener::bind(METRICS))??;
        t.serve(Server::UdpName, topology::VIP4.into(), 53)?;
        let text = config(&t).replace("kind = \"http\"", "kind = \"none\"");
        let daemon = balancer_tests::daemon::start_with_config(lab, &t.lb, &text)?;
        ensure!(
            daemon
                .output()
                .contains("cannot serve metrics on 127.0.0.1:9100 ([daemon] metrics_listen")
                && daemon.output().contains("running without metrics"),
            "{}",
            daemon.output()
        );
        let status = cli_json(lab, ["status"])?;
        ensure!(
            status["metrics"]
                .as_str()
                .is_some_and(|m| m.starts_with("failed: cannot serve metrics on 127.0.0.1:9100")),
            "{status}"
        );
        // The balancer itself runs: the VIP answers.
        let socket = t
            .client
            .run(|| UdpSocket::bind((IpAddr::from(topology::CLIENT4), 0)))??;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send_to(PAYLOAD, SocketAddr::new(topology::VIP4.into(), 53))?;
        let mut buf = [0u8; 64];
        socket
            .recv_from(&mut buf)
            .context("the VIP did not answer while metrics could not be served")?;
        Ok(())
    });
}

#[test]
fn an_empty_metrics_listen_turns_the_endpoint_off() {
    netns_test("metrics_off", Duration::from_secs(60), |lab| {
        let t = Topology::build(lab, 1)?;
        let text = format!("[daemon]\nmetrics_listen = \"\"\n{}", config(&t));
        let _daemon = balancer_tests::daemon::start_with_config(lab, &t.lb, &text)?;
        let refused = t.lb.run(|| std::net::TcpStream::connect(METRICS))?;
        ensure!(refused.is_err(), "something listens on {METRICS}");
        ensure!(cli_json(lab, ["status"])?["metrics"] == "off");
        Ok(())
    });
}

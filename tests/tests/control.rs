//! The control socket and the CLI against a running daemon: status and
//! lists, a reload that adds a backend (which then takes traffic), a
//! refused reload, requests that are malformed or never sent, and idle
//! clients by the thousand on the control socket and the metrics port.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::{net::UnixStream, process::CommandExt as _},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use balancer_tests::{
    Process,
    daemon::{cli, cli_json, command, start},
    metrics::scrape,
    netns_test,
    servers::tcp_ask_name,
    topology::{self, NO_CHECK, Server, Topology},
};

fn config(t: &Topology, backends: usize, weight_line: &str) -> String {
    let backends: Vec<_> = t.backend_addresses(false)[..backends]
        .iter()
        .map(|a| (*a, weight_line))
        .collect();
    topology::web_config(NO_CHECK, &backends)
}

/// How long an answer may take with the idle clients in place: a second.
/// Answers take tens of milliseconds here (the test prints them), so the bound leaves room for a loaded run, while a blocked
/// daemon does not answer at all.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

#[test]
fn the_cli_reports_and_reloads_through_the_control_socket() {
    netns_test("control_reload", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 4)?;
        let vip = SocketAddr::new(topology::VIP4.into(), 80);
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        let path = lab.write_file("balancer.toml", &config(&t, 3, ""))?;
        let _daemon = start(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;

        let socket = lab.scratch("control.sock")?;
        let mode = std::fs::metadata(&socket)?.permissions();
        ensure!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o600,
            "socket mode {mode:?}"
        );

        let status = cli_json(lab, ["status"])?;
        ensure!(status["vips"] == 1 && status["backends"] == 3, "{status}");
        ensure!(status["interfaces"][0]["interface"] == "eth0", "{status}");
        // What decides new flows, as 16 hex digits, also as a metric.
        let fingerprint = status["flow_fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            fingerprint.len() == 16 && fingerprint.chars().all(|c| c.is_ascii_hexdigit()),
            "{status}"
        );
        let vips = cli_json(lab, ["vip", "list"])?;
        ensure!(
            vips[0]["name"] == "web" && vips[0]["backends"] == 3,
            "{vips}"
        );
        let table = cli(lab, ["backend", "list", "web"])?;
        let text = String::from_utf8_lossy(&table.stdout);
        ensure!(
            table.status.success() && text.contains("10.50.0.12") && text.contains("up"),
            "{text}"
        );
        let missing = cli(lab, ["backend", "list", "nope"])?;
        ensure!(
            !missing.status.success()
                && String::from_utf8_lossy(&missing.stderr).contains("no VIP named \"nope\""),
            "{missing:?}"
        );

        // A valid reload adds a fourth backend: it takes new connections.
        std::fs::write(&path, config(&t, 4, ""))?;
        let reload = cli(lab, ["reload"])?;
        ensure!(
            reload.status.success(),
            "reload failed: {}",
            String::from_utf8_lossy(&reload.stderr)
        );
        let backends = cli_json(lab, ["backend", "list"])?;
        ensure!(backends.as_array().map(Vec::len) == Some(4), "{backends}");
        std::thread::sleep(Duration::from_millis(1500));
        // A new member of the ring: another fingerprint; a weight there
        // and back: the same one again.
        let four = cli_json(lab, ["status"])?["flow_fingerprint"].clone();
        ensure!(
            four != fingerprint.as_str(),
            "the fingerprint stayed {four}"
        );
        let be3 = topology::backend4(3).to_string();
        cli(lab, ["backend", "weight", "web", &be3, "250"])?;
        let weighted = cli_json(lab, ["status"])?["flow_fingerprint"].clone();
        ensure!(
            weighted != four,
            "a weight left the fingerprint at {weighted}"
        );
        cli(lab, ["backend", "weight", "web", &be3, "100"])?;
        let back = cli_json(lab, ["status"])?["flow_fingerprint"].clone();
        ensure!(back == four, "weight 100 again: {back}, before {four}");
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..200 {
            *counts.entry(tcp_ask_name(&t.client, vip)?).or_default() += 1;
        }
        ensure!(
            counts.get("be3").copied().unwrap_or(0) >= 20,
            "the new backend took no share: {counts:?}"
        );

        // An invalid file is refused with its line; nothing changes.
        std::fs::write(&path, config(&t, 4, "weight = -1\n"))?;
        let refused = cli(lab, ["reload"])?;
        let err = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            !refused.status.success()
                && err.contains("balancer.toml:13: invalid value: integer `-1`"),
            "{err}"
        );
        ensure!(cli_json(lab, ["backend", "list"])?.as_array().map(Vec::len) == Some(4));
        ensure!(
            tcp_ask_name(&t.client, vip).is_ok(),
            "traffic stopped after a refused reload"
        );

        // Malformed requests get an error; silence times out; the daemon lives.
        let mut raw = UnixStream::connect(&socket)?;
        raw.write_all(b"{\"command\":\"explode\"}\n")?;
        let mut reply = String::new();
        raw.read_to_string(&mut reply)?;
        ensure!(
            reply.contains("\"ok\":false") && reply.contains("malformed request"),
            "{reply}"
        );
        let silent = UnixStream::connect(&socket)?;
        // A flood: many clients at once, half of them sending garbage.
        let flood: Vec<_> = (0..200)
            .map(|i| {
                let socket = socket.clone();
                std::thread::spawn(move || -> Result<String> {
                    let mut s = UnixStream::connect(&socket)?;
                    let line: &[u8] = if i % 2 == 0 {
                        b"{\"command\":\"status\"}\n"
                    } else {
                        b"\x00\xff garbage\n"
                    };
                    s.write_all(line)?;
                    let mut reply = String::new();
                    s.read_to_string(&mut reply)?;
                    Ok(reply)
                })
            })
            .collect();
        let mut answered = 0;
        for client in flood {
            let reply = client
                .join()
                .map_err(|_| anyhow::anyhow!("a flood client panicked"))??;
            ensure!(reply.starts_with("{\"ok\":"), "{reply}");
            answered += 1;
        }
        ensure!(answered == 200);
        let stats = cli_json(lab, ["stats"])?;
        ensure!(
            stats["counters"]["tx"]["packets"].as_u64().unwrap_or(0) > 0,
            "{stats}"
        );
        drop(silent);
        ensure!(
            cli(lab, ["status"])?.status.success(),
            "the daemon stopped answering"
        );
        Ok(())
    });
}

#[test]
fn the_cli_says_clearly_when_no_daemon_runs() -> Result<()> {
    let out = balancer_tests::daemon::cli_without_daemon("none", &["status"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(4) && err.contains("cannot reach the daemon"),
        "{err}"
    );
    Ok(())
}

/// Raises this process's limit on open files to its hard limit, for the
/// thousands of connections a test holds.
fn raise_open_file_limit() -> std::io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn idle_metrics_and_control_clients_leave_the_cli_answering() {
    netns_test("control_idle_clients", Duration::from_secs(120), |lab| {
        raise_open_file_limit()?;
        let t = Topology::build(lab, 2)?;
        let path = lab.write_file("balancer.toml", &config(&t, 1, ""))?;
        let mut daemon = command(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;
        // SAFETY: setrlimit is async-signal-safe. 1,024 files is the limit
        // of a systemd unit that sets none.
        unsafe {
            daemon.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 1024,
                };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        let mut daemon = Process::start(daemon)?;
        daemon.wait_for_output(Duration::from_secs(30), |out| {
            out.contains("control socket ready")
        })?;

        let metrics: SocketAddr = "127.0.0.1:9100".parse()?;
        let _idle_metrics = t.lb.run(|| {
            (0..1100)
                .map(|_| TcpStream::connect_timeout(&metrics, Duration::from_secs(5)))
                .collect::<std::io::Result<Vec<_>>>()
        })??;
        let socket = lab.scratch("control.sock")?;
        let _idle_control = (0..1000)
            .map(|_| UnixStream::connect(&socket))
            .collect::<std::io::Result<Vec<_>>>()?;

        let started = Instant::now();
        let status = cli_json(lab, ["status"])?;
        let cli_took = started.elapsed();
        ensure!(status["vips"] == 1, "{status}");
        ensure!(cli_took < ANSWER_WITHIN, "the CLI answered in {cli_took:?}");
        let started = Instant::now();
        scrape(&t.lb, metrics)?;
        let took = started.elapsed();
        ensure!(took < ANSWER_WITHIN, "a scrape answered in {took:?}");
        eprintln!(
            "with the idle clients in place: the CLI answered in {cli_took:?}, a scrape in {took:?}"
        );
        Ok(())
    });
}

#[test]
fn a_reload_to_no_vip_at_all_is_refused_unless_asked_for() {
    netns_test("reload_empty", Duration::from_secs(60), |lab| {
        let t = Topology::build(lab, 2)?;
        let vip = SocketAddr::new(topology::VIP4.into(), 80);
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        let path = lab.write_file("balancer.toml", &config(&t, 2, ""))?;
        let mut daemon = start(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;
        let vips = |lab| -> Result<usize> {
            Ok(cli_json(lab, ["vip", "list"])?
                .as_array()
                .map_or(0, Vec::len))
        };

        // A file emptied of its VIPs, by SIGHUP and by `reload`: refused,
        // traffic goes on.
        let text = std::fs::read_to_string(&path)?;
        let first_vip = text.find("[[vip]]").unwrap_or(text.len());
        std::fs::write(&path, &text[..first_vip])?;
        let from = daemon.output().len();
        daemon.signal(nix::sys::signal::Signal::SIGHUP)?;
        balancer_tests::daemon::wait_for_log(
            &mut daemon,
            from,
            &["reload on SIGHUP refused", "the file has no VIP"],
            Duration::from_secs(5),
        )?;
        let refused = cli(lab, ["reload"])?;
        let err = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            !refused.status.success() && err.contains("--allow-empty"),
            "{err}\n{}",
            daemon.output()
        );
        ensure!(vips(lab)? == 1);
        ensure!(tcp_ask_name(&t.client, vip)?.starts_with("be"));

        // Asked for, every VIP goes.
        let allowed = cli(lab, ["reload", "--allow-empty"])?;
        ensure!(
            allowed.status.success(),
            "{}",
            String::from_utf8_lossy(&allowed.stderr)
        );
        ensure!(vips(lab)? == 0);
        ensure!(
            tcp_ask_name(&t.client, vip).is_err(),
            "the VIP still forwards"
        );
        Ok(())
    });
}

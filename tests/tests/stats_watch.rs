//! `balancer stats --watch`: the live view in a pseudo-terminal while
//! real traffic flows (rates, states, weights, shares, the verdict
//! counters), a clean exit on Ctrl-C and on a lost daemon with the
//! terminal restored both times, and the plain blocks it prints when its
//! output is a pipe.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns, Process, balancer_bin,
    daemon::start_with_config,
    netns_test,
    pty::PtyProcess,
    servers::tcp_ask_name,
    topology::{self, NO_CHECK, Server, Topology},
};

const ROWS: u16 = 40;
const COLUMNS: u16 = 100;

/// A VIP of three backends, the third with twice the weight.
fn config(t: &Topology) -> String {
    let addresses = t.backend_addresses(false);
    let weights = ["", "", "weight = 200\n"];
    let backends: Vec<_> = addresses.iter().copied().zip(weights).collect();
    topology::web_config(NO_CHECK, &backends)
}

/// The arguments of `balancer --socket SOCKET stats --watch --interval I`.
fn watch_args(lab: &Lab, interval: &str) -> Result<Vec<std::ffi::OsString>> {
    Ok(vec![
        "--socket".into(),
        lab.scratch("control.sock")?.into(),
        "stats".into(),
        "--watch".into(),
        "--interval".into(),
        interval.into(),
    ])
}

/// Starts the view on a pseudo-terminal in `ns`.
fn watch_on_terminal(lab: &Lab, ns: &Netns) -> Result<PtyProcess> {
    PtyProcess::start(
        ns,
        balancer_bin()?.as_os_str(),
        watch_args(lab, "300ms")?,
        ROWS,
        COLUMNS,
    )
}

/// A backend row of the view, as its columns read.
#[derive(Debug)]
struct BackendLine {
    address: String,
    state: String,
    weight: u32,
    packet_rate: Option<f64>,
    flow_rate: Option<f64>,
    share: Option<f64>,
}

/// The backend rows on the screen (indented addresses under their VIP).
fn backend_lines(screen: &str) -> Vec<BackendLine> {
    let number = |text: &str| text.trim_end_matches('%').parse::<f64>().ok();
    screen
        .lines()
        .filter(|line| line.starts_with("  10.50.0."))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let [address, state, weight, packets, flows, share] = cells[..] else {
                return None;
            };
            Some(BackendLine {
                address: address.to_owned(),
                state: state.to_owned(),
                weight: weight.parse().ok()?,
                packet_rate: number(packets),
                flow_rate: number(flows),
                share: number(share),
            })
        })
        .collect()
}

/// Whether the screen shows every backend taking new flows, with shares
/// that add up to 100 %.
fn shows_shared_traffic(screen: &str, backends: usize) -> bool {
    let rows = backend_lines(screen);
    let total: f64 = rows.iter().filter_map(|r| r.share).sum();
    rows.len() == backends
        && rows
            .iter()
            .all(|r| r.flow_rate.is_some_and(|f| f > 0.0) && r.share.is_some())
        && (total - 100.0).abs() < 0.5
}

/// Opens connections to the VIP from the client until stopped, for at most
/// 60 s and 50,000 connections; counts them.
struct Traffic {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &Netns) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let (client, flag, count) = (client.clone(), Arc::clone(&stop), Arc::clone(&made));
        let worker = thread::spawn(move || {
            let vip = SocketAddr::new(topology::VIP4.into(), 80);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && count.load(Ordering::Relaxed) < 50_000
            {
                if tcp_ask_name(&client, vip).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Traffic {
            stop,
            made,
            worker: Some(worker),
        }
    }

    /// Stops the traffic and returns how many connections were answered.
    fn stop(mut self) -> usize {
        self.halt();
        self.made.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Checks that the terminal is back as the view found it: main screen,
/// cursor shown, canonical mode with echo.
fn ensure_restored(view: &PtyProcess) -> Result<()> {
    let (alternate, hidden) = view.with_screen(|s| (s.alternate_screen(), s.hide_cursor()));
    ensure!(
        !alternate && !hidden,
        "alternate screen {alternate}, cursor hidden {hidden}:\n{}",
        view.contents()
    );
    let raw = view.raw();
    let last = |sequence: &[u8]| raw.windows(sequence.len()).rposition(|w| w == sequence);
    ensure!(
        last(b"\x1b[?1049l") > last(b"\x1b[?1049h") && last(b"\x1b[?25h") > last(b"\x1b[?25l"),
        "the last escape sequences do not leave the alternate screen and show the cursor"
    );
    ensure!(view.is_cooked()?, "the terminal was left in raw mode");
    Ok(())
}

#[test]
fn the_live_view_shows_rates_and_shares_and_restores_the_terminal() {
    netns_test("stats_watch", Duration::from_secs(150), |lab| {
        let t = Topology::build(lab, 3)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        let daemon = start_with_config(lab, &t.lb, &config(&t))?;

        let mut view = watch_on_terminal(lab, &t.client)?;
        // The first frame: the table, with no rates yet.
        view.wait_for_screen(Duration::from_secs(10), |s| {
            s.contents().contains("VIP / BACKEND")
        })?;
        let (alternate, hidden) = view.with_screen(|s| (s.alternate_screen(), s.hide_cursor()));
        ensure!(
            alternate && hidden,
            "the view is not on the alternate screen with the cursor hidden"
        );
        ensure!(!view.is_cooked()?, "the view runs without raw mode");

        let traffic = Traffic::start(&t.client);
        view.wait_for_screen(Duration::from_secs(30), |s| {
            shows_shared_traffic(&s.contents(), 3)
        })?;
        let screen = view.contents();
        let made = traffic.stop();
        eprintln!("a frame, during {made} connections:\n{screen}");

        let rows = backend_lines(&screen);
        let addresses: Vec<&str> = rows.iter().map(|r| r.address.as_str()).collect();
        ensure!(
            addresses == ["10.50.0.10", "10.50.0.11", "10.50.0.12"],
            "{addresses:?}\n{screen}"
        );
        let weights: Vec<u32> = rows.iter().map(|r| r.weight).collect();
        ensure!(weights == [100, 100, 200], "{weights:?}\n{screen}");
        ensure!(
            rows.iter()
                .all(|r| r.state == "up" && r.packet_rate.is_some_and(|p| p > 0.0)),
            "{rows:?}\n{screen}"
        );
        let vip_line = screen
            .lines()
            .find(|l| l.starts_with("web "))
            .with_context(|| format!("no VIP line:\n{screen}"))?;
        ensure!(
            vip_line.contains("3/3 up") && vip_line.ends_with("198.51.100.80:80/tcp maglev"),
            "{vip_line}"
        );
        for heading in ["FORWARDED", "PASSED", "DROPPED", "EVENTS"] {
            ensure!(
                screen.lines().any(|l| l.contains(heading)),
                "no {heading} section:\n{screen}"
            );
        }
        let counter = |name: &str| {
            screen.lines().find_map(|line| {
                let cells: Vec<&str> = line.split_whitespace().collect();
                let at = cells.iter().position(|c| *c == name)?;
                Some((
                    cells.get(at + 1)?.to_string(),
                    cells.get(at + 2)?.to_string(),
                ))
            })
        };
        let tx = counter("tx").with_context(|| format!("no tx counter:\n{screen}"))?;
        ensure!(tx.0 != "0" && tx.0 != "-" && tx.1 != "0", "tx {tx:?}");
        ensure!(
            counter("drop_no_backend").is_some() && counter("pass_not_vip").is_some(),
            "{screen}"
        );

        // Ctrl-C: a clean exit, the terminal as it was.
        let asked = Instant::now();
        view.send(b"\x03")?;
        let status = view.wait_timeout(Duration::from_secs(2))?;
        ensure!(status.success(), "Ctrl-C: {status}");
        eprintln!("exited {:?} after Ctrl-C", asked.elapsed());
        ensure_restored(&view)?;

        // The daemon goes away: the view says so, exits 4 (no daemon
        // answered), and restores the terminal first so the message stays
        // visible.
        let mut view = watch_on_terminal(lab, &t.client)?;
        view.wait_for_screen(Duration::from_secs(10), |s| {
            s.contents().contains("VIP / BACKEND")
        })?;
        drop(daemon);
        let status = view.wait_timeout(Duration::from_secs(5))?;
        ensure!(status.exit_code() == 4, "a lost daemon: {status}");
        ensure_restored(&view)?;
        let screen = view.contents();
        ensure!(
            screen.contains("cannot reach the daemon"),
            "no error on the screen:\n{screen}"
        );
        Ok(())
    });
}

#[test]
fn piped_output_is_plain_blocks() {
    netns_test("stats_watch_plain", Duration::from_secs(90), |lab| {
        let t = Topology::build(lab, 2)?;
        let addresses = t.backend_addresses(false);
        let text = topology::web_config(NO_CHECK, &topology::plain(&addresses));
        let _daemon = start_with_config(lab, &t.lb, &text)?;
        let mut command = t.client.command(balancer_bin()?);
        command.args(watch_args(lab, "200ms")?);
        let mut watch = Process::start(command)?;
        // Three headings: the first two blocks are whole.
        watch.wait_for_output(Duration::from_secs(10), |out| {
            out.matches("balancer stats").count() >= 3
        })?;
        let out = watch.output();
        drop(watch);
        ensure!(
            !out.contains('\x1b'),
            "escape sequences in piped output:\n{out:?}"
        );
        let lines: Vec<&str> = out.lines().collect();
        let headings: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("balancer stats"))
            .collect();
        ensure!(headings[0] == 0, "{out}");
        let first = &lines[headings[0]..headings[1]];
        let second = &lines[headings[1]..headings[2]];
        ensure!(
            first[0].ends_with("rates from the next refresh")
                && second[0].contains("every 200ms")
                && second[0].contains("rates over 0."),
            "{out}"
        );
        for block in [first, second] {
            let text = block.join("\n");
            for part in ["web ", "  10.50.0.10 ", "  10.50.0.11 ", "DROPPED", "tx "] {
                ensure!(text.contains(part), "no {part:?} in the block:\n{text}");
            }
            ensure!(
                block.last() == Some(&""),
                "blocks end with an empty line:\n{text}"
            );
        }
        let rows = backend_lines(&first.join("\n"));
        ensure!(
            rows.len() == 2
                && rows
                    .iter()
                    .all(|r| r.packet_rate.is_none() && r.share.is_none()),
            "the first block has rates: {rows:?}"
        );
        let rows = backend_lines(&second.join("\n"));
        ensure!(
            rows.len() == 2 && rows.iter().all(|r| r.packet_rate == Some(0.0)),
            "the second block's rates: {rows:?}"
        );
        Ok(())
    });
}

#[test]
fn without_a_daemon_the_view_fails_clearly() -> Result<()> {
    let out = balancer_tests::daemon::cli_without_daemon("watch", &["stats", "--watch"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(4) && err.contains("cannot reach the daemon"),
        "{err}"
    );
    ensure!(out.stdout.is_empty(), "{:?}", out.stdout);
    Ok(())
}

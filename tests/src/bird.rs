//! BIRD 2 in a test namespace, running the configurations the project
//! ships (`dist/bird/`): a shipped file is rendered with the lab's site
//! values ([`render`]), BIRD is started on it ([`Bird::start`]), asked for
//! its sessions through its control socket, and stopped or killed.
//!
//! The shipped files keep every site-specific value in one block of
//! `define NAME = value;` lines between `# ==== SITE BEGIN` and
//! `# ==== SITE END`; rendering replaces that block and nothing else, so
//! the tests run the very lines an operator installs.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::Signal;

use crate::{Lab, Netns, Process, cmd};

/// The shipped configuration of a balancer host.
pub const HOST_CONF: &str = include_str!("../../dist/bird/balancer-host.conf");
/// The shipped configuration of the router in front of the hosts.
pub const ROUTER_CONF: &str = include_str!("../../dist/bird/router.conf");

const SITE_BEGIN: &str = "# ==== SITE BEGIN";
const SITE_END: &str = "# ==== SITE END";

/// How long BIRD may take to answer on its control socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long BIRD may take to exit once told to.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// `shipped` with its SITE block replaced by one `define NAME = VALUE;`
/// line per entry of `site`. `site` must give exactly the constants the
/// shipped block defines, so that a constant added to a shipped file
/// fails here, by name, rather than in BIRD.
pub fn render(shipped: &str, site: &[(&str, String)]) -> Result<String> {
    let lines: Vec<&str> = shipped.lines().collect();
    let find = |marker: &str| {
        lines
            .iter()
            .position(|line| line.starts_with(marker))
            .with_context(|| format!("no `{marker}` line in the shipped configuration"))
    };
    let (begin, end) = (find(SITE_BEGIN)?, find(SITE_END)?);
    ensure!(begin < end, "SITE END comes before SITE BEGIN");
    let mut shipped_names: Vec<&str> = lines[begin..end]
        .iter()
        .filter_map(|line| line.strip_prefix("define "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let mut given: Vec<&str> = site.iter().map(|(name, _)| *name).collect();
    shipped_names.sort_unstable();
    given.sort_unstable();
    ensure!(
        shipped_names == given,
        "the site values {given:?} do not match the shipped SITE block's {shipped_names:?}"
    );
    let mut out: Vec<String> = lines[..=begin].iter().map(|l| l.to_string()).collect();
    out.extend(
        site.iter()
            .map(|(name, value)| format!("define {name} = {value};")),
    );
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// One line of `birdc show protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The protocol's name (`router_v4`, `host4_1`...).
    pub name: String,
    /// Its kind: `BGP`, `Kernel`, `BFD`, `Device`.
    pub proto: String,
    /// `up`, `down`, `start`...
    pub state: String,
    /// The rest of the line after the time it entered that state; for BGP
    /// the session state (`Established`, `Active`, `Passive`...) and the
    /// last error.
    pub info: String,
}

impl Protocol {
    /// A BGP session that is Established.
    pub fn established(&self) -> bool {
        self.proto == "BGP" && self.info.split_whitespace().next() == Some("Established")
    }
}

/// A BIRD process in a namespace, on its own control socket, pid file and
/// log file in the lab's scratch directory. Dropping it kills BIRD (and the
/// lab kills whatever runs in its namespaces).
#[derive(Debug)]
pub struct Bird {
    name: String,
    ns: Netns,
    socket: PathBuf,
    log: PathBuf,
    process: Process,
}

impl Bird {
    /// Writes `config` to `bird-NAME.conf` in the lab's scratch directory,
    /// starts `bird -f` on it in `ns`, and waits until it answers on its
    /// control socket (an invalid configuration fails here, with BIRD's
    /// message). `name` must be unique in the lab.
    pub fn start(lab: &Lab, ns: &Netns, name: &str, config: &str) -> Result<Bird> {
        let conf = lab.write_file(&format!("bird-{name}.conf"), config)?;
        let socket = lab.scratch(&format!("bird-{name}.ctl"))?;
        let pid = lab.scratch(&format!("bird-{name}.pid"))?;
        let log = lab.scratch(&format!("bird-{name}.log"))?;
        let mut command = ns.command("bird");
        // -D: BIRD logs to this file (the shipped files have no `log`
        // statement, which means syslog otherwise).
        command
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(&pid)
            .arg("-D")
            .arg(&log);
        let mut bird = Bird {
            name: name.to_owned(),
            ns: ns.clone(),
            socket,
            log,
            process: Process::start(command)?,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !bird.process.running() {
                bail!(
                    "bird {name} exited at start: {}{}",
                    bird.process.output(),
                    bird.log()
                );
            }
            if bird.birdc(&["show", "status"]).is_ok() {
                return Ok(bird);
            }
            if Instant::now() > deadline {
                bail!(
                    "bird {name} does not answer on {} after {START_TIMEOUT:?}: {}",
                    bird.socket.display(),
                    bird.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace BIRD runs in.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// BIRD's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs `birdc -s SOCKET ARGS...` and returns what it printed.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-s".to_owned(), self.socket.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        // birdc exits 1 when it cannot connect or BIRD refuses the command.
        cmd::run("birdc", &all).with_context(|| self.describe())
    }

    /// "bird NAME", whether it still runs, and the end of its log: the
    /// context of an error.
    fn describe(&self) -> String {
        // A zombie (killed, not yet reaped) still has a /proc entry.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        let running = stat.is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        });
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "bird {} (pid {}, {}); the end of its log:\n{}",
            self.name,
            self.pid(),
            if running {
                "running"
            } else {
                "no longer running"
            },
            tail.join("\n")
        )
    }

    /// Every protocol of `birdc show protocols`.
    pub fn protocols(&self) -> Result<Vec<Protocol>> {
        let out = self.birdc(&["show", "protocols"])?;
        Ok(parse_protocols(&out))
    }

    /// Names of the BGP sessions that are Established.
    pub fn established(&self) -> Result<Vec<String>> {
        Ok(self
            .protocols()?
            .into_iter()
            .filter(Protocol::established)
            .map(|p| p.name)
            .collect())
    }

    /// Waits until at least `count` BGP sessions are Established (2 for a
    /// host: one per family; 2 per host for the router) and returns how
    /// long that took. Fails after `timeout`, quoting the protocols and
    /// BIRD's log.
    pub fn wait_established(&self, count: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let protocols = self.protocols()?;
            if protocols.iter().filter(|p| p.established()).count() >= count {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "bird {}: fewer than {count} BGP sessions Established after {timeout:?}: \
                     {protocols:#?}\nlog:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many BFD sessions are Up (`birdc show bfd sessions`).
    pub fn bfd_sessions_up(&self) -> Result<usize> {
        let out = self.birdc(&["show", "bfd", "sessions"])?;
        Ok(out
            .lines()
            .filter(|line| line.split_whitespace().nth(2) == Some("Up"))
            .count())
    }

    /// Waits until at least `count` BFD sessions are Up and returns how
    /// long that took; fails after `timeout`.
    pub fn wait_bfd_up(&self, count: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.bfd_sessions_up()? >= count {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "bird {}: fewer than {count} BFD sessions Up after {timeout:?}:\n{}",
                    self.name,
                    self.birdc(&["show", "bfd", "sessions"])?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What BIRD logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills BIRD with SIGKILL, as a crash would, and waits until it has
    /// exited. Its peers still learn at once: the kernel closes its TCP
    /// connections, so the router drops its routes within milliseconds.
    /// A host that goes silent (a dead machine, a cut link) is
    /// [`crate::ecmp::Ecmp::fail_host`].
    pub fn kill(&mut self) -> Result<()> {
        self.end(Signal::SIGKILL)
    }

    /// Stops BIRD as an operator would (SIGTERM): it closes its sessions
    /// with a Cease notification, so its peers withdraw its routes at once.
    /// Waits until it has exited.
    pub fn stop(&mut self) -> Result<()> {
        self.end(Signal::SIGTERM)
    }

    fn end(&mut self, signal: Signal) -> Result<()> {
        if self.process.running() {
            self.process.signal(signal)?;
        }
        self.process
            .wait_timeout(EXIT_TIMEOUT)
            .with_context(|| format!("bird {} after {signal}", self.name))?;
        Ok(())
    }
}

/// The protocol lines of `birdc show protocols`: after the greeting and
/// the header line, `NAME PROTO TABLE STATE SINCE INFO...`, where SINCE is
/// one word (BIRD's default time format within a day).
fn parse_protocols(out: &str) -> Vec<Protocol> {
    out.lines()
        .skip_while(|line| !line.starts_with("Name "))
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, proto, _table, state, ..] = words[..] else {
                return None;
            };
            Some(Protocol {
                name: name.to_owned(),
                proto: proto.to_owned(),
                state: state.to_owned(),
                info: words.get(5..).unwrap_or_default().join(" "),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_only_the_site_block() {
        let shipped = "# head\n# ==== SITE BEGIN: x ====\n# why\ndefine A = 1;\ndefine B = 2.2.2.2;\n# ==== SITE END ====\nrouter id B;\n";
        let out = render(shipped, &[("B", "10.0.0.1".into()), ("A", "7".into())]).unwrap();
        assert_eq!(
            out,
            "# head\n# ==== SITE BEGIN: x ====\ndefine B = 10.0.0.1;\ndefine A = 7;\n# ==== SITE END ====\nrouter id B;\n"
        );
        let missing = render(shipped, &[("A", "7".into())]).unwrap_err();
        assert!(missing.to_string().contains("do not match"), "{missing}");
    }

    #[test]
    fn the_shipped_files_have_a_site_block() {
        for shipped in [HOST_CONF, ROUTER_CONF] {
            assert_eq!(shipped.matches(SITE_BEGIN).count(), 1);
            assert_eq!(shipped.matches(SITE_END).count(), 1);
        }
    }

    #[test]
    fn protocols_are_parsed() {
        let out = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     10:00:00.000  \n\
            router_v4  BGP        ---        up     10:00:01.250  Established   \n\
            hosts_v4   BGP        ---        start  10:00:00.000  Passive\n";
        let protocols = parse_protocols(out);
        assert_eq!(protocols.len(), 3);
        assert_eq!(protocols[0].info, "");
        assert!(protocols[1].established());
        assert!(!protocols[2].established());
        assert_eq!(protocols[2].state, "start");
    }
}

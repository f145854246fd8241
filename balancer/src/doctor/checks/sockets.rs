//! The sockets around the daemon: its control socket, and with
//! `[announce]` the BGP daemon's.

use std::path::PathBuf;

use super::Finding;

/// Where the control socket's directory stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directory {
    /// It exists; whether this process may create files in it (false:
    /// why not).
    Exists { writable: Result<(), String> },
    /// Something else has its name: what (`a regular file`...).
    NotADirectory(String),
    /// It does not exist; the nearest ancestor that does, and whether the
    /// directory can be created in it.
    Missing {
        ancestor: PathBuf,
        creatable: Result<(), String>,
    },
}

/// What is at the control socket's own path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Socket {
    Absent,
    /// A socket a daemon answers on, with the pid holding its lock when
    /// /proc/locks tells it.
    Live {
        pid: Option<u32>,
    },
    /// A socket nobody answers on: left by a daemon that died.
    Stale,
    /// Something else: what.
    Other(String),
}

/// What doctor found about the control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFacts {
    pub path: PathBuf,
    pub directory: Directory,
    pub socket: Socket,
}

/// Whether the daemon can make its control socket (it creates the
/// directory, binds beside the path and renames the socket into place),
/// and whether a daemon already answers there.
pub fn control_socket(facts: &ControlFacts) -> Vec<Finding> {
    const CHECK: &str = "control-socket";
    let subject = facts.path.display().to_string();
    let dir = facts
        .path
        .parent()
        .map_or_else(|| ".".to_owned(), |d| d.display().to_string());
    let elsewhere =
        "or set [daemon] control_socket (or --socket) to a path in a writable directory";
    let directory = match &facts.directory {
        Directory::Exists { writable: Ok(()) } => {
            Finding::ok(CHECK, &subject, format!("{dir} exists and is writable"))
        }
        Directory::Exists { writable: Err(why) } => Finding::fail(
            CHECK,
            &subject,
            format!("{dir} is not writable ({why}): the daemon cannot make its socket"),
            format!("make {dir} writable for the daemon's user, {elsewhere}"),
        ),
        Directory::NotADirectory(what) => Finding::fail(
            CHECK,
            &subject,
            format!("{dir} is {what}, not a directory: the daemon cannot make its socket there"),
            format!("remove {dir}, {elsewhere}"),
        ),
        Directory::Missing {
            ancestor,
            creatable: Ok(()),
        } => Finding::ok(
            CHECK,
            &subject,
            format!(
                "{dir} does not exist yet: the daemon creates it (in {})",
                ancestor.display()
            ),
        ),
        Directory::Missing {
            ancestor,
            creatable: Err(why),
        } => Finding::fail(
            CHECK,
            &subject,
            format!(
                "{dir} does not exist and cannot be created in {} ({why})",
                ancestor.display()
            ),
            format!("create {dir} (systemd: RuntimeDirectory=balancer), {elsewhere}"),
        ),
    };
    let mut out = vec![directory];
    match &facts.socket {
        Socket::Absent => {}
        Socket::Live { pid } => out.push(Finding::ok(
            CHECK,
            &subject,
            match pid {
                Some(pid) => format!("a daemon is running (pid {pid}) and answers on it"),
                None => "a daemon is running and answers on it".to_owned(),
            },
        )),
        Socket::Stale => out.push(Finding::ok(
            CHECK,
            &subject,
            "a socket nobody answers on (a daemon that stopped): the next daemon replaces it",
        )),
        Socket::Other(what) if what == "a directory" => out.push(Finding::fail(
            CHECK,
            &subject,
            "a directory has the socket's name: the daemon cannot put its socket there",
            format!("remove the directory {subject}, {elsewhere}"),
        )),
        Socket::Other(what) => out.push(Finding::warn(
            CHECK,
            &subject,
            format!("{what} has the socket's name: the daemon replaces it with its socket"),
            format!("move it away if it matters, {elsewhere}"),
        )),
    }
    out
}

/// Where BIRD's control socket is on Debian (bird2) and most systems.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";

/// One BGP protocol of BIRD's `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    /// `Established`, `Active`, `Connect`...: the rest of its line.
    pub info: String,
}

impl Session {
    fn established(&self) -> bool {
        self.info.contains("Established")
    }
}

/// What BIRD's control socket said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bird {
    /// Nothing at the path.
    Missing,
    /// The path exists but nobody answers: why.
    Silent(String),
    /// BIRD answered: its greeting and its BGP protocols.
    Answered {
        version: String,
        sessions: Vec<Session>,
    },
}

/// What doctor found about the BGP daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpFacts {
    /// `[announce] table`.
    pub table: u32,
    pub socket: PathBuf,
    pub bird: Bird,
}

/// With `[announce]`, whether a BGP daemon announces the routes the
/// daemon keeps in its table: the daemon only writes the kernel table,
/// and without a BGP daemon the routers learn nothing. Any BGP daemon
/// that learns a kernel table works (docs/scale-out.md: FRR, GoBGP), so
/// BIRD missing is a warning, not a failure: only BIRD, the one the
/// project ships a configuration for, can be asked.
pub fn bgp(facts: &BgpFacts) -> Finding {
    const CHECK: &str = "bgp";
    let subject = facts.socket.display().to_string();
    let table = facts.table;
    let install = format!(
        "run BIRD 2 with dist/bird/balancer-host.conf (ANNOUNCE_TABLE = {table}); --bird-socket names another socket; ignore this with FRR or GoBGP (docs/scale-out.md)"
    );
    match &facts.bird {
        Bird::Missing => Finding::warn(
            CHECK,
            subject,
            format!(
                "no BIRD control socket: with [announce], the daemon keeps its routes in table {table} and a BGP daemon must announce them, or the routers send nothing"
            ),
            install,
        ),
        Bird::Silent(why) => Finding::warn(
            CHECK,
            subject,
            format!("BIRD does not answer ({why}): the routes of table {table} are not announced"),
            "systemctl start bird (birdc show protocols tells why it stopped)",
        ),
        Bird::Answered { version, sessions } if sessions.is_empty() => Finding::warn(
            CHECK,
            subject,
            format!(
                "{version} runs, but with no BGP protocol: the routes of table {table} reach no router"
            ),
            install,
        ),
        Bird::Answered { version, sessions } => {
            let up: Vec<&str> = sessions
                .iter()
                .filter(|s| s.established())
                .map(|s| s.name.as_str())
                .collect();
            if up.is_empty() {
                let states: Vec<String> = sessions
                    .iter()
                    .map(|s| format!("{} {}", s.name, s.info))
                    .collect();
                Finding::warn(
                    CHECK,
                    subject,
                    format!(
                        "{version} has no BGP session established ({}): the routes of table {table} reach no router",
                        states.join("; ")
                    ),
                    "birdc show protocols all: check the router's address and AS in the SITE block, and that the router accepts this host",
                )
            } else {
                Finding::ok(
                    CHECK,
                    subject,
                    format!(
                        "{version} runs with {} of {} BGP sessions established ({})",
                        up.len(),
                        sessions.len(),
                        up.join(", ")
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::{Level, table::expect};

    fn control(directory: Directory, socket: Socket) -> ControlFacts {
        ControlFacts {
            path: PathBuf::from("/run/balancer/control.sock"),
            directory,
            socket,
        }
    }

    fn writable() -> Directory {
        Directory::Exists { writable: Ok(()) }
    }

    #[test]
    fn the_control_socket_needs_a_writable_directory() {
        let rows = [
            (
                "writable",
                control(writable(), Socket::Absent),
                Level::Ok,
                "/run/balancer exists and is writable",
                None,
            ),
            (
                "read-only",
                control(
                    Directory::Exists {
                        writable: Err("Read-only file system".to_owned()),
                    },
                    Socket::Absent,
                ),
                Level::Fail,
                "/run/balancer is not writable (Read-only file system)",
                Some("make /run/balancer writable"),
            ),
            (
                "a file in its place",
                control(
                    Directory::NotADirectory("a regular file".to_owned()),
                    Socket::Absent,
                ),
                Level::Fail,
                "/run/balancer is a regular file, not a directory",
                Some("remove /run/balancer"),
            ),
            (
                "missing, creatable",
                control(
                    Directory::Missing {
                        ancestor: PathBuf::from("/run"),
                        creatable: Ok(()),
                    },
                    Socket::Absent,
                ),
                Level::Ok,
                "the daemon creates it (in /run)",
                None,
            ),
            (
                "missing, not creatable",
                control(
                    Directory::Missing {
                        ancestor: PathBuf::from("/"),
                        creatable: Err("Permission denied".to_owned()),
                    },
                    Socket::Absent,
                ),
                Level::Fail,
                "cannot be created in / (Permission denied)",
                Some("RuntimeDirectory=balancer"),
            ),
        ];
        for (case, facts, level, message, fix) in rows {
            let findings = control_socket(&facts);
            assert_eq!(findings.len(), 1, "{case}: {findings:?}");
            expect(case, &findings[0], level, message, fix);
        }
    }

    #[test]
    fn what_is_at_the_socket_path_is_told() {
        let rows = [
            (
                Socket::Live { pid: Some(1234) },
                Level::Ok,
                "a daemon is running (pid 1234) and answers on it",
                None,
            ),
            (
                Socket::Live { pid: None },
                Level::Ok,
                "a daemon is running and answers",
                None,
            ),
            (
                Socket::Stale,
                Level::Ok,
                "the next daemon replaces it",
                None,
            ),
            (
                Socket::Other("a regular file".to_owned()),
                Level::Warn,
                "a regular file has the socket's name: the daemon replaces it",
                Some("move it away"),
            ),
            (
                Socket::Other("a directory".to_owned()),
                Level::Fail,
                "a directory has the socket's name",
                Some("remove the directory /run/balancer/control.sock"),
            ),
        ];
        for (socket, level, message, fix) in rows {
            let findings = control_socket(&control(writable(), socket.clone()));
            assert_eq!(findings.len(), 2, "{socket:?}: {findings:?}");
            expect(&format!("{socket:?}"), &findings[1], level, message, fix);
        }
    }

    #[test]
    fn announcements_need_a_bgp_daemon_with_a_session() {
        let session = |name: &str, info: &str| Session {
            name: name.to_owned(),
            info: info.to_owned(),
        };
        let answered = |sessions| Bird::Answered {
            version: "BIRD 2.0.12".to_owned(),
            sessions,
        };
        let rows = [
            (
                Bird::Missing,
                Level::Warn,
                "no BIRD control socket: with [announce], the daemon keeps its routes in table 4242",
                Some("ANNOUNCE_TABLE = 4242"),
            ),
            (
                Bird::Silent("Connection refused".to_owned()),
                Level::Warn,
                "BIRD does not answer (Connection refused)",
                Some("systemctl start bird"),
            ),
            (
                answered(vec![]),
                Level::Warn,
                "BIRD 2.0.12 runs, but with no BGP protocol",
                Some("balancer-host.conf"),
            ),
            (
                answered(vec![session(
                    "router_v4",
                    "Active   Socket: Connection refused",
                )]),
                Level::Warn,
                "no BGP session established (router_v4 Active   Socket: Connection refused)",
                Some("birdc show protocols all"),
            ),
            (
                answered(vec![
                    session("router_v4", "Established"),
                    session("router_v6", "Connect"),
                ]),
                Level::Ok,
                "BIRD 2.0.12 runs with 1 of 2 BGP sessions established (router_v4)",
                None,
            ),
        ];
        for (bird, level, message, fix) in rows {
            let facts = BgpFacts {
                table: 4242,
                socket: PathBuf::from(DEFAULT_BIRD_SOCKET),
                bird: bird.clone(),
            };
            expect(&format!("{bird:?}"), &bgp(&facts), level, message, fix);
        }
    }
}

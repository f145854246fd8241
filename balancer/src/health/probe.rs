//! The probes: TCP connect, HTTP GET, UDP request and reply, and a command.
//! Each returns `Ok(detail)` when the backend is healthy and `Err(Fail)`
//! otherwise, within the check's timeout. A failure of this host rather
//! than of the backend (no descriptor, no memory, no local port, no
//! process) is marked [`Fail::local`]: it says nothing of the backend.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    process::Stdio,
};

use nix::errno::Errno;

use tokio::{
    net::{TcpStream, UdpSocket},
    process::Command,
    time::timeout,
};

use super::group::GroupKill;
use crate::config::{CheckKind, HealthCheckConfig};

/// Why a check did not find the backend healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fail {
    pub reason: String,
    /// The check could not run on this host (out of descriptors, memory,
    /// local ports or processes): the backend's health is unknown.
    pub local: bool,
}

impl Fail {
    /// The backend failed the check.
    fn backend(reason: String) -> Fail {
        Fail {
            reason,
            local: false,
        }
    }

    /// `err` while `doing`: local when it is a shortage of this host.
    fn io(doing: String, err: &std::io::Error) -> Fail {
        Fail {
            reason: format!("{doing}: {err}"),
            local: is_local(err),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Whether `err` is a shortage of this host rather than an answer (or
/// silence) of the backend.
fn is_local(err: &std::io::Error) -> bool {
    let local = [
        Errno::EMFILE,
        Errno::ENFILE,
        Errno::ENOBUFS,
        Errno::ENOMEM,
        Errno::EADDRNOTAVAIL,
        Errno::EAGAIN,
    ];
    err.raw_os_error()
        .is_some_and(|code| local.contains(&Errno::from_raw(code)))
}

/// The first I/O error in `err`'s chain of sources.
fn io_source<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = err.source();
    }
    None
}

/// State shared by the checks of one task (the HTTP client keeps no
/// connection between checks: each check is a fresh connection).
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    pub fn new() -> Client {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Client { http }
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs one check of `check.kind` against `address:port`.
pub async fn run(
    client: &Client,
    check: &HealthCheckConfig,
    address: IpAddr,
    port: u16,
) -> Result<String, Fail> {
    let target = SocketAddr::new(address, port);
    let work = async {
        match check.kind {
            CheckKind::Tcp => tcp(target).await,
            CheckKind::Http => http(client, check, target).await,
            CheckKind::Udp => udp(check, target).await,
            CheckKind::Exec => exec(check, address, port).await,
            CheckKind::None => Ok("no check".to_owned()),
        }
    };
    match timeout(check.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(Fail::backend(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        ))),
    }
}

async fn tcp(target: SocketAddr) -> Result<String, Fail> {
    TcpStream::connect(target)
        .await
        .map(|_| "connected".to_owned())
        .map_err(|e| Fail::io(format!("tcp connect to {target}"), &e))
}

async fn http(
    client: &Client,
    check: &HealthCheckConfig,
    target: SocketAddr,
) -> Result<String, Fail> {
    let url = format!("http://{target}{}", check.path);
    let response = client.http.get(&url).send().await.map_err(|e| Fail {
        reason: format!("GET {url}: {}", crate::logging::error_chain(&e)),
        local: io_source(&e).is_some_and(is_local),
    })?;
    let status = response.status().as_u16();
    if status == check.expect_status {
        Ok(format!("GET {url}: {status}"))
    } else {
        Err(Fail::backend(format!(
            "GET {url}: status {status}, expected {}",
            check.expect_status
        )))
    }
}

async fn udp(check: &HealthCheckConfig, target: SocketAddr) -> Result<String, Fail> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| Fail::io("udp socket".to_owned(), &e))?;
    socket
        .connect(target)
        .await
        .map_err(|e| Fail::io(format!("udp connect to {target}"), &e))?;
    let send = check.send.as_deref().unwrap_or_default();
    let expect = check.expect.as_deref().unwrap_or_default();
    socket
        .send(send.as_bytes())
        .await
        .map_err(|e| Fail::io(format!("udp send to {target}"), &e))?;
    let mut buf = vec![0u8; 65_536];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| Fail::io(format!("udp reply from {target}"), &e))?;
    if buf[..n].starts_with(expect.as_bytes()) {
        Ok(format!("udp {target}: expected reply"))
    } else {
        Err(Fail::backend(format!(
            "udp {target}: reply {:?} does not start with {expect:?}",
            String::from_utf8_lossy(&buf[..n.min(64)])
        )))
    }
}

/// Runs the command with `sh -c` in a process group of its own, killed as
/// a whole when the check ends ([`GroupKill`]); `kill_on_drop` also has
/// tokio reap the shell when the check is dropped before it exits.
async fn exec(check: &HealthCheckConfig, address: IpAddr, port: u16) -> Result<String, Fail> {
    let command = check.command.as_deref().unwrap_or_default();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BALANCER_BACKEND", address.to_string())
        .env("BALANCER_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Fail::io(format!("cannot run {command:?}"), &e))?;
    let _group = GroupKill::of(&child);
    let status = child
        .wait()
        .await
        .map_err(|e| Fail::io(format!("{command:?}"), &e))?;
    if status.success() {
        Ok(format!("{command:?} exited 0"))
    } else {
        Err(Fail::backend(format!("{command:?} exited with {status}")))
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use balancer_tests::process;

    use super::*;

    fn check(kind: CheckKind) -> HealthCheckConfig {
        HealthCheckConfig {
            kind,
            timeout: Duration::from_millis(300),
            ..HealthCheckConfig::default()
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn udp_checks_compare_the_reply() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let reply: &[u8] = if &buf[..n] == b"ping" {
                    b"pong!"
                } else {
                    b"what?"
                };
                let _ = server.send_to(reply, from);
            }
        });
        let mut c = check(CheckKind::Udp);
        c.send = Some("ping".into());
        c.expect = Some("pong".into());
        assert!(run(&Client::new(), &c, LOCAL, port).await.is_ok());
        c.send = Some("hello".into());
        let err = run(&Client::new(), &c, LOCAL, port).await.unwrap_err();
        assert!(err.reason.contains("does not start with \"pong\""), "{err}");
    }

    #[tokio::test]
    async fn exec_checks_use_the_exit_status_and_the_timeout() {
        let mut c = check(CheckKind::Exec);
        c.command = Some("test \"$BALANCER_BACKEND:$BALANCER_PORT\" = 127.0.0.1:8080".into());
        assert!(run(&Client::new(), &c, LOCAL, 8080).await.is_ok());
        assert!(run(&Client::new(), &c, LOCAL, 9090).await.is_err());
        c.command = Some("sleep 5".into());
        let started = std::time::Instant::now();
        let err = run(&Client::new(), &c, LOCAL, 8080).await.unwrap_err();
        assert!(err.reason.contains("no answer within"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the timeout was not enforced"
        );
    }

    /// An exec check whose command starts `sleep MARKER` twice: in the
    /// background and in a shell of its own (a grandchild of the check).
    fn leaky(tag: u8, timeout: Duration) -> (HealthCheckConfig, String) {
        let marker = process::sleep_marker(tag);
        let mut c = check(CheckKind::Exec);
        c.timeout = timeout;
        c.command = Some(format!("sleep {marker} & sh -c 'sleep {marker}'"));
        (c, marker)
    }

    #[tokio::test]
    async fn a_timed_out_exec_check_kills_everything_its_command_started() {
        let (c, marker) = leaky(1, Duration::from_millis(200));
        for _ in 0..3 {
            let err = run(&Client::new(), &c, LOCAL, 8080).await.unwrap_err();
            assert!(err.reason.contains("no answer within"), "{err}");
        }
        let left = process::wait_marked_gone(&marker, Duration::from_secs(2));
        assert_eq!(left, 0, "processes of timed-out checks still run");
    }

    #[tokio::test]
    async fn an_exec_check_that_exits_leaves_no_background_process() {
        let marker = process::sleep_marker(2);
        let mut c = check(CheckKind::Exec);
        c.command = Some(format!("sleep {marker} & exit 0"));
        assert!(run(&Client::new(), &c, LOCAL, 8080).await.is_ok());
        let left = process::wait_marked_gone(&marker, Duration::from_secs(2));
        assert_eq!(left, 0, "the command's background job outlived the check");
    }

    #[tokio::test]
    async fn an_aborted_exec_check_kills_its_process_group() {
        let (c, marker) = leaky(3, Duration::from_secs(60));
        let task = tokio::spawn(async move { run(&Client::new(), &c, LOCAL, 8080).await });
        let started = std::time::Instant::now();
        while process::count_marked(&marker) < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the command did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let left = process::wait_marked_gone(&marker, Duration::from_secs(2));
        assert_eq!(left, 0, "processes of an aborted check still run");
    }

    #[tokio::test]
    async fn a_closed_port_fails_a_tcp_check() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = run(&Client::new(), &check(CheckKind::Tcp), LOCAL, port)
            .await
            .unwrap_err();
        assert!(err.reason.contains("tcp connect"), "{err}");
    }
}

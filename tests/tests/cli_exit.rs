//! The CLI's exit statuses (`balancer --help`, docs/control-api.md): 0
//! success, 1 any other failure, 2 a usage error, 3 the daemon refused the
//! request, 4 no daemon answered, each from the binary against a real
//! daemon, and against sockets no daemon serves.

use std::{process::Output, time::Duration};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    balancer_bin,
    daemon::{cli, start},
    netns_test,
};
use nix::sys::signal::Signal;

/// A configuration on loopback, which takes XDP in generic mode only.
const CONFIG: &str = "[datapath]\ninterfaces = [\"lo\"]\nxdp_mode = \"generic\"\n";

/// Fails unless `out` exited with `code` and, when `fragment` is not
/// empty, said it on stderr.
fn expect(what: &str, out: &Output, code: i32, fragment: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code) && stderr.contains(fragment),
        "{what}: expected exit status {code} and {fragment:?}, got {}:\n{stderr}",
        out.status
    );
    eprintln!("{what}: exit status {code}");
    Ok(())
}

#[test]
fn exit_statuses_tell_success_refusal_no_daemon_and_failure_apart() {
    netns_test("cli_exit", Duration::from_secs(90), |lab| {
        let host = lab.netns("host")?;
        let config = lab.write_file("balancer.toml", CONFIG)?;
        let mut daemon = start(lab, &host, ["--config".as_ref(), config.as_os_str()])?;
        let socket = lab.scratch("control.sock")?;

        expect("status", &cli(lab, ["status"])?, 0, "")?;
        expect(
            "vip add",
            &cli(lab, ["vip", "add", "web", "192.0.2.10:80/tcp"])?,
            0,
            "",
        )?;

        // The daemon answers with an error: 3, whatever the request.
        expect(
            "vip show of an unknown VIP",
            &cli(lab, ["vip", "show", "nope"])?,
            3,
            "no VIP named \"nope\"",
        )?;
        expect(
            "backend add of the other family",
            &cli(lab, ["backend", "add", "web", "fd00::1"])?,
            3,
            "address family",
        )?;
        expect(
            "a second vip add of the same name",
            &cli(lab, ["vip", "add", "web", "192.0.2.11:80/tcp"])?,
            3,
            "web",
        )?;

        // clap's usage errors keep 2.
        expect(
            "vip show without a name",
            &cli(lab, ["vip", "show"])?,
            2,
            "required",
        )?;

        // Any other failure is 1: a file that cannot be read, and a socket
        // a daemon serves but this user may not use (the socket is root's,
        // mode 0600).
        let missing = lab.scratch("missing.toml")?;
        let out = std::process::Command::new(balancer_bin()?)
            .arg("check-config")
            .arg(&missing)
            .output()?;
        expect(
            "check-config of a missing file",
            &out,
            1,
            "cannot read the configuration",
        )?;
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(balancer_bin()?)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .output()
            .context("cannot run setpriv (util-linux)")?;
        expect(
            "status as nobody",
            &out,
            1,
            "cannot connect to the daemon at",
        )?;
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{out:?}"
        );

        // No daemon answers: 4, whether the daemon removed its socket
        // (SIGTERM) or left it behind (SIGKILL: connection refused).
        daemon.signal(Signal::SIGTERM)?;
        daemon.wait_timeout(Duration::from_secs(10))?;
        ensure!(!socket.exists(), "the daemon left {}", socket.display());
        expect(
            "status without a socket",
            &cli(lab, ["status"])?,
            4,
            "cannot reach the daemon",
        )?;
        let mut daemon = start(lab, &host, ["--config".as_ref(), config.as_os_str()])?;
        expect("status of a new daemon", &cli(lab, ["status"])?, 0, "")?;
        daemon.signal(Signal::SIGKILL)?;
        daemon.wait_timeout(Duration::from_secs(5))?;
        ensure!(socket.exists(), "SIGKILL removed {}", socket.display());
        expect(
            "status on a socket left behind",
            &cli(lab, ["vip", "list"])?,
            4,
            "Connection refused",
        )?;
        Ok(())
    });
}

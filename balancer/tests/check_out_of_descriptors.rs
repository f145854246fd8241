//! A health check that cannot open a socket because this process has run
//! out of file descriptors: the failure is this host's, not the backend's,
//! so it is reported inconclusive and never counts against the backend. A
//! test binary of its own, since the limit it lowers is the whole
//! process's.

use std::{net::IpAddr, os::fd::OwnedFd, time::Duration};

use balancer::{
    config::{CheckKind, HealthCheckConfig},
    health::probe::{Client, run},
};

#[test]
fn a_check_without_a_descriptor_is_inconclusive_not_a_failure() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = Client::new();
    let local = IpAddr::from([127, 0, 0, 1]);
    let check = |kind| HealthCheckConfig {
        kind,
        timeout: Duration::from_secs(2),
        send: Some("ping".into()),
        ..HealthCheckConfig::default()
    };
    let healthy = runtime.block_on(run(&client, &check(CheckKind::Tcp), local, port));
    assert!(healthy.is_ok(), "{healthy:?}");

    // Take every descriptor left under a low limit.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = 256;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let mut held: Vec<OwnedFd> = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        held.push(file.into());
    }

    for kind in [CheckKind::Tcp, CheckKind::Udp, CheckKind::Exec] {
        let mut c = check(kind);
        c.command = Some("true".into());
        let outcome = runtime.block_on(run(&client, &c, local, port));
        let fail = outcome.expect_err("a check cannot run without a descriptor");
        assert!(fail.local, "{kind:?}: {fail} counted against the backend");
    }
    drop(held);
    let healthy = runtime.block_on(run(&client, &check(CheckKind::Tcp), local, port));
    assert!(healthy.is_ok(), "{healthy:?}");
}

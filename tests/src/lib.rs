//! Network-namespace test harness for the balancer's tests, demo and
//! benchmarks.
//!
//! A [`Lab`] owns a set of network namespaces ([`Netns`]) joined by veth
//! pairs and bridges, and removes all of them, with every process inside,
//! when it is dropped: on success, on panic, and (through [`netns_test`])
//! on timeout. Names are unique per process and per lab, so tests run in
//! parallel; namespaces left by a process that was killed are swept by the
//! next lab ([`sweep_stale`]).
//!
//! Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); see
//! [`privilege`] for how tests behave without it.

pub mod backend;
pub mod bird;
pub mod case;
pub mod cmd;
pub mod daemon;
pub mod doctor;
pub mod ecmp;
pub mod fixture;
pub mod flood;
pub mod lab;
pub mod load;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod plot_run;
pub mod privilege;
pub mod process;
pub mod pty;
pub mod servers;
mod sweep;
pub mod topology;

use std::{
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    path::PathBuf,
    sync::mpsc,
    thread,
    time::Duration,
};

pub use lab::{Lab, VethOptions};
pub use netns::Netns;
pub use process::Process;
pub use sweep::{NAME_PREFIX, leftover_namespaces, leftover_pins, leftover_processes, sweep_stale};

/// Runs a privileged test body in a fresh [`Lab`], with a deadline.
///
/// - Without privileges, an unprivileged developer run prints why the test
///   was skipped and returns; as root or with `CI=true` the test always
///   runs and fails loudly if something is missing ([`privilege::check`]).
/// - An `Err` from the body fails the test with the whole error chain.
/// - The lab is torn down when the body returns, when it panics, and when
///   `timeout` passes; a timeout fails the test.
pub fn netns_test<F>(name: &str, timeout: Duration, body: F)
where
    F: FnOnce(&Lab) -> anyhow::Result<()> + Send + 'static,
{
    if !privilege::check(name) {
        return;
    }
    let lab = Lab::new(name).unwrap_or_else(|err| panic!("{name}: cannot build the lab: {err:#}"));
    let teardown = lab.teardown_handle();
    let (done, outcome) = mpsc::channel();
    let worker = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(|| body(&lab)));
            drop(lab);
            // The receiver is gone only if the test already timed out.
            let _ = done.send(result);
        })
        .expect("failed to spawn the test thread");
    match outcome.recv_timeout(timeout) {
        Ok(Ok(Ok(()))) => {
            let _ = worker.join();
        }
        Ok(Ok(Err(err))) => panic!("{name} failed: {err:#}"),
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => {
            teardown.run();
            panic!("{name} timed out after {timeout:?}; its namespaces and processes were removed");
        }
    }
}

/// Calls `probe` every `step` until it returns `Ok(Ok(value))`, and
/// returns that value; `Ok(Err(why))` says why not yet, and after
/// `timeout` the last `why` is the error. An `Err` from `probe` fails at
/// once.
pub fn poll<T>(
    timeout: Duration,
    step: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Result<T, String>>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let why = match probe()? {
            Ok(value) => return Ok(value),
            Err(why) => why,
        };
        if std::time::Instant::now() > deadline {
            anyhow::bail!("still not so after {timeout:?}: {why}");
        }
        std::thread::sleep(step);
    }
}

/// Path of the `balancer` executable under test: `$BALANCER_BIN` when set
/// (`cargo xtask` sets it to the binary it just built), otherwise the one
/// cargo built next to the running test (`cargo test --workspace` builds it
/// fresh, because the balancer package has integration tests).
pub fn balancer_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BALANCER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/balancer
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("balancer"));
    match candidate {
        Some(path) if path.is_file() => Ok(path),
        _ => anyhow::bail!(
            "cannot find the balancer binary: set BALANCER_BIN, or run `cargo build -p balancer` \
             (or `cargo xtask test`, which builds it)"
        ),
    }
}

//! Whether privileged tests run, skip, or fail.
//!
//! The rule: as root, or whenever `CI` is set to a true value, a privileged
//! test always runs, and a missing tool or capability fails it loudly. Only
//! an unprivileged developer run may skip it, and then it says so on
//! stderr with the reason and the command that runs it.

use std::env;

use nix::unistd::Uid;

/// Tools every namespace test needs on `PATH`.
pub const REQUIRED_TOOLS: &[&str] = &["ip", "ethtool"];

/// True when `CI` is set to `true`/`1`/`yes` (any case).
pub fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// What a privileged test does in a given environment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run it.
    Run,
    /// Skip it, printing this reason (unprivileged developer runs only).
    Skip(String),
    /// Fail it with this message: it must run here but cannot.
    Fail(String),
}

/// The rule itself, free of I/O: `root` is the effective uid check, `ci`
/// whether `CI` is set, `missing_tools` what [`REQUIRED_TOOLS`] lacks.
pub fn decide(test: &str, root: bool, ci: bool, missing_tools: &[&str]) -> Decision {
    if !root && ci {
        return Decision::Fail(format!(
            "{test}: this privileged test must run under CI=true, but the process is not root \
             (it creates network namespaces and attaches XDP programs)"
        ));
    }
    if !root {
        return Decision::Skip(format!(
            "SKIPPED {test}: needs root to create network namespaces and attach XDP; \
             run `sudo -E cargo xtask test` to include it"
        ));
    }
    if !missing_tools.is_empty() {
        return Decision::Fail(format!(
            "{test}: missing tools {missing_tools:?}; `cargo xtask bootstrap` installs them"
        ));
    }
    Decision::Run
}

/// Decides whether privileged test `test` runs here. Returns `false` (after
/// printing why) only for an unprivileged run outside CI; panics when the
/// test must run but cannot.
pub fn check(test: &str) -> bool {
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|tool| which(tool).is_none())
        .collect();
    match decide(test, Uid::effective().is_root(), in_ci(), &missing) {
        Decision::Run => true,
        Decision::Skip(reason) => {
            // Straight to stderr: the test harness captures eprintln!
            // output of passing tests, and a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{reason}");
            false
        }
        Decision::Fail(message) => panic!("{message}"),
    }
}

/// Runs the body of privileged test `test` that needs no namespace of its
/// own (a BPF_PROG_TEST_RUN test, say): skipped, run or failed as [`check`]
/// decides, and an `Err` from `body` fails the test with its whole chain.
pub fn run(test: &str, body: impl FnOnce() -> anyhow::Result<()>) {
    if check(test)
        && let Err(err) = body()
    {
        panic!("{test} failed: {err:#}");
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_with_every_tool_runs() {
        assert_eq!(decide("t", true, false, &[]), Decision::Run);
        assert_eq!(decide("t", true, true, &[]), Decision::Run);
    }

    #[test]
    fn only_an_unprivileged_run_outside_ci_skips_and_says_why() {
        match decide("t", false, false, &[]) {
            Decision::Skip(reason) => {
                assert!(reason.contains("SKIPPED t") && reason.contains("root"))
            }
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn ci_without_root_fails_loudly() {
        assert!(
            matches!(decide("t", false, true, &[]), Decision::Fail(m) if m.contains("CI=true"))
        );
    }

    #[test]
    fn a_missing_tool_fails_a_privileged_run() {
        assert!(
            matches!(decide("t", true, false, &["ethtool"]), Decision::Fail(m) if m.contains("ethtool"))
        );
    }
}

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

/// Decides whether privileged test `test` runs. Returns `false` (after
/// printing why) only for an unprivileged run outside CI; panics when the
/// test must run but cannot.
pub fn check(test: &str) -> bool {
    let root = Uid::effective().is_root();
    if !root {
        if in_ci() {
            panic!(
                "{test}: this privileged test must run under CI=true, but the process is not root \
                 (it creates network namespaces and attaches XDP programs)"
            );
        }
        eprintln!(
            "SKIPPED {test}: needs root to create network namespaces and attach XDP; \
             run `sudo -E cargo xtask test` to include it"
        );
        return false;
    }
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|tool| which(tool).is_none())
        .collect();
    if !missing.is_empty() {
        panic!("{test}: missing tools {missing:?}; `cargo xtask bootstrap` installs them");
    }
    true
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

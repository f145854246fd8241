//! The daemon's open-file limit. Every health check holds a descriptor
//! while it runs (a TCP or HTTP check its socket, which a backend that
//! drops SYNs keeps open until the timeout), and a ring rebuild opens up to
//! [`RINGS_PER_BATCH`] ring maps at once. Under the soft limit of 1,024
//! that systemd and most shells give, a thousand such backends exhaust it
//! and a ring rebuild fails with "Too many open files". So the daemon
//! raises its soft limit to the hard one at start, logs the limit it runs
//! with, and warns when even that is low for the configuration.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::{
    config::{CheckKind, Config},
    datapath::RINGS_PER_BATCH,
};

/// Descriptors the daemon holds besides its checks and rings: the program,
/// its maps and links, netlink, the control socket and its clients, the
/// metrics listener and its scrapes, a generous allowance.
const BASE_DESCRIPTORS: u64 = 256;

/// Raises the soft open-file limit to the hard one, logs the limit the
/// daemon runs with (once, INFO), and warns when it is below what
/// `config`'s checks and rings need. Never fails: the daemon runs with the
/// limit it has.
pub(super) fn raise_open_files(config: &Config) {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the open-file limit");
            return;
        }
    };
    let limit = match raised(soft, hard) {
        None => soft,
        Some(new) => match setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
            Ok(()) => new,
            Err(err) => {
                tracing::warn!(error = %err, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
    };
    tracing::info!(
        hard,
        was = soft,
        "running with an open-file limit of {limit}"
    );
    let checks = checked_backends(config);
    let needed = needed(checks);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is low for {checks} checked backends: a check or a ring rebuild may fail with \"Too many open files\"; raise LimitNOFILE= in the unit (or ulimit -Hn)"
        );
    }
}

/// The soft limit to set for the current `(soft, hard)` limits: the hard
/// one when it is higher; `None` keeps the soft one.
fn raised(soft: u64, hard: u64) -> Option<u64> {
    (hard > soft).then_some(hard)
}

/// Descriptors the daemon may hold at once with `checks` backends checked:
/// one per check in flight, a batch of rings, and its own.
fn needed(checks: usize) -> u64 {
    BASE_DESCRIPTORS + RINGS_PER_BATCH as u64 + checks as u64
}

/// The backends of `config` that have a health check (one task each per
/// VIP they serve).
fn checked_backends(config: &Config) -> usize {
    config
        .vips
        .iter()
        .map(|vip| vip.get_ref())
        .filter(|vip| vip.check().kind != CheckKind::None)
        .map(|vip| vip.backends.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        assert_eq!(raised(1024, 524_288), Some(524_288));
        assert_eq!(raised(256, 4096), Some(4096));
    }

    #[test]
    fn a_soft_limit_at_the_hard_one_is_kept() {
        assert_eq!(raised(65_536, 65_536), None);
        assert_eq!(raised(4096, 1024), None);
    }

    #[test]
    fn a_thousand_checked_backends_need_more_than_1024_descriptors() {
        assert!(needed(1_000) > 1024);
        assert!(needed(0) < 1024, "a daemon without checks fits the default");
    }

    #[test]
    fn the_units_limit_fits_thousands_of_checked_backends() {
        let unit = include_str!("../../../dist/systemd/balancer.service");
        let limit: u64 = unit
            .lines()
            .find_map(|line| line.strip_prefix("LimitNOFILE="))
            .expect("the unit sets LimitNOFILE=")
            .parse()
            .expect("a number");
        assert!(needed(10_000) <= limit, "LimitNOFILE={limit}");
    }

    #[test]
    fn only_backends_with_a_check_count() {
        let vip = |name: &str, address: &str, check: &str, backends: &[&str]| {
            let backends: Vec<String> = backends
                .iter()
                .map(|b| format!("{{ address = \"{b}\" }}"))
                .collect();
            format!(
                "{{ name = \"{name}\", address = \"{address}\", port = 80, protocol = \"tcp\", health_check = {{ kind = \"{check}\" }}, backend = [{}] }}",
                backends.join(", ")
            )
        };
        let text = format!(
            "vip = [{}, {}]",
            vip("checked", "192.0.2.1", "tcp", &["10.0.0.1", "10.0.0.2"]),
            vip("unchecked", "192.0.2.2", "none", &["10.0.0.3"]),
        );
        let config = crate::config::parse(&text, "test.toml").unwrap();
        assert_eq!(checked_backends(&config), 2);
    }
}

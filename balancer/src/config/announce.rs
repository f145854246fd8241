//! `[announce]`: which VIPs this host asks the routers to send it, through
//! a BGP daemon (BIRD) that announces the routes the daemon keeps in a
//! kernel routing table of their own. Absent: nothing is announced.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::duration;

/// Routing tables the kernel itself uses (unspec, default, main, local):
/// never ours.
pub const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

/// Where the drain mark is kept by default: it outlives a reboot, so a
/// host drained for maintenance comes back drained.
pub const DEFAULT_DRAIN_FILE: &str = "/var/lib/balancer/drained";

/// `[announce]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// The kernel routing table the daemon keeps one route per announced
    /// VIP address in (and nothing else); the BGP daemon learns it. No
    /// rule points lookups at it, so it changes nothing of the host's own
    /// routing.
    pub table: Spanned<u32>,
    /// How long a VIP must have been servable before it is announced, or
    /// announced again after a withdrawal: a flapping backend does not
    /// flap the route.
    #[serde(default = "default_delay", deserialize_with = "duration")]
    pub announce_delay: Duration,
    /// How long `balancer teardown` waits between withdrawing the routes
    /// and detaching the program, so that routers stop sending first.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub withdraw_grace: Duration,
    /// While this file exists the host is drained: no VIP is announced.
    /// `balancer host drain` creates it, `undrain` removes it; a deploy
    /// tool may do either.
    #[serde(default = "default_drain_file")]
    pub drain_file: PathBuf,
}

fn default_delay() -> Duration {
    Duration::from_secs(5)
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

fn default_drain_file() -> PathBuf {
    PathBuf::from(DEFAULT_DRAIN_FILE)
}

/// Longest `announce_delay` and `withdraw_grace` accepted.
pub const MAX_ANNOUNCE_WAIT: Duration = Duration::from_secs(3600);

/// A VIP's `min_healthy` when the file has none: one backend up is enough
/// to serve.
pub const DEFAULT_MIN_HEALTHY: u32 = 1;

impl AnnounceConfig {
    /// What is wrong with the section, as (span, message) pairs.
    pub fn problems(&self) -> Vec<(std::ops::Range<usize>, String)> {
        let mut out = Vec::new();
        let table = *self.table.get_ref();
        if RESERVED_TABLES.contains(&table) {
            out.push((
                self.table.span(),
                format!(
                    "table {table} is one the kernel uses (0, 253 default, 254 main, 255 local): pick a table of its own, such as 4242"
                ),
            ));
        }
        for (key, value) in [
            ("announce_delay", self.announce_delay),
            ("withdraw_grace", self.withdraw_grace),
        ] {
            if value > MAX_ANNOUNCE_WAIT {
                out.push((
                    0..0,
                    format!(
                        "[announce] {key} {} is longer than {}",
                        super::format_duration(value),
                        super::format_duration(MAX_ANNOUNCE_WAIT)
                    ),
                ));
            }
        }
        if self.drain_file.as_os_str().is_empty() || self.drain_file.is_relative() {
            out.push((
                0..0,
                format!(
                    "[announce] drain_file {:?} must be an absolute path",
                    self.drain_file.display().to_string()
                ),
            ));
        }
        out
    }
}

/// A VIP's `min_healthy`, the default filled in.
pub fn min_healthy(setting: Option<&Spanned<u32>>) -> u32 {
    setting.map_or(DEFAULT_MIN_HEALTHY, |s| *s.get_ref())
}

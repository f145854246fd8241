//! Keeps the announcement table in line with the gates: the addresses
//! [`Gates::decide`] says to announce get a route, the others lose theirs.
//! Also keeps the drain mark (a file, so that it outlives the daemon and a
//! reboot) and what the answers and metrics say of announcements.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::gates::{Gates, Host, Input, Verdict, Why};
use crate::{config::AnnounceConfig, routes};

/// How often the table is read again, to put back a route someone took
/// out (and take out one someone put in).
const REREAD_INTERVAL: Duration = Duration::from_secs(10);

/// Waits before writing the table again after a write failed: every
/// event would otherwise try (and log) again.
const RETRY: super::backoff::Backoff =
    super::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// The announcements of this host.
pub(super) struct Announcer {
    table: routes::Table,
    gates: Gates,
    /// Addresses the table holds, as last read or written.
    held: BTreeSet<IpAddr>,
    drain_file: PathBuf,
    /// The drain mark was there at the last look.
    pub(super) drained: bool,
    /// The last decision.
    pub(super) verdict: Verdict,
    /// Route writes that failed since the start.
    pub(super) errors: u64,
    /// The last failure, until a later write succeeds.
    pub(super) last_error: Option<String>,
    read_at: Instant,
    /// After a failed write: when the table is written again.
    retry: super::backoff::Backoff,
}

impl Announcer {
    /// Opens the table of `config` and notes what it holds: a previous
    /// daemon's announcements, kept if their VIPs are servable.
    pub(super) async fn start(config: &AnnounceConfig) -> Result<Announcer> {
        let table = routes::Table::connect(*config.table.get_ref())?;
        let held = table.read().await?;
        let drained = config.drain_file.exists();
        tracing::info!(
            table = table.id(),
            announced = held.len(),
            drained,
            "announcing VIPs through routing table {}",
            table.id()
        );
        Ok(Announcer {
            gates: Gates::new(held.clone()),
            table,
            held,
            drain_file: config.drain_file.clone(),
            drained,
            verdict: Verdict::default(),
            errors: 0,
            last_error: None,
            read_at: Instant::now(),
            retry: RETRY,
        })
    }

    /// The table's id.
    pub(super) fn table(&self) -> u32 {
        self.table.id()
    }

    /// Addresses announced now.
    pub(super) fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.held
    }

    /// Why `vip` is or is not announced (None before the first decision).
    pub(super) fn why(&self, vip: &str) -> Option<&Why> {
        self.verdict.vips.get(vip)
    }

    /// Decides again for `vips` and brings the table in line.
    pub(super) async fn step(&mut self, vips: &[Input], attached: bool, delay: Duration) {
        let now = Instant::now();
        self.drained = self.drain_file.exists();
        if now >= self.read_at + REREAD_INTERVAL {
            self.read_at = now;
            match self.table.read().await {
                Ok(held) => {
                    if held != self.held {
                        tracing::warn!(
                            table = self.table.id(),
                            "the announcement table changed behind the daemon's back: putting it back"
                        );
                    }
                    self.held = held;
                }
                Err(err) => self.failed(err.to_string()),
            }
        }
        let host = Host {
            attached,
            drained: self.drained,
            delay,
            now,
        };
        let verdict = self.gates.decide(vips, &host);
        for (vip, why) in &verdict.vips {
            let before = self.verdict.vips.get(vip).map(Why::state);
            if before != Some(why.state()) {
                tracing::info!(vip, state = why.state(), reason = %why, "announcement");
            }
        }
        self.verdict = verdict;
        if !self.retry.due(now) {
            return;
        }
        let want = self.verdict.addresses.clone();
        let mut failed = false;
        for address in self.held.clone().difference(&want) {
            match self.table.remove(*address).await {
                Ok(()) => {
                    self.held.remove(address);
                    tracing::info!(%address, "withdrawn");
                }
                Err(err) => {
                    failed = true;
                    self.failed(err.to_string());
                }
            }
        }
        for address in want.difference(&self.held.clone()) {
            match self.table.add(*address).await {
                Ok(()) => {
                    self.held.insert(*address);
                    tracing::info!(%address, "announced");
                }
                Err(err) => {
                    failed = true;
                    self.failed(err.to_string());
                }
            }
        }
        if failed {
            self.retry.failed(now);
        } else {
            self.retry.succeeded();
            if self.held == want {
                self.last_error = None;
            }
        }
    }

    /// When to decide again: a VIP's delay ends, a failed write is tried
    /// again, or the next read.
    pub(super) fn due(&self) -> Instant {
        [self.verdict.next, self.retry.due_at()]
            .into_iter()
            .flatten()
            .fold(self.read_at + REREAD_INTERVAL, Instant::min)
    }

    /// Puts the drain mark in (`drained`) or takes it out.
    pub(super) fn set_drained(&mut self, drained: bool) -> Result<()> {
        set_mark(&self.drain_file, drained)?;
        self.drained = drained;
        tracing::info!(
            drained,
            mark = %self.drain_file.display(),
            "host {}",
            if drained { "drained" } else { "undrained" }
        );
        Ok(())
    }

    /// Counts a failure; logs it when it differs from the last one.
    fn failed(&mut self, error: String) {
        if self.last_error.as_ref() != Some(&error) {
            tracing::error!(
                error,
                "cannot keep the announcement table in line; retrying with a growing wait"
            );
        }
        self.errors += 1;
        self.last_error = Some(error);
    }
}

/// Creates the drain mark `file` (and its directory), or removes it.
fn set_mark(file: &Path, drained: bool) -> Result<()> {
    if drained {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(
            file,
            "drained: no VIP is announced while this file exists (`balancer host undrain`)\n",
        )
        .with_context(|| format!("cannot create the drain mark {}", file.display()))
    } else {
        match std::fs::remove_file(file) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("cannot remove the drain mark {}", file.display()))
            }
            _ => Ok(()),
        }
    }
}

/// `balancer teardown`'s first step: takes every route out of `config`'s
/// table and returns how many there were.
pub async fn withdraw_all(config: &AnnounceConfig) -> Result<usize> {
    let table = routes::Table::connect(*config.table.get_ref())?;
    let held = table.read().await?;
    for address in &held {
        table.remove(*address).await?;
    }
    Ok(held.len())
}

//! Active health checks: one task per backend per VIP probes the backend
//! ([`probe`]) every interval, and a [`Tracker`] turns the results into up
//! and down transitions with rise and fall thresholds.

mod group;
pub mod probe;

use std::{net::IpAddr, time::Duration};

use tokio::sync::mpsc;

use crate::config::{CheckKind, HealthCheckConfig};

/// A backend's health as the daemon sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// Counts consecutive results and decides transitions: `fall` failures in
/// a row take an up backend down, `rise` successes bring a down one up.
/// Pure logic.
#[derive(Clone, Debug)]
pub struct Tracker {
    state: Health,
    rise: u32,
    fall: u32,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl Tracker {
    /// A tracker that starts `Up`: a backend takes traffic until it fails
    /// `fall` checks, so a daemon start does not wait for checks.
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            state: Health::Up,
            rise: rise.max(1),
            fall: fall.max(1),
            streak: 0,
        }
    }

    /// A tracker that starts `Down`: for a backend a previous daemon left
    /// down, so that a restart does not send it new flows before `rise`
    /// successful checks.
    pub fn down(rise: u32, fall: u32) -> Tracker {
        Tracker {
            state: Health::Down,
            ..Tracker::new(rise, fall)
        }
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one result; returns the new state when it changes.
    pub fn record(&mut self, success: bool) -> Option<Health> {
        let agrees = matches!(
            (self.state, success),
            (Health::Up, true) | (Health::Down, false)
        );
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match self.state {
            Health::Up => self.fall,
            Health::Down => self.rise,
        };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.state = match self.state {
            Health::Up => Health::Down,
            Health::Down => Health::Up,
        };
        Some(self.state)
    }
}

/// One check's outcome, sent by a check task to the daemon.
#[derive(Clone, Debug)]
pub struct Report {
    /// The backend's id in the datapath.
    pub backend: u32,
    pub success: bool,
    /// The check could not run on this host (see [`probe::Fail::local`]):
    /// it says nothing of the backend, whose state stays.
    pub inconclusive: bool,
    /// Why it failed (or what it saw), for the log.
    pub detail: String,
    /// How long the check took.
    pub latency: Duration,
}

/// Starts the check task of one backend: it probes `address` (on `port`
/// unless the check names its own) every
/// `check.interval` and reports every result. `None` for `kind = "none"`.
pub fn spawn(
    backend: u32,
    address: IpAddr,
    port: u16,
    check: &HealthCheckConfig,
    reports: mpsc::Sender<Report>,
) -> Option<tokio::task::JoinHandle<()>> {
    if check.kind == CheckKind::None {
        return None;
    }
    let check = check.clone();
    let port = check.port.unwrap_or(port);
    Some(tokio::spawn(async move {
        let client = probe::Client::new();
        let mut ticker = tokio::time::interval(check.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let start = std::time::Instant::now();
            let outcome = probe::run(&client, &check, address, port).await;
            let (success, inconclusive, detail) = match outcome {
                Ok(detail) => (true, false, detail),
                Err(fail) => (false, fail.local, fail.reason),
            };
            let report = Report {
                backend,
                success,
                inconclusive,
                detail,
                latency: start.elapsed(),
            };
            if reports.send(report).await.is_err() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_in_a_row_take_a_backend_down() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the streak");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.state(), Health::Down);
    }

    #[test]
    fn rise_successes_in_a_row_bring_it_back() {
        let mut t = Tracker::new(2, 1);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Up));
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn a_tracker_started_down_needs_rise_successes() {
        let mut t = Tracker::down(3, 2);
        assert_eq!(t.state(), Health::Down);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Up));
    }
}

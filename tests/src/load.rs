//! Steady client load: connections opened at a fixed pace from a client
//! namespace while a test changes something, each attempt recorded with
//! its start time and outcome.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use crate::{Netns, servers::tcp_ask_name};

/// One connection attempt of a [`SteadyLoad`].
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When the connection was started.
    pub started: Instant,
    /// When it answered or failed.
    pub ended: Instant,
    /// The backend that answered, or why the attempt failed.
    pub outcome: Result<String, String>,
}

/// One connection to the name server behind `addr`, timed.
fn attempt(client: &Netns, addr: SocketAddr) -> Attempt {
    let started = Instant::now();
    let outcome = tcp_ask_name(client, addr).map_err(|e| format!("{e:#}"));
    Attempt {
        started,
        ended: Instant::now(),
        outcome,
    }
}

/// Calls `each` every `pace` until `stop` is set; a call that overruns
/// its slot starts the next one at once.
fn every(pace: Duration, stop: &AtomicBool, mut each: impl FnMut()) {
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        each();
        next += pace;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Opens a connection to a name server behind `addr` every `pace`, from a
/// thread in the client's namespace, until stopped.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<Result<Vec<Attempt>>>,
}

impl SteadyLoad {
    /// Starts the load.
    pub fn start(client: &Netns, addr: SocketAddr, pace: Duration) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, client) = (stop.clone(), client.clone());
        let worker = thread::spawn(move || {
            let mut attempts = Vec::new();
            every(pace, &flag, || attempts.push(attempt(&client, addr)));
            Ok(attempts)
        });
        SteadyLoad { stop, worker }
    }

    /// Stops the load and returns every attempt, in order.
    pub fn stop(self) -> Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::SeqCst);
        self.worker
            .join()
            .map_err(|_| anyhow!("the load thread panicked"))?
    }
}

/// Opens a connection to a name server behind `addr` every `pace`, each
/// on a thread of its own, whether the ones before have ended or not:
/// unlike [`SteadyLoad`], an attempt that hangs (its SYN lost on a dead
/// path, then retransmitted) does not hold back the next, so the attempts
/// sample a change at an even pace. An attempt gives up after
/// [`tcp_ask_name`]'s timeouts (3 s to connect, 3 s to read), so at most
/// 6 s / `pace` run at once.
pub struct PacedLoad {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<Vec<Attempt>>,
}

impl PacedLoad {
    /// Starts the load.
    pub fn start(client: &Netns, addr: SocketAddr, pace: Duration) -> PacedLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, client) = (stop.clone(), client.clone());
        let worker = thread::spawn(move || {
            let mut running = Vec::new();
            every(pace, &flag, || {
                let client = client.clone();
                running.push(thread::spawn(move || attempt(&client, addr)));
            });
            running
                .into_iter()
                .map(|attempt| {
                    attempt.join().unwrap_or_else(|_| {
                        let now = Instant::now();
                        Attempt {
                            started: now,
                            ended: now,
                            outcome: Err("the attempt's thread panicked".to_owned()),
                        }
                    })
                })
                .collect()
        });
        PacedLoad { stop, worker }
    }

    /// Stops starting attempts, waits for those in flight, and returns
    /// every attempt in the order they started.
    pub fn stop(self) -> Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::SeqCst);
        self.worker
            .join()
            .map_err(|_| anyhow!("the load thread panicked"))
    }
}

/// Attempts started in `[from, to)`: how many, and the failures among them.
pub fn failures_between(
    attempts: &[Attempt],
    from: Instant,
    to: Instant,
) -> (usize, Vec<&Attempt>) {
    let window: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started >= from && a.started < to)
        .collect();
    let failed = window
        .iter()
        .copied()
        .filter(|a| a.outcome.is_err())
        .collect();
    (window.len(), failed)
}

/// How long before a change an attempt may have started and still be
/// caught by it (its handshake's last ACK, its answer, lost on the way).
pub const WINDOW_MARGIN: Duration = Duration::from_millis(200);
/// An attempt that took longer than this waited for a retransmitted SYN
/// (the first comes 1 s after the SYN).
pub const SLOW_ATTEMPT: Duration = Duration::from_millis(900);

/// A load's attempts sorted around a change that began at `change` and
/// whose effect lasted until `closed` (a router dropped a dead host, say):
/// those started before it (more than [`WINDOW_MARGIN`] before
/// `change`), during it, and after it; in each, how many failed and how
/// many waited for a retransmitted SYN.
#[derive(Debug)]
pub struct Window {
    pub before: Tally,
    pub during: Tally,
    pub after: Tally,
    /// When the attempts of the window that failed or were slow started,
    /// first and last, after `change`.
    pub hit_span: Option<(Duration, Duration)>,
    /// From `change` to `closed`.
    pub length: Duration,
}

/// Attempts of one period of a [`Window`].
#[derive(Debug, Default)]
pub struct Tally {
    pub attempts: usize,
    pub failed: usize,
    /// Succeeded, but took longer than [`SLOW_ATTEMPT`].
    pub slow: usize,
    /// The longest a successful attempt took.
    pub slowest: Duration,
    pub first_failure: Option<String>,
}

impl Tally {
    /// Attempts that failed or were slow.
    pub fn hit(&self) -> usize {
        self.failed + self.slow
    }
}

impl Window {
    /// Sorts `attempts` around the change.
    pub fn judge(attempts: &[Attempt], change: Instant, closed: Instant) -> Window {
        let mut window = Window {
            before: Tally::default(),
            during: Tally::default(),
            after: Tally::default(),
            hit_span: None,
            length: closed.saturating_duration_since(change),
        };
        for a in attempts {
            let during = a.started + WINDOW_MARGIN >= change && a.started < closed;
            let tally = if during {
                &mut window.during
            } else if a.started < change {
                &mut window.before
            } else {
                &mut window.after
            };
            tally.attempts += 1;
            let took = a.ended.saturating_duration_since(a.started);
            match &a.outcome {
                Ok(_) => {
                    tally.slowest = tally.slowest.max(took);
                    if took <= SLOW_ATTEMPT {
                        continue;
                    }
                    tally.slow += 1;
                }
                Err(why) => {
                    tally.failed += 1;
                    tally.first_failure.get_or_insert_with(|| why.clone());
                }
            }
            if during {
                let at = a.started.saturating_duration_since(change);
                window.hit_span = Some(match window.hit_span {
                    None => (at, at),
                    Some((first, last)) => (first.min(at), last.max(at)),
                });
            }
        }
        window
    }

    /// The attempts before or after the window that failed or were slow,
    /// described; None when there are none.
    pub fn hits_outside(&self) -> Option<String> {
        let outside: Vec<String> = [("before", &self.before), ("after", &self.after)]
            .iter()
            .filter(|(_, t)| t.hit() > 0)
            .map(|(when, t)| {
                format!(
                    "{} of {} attempts {when} the window failed and {} were slow; first failure: {:?}",
                    t.failed, t.attempts, t.slow, t.first_failure
                )
            })
            .collect();
        (!outside.is_empty()).then(|| outside.join("; "))
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_millis();
        write!(
            f,
            "of {} started in the {} ms window, {} failed and {} waited for a retransmitted SYN \
             (the slowest took {} ms)",
            self.during.attempts,
            ms(self.length),
            self.during.failed,
            self.during.slow,
            ms(self.during.slowest)
        )?;
        if let Some((first, last)) = self.hit_span {
            write!(f, ", those started {} to {} ms in", ms(first), ms(last))?;
        }
        write!(
            f,
            "; before it {} of {} failed or were slow, after it {} of {}",
            self.before.hit(),
            self.before.attempts,
            self.after.hit(),
            self.after.attempts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(change: Instant, start_ms: i64, took_ms: u64, ok: bool) -> Attempt {
        let started = if start_ms < 0 {
            change - Duration::from_millis(start_ms.unsigned_abs())
        } else {
            change + Duration::from_millis(start_ms as u64)
        };
        Attempt {
            started,
            ended: started + Duration::from_millis(took_ms),
            outcome: if ok {
                Ok("be0".into())
            } else {
                Err("timed out".into())
            },
        }
    }

    #[test]
    fn attempts_are_sorted_around_the_change() {
        let change = Instant::now() + Duration::from_secs(10);
        let closed = change + Duration::from_millis(2000);
        let attempts = [
            attempt(change, -1000, 2, true),
            // Within the margin: the change may have caught it.
            attempt(change, -100, 3000, false),
            attempt(change, 500, 1005, true),
            attempt(change, 1500, 3, true),
            attempt(change, 2500, 1005, true),
        ];
        let w = Window::judge(&attempts, change, closed);
        assert_eq!((w.before.attempts, w.before.hit()), (1, 0));
        assert_eq!(
            (w.during.attempts, w.during.failed, w.during.slow),
            (3, 1, 1)
        );
        assert_eq!((w.after.attempts, w.after.slow), (1, 1));
        assert_eq!(
            w.hit_span,
            Some((Duration::ZERO, Duration::from_millis(500)))
        );
        assert!(w.hits_outside().is_some_and(|s| s.contains("after")));
        assert_eq!(w.length, Duration::from_millis(2000));
    }
}

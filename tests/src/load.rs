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
            let mut next = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                let outcome = tcp_ask_name(&client, addr).map_err(|e| format!("{e:#}"));
                attempts.push(Attempt {
                    started,
                    ended: Instant::now(),
                    outcome,
                });
                next += pace;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
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

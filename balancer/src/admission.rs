//! Admission of clients to the daemon's listeners (the control socket and
//! the metrics endpoint): a cap on clients at once, room made by asking
//! the oldest idle client to leave, and accept errors backed off.
//!
//! Each client holds a [`Slot`]; a client waiting for the other side (its
//! request not yet read, or between two requests) is idle and can be asked
//! to leave, so idle connections, however many a local user opens, never
//! lock out a client with something to ask: a new client takes the slot of
//! the oldest idle one. Only when every client is busy is a new one
//! refused.

use std::{
    collections::BTreeMap,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// How long the accept loop sleeps after an error that retrying at once
/// would repeat (descriptors or memory run out).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A cap on clients at once, with the idle ones that can be asked to leave.
pub struct Slots {
    cap: usize,
    permits: Arc<Semaphore>,
    /// Idle clients by age (a lower number is older), each with the sender
    /// that asks it to leave.
    idle: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    next: AtomicU64,
}

/// Why a client was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    /// The cap that was reached.
    pub cap: usize,
}

impl Slots {
    pub fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            cap,
            permits: Arc::new(Semaphore::new(cap)),
            idle: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// A slot for a new client: a free one, else the oldest idle client's
    /// (it is asked to leave, and its slot awaited for up to `wait`).
    /// Refused when every client is busy, or none left within `wait`.
    pub async fn admit(self: &Arc<Self>, wait: Duration) -> Result<Slot, Full> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let oldest = self.lock().pop_first();
                let Some((_, leave)) = oldest else {
                    return Err(Full { cap: self.cap });
                };
                // A client that has just ended has dropped its receiver;
                // its slot is free all the same.
                let _ = leave.send(());
                match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(Full { cap: self.cap }),
                }
            }
        };
        Ok(Slot {
            slots: self.clone(),
            id: self.next.fetch_add(1, Ordering::Relaxed),
            _permit: permit,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One client's place; dropping it frees the place.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Marks the client idle, so that a new client may take its place: the
    /// receiver resolves when it is asked to leave.
    pub fn idle(&self) -> oneshot::Receiver<()> {
        let (leave, asked) = oneshot::channel();
        self.slots.lock().insert(self.id, leave);
        asked
    }

    /// Marks the client busy: it keeps its place until it ends.
    pub fn busy(&self) {
        self.slots.lock().remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy();
    }
}

/// What an accept loop does with an accept error: back off where retrying
/// at once would fail the same way (no descriptor or memory left), and log
/// that once per burst of such errors rather than once per try.
#[derive(Default)]
pub struct AcceptErrors {
    in_burst: bool,
}

impl AcceptErrors {
    /// The next connection `accept` gives (`listener` names it in the
    /// log), its errors handled as [`AcceptErrors::failed`] says.
    pub async fn next<S, A>(&mut self, listener: &str, mut accept: impl FnMut() -> A) -> S
    where
        A: std::future::Future<Output = io::Result<S>>,
    {
        loop {
            match accept().await {
                Ok(accepted) => {
                    self.accepted();
                    return accepted;
                }
                Err(err) => self.failed(listener, err).await,
            }
        }
    }

    /// A connection was accepted: the burst, if any, is over.
    fn accepted(&mut self) {
        if self.in_burst {
            tracing::info!("accepting connections again");
            self.in_burst = false;
        }
    }

    /// Handles `err` from accepting on `listener` (a name for the log):
    /// waits [`ACCEPT_BACKOFF`] when it is a lack of resources.
    async fn failed(&mut self, listener: &str, err: io::Error) {
        if !exhausts_resources(&err) {
            // A connection reset before it was accepted, say: only that
            // connection is lost.
            tracing::debug!(listener, error = %err, "cannot accept a connection");
            return;
        }
        if !self.in_burst {
            tracing::warn!(
                listener,
                error = %err,
                "cannot accept connections; trying again every {} ms",
                ACCEPT_BACKOFF.as_millis()
            );
            self.in_burst = true;
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// Whether `err` says the process or system ran out of something that
/// retrying at once would not find.
fn exhausts_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_new_client_takes_the_place_of_the_oldest_idle_one() {
        let slots = Slots::new(2);
        let first = slots.admit(WAIT).await.unwrap();
        let mut first_asked = first.idle();
        let second = slots.admit(WAIT).await.unwrap();
        let mut second_asked = second.idle();
        let leaving = tokio::spawn(async move {
            (&mut first_asked).await.unwrap();
            drop(first);
        });
        let third = slots.admit(WAIT).await.unwrap();
        leaving.await.unwrap();
        assert!(second_asked.try_recv().is_err(), "only the oldest leaves");
        second.busy();
        third.busy();
        assert_eq!(slots.admit(WAIT).await.err(), Some(Full { cap: 2 }));
    }

    #[tokio::test]
    async fn only_busy_clients_keep_their_place() {
        let slots = Slots::new(1);
        let client = slots.admit(WAIT).await.unwrap();
        let _asked = client.idle();
        client.busy();
        assert_eq!(slots.admit(WAIT).await.err(), Some(Full { cap: 1 }));
        drop(client);
        assert!(slots.admit(WAIT).await.is_ok(), "a place is freed on drop");
    }

    #[tokio::test]
    async fn running_out_of_descriptors_is_backed_off_and_logged_once() {
        let mut errors = AcceptErrors::default();
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            errors
                .failed("test", io::Error::from_raw_os_error(libc::EMFILE))
                .await;
            assert!(errors.in_burst);
        }
        assert!(started.elapsed() >= 3 * ACCEPT_BACKOFF);
        errors.accepted();
        assert!(!errors.in_burst);
        let started = tokio::time::Instant::now();
        errors
            .failed("test", io::Error::from_raw_os_error(libc::ECONNABORTED))
            .await;
        assert!(
            started.elapsed() < ACCEPT_BACKOFF,
            "a lost connection is not"
        );
        assert!(!errors.in_burst);
    }
}

//! The daemon's side of the control socket: the socket is created with its
//! final mode, each client gets deadlines to send its request and to read
//! its answer, and the clients at once are capped ([`crate::admission`]):
//! an idle client (its request not yet sent) gives up its place to a new
//! one, and a client beyond the cap while every other is busy is told so
//! at once.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{
        AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader as AsyncBufReader,
    },
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    time::timeout,
};

use super::{Pending, Response, parse_request};
use crate::admission::{AcceptErrors, Slot, Slots};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a new client waits for the oldest idle one to leave.
const ADMIT_WAIT: Duration = Duration::from_secs(1);

/// What one client may hold, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Clients at once.
    pub clients: usize,
    /// How long a client may take to send its request.
    pub read_timeout: Duration,
    /// How long a client may take to read its answer.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            clients: 128,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Creates the socket at `path` (its directory too; a stale socket is
/// replaced), mode 0600, and serves it with the default [`Limits`]: each
/// request goes to `requests`.
pub fn listen(path: &Path, requests: mpsc::Sender<Pending>) -> Result<tokio::task::JoinHandle<()>> {
    listen_with(path, requests, Limits::default())
}

/// [`listen`] with the given limits.
pub fn listen_with(
    path: &Path,
    requests: mpsc::Sender<Pending>,
    limits: Limits,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = bind_private(path)?;
    let slots = Slots::new(limits.clients);
    Ok(tokio::spawn(async move {
        let mut errors = AcceptErrors::default();
        loop {
            let (stream, _) = errors.next("control socket", || listener.accept()).await;
            match slots.admit(ADMIT_WAIT).await {
                Ok(slot) => {
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        if let Err(err) = serve_one(stream, slot, requests, limits).await {
                            tracing::debug!(error = %err, "control connection ended badly");
                        }
                    });
                }
                Err(full) => refuse(&stream, full.cap),
            }
        }
    }))
}

/// Binds the socket where nobody else can reach it, then moves it to
/// `path`. A socket takes its mode from the umask at bind, and setting the
/// mode afterwards leaves a window in which anyone may connect. Setting the
/// umask around the bind would not do: the umask belongs to the process,
/// and tokio's other threads (a check's process, a write-back) would create
/// their files under it meanwhile. So the socket is bound inside a new
/// directory of mode 0700 beside `path` (mkdir's mode can only lose bits to
/// the umask, never gain them), given mode 0600, and renamed into place:
/// the rename is atomic, so `path` names either the stale socket or the new
/// one, already 0600, and never a socket open to others.
fn bind_private(path: &Path) -> Result<UnixListener> {
    static BINDS: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let private = dir.join(format!(
        ".bind.{}.{}",
        std::process::id(),
        BINDS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    let bound = bind_in(&private, path);
    let removed = std::fs::remove_dir_all(&private);
    let listener = bound?;
    removed.with_context(|| format!("cannot remove {}", private.display()))?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener).context("cannot serve the control socket")
}

/// Binds a socket in `private` (a directory only its owner can enter),
/// restricts it to its owner and renames it to `path`.
fn bind_in(private: &Path, path: &Path) -> Result<std::os::unix::net::UnixListener> {
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", private.display()))?;
    let bound = private.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&bound)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    std::fs::rename(&bound, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(listener)
}

/// The answer to a client that finds no place.
fn too_many(cap: usize) -> Response {
    Response::error(format!("too many control clients ({cap}); try again"))
}

/// Tells a client beyond the cap so, without waiting: a new socket's
/// buffer has room for the line, and a client that cannot take it loses
/// only the reason.
fn refuse(stream: &UnixStream, cap: usize) {
    if let Ok(mut text) = serde_json::to_string(&too_many(cap)) {
        text.push('\n');
        let _ = stream.try_write(text.as_bytes());
    }
}

async fn serve_one(
    stream: UnixStream,
    slot: Slot,
    requests: mpsc::Sender<Pending>,
    limits: Limits,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncBufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let mut line = String::new();
    let asked_to_leave = slot.idle();
    let read = tokio::select! {
        biased;
        read = timeout(limits.read_timeout, reader.read_line(&mut line)) => Some(read),
        _ = asked_to_leave => None,
    };
    slot.busy();
    let response = match read {
        None => too_many(limits.clients),
        Some(Err(_)) => Response::error(format!(
            "no request within {} s",
            limits.read_timeout.as_secs_f64()
        )),
        Some(Ok(Err(e))) => Response::error(format!("cannot read the request: {e}")),
        Some(Ok(Ok(_))) if line.len() > MAX_REQUEST => {
            Response::error("request longer than 64 KiB")
        }
        Some(Ok(Ok(_))) => match parse_request(&line) {
            Err(response) => response,
            Ok(request) => {
                let (answer, answered) = oneshot::channel();
                if requests.send((request, answer)).await.is_err() {
                    Response::error("the daemon is shutting down")
                } else {
                    answered
                        .await
                        .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
                }
            }
        },
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    let send = async {
        write.write_all(text.as_bytes()).await?;
        write.shutdown().await
    };
    timeout(limits.write_timeout, send)
        .await
        .context("the client did not read its answer in time")??;
    Ok(())
}

#[cfg(test)]
mod tests;

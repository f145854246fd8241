//! The `/metrics` endpoint: an HTTP server (axum) on `[daemon]
//! metrics_listen`. A scrape asks the daemon's main loop for a
//! [`Snapshot`] (one batched read of each counter map) and encodes it;
//! the text is reused for [`CACHE_FOR`], so scrapes from several
//! Prometheus servers, or a burst of them, read the maps once.
//!
//! Its connections are capped ([`Limits`]): a connection that sends no
//! request head within the idle timeout (after connecting, or after its
//! last answer) is closed, and a new connection beyond the cap takes the
//! place of the oldest one, which finishes the request it is answering, if
//! any, and closes. Idle connections, however many a local user opens,
//! hold neither the daemon's descriptors nor a scrape back.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Mutex, mpsc, oneshot},
};

use super::{CONTENT_TYPE, Snapshot, encode};
use crate::admission::{AcceptErrors, Slot, Slots};

/// How long one scrape's text is served again.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// How long a scrape waits for the main loop (busy with a large reload,
/// say) before it is answered 503, which Prometheus records as a failed
/// scrape instead of a hung one.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection asked to make room may take to finish its
/// answer; a new connection waits for that at most, plus a margin.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

/// The connections served at once, and how long one may stay idle.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections at once.
    pub connections: usize,
    /// How long a connection may take to send a whole request head, from
    /// its start or from its previous answer.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 256,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A scrape waiting for the main loop, with where the snapshot (or why
/// there is none) goes.
pub type Pending = oneshot::Sender<Result<Snapshot, String>>;

/// Binds `addr`; the error names the setting to change.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr} ([daemon] metrics_listen; \"\" disables it)")
    })
}

struct Shared {
    snapshots: mpsc::Sender<Pending>,
    /// The last text and when it was made.
    cached: Mutex<Option<(Instant, String)>>,
}

/// Serves `/metrics` on `listener` with the default [`Limits`]; snapshots
/// are asked of `snapshots`.
pub fn serve(
    listener: TcpListener,
    snapshots: mpsc::Sender<Pending>,
) -> tokio::task::JoinHandle<()> {
    serve_with(listener, snapshots, Limits::default())
}

/// [`serve`] with the given limits.
pub fn serve_with(
    listener: TcpListener,
    snapshots: mpsc::Sender<Pending>,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::new(Shared {
        snapshots,
        cached: Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(shared);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let slots = Slots::new(limits.connections);
    tokio::spawn(async move {
        let mut errors = AcceptErrors::default();
        loop {
            let (stream, _) = errors.next("metrics endpoint", || listener.accept()).await;
            // Beyond the cap with nobody leaving in time, the connection
            // is closed: a failed scrape rather than a hung one.
            if let Ok(slot) = slots.admit(2 * LEAVE_GRACE).await {
                tokio::spawn(serve_connection(stream, slot, http.clone(), app.clone()));
            }
        }
    })
}

/// Serves one connection until it ends, or until it is asked to make room
/// and has finished the answer it was giving (within [`LEAVE_GRACE`]).
async fn serve_connection(
    stream: TcpStream,
    slot: Slot,
    http: hyper::server::conn::http1::Builder,
    app: Router,
) {
    // Any connection may be asked to leave: the graceful shutdown below
    // lets a request in flight finish.
    let asked_to_leave = slot.idle();
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(err) = ended {
                tracing::debug!(error = %err, "metrics connection ended badly");
            }
            return;
        }
        _ = asked_to_leave => connection.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(LEAVE_GRACE, connection).await;
}

async fn index() -> &'static str {
    "balancer: metrics at /metrics\n"
}

async fn metrics(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    // Held while a snapshot is made, so concurrent scrapes wait for it
    // instead of reading the maps again.
    let mut cached = shared.cached.lock().await;
    if let Some((made, text)) = cached.as_ref()
        && made.elapsed() < CACHE_FOR
    {
        return ([(header::CONTENT_TYPE, CONTENT_TYPE)], text.clone()).into_response();
    }
    let (answer, answered) = oneshot::channel();
    let ask = async {
        shared
            .snapshots
            .send(answer)
            .await
            .map_err(|_| "the daemon is shutting down".to_owned())?;
        answered
            .await
            .unwrap_or_else(|_| Err("the daemon is shutting down".to_owned()))
    };
    let snapshot = tokio::time::timeout(SNAPSHOT_TIMEOUT, ask)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the daemon did not take a snapshot within {} s",
                SNAPSHOT_TIMEOUT.as_secs()
            ))
        });
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(error) => {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("{error}\n"),
            )
                .into_response();
        }
    };
    let text = encode(&snapshot);
    *cached = Some((Instant::now(), text.clone()));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server on a port of its own whose main loop answers every
    /// snapshot at once.
    async fn server(limits: Limits) -> std::net::SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (snapshots, mut pending) = mpsc::channel::<Pending>(16);
        tokio::spawn(async move {
            while let Some(answer) = pending.recv().await {
                let _ = answer.send(Ok(Snapshot::default()));
            }
        });
        serve_with(listener, snapshots, limits);
        addr
    }

    /// Scrapes `/metrics`, which must answer within a second.
    async fn scrape_within_a_second(addr: std::net::SocketAddr) -> String {
        let scrape = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).await.unwrap();
            text
        };
        // Within a second on a quiet machine; the bound leaves room for a
        // loaded test run, while a full listener does not answer at all.
        tokio::time::timeout(Duration::from_secs(3), scrape)
            .await
            .expect("a scrape in time")
    }

    /// Whether the server has closed `stream` (a read would not wait).
    fn closed(stream: &TcpStream) -> bool {
        !matches!(
            stream.try_read(&mut [0; 16]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_beyond_the_cap_are_closed_and_scrapes_answered() {
        let addr = server(Limits::default()).await;
        let mut idle = Vec::new();
        for _ in 0..400 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = scrape_within_a_second(addr).await;
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let open = idle.iter().filter(|stream| !closed(stream)).count();
        assert!(open < 256, "{open} idle connections held");
        assert!(closed(&idle[0]), "the oldest made room");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_without_a_request_is_closed_after_the_idle_timeout() {
        let addr = server(Limits {
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            let mut rest = Vec::new();
            idle.read_to_end(&mut rest).await.unwrap();
            kept.read_to_end(&mut rest).await.unwrap();
            rest
        })
        .await
        .expect("both closed");
        let text = String::from_utf8_lossy(&ended);
        assert!(
            text.starts_with("HTTP/1.1 200 OK") && text.ends_with("metrics at /metrics\n"),
            "a keep-alive connection is closed once idle too: {text}"
        );
    }
}

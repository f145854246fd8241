//! The `/metrics` endpoint: an HTTP server (axum) on `[daemon]
//! metrics_listen`. A scrape asks the daemon's main loop for a
//! [`Snapshot`] (one batched read of each counter map) and encodes it;
//! the text is reused for [`CACHE_FOR`], so scrapes from several
//! Prometheus servers, or a burst of them, read the maps once.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::{
    net::TcpListener,
    sync::{Mutex, mpsc, oneshot},
};

use super::{CONTENT_TYPE, Snapshot, encode};

/// How long one scrape's text is served again.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// How long a scrape waits for the main loop (busy with a large reload,
/// say) before it is answered 503, which Prometheus records as a failed
/// scrape instead of a hung one.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Serves `/metrics` on `listener`; snapshots are asked of `snapshots`.
pub fn serve(
    listener: TcpListener,
    snapshots: mpsc::Sender<Pending>,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::new(Shared {
        snapshots,
        cached: Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "the metrics endpoint stopped");
        }
    })
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

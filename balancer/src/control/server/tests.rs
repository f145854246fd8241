//! The control socket under misuse: clients that never read their answer,
//! idle clients by the hundred, and clients beyond the cap. (Its mode
//! under a permissive umask is tested in `tests/control_socket_mode.rs`,
//! a process of its own, since the umask is the whole process's.)

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream as StdUnixStream,
    path::Path,
    time::{Duration, Instant},
};

use super::*;
use crate::control::{Request, Scratch, call};

/// A main loop that answers every request with `answer`.
fn answering(answer: serde_json::Value) -> mpsc::Sender<Pending> {
    let (requests, mut pending) = mpsc::channel::<Pending>(64);
    tokio::spawn(async move {
        while let Some((_, reply)) = pending.recv().await {
            let _ = reply.send(Response::ok(answer.clone()));
        }
    });
    requests
}

/// How long the CLI's call may take here: it answers within a second on a
/// quiet machine; the bound leaves room for a loaded test run, while a
/// blocked socket does not answer at all.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// The CLI's call, which must be answered within [`ANSWER_WITHIN`].
async fn status_within_a_second(socket: &Path) -> Result<serde_json::Value> {
    let socket = socket.to_owned();
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || call(&socket, &Request::Status {}));
    let answer = timeout(ANSWER_WITHIN, answer)
        .await
        .context("no answer in time")??;
    assert!(started.elapsed() < ANSWER_WITHIN);
    Ok(answer?)
}

/// A client that sends `status` and never reads the answer.
fn non_reader(socket: &Path) -> StdUnixStream {
    let mut stream = StdUnixStream::connect(socket).unwrap();
    stream.write_all(b"{\"command\":\"status\"}\n").unwrap();
    stream
}

/// The length of an answer far larger than a socket's buffers.
const ANSWER: usize = 512 * 1024;

/// An answer far larger than a socket's buffers.
fn large_answer() -> serde_json::Value {
    serde_json::Value::String("x".repeat(ANSWER))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_answer_block_nobody() {
    let scratch = Scratch::new("non-readers");
    let socket = scratch.socket();
    let _server = listen(&socket, answering(large_answer())).unwrap();
    let stuck: Vec<_> = (0..40).map(|_| non_reader(&socket)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = status_within_a_second(&socket).await.unwrap();
    assert_eq!(answer.as_str().map(str::len), Some(ANSWER));
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_its_write_deadline() {
    let scratch = Scratch::new("write-deadline");
    let socket = scratch.socket();
    let limits = Limits {
        clients: 2,
        write_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let _server = listen_with(&socket, answering(large_answer()), limits).unwrap();
    let mut stuck: Vec<_> = (0..2).map(|_| non_reader(&socket)).collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    status_within_a_second(&socket).await.unwrap();
    let mut received = Vec::new();
    stuck[0]
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    stuck[0].read_to_end(&mut received).unwrap();
    assert!(received.len() < ANSWER, "the answer was cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_make_room_for_a_client_with_a_request() {
    let scratch = Scratch::new("idle");
    let socket = scratch.socket();
    let _server = listen(&socket, answering(serde_json::json!("ok"))).unwrap();
    let mut idle: Vec<_> = (0..200)
        .map(|_| StdUnixStream::connect(&socket).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_within_a_second(&socket).await.unwrap(), "ok");
    let mut oldest = String::new();
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    idle[0].read_to_string(&mut oldest).unwrap();
    assert_eq!(
        oldest,
        "{\"ok\":false,\"error\":\"too many control clients (128); try again\"}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beyond_the_cap_of_busy_clients_is_told_so_at_once() {
    let scratch = Scratch::new("cap");
    let socket = scratch.socket();
    // A main loop that never answers keeps every client busy.
    let (requests, mut pending) = mpsc::channel::<Pending>(64);
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(request) = pending.recv().await {
            held.push(request);
        }
    });
    let limits = Limits {
        clients: 2,
        ..Limits::default()
    };
    let _server = listen_with(&socket, requests, limits).unwrap();
    let _busy: Vec<_> = (0..2).map(|_| non_reader(&socket)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let error = status_within_a_second(&socket).await.unwrap_err();
    assert_eq!(error.to_string(), "too many control clients (2); try again");
    held.abort();
}

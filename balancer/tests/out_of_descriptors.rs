//! The control socket and the metrics endpoint when the process runs out
//! of file descriptors: each accept fails until a descriptor is freed, and
//! the listeners must wait between tries rather than spin. A test binary
//! of its own, since the limit it lowers is the whole process's.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::{fd::OwnedFd, unix::net::UnixStream},
    time::Duration,
};

use balancer::{
    control::{self, Pending, Response},
    metrics::{Snapshot, serve},
};
use socket2::{Domain, SockAddr, Socket, Type};

/// CPU time this process has used, all threads together.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes `usage`.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Lowers this process's limit on open files to `files`.
fn limit_open_files(files: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = files;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

#[test]
fn out_of_descriptors_the_listeners_back_off_instead_of_spinning() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    let dir = std::env::temp_dir().join(format!("balancer-descriptors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let (requests, mut pending) = tokio::sync::mpsc::channel::<Pending>(16);
    runtime.spawn(async move {
        while let Some((_, answer)) = pending.recv().await {
            let _ = answer.send(Response::ok("ok"));
        }
    });
    let _control = control::listen(&socket, requests).unwrap();
    let (snapshots, mut scrapes) = tokio::sync::mpsc::channel::<serve::Pending>(16);
    runtime.spawn(async move {
        while let Some(answer) = scrapes.recv().await {
            let _ = answer.send(Ok(Snapshot::default()));
        }
    });
    let listener = runtime
        .block_on(serve::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let metrics = listener.local_addr().unwrap();
    let _metrics = serve::serve(listener, snapshots);

    // The clients' sockets are made first; then every descriptor is
    // taken, and the listeners' accepts fail with EMFILE until some are
    // freed.
    let control_client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    let metrics_client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    limit_open_files(256);
    let mut taken = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => taken.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("cannot open /dev/null: {e}"),
        }
    }
    control_client
        .connect(&SockAddr::unix(&socket).unwrap())
        .unwrap();
    metrics_client.connect(&metrics.into()).unwrap();
    let mut control_client = UnixStream::from(OwnedFd::from(control_client));
    let mut metrics_client = TcpStream::from(metrics_client);
    control_client
        .write_all(b"{\"command\":\"status\"}\n")
        .unwrap();
    metrics_client
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .unwrap();

    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_time() - before;
    assert!(
        spent < Duration::from_millis(100),
        "{spent:?} of CPU in a second without descriptors"
    );

    drop(taken);
    control_client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&control_client)
        .read_line(&mut answer)
        .unwrap();
    assert_eq!(answer, "{\"ok\":true,\"result\":\"ok\"}\n");
    metrics_client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut scrape = String::new();
    metrics_client.read_to_string(&mut scrape).unwrap();
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    let _ = std::fs::remove_dir_all(&dir);
}

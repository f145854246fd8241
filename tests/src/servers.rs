//! Small servers for backends in tests: each answers with its own name, so
//! a client sees which backend it reached.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::Netns;

/// A test server every backend runs; backend `i` answers as `be{i}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// TCP: writes the name and closes ([`tcp_name_server`]).
    TcpName,
    /// UDP: answers every datagram with the name.
    UdpName,
    /// TCP: writes the name, then echoes until the client closes.
    TcpEcho,
    /// TCP: writes the name, then `bytes` bytes of a known pattern
    /// ([`bulk_byte`]), then closes.
    TcpBulk {
        /// Bytes sent after the name.
        bytes: usize,
    },
    /// TCP: writes the name, reads until the client stops sending,
    /// checking each byte against [`bulk_byte`], then answers `received N`
    /// or `wrong byte N` ([`upload`]).
    TcpSink,
    /// TCP: writes the name and the address and port the connection came
    /// from (`be0 10.50.0.2:1024`), then closes ([`tcp_ask_peer`]).
    TcpPeer,
    /// TCP: writes what [`Server::TcpPeer`] writes, then holds the
    /// connection open without a thread of its own, until the process
    /// ends: many thousands of them cost a socket each.
    TcpHold,
}

/// Starts a TCP server on `addr` in `ns` that writes `name` and a newline
/// to every connection, then closes it. It runs until the namespace goes.
pub fn tcp_name_server(ns: &Netns, addr: SocketAddr, name: &str) -> Result<()> {
    serve(Server::TcpName, bind_tcp(ns, addr)?.into(), name);
    Ok(())
}

/// A bound socket for [`serve`].
pub enum Bound {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A UDP socket.
    Udp(UdpSocket),
}

impl From<TcpListener> for Bound {
    fn from(listener: TcpListener) -> Bound {
        Bound::Tcp(listener)
    }
}

impl From<UdpSocket> for Bound {
    fn from(socket: UdpSocket) -> Bound {
        Bound::Udp(socket)
    }
}

/// Binds the socket `server` needs on `addr` in the current namespace.
pub fn bind(server: Server, addr: SocketAddr) -> std::io::Result<Bound> {
    Ok(match server {
        Server::UdpName => UdpSocket::bind(addr)?.into(),
        _ => TcpListener::bind(addr)?.into(),
    })
}

fn bind_tcp(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    ns.run(|| TcpListener::bind(addr))?
        .with_context(|| format!("cannot listen on {addr} in {}", ns.name()))
}

/// Serves `server` as `name` on a socket bound for it, on background
/// threads, until the process ends.
pub fn serve(server: Server, socket: Bound, name: &str) {
    let greeting = format!("{name}\n");
    match (server, socket) {
        (Server::UdpName, Bound::Udp(socket)) => {
            let reply = name.as_bytes().to_vec();
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&reply, from);
                }
            });
        }
        (server, Bound::Tcp(listener)) => {
            thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { break };
                    let greeting = greeting.clone();
                    match server {
                        Server::TcpName => {
                            let mut stream = stream;
                            let _ = stream.write_all(greeting.as_bytes());
                        }
                        Server::TcpEcho => {
                            thread::spawn(move || echo(stream, &greeting));
                        }
                        Server::TcpBulk { bytes } => {
                            thread::spawn(move || bulk(stream, &greeting, bytes));
                        }
                        Server::TcpSink => {
                            thread::spawn(move || sink(stream, &greeting));
                        }
                        Server::TcpPeer => {
                            let mut stream = stream;
                            greet_peer(&mut stream, &greeting);
                        }
                        Server::TcpHold => {
                            let mut stream = stream;
                            greet_peer(&mut stream, &greeting);
                            held.push(stream);
                        }
                        Server::UdpName => {}
                    }
                }
            });
        }
        (server, Bound::Udp(_)) => {
            panic!("{server:?} needs a TCP listener, not a UDP socket")
        }
    }
}

/// Writes the greeting without its newline, then the address and port
/// the connection came from.
fn greet_peer(stream: &mut TcpStream, greeting: &str) {
    if let Ok(peer) = stream.peer_addr() {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let _ = stream.write_all(format!("{} {peer}\n", greeting.trim_end()).as_bytes());
    }
}

/// Writes the greeting, then echoes until the client closes.
fn echo(mut stream: TcpStream, greeting: &str) {
    if stream.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Writes the greeting, then `bytes` bytes of [`bulk_byte`], then closes.
fn bulk(mut stream: TcpStream, greeting: &str, bytes: usize) {
    if stream.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    // A whole number of pattern periods, so every chunk starts at byte 0
    // of the pattern.
    let chunk: Vec<u8> = (0..251 * 256).map(bulk_byte).collect();
    let mut sent = 0;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len());
        if stream.write_all(&chunk[..n]).is_err() {
            return;
        }
        sent += n;
    }
}

/// Writes the greeting, reads and checks an upload until the client shuts
/// its side down, then says how it went.
fn sink(mut stream: TcpStream, greeting: &str) {
    if stream.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 65_536];
    let mut received = 0usize;
    let mut wrong = None;
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        if wrong.is_none() {
            wrong = (0..n)
                .find(|k| buf[*k] != bulk_byte(received + k))
                .map(|k| received + k);
        }
        received += n;
    }
    let verdict = match wrong {
        None => format!("received {received}\n"),
        Some(at) => format!("wrong byte {at}\n"),
    };
    let _ = stream.write_all(verdict.as_bytes());
}

/// Connects from `client` to a [`Server::TcpPeer`] at `addr`: the name of
/// the backend that answered, and the source it saw.
pub fn tcp_ask_peer(client: &Netns, addr: SocketAddr) -> Result<(String, SocketAddr)> {
    let line = tcp_ask_name(client, addr)?;
    let (name, peer) = line
        .split_once(' ')
        .with_context(|| format!("no peer in {line:?}"))?;
    Ok((name.to_owned(), peer.parse()?))
}

/// Sends `bytes` bytes of [`bulk_byte`] to a [`Server::TcpSink`] at `addr`
/// from `client` and returns its greeting (the backend's name): an error
/// when the transfer stalls for 10 s or the server saw other bytes.
pub fn upload(client: &Netns, addr: SocketAddr, bytes: usize) -> Result<String> {
    let stream = client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut name = String::new();
    reader.read_line(&mut name)?;
    let mut writer = stream;
    let chunk: Vec<u8> = (0..251 * 256).map(bulk_byte).collect();
    let mut sent = 0;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len());
        writer.write_all(&chunk[..n]).with_context(|| {
            format!("the upload to {addr} stalled after {sent} of {bytes} bytes")
        })?;
        sent += n;
    }
    writer.shutdown(std::net::Shutdown::Write)?;
    let mut verdict = String::new();
    reader
        .read_line(&mut verdict)
        .with_context(|| format!("no verdict from {addr} after the upload"))?;
    ensure!(
        verdict.trim() == format!("received {bytes}"),
        "upload to {addr}: the server says {:?}",
        verdict.trim()
    );
    Ok(name.trim().to_owned())
}

/// Downloads from a [`Server::TcpBulk`] of `bytes` bytes at `addr` from
/// `client`, checking every byte against [`bulk_byte`], and returns its
/// greeting (the backend's name): an error when the transfer stalls for
/// 10 s (a black hole: no byte arrives), ends early or brings a wrong
/// byte.
pub fn download(client: &Netns, addr: SocketAddr, bytes: usize) -> Result<String> {
    let stream = client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    let mut name = String::new();
    reader.read_line(&mut name)?;
    let mut received = 0usize;
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = reader.read(&mut buf).with_context(|| {
            format!("the transfer from {addr} stalled after {received} of {bytes} bytes")
        })?;
        if n == 0 {
            break;
        }
        for (k, byte) in buf[..n].iter().enumerate() {
            ensure!(
                *byte == bulk_byte(received + k),
                "byte {} of the transfer from {addr} is wrong",
                received + k
            );
        }
        received += n;
    }
    ensure!(
        received == bytes,
        "the transfer from {addr} ended after {received} of {bytes} bytes"
    );
    Ok(name.trim().to_owned())
}

/// Sends `flows` UDP flows (a socket of its own each, two datagrams) from
/// `client` to `addr` (name servers behind it) and counts which backend
/// answered each; an error when a datagram gets no answer or a flow's two
/// answers come from two backends.
pub fn udp_tally(
    client: &Netns,
    addr: SocketAddr,
    flows: usize,
) -> Result<std::collections::BTreeMap<String, usize>> {
    let mut counts = std::collections::BTreeMap::new();
    let any: std::net::IpAddr = if addr.is_ipv4() {
        [0u8; 4].into()
    } else {
        [0u16; 8].into()
    };
    for flow in 0..flows {
        let socket = client.run(|| UdpSocket::bind(SocketAddr::new(any, 0)))??;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut names = Vec::new();
        for datagram in 0..2 {
            socket.send_to(b"who?", addr)?;
            let mut buf = [0u8; 64];
            let (n, _) = socket.recv_from(&mut buf).with_context(|| {
                format!("UDP flow {flow} to {addr}: datagram {datagram} got no answer")
            })?;
            names.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        ensure!(
            names[0] == names[1],
            "UDP flow {flow} to {addr}: answered by {names:?}"
        );
        *counts.entry(names.swap_remove(0)).or_default() += 1;
    }
    Ok(counts)
}

/// Starts a TCP server on `addr` in `ns` that takes uploads
/// ([`Server::TcpSink`]).
pub fn tcp_sink_server(ns: &Netns, addr: SocketAddr, name: &str) -> Result<()> {
    serve(Server::TcpSink, bind_tcp(ns, addr)?.into(), name);
    Ok(())
}

/// Byte `i` of a bulk transfer: a pattern a reader can check, with a
/// period (251, a prime) that does not divide segment sizes.
pub fn bulk_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// Starts a UDP server on `addr` in `ns` that answers every datagram with
/// `name`.
pub fn udp_name_server(ns: &Netns, addr: SocketAddr, name: &str) -> Result<()> {
    let socket = ns
        .run(|| UdpSocket::bind(addr))?
        .with_context(|| format!("cannot bind {addr} in {}", ns.name()))?;
    serve(Server::UdpName, socket.into(), name);
    Ok(())
}

/// Connects from `ns` to `addr` and returns the name the server sent.
pub fn tcp_ask_name(ns: &Netns, addr: SocketAddr) -> Result<String> {
    let mut stream = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?
        .with_context(|| format!("cannot connect to {addr} from {}", ns.name()))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .with_context(|| format!("no reply from {addr}"))?;
    Ok(reply.trim().to_owned())
}

/// A health endpoint a test can turn off and on: a TCP listener on `addr`
/// that answers every connection with an HTTP response of the current
/// status (so it serves both `tcp` and `http` checks). Stopping it closes
/// the port; dropping it stops it.
pub struct HealthEndpoint {
    ns: Netns,
    addr: SocketAddr,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl HealthEndpoint {
    /// Starts answering `200` on `addr` in `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<HealthEndpoint> {
        let mut endpoint = HealthEndpoint {
            ns: ns.clone(),
            addr,
            status: std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200)),
            stop: None,
        };
        endpoint.resume()?;
        Ok(endpoint)
    }

    /// The HTTP status answered from now on.
    pub fn set_status(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the port: connections are refused.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            // The accept loop notices within its poll period.
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens the port again.
    pub fn resume(&mut self) -> Result<()> {
        if self.stop.is_some() {
            return Ok(());
        }
        let addr = self.addr;
        let listener = self
            .ns
            .run(|| TcpListener::bind(addr))?
            .with_context(|| format!("cannot listen on {addr} in {}", self.ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, status) = (stop.clone(), self.status.clone());
        thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                        // Read the request head, if any (a tcp check sends none).
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf);
                        let code = status.load(std::sync::atomic::Ordering::SeqCst);
                        let reply = format!(
                            "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = stream.write_all(reply.as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.stop = Some(stop);
        Ok(())
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a TCP server on `addr` in `ns` that writes `name` and a newline
/// to every connection, then echoes what it receives until the client
/// closes: a long-lived connection that shows which backend holds it.
pub fn tcp_echo_server(ns: &Netns, addr: SocketAddr, name: &str) -> Result<()> {
    serve(Server::TcpEcho, bind_tcp(ns, addr)?.into(), name);
    Ok(())
}

/// Starts a TCP server on `addr` in `ns` that writes `name` and a newline,
/// then `bytes` bytes of a known pattern ([`bulk_byte`]), then closes.
pub fn tcp_bulk_server(ns: &Netns, addr: SocketAddr, name: &str, bytes: usize) -> Result<()> {
    serve(Server::TcpBulk { bytes }, bind_tcp(ns, addr)?.into(), name);
    Ok(())
}

/// Opens `n` connections from `client` to `addr` (name servers behind it)
/// and counts which backend answered each.
pub fn tally_names(
    client: &Netns,
    addr: SocketAddr,
    n: usize,
) -> Result<std::collections::BTreeMap<String, usize>> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        *counts.entry(tcp_ask_name(client, addr)?).or_default() += 1;
    }
    Ok(counts)
}

/// A long-lived connection to an echo server ([`tcp_echo_server`]).
pub struct EchoConnection {
    reader: std::io::BufReader<TcpStream>,
    /// The backend that holds the connection.
    pub backend: String,
}

impl EchoConnection {
    /// Connects from `client` to `addr` and reads the backend's name.
    pub fn open(client: &Netns, addr: SocketAddr) -> Result<EchoConnection> {
        use std::io::BufRead as _;
        let stream = client
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut reader = std::io::BufReader::new(stream);
        let mut backend = String::new();
        reader.read_line(&mut backend)?;
        Ok(EchoConnection {
            reader,
            backend: backend.trim().to_owned(),
        })
    }

    /// Sends a line and checks that it comes back: the connection works.
    pub fn echo(&mut self, text: &str) -> Result<()> {
        use std::io::BufRead as _;
        self.reader
            .get_mut()
            .write_all(format!("{text}\n").as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        anyhow::ensure!(
            line.trim() == text,
            "the connection to {} answered {line:?}",
            self.backend
        );
        Ok(())
    }
}

//! Small servers for backends in tests: each answers with its own name, so
//! a client sees which backend it reached.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::Netns;

/// Starts a TCP server on `addr` in `ns` that writes `name` and a newline
/// to every connection, then closes it. It runs until the namespace goes.
pub fn tcp_name_server(ns: &Netns, addr: SocketAddr, name: &str) -> Result<()> {
    let listener = ns
        .run(|| TcpListener::bind(addr))?
        .with_context(|| format!("cannot listen on {addr} in {}", ns.name()))?;
    let reply = format!("{name}\n");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    Ok(())
}

/// Starts a UDP server on `addr` in `ns` that answers every datagram with
/// `name`.
pub fn udp_name_server(ns: &Netns, addr: SocketAddr, name: &str) -> Result<()> {
    let socket = ns
        .run(|| UdpSocket::bind(addr))?
        .with_context(|| format!("cannot bind {addr} in {}", ns.name()))?;
    let reply = name.as_bytes().to_vec();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&reply, from);
        }
    });
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

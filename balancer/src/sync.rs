//! Flows shared between balancer hosts, on the wire: UDP datagrams that
//! carry batches of new flows (client, VIP, protocol, backend address),
//! each datagram authenticated by an HMAC-SHA256 made with the secret the
//! hosts of a group share, and numbered so that a replayed datagram is
//! refused. Pure: bytes in, flows out, and the other way.
//!
//! A flow travels by addresses, not by this host's numbers: the peer finds
//! the VIP and the backend in its own configuration.
//!
//! ```text
//! datagram = header (44) | records (64 each, at most MAX_RECORDS) | MAC (16)
//! header   = "BLFS" | version 1 | sender family | count u16 | sequence u64
//!          | sent_at_us u64 | sender port u16 | 0 u16 | sender (16)
//! record   = family (4 or 6) | protocol | client port u16 | VIP port u16
//!          | backend family | 0 | client (16) | VIP (16) | backend (16)
//!          | placed_at_us u64
//! ```
//!
//! Numbers are big-endian; an IPv4 address fills the first 4 bytes of its
//! 16. The MAC is HMAC-SHA256 over everything before it, cut to 16 bytes.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The datagrams' first bytes.
const MAGIC: &[u8; 4] = b"BLFS";
const VERSION: u8 = 1;
const HEADER: usize = 44;
const RECORD: usize = 64;
const MAC: usize = 16;
/// Largest datagram sent: below any path MTU of a network hosts share.
pub const MAX_DATAGRAM: usize = 1400;
/// Flows in one datagram.
pub const MAX_RECORDS: usize = (MAX_DATAGRAM - HEADER - MAC) / RECORD;
/// Shortest secret accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// A datagram sent longer ago than this (or this far in the future) is
/// refused, so that one recorded before a receiver restarted (which then
/// forgot the sequence numbers) cannot be replayed. Hosts' clocks must
/// agree this well (NTP does far better).
pub const MAX_AGE_US: u64 = 30_000_000;

/// One flow a host placed, as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFlow {
    pub client: SocketAddr,
    /// The VIP's address and the flow's destination port.
    pub vip: SocketAddr,
    pub protocol: u8,
    pub backend: IpAddr,
    /// When the packet that placed it arrived on its host, in microseconds
    /// since the Unix epoch.
    pub placed_at_us: u64,
}

/// One datagram's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The sending host's `listen` address, where the datagram must come
    /// from: under the MAC, so that a datagram one host sent cannot pass
    /// for another's.
    pub sender: SocketAddr,
    /// Grows with every datagram a host sends, across its restarts.
    pub sequence: u64,
    /// When it was sent, in microseconds since the Unix epoch.
    pub sent_at_us: u64,
    pub flows: Vec<SharedFlow>,
}

/// The secret of a group of hosts.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key of `bytes`, refused when shorter than [`MIN_KEY_BYTES`].
    pub fn new(bytes: &[u8]) -> Result<Key, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the key has {} bytes: at least {MIN_KEY_BYTES} are needed (for example `head -c 32 /dev/urandom | base64`)",
                bytes.len()
            ));
        }
        Ok(Key(bytes.to_vec()))
    }

    /// The key in `path`: the file's content without surrounding
    /// whitespace. A file others may read is refused.
    pub fn read(path: &Path) -> Result<Key, String> {
        use std::os::unix::fs::MetadataExt as _;
        let what = |err: std::io::Error| format!("cannot read {}: {err}", path.display());
        let mode = std::fs::metadata(path).map_err(what)?.mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} may be read by others (mode {:o}): `chmod 600` it",
                path.display(),
                mode & 0o777
            ));
        }
        let text = std::fs::read(path).map_err(what)?;
        Key::new(text.trim_ascii()).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too short, not ours, another version, or a length that does not
    /// match its count.
    Malformed,
    /// The MAC does not match: another key, or altered on the way.
    Mac,
    /// A sequence number seen already from this peer.
    Replay,
    /// Sent more than [`MAX_AGE_US`] away from now.
    Stale,
    /// From an address that is not a peer's.
    UnknownPeer,
    /// From another address than the sender it names: replayed with
    /// another host's source.
    Sender,
}

impl Refusal {
    /// The metrics' label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Mac => "mac",
            Refusal::Replay => "replay",
            Refusal::Stale => "stale",
            Refusal::UnknownPeer => "unknown_peer",
            Refusal::Sender => "sender",
        }
    }

    /// Every label.
    pub const ALL: [Refusal; 6] = [
        Refusal::Malformed,
        Refusal::Mac,
        Refusal::Replay,
        Refusal::Stale,
        Refusal::UnknownPeer,
        Refusal::Sender,
    ];
}

/// The datagram of `batch` (at most [`MAX_RECORDS`] flows), with its MAC.
pub fn encode(batch: &Batch, key: &Key) -> Vec<u8> {
    let flows = &batch.flows[..batch.flows.len().min(MAX_RECORDS)];
    let mut out = Vec::with_capacity(HEADER + flows.len() * RECORD + MAC);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(family(batch.sender.ip()));
    out.extend_from_slice(&(flows.len() as u16).to_be_bytes());
    out.extend_from_slice(&batch.sequence.to_be_bytes());
    out.extend_from_slice(&batch.sent_at_us.to_be_bytes());
    out.extend_from_slice(&batch.sender.port().to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&address_bytes(batch.sender.ip()));
    for flow in flows {
        out.push(family(flow.client.ip()));
        out.push(flow.protocol);
        out.extend_from_slice(&flow.client.port().to_be_bytes());
        out.extend_from_slice(&flow.vip.port().to_be_bytes());
        out.push(family(flow.backend));
        out.push(0);
        for address in [flow.client.ip(), flow.vip.ip(), flow.backend] {
            out.extend_from_slice(&address_bytes(address));
        }
        out.extend_from_slice(&flow.placed_at_us.to_be_bytes());
    }
    let mut mac = key.mac();
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes()[..MAC]);
    out
}

/// The batch of `datagram`, once its MAC holds.
pub fn decode(datagram: &[u8], key: &Key) -> Result<Batch, Refusal> {
    if datagram.len() < HEADER + MAC || &datagram[..4] != MAGIC || datagram[4] != VERSION {
        return Err(Refusal::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC);
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_truncated_left(tag).map_err(|_| Refusal::Mac)?;
    let count = usize::from(u16::from_be_bytes([body[6], body[7]]));
    if count > MAX_RECORDS || body.len() != HEADER + count * RECORD {
        return Err(Refusal::Malformed);
    }
    let sequence = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
    let sent_at_us = u64::from_be_bytes(body[16..24].try_into().expect("8 bytes"));
    let port = u16::from_be_bytes([body[24], body[25]]);
    let sender = SocketAddr::new(
        address(body[5], &body[28..44]).ok_or(Refusal::Malformed)?,
        port,
    );
    let flows = body[HEADER..]
        .chunks_exact(RECORD)
        .map(record)
        .collect::<Option<Vec<_>>>()
        .ok_or(Refusal::Malformed)?;
    Ok(Batch {
        sender,
        sequence,
        sent_at_us,
        flows,
    })
}

/// An address of `family` (4 or 6) from its 16 bytes.
fn address(family: u8, bytes: &[u8]) -> Option<IpAddr> {
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
    }
}

fn record(r: &[u8]) -> Option<SharedFlow> {
    let port = |at: usize| u16::from_be_bytes([r[at], r[at + 1]]);
    let address = |family: u8, at: usize| address(family, &r[at..at + 16]);
    Some(SharedFlow {
        client: SocketAddr::new(address(r[0], 8)?, port(2)),
        vip: SocketAddr::new(address(r[0], 24)?, port(4)),
        protocol: r[1],
        backend: address(r[6], 40)?,
        placed_at_us: u64::from_be_bytes(r[56..64].try_into().ok()?),
    })
}

fn family(address: IpAddr) -> u8 {
    if address.is_ipv4() { 4 } else { 6 }
}

fn address_bytes(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The sequence numbers seen per peer, to refuse a datagram replayed.
#[derive(Debug, Default)]
pub struct Replays {
    last: BTreeMap<IpAddr, u64>,
}

impl Replays {
    /// Whether `batch` from `peer` may be taken at `now_us`; notes its
    /// sequence number when it may.
    pub fn admit(&mut self, peer: IpAddr, batch: &Batch, now_us: u64) -> Result<(), Refusal> {
        if batch.sent_at_us.abs_diff(now_us) > MAX_AGE_US {
            return Err(Refusal::Stale);
        }
        let last = self.last.entry(peer).or_default();
        if batch.sequence <= *last {
            return Err(Refusal::Replay);
        }
        *last = batch.sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef-a-shared-secret").unwrap()
    }

    fn flows(n: usize) -> Vec<SharedFlow> {
        (0..n)
            .map(|i| SharedFlow {
                client: if i % 2 == 0 {
                    SocketAddr::new(Ipv4Addr::new(203, 0, 113, i as u8).into(), 40000 + i as u16)
                } else {
                    SocketAddr::new("2001:db8::7".parse().unwrap(), 50000)
                },
                vip: if i % 2 == 0 {
                    "198.51.100.1:443".parse().unwrap()
                } else {
                    "[2001:db8:100::1]:80".parse().unwrap()
                },
                protocol: if i % 3 == 0 { 17 } else { 6 },
                // An IPv6 backend of an IPv4 VIP (tunnels) too.
                backend: if i % 4 == 0 {
                    "fd00::11".parse().unwrap()
                } else {
                    Ipv4Addr::new(10, 0, 0, i as u8).into()
                },
                placed_at_us: 1_700_000_000_000_000 + i as u64,
            })
            .collect()
    }

    #[test]
    fn a_batch_comes_back_as_it_went() {
        for n in [0, 1, 2, MAX_RECORDS] {
            let batch = Batch {
                sender: "10.0.0.1:7946".parse().unwrap(),
                sequence: 7,
                sent_at_us: 1_700_000_000_000_123,
                flows: flows(n),
            };
            let bytes = encode(&batch, &key());
            assert_eq!(bytes.len(), HEADER + n * RECORD + MAC);
            assert!(bytes.len() <= MAX_DATAGRAM);
            assert_eq!(decode(&bytes, &key()), Ok(batch));
        }
        assert_eq!(MAX_RECORDS, 20);
    }

    #[test]
    fn a_datagram_altered_or_made_with_another_key_is_refused() {
        let batch = Batch {
            sender: "[fd00::1]:7946".parse().unwrap(),
            sequence: 1,
            sent_at_us: 5,
            flows: flows(3),
        };
        let bytes = encode(&batch, &key());
        let other = Key::new(b"another secret of the same size!").unwrap();
        assert_eq!(decode(&bytes, &other), Err(Refusal::Mac));
        // Every single bit flipped anywhere is caught.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, &key()).is_err(), "byte {i}");
        }
        // Cut short, too long, empty, not ours.
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..HEADER + MAC - 1],
            &[][..],
            &b"GET / HTTP/1.1\r\n\r\n0123456789abcdef0123456789"[..],
        ] {
            assert!(decode(bad, &key()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_count_that_does_not_match_the_length_is_malformed_even_with_a_good_mac() {
        let batch = Batch {
            sender: "10.0.0.1:7946".parse().unwrap(),
            sequence: 1,
            sent_at_us: 5,
            flows: flows(2),
        };
        let mut bytes = encode(&batch, &key());
        bytes.truncate(bytes.len() - MAC);
        bytes[7] = 3;
        let mut mac = key().mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC]);
        assert_eq!(decode(&bytes, &key()), Err(Refusal::Malformed));
    }

    #[test]
    fn replays_and_stale_datagrams_are_refused() {
        let now = 1_700_000_000_000_000;
        let at = |sequence, sent_at_us| Batch {
            sender: "10.0.0.1:7946".parse().unwrap(),
            sequence,
            sent_at_us,
            flows: Vec::new(),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut seen = Replays::default();
        assert_eq!(seen.admit(a, &at(10, now), now), Ok(()));
        assert_eq!(seen.admit(a, &at(10, now), now), Err(Refusal::Replay));
        assert_eq!(seen.admit(a, &at(9, now), now), Err(Refusal::Replay));
        assert_eq!(seen.admit(b, &at(10, now), now), Ok(()), "per peer");
        assert_eq!(seen.admit(a, &at(11, now), now), Ok(()));
        assert_eq!(
            seen.admit(a, &at(12, now - MAX_AGE_US - 1), now),
            Err(Refusal::Stale)
        );
        assert_eq!(
            seen.admit(a, &at(12, now + MAX_AGE_US + 1), now),
            Err(Refusal::Stale)
        );
        assert_eq!(seen.admit(a, &at(12, now - MAX_AGE_US), now), Ok(()));
    }

    #[test]
    fn short_keys_and_keys_others_can_read_are_refused() {
        assert!(Key::new(b"short").unwrap_err().contains("at least 16"));
        let dir = std::env::temp_dir().join(format!("balancer-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sync.key");
        std::fs::write(&path, "  0123456789abcdef0123\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Key::read(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = Key::read(&path).unwrap();
        assert_eq!(key.0, b"0123456789abcdef0123");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! What the kernel's `netdev` generic netlink family tells of a device:
//! its XDP features (Linux 6.3 and later; `ynl --family netdev --do
//! dev-get` shows them as `xdp-features`) and its NAPI instances (Linux
//! 6.9 and later; `--dump napi-get`).
//!
//! A request and its answer are a few attributes, so they are written and
//! read here by hand rather than through a generic netlink crate.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_CMD_NAPI_GET: u8 = 11;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_NAPI_IFINDEX: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Bytes of `struct nlmsghdr` and of `struct genlmsghdr`.
const NLMSG_HDR: usize = 16;
const GENL_HDR: usize = 4;

/// A netlink attribute: length, type, payload, padded to 4 bytes.
fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// The attributes of a message's payload, by type (the nested flag bits
/// masked off); stops at the first malformed one.
pub fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// A generic netlink request `command` (version 1) to `family` with
/// `attrs`, as one message (`flags` beside NLM_F_REQUEST: a dump).
fn message(family: u16, command: u8, attrs: &[u8], seq: u32, flags: u16) -> Vec<u8> {
    let len = NLMSG_HDR + GENL_HDR + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[command, 1, 0, 0]);
    out.extend_from_slice(attrs);
    out
}

/// A message's attributes: type and payload.
type Attributes = Vec<(u16, Vec<u8>)>;

/// One message of an answer.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A message's payload attributes.
    Attributes(Attributes),
    /// The end of a dump.
    Done,
}

/// The messages of one read of answers (a dump sends several at once),
/// or the error one of them carries.
fn answers(mut buf: &[u8]) -> io::Result<Vec<Answer>> {
    let truncated = || io::Error::other("a truncated netlink answer");
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDR {
            return Err(truncated());
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDR || len > buf.len() {
            return Err(truncated());
        }
        match u16::from_ne_bytes([buf[4], buf[5]]) {
            NLMSG_ERROR => {
                let code = buf
                    .get(NLMSG_HDR..NLMSG_HDR + 4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(io::Error::from_raw_os_error(-code));
            }
            NLMSG_DONE => out.push(Answer::Done),
            _ => {
                let payload = buf.get(NLMSG_HDR + GENL_HDR..len).ok_or_else(truncated)?;
                out.push(Answer::Attributes(
                    attributes(payload)
                        .into_iter()
                        .map(|(k, v)| (k, v.to_vec()))
                        .collect(),
                ));
            }
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// A generic netlink socket of the calling thread's network namespace.
struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: socket(2) has no preconditions.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO reads a timeval that outlives the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Socket(fd))
    }

    fn send(&self, request: &[u8]) -> io::Result<()> {
        // SAFETY: send(2) reads `request`, which outlives the call (a
        // netlink socket needs no address: the kernel is the default).
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn receive(&self) -> io::Result<Vec<Answer>> {
        let mut buf = vec![0u8; 32768];
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
        let got = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        answers(&buf[..got as usize])
    }

    /// Sends one request and reads its one answer.
    fn request(&self, request: &[u8]) -> io::Result<Attributes> {
        self.send(request)?;
        match self.receive()?.into_iter().next() {
            Some(Answer::Attributes(attrs)) => Ok(attrs),
            _ => Err(io::Error::other("an empty netlink answer")),
        }
    }

    /// Sends a dump request and reads every message up to its end.
    fn dump(&self, request: &[u8]) -> io::Result<Vec<Attributes>> {
        self.send(request)?;
        let mut out = Vec::new();
        loop {
            for answer in self.receive()? {
                match answer {
                    Answer::Attributes(attrs) => out.push(attrs),
                    Answer::Done => return Ok(out),
                }
            }
        }
    }

    /// The id of the `netdev` family, `None` when the kernel has none
    /// (before Linux 6.3).
    fn netdev(&self) -> io::Result<Option<u16>> {
        let family = match self.request(&message(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            &attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
            1,
            0,
        )) {
            Ok(attrs) => attrs,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(err) => return Err(err),
        };
        family
            .iter()
            .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
            .map(Some)
            .ok_or_else(|| io::Error::other("the netdev family has no id"))
    }
}

/// The `NETDEV_XDP_ACT_*` bits of device `ifindex`, in the calling
/// thread's network namespace; `Ok(None)` when the kernel has no `netdev`
/// family (before Linux 6.3).
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let socket = Socket::open()?;
    let Some(id) = socket.netdev()? else {
        return Ok(None);
    };
    let device = socket.request(&message(
        id,
        NETDEV_CMD_DEV_GET,
        &attribute(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
        2,
        0,
    ))?;
    Ok(device
        .iter()
        .find(|(kind, _)| *kind == NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|(_, v)| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))))
}

/// How many NAPI instances device `ifindex` has, in the calling thread's
/// network namespace; `Ok(None)` when the kernel cannot tell (before
/// Linux 6.9). A veth has them only while it takes frames from its peer's
/// XDP: with an XDP program of its own, or GRO turned on while up.
pub fn napi_instances(ifindex: u32) -> io::Result<Option<usize>> {
    let socket = Socket::open()?;
    let Some(id) = socket.netdev()? else {
        return Ok(None);
    };
    match socket.dump(&message(
        id,
        NETDEV_CMD_NAPI_GET,
        &attribute(NETDEV_A_NAPI_IFINDEX, &ifindex.to_ne_bytes()),
        3,
        NLM_F_DUMP,
    )) {
        Ok(napis) => Ok(Some(napis.len())),
        // An older netdev family, without napi-get.
        Err(err) if matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_read_back() {
        let mut buf = attribute(2, b"netdev\0");
        assert_eq!(
            buf.len(),
            12,
            "7 bytes of payload padded to 8, after 4 of header"
        );
        buf.extend(attribute(3, &0x67u64.to_ne_bytes()));
        // A nested flag does not change the type.
        buf.extend(attribute(1 | 0x8000, &7u32.to_ne_bytes()));
        let read = attributes(&buf);
        assert_eq!(
            read,
            vec![
                (2, &b"netdev\0"[..]),
                (3, &0x67u64.to_ne_bytes()[..]),
                (1, &7u32.to_ne_bytes()[..])
            ]
        );
        // A length past the end stops the reading rather than panicking.
        let mut broken = attribute(3, &[1, 2, 3, 4]);
        broken[0] = 200;
        assert!(attributes(&broken).is_empty());
        assert!(attributes(&[1, 0]).is_empty());
    }

    #[test]
    fn an_error_answer_is_its_errno() {
        // nlmsghdr (type NLMSG_ERROR), then struct nlmsgerr: the negative
        // errno and the request's header.
        let mut error = Vec::new();
        error.extend_from_slice(&36u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        error.extend_from_slice(&[0; 16]);
        let err = answers(&error).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        assert!(answers(&error[..8]).is_err());
    }

    #[test]
    fn a_dumps_messages_are_read_up_to_its_end() {
        let mut buf = message(30, 1, &attribute(1, &7u32.to_ne_bytes()), 3, 0);
        buf.extend(message(30, 1, &attribute(1, &8u32.to_ne_bytes()), 3, 0));
        let mut done = vec![0u8; 20];
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        buf.extend(done);
        assert_eq!(
            answers(&buf).unwrap(),
            vec![
                Answer::Attributes(vec![(1, 7u32.to_ne_bytes().to_vec())]),
                Answer::Attributes(vec![(1, 8u32.to_ne_bytes().to_vec())]),
                Answer::Done,
            ]
        );
    }

    #[test]
    fn loopback_has_no_native_xdp_and_no_napi() {
        // The running kernel (6.9 or later here) reports lo's features,
        // none, and its NAPI instances, none.
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo");
        assert_eq!(xdp_features(lo).expect("the netdev family"), Some(0));
        assert_eq!(napi_instances(lo).expect("napi-get"), Some(0));
    }
}

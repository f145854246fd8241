//! What the kernel's `netdev` generic netlink family tells of a device:
//! its XDP features (Linux 6.3 and later; `ynl --family netdev --do
//! dev-get` shows them as `xdp-features`) and its NAPI instances (Linux
//! 6.9 and later; `--dump napi-get`).
//!
//! netlink-packet-generic frames the messages and asks the controller
//! (`nlctrl`) for the family's id; only the netdev family's own payload,
//! the two commands and the attributes read here, is written out below.
//! The socket is a blocking netlink-sys one opened on every call: doctor
//! asks from threads that entered other network namespaces, and a netlink
//! socket answers for the namespace it was opened in.

use std::{fmt::Debug, io, time::Duration};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext as _, NLM_F_DUMP, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable as _,
    ParseableParametrized, parse_u32, parse_u64,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    constants::GENL_ID_CTRL,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_CMD_NAPI_GET: u8 = 11;
/// NETDEV_A_DEV_IFINDEX and NETDEV_A_NAPI_IFINDEX: the same number in
/// both commands' attribute sets.
const NETDEV_A_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// The version the kernel's netdev family declares.
const NETDEV_FAMILY_VERSION: u8 = 1;

/// How long the kernel may take to answer before a call fails rather
/// than hangs doctor.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The commands of the netdev family asked here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    /// NETDEV_CMD_DEV_GET: one device, named by its ifindex.
    DevGet,
    /// NETDEV_CMD_NAPI_GET: as a dump, the NAPI instances, of one device
    /// when the request names its ifindex.
    NapiGet,
}

impl From<Command> for u8 {
    fn from(command: Command) -> u8 {
        match command {
            Command::DevGet => NETDEV_CMD_DEV_GET,
            Command::NapiGet => NETDEV_CMD_NAPI_GET,
        }
    }
}

impl TryFrom<u8> for Command {
    type Error = DecodeError;

    fn try_from(command: u8) -> Result<Command, DecodeError> {
        match command {
            NETDEV_CMD_DEV_GET => Ok(Command::DevGet),
            NETDEV_CMD_NAPI_GET => Ok(Command::NapiGet),
            other => Err(format!("an unexpected netdev command {other}").into()),
        }
    }
}

/// An attribute of those commands. Each command has its own attribute
/// set, so an attribute is read knowing the command.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attribute {
    /// The device's ifindex (a request's filter, an answer's device).
    Ifindex(u32),
    /// NETDEV_A_DEV_XDP_FEATURES, of dev-get: the NETDEV_XDP_ACT_* bits.
    XdpFeatures(u64),
    /// Any other, kept as it came.
    Other(DefaultNla),
}

impl Nla for Attribute {
    fn value_len(&self) -> usize {
        match self {
            Attribute::Ifindex(_) => size_of::<u32>(),
            Attribute::XdpFeatures(_) => size_of::<u64>(),
            Attribute::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attribute::Ifindex(_) => NETDEV_A_IFINDEX,
            Attribute::XdpFeatures(_) => NETDEV_A_DEV_XDP_FEATURES,
            Attribute::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attribute::Ifindex(ifindex) => buffer.copy_from_slice(&ifindex.to_ne_bytes()),
            Attribute::XdpFeatures(bits) => buffer.copy_from_slice(&bits.to_ne_bytes()),
            Attribute::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> ParseableParametrized<NlaBuffer<&T>, Command> for Attribute {
    fn parse_with_param(nla: &NlaBuffer<&T>, command: Command) -> Result<Attribute, DecodeError> {
        Ok(match (command, nla.kind()) {
            (_, NETDEV_A_IFINDEX) => {
                Attribute::Ifindex(parse_u32(nla.value()).context("an invalid netdev ifindex")?)
            }
            (Command::DevGet, NETDEV_A_DEV_XDP_FEATURES) => Attribute::XdpFeatures(
                parse_u64(nla.value()).context("invalid netdev xdp-features")?,
            ),
            _ => Attribute::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// A message of the netdev family, request or answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Netdev {
    command: Command,
    attributes: Vec<Attribute>,
}

impl Netdev {
    /// A `command` about device `ifindex`.
    fn of(command: Command, ifindex: u32) -> Netdev {
        Netdev {
            command,
            attributes: vec![Attribute::Ifindex(ifindex)],
        }
    }

    fn ifindex(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Ifindex(ifindex) => Some(*ifindex),
            _ => None,
        })
    }

    fn xdp_features(&self) -> Option<u64> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::XdpFeatures(bits) => Some(*bits),
            _ => None,
        })
    }
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.command.into()
    }

    fn version(&self) -> u8 {
        NETDEV_FAMILY_VERSION
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.attributes.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attributes.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Netdev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Netdev, DecodeError> {
        let command = Command::try_from(header.cmd)?;
        let attributes = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| Attribute::parse_with_param(&nla, command)))
            .collect::<Result<_, _>>()
            .context("invalid netdev attributes")?;
        Ok(Netdev {
            command,
            attributes,
        })
    }
}

/// Reads one datagram of an answer into `messages`: whether the answer
/// ended with it (its one message, or with `dump` the end of the dump),
/// or the error the kernel answered.
fn read<F>(mut datagram: &[u8], dump: bool, messages: &mut Vec<F>) -> io::Result<bool>
where
    F: ParseableParametrized<[u8], GenlHeader> + Debug,
{
    while !datagram.is_empty() {
        let message = NetlinkMessage::<GenlMessage<F>>::deserialize(datagram)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => {
                messages.push(inner.payload);
                if !dump {
                    return Ok(true);
                }
            }
            NetlinkPayload::Error(error) if error.code.is_some() => return Err(error.to_io()),
            NetlinkPayload::Done(done) if done.code != 0 => {
                return Err(io::Error::from_raw_os_error(done.code.abs()));
            }
            // The end of a dump, or an acknowledgement.
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(true),
            _ => {}
        }
        let length = (message.header.length as usize).next_multiple_of(4);
        datagram = datagram.get(length..).unwrap_or_default();
    }
    Ok(false)
}

/// A generic netlink socket of the calling thread's network namespace.
struct Genl(Socket);

impl Genl {
    fn open() -> io::Result<Genl> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket2::SockRef::from(&socket).set_read_timeout(Some(TIMEOUT))?;
        Ok(Genl(socket))
    }

    /// Sends `payload` to family `id` and reads the messages of its answer
    /// (`dump`: a dump request, answered up to NLMSG_DONE).
    fn exchange<F>(&self, id: u16, payload: F, dump: bool) -> io::Result<Vec<F>>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
    {
        let mut message = GenlMessage::from_payload(payload);
        message.set_resolved_family_id(id);
        let mut message = NetlinkMessage::from(message);
        message.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        message.finalize();
        let mut request = vec![0; message.buffer_len()];
        message.serialize(&mut request);
        self.0.send(&request, 0)?;
        let mut messages = Vec::new();
        loop {
            let (datagram, _) = self.0.recv_from_full()?;
            if read(&datagram, dump, &mut messages)? {
                return Ok(messages);
            }
        }
    }

    /// Sends one request to family `id` and reads its one answer.
    fn request<F>(&self, id: u16, payload: F) -> io::Result<F>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
    {
        self.exchange(id, payload, false)?
            .pop()
            .ok_or_else(|| io::Error::other("an empty netlink answer"))
    }

    /// The id of the `netdev` family, `None` when the kernel has none
    /// (before Linux 6.3).
    fn netdev(&self) -> io::Result<Option<u16>> {
        let get = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(Netdev::family_name().to_owned())],
        };
        let family = match self.request(GENL_ID_CTRL, get) {
            Ok(family) => family,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(err) => return Err(err),
        };
        family
            .nlas
            .iter()
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(Some(*id)),
                _ => None,
            })
            .ok_or_else(|| io::Error::other("the netdev family has no id"))
    }
}

/// The `NETDEV_XDP_ACT_*` bits of device `ifindex`, in the calling
/// thread's network namespace; `Ok(None)` when the kernel has no `netdev`
/// family (before Linux 6.3).
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let genl = Genl::open()?;
    let Some(id) = genl.netdev()? else {
        return Ok(None);
    };
    let device = genl.request(id, Netdev::of(Command::DevGet, ifindex))?;
    Ok(device.xdp_features())
}

/// How many NAPI instances device `ifindex` has, in the calling thread's
/// network namespace; `Ok(None)` when the kernel cannot tell (before
/// Linux 6.9). A veth has them only while it takes frames from its peer's
/// XDP: with an XDP program of its own, or GRO turned on while up.
pub fn napi_instances(ifindex: u32) -> io::Result<Option<usize>> {
    let genl = Genl::open()?;
    let Some(id) = genl.netdev()? else {
        return Ok(None);
    };
    match genl.exchange(id, Netdev::of(Command::NapiGet, ifindex), true) {
        // The dump is filtered by the kernel; counting only this device's
        // keeps the count right should a kernel ignore the filter.
        Ok(napis) => Ok(Some(
            napis
                .iter()
                .filter(|n| n.ifindex() == Some(ifindex))
                .count(),
        )),
        // An older netdev family, without napi-get.
        Err(err) if matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage, NetlinkHeader};

    use super::*;

    /// One datagram holding `payloads` as the kernel frames them.
    fn datagram(payloads: Vec<NetlinkPayload<GenlMessage<Netdev>>>) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            let mut message = NetlinkMessage::new(NetlinkHeader::default(), payload);
            message.finalize();
            let mut buf = vec![0; message.buffer_len()];
            message.serialize(&mut buf);
            out.extend(buf);
        }
        out
    }

    /// `netdev` as a message of the netdev family, given id 30.
    fn answer(netdev: Netdev) -> NetlinkPayload<GenlMessage<Netdev>> {
        let mut message = GenlMessage::from_payload(netdev);
        message.set_resolved_family_id(30);
        NetlinkPayload::InnerMessage(message)
    }

    #[test]
    fn a_request_is_its_command_and_the_ifindex() {
        let buf = datagram(vec![answer(Netdev::of(Command::DevGet, 7))]);
        // nlmsghdr (16 bytes), genlmsghdr: command, version, reserved;
        // then one attribute: length 8, type 1, the ifindex.
        let mut expected = Vec::new();
        expected.extend(28u32.to_ne_bytes());
        expected.extend(30u16.to_ne_bytes());
        expected.extend([0; 10]);
        expected.extend([NETDEV_CMD_DEV_GET, 1, 0, 0]);
        expected.extend(8u16.to_ne_bytes());
        expected.extend(NETDEV_A_IFINDEX.to_ne_bytes());
        expected.extend(7u32.to_ne_bytes());
        assert_eq!(buf, expected);
    }

    #[test]
    fn an_answer_is_read_by_its_commands_attributes() {
        let other = Attribute::Other(DefaultNla::new(4, 1u32.to_ne_bytes().to_vec()));
        let device = Netdev {
            command: Command::DevGet,
            attributes: vec![
                Attribute::Ifindex(7),
                Attribute::XdpFeatures(0x67),
                other.clone(),
            ],
        };
        let mut read_back: Vec<Netdev> = Vec::new();
        let ended = read(
            &datagram(vec![answer(device.clone())]),
            false,
            &mut read_back,
        );
        assert!(ended.unwrap(), "one message answers a request");
        assert_eq!(read_back, vec![device]);
        assert_eq!(read_back[0].xdp_features(), Some(0x67));

        // Type 3 of napi-get is its IRQ, not XDP features.
        let napi = Netdev {
            command: Command::NapiGet,
            attributes: vec![Attribute::Ifindex(7), Attribute::XdpFeatures(0x67)],
        };
        let mut read_back: Vec<Netdev> = Vec::new();
        read(&datagram(vec![answer(napi)]), false, &mut read_back).unwrap();
        assert_eq!(read_back[0].xdp_features(), None);
        assert_eq!(
            read_back[0].attributes[1],
            Attribute::Other(DefaultNla::new(3, 0x67u64.to_ne_bytes().to_vec()))
        );
    }

    #[test]
    fn an_error_answer_is_its_errno() {
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::ENODEV);
        let buf = datagram(vec![NetlinkPayload::Error(error)]);
        let err = read::<Netdev>(&buf, false, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        // A truncated answer is an error rather than a panic.
        assert!(read::<Netdev>(&buf[..8], false, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_dumps_messages_are_read_up_to_its_end() {
        let napi = |ifindex| answer(Netdev::of(Command::NapiGet, ifindex));
        let mut read_back = Vec::new();
        let first = datagram(vec![napi(7), napi(8)]);
        assert!(!read(&first, true, &mut read_back).unwrap(), "no end yet");
        let last = datagram(vec![NetlinkPayload::Done(DoneMessage::default())]);
        assert!(read(&last, true, &mut read_back).unwrap());
        assert_eq!(
            read_back.iter().map(Netdev::ifindex).collect::<Vec<_>>(),
            vec![Some(7), Some(8)]
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

//! The benchmarks' traffic source and counter: a frame generator driven by
//! BPF_PROG_TEST_RUN in live-frames mode, and a sink that counts what
//! arrives on an interface (see balancer-ebpf/src/gen.rs and sink.rs).
//! These kernels have no pktgen module; this puts millions of frames per
//! second on a veth from one CPU.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use balancer_common::{
    loadgen::{
        CHECK_TCP, CHECK_UDP, GEN_CURSOR, GEN_PROGRAM, GEN_TEMPLATE, GenCursor, SINK_CONFIG,
        SINK_COUNTS, SINK_PROGRAM, SinkConfig, SinkSlot, TEMPLATE_LEN, Template,
    },
    proto,
    stats::PacketCount,
};

use super::{DatapathError, TestOutput, attach_native, load_configured, test_run, xdp_program};

static GEN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-gen"));
static SINK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-sink"));

/// Most frames the kernel runs between two flushes in live-frames mode
/// (`TEST_XDP_MAX_BATCH`).
pub const MAX_BATCH: u32 = 256;

/// The `bpf(2)` command that runs a program on a test input.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Test-run flag: run the program on real frames and carry out its XDP_TX
/// and XDP_REDIRECT verdicts.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The loaded generator, with the frame it sends.
pub struct Generator {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

/// What one [`Generator::send`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Frames the program ran on, each sent out with XDP_TX. Frames the
    /// receiving veth's ring had no room for are dropped on the way and
    /// counted nowhere here.
    pub frames: u32,
    /// Wall-clock time of the call.
    pub elapsed: Duration,
    /// Mean time per frame the kernel measured (program, redirect and
    /// flushes).
    pub per_frame: Duration,
}

impl Sent {
    /// Frames per second over the wall-clock time of the call.
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Generator {
    /// Loads the generator for `frame`, a whole Ethernet II frame carrying
    /// TCP or UDP over IPv4 or IPv6 (no VLAN tag, no IPv6 extension
    /// header) with valid checksums. Every frame sent is this one with the
    /// source port cycling through `flows` values from the frame's own, and
    /// the transport checksum adjusted to match.
    pub fn load(frame: &[u8], flows: u32) -> Result<Generator, DatapathError> {
        let template = template(frame, flows)?;
        let ebpf = load_configured(GEN_OBJECT, GEN_TEMPLATE, template, GEN_PROGRAM)?;
        Ok(Generator {
            ebpf,
            frame: frame.to_vec(),
        })
    }

    /// Sends `frames` frames out of interface `ifindex` (BPF_PROG_TEST_RUN
    /// with BPF_F_TEST_XDP_LIVE_FRAMES; XDP_TX becomes a redirect out of
    /// the ingress interface), flushing every `batch_size` frames (at most
    /// [`MAX_BATCH`]; 0: the kernel's default, 64). Blocks until all are
    /// sent, on the calling CPU.
    ///
    /// The kernel resolves `ifindex` in the network namespace of the
    /// calling thread: call it from inside the interface's namespace. The
    /// peer of a veth only takes the frames in if it runs an XDP program,
    /// and that program runs on the calling CPU too (in the softirq each
    /// batch's flush raises), so the time measured covers both sides.
    pub fn send(
        &mut self,
        ifindex: u32,
        frames: u32,
        batch_size: u32,
    ) -> Result<Sent, DatapathError> {
        if batch_size > MAX_BATCH {
            return Err(DatapathError::OutOfRange {
                what: "batch size",
                value: batch_size,
                max: MAX_BATCH,
            });
        }
        if frames == 0 {
            return Ok(Sent {
                frames,
                elapsed: Duration::ZERO,
                per_frame: Duration::ZERO,
            });
        }
        let prog = xdp_program(&mut self.ebpf, GEN_PROGRAM)?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program {
                action: "get the file descriptor of",
                source: Box::new(source),
            })?
            .as_fd()
            .as_raw_fd();
        let len = self.frame.len() as u32;
        let ctx = XdpMd {
            data: 0,
            data_end: len,
            data_meta: 0,
            ingress_ifindex: ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: len,
            data_in: self.frame.as_ptr() as u64,
            repeat: frames,
            ctx_size_in: size_of::<XdpMd>() as u32,
            ctx_in: &ctx as *const XdpMd as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size,
            ..TestRunAttr::default()
        };
        let started = Instant::now();
        // SAFETY: `attr` is the `test` member of `union bpf_attr` with the
        // kernel's layout, and the buffers it points to (`self.frame`,
        // `ctx`) outlive the call; the kernel writes only into `attr`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                size_of::<TestRunAttr>(),
            )
        };
        let elapsed = started.elapsed();
        if ret < 0 {
            return Err(DatapathError::TestRun {
                program: GEN_PROGRAM,
                ifindex,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Sent {
            frames,
            elapsed,
            per_frame: Duration::from_nanos(attr.duration.into()),
        })
    }

    /// Runs the generator once on `packet` through a plain
    /// BPF_PROG_TEST_RUN (nothing is sent) and returns the frame it made:
    /// how its output is checked byte for byte. `packet` stands for a
    /// recycled page, whose headers may hold anything; it should be as long
    /// as the generator's frame.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<TestOutput, DatapathError> {
        test_run(xdp_program(&mut self.ebpf, GEN_PROGRAM)?, packet, 0)
    }

    /// Frames the program generated since it was loaded, summed over CPUs.
    pub fn generated(&self) -> Result<u64, DatapathError> {
        let map = self
            .ebpf
            .map(GEN_CURSOR)
            .ok_or(DatapathError::MissingMap { name: GEN_CURSOR })?;
        let map: PerCpuArray<&MapData, GenCursor> =
            PerCpuArray::try_from(map).map_err(DatapathError::map("open", GEN_CURSOR))?;
        let cursors = map
            .get(&0, 0)
            .map_err(DatapathError::map("read", GEN_CURSOR))?;
        Ok(cursors.iter().map(|c| c.frames).sum())
    }
}

/// The sink program attached to one interface. Dropping it detaches it.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Attaches the sink to `interface` in native mode: frames to TCP or
    /// UDP destination port `dst_port` are counted and dropped, every other
    /// frame passes (`None`: every frame is counted and dropped). The name
    /// is resolved in the calling thread's network namespace.
    pub fn attach(interface: &str, dst_port: Option<u16>) -> Result<Sink, DatapathError> {
        let config = SinkConfig {
            dst_port: dst_port.unwrap_or(0).to_be(),
            ..SinkConfig::default()
        };
        let mut ebpf = load_configured(SINK_OBJECT, SINK_CONFIG, config, SINK_PROGRAM)?;
        attach_native(&mut ebpf, SINK_PROGRAM, interface)?;
        Ok(Sink { ebpf })
    }

    /// Frames counted and dropped, summed over CPUs.
    pub fn count(&self) -> Result<PacketCount, DatapathError> {
        self.slot(SinkSlot::MATCHED)
    }

    /// Frames that did not match and passed, summed over CPUs.
    pub fn passed(&self) -> Result<PacketCount, DatapathError> {
        self.slot(SinkSlot::PASSED)
    }

    fn slot(&self, slot: SinkSlot) -> Result<PacketCount, DatapathError> {
        let map = self
            .ebpf
            .map(SINK_COUNTS)
            .ok_or(DatapathError::MissingMap { name: SINK_COUNTS })?;
        let map: PerCpuArray<&MapData, PacketCount> =
            PerCpuArray::try_from(map).map_err(DatapathError::map("open", SINK_COUNTS))?;
        let counts = map
            .get(&slot.0, 0)
            .map_err(DatapathError::map("read", SINK_COUNTS))?;
        Ok(counts
            .iter()
            .fold(PacketCount::default(), |sum, c| sum.merged(*c)))
    }
}

/// `struct xdp_md`, the context a test run starts from.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The `test` member of `union bpf_attr` (BPF_PROG_TEST_RUN). aya 0.14's
/// `TestRunOptions` has no flags field, so the generator issues the call
/// itself.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<TestRunAttr>() == 80);
const _: () = assert!(size_of::<XdpMd>() == 24);

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_LEN: usize = 14;
const IPV6_LEN: usize = 40;

/// The generator's template for `frame`: where its source port and
/// transport checksum lie, and its headers. Pure, so the checks are tested
/// without the kernel.
fn template(frame: &[u8], flows: u32) -> Result<Template, DatapathError> {
    let bad = |reason: String| DatapathError::Frame { reason };
    let byte = |at: usize| -> Result<u8, DatapathError> {
        frame
            .get(at)
            .copied()
            .ok_or_else(|| bad(format!("{} bytes end inside its headers", frame.len())))
    };
    let word = |at: usize| -> Result<u16, DatapathError> {
        Ok(u16::from_be_bytes([byte(at)?, byte(at + 1)?]))
    };
    let (l4, protocol, v6) = match word(12)? {
        ETHERTYPE_IPV4 => {
            let vihl = byte(ETH_LEN)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(bad(format!(
                    "invalid IPv4 version and length byte {vihl:#04x}"
                )));
            }
            if word(ETH_LEN + 6)? & 0x3fff != 0 {
                return Err(bad("an IPv4 fragment".to_owned()));
            }
            (ETH_LEN + ihl, byte(ETH_LEN + 9)?, false)
        }
        ETHERTYPE_IPV6 => (ETH_LEN + IPV6_LEN, byte(ETH_LEN + 6)?, true),
        other => {
            return Err(bad(format!(
                "EtherType {other:#06x}: only IPv4 and IPv6 without a VLAN tag"
            )));
        }
    };
    let (headers, check_offset, check_kind) = match protocol {
        proto::TCP => {
            let data_offset = usize::from(byte(l4 + 12)? >> 4) * 4;
            if data_offset < 20 {
                return Err(bad(format!("TCP data offset of {data_offset} bytes")));
            }
            (l4 + data_offset, l4 + 16, CHECK_TCP)
        }
        // UDP over IPv4 may go without a checksum: it then stays 0.
        proto::UDP if !v6 && word(l4 + 6)? == 0 => (l4 + 8, 0, CHECK_UDP),
        proto::UDP => (l4 + 8, l4 + 6, CHECK_UDP),
        other => {
            return Err(bad(format!(
                "IP protocol {other}: only TCP and UDP (and no IPv6 extension header)"
            )));
        }
    };
    if headers > frame.len() {
        return Err(bad(format!(
            "{} bytes end inside its {headers} bytes of headers",
            frame.len()
        )));
    }
    if headers > TEMPLATE_LEN {
        return Err(bad(format!(
            "{headers} bytes of headers, the generator rewrites at most {TEMPLATE_LEN}"
        )));
    }
    let base = word(l4)?;
    if flows == 0 || u32::from(base) + flows - 1 > u32::from(u16::MAX) {
        return Err(DatapathError::Flows { flows, base });
    }
    let mut bytes = [0u8; TEMPLATE_LEN];
    bytes[..headers].copy_from_slice(&frame[..headers]);
    Ok(Template {
        bytes,
        len: headers as u32,
        flows,
        port_offset: l4 as u16,
        check_offset: check_offset as u16,
        base_port: base.to_be(),
        check_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet II frame with an IPv4 or IPv6 header (checksums not
    /// computed: `template` does not check them) and a transport header of
    /// `l4_len` bytes starting with source port `port`.
    fn frame(v6: bool, protocol: u8, l4: &[u8], payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if v6 {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = [0u8; IPV6_LEN];
            ip[0] = 0x60;
            ip[6] = protocol;
            f.extend_from_slice(&ip);
        } else {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[9] = protocol;
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(l4);
        f.resize(f.len() + payload, 0xab);
        f
    }

    fn udp(port: u16, check: u16) -> [u8; 8] {
        let [p0, p1] = port.to_be_bytes();
        let [c0, c1] = check.to_be_bytes();
        [p0, p1, 0, 53, 0, 8, c0, c1]
    }

    fn tcp(port: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..2].copy_from_slice(&port.to_be_bytes());
        h[12] = 5 << 4;
        h
    }

    #[test]
    fn udp_over_ipv4_with_a_checksum_is_adjusted() {
        let t = template(&frame(false, proto::UDP, &udp(1000, 0x1234), 18), 8).unwrap();
        assert_eq!(
            (t.len, t.port_offset, t.check_offset, t.check_kind),
            (42, 34, 40, CHECK_UDP)
        );
        assert_eq!(u16::from_be(t.base_port), 1000);
        assert_eq!(t.flows, 8);
        assert!(t.bytes[42..].iter().all(|b| *b == 0));
    }

    #[test]
    fn udp_over_ipv4_without_a_checksum_keeps_it_zero() {
        let t = template(&frame(false, proto::UDP, &udp(1000, 0), 18), 8).unwrap();
        assert_eq!(t.check_offset, 0);
    }

    #[test]
    fn ipv6_udp_is_always_adjusted_and_tcp_headers_are_found() {
        let t = template(&frame(true, proto::UDP, &udp(5, 0), 0), 1).unwrap();
        assert_eq!((t.len, t.port_offset, t.check_offset), (62, 54, 60));
        let t = template(&frame(true, proto::TCP, &tcp(40000), 0), 100).unwrap();
        assert_eq!(
            (t.len, t.port_offset, t.check_offset, t.check_kind),
            (74, 54, 70, CHECK_TCP)
        );
    }

    #[test]
    fn unusable_frames_are_refused_with_a_reason() {
        let too_short = &frame(false, proto::UDP, &udp(1, 1), 0)[..40];
        let mut options = tcp(1);
        options[12] = 8 << 4;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (too_short.to_vec(), "end inside"),
            (frame(false, proto::ICMP, &[0; 8], 0), "protocol 1"),
            (frame(true, proto::TCP, &options, 40), "at most 80"),
            (vec![0; 60], "EtherType 0x0000"),
        ];
        for (f, reason) in cases {
            let err = template(&f, 1).unwrap_err().to_string();
            assert!(err.contains(reason), "{err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn flows_must_fit_the_port_range() {
        let f = frame(false, proto::UDP, &udp(65530, 1), 0);
        assert!(template(&f, 6).is_ok());
        assert!(matches!(
            template(&f, 7),
            Err(DatapathError::Flows {
                flows: 7,
                base: 65530
            })
        ));
        assert!(matches!(
            template(&f, 0),
            Err(DatapathError::Flows { flows: 0, .. })
        ));
    }
}

//! The load generator (see ebpf/src/gen.rs): driven by BPF_PROG_TEST_RUN
//! in live-frames mode, it puts millions of frames per second on a veth
//! from one CPU, since these kernels have no pktgen module.

use std::{
    io,
    time::{Duration, Instant},
};

use balancer::datapath::TestOutput;
use balancer_bench_common::{GEN_CURSOR, GEN_PROGRAM, GEN_TEMPLATE, GenCursor};

use crate::{BenchError, program::Program, template::template};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-gen"));

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
    program: Program,
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
    pub fn load(frame: &[u8], flows: u32) -> Result<Generator, BenchError> {
        let template = template(frame, flows)?;
        let program = Program::load(OBJECT, GEN_PROGRAM, GEN_TEMPLATE, template)?;
        Ok(Generator {
            program,
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
    pub fn send(&mut self, ifindex: u32, frames: u32, batch_size: u32) -> Result<Sent, BenchError> {
        if batch_size > MAX_BATCH {
            return Err(BenchError::BatchSize {
                size: batch_size,
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
        let fd = self.program.raw_fd()?;
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
        let error = (ret < 0).then(io::Error::last_os_error);
        let elapsed = started.elapsed();
        if let Some(error) = error {
            return Err(BenchError::Failed {
                program: GEN_PROGRAM,
                action: format!("run in live-frames mode out of interface {ifindex}"),
                source: Box::new(error),
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
    pub fn test_run(&mut self, packet: &[u8]) -> Result<TestOutput, BenchError> {
        self.program.test_run(packet)
    }

    /// Frames the program generated since it was loaded, summed over CPUs.
    pub fn generated(&self) -> Result<u64, BenchError> {
        let cursors = self.program.per_cpu::<GenCursor>(GEN_CURSOR, 0)?;
        Ok(cursors.iter().map(|c| c.frames).sum())
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

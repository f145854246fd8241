//! Datapath tests as data, as Katran's `testing/fixtures` do with
//! `PacketAttributes`: a [`Case`] is a named frame with the verdict, the
//! frame out and the counter changes it must produce, and [`run`] runs a
//! table of cases in order against a [`Fixture`] and names every case that
//! failed, with what went wrong.
//!
//! The backend a frame must reach is given as a question to the fixture's
//! oracle ([`Out::Flow`]) and answered when the case
//! runs, so a case placed after a change of a ring expects the new ring's
//! pick.

use anyhow::{Context as _, Result, ensure};
use balancer::datapath::action;
use balancer_common::{
    flow::FlowKey,
    stats::{Event, Stat},
};

use crate::{
    fixture::{Fixture, backend_mac},
    packet::{LB_MAC, Packet, with_macs},
    privilege,
};

/// One frame through the program, and all it must do.
#[derive(Clone, Debug)]
pub struct Case {
    /// What the failure report calls the case.
    pub name: String,
    pub frame: Vec<u8>,
    /// Index of the interface the frame arrives on (0: the kernel's
    /// choice for BPF_PROG_TEST_RUN, loopback).
    pub ingress: u32,
    /// The XDP action (`balancer::datapath::action`).
    pub verdict: u32,
    pub out: Out,
    /// The exact frame out, when the test built it (a rewritten packet,
    /// its checksums computed from scratch); `out` then only names the
    /// backend whose counters `counts` read.
    pub exact: Option<Vec<u8>>,
    /// Counters and by how much each must grow; counters not named are
    /// not checked.
    pub counts: Vec<(Counter, u64)>,
}

impl Case {
    /// A case on the default interface: `frame` must get `verdict`, leave
    /// as `out` says and grow each counter of `counts` by its amount.
    pub fn new(
        name: impl Into<String>,
        frame: Vec<u8>,
        verdict: u32,
        out: Out,
        counts: &[(Counter, u64)],
    ) -> Case {
        Case {
            name: name.into(),
            frame,
            ingress: 0,
            verdict,
            out,
            exact: None,
            counts: counts.to_vec(),
        }
    }

    /// A case whose frame must leave as exactly `exact`, for backend
    /// `backend`'s counters (None: no backend's).
    pub fn exact(
        name: impl Into<String>,
        frame: Vec<u8>,
        verdict: u32,
        exact: Vec<u8>,
        backend: Option<u32>,
        counts: &[(Counter, u64)],
    ) -> Case {
        Case {
            exact: Some(exact),
            ..Case::new(
                name,
                frame,
                verdict,
                backend.map_or(Out::Same, Out::Backend),
                counts,
            )
        }
    }

    /// `packet` forwarded (XDP_TX) to the backend the ring of VIP `vip`
    /// gives its flow, counters unchecked.
    pub fn forwarded(name: impl Into<String>, packet: &Packet, vip: u32) -> Case {
        Case::new(
            name,
            packet.build(),
            action::TX,
            Out::flow(vip, packet),
            &[],
        )
    }

    /// `packet` dropped, as it came, and counted once under `reason`.
    pub fn dropped(name: impl Into<String>, packet: &Packet, reason: Stat) -> Case {
        Case::new(
            name,
            packet.build(),
            action::DROP,
            Out::Same,
            &[(Counter::Stat(reason), 1)],
        )
    }

    /// The same case with the frame arriving on interface `ingress`.
    pub fn on(mut self, ingress: u32) -> Case {
        self.ingress = ingress;
        self
    }
}

/// The frame the program must leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// The frame as it came in.
    Same,
    /// The frame with its MACs rewritten for backend `id`: its MAC as
    /// destination, the balancer's as source.
    Backend(u32),
    /// Rewritten for the backend the ring of VIP `vip` gives a new flow
    /// `key` (see [`Fixture::expected_backend`]).
    Flow { vip: u32, key: FlowKey },
}

impl Out {
    /// [`Out::Flow`] for the flow of `packet`.
    pub fn flow(vip: u32, packet: &Packet) -> Out {
        Out::Flow {
            vip,
            key: packet.key(),
        }
    }

    /// The backend the frame must reach, as the fixture's oracle says now.
    pub fn backend(&self, f: &Fixture) -> Option<u32> {
        match *self {
            Out::Same => None,
            Out::Backend(id) => Some(id),
            Out::Flow { vip, key } => Some(f.expected_backend(vip, &key)),
        }
    }
}

/// A counter a case may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A verdict reason.
    Stat(Stat),
    /// Two verdict reasons together, for frames that may end under either.
    Stats(Stat, Stat),
    /// An event.
    Event(Event),
    /// Packets of VIP `index`.
    VipPackets(u32),
    /// Bytes of VIP `index`.
    VipBytes(u32),
    /// New flows of VIP `index`.
    VipNewFlows(u32),
    /// Packets of the backend the case's frame goes to.
    BackendPackets,
    /// Bytes of that backend.
    BackendBytes,
    /// New flows of that backend.
    BackendNewFlows,
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Counter::Stat(s) => write!(f, "{}", s.name()),
            Counter::Stats(a, b) => write!(f, "{} + {}", a.name(), b.name()),
            Counter::Event(e) => write!(f, "event {}", e.name()),
            Counter::VipPackets(i) => write!(f, "packets of VIP {i}"),
            Counter::VipBytes(i) => write!(f, "bytes of VIP {i}"),
            Counter::VipNewFlows(i) => write!(f, "new flows of VIP {i}"),
            Counter::BackendPackets => f.write_str("packets of the backend"),
            Counter::BackendBytes => f.write_str("bytes of the backend"),
            Counter::BackendNewFlows => f.write_str("new flows of the backend"),
        }
    }
}

/// Runs `cases` in order against `f` and returns the frames the program
/// left. Fails if any case failed, naming each with what went wrong (and
/// at once if a test run or a counter read fails).
pub fn run(f: &mut Fixture, cases: &[Case]) -> Result<Vec<Vec<u8>>> {
    let mut outputs = Vec::with_capacity(cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let (output, problems) = run_one(f, case).with_context(|| format!("case {}", case.name))?;
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
        outputs.push(output);
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
    Ok(outputs)
}

/// Runs one case: the frame the program left, and every way it differs
/// from what the case expects.
fn run_one(f: &mut Fixture, case: &Case) -> Result<(Vec<u8>, Vec<String>)> {
    let backend = case.out.backend(f);
    let before = read(f, &case.counts, backend)?;
    let got = f.datapath.test_run(&case.frame, case.ingress)?;
    let after = read(f, &case.counts, backend)?;
    let mut problems = Vec::new();
    if got.verdict != case.verdict {
        problems.push(format!(
            "verdict {} instead of {}",
            verdict_name(got.verdict),
            verdict_name(case.verdict)
        ));
    }
    let want = match (&case.exact, backend) {
        (Some(frame), _) => frame.clone(),
        (None, Some(id)) => with_macs(&case.frame, backend_mac(id), LB_MAC),
        (None, None) => case.frame.clone(),
    };
    if got.packet != want {
        problems.push(format!(
            "output bytes differ\n     got: {:02x?}\n    want: {want:02x?}",
            got.packet
        ));
    }
    for ((counter, delta), (was, is)) in case.counts.iter().zip(before.iter().zip(&after)) {
        let grew = is.wrapping_sub(*was);
        if grew != *delta {
            problems.push(format!("{counter} grew by {grew}, not {delta}"));
        }
    }
    Ok((got.packet, problems))
}

/// A whole test: runs `cases` against the fixture `fixture` builds, as
/// privileged test `test` (see [`privilege::run`]).
pub fn check(test: &str, fixture: impl FnOnce() -> Result<Fixture>, cases: &[Case]) {
    privilege::run(test, || run(&mut fixture()?, cases).map(drop));
}

/// The values of `counts`' counters, the backend ones of `backend`.
fn read(f: &Fixture, counts: &[(Counter, u64)], backend: Option<u32>) -> Result<Vec<u64>> {
    let datapath = &f.datapath;
    let backend_counters = || -> Result<_> {
        let id = backend.ok_or_else(|| {
            anyhow::anyhow!("a case counts the backend of a frame that goes to none")
        })?;
        Ok(datapath.backend_counters(id)?)
    };
    counts
        .iter()
        .map(|(counter, _)| {
            Ok(match *counter {
                Counter::Stat(s) => datapath.reasons()?.stat(s).packets,
                Counter::Stats(a, b) => {
                    let reasons = datapath.reasons()?;
                    reasons.stat(a).packets + reasons.stat(b).packets
                }
                Counter::Event(e) => datapath.reasons()?.event(e).packets,
                Counter::VipPackets(i) => datapath.vip_counters(i)?.packets,
                Counter::VipBytes(i) => datapath.vip_counters(i)?.bytes,
                Counter::VipNewFlows(i) => datapath.vip_counters(i)?.new_flows,
                Counter::BackendPackets => backend_counters()?.packets,
                Counter::BackendBytes => backend_counters()?.bytes,
                Counter::BackendNewFlows => backend_counters()?.new_flows,
            })
        })
        .collect()
}

/// An XDP action by its name.
fn verdict_name(verdict: u32) -> String {
    match verdict {
        action::ABORTED => "XDP_ABORTED".into(),
        action::DROP => "XDP_DROP".into(),
        action::PASS => "XDP_PASS".into(),
        action::TX => "XDP_TX".into(),
        action::REDIRECT => "XDP_REDIRECT".into(),
        other => format!("{other}"),
    }
}

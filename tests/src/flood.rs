//! Floods from a client's link: the benchmarks' frame generator
//! (BPF_PROG_TEST_RUN in live-frames mode, bounded in frames) sending one
//! frame's flows, paced so that every frame reaches the balancer.

use std::{thread, time::Duration};

use anyhow::Result;
use balancer_bench::Generator;

use crate::{Netns, fixture::stay_on_one_cpu};

/// Frames sent at once: the rings of the veths on the way (the switch's,
/// the balancer's) hold a few hundred frames, so larger bursts lose
/// frames before the balancer sees them.
const CHUNK: u32 = 1_000;

/// Sends `frames` frames of `generator` from `client`'s `eth0` in chunks
/// of [`CHUNK`], with a pause between them for the rings on the way to
/// drain, so that every 5-tuple of the flood reaches the balancer; prints
/// the rate under `label`. The sending thread stays on one CPU: the
/// generator keeps its place in the flow cycle per CPU, and a thread that
/// moved between chunks would skip part of the cycle and send the rest
/// twice.
pub fn send(client: &Netns, generator: &mut Generator, frames: u32, label: &str) -> Result<()> {
    let started = std::time::Instant::now();
    client.run(|| -> Result<()> {
        stay_on_one_cpu()?;
        let ifindex = nix::net::if_::if_nametoindex("eth0")?;
        let mut left = frames;
        while left > 0 {
            let n = left.min(CHUNK);
            generator.send(ifindex, n, 16)?;
            left -= n;
            thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })??;
    let elapsed = started.elapsed();
    println!(
        "{label}: {frames} frames in {elapsed:?} ({:.0} frames/s)",
        f64::from(frames) / elapsed.as_secs_f64()
    );
    Ok(())
}

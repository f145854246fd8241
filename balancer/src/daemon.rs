//! `balancer run`: the long-running daemon.

use anyhow::{Context as _, Result};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::RunArgs,
    datapath::{Datapath, DecisionLog, LoadOptions},
};

/// Loads and attaches the XDP program, logs its counters every
/// `stats_interval`, and detaches cleanly on SIGINT or SIGTERM.
pub fn run(args: &RunArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: &RunArgs) -> Result<()> {
    let options = LoadOptions {
        decision_log: args.datapath_log,
        ..LoadOptions::default()
    };
    let mut datapath = Datapath::load_with(options).context("failed to load the XDP program")?;
    if let Some(log) = datapath.take_logger() {
        tracing::warn!(
            "datapath decision logging is on: every packet is logged, which costs speed"
        );
        tokio::spawn(forward_decision_log(log)?);
    }
    for interface in &args.interfaces {
        let mode = datapath
            .attach(interface, args.xdp_mode)
            .with_context(|| format!("failed to start on {interface}"))?;
        tracing::info!(interface = interface.as_str(), %mode, "attached XDP program");
    }
    let mut sigterm = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    let mut ticker = tokio::time::interval(args.stats_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => log_stats(&datapath)?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    log_stats(&datapath)?;
    let interfaces: Vec<String> = datapath.attachments().map(|(i, _)| i.to_owned()).collect();
    for interface in interfaces {
        datapath
            .detach(&interface)
            .with_context(|| format!("failed to detach from {interface}"))?;
        tracing::info!(interface = interface.as_str(), "detached XDP program");
    }
    Ok(())
}

fn log_stats(datapath: &Datapath) -> Result<()> {
    let reasons = datapath.reasons().context("failed to read the counters")?;
    let summary: Vec<String> = reasons
        .named()
        .filter(|(_, count)| count.packets > 0)
        .map(|(name, count)| format!("{name}={}/{}B", count.packets, count.bytes))
        .collect();
    tracing::info!(counters = summary.join(" "), "packet counters");
    Ok(())
}

/// Copies the debug variant's log records into the daemon's log whenever
/// the kernel has some.
fn forward_decision_log(log: DecisionLog) -> Result<impl std::future::Future<Output = ()>> {
    // SAFETY: the descriptor is the logger's ring buffer map, which it owns
    // and keeps open, unchanged, until the AsyncFd (which owns the logger)
    // is dropped.
    let mut log = unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot watch the datapath's decision log: {err}"))?;
    Ok(async move {
        loop {
            let Ok(mut ready) = log.readable_mut().await else {
                tracing::error!("the datapath's decision log stopped");
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    })
}

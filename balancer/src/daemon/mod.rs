//! `balancer run`: the long-running daemon.
//!
//! It loads the configuration, lays it out ([`crate::plan`]), resolves every
//! backend's MACs from the kernel's neighbour table, writes the datapath's
//! maps through [`Datapath`], attaches the program, and then keeps the maps
//! in line: backends whose neighbour changes or resolves are rewritten, and
//! a VIP's ring is rebuilt whenever its set of usable backends changes. It
//! serves the control socket and the metrics endpoint, and reloads its
//! configuration on SIGHUP or a `reload` request.

mod announcer;
mod answer;
mod backoff;
mod checks;
mod connections;
mod desired;
mod effective;
mod events;
mod exhaustion;
mod fingerprint;
mod gates;
mod limits;
mod lists;
pub mod lock;
pub use announcer::withdraw_all;
mod observed;
mod pacing;
mod published;
mod reconcile;
mod resolve;
mod scan;
mod sharing;
mod snapshot;
mod start;
mod state;
mod view;

use std::{path::Path, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::{self, Config},
    control,
    datapath::{Datapath, DecisionLog, LoadOptions, XdpMode},
    health::Report,
    metrics,
    neighbour::{Changes, Neighbours},
};

use state::State;

/// How often backends' neighbours are read again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);
/// After a change that adds a backend not resolved yet, its neighbour is
/// read again this often (the change itself provoked resolution), so the
/// backend takes traffic within milliseconds of resolving instead of at the
/// next RESOLVE_INTERVAL tick...
const QUICK_RESOLVE_INTERVAL: Duration = Duration::from_millis(10);
/// ...for at most this long; an unreachable backend is left to the
/// periodic reads.
const QUICK_RESOLVE_FOR: Duration = Duration::from_secs(2);
/// After the kernel announces a changed link, neighbour or route, the
/// paths are read again this much later: the announcements of one change
/// (a route and its neighbour, both families) come in a burst, read once...
const CHANGE_RESOLVE_DELAY: Duration = Duration::from_millis(10);
/// ...and at most this often, so that a host whose tables churn (a router
/// taking a full BGP table) does not keep the daemon reading.
const CHANGE_RESOLVE_GAP: Duration = Duration::from_millis(50);

/// What `balancer run` is asked for beyond the configuration file: the
/// command line's choices, built by the CLI from its arguments. Each one
/// that is given replaces its key of the configuration.
#[derive(Clone, Debug)]
pub struct Options {
    /// The configuration file; without it, the default path if that
    /// exists, else no VIPs.
    pub config: Option<PathBuf>,
    /// Replaces `[datapath] interfaces` unless empty.
    pub interfaces: Vec<String>,
    /// Replaces `[datapath] xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
    /// Replaces `[daemon] pin_path`.
    pub pin_path: Option<PathBuf>,
    /// Replaces `[daemon] control_socket`, also in reloaded files.
    pub control_socket: Option<PathBuf>,
    /// How often the packet counters are logged.
    pub stats_interval: Duration,
    /// How often the connection table is scanned (idle entries removed,
    /// connection counts corrected, shares of new flows measured).
    pub reconcile_interval: Duration,
    /// Load the debug variant of the program, which logs every decision.
    pub decision_log: bool,
}

/// Loads everything, serves until SIGINT or SIGTERM, then detaches.
pub fn run(options: Options) -> Result<()> {
    let (mut config, file) = load_config(options.config.as_deref())?;
    limits::raise_open_files(&config);
    if let Some(socket) = &options.control_socket {
        config.daemon.control_socket.clone_from(socket);
    }
    let mut interfaces: Vec<String> = config
        .datapath
        .interfaces
        .iter()
        .map(|i| i.get_ref().clone())
        .collect();
    if !options.interfaces.is_empty() {
        interfaces.clone_from(&options.interfaces);
    }
    if interfaces.is_empty() {
        bail!(
            "no interface to attach to: set [datapath] interfaces in the configuration or pass --interface"
        );
    }
    // Before anything is loaded or pinned: a wrong name changes nothing.
    for interface in &interfaces {
        if nix::net::if_::if_nametoindex(interface.as_str()).is_err() {
            bail!("interface {interface} does not exist; nothing was changed");
        }
    }
    let mode = options.xdp_mode.unwrap_or(config.datapath.xdp_mode);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(serve(&options, config, file, &interfaces, mode))
}

/// The configuration named by `--config`, or the default file if it
/// exists, or an empty configuration; with the file's path.
fn load_config(path: Option<&Path>) -> Result<(Config, Option<(PathBuf, String)>)> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None if Path::new(config::DEFAULT_PATH).exists() => config::DEFAULT_PATH.into(),
        None => {
            tracing::warn!(
                path = config::DEFAULT_PATH,
                "no configuration file: running with no VIPs"
            );
            return Ok((Config::default(), None));
        }
    };
    let loaded = config::read(&path).and_then(|text| {
        let config = config::parse_logging_warnings(&text, &path.display().to_string())?;
        Ok((config, text))
    });
    let (config, text) = loaded.map_err(|errors| {
        for line in errors.to_string().lines() {
            tracing::error!("{line}");
        }
        anyhow::anyhow!(
            "{} is not a valid configuration; nothing was changed",
            path.display()
        )
    })?;
    tracing::info!(path = %path.display(), vips = config.vips.len(), "configuration loaded");
    Ok((config, Some((path, text))))
}

async fn serve(
    options: &Options,
    config: Config,
    file: Option<(PathBuf, String)>,
    interfaces: &[String],
    mode: XdpMode,
) -> Result<()> {
    let pin_dir = options
        .pin_path
        .clone()
        .unwrap_or_else(|| config.daemon.pin_path.clone());
    let noted = start::Noted::before_lock(&pin_dir);
    // Before anything is loaded, pinned, attached or listened on.
    let lock = lock::take(&pin_dir, &config.daemon.control_socket)?;
    // Until the start completes, a failure removes what it pinned.
    let undo = noted.arm(&lock)?;
    let socket_override = options.control_socket.clone();
    // A port in use (node_exporter's 9100, say) costs the metrics, not
    // the balancer: health checks and changes matter more than a scrape.
    let (metrics_listener, metrics_endpoint) = match config.daemon.metrics_listen {
        None => (None, "off".to_owned()),
        Some(addr) => match metrics::serve::bind(addr).await {
            Ok(listener) => (Some(listener), format!("http://{addr}/metrics")),
            Err(err) => {
                let error = format!("{err:#}");
                tracing::error!(error, "running without metrics");
                (None, format!("failed: {error}"))
            }
        },
    };
    let load = LoadOptions {
        flow_table_size: *config.datapath.flow_table_size.get_ref(),
        nat_table_size: *config.datapath.nat_table_size.get_ref(),
        decision_log: options.decision_log,
        pin_dir: Some(pin_dir.clone()),
    };
    let mut datapath = Datapath::load_with(load).context("failed to load the XDP program")?;
    if let Some(log) = datapath.take_logger() {
        tracing::warn!(
            "datapath decision logging is on: every packet is logged, which costs speed"
        );
        tokio::spawn(forward_decision_log(log)?);
    }
    let neighbours = Neighbours::connect().context("cannot open a netlink connection")?;
    let mut changes = match Changes::watch() {
        Ok(changes) => Some(changes),
        Err(err) => {
            tracing::warn!(
                error = %err,
                "cannot follow the kernel's link, neighbour and route changes: backends' paths are read every second only"
            );
            None
        }
    };
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel::<Report>(1024);
    let socket = config.daemon.control_socket.clone();
    let pinned = datapath.pinned().context("cannot read the pinned maps")?;
    let numbering = crate::plan::Numbering::recover(&config, &pinned.vips, &pinned.backends);
    let cpus = aya::util::online_cpus()
        .map_err(|(_, err)| err)
        .context("cannot read the online CPUs")?
        .len() as u32;
    let config_announce = config.announce.clone();
    let config_sync = config.sync.clone();
    let desired = desired::Desired::new(config, file, socket_override, numbering, cpus);
    let mut state = State::new(desired, datapath, neighbours, reports_tx, &pinned);
    state.metrics_endpoint = metrics_endpoint;
    state.interfaces = interfaces.to_vec();
    // Give the neighbours a moment to resolve (the first round provokes
    // it), so the first packets are not dropped as unresolved.
    for _ in 0..20 {
        state.resolve().await;
        if state.all_resolved() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    state.publish().context("cannot fill the datapath's maps")?;
    // Before the program is attached: a table that cannot be read stops
    // the start, which changes nothing.
    if let Some(announce) = &config_announce {
        state.announcer = Some(
            announcer::Announcer::start(announce)
                .await
                .context("cannot open the announcement table")?,
        );
    }
    // Before the program is attached too: a socket that cannot be bound
    // or a key that cannot be read stops the start.
    let mut flow_events = None;
    let mut sync_socket = None;
    if let Some(sync) = &config_sync {
        let (sharing, socket) = sharing::Sharing::start(sync, options.reconcile_interval)?;
        let events = state
            .datapath
            .take_flow_events()
            .context("cannot read the datapath's new flows")?;
        // SAFETY: the descriptor is the ring buffer's, which `events` owns
        // and keeps open, unchanged, until the AsyncFd is dropped.
        flow_events = Some(
            unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
                .map_err(|err| anyhow::anyhow!("cannot watch the datapath's new flows: {err}"))?,
        );
        state.sharing = Some(sharing);
        sync_socket = Some(socket);
    }
    for interface in interfaces {
        let mode = state
            .datapath
            .attach(interface, mode)
            .with_context(|| format!("failed to start on {interface}"))?;
        tracing::info!(interface = interface.as_str(), %mode, "attached XDP program");
    }

    let (requests_tx, mut requests) = tokio::sync::mpsc::channel::<control::Pending>(64);
    let control = control::listen(&socket, requests_tx)?;
    let (scrapes_tx, mut scrapes) = tokio::sync::mpsc::channel::<metrics::serve::Pending>(16);
    let metrics_server = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "metrics served at http://{addr}/metrics");
            Some(metrics::serve::serve(listener, scrapes_tx))
        }
        None => None,
    };
    tracing::info!(socket = %socket.display(), "control socket ready");
    let mut sighup = signal(SignalKind::hangup()).context("failed to watch SIGHUP")?;
    let mut sigterm = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    undo.disarm();
    let mut stats = tokio::time::interval(options.stats_interval);
    let mut resolve = tokio::time::interval(RESOLVE_INTERVAL);
    let mut reconcile = tokio::time::interval(options.reconcile_interval);
    stats.tick().await;
    resolve.tick().await;
    reconcile.tick().await;
    // Until when unresolved backends are read again quickly.
    let mut quick_until: Option<tokio::time::Instant> = None;
    // When the paths are read after the kernel announced a change, and
    // when they last were for one.
    let mut changed: Option<tokio::time::Instant> = None;
    let mut last_change_read = tokio::time::Instant::now();
    let mut datagram = vec![0u8; crate::sync::MAX_DATAGRAM + 1];
    loop {
        // After every event: one may change what is servable.
        state.announce().await;
        let announce_due = state.announcer.as_ref().map(announcer::Announcer::due);
        let flush_at = state.sharing.as_ref().and_then(|s| s.flush_at);
        let ramp_due = state.ramp_due;
        tokio::select! {
            _ = tokio::time::sleep_until(announce_due.map_or_else(tokio::time::Instant::now, Into::into)), if announce_due.is_some() => {}
            events = next_flow_events(&mut flow_events) => state.share(&events),
            Some((n, from)) = next_datagram(sync_socket.as_deref(), &mut datagram) => {
                state.receive_shared(&datagram[..n], from);
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                if let Some(sharing) = &mut state.sharing {
                    sharing.send(true);
                }
            }
            change = next_change(&mut changes) => {
                match change {
                    Some(()) => {
                        changed.get_or_insert_with(|| {
                            (tokio::time::Instant::now() + CHANGE_RESOLVE_DELAY)
                                .max(last_change_read + CHANGE_RESOLVE_GAP)
                        });
                    }
                    None => {
                        tracing::warn!("the kernel's change announcements stopped: backends' paths are read every second only");
                        changes = None;
                    }
                }
            }
            _ = tokio::time::sleep_until(changed.unwrap_or_else(tokio::time::Instant::now)), if changed.is_some() => {
                changed = None;
                last_change_read = tokio::time::Instant::now();
                state.resolve().await;
                state.publish_when_due();
            }
            _ = tokio::time::sleep_until(ramp_due.map_or_else(tokio::time::Instant::now, Into::into)), if ramp_due.is_some() => {
                // A slow start's next step.
                state.ramp_due = None;
                state.publish_when_due();
            }
            _ = stats.tick() => {
                if let Err(err) = log_stats(&state.datapath) {
                    tracing::warn!(error = format!("{err:#}"), "cannot log the packet counters");
                }
            }
            _ = resolve.tick() => {
                state.resolve().await;
                state.publish_when_due();
                state.watch_exhaustion();
            }
            _ = reconcile.tick() => {
                if let Err(err) = state.scan() {
                    tracing::warn!(error = format!("{err:#}"), "cannot reconcile the connection table");
                }
            }
            _ = tokio::time::sleep(QUICK_RESOLVE_INTERVAL), if quick_until.is_some() => {
                state.resolve().await;
                state.publish_when_due();
                if state.all_resolved() || quick_until.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    quick_until = None;
                }
            }
            Some(report) = reports.recv() => {
                let _ = state.health_report(&report);
            }
            Some(answer) = scrapes.recv() => {
                // A scrape that gave up waiting needs no snapshot.
                if answer.is_closed() {
                    continue;
                }
                let snapshot = state.view().metrics_snapshot().map_err(|e| format!("{e:#}"));
                if let Err(error) = &snapshot {
                    tracing::warn!(error, "cannot take a metrics snapshot");
                }
                let _ = answer.send(snapshot);
            }
            Some((request, answer)) = requests.recv() => {
                let response = state.answer(request).await;
                let _ = answer.send(response);
                if !state.all_resolved() {
                    quick_until = Some(tokio::time::Instant::now() + QUICK_RESOLVE_FOR);
                }
            }
            _ = sighup.recv() => {
                match state.reload(false).await {
                    Ok(done) => tracing::info!("reload on SIGHUP: {done}"),
                    Err(error @ reconcile::ApplyError::Refused(_)) => {
                        tracing::error!("reload on SIGHUP refused: {error}");
                    }
                    Err(error) => tracing::error!("reload on SIGHUP {error}"),
                }
                if !state.all_resolved() {
                    quick_until = Some(tokio::time::Instant::now() + QUICK_RESOLVE_FOR);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    state.stop_checks();
    control.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    let _ = std::fs::remove_file(&socket);
    if let Err(err) = log_stats(&state.datapath) {
        tracing::warn!(error = format!("{err:#}"), "cannot log the packet counters");
    }
    tracing::info!(
        pin_path = %pin_dir.display(),
        "leaving the datapath forwarding with its pinned state; a new `balancer run` adopts it, `balancer teardown` removes it"
    );
    if let Some(announcer) = &state.announcer {
        tracing::info!(
            table = announcer.table(),
            announced = announcer.announced().len(),
            "leaving the announcements as they are, since the datapath goes on forwarding; `balancer teardown` withdraws them"
        );
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

/// The next change the kernel announces, or never without a subscription.
async fn next_change(changes: &mut Option<Changes>) -> Option<()> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// The new flows the datapath tells of, once there are some; never
/// without `[sync]`.
async fn next_flow_events(
    events: &mut Option<AsyncFd<crate::datapath::FlowEvents>>,
) -> Vec<balancer_common::flow::FlowEvent> {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        let mut ready = match events.readable_mut().await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::error!(error = %err, "the datapath's new flows cannot be read: no flow is shared any more");
                return std::future::pending().await;
            }
        };
        let mut out = Vec::new();
        ready.get_inner_mut().drain(|event| out.push(event));
        ready.clear_ready();
        if !out.is_empty() {
            return out;
        }
    }
}

/// The next datagram of the peers' socket, with its sender; never
/// without `[sync]`.
async fn next_datagram(
    socket: Option<&tokio::net::UdpSocket>,
    buffer: &mut [u8],
) -> Option<(usize, std::net::SocketAddr)> {
    match socket {
        Some(socket) => match socket.recv_from(buffer).await {
            Ok(received) => Some(received),
            Err(err) => {
                // ICMP errors of earlier sends surface here: nothing lost.
                tracing::debug!(error = %err, "the peers' socket");
                None
            }
        },
        None => std::future::pending().await,
    }
}

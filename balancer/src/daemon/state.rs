//! The daemon's state in three parts, each owned here: what should be
//! ([`Desired`]), what has been seen ([`Observed`]) and what the maps hold
//! ([`Published`]). Every event (a reload, a CLI change, a health report,
//! a neighbour read) updates one part, then the reconciler brings the maps
//! in line: decide, then write, then commit.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use super::{
    announcer::Announcer,
    backoff::Backoff,
    checks::Checks,
    desired::Desired,
    events::{log_change, log_note},
    observed::Observed,
    pacing::Pacer,
    published::Published,
    reconcile::{self, ApplyError, Writes},
    resolve::{client_routes, resolve},
    sharing::Sharing,
    view::View,
};
use crate::{
    config::Config,
    datapath::{self, Datapath, Write, Writer as _},
    health::Report,
    neighbour::Neighbours,
    plan,
};

/// Waits of the periodic round after the maps' writes failed.
const RETRY: Backoff = Backoff::new(
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(60),
);

/// The daemon's state and the datapath it keeps in line.
pub(super) struct State {
    pub(super) datapath: Datapath,
    neighbours: Neighbours,
    checks: Checks,
    desired: Desired,
    observed: Observed,
    published: Published,
    /// When unresolved backends are read again.
    /// Backends' reads, by address and whether a gateway may reach them.
    pacer: Pacer<(std::net::IpAddr, bool)>,
    /// Why the maps are behind the desired state, since a set of writes
    /// failed part-way (None once they are in line again).
    maps_error: Option<String>,
    /// Sets of map writes that failed since the start.
    write_failures: u64,
    /// When the periodic round tries the maps again after a failure.
    retry: Backoff,
    /// When a slow start under way takes its next step, as of the last
    /// writes: the maps are brought in line then.
    pub(super) ramp_due: Option<std::time::Instant>,
    /// Where the metrics are served, "off", or why they are not.
    pub(super) metrics_endpoint: String,
    /// The announcements, with `[announce]`.
    pub(super) announcer: Option<Announcer>,
    /// The flows shared with peer hosts, with `[sync]`.
    pub(super) sharing: Option<Sharing>,
    /// The interfaces the program serves (attached or about to be): the
    /// routes toward clients of NAT replies go out of them.
    pub(super) interfaces: Vec<String>,
    /// NAT connections dropped for want of a source, as last told.
    exhaustion: super::exhaustion::Exhaustion,
}

impl State {
    /// Takes over `datapath`, whose pinned maps hold `pinned` (what a
    /// previous daemon published), and starts the checks of `desired`.
    /// Nothing is written until the first [`State::publish`].
    pub(super) fn new(
        desired: Desired,
        datapath: Datapath,
        neighbours: Neighbours,
        reports: mpsc::Sender<Report>,
        pinned: &datapath::Pinned,
    ) -> State {
        let left: BTreeMap<u32, (bool, bool)> = pinned
            .backends
            .iter()
            .map(|(id, info)| {
                let confirmed = info.flags & balancer_common::backend::BACKEND_CONFIRMED != 0;
                (*id, (info.is_up(), confirmed))
            })
            .collect();
        let mut observed = Observed::default();
        observed.add(&desired, &left);
        let published = Published::adopting(pinned);
        for (key, _) in &pinned.vips {
            if !desired.plan.vips.iter().any(|v| v.slot.key == *key) {
                tracing::info!(
                    vip = %plan::service_of(key),
                    "a VIP the previous daemon left in the pinned maps is not in the configuration: removing it"
                );
            }
        }
        let mut checks = Checks::new(reports);
        checks.restart(&desired);
        State {
            datapath,
            neighbours,
            checks,
            desired,
            observed,
            published,
            pacer: Pacer::default(),
            maps_error: None,
            write_failures: 0,
            retry: RETRY,
            ramp_due: None,
            metrics_endpoint: "off".to_owned(),
            announcer: None,
            sharing: None,
            interfaces: Vec::new(),
            exhaustion: Default::default(),
        }
    }

    /// A read-only view for answers, scrapes and scans.
    pub(super) fn view(&self) -> View<'_> {
        View {
            desired: &self.desired,
            observed: &self.observed,
            datapath: &self.datapath,
            metrics_endpoint: &self.metrics_endpoint,
            maps_error: self.maps_error.as_deref(),
            write_failures: self.write_failures,
            published: &self.published,
            announcer: self.announcer.as_ref(),
            sharing: self.sharing.as_ref(),
        }
    }

    /// Queues the flows of `events` for the peer hosts.
    pub(super) fn share(&mut self, events: &[balancer_common::flow::FlowEvent]) {
        if let Some(sharing) = &mut self.sharing {
            sharing.queue(events, &self.desired.plan);
        }
    }

    /// Takes a peer's datagram of flows.
    pub(super) fn receive_shared(&mut self, datagram: &[u8], from: std::net::SocketAddr) {
        if let Some(sharing) = &mut self.sharing {
            sharing.receive(datagram, from, &self.desired.plan, &mut self.datapath);
        }
    }

    /// Decides again which VIPs to announce and brings the announcement
    /// table in line (nothing without `[announce]`).
    pub(super) async fn announce(&mut self) {
        let (Some(config), true) = (&self.desired.config.announce, self.announcer.is_some()) else {
            return;
        };
        let delay = config.announce_delay;
        let inputs = self.view().gate_inputs();
        let attached = self.datapath.attachments().next().is_some();
        if let Some(announcer) = &mut self.announcer {
            announcer.step(&inputs, attached, delay).await;
        }
    }

    /// Stops the check tasks.
    pub(super) fn stop_checks(&mut self) {
        self.checks.stop();
    }

    /// Reads the configuration file again and applies it. An invalid file,
    /// one that changes what only a restart can change, or one without any
    /// VIP while VIPs are in force (an emptied or truncated file, unless
    /// `allow_empty`), is refused with the reason and changes nothing.
    pub(super) async fn reload(&mut self, allow_empty: bool) -> Result<String, ApplyError> {
        let path = self.desired.config_file().map_err(ApplyError::Refused)?;
        let text =
            crate::config::read(&path).map_err(|errors| ApplyError::Refused(errors.to_string()))?;
        let config = crate::config::parse_logging_warnings(&text, &path.display().to_string())
            .map_err(|errors| ApplyError::Refused(errors.to_string()))?;
        if config.vips.is_empty() && !self.desired.config.vips.is_empty() && !allow_empty {
            let error = format!(
                "{}: the file has no VIP: applying it would withdraw all {} VIPs; `balancer reload --allow-empty` does that on purpose; nothing was changed",
                path.display(),
                self.desired.config.vips.len()
            );
            tracing::warn!(error, "a reload to no VIP at all refused");
            return Err(ApplyError::Refused(error));
        }
        let (next, writes) = self.prepare(config, &path, text).await?;
        self.commit(next, &writes)
    }

    /// What a reload would change (see [`crate::preview`]), changing
    /// nothing: of `file` (a name for messages, and its text) when given,
    /// else of the daemon's configuration file. Refused, with every
    /// problem, when the configuration is invalid.
    pub(super) fn preview(
        &self,
        file: Option<(String, String)>,
        allow_empty: bool,
    ) -> Result<super::answer::PreviewAnswer, String> {
        let (name, text) = match file {
            Some(file) => file,
            None => {
                let path = self.desired.config_file()?;
                let text = crate::config::read(&path).map_err(|errors| errors.to_string())?;
                (path.display().to_string(), text)
            }
        };
        let config = crate::config::parse(&text, &name).map_err(|errors| errors.to_string())?;
        let mut preview = self.desired.preview(&config, &text);
        let vips = self.desired.config.vips.len();
        if config.vips.is_empty() && vips > 0 && !allow_empty {
            preview.refuse(format!(
                "the file has no VIP: applying it would withdraw all {vips} VIPs (--allow-empty does that on purpose)"
            ));
        }
        Ok(super::answer::PreviewAnswer {
            file: name,
            preview,
        })
    }

    /// Applies a CLI change: edits the file's text as last loaded
    /// (comments and layout kept; refused when the file changed on disk
    /// since), checks the result like any configuration, writes it back
    /// atomically and applies it. Refused changes touch neither the file
    /// nor the datapath.
    pub(super) async fn change(&mut self, edit: &crate::edit::Edit) -> Result<String, ApplyError> {
        let path = self.desired.config_file().map_err(ApplyError::Refused)?;
        let text = self
            .desired
            .text_to_edit(&path)
            .map_err(ApplyError::Refused)?;
        let edited = crate::edit::apply(&text, edit).map_err(ApplyError::Refused)?;
        // The edited text was never written: its errors name what is wrong,
        // not a line of it.
        let config = crate::config::parse_logging_warnings(&edited, &path.display().to_string())
            .map_err(|errors| {
                let messages: Vec<&str> =
                    errors.errors.iter().map(|e| e.message.as_str()).collect();
                ApplyError::Refused(format!(
                    "the change is refused: {}; nothing was changed",
                    messages.join("; ")
                ))
            })?;
        let (next, writes) = self.prepare(config, &path, edited.clone()).await?;
        let write_back = |text: &str| {
            crate::config::write_atomically(&path, text).map_err(|e| {
                ApplyError::Refused(format!(
                    "cannot write {}: {e}; nothing was changed",
                    path.display()
                ))
            })
        };
        if let Err(refused) = write_back(&edited) {
            self.observed.retain(&self.desired);
            return Err(refused);
        }
        let outcome = self.commit(next, &writes);
        if outcome.is_err() {
            // The configuration in force is the one before: so is the file.
            write_back(&text)?;
        }
        outcome
    }

    /// Builds the desired state of `config` (read from `path`), reads the
    /// paths of its new backends and decides every write, touching no map:
    /// refused with the reason when any of it fails.
    async fn prepare(
        &mut self,
        config: Config,
        path: &std::path::Path,
        text: String,
    ) -> Result<(Desired, Writes), ApplyError> {
        let next = self
            .desired
            .next(config, path, text)
            .map_err(ApplyError::Refused)?;
        self.observed.add(&next, &BTreeMap::new());
        let now = std::time::Instant::now();
        self.observed
            .start_ramps(&self.desired.plan, &next.plan, now);
        resolve(&self.neighbours, &next, &mut self.observed, &mut self.pacer).await;
        let served = self.served();
        client_routes(&self.neighbours, &next, &mut self.observed, &served).await;
        match reconcile::reconcile(&next, &self.observed, &self.published, now) {
            Ok(writes) => Ok((next, writes)),
            Err(err) => {
                self.observed.retain(&self.desired);
                Err(ApplyError::Refused(format!(
                    "{}: {err}; nothing was changed",
                    path.display()
                )))
            }
        }
    }

    /// Writes `writes` and makes `next` the state in force, all or
    /// nothing: when a write fails, the maps are brought back to the state
    /// in force before, which stays in force (see
    /// [`reconcile::apply_or_roll_back`]).
    fn commit(&mut self, next: Desired, writes: &Writes) -> Result<String, ApplyError> {
        let outcome = reconcile::apply_or_roll_back(
            writes,
            &self.desired,
            &self.observed,
            &mut self.datapath,
            &mut self.published,
            std::time::Instant::now(),
        );
        let behind = outcome.as_ref().is_err_and(|err| !err.changed_nothing());
        if let Err(err) = self.outcome(writes, outcome, behind) {
            self.observed.retain(&self.desired);
            return Err(err);
        }
        let changes = plan::changes(&self.desired.plan, &next.plan);
        self.take_desired(next, &changes);
        Ok(format!(
            "{} applied ({})",
            self.desired
                .path
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            self.desired.summary()
        ))
    }

    /// Makes `next` the desired state: what it no longer has is forgotten,
    /// its checks run, and its changes are logged once in force.
    fn take_desired(&mut self, next: Desired, changes: &[plan::Change]) {
        self.desired = next;
        if let Some(sharing) = &mut self.sharing {
            sharing.forget_plan();
        }
        self.observed.retain(&self.desired);
        self.checks.restart(&self.desired);
        for change in changes {
            log_change(change);
        }
    }

    /// Scans the connection table (see [`super::scan`]) and keeps what it
    /// says of each backend.
    pub(super) fn scan(&mut self) -> anyhow::Result<()> {
        let keep = self.sharing.is_some();
        let (scan, entries) = super::scan::scan(&mut self.datapath, &self.desired.plan, keep)?;
        self.observed.record_scan(scan, std::time::Instant::now());
        if let Some(sharing) = &mut self.sharing {
            sharing.share_again(&entries, &self.desired.plan);
        }
        Ok(())
    }

    /// Reads every backend's path from the kernel, and the routes toward
    /// clients of NAT replies.
    pub(super) async fn resolve(&mut self) {
        resolve(
            &self.neighbours,
            &self.desired,
            &mut self.observed,
            &mut self.pacer,
        )
        .await;
        let served = self.served();
        client_routes(&self.neighbours, &self.desired, &mut self.observed, &served).await;
    }

    /// Logs NAT connections dropped for want of a source since the last
    /// line, at most every [`super::exhaustion::EXHAUSTION_LOG_EVERY`].
    pub(super) fn watch_exhaustion(&mut self) {
        let Ok(reasons) = self.datapath.reasons() else {
            return;
        };
        let count = reasons
            .stat(balancer_common::stats::Stat::DROP_NAT_PORTS)
            .packets;
        if let Some(dropped) = self.exhaustion.read(count, std::time::Instant::now()) {
            tracing::warn!(
                dropped,
                "NAT sources exhausted: new connections dropped because every source tried was taken for their backend (drop_nat_ports); add addresses to [datapath] snat_ipv4 / snat_ipv6 or widen snat_ports"
            );
        }
    }

    /// The interfaces the program serves, by index (read each time: an
    /// interface made again gets another).
    fn served(&self) -> std::collections::BTreeSet<u32> {
        self.interfaces
            .iter()
            .filter_map(|name| nix::net::if_::if_nametoindex(name.as_str()).ok())
            .collect()
    }

    /// Whether every backend's MAC is known.
    pub(super) fn all_resolved(&self) -> bool {
        self.observed.all_resolved()
    }

    /// Brings the maps in line with the desired state as observed now.
    pub(super) fn publish(&mut self) -> Result<(), ApplyError> {
        match reconcile::reconcile(
            &self.desired,
            &self.observed,
            &self.published,
            std::time::Instant::now(),
        ) {
            Ok(writes) => self.write(&writes),
            Err(err) => {
                let error = format!("{err}; nothing was changed");
                tracing::error!(error, "cannot bring the datapath's maps in line");
                Err(ApplyError::Refused(error))
            }
        }
    }

    /// The reconcile of a periodic round: at every round while the maps are
    /// in line, and after a failure when [`RETRY`] says, so a lasting
    /// failure is tried and logged every 1, 2, 4 ... 60 s, not every round.
    /// Events (a health transition, a change) still write at once.
    pub(super) fn publish_when_due(&mut self) {
        if self.retry.due(std::time::Instant::now()) {
            let _ = self.publish();
        }
    }

    /// Carries out `writes` (the reconciler's, toward the state in force),
    /// then logs what they did: a failure leaves the maps behind it.
    fn write(&mut self, writes: &Writes) -> Result<(), ApplyError> {
        let outcome = reconcile::apply(writes, &mut self.datapath, &mut self.published);
        self.outcome(writes, outcome, true)
    }

    /// Logs what `outcome`, of `writes`, did: their notes once in, a
    /// failure at ERROR (counted). A failure that leaves the maps `behind`
    /// the state in force is kept for `status` and retried later.
    fn outcome(
        &mut self,
        writes: &Writes,
        outcome: Result<(), ApplyError>,
        behind: bool,
    ) -> Result<(), ApplyError> {
        match outcome {
            Ok(()) => {
                self.maps_error = None;
                self.retry.succeeded();
                self.ramp_due = writes.next_step;
                for note in &writes.notes {
                    log_note(note);
                }
                Ok(())
            }
            Err(err) => {
                self.write_failures += 1;
                let error = err.to_string();
                tracing::error!(error, "cannot bring the datapath's maps in line");
                if behind {
                    self.maps_error = Some(error);
                    self.retry.failed(std::time::Instant::now());
                }
                Err(err)
            }
        }
    }

    /// Takes one check result, and writes what it changed: the backend's
    /// smoothed latency, and on a transition its entry and its VIPs'
    /// rings.
    pub(super) fn health_report(&mut self, report: &Report) -> Result<(), ApplyError> {
        let transition = self.observed.record(report, std::time::Instant::now());
        let first_of_streak = |seen: &super::observed::Seen| seen.inconclusive_streak == 1;
        if report.inconclusive
            && self
                .observed
                .get(report.backend)
                .is_some_and(first_of_streak)
        {
            let (vip, address) = self.desired.describe(report.backend);
            tracing::warn!(
                vip,
                backend = %address,
                reason = report.detail.as_str(),
                "a health check could not run on this host: the backend keeps its state"
            );
        }
        let Some(transition) = transition else {
            return self.publish_latency(report.backend);
        };
        let (vip, address) = self.desired.describe(report.backend);
        tracing::info!(
            vip,
            backend = %address,
            from = %transition.from,
            to = %transition.to,
            reason = report.detail.as_str(),
            latency_ms = report.latency.as_secs_f64() * 1e3,
            "backend health changed"
        );
        self.publish()
    }

    /// Writes backend `id`'s smoothed latency if it changed: the one write
    /// of a report that changes no state, kept cheap with many backends.
    fn publish_latency(&mut self, id: u32) -> Result<(), ApplyError> {
        let Some(us) = self.observed.get(id).and_then(|seen| seen.latency_us()) else {
            return Ok(());
        };
        if self.published.backend(id).latency_us == Some(us) {
            return Ok(());
        }
        let write = Write::Latency { id, us };
        if let Err(err) = self.datapath.write(&write) {
            tracing::warn!(error = %err, "cannot write a backend's latency");
            return Ok(());
        }
        self.published.commit(&write);
        Ok(())
    }
}

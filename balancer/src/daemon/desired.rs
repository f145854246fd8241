//! What the datapath should hold: the configuration in force (the file as
//! last applied, with the CLI's edits), laid out as a [`Plan`], and the
//! numbers handed out so far. Pure: building the next desired state
//! touches nothing, so a refused configuration changes nothing.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::{
    config::Config,
    plan::{self, Numbering, Plan},
};

/// The configuration in force and its plan.
pub(super) struct Desired {
    pub(super) config: Config,
    /// The file the configuration came from, if any.
    pub(super) path: Option<PathBuf>,
    /// That file's text as last loaded or written back: a CLI change edits
    /// exactly this, and is refused when the file on disk differs.
    text: Option<String>,
    /// `--socket`, which replaces the file's control_socket.
    socket_override: Option<PathBuf>,
    pub(super) plan: Plan,
    numbering: Numbering,
    /// The host's online CPUs, which share the insert budget.
    cpus: u32,
}

impl Desired {
    /// Lays `config` out with `numbering` (the numbers a previous daemon
    /// gave, recovered from its pinned maps) for a host of `cpus` CPUs.
    pub(super) fn new(
        mut config: Config,
        file: Option<(PathBuf, String)>,
        socket_override: Option<PathBuf>,
        mut numbering: Numbering,
        cpus: u32,
    ) -> Desired {
        let (path, text) = file.unzip();
        if let Some(socket) = &socket_override {
            config.daemon.control_socket.clone_from(socket);
        }
        let plan = plan::plan_with(&config, &mut numbering, cpus);
        Desired {
            config,
            path,
            text,
            socket_override,
            plan,
            numbering,
            cpus,
        }
    }

    /// The desired state for `config`, parsed from `text`, the content of
    /// `path`, to replace this one: VIPs and backends that stay keep their
    /// numbers. Refused, with the reason, when it changes what only a
    /// restart can change.
    pub(super) fn next(
        &self,
        mut config: Config,
        path: &Path,
        text: String,
    ) -> Result<Desired, String> {
        self.check_restart_keys(&config, path)?;
        if let Some(socket) = &self.socket_override {
            config.daemon.control_socket.clone_from(socket);
        }
        let mut numbering = self.numbering.clone();
        let plan = plan::plan_with(&config, &mut numbering, self.cpus);
        Ok(Desired {
            config,
            path: Some(path.to_path_buf()),
            text: Some(text),
            socket_override: self.socket_override.clone(),
            plan,
            numbering,
            cpus: self.cpus,
        })
    }

    /// The configuration file, or why there is none.
    pub(super) fn config_file(&self) -> Result<PathBuf, String> {
        self.path.clone().ok_or_else(|| {
            "the daemon runs without a configuration file (start it with --config)".to_owned()
        })
    }

    /// The text a CLI change edits: the file's, which must still be what
    /// was last loaded or written back. A hand edit not yet reloaded (or a
    /// write in progress) is never applied by an unrelated change.
    pub(super) fn text_to_edit(&self, path: &Path) -> Result<String, String> {
        let on_disk = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if self.text.as_ref().is_some_and(|loaded| *loaded != on_disk) {
            return Err(format!(
                "{}: the file changed on disk since it was last loaded: reload or revert it first; nothing was changed",
                path.display()
            ));
        }
        Ok(on_disk)
    }

    /// What a reload to `config`, whose text is `text`, would change
    /// (see [`crate::preview`]); changes nothing.
    pub(super) fn preview(&self, config: &Config, text: &str) -> crate::preview::Preview {
        let mut numbering = self.numbering.clone();
        let plan = plan::plan_with(config, &mut numbering, self.cpus);
        let restart = self
            .restart_keys(config)
            .into_iter()
            .map(str::to_owned)
            .collect();
        crate::preview::preview(
            &self.plan,
            self.text.as_deref().unwrap_or_default(),
            &plan,
            text,
            restart,
        )
    }

    /// Refuses a configuration that changes what only a restart can.
    fn check_restart_keys(&self, config: &Config, path: &Path) -> Result<(), String> {
        let fixed = self.restart_keys(config);
        if fixed.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{}: {} cannot change while the daemon runs (restart it); nothing was changed",
            path.display(),
            fixed.join(", ")
        ))
    }

    /// The keys `config` changes that only a restart can change.
    fn restart_keys(&self, config: &Config) -> Vec<&'static str> {
        let (old, new) = (&self.config.datapath, &config.datapath);
        let mut fixed = Vec::new();
        if old.interfaces != new.interfaces {
            fixed.push("[datapath] interfaces");
        }
        if old.xdp_mode != new.xdp_mode {
            fixed.push("[datapath] xdp_mode");
        }
        if old.ring_size.get_ref() != new.ring_size.get_ref() {
            fixed.push("[datapath] ring_size");
        }
        if old.flow_table_size.get_ref() != new.flow_table_size.get_ref() {
            fixed.push("[datapath] flow_table_size");
        }
        if old.nat_table_size.get_ref() != new.nat_table_size.get_ref() {
            fixed.push("[datapath] nat_table_size");
        }
        let mut daemon = config.daemon.clone();
        if let Some(socket) = &self.socket_override {
            daemon.control_socket.clone_from(socket);
        }
        if self.config.daemon != daemon {
            fixed.push("[daemon]");
        }
        // Where routes and the drain mark are kept: moving them while
        // routers follow would withdraw what should stay.
        let routes = |c: &Config| {
            c.announce
                .as_ref()
                .map(|a| (*a.table.get_ref(), a.drain_file.clone()))
        };
        if routes(&self.config) != routes(config) {
            fixed.push("[announce] (its presence, table and drain_file)");
        }
        if self.config.sync != config.sync {
            fixed.push("[sync]");
        }
        fixed
    }

    /// "N VIPs, M backends".
    pub(super) fn summary(&self) -> String {
        format!(
            "{} VIPs, {} backends",
            self.plan.vips.len(),
            self.plan.backend_ids().count()
        )
    }

    /// The VIP name and address of backend `id`, for logs.
    pub(super) fn describe(&self, id: u32) -> (&str, IpAddr) {
        self.plan
            .vips
            .iter()
            .find_map(|v| {
                v.backends
                    .iter()
                    .find(|b| b.id == id)
                    .map(|b| (v.name.as_str(), b.address))
            })
            .unwrap_or(("?", IpAddr::from([0, 0, 0, 0])))
    }

    /// Every VIP of the plan with its configuration, in file order.
    pub(super) fn vips(
        &self,
    ) -> impl Iterator<Item = (&plan::VipPlan, &crate::config::VipConfig)> + '_ {
        self.plan
            .vips
            .iter()
            .zip(self.config.vips.iter().map(toml::Spanned::get_ref))
    }

    /// Every backend with the VIP it belongs to, in plan order.
    pub(super) fn backends(
        &self,
    ) -> impl Iterator<Item = (&plan::VipPlan, &plan::BackendPlan)> + '_ {
        self.plan
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
    }
}

//! The health-check tasks: one per backend per VIP of the desired state,
//! each reporting its results on one channel to the daemon's main loop.

use tokio::{sync::mpsc, task::JoinHandle};

use super::desired::Desired;
use crate::health::{self, Report};

/// The running check tasks, and where they report.
pub(super) struct Checks {
    tasks: Vec<JoinHandle<()>>,
    reports: mpsc::Sender<Report>,
}

impl Checks {
    pub(super) fn new(reports: mpsc::Sender<Report>) -> Checks {
        Checks {
            tasks: Vec::new(),
            reports,
        }
    }

    /// (Re)starts one check task per backend per VIP of `desired`.
    pub(super) fn restart(&mut self, desired: &Desired) {
        self.stop();
        for (vip, planned) in desired.config.vips.iter().zip(&desired.plan.vips) {
            let vip = vip.get_ref();
            let check = vip.check();
            for backend in &planned.backends {
                // A NAT backend is checked on its own port.
                self.tasks.extend(health::spawn(
                    backend.id,
                    backend.address,
                    backend.port.unwrap_or(vip.port),
                    &check,
                    self.reports.clone(),
                ));
            }
        }
    }

    /// Stops every check task.
    pub(super) fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

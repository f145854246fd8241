//! The daemon's structured events: configuration changes and what a set
//! of map writes did, logged with their subjects as fields (`vip`,
//! `backend`, `from`, `to`), so JSON logs carry them as keys.

use super::reconcile::Note;
use crate::plan;

/// Logs what a set of writes did.
pub(super) fn log_note(note: &Note) {
    match note {
        Note::RingPublished { vip, backends } => {
            tracing::info!(vip, backends, "ring published");
        }
        Note::AllDown { vip } => tracing::warn!(
            vip,
            "every backend of the VIP is down or unreachable: keeping its last ring rather than dropping its traffic"
        ),
        Note::NoWeight { vip } => {
            tracing::warn!(
                vip,
                "VIP has no backend with a weight above 0: its traffic passes"
            );
        }
        Note::Panic {
            vip,
            health,
            threshold,
        } => tracing::warn!(
            vip,
            percent_up = (health.percent_up() * 10.0).round() / 10.0,
            threshold,
            "VIP panics: less of its weight is up than its panic threshold, so its health checks are not trusted and new flows spread over every backend"
        ),
        Note::PanicOver { vip, health } => tracing::info!(
            vip,
            percent_up = (health.percent_up() * 10.0).round() / 10.0,
            "VIP panics no more: its health checks are trusted again"
        ),
    }
}

/// Logs one configuration change as a structured event: `vip`,
/// `backend`, `from`, `to` as fields, so JSON logs carry them as keys.
pub(super) fn log_change(change: &plan::Change) {
    use plan::Change;
    match change {
        Change::VipAdded { vip } => tracing::info!(vip, "VIP added"),
        Change::VipRemoved { vip } => tracing::info!(vip, "VIP removed"),
        Change::VipService { vip, from, to } => {
            tracing::info!(vip, from, to, "VIP service changed");
        }
        Change::VipPolicy { vip, from, to } => {
            tracing::info!(vip, from, to, "VIP scheduling changed");
        }
        Change::VipForwarding { vip, from, to } => {
            tracing::info!(vip, from, to, "VIP forwarding changed");
        }
        Change::BackendAdded {
            vip,
            backend,
            weight,
        } => tracing::info!(vip, %backend, weight, "backend added"),
        Change::BackendRemoved { vip, backend } => {
            tracing::info!(vip, %backend, "backend removed");
        }
        Change::Weight {
            vip,
            backend,
            from,
            to,
        } => tracing::info!(vip, %backend, from, to, "backend weight changed"),
    }
}

pub(super) fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

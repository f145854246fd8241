//! What a valid configuration may still do badly: warnings, located like
//! errors, that `check-config` prints and the daemon logs when it loads
//! the file.

use toml::Spanned;

use super::{Config, ConfigError, Lines, bounds::RING_SLOTS_PER_BACKEND};
use crate::maglev::is_prime;

/// The warnings of `config` (valid, parsed from `text`), in file order.
pub fn warnings(config: &Config, text: &str) -> Vec<ConfigError> {
    let lines = Lines::new(text);
    let mut out: Vec<ConfigError> = small_ring(config, &lines).into_iter().collect();
    out.extend(idle_exempt(config, &lines));
    out.extend(unreachable_min_healthy(config, &lines));
    out.sort_by_key(|e| e.line);
    out
}

/// Exempt lists that exempt from nothing: a VIP's own without limits, and
/// `[access]`'s when no VIP has limits. Located at the first prefix.
fn idle_exempt(config: &Config, lines: &Lines) -> Vec<ConfigError> {
    let at = |prefix: &Spanned<super::Prefix>, message: String| ConfigError {
        line: Some(lines.line(prefix.span().start)),
        message,
    };
    let mut out = Vec::new();
    let vips = config.vips.iter().map(Spanned::get_ref);
    for vip in vips.clone().filter(|v| v.limits.is_none()) {
        if let Some(first) = vip.exempt.first() {
            out.push(at(
                first,
                format!(
                    "VIP {:?} has an exempt list but no [vip.limits]: it exempts from nothing",
                    vip.name.get_ref()
                ),
            ));
        }
    }
    if let Some(first) = config.access.exempt.first()
        && !vips.clone().any(|v| v.limits.is_some())
    {
        out.push(at(
            first,
            "[access] has an exempt list but no VIP has [vip.limits]: it exempts from nothing"
                .to_owned(),
        ));
    }
    out
}

/// A `min_healthy` the VIP can never meet (more than its backends), or
/// one that means nothing without `[announce]`. Located at the setting.
fn unreachable_min_healthy(config: &Config, lines: &Lines) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for vip in config.vips.iter().map(Spanned::get_ref) {
        let Some(min) = &vip.min_healthy else {
            continue;
        };
        let name = vip.name.get_ref();
        let message = if config.announce.is_none() {
            format!("VIP {name:?} sets min_healthy but there is no [announce]: it changes nothing")
        } else if *min.get_ref() as usize > vip.backends.len() {
            format!(
                "VIP {name:?} has min_healthy {} but {} backends: it is never announced",
                min.get_ref(),
                vip.backends.len()
            )
        } else {
            continue;
        };
        out.push(ConfigError {
            line: Some(lines.line(min.span().start)),
            message,
        });
    }
    out
}

/// A ring below [`RING_SLOTS_PER_BACKEND`] slots for each backend of the
/// largest VIP with a Maglev ring: its backends' shares of new flows stray
/// from their weights. Located at `ring_size`, or at that VIP when the
/// file leaves `ring_size` to its default.
fn small_ring(config: &Config, lines: &Lines) -> Option<ConfigError> {
    let ring = &config.datapath.ring_size;
    let size = u64::from(*ring.get_ref());
    let vip = config
        .vips
        .iter()
        .map(Spanned::get_ref)
        .filter(|vip| vip.scheduler.maglev_ring())
        .max_by_key(|vip| vip.backends.len())?;
    let backends = vip.backends.len() as u64;
    let wanted = backends * RING_SLOTS_PER_BACKEND;
    if size >= wanted {
        return None;
    }
    let suggestion = (wanted..).find(|&n| is_prime(n as u32))?;
    let span = if ring.span() == (0..0) {
        vip.name.span()
    } else {
        ring.span()
    };
    Some(ConfigError {
        line: Some(lines.line(span.start)),
        message: format!(
            "ring_size {size} is below {RING_SLOTS_PER_BACKEND} slots for each of the {backends} backends of VIP {:?} ({wanted}): the shares of new flows may stray from the weights by more than about 1 %; a ring_size of {suggestion} (a prime) would keep them",
            vip.name.get_ref()
        ),
    })
}
